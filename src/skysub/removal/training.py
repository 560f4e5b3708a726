"""Training data and training of the inpainting U-Net (``skysub train inpaint``).

Data (Madarász et al. §2.3-2.4): fields of extended emission -- simulated
(:mod:`skysub.simulate.extended`) or the user's own source-poor maps -- with 25-210 compact
sources injected at Table 1 flux levels; cutouts of ``size + 2 * shift`` px around every
source whose cutout lies on the field, with their SNR-adaptive masks (every catalogued source
in a cutout is a hole, as at inference).  Fields are split into training, validation and test
sets (never mixing cutouts of one field).

Training: the one :class:`skysub.nn.trainer.Trainer` loop (Adam, ReduceLROnPlateau on the
validation loss, best checkpoint, early stopping, resume), the eq. 7 loss
(:class:`skysub.nn.inpaint_losses.InpaintLoss`), augmentation on the fly: random shifts of up
to ``shift`` px (random crops), flips and 90-degree rotations, identical for input, target and
mask.  Normalisation happens inside the loss function with :func:`skysub.removal.core.normalise`
-- the very function inference uses.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..stamps import cutouts
from .core import normalise, paint_holes
from .masks import MaskTable, mask_radii, peak_snr

log = logging.getLogger("skysub")


@dataclass
class InpaintTrainConfig:
    """Settings of ``skysub train inpaint`` (the ``[removal.train]`` table).

    Attributes
    ----------
    preset : U-Net preset ("default" or "paper"); ``channels`` overrides its widths
    size : cutout side [px] (64, 96, 128)
    n_train, n_val, n_test : number of fields per split
    field_size : side of a simulated field [px]
    realisations : source injections per field (new positions and fluxes each time)
    psf : PSF kinds used ("gaussian", "airy", "herschel" or FITS paths), one per field
    psf_fwhm : FWHM [px] of the named PSFs
    maps : the user's source-poor FITS maps to use as fields instead of simulations
    shift : maximum augmentation shift [px]
    max_cutouts : cap on training cutouts (memory/time)
    epochs, batch_size, lr, patience, scheduler_patience, seed, threads, device : training
    loss : loss weights (valid, hole, style, ssim, source, flux)
    style_samples : cutouts per batch on which the style term is computed (None = all; the
        random-feature convolutions dominate a CPU training step)
    wing_subtraction : train on inputs with the sources' PSF light subtracted (with the flux
        errors of a real estimate), as :func:`skysub.removal.remove_sources` feeds the network
        after its wing passes; False = the paper's raw inputs
    init : start from this model's weights (a shipped name such as "inpaint-default" or a .pt
        file) instead of random ones -- fine-tuning, e.g. on your own maps; its architecture
        must be the one ``preset``/``channels``/``size`` build
    """

    preset: str = "default"
    channels: list[int] | None = None
    size: int = 96
    n_train: int = 24
    n_val: int = 4
    n_test: int = 4
    field_size: int = 384
    realisations: int = 3
    psf: list[str] = field(default_factory=lambda: ["gaussian", "airy", "herschel"])
    psf_fwhm: float = 3.5
    maps: list[str] = field(default_factory=list)
    shift: int = 2
    max_cutouts: int = 12000
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.005
    patience: int | None = 8
    scheduler_patience: int = 5
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    loss: dict = field(default_factory=dict)
    style_samples: int | None = None
    wing_subtraction: bool = False
    init: str | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> InpaintTrainConfig:
        from ..config import check_keys

        d = dict(d or {})
        check_keys(d, asdict(cls()), "[removal.train]")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"[removal.train]: {exc}") from None


def _field_cutouts(image: np.ndarray, truth: np.ndarray, x: np.ndarray, y: np.ndarray,
                   table: MaskTable, size: int, psf: np.ndarray | None = None,
                   wings: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Cutouts (image, truth, valid mask) of every source whose cutout is fully on the field
    (holes as at inference, PSF-aware when the table has ``wing_sigma``); ``wings``: a model of
    the sources' light subtracted from the input cutouts (the holes come from ``image``)."""
    radius, _ = mask_radii(image, x, y, table, psf=psf)
    sigma_bg = peak_snr(image, x, y, table)["sigma_bg"]
    holes = paint_holes(image.shape, x, y, radius)
    st = cutouts(image if wings is None else image - wings, x, y, size)
    keep = st.valid.reshape(len(x), -1).all(axis=1)
    tr = cutouts(truth, x[keep], y[keep], size).data
    hl = cutouts(holes.astype(float), x[keep], y[keep], size).data > 0.5
    return {"image": st.data[keep].astype(np.float32), "target": tr.astype(np.float32),
            "mask": (~hl).astype(np.uint8), "radius": radius[keep].astype(np.float32),
            "sigma_bg": sigma_bg[keep].astype(np.float32),
            "dx": st.dx[keep].astype(np.float32), "dy": st.dy[keep].astype(np.float32)}


def field_simulations(cfg: InpaintTrainConfig, n: int, seed: int, *,
                      maps: list[np.ndarray] | None = None, quiet: bool = True):
    """Yield ``(field index, ExtendedSim)`` for ``n`` fields x ``cfg.realisations`` injections
    (the user's ``maps`` or simulated fields; PSFs cycling ``cfg.psf``), reproducibly from
    ``seed``: the training / validation / test splits and the error calibration share it."""
    from ..progress import progress
    from ..simulate.extended import random_field_config, simulate_extended

    rng = np.random.default_rng(seed)
    for i in progress(range(n), desc="simulating fields", quiet=quiet, unit="field", total=n):
        fseed = int(rng.integers(2**31))
        frng = np.random.default_rng(fseed)
        psf = cfg.psf[i % len(cfg.psf)]
        if maps:
            truth = maps[i % len(maps)]
            config = None
        else:
            config = random_field_config(frng, (cfg.field_size, cfg.field_size))
            truth = None
        base = None
        for j in range(cfg.realisations):
            sim = simulate_extended(config, psf=psf, psf_fwhm=cfg.psf_fwhm,
                                    seed=fseed * 31 + j, truth=truth if truth is not None
                                    else base)
            base = sim.truth  # same field, new sources
            config = sim.field
            yield i, sim


def _estimated_wings(sim, rng: np.random.Generator) -> np.ndarray:
    """The sources' light as :func:`skysub.removal.remove_sources` models it in its wing
    passes: the PSF times a flux ESTIMATE -- the true flux with 5 % relative and
    30 x pixel-noise absolute Gaussian errors, clipped at 0 (the scatter of hole fluxes)."""
    from ..simulate.extended import inject_sources

    f = np.asarray(sim.catalog["flux"], float)
    noise = float(getattr(sim.field, "noise", 1.0) or 1.0)
    est = np.clip(f * (1 + 0.05 * rng.standard_normal(len(f)))
                  + 30.0 * noise * rng.standard_normal(len(f)), 0.0, None)
    return inject_sources(np.zeros(sim.image.shape), sim.psf, np.asarray(sim.catalog["x"]),
                          np.asarray(sim.catalog["y"]), est)


def make_fields(cfg: InpaintTrainConfig, n: int, seed: int, table: MaskTable, *,
                maps: list[np.ndarray] | None = None, quiet: bool = True
                ) -> dict[str, np.ndarray]:
    """Cutouts of ``n`` fields x ``cfg.realisations`` injections (stacked, with ``field`` ids)."""
    big = cfg.size + 2 * cfg.shift
    parts: list[dict[str, np.ndarray]] = []
    rng = np.random.default_rng(seed + 17)
    for i, sim in field_simulations(cfg, n, seed, maps=maps, quiet=quiet):
        x, y = np.asarray(sim.catalog["x"]), np.asarray(sim.catalog["y"])
        wings = None
        if cfg.wing_subtraction:
            wings = _estimated_wings(sim, rng)
        c = _field_cutouts(sim.image, sim.truth, x, y, table, big, psf=sim.psf, wings=wings)
        c["field"] = np.full(len(c["image"]), i, np.int32)
        parts.append(c)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def as_tensors(d: dict[str, np.ndarray], limit: int | None = None, seed: int = 0
               ) -> dict[str, torch.Tensor]:
    n = len(d["image"])
    idx = np.arange(n)
    if limit is not None and n > limit:
        idx = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    return {"image": torch.from_numpy(d["image"][idx])[:, None],
            "target": torch.from_numpy(d["target"][idx])[:, None],
            "mask": torch.from_numpy(d["mask"][idx])[:, None]}


def make_augment(size: int):
    """Random crop to ``size`` (shifts), flips and 90-degree rotations, per sample."""

    def augment(batch: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
        img, tgt, m = batch["image"], batch["target"], batch["mask"]
        n, _, s, _ = img.shape
        stack = torch.cat([img.float(), tgt.float(), m.float()], dim=1)  # (n, 3, s, s)
        if s > size:
            k = s - size + 1
            oy = torch.randint(0, k, (n,), generator=g)
            ox = torch.randint(0, k, (n,), generator=g)
            ar = torch.arange(size)
            iy = (oy[:, None] + ar[None]).to(stack.device)
            ix = (ox[:, None] + ar[None]).to(stack.device)
            nn_ = torch.arange(n, device=stack.device)[:, None, None]
            stack = stack.permute(0, 2, 3, 1)[nn_, iy[:, :, None], ix[:, None, :]]
            stack = stack.permute(0, 3, 1, 2)
        flip_x = torch.rand(n, generator=g).to(stack.device) < 0.5
        flip_y = torch.rand(n, generator=g).to(stack.device) < 0.5
        rot = torch.rand(n, generator=g).to(stack.device) < 0.5
        stack = torch.where(flip_x.view(-1, 1, 1, 1), stack.flip(-1), stack)
        stack = torch.where(flip_y.view(-1, 1, 1, 1), stack.flip(-2), stack)
        stack = torch.where(rot.view(-1, 1, 1, 1), stack.transpose(-1, -2), stack)
        return {"image": stack[:, :1].contiguous(), "target": stack[:, 1:2].contiguous(),
                "mask": stack[:, 2:3].contiguous()}

    return augment


def _centre(t: torch.Tensor, size: int) -> torch.Tensor:
    s = t.shape[-1]
    if s == size:
        return t
    o = (s - size) // 2
    return t[..., o:o + size, o:o + size]


def make_loss_fn(criterion: torch.nn.Module, size: int):
    """``loss_fn(model, batch)`` for the Trainer: centre-crop, normalise, predict, eq. 7."""

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        img = _centre(batch["image"].float(), size)
        tgt = _centre(batch["target"].float(), size)
        m = _centre(batch["mask"].float(), size)
        x, m, (t, full), _, _ = normalise(img, m, tgt, img)
        pred = model(x, m)
        return criterion(pred, t, m, full)

    return loss_fn


def split_maps(cfg: InpaintTrainConfig) -> dict[str, list[np.ndarray] | None]:
    """The user's maps (NaN / masked pixels set to the map's median) split by map into
    train / val / test (all but the last two, one, one); all None for simulations."""
    from ..io import read_image

    if not cfg.maps:
        return {"train": None, "val": None, "test": None}
    maps = []
    for p in cfg.maps:
        im = read_image(p)
        m = np.where(im.mask, np.nan, im.data)
        maps.append(np.nan_to_num(m, nan=float(np.nanmedian(m))) if np.isnan(m).any() else m)
    if len(maps) < 3:
        raise InputError(f"training on user maps needs at least 3 maps (train/validation/"
                         f"test split by map), got {len(maps)}")
    n_tr = max(1, len(maps) - 2)
    return {"train": maps[:n_tr], "val": maps[n_tr:n_tr + 1], "test": maps[n_tr + 1:]}


def train_inpaint(output: str | Path, *, config: InpaintTrainConfig | dict | None = None,
                  masks: MaskTable | None = None, checkpoint: str | Path | None = None,
                  resume: bool = False, overwrite: bool = False, quiet: bool = False,
                  command: str | None = None, options: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Simulate (or read) fields, train the U-Net, save it with its card; return the card.
    ``options``: the removal settings the error calibration is measured with (``wings``,
    ``anchor``; :func:`skysub.removal.calibration.measure_fields`).

    Parameters
    ----------
    output : model file (.pt; a .json card is written beside it)
    config : InpaintTrainConfig or the ``[removal.train]`` dict
    masks : the SNR -> radius table (default: generic table for ``config.psf_fwhm``)
    checkpoint : training checkpoint (default ``OUTPUT.ckpt``); ``resume`` continues from it
    command : the command line recorded in the card (default: ``sys.argv``)
    """
    from ..io import check_output
    from ..nn.inpaint_losses import InpaintLoss, InpaintLossWeights
    from ..nn.modelfile import card_path, save_model
    from ..nn.trainer import TrainConfig, Trainer
    from ..nn.unet import arch_for, build_from_arch

    cfg = config if isinstance(config, InpaintTrainConfig) else InpaintTrainConfig.from_dict(
        config)
    output = Path(output)
    if output.suffix != ".pt":
        raise InputError(f"model files end in .pt, got {output}")
    check_output(output, overwrite=overwrite)
    check_output(card_path(output), overwrite=overwrite)
    masks = masks or MaskTable.from_config(None, psf_fwhm=cfg.psf_fwhm)
    t0 = time.perf_counter()
    arch = arch_for(cfg.preset, cfg.size)
    if cfg.channels:
        arch["channels"] = list(cfg.channels)
    model = build_from_arch(arch)
    init = _initial_weights(model, arch, cfg.init) if cfg.init else None  # before the data
    split = split_maps(cfg)
    counts = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    seeds = {"train": cfg.seed * 1000 + 1, "val": cfg.seed * 1000 + 2, "test": cfg.seed * 1000 + 3}
    data = {k: make_fields(cfg, counts[k], seeds[k], masks, maps=split[k], quiet=quiet)
            for k in ("train", "val")}
    train = as_tensors(data["train"], cfg.max_cutouts, cfg.seed)
    val = as_tensors(data["val"], max(256, cfg.max_cutouts // 6), cfg.seed + 1)
    weights = InpaintLossWeights.from_dict(cfg.loss)
    criterion = InpaintLoss(weights, style_samples=cfg.style_samples)
    tc = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                     scheduler="plateau", scheduler_kwargs={"patience": cfg.scheduler_patience,
                                                            "factor": 0.5},
                     patience=cfg.patience, seed=cfg.seed, device=cfg.device,
                     threads=cfg.threads, quiet=quiet, grad_clip=5.0)
    ckpt = Path(checkpoint) if checkpoint else output.with_suffix(".ckpt")
    trainer = Trainer(model, make_loss_fn(criterion.to(resolve_trainer_device(tc)), cfg.size),
                      tc, checkpoint=ckpt, augment=make_augment(cfg.size))
    hist = trainer.fit(train, val, resume=resume)
    seconds = time.perf_counter() - t0
    cmd = command or " ".join(shlex.quote(a) for a in ["skysub", *sys.argv[1:]])
    card = {
        "kind": "inpaint", "arch": arch,
        "description": "Partial-convolution U-Net inpainting the background behind compact "
                       "sources (Madarász et al. 2025), trained on simulated extended emission",
        "training_command": cmd,
        "inputs": {"size": cfg.size, "normalisation": "per-cutout min-max over valid pixels",
                   "mask": "1 = valid, 0 = hole (every catalogued source in the cutout)",
                   "psf_fwhm": cfg.psf_fwhm, "masks": masks.as_card()},
        "data": {"fields": counts, "user_maps": list(cfg.maps), "psf": list(cfg.psf),
                 "n_train_cutouts": int(len(train["image"])),
                 "n_val_cutouts": int(len(val["image"])), "seed": cfg.seed},
        "training": {**{k: v for k, v in asdict(cfg).items() if k not in ("maps",)},
                     "loss_weights": asdict(weights), "style_features": "RandomFeatures(seed=1234)",
                     "epochs_run": len(hist.epochs), "best_epoch": hist.best_epoch + 1,
                     # training time summed over epochs (a resumed run counts them all) and
                     # the wall time of this invocation (data simulation included)
                     "seconds": round(sum(e["seconds"] for e in hist.epochs), 1),
                     "wall_seconds_this_run": round(seconds, 1),
                     "history": [{k: round(v, 5) if isinstance(v, float) else v
                                  for k, v in e.items()} for e in hist.epochs]},
        **({"init": init} if init else {}),
        "metrics": {"best_val_loss": hist.best_val,
                    "final_train_loss": hist.train_loss[-1] if hist.epochs else None},
    }
    card["error_calibration"] = calibrate_model(trainer.model.cpu().eval(), cfg, masks,
                                                maps=split["test"], quiet=quiet,
                                                options=options)
    save_model(output, trainer.model.cpu(), card, overwrite=overwrite)
    return card


def _initial_weights(model: torch.nn.Module, arch: dict, name: str) -> dict[str, Any]:
    """Load the weights of model ``name`` (shipped name or .pt) into ``model`` (built from
    ``arch``); return what the card records about it.  A model of another kind or another
    architecture is an :class:`InputError` naming both."""
    from ..nn.modelfile import load_model

    src, card = load_model(name, kind="inpaint")
    theirs = {k: card["arch"].get(k) for k in ("size", "channels", "n_down")}
    ours = {k: arch.get(k) for k in theirs}
    if theirs != ours:
        raise InputError(f"[removal.train] init = {name!r}: that model's U-Net {theirs} is not "
                         f"the one this configuration builds {ours}; set preset/channels/size "
                         "to match it")
    model.load_state_dict(src.state_dict())
    t = card.get("training", {})
    return {"model": str(name), "path": card.get("path"),
            "training_command": card.get("training_command"),
            "seconds": t.get("seconds"), "best_val_loss": card.get("metrics", {}).get(
                "best_val_loss")}


def calibrate_model(net: torch.nn.Module, cfg: InpaintTrainConfig, masks: MaskTable, *,
                    maps: list[np.ndarray] | None = None, quiet: bool = True,
                    options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Error calibration (:mod:`skysub.removal.calibration`) on the *test* fields of ``cfg``
    (never seen in training or model selection); returns the card's ``error_calibration``."""
    from .calibration import calibrate

    sims = [sim for _, sim in field_simulations(cfg, cfg.n_test, cfg.seed * 1000 + 3,
                                                maps=maps, quiet=True)]
    try:
        cal = calibrate(net, sims, masks, quiet=quiet, options=options)
    except ValueError as exc:  # too few test cutouts (tiny runs): keep the uncalibrated error
        log.warning("no error calibration: %s", exc)
        return None
    cal["fields"] = {"split": "test", "n_fields": cfg.n_test, "seed": cfg.seed * 1000 + 3}
    return cal


def recalibrate(model_path: str | Path, config: InpaintTrainConfig | dict | None = None, *,
                masks: MaskTable | None = None, quiet: bool = True,
                command: str | None = None, options: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """Measure a trained model's error calibration and rewrite its card (weights unchanged):
    ``skysub train inpaint --calibrate-only --output MODEL``.  ``masks``: the table the model
    will remove sources with (default: the one it was trained with); a table other than the
    training one is recorded as the card's ``inference_masks``, the default of
    :func:`skysub.removal.remove_sources`, and the calibration is measured with it.
    ``options``: the removal settings of the configuration (``wings``, ``anchor``; see
    :func:`skysub.removal.calibration.measure_fields`)."""
    from ..nn.modelfile import load_model, save_model

    cfg = config if isinstance(config, InpaintTrainConfig) else InpaintTrainConfig.from_dict(
        config)
    net, card = load_model(model_path, kind="inpaint")
    card.pop("path", None)
    card.pop("file_size_bytes", None)
    inputs = card.setdefault("inputs", {})
    trained = MaskTable.from_config(inputs.get("masks"), psf_fwhm=cfg.psf_fwhm)
    masks = masks or trained
    inputs.pop("inference_masks", None)
    if masks != trained:
        inputs["inference_masks"] = masks.as_card()
    cal = calibrate_model(net, cfg, masks, maps=split_maps(cfg)["test"], quiet=quiet,
                          options=options)
    if cal is None:
        raise InputError(f"too few test cutouts to calibrate {model_path}: raise [removal.train] "
                         f"n_test (now {cfg.n_test}) or field_size")
    cal["command"] = command or " ".join(shlex.quote(a) for a in ["skysub", *sys.argv[1:]])
    card["error_calibration"] = cal
    save_model(model_path, net, card, overwrite=True)
    return card


def resolve_trainer_device(tc) -> torch.device:
    from ..nn.device import resolve_device

    return resolve_device(tc.device)
