"""Model selection on repeated exposures: the duplicates score (``select="duplicates"``).

A pixel label is ``sky + G + n``: the smooth sky, the light of faint uncatalogued sources and
neighbours' wings ``G`` (skewed, positive) and the pixel noise ``n`` (eq. 3).  Scores against
labels mix the prediction's error with ``G``; a network can look better on them by following or
"explaining" ``G`` (its sigma) while its error against the smooth sky grows.  Two exposures of
the same band see the same faint sources at the same sky position, so in the difference of their
labels ``G`` cancels and only the pixel noise is left::

    D = [(b1 - b2) - (l1 - l2)] / level,   E[D^2] = E[(e1 - e2)^2] + var(n1) + var(n2)

with ``e = b - sky`` the prediction's error in each exposure.  The score is the trimmed mean
square of ``D`` (values beyond ``TRIM`` sigma68 of the median left out) over every pair of
exposures of one band at sky positions drawn in the held-out tiles (:func:`duplicate_positions`);
the label noise adds the same constant to every epoch.  It does not see the part of the error
common to both exposures (what the network follows of ``G``, illumination it misfits the same
way in both): on the development instrument the measured share followed is small.

Nor does it see a common offset; ``select="duplicates-offset"`` adds one
(:func:`offset_score`): the median of ``(b - label) / label`` over the same rows, per band.
Where most labels hold no faint source (``G`` skewed: most circles have none, a few a whole
source; the pixel noise symmetric) the median label sits at the sky while the mean label --
what a Gaussian likelihood on pixel labels learns -- sits above it by the faint sources' mean
light.  Where the wings of catalogued neighbours reach most label circles the median label
lies above the sky as well, and the offset does not see the bias: on the development
instrument (53, 16 exposures) the measured offsets stayed below the bias against the
sky truth (by 0.11-0.17 % at every epoch), so the offset is not in the default
(docs/bkgnet.md).

With ``e = c + u`` (``c`` the offset common to both exposures, ``u`` what differs),
``E[D^2] = 2 var(u) + noise`` and the mean square error against the sky is ``var(u) + c^2``,
so ``score = duplicates + 2 c^2`` ranks epochs by that mean square error (the pixel noise adds
the same constant to every epoch) where ``c`` is measured against the sky: it keeps the
duplicates score's ranking where the offsets are equal (:func:`selection_score`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: sky positions drawn in the held-out tiles (first exposure's pixel frame)
N_POSITIONS = 800
#: fewest pairs for the duplicates score (fewer: ``train_bkgnet`` falls back to the scaled NLL)
MIN_PAIRS = 200
#: values of D beyond this many sigma68 of its median are left out of the mean square
TRIM = 4.0
#: weight of the squared offset in the selection score: ``E[D^2]`` holds twice the variance of
#: the error that differs between exposures, the mean square error against the sky once
OFFSET_WEIGHT = 2.0


def duplicates_score(b: np.ndarray, label: np.ndarray, i1: np.ndarray, i2: np.ndarray,
                     level: np.ndarray) -> float:
    """Trimmed mean square of ``[(b[i1] - b[i2]) - (label[i1] - label[i2])] / level`` (inf
    with fewer than 10 finite pairs)."""
    from ...stats import sigma68

    d = ((b[i1] - b[i2]) - (label[i1] - label[i2])) / level
    d = d[np.isfinite(d)]
    if len(d) < 10:
        return float("inf")
    c = np.median(d)
    w = d[np.abs(d - c) <= TRIM * sigma68(d)] - c
    return float(np.mean(w ** 2)) if len(w) else float("inf")


def offset_score(b: np.ndarray, label: np.ndarray, group: np.ndarray | None = None
                 ) -> tuple[float, dict]:
    """The prediction's offset from the labels that a user can measure without the truth:
    ``c_k = median[(b - label) / label]`` over the rows of each group ``k`` (band; all rows
    in one group when ``group`` is None), and the row-weighted mean of ``c_k^2``.

    The median, not the mean: a label is ``sky + G + n`` with ``G`` the faint sources' light
    (skewed: most labels hold none, a few a whole source) and ``n`` symmetric pixel noise, so
    the median label lies at the sky (above it by the small median of ``G + n``), the mean
    label above it by the mean of ``G`` -- what the network learns from pixel labels and what
    the sky truth does not hold.  Returns ``(mean c^2, {group: c_k})`` (inf, {} with fewer
    than 10 finite rows)."""
    rel = (np.asarray(b, float) - np.asarray(label, float)) / np.asarray(label, float)
    g = np.zeros(len(rel), int) if group is None else np.asarray(group)
    ok = np.isfinite(rel)
    if ok.sum() < 10:
        return float("inf"), {}
    per, tot, n = {}, 0.0, 0
    for k in np.unique(g[ok]):
        r = rel[ok & (g == k)]
        per[str(k)] = float(np.median(r))
        tot += len(r) * per[str(k)] ** 2
        n += len(r)
    return tot / n, per


def selection_score(b: np.ndarray, positions: DuplicatePositions, *,
                    offset_weight: float = OFFSET_WEIGHT) -> dict:
    """The score of ``select="duplicates-offset"``: the duplicates score plus
    ``offset_weight`` times the squared offset (:func:`offset_score`, per band), both in units
    of the level (``offset_weight`` 0: ``select="duplicates"``).  Returns ``{"score",
    "duplicates", "offset2", "offset": {band: c}}``."""
    p = positions
    dup = duplicates_score(b, p.label, p.i1, p.i2, p.level)
    off2, per = offset_score(b, p.label, p.band)
    return {"score": float(dup + offset_weight * off2), "duplicates": dup, "offset2": off2,
            "offset": per}


@dataclass
class DuplicatePositions:
    """Label positions at the same sky points in several exposures, and their pairs."""

    exposure: np.ndarray  # (M,) index of the exposure of each row
    x: np.ndarray  # (M,) pixel position in that exposure
    y: np.ndarray
    label: np.ndarray  # (M,) clipped-mean pixel label (as in training)
    i1: np.ndarray  # (P,) rows of the pairs: same sky point, same band, two exposures
    i2: np.ndarray
    level: np.ndarray  # (P,) mean of the pair's two labels
    band: np.ndarray | None = None  # (M,) band of each row's exposure
    point: np.ndarray | None = None  # (M,) index of each row's sky point

    @property
    def n_pairs(self) -> int:
        return len(self.i1)


def duplicate_positions(exposures: Iterable[tuple[Any, Any]], settings, held_out_tiles:
                        np.ndarray, *, n: int = N_POSITIONS, seed: int = 0
                        ) -> DuplicatePositions:
    """Empty label positions at ``n`` sky points of the held-out tiles in every exposure.

    ``exposures`` yields ``(image, (cat_x, cat_y))`` in the order of the training set (the
    first one sets the pixel frame of the tiles, as :func:`skysub.background.bkgnet.data.
    build_training_set`); ``held_out_tiles`` are the tile ids
    (:func:`skysub.simulate.trainingdata.sky_tiles`) of the validation stamps.  A position
    counts in an exposure when it lies on it, no catalogued source is within
    ``settings.empty_radius`` and at least half the label circle is valid."""
    from scipy.spatial import cKDTree

    from ...simulate.trainingdata import circle_values, clipped_label, sky_tiles
    from .data import _celestial

    rng = np.random.default_rng([int(seed), 7919])
    rows: dict[str, list] = {k: [] for k in ("exp", "pt", "x", "y", "label", "band")}
    ref = ref_wcs = world = px = py = None
    for j, (image, cat_xy) in enumerate(exposures):
        if ref is None:
            ref, ref_wcs = image, _celestial(image)
            ny, nx = image.shape
            cx_, cy_ = rng.uniform(-0.5, nx - 0.5, 40 * n), rng.uniform(-0.5, ny - 0.5, 40 * n)
            keep = np.isin(sky_tiles(np.column_stack([cx_, cy_])), held_out_tiles)
            px, py = cx_[keep][:n], cy_[keep][:n]
            world = ref_wcs.all_pix2world(px, py, 0) if ref_wcs is not None else None
        w = _celestial(image)
        if world is not None and w is not None:
            x, y = (np.asarray(v, float) for v in w.all_world2pix(*world, 0))
        else:
            x, y = px.copy(), py.copy()
        ny, nx = image.shape
        good = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) \
            & (y < ny - 0.5)
        if cat_xy is not None and len(cat_xy[0]):
            cx, cy = (np.asarray(a, float) for a in cat_xy)
            ok = np.isfinite(cx) & np.isfinite(cy)
            if ok.any():
                d, _ = cKDTree(np.column_stack([cx[ok], cy[ok]])).query(
                    np.column_stack([np.where(good, x, 0.0), np.where(good, y, 0.0)]))
                good &= d > settings.empty_radius
        idx = np.flatnonzero(good)
        vals, use = circle_values(image, x[idx], y[idx], settings.label_radius)
        label, n_lab = clipped_label(vals, use, settings.label_clip)
        ok = np.isfinite(label) & (n_lab >= 0.5 * np.pi * settings.label_radius ** 2)
        idx, label = idx[ok], label[ok]
        rows["exp"].append(np.full(len(idx), j))
        rows["pt"].append(idx)
        rows["x"].append(x[idx])
        rows["y"].append(y[idx])
        rows["label"].append(label)
        rows["band"].append(np.full(len(idx), str(image.meta.band)))
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in rows.items()}
    i1, i2 = [], []
    order = np.lexsort((cat["exp"], cat["band"], cat["pt"])) if len(cat["pt"]) else []
    groups: dict[tuple, list[int]] = {}
    for r in order:
        groups.setdefault((int(cat["pt"][r]), cat["band"][r]), []).append(int(r))
    for members in groups.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                i1.append(members[a])
                i2.append(members[b])
    i1a, i2a = np.asarray(i1, np.int64), np.asarray(i2, np.int64)
    lab = np.asarray(cat["label"], float)
    return DuplicatePositions(np.asarray(cat["exp"], np.int64), np.asarray(cat["x"], float),
                              np.asarray(cat["y"], float), lab, i1a, i2a,
                              0.5 * (lab[i1a] + lab[i2a]) if len(i1a) else np.zeros(0),
                              np.asarray(cat["band"]).astype(str),
                              np.asarray(cat["pt"], np.int64))


class DuplicatesScorer:
    """The duplicates score of a network under training (``select="duplicates"``).

    ``exposures`` is a callable that yields the ``(image, cat_xy)`` pairs again (in the
    training set's order; user exposures are read again from their files at every epoch);
    ``card`` the stamp geometry and keys the network is run with; ``offset_weight`` the
    weight of the squared offset (0: the duplicates score alone, ``select="duplicates"``;
    :data:`OFFSET_WEIGHT`: ``"duplicates-offset"``).  Every call's score and its parts go to
    ``log`` (the training stores them in the card)."""

    def __init__(self, exposures: Callable[[], Iterable[tuple[Any, Any]]],
                 positions: DuplicatePositions, card: dict, *,
                 offset_weight: float = 0.0) -> None:
        self.exposures = exposures
        self.positions = positions
        self.card = card
        self.offset_weight = float(offset_weight)
        self.log: list[dict] = []

    def predict(self, model, *, errors: bool = False, mag: np.ndarray | None = None):
        """The network's background at every row of the positions (NaN where it has none);
        with ``errors``, ``(b, sigma_net, eq3)``: its own sigma and the labels' eq. 3;
        ``mag`` (per row): the magnitude input (default none, the positions are empty)."""
        import copy

        import torch

        from ...nn.bkgnet import label_sigma
        from .estimator import BKGnetBackground

        net = copy.deepcopy(model).cpu().eval()
        est = BKGnetBackground((net, self.card), device="cpu",
                               threads=torch.get_num_threads())
        p = self.positions
        b, sg, eq3 = (np.full(len(p.x), np.nan) for _ in range(3))
        n_label = float(np.pi * self.card["inputs"].get("label_radius", 8.0) ** 2)
        for j, (image, _) in enumerate(self.exposures()):
            sel = np.flatnonzero(p.exposure == j)
            if len(sel):
                r = est.estimate(image, p.x[sel], p.y[sel],
                                 mag=None if mag is None else np.asarray(mag, float)[sel])
                b[sel], sg[sel] = r.bkg, r.extra["sigma_net"]
                eq3[sel] = label_sigma(p.label[sel], n_label, image.meta.gain,
                                       image.meta.rdnoise)
        return (b, sg, eq3) if errors else b

    def __call__(self, model) -> float:
        out = selection_score(self.predict(model), self.positions,
                              offset_weight=self.offset_weight)
        self.log.append(out)
        return out["score"]
