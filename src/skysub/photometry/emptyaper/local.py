"""The position factor of the empty-aperture calibration: how the noise of the empty
positions varies over the frame (:class:`LocalFactor`), and the robust spread they are
measured with (:func:`robust_sigma`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np


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

        from ...stats import weighted_biweight_rows

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


def robust_sigma(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Spread of the empty-position fluxes: the biweight scale (Beers et al. 1990; astropy),
    robust to the faint undetected sources a frame always has and, unlike sigma68 or the MAD,
    nearly as precise as the standard deviation on Gaussian noise; with ``weights`` (the
    clearance weights) each value counted with its weight."""
    from astropy.stats import biweight_scale

    from ...stats import weighted_biweight_scale

    if weights is not None:
        return weighted_biweight_scale(values, weights)
    return float(biweight_scale(np.asarray(values, float), c=9.0))
