"""Empty-aperture calibration of flux errors (Labbé et al. 2003; Whitaker et al. 2011; Skelton
et al. 2014): the photometer measures the frame where there is no source and the spread of what
it finds sets the part of the error the pixel-noise model misses.

The error model of :mod:`skysub.photometry.errors` predicts, for a flux ``F = S - N_a b``, the
variance that does not come from the source itself,

.. math::  W = N_{\\rm noise}\\,\\sigma_{\\rm pix}^2 + N_a^2\\,\\sigma_b^2 ,

which is exact for white noise on a flat sky.  Real frames have correlated pixel noise
(resampling, smoothing, the detector) and background structure on the scale of the annulus
(scattered light, unresolved sources, flat-field residuals) that no per-source statistic sees.
At many random *empty* positions -- away from every catalogued source, masked pixels and the
edges -- the photometer measures the frame with its own weights and its own background
estimator, so the true flux is zero and what it finds is all noise.  Per probe size ``k`` (several
apertures / weight widths) the robust variance ``V_k`` (the biweight scale of the fluxes,
squared) is fitted with

.. math::  V_k = \\alpha\\, W_k + \\sigma_s^2\\, N_0^2\\,(N_{a,k} / N_0)^{\\gamma} ,

``alpha >= 0`` a correlated-noise factor on the white-noise terms, ``sigma_s >= 0`` (ADU per
pixel) a background-structure error at the photometer's own size ``N_0`` (its aperture area;
the point-source weights' ``sum(w)``) and ``gamma`` in [1, 2] how that error grows with the
aperture: 2 for structure fully correlated over the aperture, like the background estimate's
own error, less when the aperture reaches the scale of the structure -- the power law of the
empty-aperture literature, ``sigma(N) ~ N^beta`` with ``beta = gamma / 2`` in [0.5, 1].  The
fit is then scaled to match exactly at ``N_0``, where most sources are measured.  Every
source's error becomes

.. math::  \\sigma_F^2 = \\max(F, 0)/g + \\alpha N_{\\rm noise}\\sigma_{\\rm pix}^2
           + N_a^2\\,\\sigma_{b,\\rm cal}^2 , \\qquad
           \\sigma_{b,\\rm cal}^2 = \\alpha \\sigma_b^2 + \\sigma_s^2 (N_a / N_0)^{\\gamma - 2}

and ``bkg_err`` the honest ``sigma_b,cal``.  On white noise and a flat sky
``alpha ~ 1`` and ``sigma_s ~ 0`` (tested).  With a single probe size (or sizes whose ``N_a^2 /
W`` hardly differ) the two terms cannot be told apart and only ``alpha`` is fitted; where the
sizes do not pin ``gamma`` down (two sizes fit exactly by any) it is 2.  Too few
empty positions: a warning, no calibration (``alpha = 1``, ``sigma_s = 0``) and the
:data:`skysub.flags.UNCALIBRATED` flag on every source.

Two factors then follow how the noise varies, ``q = q_pos(x, y) q_nb(d)`` on the non-source
variance: the position factor (:class:`LocalFactor`) and, with
``error_calibration="neighbours"`` only (opt-in), the neighbour factor
(:class:`NeighbourFactor`), a function of the distance ``d`` to the nearest catalogued source
(divided by that source's brightness to the power 1/6): a background near a source holds
some of its light, so positions near sources are noisier (and biased low), and one factor per
frame gives sources more isolated than the average empty position errors too large.  Sources
and empty positions take ``d`` the same way, from the same catalogue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .. import flags as F
from ..errors import InputError

log = logging.getLogger("skysub")

#: ``error_calibration`` values of the photometers: ``"auto"`` empty-aperture calibration
#: (with its local factor) where the frame has room for it (else, quietly, none), ``"empty"``
#: the same but a frame without room is warned about and flagged UNCALIBRATED,
#: ``"neighbours"`` as ``"auto"`` with the neighbour factor too (opt-in: right on simulated
#: frames, not better on the real test frames, docs/photometry.md), ``"matched"`` as
#: ``"auto"`` with the empty positions weighted to the measured sources' clearance
#: (:func:`clearance_weights`; opt-in, docs/photometry.md), ``"global"`` as ``"auto"`` with
#: one factor for the whole frame (no local factor), ``"none"`` no calibration
CALIBRATIONS = ("auto", "empty", "neighbours", "matched", "global", "none")

#: flags of a probe that make it unusable (its weights were not all on good pixels, or it
#: would be flagged CROWDED as a source)
_BAD_PROBE = F.EDGE | F.MASKED | F.NO_DATA | F.OFF_IMAGE | F.CROWDED


def check_calibration(value: str) -> str:
    if value not in CALIBRATIONS:
        raise InputError(f"unknown error_calibration={value!r}; expected one of {CALIBRATIONS}")
    return value


@dataclass
class NoiseCalibration:
    """Fitted empty-aperture factors of one frame and photometer.

    Attributes
    ----------
    status : {"calibrated", "uncalibrated", "skipped", "off"}
        ``"uncalibrated"``: calibration was asked for (``"empty"``) but the frame had too few
        empty positions (then ``alpha = 1``, ``sigma_s = 0``); ``"skipped"``: the same with
        ``"auto"``; ``"off"``: ``error_calibration="none"``.
    alpha : float
        Factor on the white-noise variance terms (1 = white noise).
    sigma_s : float
        Background-structure error per pixel at ``n_ref``, ADU, added in quadrature to
        ``bkg_err``.
    gamma : float
        Growth of the structure variance with the aperture, ``N_a^gamma`` (1 ... 2).
    n_ref : float
        The photometer's own ``n_aper`` (``N_0``).
    n_probe : int
        Empty positions used (per probe size).
    sizes : list of dict
        Per probe size: ``n``, ``n_aper`` (median), ``observed`` (biweight scale of the
        empty-position fluxes), ``predicted`` (white-noise prediction, sqrt of the median
        ``W``) and ``fitted``.
    message : str
    match : dict or None
        The clearance weights' record (:func:`clearance_weights`), None where every empty
        position counted the same.
    """

    status: str
    alpha: float = 1.0
    sigma_s: float = 0.0
    n_probe: int = 0
    gamma: float = 2.0
    n_ref: float = 1.0
    sizes: list = field(default_factory=list)
    message: str = ""
    local: LocalFactor | None = None
    clearance: float = float("nan")
    neighbour: NeighbourFactor | None = None
    match: dict | None = None

    @property
    def calibrated(self) -> bool:
        return self.status == "calibrated"

    def factor(self, x, y) -> np.ndarray:
        """The local variance factor ``q`` at ``x, y``: the neighbour factor
        (:class:`NeighbourFactor`, by the distance to the nearest catalogued source) times the
        position factor (:class:`LocalFactor`); 1 without them."""
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        q = np.ones(x.shape)
        if not self.calibrated:
            return q
        if self.local is not None:
            q = q * self.local(x, y)
        if self.neighbour is not None:
            q = q * self.neighbour(x, y)
        return q

    def variance(self, var_src, var_pix, n_aper, bkg_err, q=None) -> np.ndarray:
        """Calibrated flux variance from its parts: source Poisson ``var_src``, white pixel
        noise ``var_pix`` (``N_noise sigma_pix^2``), ``n_aper`` and the estimator's
        ``bkg_err``; ``q``: the local factor (:meth:`factor`) on everything but ``var_src``."""
        q = 1.0 if q is None else np.asarray(q, float)
        with np.errstate(invalid="ignore"):
            return (np.asarray(var_src, float) + q * self.alpha * np.asarray(var_pix, float)
                    + np.asarray(n_aper, float) ** 2 * self.bkg_err(bkg_err, n_aper, q) ** 2)

    def bkg_err(self, bkg_err, n_aper, q=None) -> np.ndarray:
        """The honest background error for apertures of ``n_aper`` px:
        ``sqrt(q (alpha bkg_err^2 + sigma_s^2 (n_aper / n_ref)^(gamma - 2)))``."""
        q = 1.0 if q is None else np.asarray(q, float)
        with np.errstate(invalid="ignore", divide="ignore"):
            grow = (np.asarray(n_aper, float) / self.n_ref) ** (self.gamma - 2.0)
            return np.sqrt(q * (self.alpha * np.asarray(bkg_err, float) ** 2
                                + self.sigma_s**2 * grow))

    def as_dict(self) -> dict:
        return {"status": self.status, "alpha": float(self.alpha),
                "sigma_s": float(self.sigma_s), "gamma": float(self.gamma),
                "n_ref": float(self.n_ref), "n_probe": int(self.n_probe),
                "clearance": float(self.clearance),
                "clearance_match": None if self.match is None else dict(self.match),
                "sizes": [dict(s) for s in self.sizes], "message": self.message,
                "local": None if self.local is None else self.local.as_dict(),
                "neighbour": None if self.neighbour is None else self.neighbour.as_dict()}

    def columns(self, n: int, q=None) -> dict[str, np.ndarray]:
        """Per-source columns recording the factors: ``err_alpha``, ``err_sigma_s`` (one per
        frame) and ``err_local`` (``sqrt(q)``, the local factor on the error)."""
        q = np.ones(n) if q is None else np.broadcast_to(np.asarray(q, float), (n,))
        return {"err_alpha": np.full(n, float(self.alpha)),
                "err_sigma_s": np.full(n, float(self.sigma_s)),
                "err_local": np.sqrt(q)}


@dataclass
class LocalFactor:
    """How the empty-position noise varies over the frame: ``q(x, y)``, the factor on the
    calibrated (non-source) variance at a position.

    At each empty position ``i`` the flux at the photometer's own size, in units of the
    frame's calibrated error there, is ``z_i``.  At a point, ``q_knn`` is the squared biweight
    scale of the ``z`` of the ``k`` nearest empty positions; it is shrunk towards ``q_frame``
    (the same over all positions: 1 but for the spread of the per-position white-noise terms
    about their median) on the log scale,

    .. math::  \\log (q / q_{\\rm frame}) = \\lambda \\log (q_{\\rm knn} / q_{\\rm frame}),
               \\qquad
               \\lambda = \\max\\left(0, 1 - {\\rm Var}_{\\rm null} / {\\rm Var}_{\\rm obs}\\right),

    where ``Var_obs`` is the variance of ``log q_knn`` over the empty positions and
    ``Var_null`` the same with the ``z`` shuffled among the positions (pure sampling noise:
    what a frame whose noise does not vary would show).  A frame whose noise does not vary
    thus keeps its single factor (``lambda ~ 0``); one where it does follows it, as far as
    ``k`` positions resolve it.  Where no empty position fits (a crowded region) the nearest
    ones set the factor.  With clearance weights ``w`` (:func:`clearance_weights`) every
    biweight scale counts each position with its weight.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    k: int
    shrink: float = 0.0
    q_frame: float = 1.0
    w: np.ndarray | None = None

    def knn(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | None = None,
            stat: Callable | None = None, w: np.ndarray | None = None) -> np.ndarray:
        """Unshrunk ``q_knn`` of ``z`` (default: the fitted ones, with their weights ``w``) at
        ``x, y`` (NaN at non-finite positions); ``stat`` (rows of ``k`` values -> one per
        row) in place of the squared (weighted) biweight scale."""
        from astropy.stats import biweight_scale

        from ..stats import weighted_biweight_rows

        w = self.w if z is None else w
        z = self.z if z is None else z
        if stat is None and w is not None:
            def stat(v, wv):
                return weighted_biweight_rows(v, wv) ** 2
        elif stat is None:
            def stat(v):
                return biweight_scale(v, c=9.0, axis=1) ** 2
        out = np.full(x.shape, np.nan)
        rows = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
        tree = self._tree
        for start in range(0, rows.size, 20000):  # bounds memory on big catalogues
            r = rows[start:start + 20000]
            _, idx = tree.query(np.c_[x[r], y[r]], k=self.k)
            idx = np.atleast_2d(idx)
            out[r] = stat(z[idx]) if w is None else stat(z[idx], w[idx])
        return out

    @cached_property
    def _tree(self):
        """The empty positions' k-d tree (built once; every :meth:`knn` queries it)."""
        from scipy.spatial import cKDTree

        return cKDTree(np.c_[self.x, self.y])

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            q = self.q_frame * np.exp(self.shrink * np.log(self.knn(x, y) / self.q_frame))
        return np.where(np.isfinite(q) & (q > 0), q, self.q_frame)

    def as_dict(self) -> dict:
        q = self(self.x, self.y)
        return {"method": "k nearest empty positions", "k": int(self.k),
                "shrink": float(self.shrink), "q_frame": float(self.q_frame),
                "n": int(self.z.size),
                "q_percentiles": [float(v) for v in np.percentile(q, [5, 50, 95])]}


#: smallest number of empty positions for a local factor, and the share of them each local
#: estimate uses (``k = clip(n / LOCAL_SHARE, LOCAL_K_MIN, LOCAL_K_MAX)``)
LOCAL_MIN, LOCAL_SHARE, LOCAL_K_MIN, LOCAL_K_MAX = 100, 8, 25, 150


def local_factor(x: np.ndarray, y: np.ndarray, z: np.ndarray,
                 rng: np.random.Generator, n_null: int = 2, w: np.ndarray | None = None
                 ) -> LocalFactor | None:
    """:class:`LocalFactor` from normalised empty-position fluxes ``z`` at ``x, y`` (with
    clearance weights ``w``); None with fewer than :data:`LOCAL_MIN` positions.  ``n_null``
    shuffles (of ``z`` with its weight) estimate ``Var_null``."""
    ok = np.isfinite(z) & np.isfinite(x) & np.isfinite(y)
    if w is not None:
        ok &= np.isfinite(w) & (w > 0)
        w = np.asarray(w, float)[ok]
    x, y, z = x[ok], y[ok], z[ok]
    if z.size < LOCAL_MIN:
        return None
    k = int(np.clip(round(z.size / LOCAL_SHARE), LOCAL_K_MIN, LOCAL_K_MAX))
    lf = LocalFactor(x, y, z, k, q_frame=robust_sigma(z, w) ** 2, w=w)
    with np.errstate(divide="ignore"):
        obs = np.log(lf.knn(x, y))
        perms = [rng.permutation(z.size) for _ in range(int(n_null))]  # z with its weight
        null = [np.log(lf.knn(x, y, z[p], w=None if w is None else w[p])) for p in perms]
    v_obs = float(np.var(obs[np.isfinite(obs)]))
    v_null = float(np.mean([np.var(v[np.isfinite(v)]) for v in null]))
    lf.shrink = float(np.clip(1.0 - v_null / v_obs, 0.0, 1.0)) if v_obs > 0 else 0.0
    return lf


#: the neighbour factor's reach: catalogued sources searched per position, and the power of a
#: neighbour's peak (in units of the frame's pixel noise) that divides its distance
#: (:func:`nearest_distance`): a PSF wing falling as ``r^-6`` (Moffat beta = 3) reaches the
#: same surface brightness at a distance ``~ peak^(1/6)``
NEIGHBOUR_SEARCH, WING_POWER = 16, 1.0 / 6.0
#: scale the neighbours' distances by their brightness (False: the plain distance; for comparisons)
NEIGHBOUR_BRIGHTNESS = True


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


OFF = NoiseCalibration("off")

#: pseudo-sources spread like the empty positions that :func:`clearance_weights` adds to the
#: measured ones (a few sources move the weights little)
MATCH_PSEUDO = 4


def clearance_weights(x: np.ndarray, y: np.ndarray, target_xy: tuple, avoid_xy: tuple
                      ) -> tuple[np.ndarray | None, dict | None]:
    """Importance weights that give the empty positions ``x, y`` the measured sources'
    (``target_xy``) distribution of the distance to the nearest catalogued source of
    ``avoid_xy`` (:func:`nearest_distance`, a source's own entry left out): a neighbour's
    light in a position's background is an error that shrinks with that distance, and the
    empty positions keep the probes' clearance while the sources stand where they stand.
    Nearest-neighbour matching on that distance: each source hands a weight 1/k to each of
    the ``k`` empty positions nearest to it in distance (``k`` as the local factor's:
    ``clip(n / 8, 25, 150)``), so a source nearer (farther) than every empty position is
    represented by the nearest (farthest) ones; :data:`MATCH_PSEUDO` pseudo-sources spread
    like the empty positions are added, and the weights scaled to a mean of 1.  ``(None,
    None)`` without sources or with fewer than :data:`LOCAL_MIN` positions, else the weights
    and a record (``k``, the distances' 5/50/95 % points, the effective number of
    positions)."""
    from scipy.spatial import cKDTree

    ax, ay = (np.asarray(v, float).ravel() for v in avoid_xy)
    tx, ty = (np.asarray(v, float).ravel() for v in target_xy)
    fin = np.isfinite(ax) & np.isfinite(ay)
    tfin = np.isfinite(tx) & np.isfinite(ty)
    if not fin.any() or not tfin.any() or x.size < LOCAL_MIN:
        return None, None
    tree = cKDTree(np.c_[ax[fin], ay[fin]])
    de = nearest_distance(np.asarray(x, float), np.asarray(y, float), tree)
    dt = np.minimum(nearest_distance(tx[tfin], ty[tfin], tree), de.max())  # alone: farthest
    k = int(np.clip(round(de.size / LOCAL_SHARE), LOCAL_K_MIN, LOCAL_K_MAX))
    _, idx = cKDTree(de[:, None]).query(dt[:, None], k=k)
    c = np.bincount(np.ravel(idx), minlength=de.size) / k + MATCH_PSEUDO / de.size
    w = c * de.size / c.sum()
    pct = [5, 50, 95]
    rec = {"rule": "nearest-neighbour matching on the distance to the nearest catalogued "
                   "source", "k": k, "n_sources": int(dt.size),
           "n_eff": float(w.sum() ** 2 / np.sum(w**2)),
           "source_distance_percentiles": [float(v) for v in np.percentile(dt, pct)],
           "empty_distance_percentiles": [float(v) for v in np.percentile(de, pct)]}
    return w, rec

#: factors on the probes' clearance tried in turn on a crowded frame (see :func:`calibrate`)
CLEAR_STEPS = (1.0, 0.8, 0.65, 0.5)


def empty_positions(shape: tuple[int, int], mask: np.ndarray, avoid_xy: tuple, clear: float,
                    n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` random positions at least ``clear`` px from every position in ``avoid_xy``,
    from every masked pixel and from the border, and ``clear`` px from each other (so that no
    two probes share pixels of their apertures)."""
    from scipy.ndimage import distance_transform_edt
    from scipy.spatial import cKDTree

    ny, nx = shape
    m = float(clear)
    if nx - 1 - 2 * m <= 0 or ny - 1 - 2 * m <= 0:
        return np.zeros(0), np.zeros(0)
    n_cand = max(30 * n, 3000)
    x = rng.uniform(m, nx - 1 - m, n_cand)
    y = rng.uniform(m, ny - 1 - m, n_cand)
    ok = np.ones(n_cand, bool)
    if mask.any():
        dist = distance_transform_edt(~mask)
        ok &= dist[np.rint(y).astype(int), np.rint(x).astype(int)] > m
    ax, ay = (np.asarray(v, float).ravel() for v in avoid_xy)
    fin = np.isfinite(ax) & np.isfinite(ay)
    if fin.any():
        d, _ = cKDTree(np.c_[ax[fin], ay[fin]]).query(np.c_[x, y])
        ok &= d >= m
    x, y = x[ok], y[ok]
    if x.size == 0:
        return x, y
    # greedy in draw order (reproducible from rng): a candidate is kept when no kept one is
    # within ``clear``; kept points are binned in cells of side ``clear``, so each candidate
    # looks at the 3 x 3 cells around it only
    cell = max(m, 1e-9)
    cells: dict[tuple[int, int], list[int]] = {}
    kept: list[int] = []
    for i in range(x.size):
        cx_, cy_ = int(x[i] // cell), int(y[i] // cell)
        near = False
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in cells.get((cx_ + dx, cy_ + dy), ()):
                    if (x[j] - x[i]) ** 2 + (y[j] - y[i]) ** 2 <= m * m:
                        near = True
                        break
                if near:
                    break
            if near:
                break
        if near:
            continue
        kept.append(i)
        cells.setdefault((cx_, cy_), []).append(i)
        if len(kept) == n:
            break
    k = np.asarray(kept, int)
    return x[k], y[k]


def robust_sigma(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Spread of the empty-position fluxes: the biweight scale (Beers et al. 1990; astropy),
    robust to the faint undetected sources a frame always has and, unlike sigma68 or the MAD,
    nearly as precise as the standard deviation on Gaussian noise; with ``weights`` (the
    clearance weights) each value counted with its weight."""
    from astropy.stats import biweight_scale

    from ..stats import weighted_biweight_scale

    if weights is not None:
        return weighted_biweight_scale(values, weights)
    return float(biweight_scale(np.asarray(values, float), c=9.0))


#: exponents ``gamma`` tried by :func:`fit_factors`
GAMMAS = np.linspace(1.0, 2.0, 21)


def fit_factors(groups: list[dict], n_ref: float | None = None) -> tuple[float, float, float]:
    """``(alpha, sigma_s, gamma)`` from per-size ``observed`` (robust spread of the fluxes),
    ``W`` (median white-noise variance) and ``n_aper`` (median): non-negative least squares of
    ``observed^2 = alpha W + sigma_s^2 n_ref^2 (n_aper / n_ref)^gamma`` in relative residuals
    (each size divided by its ``observed^2``), for each ``gamma`` of :data:`GAMMAS`, keeping
    the largest ``gamma`` whose fit is as good as the best one within the spreads' sampling
    noise.  Sizes that cannot separate the terms give
    ``sigma_s = 0``; ``n_ref`` defaults to the first size's ``n_aper``."""
    from scipy.optimize import nnls

    v = np.array([g["observed"] ** 2 for g in groups])
    w = np.array([g["W"] for g in groups])
    na = np.array([g["n_aper"] for g in groups])
    n0 = float(na[0] if n_ref is None else n_ref)
    ratio = na**2 / w
    if len(groups) < 2 or ratio.max() <= 1.5 * ratio.min():
        return float(np.mean(v / w)), 0.0, 2.0  # one size: a factor only
    fits = []
    for gam in GAMMAS[::-1]:  # from 2 down
        q = n0**2 * (na / n0) ** gam
        (alpha, s2), res = nnls(np.c_[w / v, q / v], np.ones_like(v))  # relative residuals
        fits.append((res**2, alpha, s2, gam))
    # the largest gamma that fits within the noise of the spreads (the relative variance of a
    # biweight variance from n Gaussian values is ~ 4 / (1.74 n)): gamma < 2 only when the
    # data ask for it (on white noise every gamma fits and 2 is kept)
    tol = sum(4.0 / (1.74 * max(float(g.get("n_eff", g.get("n", 1000))), 1.0))
              for g in groups)
    best = min(f[0] for f in fits)
    _, alpha, s2, gam = next(f for f in fits if f[0] <= best + tol)
    return float(alpha), float(np.sqrt(max(s2, 0.0))), float(gam)


def calibrate(probe: Callable[[int, np.ndarray, np.ndarray], dict], n_sizes: int,
              shape: tuple[int, int], mask: np.ndarray, avoid_xy: tuple, clear: float, *,
              n_probe: int = 1000, min_probe: int = 50, seed: int = 0,
              name: str = "photometer", required: bool = True,
              anchor: int | None = None, local: bool = True,
              min_clear: float | None = None, neighbours: bool = False,
              image: np.ndarray | None = None,
              target_xy: tuple | None = None) -> NoiseCalibration:
    """Empty-aperture calibration.

    Parameters
    ----------
    probe : callable ``(k, x, y) -> dict``
        The photometer measuring the frame at positions ``x, y`` with probe size ``k`` (0 ..
        ``n_sizes - 1``), returning arrays ``flux`` (net flux), ``var_white`` (``W``),
        ``n_aper`` and ``flags``.
    n_sizes : int
    shape, mask : the frame's shape and bad-pixel mask (True = bad)
    avoid_xy : (x, y) of every catalogued source
    clear : float
        Probes keep this distance [px] from sources, masked pixels, the border and each other.
    min_clear : float, optional
        Where fewer than ``max(2 min_probe, LOCAL_MIN)`` positions fit at ``clear`` (a
        crowded or small frame), ``clear`` is lowered by the factors :data:`CLEAR_STEPS`, but
        not below ``min_clear`` (the footprint of the photometer's own size); default
        ``clear`` (never lowered).
    n_probe, min_probe : int
        Positions drawn; fewer usable than ``min_probe`` for a size (or fluxes without
        spread: a noise-free frame) drops that size, and no size left gives
        ``status="uncalibrated"`` and a warning (``"skipped"`` when not ``required``).
    seed : int
        Random state of the positions (the same frame gives the same calibration).
    anchor : int, optional
        The probe size of the photometer's own aperture / weights: the fitted model is scaled
        (``alpha`` and ``sigma_s^2`` alike) to match that size's observed spread exactly, the
        other sizes setting the split between the two terms and the trend with size.
    required : bool
        Too few empty positions: True gives a warning and ``status="uncalibrated"`` (the
        photometers then flag UNCALIBRATED); False (``error_calibration="auto"``) a log line
        and ``status="skipped"``.
    local : bool
        Also fit how the noise varies over the frame (:class:`LocalFactor`, from the anchor
        size's positions; at least :data:`LOCAL_MIN` of them).
    neighbours : bool
        With ``local``, also fit how the noise varies with the distance to the nearest
        catalogued source (:class:`NeighbourFactor`); see :func:`position_and_neighbour`.
    image : 2-D array, optional
        The frame's data: the neighbours' brightness (:func:`neighbour_peaks`) then scales
        their distances; without it the plain distance.
    target_xy : (x, y), optional
        The sources it will be applied to: the empty positions are weighted to their
        distances to the nearest catalogued source (:func:`clearance_weights`; not with
        ``neighbours``).  Without it every position counts the same."""
    from ..stats import weighted_median

    rng = np.random.default_rng([int(seed), 0xE4A7])
    floor = float(clear if min_clear is None else min(min_clear, clear))
    for f in CLEAR_STEPS:  # a crowded frame: closer to the sources, as its sources are
        c = max(float(clear) * f, floor)
        x, y = empty_positions(shape, np.asarray(mask, bool), avoid_xy, c, int(n_probe), rng)
        if x.size >= max(2 * min_probe, LOCAL_MIN) or c <= floor:
            break
    clear = c
    w_all, match = (None, None)
    if target_xy is not None and not neighbours and x.size:
        w_all, match = clearance_weights(x, y, target_xy, avoid_xy)
    groups = []
    for k in range(int(n_sizes)):
        r = probe(k, x, y) if x.size else {"flux": np.zeros(0), "var_white": np.zeros(0),
                                            "n_aper": np.zeros(0),
                                            "flags": np.zeros(0, np.int32)}
        f = np.asarray(r["flux"], float)
        wv = np.asarray(r["var_white"], float)
        na = np.asarray(r["n_aper"], float)
        ok = (np.isfinite(f) & np.isfinite(wv) & (wv > 0) & np.isfinite(na)
              & ((np.asarray(r["flags"]) & _BAD_PROBE) == 0))
        ww = None if w_all is None or not w_all[ok].sum() > 0 else w_all[ok]
        if ok.sum() < min_probe:
            continue
        spread = robust_sigma(f[ok], ww)
        if not (np.isfinite(spread) and spread > 0):  # a noise-free or quantised frame
            continue
        med = (np.median if ww is None else (lambda v, ww=ww: weighted_median(v, ww)))
        groups.append({"k": k, "n": int(ok.sum()), "n_aper": float(med(na[ok])),
                       "n_eff": float(ok.sum() if ww is None else ww.sum()**2 / np.sum(ww**2)),
                       "observed": spread, "W": float(med(wv[ok])),
                       "each": (x[ok], y[ok], f[ok], wv[ok], na[ok], ww)})
    if not groups:
        msg = (f"{name}: only {x.size} empty positions at {clear:.1f} px from sources, masks "
               f"and edges (fewer than {min_probe} usable): flux errors are NOT empty-aperture "
               "calibrated" + (" (flag UNCALIBRATED)" if required else ""))
        if required:
            log.warning(msg)
            return NoiseCalibration("uncalibrated", n_probe=int(x.size), message=msg)
        log.info(msg)
        return NoiseCalibration("skipped", n_probe=int(x.size), message=msg)
    anch = [g for g in groups if g["k"] == anchor]
    n0 = anch[0]["n_aper"] if anch else groups[0]["n_aper"]
    alpha, s, gam = fit_factors(groups, n0)

    def model(g: dict) -> float:
        return alpha * g["W"] + s**2 * n0**2 * (g["n_aper"] / n0) ** gam

    if anch and model(anch[0]) > 0:  # exact where most sources are measured: their own size
        scale = anch[0]["observed"] ** 2 / model(anch[0])
        alpha, s = alpha * scale, s * np.sqrt(scale)
    sizes = [{"k": g["k"], "n": g["n"], "n_aper": g["n_aper"], "observed": g["observed"],
              "predicted": float(np.sqrt(g["W"])), "fitted": float(np.sqrt(model(g)))}
             for g in groups]
    lf = nb = None
    if local:  # each anchor position's flux in units of its own calibrated error
        px, py, pf, pw, pn, pww = (anch[0] if anch else groups[0])["each"]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = pf / np.sqrt(alpha * pw + s**2 * n0**2 * (pn / n0) ** gam)
        lf, nb = position_and_neighbour(px, py, z, avoid_xy, rng, neighbours,
                                        np.random.default_rng([int(seed), 0x23AB]),
                                        image if NEIGHBOUR_BRIGHTNESS else None, mask,
                                        w=pww)
    msg = (f"{name}: alpha = {alpha:.3f}, sigma_s = {s:.4g} ADU/px, gamma = {gam:.2f} from "
           f"{x.size} empty positions ({clear:.1f} px clear), {len(groups)} sizes")
    if match is not None:
        msg += (f"; weighted to the distances of {match['n_sources']} sources "
                f"(effective {match['n_eff']:.0f} positions)")
    if lf is not None:
        d = lf.as_dict()
        msg += (f"; local factor (k = {lf.k}, shrink {lf.shrink:.2f}): 5-95 % "
                f"{d['q_percentiles'][0]:.2f}-{d['q_percentiles'][2]:.2f}")
    if nb is not None:
        d = nb.as_dict()
        msg += (f"; neighbour factor (shrink {nb.curve.shrink:.2f}): "
                f"{d['q_at_distance_percentiles'][0]:.2f} at {d['distance_percentiles'][0]:.1f} px"
                f" to {d['q_at_distance_percentiles'][4]:.2f} at "
                f"{d['distance_percentiles'][4]:.1f} px")
    return NoiseCalibration("calibrated", alpha, s, int(x.size), gamma=gam, n_ref=float(n0),
                            sizes=sizes, message=msg, local=lf, clearance=float(clear),
                            neighbour=nb, match=match)
