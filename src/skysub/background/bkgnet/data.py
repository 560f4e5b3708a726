"""BKGnet's training set: stamps sampled from exposures (:func:`skysub.simulate.trainingdata.
sample_training_stamps`: empty positions, labels, injected galaxies) turned into normalised
network tensors (:class:`TrainingSet`, :func:`build_training_set`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InputError
from ...image import Image
from ...simulate.trainingdata import galaxy_pool, key_name, sample_training_stamps
from .estimator import BKGnetSettings

log = logging.getLogger("skysub")


#: the tuned classical annulus the training report compares with (PAUS, BKGnet §2.2) [px]
ANNULUS_RADII = (30.0, 45.0)
#: spacing of the nine label circles of a label-noise stencil, in label radii
LABEL_SPACING = 2.5
#: the one-dimensional second difference; the stencil is its outer product with itself / 4
STENCIL_1D = (1.0, -2.0, 1.0)
#: sum of the squared stencil weights: ``var(D) = STENCIL_NORM sigma_L^2``
STENCIL_NORM = 2.25


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
    #: the classical baseline on the same stamps: clipped median of the ANNULUS_RADII annulus
    annulus: np.ndarray | None = None
    #: (N,) distance of each stamp centre to the nearest CCD edge [px]
    edge_distance: np.ndarray | None = None
    #: label-noise stencils of every exposure (:func:`label_stencils`), concatenated, with
    #: the ``exposure`` and band x epoch ``key`` index of each
    stencils: dict | None = None
    #: (N, 2) stamp centres on the sky, in the pixel frame of the first exposure (its WCS;
    #: the stamp's own pixel position without one)
    sky: np.ndarray | None = None
    #: (N,) image units (ADU) per unit of ``10^(-0.4 (mag - zero_point))``: exposure time /
    #: gain of each stamp's exposure (fluxes of sources injected after sampling)
    flux_unit: np.ndarray | None = None

    def subset(self, sel: np.ndarray) -> TrainingSet:
        import torch

        t = torch.from_numpy(np.flatnonzero(sel))
        opt = {k: None if getattr(self, k) is None else getattr(self, k)[sel]
               for k in ("annulus", "edge_distance", "sky", "flux_unit")}
        return TrainingSet(self.x[t], self.coords[t], self.mag[t], self.has_mag[t], self.key[t],
                           self.y[t], self.label[sel], self.label_sigma[sel], self.loc[sel],
                           self.scale[sel], self.exposure[sel], self.pos[sel],
                           stencils=self.stencils, **opt)

    def tensors(self) -> dict:
        return {"x": self.x, "coords": self.coords, "mag": self.mag, "has_mag": self.has_mag,
                "key": self.key, "y": self.y}

    def __len__(self) -> int:
        return len(self.label)


def annulus_on_stamps(stamps: np.ndarray, radii: tuple[float, float] = ANNULUS_RADII
                      ) -> np.ndarray:
    """The classical baseline on training stamps (NaN = invalid): 3-sigma clipped median of
    the pixels ``radii[0] <= r < radii[1]`` from the stamp centre (clipped to the stamp)."""
    from ...stats import clipped_stats

    S = stamps.shape[-1]
    c = S // 2
    yy, xx = np.mgrid[:S, :S]
    r = np.hypot(xx - c, yy - c)
    r_out = min(radii[1], c)
    ring = (r >= min(radii[0], r_out - 2)) & (r < r_out)
    vals = stamps[:, ring]
    return np.asarray(clipped_stats(vals, sigma=3.0).median, float)


def label_stencils(image: Image, cat_xy: tuple[np.ndarray, np.ndarray] | None,
                   settings: BKGnetSettings, rng: np.random.Generator, n: int) -> dict:
    """Label-noise samples: pixel labels at nine empty positions on a 3 x 3 grid,
    ``LABEL_SPACING`` label radii apart along the CCD axes, combined with the weights
    ``STENCIL = [1, -2, 1] x [1, -2, 1] / 4`` (the product of a second difference along x and
    one along y).

    The combination ``D = sum w_ij l_ij`` vanishes for any sky of the form ``f(x) + g(y)`` --
    constant, gradients, quadratics, edge bands and their sums at corners -- and for ``xy``,
    so smooth illumination does not enter (a second difference along one direction only picks
    up the curvature of rings, glows and vignetting across it).  With independent labels
    ``var(D) = 2.25 sigma_L^2``, ``sigma_L`` being the TOTAL noise of one pixel label: pixel
    noise (eq. 3) plus what faint uncatalogued sources and structure add.

    Returns ``d`` (D), ``level`` (mean of the nine labels), ``eq3`` (eq. 3 of the nine labels,
    combined with the same weights: ``sqrt(sum w^2 eq3^2 / sum w^2)``), ``edge_distance``
    (of the centre) [px].
    """
    from scipy.spatial import cKDTree

    from ...nn.bkgnet import label_sigma
    from ...simulate.trainingdata import circle_values, clipped_label, draw_positions

    s = settings
    ny, nx = image.shape
    h = LABEL_SPACING * s.label_radius
    x, y = draw_positions(image.shape, 12 * n, s, rng)
    pts = [(x + i * h, y + j * h, STENCIL_1D[i + 1] * STENCIL_1D[j + 1] / 4.0)
           for i in (-1, 0, 1) for j in (-1, 0, 1)]
    ok = np.ones(len(x), bool)
    for px, py, _ in pts:
        ok &= (px >= s.label_radius) & (px <= nx - 1 - s.label_radius)
        ok &= (py >= s.label_radius) & (py <= ny - 1 - s.label_radius)
    if cat_xy is not None and len(cat_xy[0]):
        cx, cy = (np.asarray(a, float) for a in cat_xy)
        good = np.isfinite(cx) & np.isfinite(cy)
        if good.any():
            tree = cKDTree(np.column_stack([cx[good], cy[good]]))
            for px, py, _ in pts:
                d, _ = tree.query(np.column_stack([px, py]), k=1)
                ok &= d > s.empty_radius
    idx = rng.permutation(np.flatnonzero(ok))[:n]  # draw_positions puts edge ones first
    d = np.zeros(len(idx))
    level = np.zeros(len(idx))
    var3 = np.zeros(len(idx))
    for px, py, w in pts:
        vals, use = circle_values(image, px[idx], py[idx], s.label_radius)
        lab, n_lab = clipped_label(vals, use, s.label_clip)
        lab[n_lab < 0.9 * np.pi * s.label_radius**2] = np.nan
        d += w * lab
        level += lab / len(pts)
        var3 += w**2 * np.asarray(label_sigma(lab, np.maximum(n_lab, 1), image.meta.gain,
                                              image.meta.rdnoise), float) ** 2
    fin = np.isfinite(d) & np.isfinite(var3)
    eq3 = np.sqrt(var3 / STENCIL_NORM)
    return {"d": d[fin], "level": level[fin], "eq3": eq3[fin],
            "edge_distance": np.minimum.reduce([x, nx - 1 - x, y, ny - 1 - y])[idx][fin]}


def _celestial(image: Image):
    """The image's celestial WCS, or None."""
    w = getattr(image, "wcs", None)
    return w if w is not None and getattr(w, "has_celestial", False) else None


def _sky_positions(image: Image, x: np.ndarray, y: np.ndarray, ref_wcs) -> np.ndarray:
    """Pixel positions ``(x, y)`` of ``image`` in the pixel frame of ``ref_wcs`` (the first
    exposure's), through the sky; the positions themselves without a WCS."""
    w = _celestial(image)
    if w is None or ref_wcs is None or len(x) == 0:
        return np.column_stack([x, y]).astype(float)
    ra, dec = w.all_pix2world(x, y, 0)
    rx, ry = ref_wcs.all_world2pix(ra, dec, 0)
    out = np.column_stack([rx, ry]).astype(float)
    bad = ~np.all(np.isfinite(out), axis=1)
    out[bad] = np.column_stack([x, y])[bad]
    return out


def build_training_set(exposures: Iterable[tuple[Image, Any, np.ndarray | None]],
                       settings: BKGnetSettings, keys: list[str], *, seed: int = 0,
                       catalog: Any = None, quiet: bool = False, total: int | None = None
                       ) -> TrainingSet:
    """Sample, label, inject and normalise training stamps from ``(image, cat_xy,
    truth_background or None)`` triples."""
    import torch

    from ...nn.bkgnet import normalise_stamps
    from ...progress import progress

    rng = np.random.default_rng(seed)
    galaxies = galaxy_pool(catalog, rng) if settings.inject else None
    parts: dict[str, list] = {k: [] for k in ("x", "coords", "mag", "has", "key", "y", "label",
                                              "lsig", "loc", "scale", "exp", "pos", "ann",
                                              "edge", "sky", "fu")}
    trip: dict[str, list] = {k: [] for k in ("d", "level", "eq3", "edge_distance",
                                             "exposure", "key")}
    ref_wcs = None
    for j, (image, cat_xy, truth) in enumerate(progress(exposures, desc="sampling stamps",
                                                        quiet=quiet, total=total,
                                                        unit="image")):
        k = key_name(image.meta.band, image.meta.epoch)
        if k not in keys:
            keys.append(k)
        d = sample_training_stamps(image, cat_xy, settings, rng, galaxies=galaxies,
                                   truth_background=truth)
        if truth is None:  # pixel labels: measure their total noise (label-noise calibration)
            t9 = label_stencils(image, cat_xy, settings, rng,
                                max(settings.stamps_per_image, 50))
            for kk, v in t9.items():
                trip[kk].append(v)
            trip["exposure"].append(np.full(len(t9["d"]), j))
            trip["key"].append(np.full(len(t9["d"]), keys.index(k)))
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
        parts["ann"].append(annulus_on_stamps(d["stamps"])[ok])
        parts["edge"].append(np.minimum.reduce([d["x"], d["y"], nx - 1 - d["x"],
                                                ny - 1 - d["y"]])[ok])
        if ref_wcs is None:
            ref_wcs = _celestial(image)
        parts["sky"].append(_sky_positions(image, d["x"][ok], d["y"][ok], ref_wcs))
        parts["fu"].append(np.full(ok.sum(), (image.meta.exptime or 1.0) / image.meta.gain))
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
        pos=cat["pos"], annulus=cat["ann"], edge_distance=cat["edge"], sky=cat["sky"],
        flux_unit=cat["fu"],
        stencils={k: np.concatenate(v) for k, v in trip.items()} if trip["d"] else None)
