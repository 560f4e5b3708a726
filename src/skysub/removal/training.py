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

#: the values of ``[removal.train] fields``
FIELD_KINDS = ("classic", "families", "mixed")
#: PSF kinds only the families' beams know (a classic field of a mixture takes the others)
_FAMILY_ONLY_PSFS = ("moffat", "elliptical")


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
    catalogs : the ``maps``' own compact sources (catalogue files: one per map, or one for
        all of them with ra/dec); none: :func:`skysub.removal.realmaps.find_compact_sources`
    map_sources : beams injected per map and realisation when the calibration uses ``maps``
    fields : simulated fields: ``"classic"`` (:func:`skysub.simulate.extended.random_field_config`),
        ``"families"`` (:mod:`skysub.simulate.families`, one of ``families`` per field;
        the held-out ``cascade`` family is refused) or ``"mixed"`` (each field classic or from
        a family, :func:`mixture_draws`)
    family_fraction : with ``fields = "mixed"``, the share of fields drawn from the families
        (``round(fraction x n)`` of the ``n`` fields of each split, which ones drawn from the
        split's seed); the rest are classic fields exactly as ``fields = "classic"`` makes them
        (beam ``psf_fwhm``, the kinds of ``psf`` the classic generator knows).  Default 0.5:
        fine-tuning on families alone forgot the classic fields (their faint sources read 2-4 %
        low), so half of every epoch rehearses them
    psf_fwhm_range : ``[lo, hi]``: each simulated field's beam FWHM [px] drawn log-uniformly
        in it (its holes scaled by FWHM / ``psf_fwhm``); empty: every beam ``psf_fwhm``.  With
        ``fields = "mixed"`` only the family fields draw it
    calibrate : measure the error calibration on the test fields after training (False: leave
        it to ``--calibrate-only``, which measures it with the removal's mask table)
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
    catalogs: list[str] = field(default_factory=list)
    map_sources: int = 40
    fields: str = "classic"
    families: list[str] = field(default_factory=lambda: ["clouds", "bubbles", "knots"])
    psf_fwhm_range: list[float] = field(default_factory=list)
    calibrate: bool = True
    family_fraction: float = 0.5

    @classmethod
    def from_dict(cls, d: dict | None) -> InpaintTrainConfig:
        from ..config import check_keys

        d = dict(d or {})
        check_keys(d, asdict(cls()), "[removal.train]")
        try:
            out = cls(**d)
        except TypeError as exc:
            raise ConfigError(f"[removal.train]: {exc}") from None
        out.check_fields()
        return out

    def check_fields(self) -> None:
        """Refuse unknown field generators, the held-out family and bad FWHM ranges."""
        from ..simulate.families import HELD_OUT_FAMILY, TRAINING_FAMILIES

        if self.fields not in FIELD_KINDS:
            raise ConfigError(f"[removal.train] fields must be one of "
                              f"{', '.join(repr(k) for k in FIELD_KINDS)}, got {self.fields!r}")
        f = self.family_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
            raise ConfigError(f"[removal.train] family_fraction must be a number in [0, 1], "
                              f"got {f!r}")
        if HELD_OUT_FAMILY in self.families:
            raise ConfigError(f"[removal.train] families: {HELD_OUT_FAMILY!r} is the held-out "
                              "generator family of the benchmark; training never draws it")
        bad = [f for f in self.families if f not in TRAINING_FAMILIES]
        if bad or not self.families:
            raise ConfigError(f"[removal.train] families: unknown {bad or self.families}; "
                              f"expected some of {', '.join(TRAINING_FAMILIES)}")
        r = [float(v) for v in self.psf_fwhm_range]
        if r and (len(r) != 2 or not 0 < r[0] <= r[1]):
            raise ConfigError(f"[removal.train] psf_fwhm_range must be [lo, hi] with "
                              f"0 < lo <= hi [px], got {self.psf_fwhm_range}")


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
    from ..simulate.extended import FieldConfig, make_psf, random_field_config, simulate_extended

    rng = np.random.default_rng(seed)
    family = mixture_draws(cfg, n, seed) if not maps else np.zeros(n, bool)
    classic_psfs = [p for p in cfg.psf if p not in _FAMILY_ONLY_PSFS] or ["gaussian"]
    n_classic = 0
    for i in progress(range(n), desc="simulating fields", quiet=quiet, unit="field", total=n):
        fseed = int(rng.integers(2**31))
        frng = np.random.default_rng(fseed)
        psf = cfg.psf[i % len(cfg.psf)]
        if cfg.fields == "mixed" and not family[i]:  # a classic field, as "classic" makes it
            psf = classic_psfs[n_classic % len(classic_psfs)]
            n_classic += 1
        if not maps and (family[i] or (cfg.fields != "mixed" and cfg.psf_fwhm_range)):
            yield from _family_simulations(cfg, i, fseed, frng, psf, families=bool(family[i]))
            continue
        if maps:
            truth = maps[i % len(maps)]
            from .domain import pixel_noise

            # a real map's units are its own: fluxes by peak SNR against its pixel noise
            config = FieldConfig(shape=truth.shape, noise=pixel_noise(truth) or 1.0)
        else:
            config = random_field_config(frng, (cfg.field_size, cfg.field_size))
            truth = None
        base = None
        for j in range(cfg.realisations):
            n_src = flux = None
            if maps:  # peak SNR log-uniform in 3-3000 (the simulated fields' Table 1 span)
                kern = make_psf(psf, cfg.psf_fwhm)
                ny, nx = truth.shape
                n_src = int(np.clip(round(frng.uniform(25, 210) * nx * ny / 512 ** 2), 1, 210))
                flux = (np.exp(frng.uniform(np.log(3.0), np.log(3000.0), n_src))
                        * config.noise / float(kern.max()))
            sim = simulate_extended(config, psf=psf, psf_fwhm=cfg.psf_fwhm, n_sources=n_src,
                                    flux=flux, seed=fseed * 31 + j,
                                    truth=truth if truth is not None else base)
            base = sim.truth  # same field, new sources
            config = sim.field
            if not maps:
                sim.extra.setdefault("family", "classic")
            yield i, sim


def mixture_draws(cfg: InpaintTrainConfig, n: int, seed: int) -> np.ndarray:
    """Which of the ``n`` simulated fields of a split (``seed``) come from the generator
    families: all for ``fields = "families"``, none for ``"classic"``; for ``"mixed"`` exactly
    ``round(family_fraction x n)`` of them, chosen by a permutation drawn from ``seed`` (a
    stream of its own: the fields' parameters do not depend on the fraction)."""
    if cfg.fields != "mixed":
        return np.full(n, cfg.fields == "families", bool)
    k = int(round(float(cfg.family_fraction) * n))
    out = np.zeros(n, bool)
    out[np.random.default_rng([int(seed), 0x6D6978]).permutation(n)[:k]] = True
    return out


def _family_simulations(cfg: InpaintTrainConfig, i: int, fseed: int,
                        frng: np.random.Generator, psf: str, *, families: bool):
    """:func:`field_simulations` for a family field (``families``) or a classic one with a
    ``psf_fwhm_range``: the field's beam FWHM drawn in the range, its field from
    :mod:`skysub.simulate.families` (or the classic generator); ``extra["mask_scale"]`` =
    FWHM / ``psf_fwhm`` scales the holes of the mask table."""
    from ..simulate.extended import extended_field, random_field_config, simulate_extended
    from ..simulate.families import family_field, family_psf, random_beam, random_family_config

    fwhm = cfg.psf_fwhm
    if cfg.psf_fwhm_range:
        _, fwhm = random_beam(frng, (psf,), tuple(cfg.psf_fwhm_range))
    try:
        kernel = family_psf(psf, fwhm, frng)
    except InputError:  # a FITS PSF: its own FWHM
        from ..simulate.extended import make_psf
        from .domain import psf_fwhm_of

        kernel = make_psf(psf, fwhm)
        fwhm = psf_fwhm_of(kernel)
    shape = (cfg.field_size, cfg.field_size)
    if families:
        config = random_family_config(frng, shape, families=tuple(cfg.families), beam_fwhm=fwhm)
        truth = family_field(config, frng)
    else:
        config = random_field_config(frng, shape)
        truth = extended_field(config, frng)
    for j in range(cfg.realisations):
        sim = simulate_extended(config, psf=kernel, seed=fseed * 31 + j, truth=truth)
        sim.extra.update(psf_fwhm=float(fwhm), mask_scale=float(fwhm / cfg.psf_fwhm),
                         family=getattr(config, "family", "classic"))
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
        c = _field_cutouts(sim.image, sim.truth, x, y, table.scaled(sim.extra.get(
            "mask_scale", 1.0)), big, psf=sim.psf, wings=wings)
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


def read_maps(cfg: InpaintTrainConfig) -> list[tuple[Any, Any]]:
    """The user's ``maps`` as ``(Image, catalogue of their own sources)`` pairs (``catalogs``,
    else :func:`skysub.removal.realmaps.find_compact_sources` at 5 sigma)."""
    from ..io import catalog_for_image, read_catalog, read_image
    from .realmaps import find_compact_sources

    if len(cfg.catalogs) not in (0, 1, len(cfg.maps)):
        raise InputError(f"[removal.train] catalogs: give one catalogue per map or one for all "
                         f"of them; got {len(cfg.catalogs)} for {len(cfg.maps)} maps")
    out = []
    for i, p in enumerate(cfg.maps):
        im = read_image(p)
        if cfg.catalogs:
            cat = catalog_for_image(read_catalog(cfg.catalogs[i if len(cfg.catalogs) > 1 else 0]),
                                    im)
        else:
            cat = find_compact_sources(np.where(im.mask, np.nan, im.data), cfg.psf_fwhm,
                                       mask=im.mask)
        out.append((im, cat))
    return out


def _band(im: Any, cat: Any, axis: int, a: int, b: int) -> tuple[Any, Any]:
    from ..image import Image

    sl = (slice(a, b), slice(None)) if axis == 0 else (slice(None), slice(a, b))
    sub = Image(data=im.data[sl].copy(), mask=im.mask[sl].copy(), meta=im.meta, path=im.path)
    c = np.asarray(cat["y" if axis == 0 else "x"], float)
    rows = cat[(c >= a - 0.5) & (c < b - 0.5)]
    rows["y" if axis == 0 else "x"] = np.asarray(rows["y" if axis == 0 else "x"], float) - a
    return sub, rows


def split_parts(cfg: InpaintTrainConfig) -> dict[str, list[tuple[Any, Any]]] | None:
    """The user's maps split into train / validation / test (None for simulated fields): by
    map with three maps or more (all but the last two, one, one); with fewer, each map is cut
    along its longer side into a training band and validation and test bands of 20 % (at
    least 1.5 cutouts of ``size + 2 shift`` px each: a cutout must lie on its band)."""
    if not cfg.maps:
        return None
    maps = read_maps(cfg)
    if len(maps) >= 3:
        n_tr = len(maps) - 2
        return {"train": maps[:n_tr], "val": maps[n_tr:n_tr + 1], "test": maps[n_tr + 1:]}
    need = int(1.5 * (cfg.size + 2 * cfg.shift))
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    for im, cat in maps:
        axis = 0 if im.shape[0] >= im.shape[1] else 1
        n = im.shape[axis]
        w = max(need, int(0.2 * n))
        if n - 2 * w < need or im.shape[1 - axis] < cfg.size + 2 * cfg.shift:
            raise InputError(f"{im.name}: {im.shape[0]} x {im.shape[1]} px is too small to cut "
                             f"into training, validation and test bands of >= {need} px; give "
                             f"3 maps or more, or maps of >= {3 * need} x "
                             f"{cfg.size + 2 * cfg.shift} px")
        for key, (a, b) in (("train", (0, n - 2 * w)), ("val", (n - 2 * w, n - w)),
                            ("test", (n - w, n))):
            parts[key].append(_band(im, cat, axis, a, b))
    return parts


def clean_truths(parts: list[tuple[Any, Any]], cfg: InpaintTrainConfig, *,
                 quiet: bool = True) -> list[np.ndarray]:
    """Training fields from the user's maps: each map with its own catalogued sources removed
    by the initial model (``init``, else the shipped one) -- their light must not be the
    network's target -- and NaN / masked pixels set to the map's median."""
    from .core import DEFAULT_MODEL, remove_sources

    out = []
    for im, cat in parts:
        d = np.where(im.mask, np.nan, im.data)
        if len(cat):
            d = remove_sources(im, catalog=cat, model=cfg.init or DEFAULT_MODEL,
                               psf_fwhm=cfg.psf_fwhm, radii=(4.0,), quiet=quiet).image
            d = np.where(im.mask, np.nan, d)
        out.append(np.nan_to_num(d, nan=float(np.nanmedian(d))) if np.isnan(d).any() else d)
    return out


def split_maps(cfg: InpaintTrainConfig) -> dict[str, list[np.ndarray] | None]:
    """The training fields of the user's maps (:func:`split_parts`, :func:`clean_truths`)
    per split; all None for simulations."""
    parts = split_parts(cfg)
    if parts is None:
        return {"train": None, "val": None, "test": None}
    return {k: clean_truths(v, cfg) for k, v in parts.items()}


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
    parts = split_parts(cfg)
    split = {k: clean_truths(parts[k], cfg, quiet=quiet) if parts else None
             for k in ("train", "val")}
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
                                                maps=parts["test"] if parts else None,
                                                quiet=quiet, options=options) \
        if cfg.calibrate else None
    if card["error_calibration"] and "domain" in card["error_calibration"]:
        card["domain"] = card["error_calibration"].pop("domain")
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


def calibration_fields(cfg: InpaintTrainConfig, maps: list[tuple[Any, Any]] | None = None
                       ) -> tuple[list, list[float]]:
    """The fields the calibration is measured on and their beams' FWHM [px]: the *test* fields
    of ``cfg`` (simulated), or beams injected at empty positions of the user's ``maps``
    (``(Image, own catalogue)`` pairs; :func:`skysub.removal.realmaps.map_injections`,
    ``map_sources`` per realisation, ``n_test`` realisations over the maps, 1-10 per map),
    whose own pixels are the truth."""
    from ..simulate.extended import make_psf
    from .domain import psf_fwhm_of

    if not maps:
        sims = [sim for _, sim in field_simulations(cfg, cfg.n_test, cfg.seed * 1000 + 3,
                                                    quiet=True)]
        return sims, [psf_fwhm_of(s.psf) for s in sims[:: max(1, cfg.realisations)]]
    from .realmaps import map_injections

    reals = max(1, min(10, cfg.n_test // len(maps)))
    sims, beams = [], []
    for j, (im, cat) in enumerate(maps):
        kind = cfg.psf[j % len(cfg.psf)]
        psf = make_psf(kind, cfg.psf_fwhm)
        beams.append(psf_fwhm_of(psf))
        sims += map_injections(im, cat, psf, n=cfg.map_sources, realisations=reals,
                               seed=cfg.seed * 1000 + 3 + j)
    return sims, beams


def calibrate_model(net: torch.nn.Module, cfg: InpaintTrainConfig, masks: MaskTable, *,
                    maps: list[tuple[Any, Any]] | None = None, quiet: bool = True,
                    options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Error, level and flux calibration (:mod:`skysub.removal.calibration`) on the fields of
    :func:`calibration_fields` (never seen in training or model selection), and the training
    domain measured on them (``domain``, :func:`skysub.removal.domain.domain_of`); returns the
    card's ``error_calibration``."""
    from .calibration import MAP_MIN_PER_BIN, MAP_SNR_EDGES, calibrate
    from .domain import domain_of

    sims, beams = calibration_fields(cfg, maps)
    coarse = {"snr_edges": MAP_SNR_EDGES, "min_per_flux_bin": MAP_MIN_PER_BIN,
              "min_per_level_bin": MAP_MIN_PER_BIN} if maps else {}
    try:
        cal = calibrate(net, sims, masks, quiet=quiet, options=options, **coarse)
    except ValueError as exc:  # too few test cutouts (tiny runs): keep the uncalibrated error
        log.warning("no error calibration: %s", exc)
        return None
    if maps:
        cal["fields"] = {"split": "user maps, injected beams", "maps": sorted(
            {str(s.extra.get("map")) for s in sims}), "n_injections": len(sims),
            "seed": cfg.seed * 1000 + 3}
    else:
        cal["fields"] = {"split": "test", "n_fields": cfg.n_test, "seed": cfg.seed * 1000 + 3}
    cal["domain"] = domain_of(sims, beams)
    return cal


def recalibrate(model_path: str | Path, config: InpaintTrainConfig | dict | None = None, *,
                masks: MaskTable | None = None, quiet: bool = True,
                command: str | None = None, options: dict[str, Any] | None = None,
                init: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Measure a trained model's error calibration and rewrite its card (weights unchanged):
    ``skysub train inpaint --calibrate-only --output MODEL``; with ``init`` (a shipped name
    or .pt), that model's weights and card are calibrated and written to ``model_path``
    (refused when it exists, unless ``overwrite``).  ``masks``: the table the model
    will remove sources with (default: the one it was trained with); a table other than the
    training one is recorded as the card's ``inference_masks``, the default of
    :func:`skysub.removal.remove_sources`, and the calibration is measured with it.
    ``options``: the removal settings of the configuration (``wings``, ``anchor``; see
    :func:`skysub.removal.calibration.measure_fields`)."""
    from ..nn.modelfile import load_model, save_model

    cfg = config if isinstance(config, InpaintTrainConfig) else InpaintTrainConfig.from_dict(
        config)
    if init is not None:
        from ..io import check_output
        from ..nn.modelfile import card_path

        check_output(model_path, overwrite=overwrite)
        check_output(card_path(Path(model_path)), overwrite=overwrite)
    net, card = load_model(init if init is not None else model_path, kind="inpaint")
    if init is not None:
        card["calibrated_from"] = str(init)
    card.pop("path", None)
    card.pop("file_size_bytes", None)
    inputs = card.setdefault("inputs", {})
    trained = MaskTable.from_config(inputs.get("masks"), psf_fwhm=cfg.psf_fwhm)
    masks = masks or trained
    inputs.pop("inference_masks", None)
    if masks != trained:
        inputs["inference_masks"] = masks.as_card()
    parts = split_parts(cfg)
    maps = None
    if parts:  # the model's own training maps: their test split; other maps: all of them
        trained_on = [str(p) for p in card.get("data", {}).get("user_maps", [])]
        maps = parts["test"] if trained_on == [str(p) for p in cfg.maps] else \
            read_maps(cfg)
    cal = calibrate_model(net, cfg, masks, maps=maps, quiet=quiet, options=options)
    if cal is None:
        raise InputError(f"too few test cutouts to calibrate {model_path}: raise [removal.train] "
                         f"n_test (now {cfg.n_test}) or field_size")
    cal["command"] = command or " ".join(shlex.quote(a) for a in ["skysub", *sys.argv[1:]])
    card["domain"] = cal.pop("domain")
    card["error_calibration"] = cal
    save_model(model_path, net, card, overwrite=True)
    return card


def resolve_trainer_device(tc) -> torch.device:
    from ..nn.device import resolve_device

    return resolve_device(tc.device)
