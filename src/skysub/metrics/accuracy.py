"""Bias, scatter and pulls against truth (:mod:`skysub.metrics`, definitions there).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..stats import sigma68
from ._common import _as_float, _broadcast, _finite, _median, _sigma68

# ----------------------------------------------------------------------------------------------
# bias and scatter
# ----------------------------------------------------------------------------------------------

def relative_error(pred: Any, true: Any) -> np.ndarray:
    """Relative error ``(pred - true) / true``.

    Parameters
    ----------
    pred, true : array-like, broadcastable
        Estimated and true values (same units: e.g. background per pixel, or flux).

    Returns
    -------
    ndarray (float64, broadcast shape)
        NaN where either input is non-finite or ``true == 0``.
    """
    p, t = _broadcast(pred=pred, true=true)
    ok = np.isfinite(p) & np.isfinite(t) & (t != 0)
    out = np.full(p.shape, np.nan)
    np.divide(p - t, t, out=out, where=ok)
    return out



def _difference(pred: Any, true: Any, relative: bool) -> np.ndarray:
    if relative:
        return relative_error(pred, true)
    p, t = _broadcast(pred=pred, true=true)
    return p - t


def bias(pred: Any, true: Any, *, relative: bool = True) -> float:
    """Median error, ``median((f - f0) / f0)`` (Lumos eq. 17).

    Parameters
    ----------
    pred, true : array-like, broadcastable
        Estimated values ``f`` and true values ``f0``.
    relative : bool
        True (default): median of the relative error; False: median of ``f - f0`` (units of
        the inputs).

    Returns
    -------
    float
        NaN when no pair is valid (non-finite entries and ``f0 == 0`` for the relative error are
        ignored).
    """
    return _median(_difference(pred, true, relative))



def scatter(pred: Any, true: Any, *, relative: bool = True) -> float:
    """Robust scatter of the error, ``sigma68((f - f0) / f0)`` (Lumos eq. 18).

    ``sigma68 = (q84 - q16) / 2`` (:func:`skysub.stats.sigma68`): the standard deviation for a
    Gaussian, insensitive to outliers.  Parameters as :func:`bias`.

    Returns
    -------
    float
        NaN when no pair is valid.
    """
    return _sigma68(_difference(pred, true, relative))



def median_standard_error(sigma: float, n: int) -> float:
    """Large-sample standard error of the median of ``n`` values of (robust) width ``sigma``:
    ``1.2533 sigma / sqrt(n)`` (sqrt(pi / 2) for a Gaussian) -- whether a benchmark's median
    offset is resolved."""
    return 1.2533 * float(sigma) / np.sqrt(max(int(n), 1))



def sigma95(values: Any) -> float:
    """Half the 2.5-97.5 percentile range of the finite ``values`` (Lumos section 6.1).

    For a Gaussian this is ``1.96 sigma``.  NaN when no value is finite.
    """
    v = _finite(_as_float(values, "values"))
    if not v.size:
        return np.nan
    q = np.percentile(v, [2.5, 97.5])
    return float(q[1] - q[0]) / 2.0



def gaussianity(values: Any) -> float:
    """PDF gaussianity ``eta = sigma95 / sigma68 - 1`` (Lumos eq. 22) of samples ``values``.

    With ``sigma95`` as in :func:`sigma95` (half the 2.5-97.5 range, as the paper defines it),
    a Gaussian gives ``eta = 1.95996 - 1 = 0.96``; heavier tails give more, a flat-topped or
    bimodal distribution less.  NaN when no value is finite or ``sigma68 == 0``.
    """
    v = _finite(_as_float(values, "values"))
    s68 = _sigma68(v)
    if not (np.isfinite(s68) and s68 > 0):
        return np.nan
    return sigma95(v) / s68 - 1.0



# ----------------------------------------------------------------------------------------------
# pulls
# ----------------------------------------------------------------------------------------------

def pulls(pred: Any, true: Any, err: Any) -> np.ndarray:
    """Pulls ``(pred - true) / err``.

    Parameters
    ----------
    pred, true, err : array-like, broadcastable
        Estimate, truth and the estimate's 1-sigma error (same units).

    Returns
    -------
    ndarray (float64, broadcast shape)
        NaN where any input is non-finite or ``err <= 0``.  For correct Gaussian errors the
        pulls are N(0, 1).
    """
    p, t, e = _broadcast(pred=pred, true=true, err=err)
    ok = np.isfinite(p) & np.isfinite(t) & np.isfinite(e) & (e > 0)
    out = np.full(p.shape, np.nan)
    np.divide(p - t, e, out=out, where=ok)
    return out



def _pull_stats(d: np.ndarray) -> dict[str, float | int]:
    d = _finite(d)
    n = int(d.size)
    if n == 0:
        return {"n": 0, "median": np.nan, "sigma68": np.nan, "std": np.nan,
                "frac_gt_3": np.nan, "frac_gt_5": np.nan}
    a = np.abs(d)
    return {"n": n, "median": float(np.median(d)), "sigma68": float(sigma68(d)),
            "std": float(np.std(d)), "frac_gt_3": float(np.mean(a > 3)),
            "frac_gt_5": float(np.mean(a > 5))}



def pull_summary(pred: Any, true: Any, err: Any) -> dict[str, float | int]:
    """Summary of the pull distribution ``(pred - true) / err`` over valid entries.

    Returns
    -------
    dict
        ``n`` (valid pulls), ``median``, ``sigma68`` (robust pull width: 1 for correct errors,
        0.5 when the errors are twice too large, 2 when half too small), ``std`` (ddof=0,
        sensitive to outliers), ``frac_gt_3`` and ``frac_gt_5`` (fractions with ``|pull|``
        above 3 and 5; 0.0027 and 5.7e-7 for N(0, 1)).  With no valid pull: ``n = 0`` and NaN
        elsewhere.
    """
    return _pull_stats(pulls(pred, true, err))
