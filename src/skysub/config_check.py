"""Validation of configuration sections against the classes that consume them.

Each dict section of a configuration (``[annulus]``, ``[mesh]``, ...) is checked against the
signature of the class or function it is unpacked into: unknown keys are named with the nearest
valid name (difflib) and the list of valid ones, values of the wrong type are named with the
expected type -- always with the file and section, e.g.::

    typo.toml [annulus]: unknown key 'r_inn' -- did you mean 'r_in'? valid: ba, chunk_size, ...
    typo.toml [annulus] r_in: expected a number, got the string 'ten'

The signatures are read from the consumers' source code (:mod:`ast`), not by importing them,
so that loading a configuration imports neither torch nor the estimators.  Sub-tables of
``[removal]`` (``masks``, ``train``) are checked by their own consumers.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Any

from .errors import ConfigError

_NO_DEFAULT = object()

# section -> (module, qualified name of the consumer, keys to leave out, extra {key: kinds})
_CONSUMERS: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    "annulus": [("skysub.background.annulus", "AnnulusBackground.__init__", ())],
    "mesh": [("skysub.background.mesh", "MeshBackground.__init__", ())],
    "templates": [("skysub.background.templates", "ScatteredLightTemplates.build",
                   ("images", "catalogs", "progress"))],
    "simulate": [("skysub.simulate.ccd", "CCDSimConfig", ())],
    "bkgnet": [("skysub.background.bkgnet.estimator", "BKGnetSettings", ())],
    "lumos": [("skysub.photometry.lumos.settings", "LumosSettings", ()),
              ("skysub.simulate.galaxies", "GalaxySimSettings", ())],
    "removal": [("skysub.removal.core", "remove_sources",
                 ("image", "x", "y", "catalog", "psf", "annulus", "device", "mask", "masks",
                  "progress", "quiet", "seed", "keep_cutouts"))],
}
# keys read from a section by code rather than passed to one signature
_EXTRA: dict[str, dict[str, frozenset[str]]] = {
    "photometry": {"aperture_radius": frozenset({"number"}), "psf_fwhm": frozenset({"number"})},
    "removal": {"masks": frozenset({"dict"}), "train": frozenset({"dict"})},
    "mesh": {"name": frozenset({"str"})},
}
_KIND_WORDS = {"float": "number", "int": "int", "str": "str", "bool": "bool", "tuple": "list",
               "list": "list", "Sequence": "list", "dict": "dict", "Mapping": "dict",
               "None": None}
_KIND_NAMES = {"number": "a number", "int": "an integer", "str": "a string",
               "bool": "true or false", "list": "a list", "dict": "a table"}


def _find(tree: ast.AST, qualname: str) -> ast.AST | None:
    node: Any = tree
    for part in qualname.split("."):
        node = next((c for c in getattr(node, "body", [])
                     if isinstance(c, ast.ClassDef | ast.FunctionDef) and c.name == part), None)
        if node is None:
            return None
    return node


def _literal(node: ast.AST | None) -> Any:
    if node is None:
        return _NO_DEFAULT
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return _NO_DEFAULT


def _source_file(module: str) -> Path | None:
    """The source file of ``module`` without importing it or its packages (``find_spec`` of a
    submodule imports the parent packages: for ``skysub.simulate.ccd`` that is the whole
    simulator and scipy.fft, ~0.3 s of every command's start-up for reading a signature)."""
    parts = module.split(".")
    if parts[0] == "skysub":
        base = Path(__file__).resolve().parent.joinpath(*parts[1:])
        for cand in (base.with_suffix(".py"), base / "__init__.py"):
            if cand.is_file():
                return cand
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec is not None and spec.origin else None


@cache
def _parameters(module: str, qualname: str) -> dict[str, tuple[str, Any]]:
    """``{name: (annotation text, default)}`` of a dataclass's fields or a function's args."""
    origin = _source_file(module)
    if origin is None:  # pragma: no cover - a broken install
        return {}
    tree = ast.parse(origin.read_text(encoding="utf-8"))
    node = _find(tree, qualname)
    if node is None:  # the consumer moved: update _CONSUMERS (a test loads every preset)
        raise RuntimeError(f"config validation: {qualname} not found in {module}")
    out: dict[str, tuple[str, Any]] = {}
    if isinstance(node, ast.ClassDef):
        for st in node.body:
            if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                ann = ast.unparse(st.annotation)
                if not ann.startswith("ClassVar"):
                    out[st.target.id] = (ann, _literal(st.value))
    elif isinstance(node, ast.FunctionDef):
        a = node.args
        pos = a.posonlyargs + a.args
        defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
        for arg, d in [*zip(pos, defaults, strict=True), *zip(a.kwonlyargs, a.kw_defaults,
                                                              strict=True)]:
            if arg.arg in ("self", "cls"):
                continue
            out[arg.arg] = (ast.unparse(arg.annotation) if arg.annotation else "",
                            _literal(d))
    return out


def _kinds(annotation: str, default: Any) -> frozenset[str] | None:
    """Allowed value kinds of a parameter; None when they cannot be told (``Any``, a class)."""
    kinds: set[str] = set()
    for word in re.findall(r"[A-Za-z_]+", annotation.split("[")[0] if "|" not in annotation
                           else re.sub(r"\[[^\]]*\]", "", annotation)):
        if word not in _KIND_WORDS:
            return None
        if _KIND_WORDS[word]:
            kinds.add(_KIND_WORDS[word])
    if not kinds and default is not _NO_DEFAULT and default is not None:
        kinds.add({bool: "bool", int: "int", float: "number", str: "str", tuple: "list",
                   list: "list", dict: "dict"}.get(type(default), ""))
        kinds.discard("")
    return frozenset(kinds) or None


@cache
def section_schema(section: str) -> dict[str, frozenset[str] | None]:
    """``{key: allowed kinds or None (unchecked)}`` of a configuration section."""
    schema: dict[str, frozenset[str] | None] = {}
    for module, qualname, leave_out in _CONSUMERS.get(section, []):
        for name, (ann, default) in _parameters(module, qualname).items():
            if name not in leave_out:
                schema[name] = _kinds(ann, default)
    schema.update(_EXTRA.get(section, {}))
    if section == "bkgnet":  # training settings ride along in [bkgnet]: see TRAIN_KEYS there
        train = _parameters("skysub.nn.trainer", "TrainConfig")
        for name in ("epochs", "batch_size", "lr", "weight_decay", "patience"):
            schema[name] = _kinds(*train[name])
        schema["preset"] = frozenset({"str"})
    return schema


def _matches(value: Any, kinds: frozenset[str]) -> bool:
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return bool(kinds & {"int", "number"})
    if isinstance(value, float):
        return "number" in kinds
    if isinstance(value, str):
        return "str" in kinds
    if isinstance(value, list):
        return "list" in kinds
    if isinstance(value, dict):
        return "dict" in kinds
    return True  # TOML dates and times: left to the consumer


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, list):
        return f"the list {value!r}"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def check_section(section: str, values: dict[str, Any], source: str) -> None:
    """Raise a ConfigError for an unknown key or a value of the wrong type in ``[section]``."""
    schema = section_schema(section)
    if not schema:
        return
    where = f"{source} [{section}]"
    for key, value in values.items():
        if key not in schema:
            near = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
            hint = f" -- did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint} valid: "
                              f"{', '.join(sorted(schema))}")
        kinds = schema[key]
        if kinds is not None and not _matches(value, kinds):
            want = " or ".join(_KIND_NAMES[k] for k in sorted(kinds))
            raise ConfigError(f"{where} {key}: expected {want}, got {_describe(value)}")
