"""BKGnet as "just another background estimator", and its training from a user's exposures.

:class:`BKGnetBackground` wraps a trained :class:`skysub.nn.bkgnet.BKGnet` behind the estimator
protocol of :mod:`skysub.background.base`: image + positions in, background per pixel and its
1-sigma error out.  :func:`train_bkgnet` trains one from FITS exposures and a catalogue (or
from the built-in simulator), as ``skysub train bkgnet`` does.

Training data (BKGnet §3.2, with the fixes skysub makes)
--------------------------------------------------------
- positions are drawn uniformly over each exposure plus an extra share within ``edge_width`` px
  of the CCD edges (where scattered light lives); a position is "empty" when no catalogued
  source lies within ``empty_radius`` px; stamps with any pixel above ``saturation`` are
  skipped (the paper: 100,000 counts);
- the label is the mean of the pixels within ``label_radius`` = 8 px of the position, after
  clipping pixels more than ``label_clip`` robust sigmas from the circle's median (cosmic rays and
  hot pixels would otherwise dominate the loss); its error is BKGnet eq. 3 for the mean of the
  kept pixels with the exposure's gain and read noise (:func:`skysub.nn.bkgnet.label_sigma`);
- a Sérsic galaxy with (mag, r50, n, b/a, theta) drawn jointly from the catalogue's rows is
  injected at the centre (with its photon noise) BEFORE the centre is hidden -- without it the
  net fails on bright sources (BKGnet §3.2);
- training and validation stamps come from different exposures (split by exposure).

With ``labels="truth"`` (simulations only) the label is the noise-free background of the
simulator in the same circle and its error is zero: pre-training on simulations.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .. import flags as F
from ..errors import ConfigError, InputError
from ..image import Image, as_image
from ..stamps import WindowCutter, _round_half_up, annulus_offsets, check_positions, gather
from .base import BackgroundResult

log = logging.getLogger("skysub")

#: the shipped model trained on the built-in PAUS-like simulator
DEFAULT_MODEL = "bkgnet-paus"


def key_name(band: Any, epoch: Any) -> str:
    """Vocabulary entry of a band x epoch pair (``"NB685/before"``; ``-`` for a missing part)."""
    return f"{band if band is not None else '-'}/{epoch if epoch is not None else '-'}"


@dataclass
class BKGnetSettings:
    """Stamp geometry and training-data settings (the ``[bkgnet]`` configuration section).

    Attributes
    ----------
    stamp_size : stamp side [px] (BKGnet: 120)
    mask_size : hidden central square [px] (BKGnet: 16)
    label_radius : label circle radius [px] (BKGnet: 8)
    empty_radius : a training position is empty when no catalogued source is closer [px]
    stamps_per_image : training positions drawn per exposure
    edge_fraction : extra share of positions drawn within ``edge_width`` px of an edge
    edge_width : [px]
    saturation : stamps with a pixel above this (image units) are skipped
    label_clip : robust sigmas beyond which pixels are clipped out of the label circle
    inject : inject a catalogue-like Sérsic galaxy at the centre of every training stamp
    zero_point : magnitude of 1 count per second (sets injected fluxes from catalogue mags)
    psf_fwhm : Moffat PSF FWHM [px] of the injected galaxies
    psf_beta : Moffat beta
    val_fraction : share of exposures kept for validation
    min_valid : fewest valid pixels (2x2-subsampled grid, centre excluded) a stamp needs
    """

    stamp_size: int = 120
    mask_size: int = 16
    label_radius: float = 8.0
    empty_radius: float = 12.0
    stamps_per_image: int = 600
    edge_fraction: float = 0.3
    edge_width: float = 150.0
    saturation: float = 60000.0
    label_clip: float = 3.0
    inject: bool = True
    zero_point: float = 25.0
    psf_fwhm: float = 3.5
    psf_beta: float = 3.0
    val_fraction: float = 0.15
    min_valid: int = 64

    @classmethod
    def from_config(cls, section: dict | None, **overrides: Any) -> BKGnetSettings:
        section = {**(section or {}), **{k: v for k, v in overrides.items() if v is not None}}
        names = {f.name for f in fields(cls)}
        train_keys = set(TRAIN_KEYS)
        unknown = sorted(set(section) - names - train_keys)
        if unknown:
            raise ConfigError(f"[bkgnet]: unknown setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(names | train_keys))}")
        s = cls(**{k: v for k, v in section.items() if k in names})
        if s.stamp_size < 16 or s.mask_size >= s.stamp_size or s.mask_size < 0:
            raise ConfigError(f"[bkgnet]: need 16 <= stamp_size and 0 <= mask_size < stamp_size,"
                              f" got {s.stamp_size}, {s.mask_size}")
        if 2 * s.label_radius > s.mask_size + 1e-9 and s.mask_size > 0:
            log.warning("[bkgnet]: the label circle (r = %.1f px) is larger than the hidden "
                        "centre (%d px): the net sees label pixels", s.label_radius, s.mask_size)
        return s


#: training hyper-parameters that may also appear in [bkgnet]
TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "patience", "preset")


# -- labels and sampling -----------------------------------------------------------------------
def circle_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    return annulus_offsets(radius, 0.0)


def circle_values(data: np.ndarray | Image, x: np.ndarray, y: np.ndarray, radius: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel values within ``radius`` of each (x, y) (NaN-padded rows) and their validity."""
    dx, dy = circle_offsets(radius)
    xi, yi = _round_half_up(x), _round_half_up(y)
    vals, valid = gather(data, xi, yi, dx, dy)
    r = np.hypot(dx[None] - (x - xi)[:, None], dy[None] - (y - yi)[:, None])
    use = valid & (r <= radius)
    return np.where(use, vals, np.nan), use


def clipped_label(values: np.ndarray, use: np.ndarray, clip: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each row's pixels within ``clip`` robust sigmas of its median; and the count."""
    with np.errstate(invalid="ignore"), _quiet_nan():
        med = np.nanmedian(values, axis=1)
        sig = 1.4826 * np.nanmedian(np.abs(values - med[:, None]), axis=1)
        keep = use & (np.abs(values - med[:, None]) <= clip * np.maximum(sig, 1e-12)[:, None])
        n = keep.sum(1)
        mean = np.where(keep, values, 0.0).sum(1) / np.maximum(n, 1)
    mean[n == 0] = np.nan
    return mean, n


class _quiet_nan:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def _galaxy_pool(catalog: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Joint (mag, r50, n, ba, theta) rows to draw injected galaxies from: the catalogue's
    galaxies when it has those columns, else the built-in PAUS-like distribution."""
    cols = ("mag", "r50", "sersic_n", "ba", "theta")
    if catalog is not None and all(c in catalog.colnames for c in cols):
        arr = {c: np.asarray(catalog[c], float) for c in cols}
        ok = np.all([np.isfinite(arr[c]) for c in cols], axis=0) & (arr["r50"] > 0)
        ok &= (arr["sersic_n"] > 0.2) & (arr["sersic_n"] <= 8) & (arr["ba"] > 0) & (arr["ba"] <= 1)
        if ok.sum() >= 20:
            return {c: arr[c][ok] for c in cols}
        log.warning("catalogue has fewer than 20 galaxies with mag, r50, sersic_n, ba, theta: "
                    "injecting galaxies from the built-in PAUS-like distribution")
    else:
        log.warning("catalogue lacks some of mag, r50, sersic_n, ba, theta: injecting galaxies "
                    "from the built-in PAUS-like distribution")
    from ..simulate.ccd import CCDSimConfig, simulate_field

    f = simulate_field(CCDSimConfig(), seed=rng)
    f = f[f["kind"] == "galaxy"]
    return {c: np.asarray(f[c], float) for c in cols}


def _draw_positions(shape: tuple[int, int], n: int, s: BKGnetSettings,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = shape
    n_edge = int(round(n * s.edge_fraction))
    x = rng.uniform(-0.5, nx - 0.5, n)
    y = rng.uniform(-0.5, ny - 0.5, n)
    if n_edge:  # within edge_width of a random edge
        w = min(s.edge_width, nx / 2, ny / 2)
        side = rng.integers(0, 4, n_edge)
        d = rng.uniform(-0.5, w, n_edge)
        xe = np.where(side == 0, d, np.where(side == 1, nx - 1 - d, x[:n_edge]))
        ye = np.where(side == 2, d, np.where(side == 3, ny - 1 - d, y[:n_edge]))
        x[:n_edge], y[:n_edge] = xe, ye
    return x, y


def sample_training_stamps(image: Image, cat_xy: tuple[np.ndarray, np.ndarray] | None,
                           settings: BKGnetSettings, rng: np.random.Generator, *,
                           galaxies: dict[str, np.ndarray] | None = None,
                           truth_background: np.ndarray | None = None,
                           n: int | None = None) -> dict[str, np.ndarray]:
    """Training stamps of one exposure: empty positions, labels, injected galaxies.

    Returns a dict of arrays (one row per kept position): ``stamps`` (m, S, S) float32 with
    NaN where invalid, ``x, y``, ``label``, ``label_sigma`` (image units), ``mag`` (injected
    galaxy, NaN without injection), ``n_label`` (pixels in the label).
    """
    from scipy.spatial import cKDTree

    s = settings
    meta = image.meta
    n = int(n or s.stamps_per_image)
    x, y = _draw_positions(image.shape, 3 * n, s, rng)  # oversample, then reject
    if cat_xy is not None and len(cat_xy[0]):
        cx, cy = (np.asarray(a, float) for a in cat_xy)
        good = np.isfinite(cx) & np.isfinite(cy)
        tree = cKDTree(np.column_stack([cx[good], cy[good]]))
        d, _ = tree.query(np.column_stack([x, y]), k=1)
        x, y = x[d > s.empty_radius], y[d > s.empty_radius]
    x, y = x[:2 * n], y[:2 * n]
    if truth_background is not None:
        tv, tu = circle_values(truth_background, x, y, s.label_radius)
        with _quiet_nan():
            label = np.nanmean(tv, axis=1)
        n_lab = tu.sum(1)
        lsig = np.zeros_like(label)
    else:
        vals, use = circle_values(image, x, y, s.label_radius)
        label, n_lab = clipped_label(vals, use, s.label_clip)
        from ..nn.bkgnet import label_sigma

        lsig = label_sigma(label, n_lab, meta.gain, meta.rdnoise)
    cut = WindowCutter(image, s.stamp_size, fill=-np.inf)
    st_data, st_valid, _, _ = cut(x, y)
    sat = st_data.reshape(len(x), -1).max(axis=1)  # invalid pixels hold -inf
    keep = np.isfinite(label) & (n_lab >= 0.5 * np.pi * s.label_radius**2) & (sat <= s.saturation)
    idx = np.flatnonzero(keep)[:n]
    data = st_data[idx].astype(np.float32)
    valid = st_valid[idx]
    mag = np.full(len(idx), np.nan)
    if s.inject and len(idx) and galaxies is not None:
        dx = x[idx] - _round_half_up(x[idx])
        dy = y[idx] - _round_half_up(y[idx])
        mag = _inject(data, valid, dx, dy, galaxies, image, s, rng)
    data[~valid] = np.nan
    return {"stamps": data, "x": x[idx], "y": y[idx], "label": label[idx],
            "label_sigma": lsig[idx], "mag": mag, "n_label": n_lab[idx].astype(np.int32)}


def _inject(data: np.ndarray, valid: np.ndarray, dx: np.ndarray, dy: np.ndarray,
            galaxies: dict[str, np.ndarray], image: Image, s: BKGnetSettings,
            rng: np.random.Generator) -> np.ndarray:
    """Add catalogue-like Sérsic galaxies (with photon noise) at the stamp centres, in place."""
    from ..simulate.profiles import sersic_stamps
    from ..simulate.psf import moffat_psf

    meta = image.meta
    m = len(data)
    pick = rng.integers(0, len(galaxies["mag"]), m)
    g = {k: v[pick] for k, v in galaxies.items()}
    exptime = meta.exptime if meta.exptime else 1.0
    flux = exptime * 10 ** (-0.4 * (g["mag"] - s.zero_point)) / meta.gain  # ADU
    psf = moffat_psf(int(2 * np.ceil(3 * s.psf_fwhm) + 1), s.psf_fwhm, s.psf_beta)
    size = min(63, s.stamp_size - (1 - s.stamp_size % 2))
    models = sersic_stamps(size, flux, g["r50"], np.clip(g["sersic_n"], 0.3, 8.0),
                           ba=np.clip(g["ba"], 0.05, 1.0), theta=g["theta"], dx=dx, dy=dy,
                           oversample=2, psf=psf)
    models = np.clip(models, 0, None)
    noisy = rng.poisson(models * meta.gain) / meta.gain  # the galaxy's own photon noise
    c, h = s.stamp_size // 2, size // 2
    sl = slice(c - h, c - h + size)
    region = data[:, sl, sl]
    data[:, sl, sl] = np.where(valid[:, sl, sl], region + noisy, region)
    return g["mag"]


# -- the estimator ------------------------------------------------------------------------------
class BKGnetBackground:
    """Background under each source predicted by a trained BKGnet.

    Parameters
    ----------
    model : str or Path or (torch.nn.Module, dict)
        A shipped model name (``"bkgnet-paus"``), a model file, or a ``(model, card)`` pair.
    batch_size : stamps per forward pass (memory ~ batch_size x 0.2 MB)
    device : "auto" (GPU when present), "cpu", "cuda"
    threads : torch threads on CPU (None = all cores of this process)
    name : label in output tables

    Notes
    -----
    ``bkg`` is the network's background per pixel (image units); ``bkg_err`` is the error of
    that prediction: for models trained on pixel labels, BKGnet eq. 5,
    ``sqrt(sigma_net^2 - sigma_label^2)`` with ``sigma_label`` from eq. 3 for the label circle
    (floored at 0.3 sigma_net), because the network's sigma also covers the noise of the labels
    it was trained on; for models trained on noise-free simulator labels ``sigma_net`` itself.
    ``pixel_std`` is NaN (photometry then uses the eq. 10 Poisson + read-noise pixel variance).
    ``sigma_net`` is first multiplied by the card's ``sigma_scale``, the pull width the network
    had on its validation exposures (:func:`sigma_scale`); ``extra["sigma_net"]`` holds that
    calibrated network sigma.

    Flags: OFF_IMAGE (values NaN) for centres off the image; EDGE when the stamp reaches beyond
    the image; MASKED when masked/NaN pixels fall in the stamp; NO_DATA (values NaN) with fewer
    than ``min_valid`` usable pixels.
    """

    def __init__(self, model: Any = DEFAULT_MODEL, *, batch_size: int = 512,
                 device: str = "auto", threads: int | None = None, name: str = "bkgnet") -> None:
        import torch

        from ..nn.bkgnet import fuse_for_inference
        from ..nn.device import configure_threads, resolve_device
        from ..nn.modelfile import load_model

        if int(batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size!r}")
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            configure_threads(threads)
        if isinstance(model, tuple):
            net, card = model
        else:
            net, card = load_model(model, kind="bkgnet")
        net = fuse_for_inference(net.eval()).to(self.device)
        if self.device.type == "cpu":
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.card = card
        self.inputs = card.get("inputs", {})
        self.keys: list[str] = list(self.inputs.get("keys", []))
        self.batch_size = int(batch_size)
        self.sigma_scale = float(self.inputs.get("sigma_scale", 1.0))
        self.name = name

    def __repr__(self) -> str:
        return (f"BKGnetBackground({Path(self.card.get('path', 'model')).stem!r}, "
                f"batch_size={self.batch_size}, device={str(self.device)!r})")

    @property
    def stamp_size(self) -> int:
        return int(self.card["arch"]["stamp_size"])

    def key_index(self, image: Image) -> int:
        """Index of the image's band x epoch in the model's vocabulary (clear error if absent)."""
        k = key_name(image.meta.band, image.meta.epoch)
        if k in self.keys:
            return self.keys.index(k)
        if len(self.keys) == 1 and self.keys[0] == key_name(None, None):
            return 0
        raise InputError(f"{image.name}: band/epoch {k!r} is not known to the BKGnet model "
                         f"{self.card.get('path', '')}; it knows: {', '.join(self.keys)}. "
                         "Train a model on this band (skysub train bkgnet) or set "
                         "--band/--epoch")

    def estimate(self, image: Image | np.ndarray, x, y, *, mask: np.ndarray | None = None,
                 mag: np.ndarray | None = None,
                 neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> BackgroundResult:
        """Background per pixel and its 1-sigma error under each (x, y); see the class notes."""
        import torch

        from ..nn.bkgnet import denormalise, label_sigma, normalise_stamps, predicted_sigma

        img = as_image(image, mask)
        x, y = check_positions(x, y)
        n = len(x)
        if mag is not None:
            mag = np.broadcast_to(np.asarray(mag, float), x.shape)
        bkg = np.full(n, np.nan)
        sig_net = np.full(n, np.nan)
        n_pix = np.zeros(n, np.int64)
        flags = F.zeros(n)
        if n == 0:
            return BackgroundResult(bkg, bkg.copy(), bkg.copy(), n_pix, flags)
        key = self.key_index(img)
        ny, nx = img.shape
        S = self.stamp_size
        mask_size = int(self.card["arch"]["mask_size"])
        min_valid = int(self.inputs.get("min_valid", 64))
        with np.errstate(invalid="ignore"):
            off = ~((x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5))
        flags[off] |= F.OFF_IMAGE
        todo = np.flatnonzero(~off)
        cut = WindowCutter(img, S) if len(todo) else None  # one padded copy per image
        for s0 in range(0, len(todo), self.batch_size):
            idx = todo[s0:s0 + self.batch_size]
            data, valid, x0, y0 = cut(x[idx], y[idx])
            inside = (x0 >= 0) & (y0 >= 0) & (x0 + S <= nx) & (y0 + S <= ny)
            flags[idx[~inside]] |= F.EDGE
            n_valid = valid.reshape(len(idx), -1).sum(1)
            n_in = _n_inside(x0, y0, S, nx, ny)
            flags[idx[n_valid < n_in]] |= F.MASKED
            with torch.inference_mode():
                xin, loc, scale, ok = normalise_stamps(torch.from_numpy(data),
                                                       torch.from_numpy(valid), mask_size,
                                                       min_valid=min_valid)
                xin = xin.to(self.device)
                if self.device.type == "cpu":
                    xin = xin.contiguous(memory_format=torch.channels_last)
                cx = x[idx] / max(nx - 1, 1) * 2 - 1
                cy = y[idx] / max(ny - 1, 1) * 2 - 1
                coords = torch.from_numpy(np.column_stack([cx, cy]).astype(np.float32))
                m = mag[idx] if mag is not None else np.full(len(idx), np.nan)
                has = np.isfinite(m)
                mu, ls = self.net(xin, coords.to(self.device),
                                  torch.from_numpy(np.where(has, m, 0).astype(np.float32)).to(
                                      self.device),
                                  torch.from_numpy(has.astype(np.float32)).to(self.device),
                                  torch.full((len(idx),), key, dtype=torch.long,
                                             device=self.device))
                b, s = denormalise(mu.cpu(), ls.cpu(), loc, scale)
            b, s, ok = b.numpy(), s.numpy(), ok.numpy()
            bkg[idx] = np.where(ok, b, np.nan)
            sig_net[idx] = np.where(ok, s * self.sigma_scale, np.nan)
            n_pix[idx] = n_valid
            flags[idx[~ok]] |= F.NO_DATA
        if self.inputs.get("labels", "pixels") == "pixels":
            n_label = float(self.inputs.get("n_label", np.pi * 8.0**2))
            lsig = label_sigma(bkg, n_label, img.meta.gain, img.meta.rdnoise)
            err = predicted_sigma(sig_net, lsig)  # BKGnet eq. 5
        else:
            err = sig_net.copy()
        err[~np.isfinite(bkg)] = np.nan
        return BackgroundResult(bkg, err, np.full(n, np.nan), n_pix, flags,
                                extra={"sigma_net": sig_net})


def _n_inside(x0: np.ndarray, y0: np.ndarray, S: int, nx: int, ny: int) -> np.ndarray:
    """Stamp pixels that fall on the image."""
    wx = np.clip(np.minimum(x0 + S, nx) - np.maximum(x0, 0), 0, None)
    wy = np.clip(np.minimum(y0 + S, ny) - np.maximum(y0, 0), 0, None)
    return wx * wy


# -- training ----------------------------------------------------------------------------------
@dataclass
class TrainingSet:
    """Stamps ready for the network (normalised), with their provenance."""

    x: Any  # torch (N, 2, S, S) float16
    coords: Any  # (N, 2) float32
    mag: Any  # (N,) float32
    has_mag: Any  # (N,) float32
    key: Any  # (N,) long
    y: Any  # (N,) float32 normalised label
    label: np.ndarray  # image units
    label_sigma: np.ndarray
    loc: np.ndarray
    scale: np.ndarray
    exposure: np.ndarray  # index of the exposure each stamp came from
    pos: np.ndarray  # (N, 2) pixel positions

    def subset(self, sel: np.ndarray) -> TrainingSet:
        import torch

        t = torch.from_numpy(np.flatnonzero(sel))
        return TrainingSet(self.x[t], self.coords[t], self.mag[t], self.has_mag[t], self.key[t],
                           self.y[t], self.label[sel], self.label_sigma[sel], self.loc[sel],
                           self.scale[sel], self.exposure[sel], self.pos[sel])

    def tensors(self) -> dict:
        return {"x": self.x, "coords": self.coords, "mag": self.mag, "has_mag": self.has_mag,
                "key": self.key, "y": self.y}

    def __len__(self) -> int:
        return len(self.label)


def build_training_set(exposures: Iterable[tuple[Image, Any, np.ndarray | None]],
                       settings: BKGnetSettings, keys: list[str], *, seed: int = 0,
                       catalog: Any = None, quiet: bool = False, total: int | None = None
                       ) -> TrainingSet:
    """Sample, label, inject and normalise training stamps from ``(image, cat_xy,
    truth_background or None)`` triples."""
    import torch

    from ..nn.bkgnet import normalise_stamps
    from ..progress import progress

    rng = np.random.default_rng(seed)
    galaxies = _galaxy_pool(catalog, rng) if settings.inject else None
    parts: dict[str, list] = {k: [] for k in ("x", "coords", "mag", "has", "key", "y", "label",
                                              "lsig", "loc", "scale", "exp", "pos")}
    for j, (image, cat_xy, truth) in enumerate(progress(exposures, desc="sampling stamps",
                                                        quiet=quiet, total=total,
                                                        unit="image")):
        k = key_name(image.meta.band, image.meta.epoch)
        if k not in keys:
            keys.append(k)
        d = sample_training_stamps(image, cat_xy, settings, rng, galaxies=galaxies,
                                   truth_background=truth)
        m = len(d["label"])
        if m == 0:
            log.warning("%s: no usable empty position (crowded or saturated?)", image.name)
            continue
        st = torch.from_numpy(d["stamps"])
        valid = ~torch.isnan(st)
        xin, loc, scale, ok = normalise_stamps(torch.nan_to_num(st), valid, settings.mask_size,
                                               min_valid=settings.min_valid)
        ok = ok.numpy()
        loc, scale = loc.numpy(), scale.numpy()
        ny, nx = image.shape
        parts["x"].append(xin[torch.from_numpy(ok)].to(torch.float16))
        cx = d["x"] / max(nx - 1, 1) * 2 - 1
        cy = d["y"] / max(ny - 1, 1) * 2 - 1
        parts["coords"].append(np.column_stack([cx, cy])[ok])
        parts["mag"].append(np.nan_to_num(d["mag"], nan=0.0)[ok])
        parts["has"].append(np.isfinite(d["mag"])[ok])
        parts["key"].append(np.full(ok.sum(), keys.index(k)))
        parts["y"].append(((d["label"] - loc) / scale)[ok])
        parts["label"].append(d["label"][ok])
        parts["lsig"].append(d["label_sigma"][ok])
        parts["loc"].append(loc[ok])
        parts["scale"].append(scale[ok])
        parts["exp"].append(np.full(ok.sum(), j))
        parts["pos"].append(np.column_stack([d["x"], d["y"]])[ok])
    if not parts["x"]:
        raise InputError("no training stamps could be drawn from the exposures (every position "
                         "crowded, saturated or masked?)")
    cat = {k: np.concatenate(v) for k, v in parts.items() if k != "x"}
    return TrainingSet(
        x=torch.cat(parts["x"]), coords=torch.from_numpy(cat["coords"].astype(np.float32)),
        mag=torch.from_numpy(cat["mag"].astype(np.float32)),
        has_mag=torch.from_numpy(cat["has"].astype(np.float32)),
        key=torch.from_numpy(cat["key"].astype(np.int64)),
        y=torch.from_numpy(cat["y"].astype(np.float32)), label=cat["label"],
        label_sigma=cat["lsig"], loc=cat["loc"], scale=cat["scale"], exposure=cat["exp"],
        pos=cat["pos"])


def _loss(model, batch):
    from ..nn.bkgnet import gaussian_nll

    mu, ls = model(batch["x"].float(), batch["coords"], batch["mag"], batch["has_mag"],
                   batch["key"])
    return gaussian_nll(mu, ls, batch["y"])


def split_by_exposure(exposure: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean "is validation" per stamp: a random ``val_fraction`` of the exposures (>= 1 when
    there are at least two)."""
    ids = np.unique(exposure)
    n_val = int(round(val_fraction * len(ids)))
    if len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    else:
        n_val = 0
    rng = np.random.default_rng(seed + 1)
    val_ids = rng.choice(ids, n_val, replace=False) if n_val else np.array([], int)
    return np.isin(exposure, val_ids)


def predict_set(model, ts: TrainingSet, *, batch_size: int = 1024) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Network background and sigma (image units) for a training set."""
    import torch

    from ..nn.bkgnet import denormalise

    model.eval()
    dev = next(model.parameters()).device
    bs, ss = [], []
    with torch.inference_mode():
        for s in range(0, len(ts), batch_size):
            sl = slice(s, s + batch_size)
            mu, ls = model(ts.x[sl].float().to(dev), ts.coords[sl].to(dev), ts.mag[sl].to(dev),
                           ts.has_mag[sl].to(dev), ts.key[sl].to(dev))
            b, sg = denormalise(mu.cpu(), ls.cpu(), torch.from_numpy(ts.loc[sl]),
                                torch.from_numpy(ts.scale[sl]))
            bs.append(b.numpy())
            ss.append(sg.numpy())
    return np.concatenate(bs), np.concatenate(ss)


def sigma_scale(model, val: TrainingSet) -> float:
    """Error calibration on the validation exposures: the factor ``k`` that makes the pull
    width ``sigma68[(b - label) / (k sigma_net)]`` one (temperature scaling of sigma_net).  The
    Gaussian likelihood fits sigma on the training stamps; held-out exposures scatter a little
    more, and ``k`` (typically 1.0-1.2) carries that into the reported errors."""
    from ..metrics import pull_summary

    b, s = predict_set(model, val)
    k = float(pull_summary(b, val.label, s)["sigma68"])
    return k if np.isfinite(k) and k > 0 else 1.0


def validation_metrics(model, val: TrainingSet) -> dict:
    """sigma68 of (b - label) / label, pull width against the label with sigma_net, bias."""
    from ..metrics import pull_summary, scatter

    b, s = predict_set(model, val)
    rel = scatter(b, val.label)
    pulls = pull_summary(b, val.label, s)
    from ..metrics import bias

    return {"n_stamps": int(len(val)), "sigma68_rel_vs_label": float(rel),
            "bias_rel_vs_label": float(bias(b, val.label)),
            "pull_sigma68_vs_label": float(pulls["sigma68"]),
            "frac_pull_gt5_vs_label": float(pulls["frac_gt_5"]),
            "median_label_sigma_rel": float(np.median(val.label_sigma / val.label))}


def simulated_exposures(n_exposures: int, *, config: Any = None, seed: int = 0
                        ) -> tuple[list, Any]:
    """Exposures from the built-in simulator (in memory): a list of (image, cat_xy, truth
    background, truth table) and the field catalogue of catalogued sources."""
    from ..simulate.ccd import CCDSimConfig, exposure_wcs, simulate_exposure, simulate_field

    cfg = config if isinstance(config, CCDSimConfig) else CCDSimConfig(**(config or {}))
    ss = np.random.SeedSequence(seed)
    field_seed, *exp_seeds = ss.spawn(int(n_exposures) + 1)
    fieldcat = simulate_field(cfg, seed=np.random.default_rng(field_seed))
    keys = [(b, e) for e in cfg.epochs for b in cfg.bands]
    out = []
    for k in range(int(n_exposures)):
        band, epoch = keys[k % len(keys)]
        rng = np.random.default_rng(exp_seeds[k])
        offset = tuple(rng.uniform(-cfg.max_offset, cfg.max_offset, 2))
        image, truth, background = simulate_exposure(cfg, fieldcat, band=band, epoch=epoch,
                                                     offset=offset, seed=rng)
        wcs = exposure_wcs(cfg, offset)
        cat = fieldcat[np.asarray(fieldcat["catalogued"], bool)]
        cx, cy = wcs.all_world2pix(np.asarray(cat["ra"]), np.asarray(cat["dec"]), 0)
        image.path = Path(f"sim_{band}_{epoch}_{k:03d}.fits")
        out.append((image, (cx, cy), background, truth))
    return out, fieldcat[np.asarray(fieldcat["catalogued"], bool)]


def train_bkgnet(images: Sequence[str | Path] | None, catalog: Any, output: str | Path, *,
                 config: Any = None, epochs: int | None = None, seed: int = 0,
                 device: str = "auto", preset: str | None = None, simulated: bool = False,
                 n_exposures: int = 48, labels: str = "pixels", use_coords: bool = True,
                 inject: bool | None = None, resume: bool = False, overwrite: bool = False,
                 quiet: bool = False, batch_size: int | None = None, lr: float | None = None,
                 stamps_per_image: int | None = None, threads: int | None = None,
                 command: str | None = None, description: str = "", **read_kwargs: Any
                 ) -> dict:
    """Train a BKGnet and write it (weights + card) to ``output``; return the card.

    Parameters
    ----------
    images : FITS paths (globs allowed); ignored with ``simulated``
    catalog : catalogue path or Table (positions to avoid; galaxy shapes to inject)
    output : model file (.pt); the checkpoint is ``<output>.ckpt`` beside it
    config : SurveyConfig (``[bkgnet]`` settings and training defaults; ``[simulate]`` for
        ``simulated``)
    epochs, batch_size, lr, preset : override ``[bkgnet]``
    simulated : train on ``n_exposures`` exposures of the built-in simulator instead
    labels : "pixels" (BKGnet: mean of the label circle) or "truth" (simulator's noise-free
        background; needs ``simulated``)
    use_coords : give the net the CCD position (the paper's ablation switches it off)
    inject : inject galaxies at the stamp centres (default from the configuration)
    resume : continue an interrupted run from its checkpoint
    """
    from .. import __version__
    from ..config import load_config
    from ..io import catalog_for_image, check_output, read_catalog
    from ..nn.bkgnet import BKGnet, BKGnetArch, flops_per_stamp
    from ..nn.device import seed_everything
    from ..nn.modelfile import save_model
    from ..nn.trainer import TrainConfig, Trainer

    t0 = time.perf_counter()
    cfg = config or load_config()
    output = Path(output)
    if output.suffix != ".pt":
        raise InputError(f"--output must end in .pt, got {output}")
    if labels not in ("pixels", "truth"):
        raise InputError(f"labels must be 'pixels' or 'truth', got {labels!r}")
    if labels == "truth" and not simulated:
        raise InputError("labels='truth' needs --simulated (real exposures have no noise-free "
                         "background)")
    inputs = [] if simulated else list(images or [])
    if catalog is not None and not hasattr(catalog, "colnames"):
        inputs.append(catalog)
    check_output(output, overwrite=overwrite or resume, inputs=inputs)
    section = dict(cfg.bkgnet)
    s = BKGnetSettings.from_config(section, inject=inject, stamps_per_image=stamps_per_image)
    hp = {"epochs": 30, "batch_size": 128, "lr": 2e-3, "weight_decay": 1e-4, "patience": 6,
          "preset": "lean"}
    hp.update({k: section[k] for k in TRAIN_KEYS if k in section})
    for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("preset", preset)):
        if v is not None:
            hp[k] = v
    seed_everything(seed)
    keys: list[str] = []
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    if simulated:
        say(f"simulating {n_exposures} exposures with the built-in simulator "
            f"([simulate] of {cfg.name})")
        exps, fieldcat = simulated_exposures(n_exposures, config=cfg.simulate, seed=seed)
        triples = [(im, xy, bg if labels == "truth" else None) for im, xy, bg, _ in exps]
        cat_for_pool = fieldcat
        shapes = {exps[0][0].shape}
        data_summary = {"source": "built-in simulator", "config": cfg.name,
                        "n_exposures": int(n_exposures), "seed": int(seed)}
        total = len(triples)
    else:
        from ..workflows import expand_paths, iter_images

        if not images:
            raise InputError("give training exposures (IMAGE...) or --simulated")
        if catalog is None:
            raise InputError("--catalog is required to find empty positions")
        paths = expand_paths(images)
        cat_all = catalog if hasattr(catalog, "colnames") else read_catalog(catalog)
        read_kwargs.setdefault("keys", cfg.header)
        read_kwargs.setdefault("required", ("gain",))
        shapes = set()

        def gen():
            for im in iter_images(paths, quiet=True, **read_kwargs):
                c = catalog_for_image(cat_all, im)
                shapes.add(im.shape)
                yield im, (np.asarray(c["x"], float), np.asarray(c["y"], float)), None

        triples = gen()
        cat_for_pool = cat_all
        data_summary = {"source": "user exposures", "n_exposures": len(paths),
                        "images": [p.name for p in paths[:50]],
                        "catalog": str(getattr(catalog, "meta", {}).get("source", catalog))}
        total = len(paths)
    ts = build_training_set(triples, s, keys, seed=seed, catalog=cat_for_pool, quiet=quiet,
                            total=total)
    is_val = split_by_exposure(ts.exposure, s.val_fraction, seed)
    train, val = ts.subset(~is_val), ts.subset(is_val)
    if len(val) == 0:
        log.warning("only one exposure: validating on the training stamps (no held-out data)")
        val = train
    say(f"{len(train)} training and {len(val)} validation stamps from "
        f"{len(np.unique(ts.exposure))} exposures; keys: {', '.join(keys)}")
    arch = BKGnetArch.from_preset(hp["preset"], stamp_size=s.stamp_size, mask_size=s.mask_size,
                                  n_keys=len(keys), use_coords=use_coords)
    model = BKGnet(arch)
    tc = TrainConfig(epochs=int(hp["epochs"]), batch_size=int(hp["batch_size"]),
                     lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]),
                     patience=hp["patience"], scheduler="plateau",
                     scheduler_kwargs={"factor": 0.3, "patience": 2}, grad_clip=10.0,
                     seed=seed, device=device, threads=threads, quiet=quiet)
    trainer = Trainer(model, _loss, tc, checkpoint=output.with_suffix(".ckpt"))
    hist = trainer.fit(train.tensors(), val.tensors(), resume=resume)
    model = trainer.model.cpu().eval()
    metrics = validation_metrics(model, val)
    k = sigma_scale(model, val)
    metrics.update(best_epoch=hist.best_epoch + 1, epochs_run=len(hist.epochs),
                   best_val_nll=hist.best_val, train_seconds=round(time.perf_counter() - t0, 1))
    card = {
        "kind": "bkgnet", "arch": arch.as_dict(), "preset": arch.preset,
        "description": description or "BKGnet background + error at each source",
        "inputs": {"keys": keys, "labels": labels, "n_label": float(np.pi * s.label_radius**2),
                   "label_radius": s.label_radius, "min_valid": s.min_valid,
                   "sigma_scale": k,
                   "normalisation": "median and 1.4826 MAD of valid pixels (2x2 grid), "
                                    "5 asinh(v/5), invalid = 0, validity channel",
                   "coords": "x / (nx - 1) * 2 - 1, y / (ny - 1) * 2 - 1",
                   "image_shape": sorted(shapes)[0] if shapes else None,
                   "mag": "(mag - 21) / 2; learned default when absent"},
        "training": {**hp, "seed": seed, "labels": labels, "inject": s.inject,
                     "use_coords": use_coords, "settings": asdict(s),
                     "flops_per_stamp": flops_per_stamp(model),
                     "history": [{k: round(v, 6) if isinstance(v, float) else v
                                  for k, v in e.items()} for e in hist.epochs]},
        "data": {**data_summary, "n_train": len(train), "n_val": len(val)},
        "metrics": metrics,
        "training_command": command or "(API) skysub.background.bkgnet.train_bkgnet",
        "skysub_version": __version__,
    }
    save_model(output, model, card, overwrite=True)
    return card


def command_line(argv: list[str] | None = None) -> str:
    """The command line (``argv``, default the process's), for model cards."""
    return " ".join(shlex.quote(a) for a in ["skysub", *(sys.argv[1:] if argv is None
                                                         else argv)])
