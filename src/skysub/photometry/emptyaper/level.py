"""The noise-level factor of the empty-aperture calibration (``error_calibration="level"``):
the empty positions' noise, relative to the white-noise prediction, as a function of the
local pixel-noise level ``s`` rather than of the position.

``s`` is what every measurement already has: the pixel rms of its own background estimate
(``BackgroundResult.pixel_std``: the clipped annulus' scatter; the mesh's rms map at that
point), the same for an empty position and for a source.  Where the frame's noise varies
(a cluster's unresolved stars toward its centre, vignetting, a stacked frame's coverage) the
part of it the white-noise model misses (correlated noise, background structure) often
varies with it, on scales finer than the :class:`~.local.LocalFactor`'s ``k`` nearest empty
positions resolve: at a point the position factor pools empty positions from a neighbourhood
whose noise differs, the level factor pools the positions of the same noise level wherever
they lie.

``q_lev(s) = exp(b u) q_knn(u)``, ``u = log(s / s_ref)`` (``s_ref``: the empty positions'
median ``s``): first a power law, ``b`` the slope of ``log`` of the squared biweight scale of
the normalised fluxes ``z`` in :data:`TREND_BINS` quantile bins of ``u`` against their median
``u`` (least squares), shrunk by ``max(0, 1 - Var_null(b) / b^2)`` with ``Var_null`` the mean
``b^2`` of the same fit with the ``z`` shuffled; then a :class:`~.local.LocalFactor` on ``u``
(``y = 0``) of what the power law leaves, ``z exp(-b u / 2)``: at a level, the squared
biweight scale of the ``k`` empty positions nearest in ``u``, shrunk towards the frame's
value by the same shuffle test.  The power law keeps a window of ``k`` positions at the ends
of the range from reading the neighbouring levels (a steep trend would otherwise be
flattened there); a frame whose excess noise does not follow the level keeps one factor;
beyond the range of the empty positions' levels the extreme ones speak.  The position factor
is then fitted on what the level factor leaves (``z / sqrt(q_lev)``) and
``q = q_lev(s) q_pos(x, y)``: where the level explains the spatial variation the position
factor's shrinkage goes to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .local import LocalFactor, local_factor

#: shuffles of the level factor's tests (a 1-D search: cheap) and the quantile bins of its
#: power law
LEVEL_NULL, TREND_BINS = 8, 5


@dataclass
class NoiseLevelFactor:
    """``q_lev(s)``: the factor on the calibrated (non-source) variance at a local pixel-noise
    level ``s`` (ADU; the measurement's background ``pixel_std``).  ``curve``: a
    :class:`~.local.LocalFactor` on ``u = log(s / s_ref)``."""

    curve: LocalFactor
    s_ref: float
    slope: float = 0.0

    def coordinate(self, s) -> np.ndarray:
        """``u = log(s / s_ref)``, clipped to the empty positions' range (NaN where ``s`` is
        not a positive finite number)."""
        s = np.atleast_1d(np.asarray(s, float))
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.log(s / self.s_ref)
        u = np.where(np.isfinite(u), u, np.nan)
        return np.clip(u, float(self.curve.x.min()), float(self.curve.x.max()))

    def __call__(self, s) -> np.ndarray:
        """``q_lev`` at levels ``s``; the frame's value where ``s`` is missing."""
        u = self.coordinate(s)
        return np.exp(self.slope * np.nan_to_num(u)) * self.curve(u, np.zeros_like(u))

    def as_dict(self) -> dict:
        c = self.curve
        u = np.percentile(c.x, [5, 25, 50, 75, 95])
        return {"method": "power law times k nearest empty positions in log local "
                          "pixel-noise level",
                "slope": float(self.slope), "k": int(c.k), "shrink": float(c.shrink),
                "q_frame": float(c.q_frame),
                "n": int(c.z.size), "s_ref": float(self.s_ref),
                "level_percentiles": [float(v) for v in self.s_ref * np.exp(u)],
                "q_at_level_percentiles": [float(v) for v in self(self.s_ref * np.exp(u))]}


def _trend_slope(u: np.ndarray, z: np.ndarray, w: np.ndarray | None) -> float:
    """Least-squares slope of ``log`` (squared, weighted) biweight scale of ``z`` in
    :data:`TREND_BINS` quantile bins of ``u`` against the bins' median ``u``."""
    from .local import robust_sigma

    edges = np.quantile(u, np.linspace(0.0, 1.0, TREND_BINS + 1))
    b = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, TREND_BINS - 1)
    um, lq = [], []
    for i in range(TREND_BINS):
        sel = b == i
        if sel.sum() < 10:
            continue
        v = robust_sigma(z[sel], None if w is None else w[sel]) ** 2
        if np.isfinite(v) and v > 0:
            um.append(float(np.median(u[sel])))
            lq.append(float(np.log(v)))
    if len(um) < 3 or np.ptp(um) <= 0:
        return 0.0
    return float(np.polyfit(um, lq, 1)[0])


def noise_level_factor(s: np.ndarray, z: np.ndarray, rng: np.random.Generator,
                       w: np.ndarray | None = None) -> NoiseLevelFactor | None:
    """:class:`NoiseLevelFactor` of the normalised empty-position fluxes ``z`` at local
    pixel-noise levels ``s`` (with clearance weights ``w``); None with fewer than
    :data:`~.local.LOCAL_MIN` positions of a positive finite ``s``."""
    s = np.asarray(s, float)
    z = np.asarray(z, float)
    ok = np.isfinite(s) & (s > 0) & np.isfinite(z)
    if not ok.any():
        return None
    s_ref = float(np.median(s[ok]))
    u = np.where(ok, np.log(np.where(ok, s, 1.0) / s_ref), np.nan)
    wk = None if w is None else np.asarray(w, float)[ok]
    slope = _trend_slope(u[ok], z[ok], wk)
    null = [_trend_slope(u[ok], z[ok][p], None if wk is None else wk[p])
            for p in (rng.permutation(int(ok.sum())) for _ in range(LEVEL_NULL))]
    v_null = float(np.mean(np.square(null)))
    slope *= float(np.clip(1.0 - v_null / slope**2, 0.0, 1.0)) if slope != 0 else 0.0
    with np.errstate(invalid="ignore"):
        rest = z * np.exp(-0.5 * slope * u)
    curve = local_factor(u, np.zeros_like(u), rest, rng, n_null=LEVEL_NULL, w=w)
    return None if curve is None else NoiseLevelFactor(curve, s_ref, slope)


def level_and_position(x: np.ndarray, y: np.ndarray, s: np.ndarray, z: np.ndarray,
                       rng: np.random.Generator, rng_lev: np.random.Generator,
                       w: np.ndarray | None = None
                       ) -> tuple[LocalFactor | None, NoiseLevelFactor | None]:
    """The level factor of ``z`` first, then the position factor of what it leaves
    (``z / sqrt(q_lev(s))``); without a level factor (too few positions with a level) the
    position factor alone, as ``error_calibration="auto"``."""
    lev = noise_level_factor(s, z, rng_lev, w)
    if lev is None:
        return local_factor(x, y, z, rng, w=w), None
    return local_factor(x, y, z / np.sqrt(lev(s)), rng, w=w), lev
