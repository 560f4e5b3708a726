"""Model files: weights plus a JSON model card, and the registry of network kinds.

A skysub model is two files side by side::

    NAME.pt    torch.save of {"format": "skysub-model", "format_version", "card", "state_dict"}
    NAME.json  the same card as readable JSON (the .pt is authoritative)

The card holds what is needed to rebuild and trust the network: ``kind`` (bkgnet, lumos,
inpaint), ``arch`` (the hyper-parameters its builder takes), the input conventions
(normalisation, stamp size, band/epoch vocabulary...), the skysub version, the training
command, a data summary and validation metrics.  Only weights are stored -- no fixed buffers
such as partial-convolution mask kernels -- so files stay small.

Shipped models live in ``skysub/models/`` and are addressed by name (``bkgnet-paus``); any
other model by its path.  Nothing is ever downloaded.

Kinds are registered by name -> builder (``arch dict -> nn.Module``); the built-in kinds are
imported lazily so that reading a card needs no network code.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, MissingFileError, OutputExistsError
from .safeload import load_plain

FORMAT = "skysub-model"
FORMAT_VERSION = 1

#: built-in kinds: name -> "module:function" building the network from the card's ``arch``
_BUILTIN_KINDS = {
    "bkgnet": "skysub.nn.bkgnet:build_from_arch",
    "lumos": "skysub.nn.lumos:build_from_arch",
    "inpaint": "skysub.nn.unet:build_from_arch",
}
_REGISTERED: dict[str, Callable[[dict], torch.nn.Module]] = {}


def register_kind(kind: str, builder: Callable[[dict], torch.nn.Module]) -> None:
    """Register a network kind (a user's own architecture) for :func:`load_model`."""
    _REGISTERED[str(kind)] = builder


def known_kinds() -> list[str]:
    return sorted(set(_BUILTIN_KINDS) | set(_REGISTERED))


def _builder(kind: str) -> Callable[[dict], torch.nn.Module]:
    if kind in _REGISTERED:
        return _REGISTERED[kind]
    if kind not in _BUILTIN_KINDS:
        raise InputError(f"unknown model kind {kind!r}; known kinds: {', '.join(known_kinds())}")
    mod, fn = _BUILTIN_KINDS[kind].split(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"model kind {kind!r} is not available in this skysub version "
                         f"({exc})") from None


def models_dir() -> Path:
    """The folder of the shipped models (inside the installed package)."""
    return Path(str(resources.files("skysub").joinpath("models")))


def shipped_models() -> list[str]:
    """Names of the shipped models (sorted)."""
    d = models_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.pt"))


def model_reference(path: str | Path) -> str:
    """How a card names another model (e.g. its ``init``): a shipped model by its name --
    ``"lumos-paus"``, the same on every machine, where the installed file's path names only
    this one -- any other file by its path."""
    p = Path(path)
    try:
        if p.resolve().parent == models_dir().resolve() and p.suffix == ".pt":
            return p.stem
    except OSError:  # pragma: no cover - an unreadable path: keep it as given
        pass
    return str(path)


def resolve_model(name_or_path: str | Path) -> Path:
    """Path of a model given a shipped model's name or a file path.

    Raises
    ------
    MissingFileError
        Neither a shipped model nor an existing file; the message lists the shipped models.
    """
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    name = str(name_or_path)
    if "/" not in name and os.sep not in name:
        shipped = models_dir() / f"{name.removesuffix('.pt')}.pt"
        if shipped.is_file():
            return shipped
    names = ", ".join(shipped_models()) or "(none)"
    raise MissingFileError(f"model {str(name_or_path)!r} is neither a file nor a shipped model; "
                           f"shipped models: {names}")


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def card_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save_model(path: str | Path, model: torch.nn.Module, card: dict[str, Any], *,
               overwrite: bool = False) -> Path:
    """Write ``model``'s weights and ``card`` to ``path`` (.pt) and its .json sidecar.

    The card must hold ``kind`` and ``arch``; ``format_version``, ``skysub_version``,
    ``created``, ``n_parameters`` and ``file_size_bytes`` are filled in.  Both files are written
    atomically; an existing file is kept unless ``overwrite``.
    """
    from .. import __version__

    path = Path(path)
    if path.suffix != ".pt":
        raise InputError(f"model files end in .pt, got {path}")
    for p in (path, card_path(path)):
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{p} exists; use --overwrite to replace it")
    for key in ("kind", "arch"):
        if key not in card:
            raise InputError(f"model card lacks {key!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    card = dict(card)
    card.update(format=FORMAT, format_version=FORMAT_VERSION, skysub_version=__version__,
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                n_parameters=int(sum(p.numel() for p in model.parameters())))
    blob = {"format": FORMAT, "format_version": FORMAT_VERSION, "card": card,
            "state_dict": state}
    _atomic(path, lambda t: torch.save(blob, t))
    card["file_size_bytes"] = path.stat().st_size
    text = json.dumps(card, indent=2, sort_keys=False, default=_json_default)
    _atomic(card_path(path), lambda t: t.write_text(text + "\n", encoding="utf-8"))
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _read_blob(path: Path) -> dict:
    try:
        blob = load_plain(path, what="model file")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a model file"
        raise InputError(f"{path} is not a skysub model file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise InputError(f"{path} is not a skysub model file (no '{FORMAT}' marker); train one "
                         "with `skysub train ...`")
    v = blob.get("format_version")
    if not isinstance(v, int) or v > FORMAT_VERSION:
        raise InputError(f"{path} has model-file format version {v!r}; this skysub reads up to "
                         f"{FORMAT_VERSION} -- upgrade skysub")
    return blob


def read_card(name_or_path: str | Path) -> dict:
    """The model card of a shipped model name or a model file (read from the .pt)."""
    path = resolve_model(name_or_path)
    card = dict(_read_blob(path)["card"])
    card.setdefault("file_size_bytes", path.stat().st_size)
    card["path"] = str(path)
    return card


def load_model(name_or_path: str | Path, *, kind: str | None = None,
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a network from its file; return ``(model in eval mode, card)``.

    Raises
    ------
    InputError
        Not a model file, a model of another kind than ``kind``, or weights that do not fit
        the architecture in the card (the message names the file and the mismatch).
    """
    path = resolve_model(name_or_path)
    blob = _read_blob(path)
    card = dict(blob["card"])
    card["path"] = str(path)
    if kind is not None and card.get("kind") != kind:
        raise InputError(f"{path} is a {card.get('kind')!r} model, not a {kind!r} model")
    model = _builder(card["kind"])(dict(card["arch"]))
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise InputError(f"{path}: the weights do not fit the {card['kind']} architecture in "
                         f"its card (incompatible or corrupted file): {first}") from None
    model.eval()
    return model.to(device), card


def describe_card(card: dict) -> str:
    """A human-readable summary of a card (``skysub models show``)."""
    lines = [f"{Path(card.get('path', '?')).stem}  ({card.get('kind')} model, skysub "
             f"{card.get('skysub_version')}, format {card.get('format_version')})"]
    for key in ("description", "created", "n_parameters", "file_size_bytes", "training_command",
                "preset", "init", "init_note"):
        if key in card:
            lines.append(f"  {key}: {card[key]}")
    for key in ("arch", "inputs", "data", "metrics", "training"):
        if key in card and card[key]:
            lines.append(f"  {key}:")
            for k, v in card[key].items():
                lines.append(f"    {k}: {json.dumps(v, default=_json_default)}")
    return "\n".join(lines)
