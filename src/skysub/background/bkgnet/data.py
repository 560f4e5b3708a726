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
#: spacing of the three label circles of a label-noise triplet, in label radii
TRIPLET_SPACING = 2.5


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
    #: label-noise triplets of every exposure (:func:`label_triplets`), concatenated
    triplets: dict | None = None

    def subset(self, sel: np.ndarray) -> TrainingSet:
        import torch

        t = torch.from_numpy(np.flatnonzero(sel))
        opt = {k: None if getattr(self, k) is None else getattr(self, k)[sel]
               for k in ("annulus", "edge_distance")}
        return TrainingSet(self.x[t], self.coords[t], self.mag[t], self.has_mag[t], self.key[t],
                           self.y[t], self.label[sel], self.label_sigma[sel], self.loc[sel],
                           self.scale[sel], self.exposure[sel], self.pos[sel],
                           triplets=self.triplets, **opt)

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


def label_triplets(image: Image, cat_xy: tuple[np.ndarray, np.ndarray] | None,
                   settings: BKGnetSettings, rng: np.random.Generator, n: int) -> dict:
    """Labels at three empty positions in a row, ``TRIPLET_SPACING`` label radii apart and
    parallel to the nearest CCD edge (scattered light varies across, not along, an edge).

    The second difference ``D = l_a - 2 l_b + l_c`` cancels any linear sky gradient and has
    variance ``6 sigma_L^2``, ``sigma_L`` being the TOTAL noise of one pixel label: pixel noise
    (eq. 3) plus what faint uncatalogued sources and structure add.  Returns ``d2`` (D),
    ``level`` (mean of the three labels), ``eq3`` (eq. 3 of the middle label),
    ``edge_distance`` [px].
    """
    from scipy.spatial import cKDTree

    from ...nn.bkgnet import label_sigma
    from ...simulate.trainingdata import circle_values, clipped_label, draw_positions

    s = settings
    ny, nx = image.shape
    h = TRIPLET_SPACING * s.label_radius
    x, y = draw_positions(image.shape, 4 * n, s, rng)
    dist = np.column_stack([x, nx - 1 - x, y, ny - 1 - y])
    near = dist.argmin(1)
    along_y = near < 2  # nearest edge left/right: step along y
    ux, uy = np.where(along_y, 0.0, 1.0), np.where(along_y, 1.0, 0.0)
    pts = [(x + t * h * ux, y + t * h * uy) for t in (-1, 0, 1)]
    ok = np.ones(len(x), bool)
    for px, py in pts:
        ok &= (px >= s.label_radius) & (px <= nx - 1 - s.label_radius)
        ok &= (py >= s.label_radius) & (py <= ny - 1 - s.label_radius)
    if cat_xy is not None and len(cat_xy[0]):
        cx, cy = (np.asarray(a, float) for a in cat_xy)
        good = np.isfinite(cx) & np.isfinite(cy)
        if good.any():
            tree = cKDTree(np.column_stack([cx[good], cy[good]]))
            for px, py in pts:
                d, _ = tree.query(np.column_stack([px, py]), k=1)
                ok &= d > s.empty_radius
    idx = rng.permutation(np.flatnonzero(ok))[:n]  # draw_positions puts edge ones first
    labels = []
    for px, py in pts:
        vals, use = circle_values(image, px[idx], py[idx], s.label_radius)
        lab, n_lab = clipped_label(vals, use, s.label_clip)
        lab[n_lab < 0.9 * np.pi * s.label_radius**2] = np.nan
        labels.append((lab, n_lab))
    (la, _), (lb, nb), (lc, _) = labels
    d2 = la - 2 * lb + lc
    fin = np.isfinite(d2)
    eq3 = label_sigma(lb, np.maximum(nb, 1), image.meta.gain, image.meta.rdnoise)
    # level: the mean of the three labels, uncorrelated with D (binning on l_b alone would
    # select on D's own noise)
    level = (la + lb + lc) / 3.0
    return {"d2": d2[fin], "level": level[fin], "eq3": np.asarray(eq3, float)[fin],
            "edge_distance": dist.min(1)[idx][fin]}


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
                                              "edge")}
    trip: dict[str, list] = {k: [] for k in ("d2", "level", "eq3", "edge_distance",
                                             "exposure", "key")}
    for j, (image, cat_xy, truth) in enumerate(progress(exposures, desc="sampling stamps",
                                                        quiet=quiet, total=total,
                                                        unit="image")):
        k = key_name(image.meta.band, image.meta.epoch)
        if k not in keys:
            keys.append(k)
        d = sample_training_stamps(image, cat_xy, settings, rng, galaxies=galaxies,
                                   truth_background=truth)
        if truth is None:  # pixel labels: measure their total noise (label-noise calibration)
            t3 = label_triplets(image, cat_xy, settings, rng, max(settings.stamps_per_image // 2,
                                                                  50))
            for kk, v in t3.items():
                trip[kk].append(v)
            trip["exposure"].append(np.full(len(t3["d2"]), j))
            trip["key"].append(np.full(len(t3["d2"]), keys.index(k)))
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
        pos=cat["pos"], annulus=cat["ann"], edge_distance=cat["edge"],
        triplets={k: np.concatenate(v) for k, v in trip.items()} if trip["d2"] else None)
