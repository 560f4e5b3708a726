"""Probability integral transform of Gaussian-mixture PDFs (Lumos eq. 13) and its uniformity.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..errors import InputError
from ._common import _as_float, _finite

# ----------------------------------------------------------------------------------------------
# probability integral transform
# ----------------------------------------------------------------------------------------------

class KSResult(NamedTuple):
    """Kolmogorov-Smirnov test of the PIT values against U[0, 1]."""

    statistic: float
    pvalue: float



def _mixture_params(alpha: Any, mu: Any, sigma: Any, x: Any
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a, m, s = (_as_float(v, k) for k, v in (("alpha", alpha), ("mu", mu), ("sigma", sigma)))
    for name, v in (("alpha", a), ("mu", m), ("sigma", s)):
        if v.ndim not in (1, 2):
            raise InputError(f"{name} must have shape (n, k) or (k,), got {v.shape}")
    a, m, s = (v[None, :] if v.ndim == 1 else v for v in (a, m, s))
    x = np.atleast_1d(_as_float(x, "truth"))
    if x.ndim != 1:
        raise InputError(f"truth must be 1-D (one value per object), got shape {x.shape}")
    try:
        a, m, s, xx = np.broadcast_arrays(a, m, s, x[:, None])
    except ValueError:
        raise InputError(f"mixture parameters must be (n, k) with n = len(truth) = {x.size}; "
                         f"got alpha{a.shape}, mu{m.shape}, sigma{s.shape}") from None
    with np.errstate(invalid="ignore"):
        if np.any(a < 0):
            raise InputError("mixture weights alpha must be >= 0")
        if np.any(s <= 0):
            raise InputError("mixture widths sigma must be > 0")
    row_ok = (np.isfinite(a).all(1) & np.isfinite(m).all(1) & np.isfinite(s).all(1)
              & np.isfinite(xx[:, 0]))
    with np.errstate(invalid="ignore", divide="ignore"):
        w = a / a.sum(axis=1, keepdims=True)
    row_ok &= np.isfinite(w).all(1)
    return w, m, s, xx, row_ok



def mixture_cdf(alpha: Any, mu: Any, sigma: Any, x: Any, *,
                lower: float | None = None) -> np.ndarray:
    """CDF of a Gaussian mixture ``sum_i alpha_i N(mu_i, sigma_i)`` at ``x``, per object.

    Parameters
    ----------
    alpha, mu, sigma : array-like, shape (n, k) or (k,)
        Weights (>= 0; normalised to sum to 1 per object), means and widths (> 0) of ``k``
        components for each of ``n`` objects; a 1-D set is shared by all objects.
    x : array-like, shape (n,)
        Where to evaluate each object's CDF (same units as ``mu``).
    lower : float, optional
        Truncate every component to ``[lower, inf)`` and renormalise it separately, as Lumos
        eq. 10 does with ``lower = 0`` for non-negative fluxes.

    Returns
    -------
    ndarray, shape (n,)
        NaN for objects with a non-finite parameter or ``x``, or all weights zero.

    Raises
    ------
    InputError
        Negative weights, non-positive widths, or shapes that do not match.
    """
    from scipy.special import ndtr

    w, m, s, xx, ok = _mixture_params(alpha, mu, sigma, x)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        z = (xx - m) / s
        if lower is None:
            comp = ndtr(z)
        else:
            zl = (float(lower) - m) / s
            # upper-tail form: no cancellation when the truncation point is far below the mean
            comp = (ndtr(-zl) - ndtr(-z)) / ndtr(-zl)
            comp = np.where(xx < lower, 0.0, np.clip(comp, 0.0, 1.0))
        cdf = np.sum(w * comp, axis=1)
    return np.where(ok, np.clip(cdf, 0.0, 1.0), np.nan)



def pit_gaussian_mixture(alpha: Any, mu: Any, sigma: Any, truth: Any, *,
                         lower: float | None = None) -> np.ndarray:
    """Probability integral transform ``PIT = integral_{-inf}^{f*} phi(f) df`` (Lumos eq. 13).

    ``phi`` is each object's predicted Gaussian-mixture PDF (e.g. Lumos' 5-component mixture
    density network output) and ``f*`` its true value.  Calibrated PDFs give PIT ~ U[0, 1]:
    too-narrow PDFs pile PIT values at 0 and 1, too-wide ones in the middle, biased ones to one
    side.  See :func:`mixture_cdf` for the parameters and ``lower`` (truncated components).

    Returns
    -------
    ndarray, shape (n,)
        PIT in [0, 1]; NaN for invalid objects.
    """
    return mixture_cdf(alpha, mu, sigma, truth, lower=lower)



def _pit_values(pit_values: Any) -> np.ndarray:
    v = _finite(_as_float(pit_values, "pit_values"))
    tol = 1e-9
    if np.any((v < -tol) | (v > 1 + tol)):
        raise InputError(f"PIT values must lie in [0, 1], got range [{v.min()}, {v.max()}]")
    return np.clip(v, 0.0, 1.0)



def pit_histogram(pit_values: Any, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of PIT values on [0, 1].

    Parameters
    ----------
    pit_values : array-like
        Non-finite entries are ignored.
    bins : int
        Number of equal-width bins.

    Returns
    -------
    counts : int ndarray, shape (bins,)
        Expected ``n / bins`` each for calibrated PDFs.
    edges : ndarray, shape (bins + 1,)

    Raises
    ------
    InputError
        ``bins < 1`` or a value outside [0, 1].
    """
    if int(bins) != bins or bins < 1:
        raise InputError(f"bins must be a positive integer, got bins={bins!r}")
    counts, edges = np.histogram(_pit_values(pit_values), bins=int(bins), range=(0.0, 1.0))
    return counts, edges



def pit_uniformity(pit_values: Any) -> KSResult:
    """Kolmogorov-Smirnov test of the PIT values against U[0, 1] (``scipy.stats.kstest``).

    Returns
    -------
    KSResult
        ``(statistic, pvalue)``; a small p-value means the PDFs are not calibrated.  NaN for
        both without finite values.
    """
    from scipy.stats import kstest

    v = _pit_values(pit_values)
    if v.size == 0:
        return KSResult(np.nan, np.nan)
    r = kstest(v, "uniform")
    return KSResult(float(r.statistic), float(r.pvalue))
