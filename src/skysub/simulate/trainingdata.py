"""Training data shared by the learned methods (BKGnet and Lumos): empty-position sampling,
labels, galaxy injection, galaxy pools, exposure splits and simulated exposures.

Both :mod:`skysub.background.bkgnet` and :mod:`skysub.photometry.lumos` draw their training
stamps here, and :func:`skysub.simulate.galaxies.background_cutouts` reuses the sampler; this
module imports no estimator or photometer (it sits on the simulation floor, below them; see
``docs/architecture.md``).

Sampling (BKGnet §3.2, with the fixes skysub makes)
---------------------------------------------------
- positions are drawn uniformly over each exposure plus an extra share within ``edge_width`` px
  of the CCD edges (where scattered light lives); a position is "empty" when no catalogued
  source lies within ``empty_radius`` px; stamps with any pixel above ``saturation`` are
  skipped (the paper: 100,000 counts);
- the label is the mean of the pixels within ``label_radius`` px of the position, after
  clipping pixels more than ``label_clip`` robust sigmas from the circle's median; its error is
  BKGnet eq. 3 for the mean of the kept pixels (:func:`skysub.nn.bkgnet.label_sigma`);
- a Sérsic galaxy with (mag, r50, n, b/a, theta) drawn jointly from a catalogue's rows
  (:func:`galaxy_pool`) may be injected at the centre (with its photon noise);
- training and validation stamps come from different exposures (:func:`split_by_exposure`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..image import Image
from ..stamps import WindowCutter, _round_half_up, annulus_offsets, gather

log = logging.getLogger("skysub")


def key_name(band: Any, epoch: Any) -> str:
    """Vocabulary entry of a band x epoch pair (``"NB685/before"``; ``-`` for a missing part)."""
    return f"{band if band is not None else '-'}/{epoch if epoch is not None else '-'}"


@dataclass
class StampSampling:
    """What :func:`sample_training_stamps` reads of its settings: the stamp geometry and the
    sampling, labelling and injection settings.  Any object with these attributes will do
    (:class:`skysub.background.bkgnet.BKGnetSettings` is one; the defaults are the same, and a
    test holds them equal).

    Attributes
    ----------
    stamp_size : stamp side [px]
    label_radius : label circle radius [px]
    empty_radius : a position is empty when no catalogued source is closer [px]
    stamps_per_image : positions drawn per exposure
    edge_fraction : extra share of positions drawn within ``edge_width`` px of an edge
    edge_width : [px]
    saturation : stamps with a pixel above this (image units) are skipped
    label_clip : robust sigmas beyond which pixels are clipped out of the label circle
    inject : inject a catalogue-like Sérsic galaxy at the centre of every stamp
    zero_point : magnitude of 1 count per second (sets injected fluxes from catalogue mags)
    psf_fwhm : Moffat PSF FWHM [px] of the injected galaxies
    psf_beta : Moffat beta
    """

    stamp_size: int = 120
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
    with np.errstate(invalid="ignore"), quiet_nan():
        med = np.nanmedian(values, axis=1)
        sig = 1.4826 * np.nanmedian(np.abs(values - med[:, None]), axis=1)
        keep = use & (np.abs(values - med[:, None]) <= clip * np.maximum(sig, 1e-12)[:, None])
        n = keep.sum(1)
        mean = np.where(keep, values, 0.0).sum(1) / np.maximum(n, 1)
    mean[n == 0] = np.nan
    return mean, n


class quiet_nan:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def galaxy_pool(catalog: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
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
    from .ccd import CCDSimConfig, simulate_field

    f = simulate_field(CCDSimConfig(), seed=rng)
    f = f[f["kind"] == "galaxy"]
    return {c: np.asarray(f[c], float) for c in cols}


def draw_positions(shape: tuple[int, int], n: int, s: StampSampling,
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
                           settings: StampSampling, rng: np.random.Generator, *,
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
    x, y = draw_positions(image.shape, 3 * n, s, rng)  # oversample, then reject
    if cat_xy is not None and len(cat_xy[0]):
        cx, cy = (np.asarray(a, float) for a in cat_xy)
        good = np.isfinite(cx) & np.isfinite(cy)
        tree = cKDTree(np.column_stack([cx[good], cy[good]]))
        d, _ = tree.query(np.column_stack([x, y]), k=1)
        x, y = x[d > s.empty_radius], y[d > s.empty_radius]
    x, y = x[:2 * n], y[:2 * n]
    if truth_background is not None:
        tv, tu = circle_values(truth_background, x, y, s.label_radius)
        with quiet_nan():
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
        mag = inject_galaxies(data, valid, dx, dy, galaxies, image, s, rng)
    data[~valid] = np.nan
    return {"stamps": data, "x": x[idx], "y": y[idx], "label": label[idx],
            "label_sigma": lsig[idx], "mag": mag, "n_label": n_lab[idx].astype(np.int32)}


def inject_galaxies(data: np.ndarray, valid: np.ndarray, dx: np.ndarray, dy: np.ndarray,
            galaxies: dict[str, np.ndarray], image: Image, s: StampSampling,
            rng: np.random.Generator) -> np.ndarray:
    """Add catalogue-like Sérsic galaxies (with photon noise) at the stamp centres, in place."""
    from .profiles import sersic_stamps
    from .psf import moffat_psf

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


#: side of the sky tiles of :func:`split_by_sky` [px of the reference exposure]
SKY_TILE = 128.0
#: training stamps closer than this to a validation tile are dropped [px]
SKY_GUARD = 16.0


def sky_tiles(sky_xy: np.ndarray, tile: float = SKY_TILE) -> np.ndarray:
    """Tile index (one integer per row) of sky positions ``sky_xy`` (N, 2)."""
    t = np.floor(np.asarray(sky_xy, float) / tile).astype(np.int64)
    return t[:, 0] * 1_000_003 + t[:, 1]


def split_by_sky(sky_xy: np.ndarray, val_fraction: float, seed: int, *,
                 tile: float = SKY_TILE, guard: float = SKY_GUARD
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Training / validation split by position on the SKY: ``val_fraction`` of the
    ``tile`` x ``tile`` tiles (>= 1 when there are at least two) are held out in every
    exposure, and training stamps within ``guard`` of a held-out tile are dropped.

    Repeated exposures of one field see the same faint sources at the same sky positions: a
    split by exposure lets a model learn them and its validation errors come out smaller than
    on another field.  ``sky_xy`` (N, 2) are the stamp centres in one common pixel frame (the
    first exposure's, through the WCS).  Returns boolean ``(is_train, is_val)``.
    """
    sky_xy = np.asarray(sky_xy, float)
    ids = sky_tiles(sky_xy, tile)
    uniq = np.unique(ids)
    n_val = int(round(val_fraction * len(uniq)))
    n_val = min(max(n_val, 1), len(uniq) - 1) if len(uniq) >= 2 else 0
    rng = np.random.default_rng(seed + 1)
    val_ids = rng.choice(uniq, n_val, replace=False) if n_val else np.array([], np.int64)
    is_val = np.isin(ids, val_ids)
    near = np.zeros(len(ids), bool)
    for dx in (-guard, 0.0, guard):
        for dy in (-guard, 0.0, guard):
            near |= np.isin(sky_tiles(sky_xy + [dx, dy], tile), val_ids)
    return ~near, is_val


def simulated_exposures(n_exposures: int, *, config: Any = None, seed: int = 0
                        ) -> tuple[list, Any]:
    """Exposures from the built-in simulator (in memory): a list of (image, cat_xy, truth
    background, truth table) and the field catalogue of catalogued sources."""
    from .ccd import CCDSimConfig, exposure_wcs, simulate_exposure, simulate_field

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


__all__ = ["StampSampling", "circle_offsets", "circle_values", "clipped_label", "draw_positions",
           "galaxy_pool", "inject_galaxies", "key_name", "quiet_nan", "sample_training_stamps",
           "simulated_exposures", "sky_tiles", "split_by_exposure", "split_by_sky"]
