"""The neighbour factor of the empty-aperture calibration (``error_calibration=
"neighbours"``): how the empty positions' noise varies with the distance to the nearest
catalogued source (:class:`NeighbourFactor`), back-fitted with the position factor."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .local import LOCAL_K_MAX, LOCAL_K_MIN, LOCAL_MIN, LOCAL_SHARE, LocalFactor, local_factor

#: the neighbour factor's reach: catalogued sources searched per position, and the power of a
#: neighbour's peak (in units of the frame's pixel noise) that divides its distance
#: (:func:`nearest_distance`): a PSF wing falling as ``r^-6`` (Moffat beta = 3) reaches the
#: same surface brightness at a distance ``~ peak^(1/6)``
NEIGHBOUR_SEARCH, WING_POWER = 16, 1.0 / 6.0


def nearest_distance(x: np.ndarray, y: np.ndarray, tree, weight: np.ndarray | None = None
                     ) -> np.ndarray:
    """Distance [px] from each ``x, y`` to the nearest point of ``tree`` farther than 0.5 px
    (a catalogued position closer than that is the source itself, as in
    :func:`skysub.background.annulus.crowding`); with ``weight`` (one per point, >= 1) the
    smallest ``distance / weight`` of the :data:`NEIGHBOUR_SEARCH` nearest instead (an
    effective distance: a bright neighbour counts as a closer one); inf where there is none,
    NaN at non-finite positions."""
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return out
    k = min(NEIGHBOUR_SEARCH if weight is not None else 2, tree.n)
    d, idx = tree.query(np.c_[x[ok], y[ok]], k=k)
    d, idx = d.reshape(-1, k), idx.reshape(-1, k)
    d = np.where(d > 0.5, d, np.inf)
    if weight is not None:
        w = np.asarray(weight, float)[np.minimum(idx, tree.n - 1)]
        d = d / w
    out[ok] = d.min(axis=1)
    return out


def neighbour_peaks(data: np.ndarray, mask: np.ndarray, ax: np.ndarray, ay: np.ndarray
                    ) -> np.ndarray:
    """Brightness of each catalogued source for :func:`nearest_distance`: the mean of the
    3 x 3 pixels at its position above the frame's median, in units of the frame's robust
    pixel noise (MAD), as ``max(peak, 1) ** WING_POWER`` (1 off the image or on masked
    pixels)."""
    ny, nx = data.shape
    good = ~np.asarray(mask, bool) & np.isfinite(data)
    if not good.any():
        return np.ones(ax.shape)
    vals = data[good]
    med = float(np.median(vals))
    noise = 1.4826 * float(np.median(np.abs(vals - med)))
    if not noise > 0:
        return np.ones(ax.shape)
    xi, yi = np.rint(ax).astype(np.int64), np.rint(ay).astype(np.int64)
    acc, cnt = np.zeros(ax.shape), np.zeros(ax.shape)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            xx, yy = xi + dx, yi + dy
            on = (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
            xx, yy = np.clip(xx, 0, nx - 1), np.clip(yy, 0, ny - 1)
            use = on & good[yy, xx]
            acc += np.where(use, data[yy, xx], 0.0)
            cnt += use
    with np.errstate(invalid="ignore", divide="ignore"):
        peak = (acc / cnt - med) / noise
    return np.maximum(np.nan_to_num(peak, nan=1.0), 1.0) ** WING_POWER


@dataclass
class NeighbourFactor:
    """How the empty-position noise varies with the distance ``d`` to the nearest catalogued
    source: ``q_nb(d)``, a factor on the calibrated (non-source) variance.

    The annulus (or mesh) background of a position near a catalogued source holds some of
    that source's light (the wings below the clipping threshold), a contamination that varies
    from position to position and is a real error -- largest next to sources, nil far from
    them.  One factor per frame gives every source the average over the empty positions, too
    large for a source more isolated than they are, too small for one closer.  ``curve`` is a
    :class:`LocalFactor` whose coordinate is ``d`` (``y = 0``): at a distance, the squared
    biweight scale of the ``z`` of the ``k`` empty positions nearest in ``d``, shrunk towards
    the frame's value by the same shuffle test, so a frame whose neighbours do not matter
    keeps one factor.  Sources and empty positions take ``d`` the same way
    (:func:`nearest_distance`, from the same catalogue); beyond the farthest empty position
    the farthest ones speak.
    """

    curve: LocalFactor
    ax: np.ndarray
    ay: np.ndarray
    bias_shrink: float = 0.0
    z_raw: np.ndarray | None = None
    aw: np.ndarray | None = None

    def bias(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The empty positions' median ``z`` at the distance of ``x, y`` (the neighbours'
        light biases a flux low: negative next to sources), shrunk towards 0 by
        ``bias_shrink``; recorded, not applied to any flux."""
        d = np.minimum(self.distance(x, y), float(self.curve.x.max()))
        return self._bias_at(d)

    def _bias_at(self, d: np.ndarray) -> np.ndarray:
        if self.z_raw is None or self.bias_shrink == 0:
            return np.zeros(d.shape)
        return self.bias_shrink * self.curve.knn(d, np.zeros_like(d), self.z_raw,
                                                 stat=_median_rows)

    @cached_property
    def _tree(self):
        from scipy.spatial import cKDTree

        return cKDTree(np.c_[self.ax, self.ay])

    def distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance [px] to the nearest catalogued source (other than one within 0.5 px)."""
        return nearest_distance(np.asarray(x, float), np.asarray(y, float), self._tree,
                                self.aw)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d = np.minimum(self.distance(x, y), float(self.curve.x.max()))
        return self.curve(d, np.zeros_like(d))

    def as_dict(self) -> dict:
        c = self.curve
        d = np.percentile(c.x, [5, 25, 50, 75, 95])
        zero = np.zeros_like(d)
        bias = self._bias_at(d)
        return {"method": "k nearest empty positions in distance to the nearest source",
                "k": int(c.k), "shrink": float(c.shrink), "q_frame": float(c.q_frame),
                "bias_shrink": float(self.bias_shrink),
                "n": int(c.z.size), "distance_percentiles": [float(v) for v in d],
                "q_at_distance_percentiles": [float(v) for v in c(d, zero)],
                "bias_at_distance_percentiles": [float(v) for v in bias]}


def _median_rows(v: np.ndarray) -> np.ndarray:
    return np.median(v, axis=1)


def neighbour_factor(x: np.ndarray, y: np.ndarray, z: np.ndarray, avoid_xy: tuple,
                     rng: np.random.Generator, image: np.ndarray | None = None,
                     mask: np.ndarray | None = None) -> NeighbourFactor | None:
    """:class:`NeighbourFactor` of the normalised empty-position fluxes ``z`` at ``x, y``
    against the catalogue ``avoid_xy``; None without catalogued sources or with fewer than
    :data:`LOCAL_MIN` usable positions."""
    from scipy.spatial import cKDTree

    ax, ay = (np.asarray(v, float).ravel() for v in avoid_xy)
    fin = np.isfinite(ax) & np.isfinite(ay)
    ax, ay = ax[fin], ay[fin]
    if ax.size == 0:
        return None
    aw = None
    if image is not None:
        aw = neighbour_peaks(image, np.zeros(image.shape, bool) if mask is None else mask,
                             ax, ay)
    d = nearest_distance(np.asarray(x, float), np.asarray(y, float), cKDTree(np.c_[ax, ay]),
                         aw)
    z = np.asarray(z, float)
    ok = np.isfinite(d) & np.isfinite(z)
    d, z = d[ok], z[ok]
    if z.size < LOCAL_MIN:
        return None
    # the bias with distance first (the shuffle test of LocalFactor on the running median),
    # then the spread of what is left about it
    probe = LocalFactor(d, np.zeros_like(d), z, int(np.clip(round(z.size / LOCAL_SHARE),
                                                                LOCAL_K_MIN, LOCAL_K_MAX)))
    zero = np.zeros_like(d)
    obs = probe.knn(d, zero, stat=_median_rows)
    null = [probe.knn(d, zero, rng.permutation(z), stat=_median_rows)
            for _ in range(NEIGHBOUR_NULL)]
    v_obs, v_null = float(np.var(obs)), float(np.mean([np.var(v) for v in null]))
    lam_b = float(np.clip(1.0 - v_null / v_obs, 0.0, 1.0)) if v_obs > 0 else 0.0
    curve = local_factor(d, zero, z - lam_b * obs, rng, n_null=NEIGHBOUR_NULL)
    if curve is None:
        return None
    return NeighbourFactor(curve, ax, ay, lam_b, z, aw)


#: back-fitting rounds of the position and neighbour factors (:func:`position_and_neighbour`)
#: and the shuffles of the neighbour factor's test (a 1-D search: cheap)
BACKFIT_ROUNDS, NEIGHBOUR_NULL = 2, 8


def position_and_neighbour(x: np.ndarray, y: np.ndarray, z: np.ndarray, avoid_xy: tuple,
                           rng: np.random.Generator, neighbours: bool = True,
                           rng_nb: np.random.Generator | None = None,
                           image: np.ndarray | None = None, mask: np.ndarray | None = None,
                           w: np.ndarray | None = None
                           ) -> tuple[LocalFactor | None, NeighbourFactor | None]:
    """The position factor and (with ``neighbours``) the neighbour factor of the normalised
    empty-position fluxes ``z``, fitted in turn (back-fitting, :data:`BACKFIT_ROUNDS`): each
    on ``z`` divided by the square root of the other, so that the variance they share is
    counted once and ``q = q_pos q_nb`` at the empty positions has the spread of ``z``.
    ``w``: clearance weights of the positions (position factor only)."""
    import copy

    if not neighbours:
        return local_factor(x, y, z, rng, w=w), None
    # the neighbour factor draws its shuffles from a stream of its own and every round's
    # position factor from the same state as without it: where the neighbours do not matter
    # (both shrinkages 0) the position factor -- and so every error -- is exactly the same
    rng_nb = np.random.default_rng(0x23AB) if rng_nb is None else rng_nb
    # the position factor first, as without neighbours: the neighbour factor then models
    # only what the position factor leaves (a noisy part of the frame stays the position
    # factor's, whatever its sources' distances)
    lf = local_factor(x, y, z, copy.deepcopy(rng))
    nb = None
    for _ in range(BACKFIT_ROUNDS):
        q_pos = np.ones(z.shape) if lf is None else lf(x, y)
        nb = neighbour_factor(x, y, z / np.sqrt(q_pos), avoid_xy, rng_nb, image, mask)
        if nb is None:
            return local_factor(x, y, z, rng), None
        # the position factor sees z less the bias with distance, over the spread with it
        r = (z / np.sqrt(q_pos) - nb.bias(x, y)) * np.sqrt(q_pos) / np.sqrt(nb(x, y))
        lf = local_factor(x, y, r, copy.deepcopy(rng))
    return lf, nb
