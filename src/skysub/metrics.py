"""Quality metrics against truth: bias, scatter, pulls, duplicates, PIT, power spectra, pixel
statistics.

Every function here is NaN-aware: non-finite entries (NaN, +-inf) of any input are ignored, and
a statistic over no valid entry is NaN (never a warning, never an exception).  Inputs are
array-like (numpy arrays, astropy Columns/Quantities -- whose units are dropped -- or masked
arrays, whose masked entries count as invalid).

Definitions (SPEC.md sections 3-5):

- relative error ``(f - f0) / f0``; bias = its median (Lumos eq. 17), scatter = its sigma68
  (Lumos eq. 18), with ``sigma68 = (q84 - q16) / 2``;
- pull ``(f - f0) / sigma``: N(0, 1) when the errors are right (BKGnet section 3.4);
- duplicates ``D = (e1 - e2) / sqrt(s1^2 + s2^2)`` over repeated measurements of one object
  (BKGnet eq. 11): sigma68[D] = 1 when the errors are right, without knowing the truth;
- probability integral transform ``PIT = CDF(f*)`` at the true value (Lumos eq. 13), U[0, 1]
  for calibrated PDFs;
- azimuthally averaged power spectrum and pixel statistics of maps (Madarasz et al. section 5.3).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .errors import CatalogError, InputError
from .stats import mad_std, sigma68

__all__ = [
    "relative_error", "bias", "scatter", "median_standard_error", "sigma95", "gaussianity",
    "pulls", "pull_summary",
    "duplicates", "duplicates_from_table", "duplicates_sigma68",
    "mixture_cdf", "pit_gaussian_mixture", "pit_histogram", "pit_uniformity", "KSResult",
    "power_spectrum", "power_spectrum_ratio",
    "pixel_stats", "background_summary",
]

log = logging.getLogger(__name__)

WINDOWS = (None, "hann")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _as_float(x: Any, name: str) -> np.ndarray:
    """Float64 array of ``x`` with masked entries (numpy/astropy masked arrays) set to NaN."""
    if x is None:
        raise InputError(f"{name} is required, got None")
    if np.ma.isMaskedArray(x):
        mask = np.ma.getmaskarray(x)
        x = np.ma.getdata(x)
    else:
        mask = None
    try:
        a = np.array(getattr(x, "value", x), dtype=float)  # Quantity -> value
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric, got {type(x).__name__}: {exc}") from None
    if mask is not None and mask.any():
        a[mask] = np.nan
    return a


def _broadcast(**arrays: Any) -> list[np.ndarray]:
    """Convert to float and broadcast; the error names the parameters and their shapes."""
    conv = [_as_float(v, k) for k, v in arrays.items()]
    try:
        return list(np.broadcast_arrays(*conv))
    except ValueError:
        shapes = ", ".join(f"{k}{a.shape}" for k, a in zip(arrays, conv, strict=True))
        raise InputError(f"inputs must have the same (or broadcastable) shapes, got {shapes}"
                         ) from None


def _finite(a: np.ndarray) -> np.ndarray:
    """The finite entries of ``a`` as a 1-D array."""
    a = np.asarray(a, float).ravel()
    return a[np.isfinite(a)]


def _median(v: np.ndarray) -> float:
    v = _finite(v)
    return float(np.median(v)) if v.size else np.nan


def _sigma68(v: np.ndarray) -> float:
    v = _finite(v)
    return float(sigma68(v)) if v.size else np.nan


def _difference(pred: Any, true: Any, relative: bool) -> np.ndarray:
    if relative:
        return relative_error(pred, true)
    p, t = _broadcast(pred=pred, true=true)
    return p - t


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


# ----------------------------------------------------------------------------------------------
# duplicates
# ----------------------------------------------------------------------------------------------

def duplicates(e1: Any, e2: Any, s1: Any, s2: Any) -> np.ndarray:
    """Duplicates statistic ``D = (e1 - e2) / sqrt(s1^2 + s2^2)`` (BKGnet eq. 11).

    Parameters
    ----------
    e1, e2 : array-like, broadcastable
        Two independent measurements of the same quantity (e.g. the flux of one galaxy in two
        exposures of the same band).
    s1, s2 : array-like
        Their 1-sigma errors.

    Returns
    -------
    ndarray
        ``D``: N(0, 1) when the errors are right, whatever the truth.  NaN where any input is
        non-finite or the combined error is not positive.
    """
    a, b, sa, sb = _broadcast(e1=e1, e2=e2, s1=s1, s2=s2)
    den = np.hypot(sa, sb)
    ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(den) & (den > 0)
    out = np.full(a.shape, np.nan)
    np.divide(a - b, den, out=out, where=ok)
    return out


def _column(table: Any, name: str, what: str) -> np.ndarray:
    try:
        col = table[name]
    except (KeyError, ValueError, IndexError, TypeError):
        have = (getattr(table, "colnames", None) or getattr(getattr(table, "dtype", None),
                                                            "names", None)
                or list(getattr(table, "keys", list)()))
        raise CatalogError(f"table has no {what} column {name!r}; columns are {list(have)}"
                           ) from None
    return col


def _codes(col: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of a key column and a validity flag (masked / non-finite keys invalid)."""
    mask = np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) else None
    data = np.asarray(np.ma.getdata(col) if mask is not None else col)
    if data.ndim != 1:
        raise CatalogError(f"column {name!r} must be 1-D, got shape {data.shape}")
    valid = np.ones(data.shape, bool) if mask is None else ~mask
    if data.dtype.kind == "f":
        valid &= np.isfinite(data)
        data = np.where(valid, data, 0.0)
    try:
        _, inv = np.unique(data, return_inverse=True)
    except TypeError as exc:
        raise CatalogError(f"column {name!r} holds values that cannot be sorted: {exc}") from None
    return inv.ravel().astype(np.int64), valid


def duplicates_from_table(table: Any, *, id_col: str = "id", value_col: str = "flux",
                          err_col: str = "flux_err",
                          group_cols: Sequence[str] | str | None = ("band",),
                          return_pairs: bool = False
                          ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``D`` (BKGnet eq. 11) for every pair of repeated measurements of the same object.

    Rows sharing ``id_col`` and every column of ``group_cols`` (e.g. the same galaxy in the
    same band, in different exposures) are repeated measurements; an object measured ``k``
    times gives ``k (k - 1) / 2`` pairs.  Fully vectorised: rows are sorted by (group, id) once
    and the pairs generated with index arithmetic.

    Parameters
    ----------
    table : astropy Table, dict of arrays, pandas DataFrame or structured array
        One row per measurement.
    id_col : str
        Object identifier.
    value_col, err_col : str
        Measurement and its 1-sigma error.
    group_cols : sequence of str, str or None
        Further columns that must match for two rows to be a pair (default ``("band",)``);
        ``()`` or None to pair on the id alone.
    return_pairs : bool
        Also return the row indices ``(i, j)`` of each pair (``i < j`` in table order), e.g. to
        study ``sigma68(D)`` as a function of magnitude: ``mag[i]`` selects the bin.

    Returns
    -------
    D : ndarray, shape (n_pairs,)
        ``(value[i] - value[j]) / sqrt(err[i]^2 + err[j]^2)``, ordered by group, id, then row.
    i, j : int ndarrays, shape (n_pairs,)
        Only with ``return_pairs``.

    Notes
    -----
    Rows with a non-finite value, a non-finite or non-positive error, or a masked/NaN key are
    dropped *before* pairing (they count in no ``k``).

    Raises
    ------
    CatalogError
        A named column is missing or not 1-D, or columns differ in length.
    """
    if group_cols is None:
        group_cols = ()
    elif isinstance(group_cols, str):
        group_cols = (group_cols,)
    group_cols = tuple(group_cols)
    value = _as_float(_column(table, value_col, "value"), f"column {value_col!r}")
    err = _as_float(_column(table, err_col, "error"), f"column {err_col!r}")
    keys = [(c, _column(table, c, "group")) for c in group_cols]
    keys.append((id_col, _column(table, id_col, "id")))
    n = value.shape[0] if value.ndim == 1 else -1
    for name, arr in [(value_col, value), (err_col, err), *keys]:
        if np.ndim(arr) != 1 or len(arr) != n:
            raise CatalogError(f"column {name!r} must be 1-D with the table's length {n}, got "
                               f"shape {np.shape(arr)}")
    valid = np.isfinite(value) & np.isfinite(err) & (err > 0)
    codes = []
    for name, col in keys:
        c, ok = _codes(col, name)
        codes.append(c)
        valid &= ok
    rows = np.flatnonzero(valid)
    # one integer key per row: mixed-radix combination of the column codes (each < n), or a
    # (slower) row-wise unique when the product of the cardinalities could overflow int64
    radix = [int(c.max()) + 1 if c.size else 1 for c in codes]
    if float(np.prod(np.asarray(radix, float))) < 2.0**62:
        key = np.zeros(rows.size, np.int64)
        for c, r in zip(codes, radix, strict=True):
            key = key * r + c[rows]
    else:
        _, key = np.unique(np.stack([c[rows] for c in codes], axis=1), axis=0,
                           return_inverse=True)
        key = key.ravel()
    order = np.argsort(key, kind="stable")  # stable: table order within an object
    srows = rows[order]
    skey = key[order]
    m = srows.size
    if m < 2:
        empty = np.zeros(0, np.int64)
        return (np.zeros(0), empty, empty) if return_pairs else np.zeros(0)
    starts = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]])
    lengths = np.diff(np.r_[starts, m])
    run_end = np.repeat(starts + lengths, lengths)
    partners = run_end - np.arange(m) - 1  # later members of the same run
    first = np.repeat(np.arange(m), partners)
    block_start = np.repeat(np.cumsum(partners) - partners, partners)
    second = first + (np.arange(first.size) - block_start) + 1
    i, j = srows[first], srows[second]
    d = duplicates(value[i], value[j], err[i], err[j])  # BKGnet eq. 11
    if return_pairs:
        return d, i, j
    return d


def duplicates_sigma68(table: Any, **kwargs: Any) -> float:
    """``sigma68`` of :func:`duplicates_from_table` (keywords passed on); 1 for right errors.

    BKGnet reports 1.10 for the PAUS annulus pipeline and 1.00 for BKGnet.  NaN without pairs.
    """
    kwargs.pop("return_pairs", None)
    return _sigma68(duplicates_from_table(table, **kwargs))


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


# ----------------------------------------------------------------------------------------------
# power spectrum
# ----------------------------------------------------------------------------------------------

def _window(shape: tuple[int, int], window: str | None) -> np.ndarray:
    if window is None:
        return np.ones(shape)
    if window == "hann":
        from scipy.signal.windows import hann

        # periodic (sym=False) Hann: the DFT-even form, zero only at the first pixel
        return np.outer(hann(shape[0], sym=False), hann(shape[1], sym=False))
    raise InputError(f"unknown window {window!r}; expected one of {WINDOWS}")


def _valid_map(image: Any, mask: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    img = _as_float(image, name)
    if img.ndim != 2:
        raise InputError(f"{name} must be a 2-D array, got shape {img.shape}")
    valid = np.isfinite(img)
    if mask is not None:
        mk = np.asarray(mask, bool)
        if mk.shape != img.shape:
            raise InputError(f"mask shape {mk.shape} does not match {name} shape {img.shape}")
        valid &= ~mk
    return img, valid


def _spectrum(img: np.ndarray, valid: np.ndarray, *, nbins: int | None, pixel_scale: float,
              window: str | None, name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    ny, nx = img.shape
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise InputError(f"{name} has no valid (finite, unmasked) pixel")
    if not (np.isfinite(pixel_scale) and pixel_scale > 0):
        raise InputError(f"pixel_scale must be positive, got pixel_scale={pixel_scale!r}")
    if nbins is not None and (int(nbins) != nbins or nbins < 1):
        raise InputError(f"nbins must be a positive integer or None, got nbins={nbins!r}")
    w = _window((ny, nx), window)
    wv = np.where(valid, w, 0.0)
    sw = wv.sum()
    sw2 = np.sum(wv * wv)
    if not sw2 > 0:
        raise InputError(f"{name}: the {window} window vanishes on every valid pixel")
    # window-weighted mean of the valid pixels; masked pixels take this value, so they add
    # nothing after subtraction and the DC mode is exactly zero
    mean = np.sum(np.where(valid, img, 0.0) * wv) / sw
    dev = np.where(valid, img - mean, 0.0)
    f = dev * w
    p2 = np.abs(np.fft.fft2(f)) ** 2 / sw2  # white noise of variance s^2 -> s^2 per mode
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    kk = np.hypot(kx, ky).ravel()  # cycles per pixel
    p2 = p2.ravel()
    nodc = kk > 0
    kk, p2 = kk[nodc], p2[nodc]
    if kk.size == 0:  # a 1 x 1 image
        return np.zeros(0), np.zeros(0), {"n_modes": np.zeros(0, np.int64),
                                          "masked_fraction": 1.0 - n_valid / img.size,
                                          "mean": float(mean), "dc_power": 0.0}
    if nbins is None:
        dk = 1.0 / min(nx, ny)  # unit-width bins of the |k| index along the shorter axis
        idx = np.floor(kk / dk + 0.5).astype(np.int64)
    else:
        edges = np.linspace(0.0, kk.max(), int(nbins) + 1)
        idx = np.clip(np.searchsorted(edges, kk, side="right") - 1, 0, int(nbins) - 1)
    nb = int(idx.max()) + 1
    counts = np.bincount(idx, minlength=nb)
    psum = np.bincount(idx, weights=p2, minlength=nb)
    ksum = np.bincount(idx, weights=kk, minlength=nb)
    keep = counts > 0
    k = ksum[keep] / counts[keep] / pixel_scale
    power = psum[keep] / counts[keep]
    masked_fraction = 1.0 - n_valid / img.size
    details = {"n_modes": counts[keep], "masked_fraction": masked_fraction,
               "mean": float(mean), "n_valid": n_valid,
               "variance": float(np.sum(wv * wv * dev * dev) / sw2)}
    if masked_fraction > 0:
        log.info("%s: %.1f%% of pixels masked or non-finite, replaced by the mean of the valid "
                 "pixels", name, 100 * masked_fraction)
    return k, power, details


def power_spectrum(image: Any, *, mask: Any = None, nbins: int | None = None,
                   pixel_scale: float = 1.0, window: str | None = None,
                   return_details: bool = False
                   ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict]:
    """Azimuthally averaged power spectrum of a 2-D map.

    Steps: the (window-weighted) mean of the valid pixels is subtracted; masked and non-finite
    pixels are set to that mean (i.e. to 0 after subtraction); the optional window is applied;
    ``P(k) = |FFT|^2 / sum_valid(w^2)`` per Fourier mode; modes are averaged in annuli of
    ``|k|``.

    Parameters
    ----------
    image : array-like, shape (ny, nx)
        The map (any units).  NaN/inf pixels count as masked.
    mask : bool array, shape (ny, nx), optional
        True = bad pixel.
    nbins : int, optional
        None (default): bins of unit width in the Fourier index, ``Delta k = 1 / min(nx, ny)``
        cycles per pixel, bin ``j`` holding ``(j - 1/2) Delta k <= |k| < (j + 1/2) Delta k``.
        An integer: that many equal-width bins from 0 to the largest ``|k|``.  Bins without a
        mode are omitted.
    pixel_scale : float
        Pixel size (e.g. arcsec); ``k`` is returned in cycles per that unit.  The power is not
        rescaled.
    window : {None, "hann"}
        Apodisation: None, or a 2-D periodic Hann window (reduces leakage from the map edges
        and from non-periodic structure, at the cost of resolution in ``k``).
    return_details : bool
        Also return a dict: ``n_modes`` per bin, ``masked_fraction`` (fraction of pixels that
        were masked or non-finite and filled), ``mean`` (subtracted), ``n_valid``,
        ``variance`` (window-weighted variance of the valid pixels).

    Returns
    -------
    k : ndarray
        Mean ``|k|`` of the Fourier modes in each bin, cycles per pixel / ``pixel_scale``.  The
        DC mode (k = 0) is excluded.  ``|k| > 0.5`` cycles/px covers only the corners of the
        Fourier plane.
    power : ndarray
        Mean power per mode in each bin (image units squared).

    Notes
    -----
    Normalisation.  With ``N = nx * ny`` pixels, no mask and no window, Parseval's theorem
    gives ``sum(power * n_modes) = N * var(image)`` exactly (all modes but the zero DC mode are
    binned).  In general ``sum(power * n_modes) = N * details["variance"]``.  The normalisation
    by ``sum_valid(w^2)`` (= number of valid pixels without a window) makes white noise of
    variance ``s^2`` give a flat ``power = s^2`` whatever the mask and the window, so spectra of
    differently masked maps can be compared.  Masking still correlates modes (the spectrum is
    convolved with that of the mask): for maps with structure, compare maps with the *same*
    mask (as :func:`power_spectrum_ratio` does).

    Raises
    ------
    InputError
        Not 2-D, mask shape mismatch, no valid pixel, unknown window, bad ``nbins`` or
        ``pixel_scale``.
    """
    img, valid = _valid_map(image, mask, "image")
    k, power, details = _spectrum(img, valid, nbins=nbins, pixel_scale=pixel_scale,
                                  window=window, name="image")
    if return_details:
        return k, power, details
    return k, power


def power_spectrum_ratio(a: Any, b: Any, *, mask: Any = None, nbins: int | None = None,
                         pixel_scale: float = 1.0, window: str | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Ratio ``P_a(k) / P_b(k)`` of the power spectra of two maps of the same field.

    Both spectra use the same valid pixels: the union of ``mask`` and the non-finite pixels of
    either map is masked in both (e.g. original vs source-removed map, Madarasz et al. 5.3.1).
    Parameters as :func:`power_spectrum`.

    Returns
    -------
    k : ndarray
    ratio : ndarray
        NaN where ``P_b == 0``.
    """
    ia, va = _valid_map(a, mask, "a")
    ib, vb = _valid_map(b, mask, "b")
    if ia.shape != ib.shape:
        raise InputError(f"maps a and b must have the same shape, got {ia.shape} and {ib.shape}")
    valid = va & vb
    k, pa, _ = _spectrum(ia, valid, nbins=nbins, pixel_scale=pixel_scale, window=window,
                         name="a")
    _, pb, _ = _spectrum(ib, valid, nbins=nbins, pixel_scale=pixel_scale, window=window,
                         name="b")
    ratio = np.full(pa.shape, np.nan)
    np.divide(pa, pb, out=ratio, where=pb > 0)
    return k, ratio


# ----------------------------------------------------------------------------------------------
# pixel statistics
# ----------------------------------------------------------------------------------------------

def pixel_stats(values: Any, mask: Any = None) -> dict[str, float | int]:
    """Statistics of the valid pixels (Madarasz et al. Table 6).

    Parameters
    ----------
    values : array-like, any shape
        Pixel values; non-finite entries are ignored.
    mask : bool array, same shape, optional
        True = ignore.

    Returns
    -------
    dict
        ``mean``, ``median``, ``std`` (ddof=0), ``mad_std`` (MAD x 1.4826), ``skewness``
        (``scipy.stats.skew``, biased moment estimator; NaN for constant or nearly constant
        data, where scipy reports catastrophic cancellation), ``iqr``
        (q75 - q25), ``n`` (valid pixels).  NaN statistics and ``n = 0`` without valid pixels.
    """
    v = _as_float(values, "values")
    valid = np.isfinite(v)
    if mask is not None:
        mk = np.asarray(mask, bool)
        if mk.shape != v.shape:
            raise InputError(f"mask shape {mk.shape} does not match values shape {v.shape}")
        valid &= ~mk
    x = v[valid]
    n = int(x.size)
    if n == 0:
        return {"mean": np.nan, "median": np.nan, "std": np.nan, "mad_std": np.nan,
                "skewness": np.nan, "iqr": np.nan, "n": 0}
    from scipy.stats import skew

    std = float(np.std(x))
    sk = np.nan
    if std > 0:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sk = float(skew(x))
        if any(issubclass(w.category, RuntimeWarning) for w in caught):
            sk = np.nan  # scipy: catastrophic cancellation for nearly identical values
    q25, q75 = np.percentile(x, [25.0, 75.0])
    return {"mean": float(np.mean(x)), "median": float(np.median(x)), "std": std,
            "mad_std": float(mad_std(x)), "skewness": sk, "iqr": float(q75 - q25), "n": n}


# ----------------------------------------------------------------------------------------------
# summary table
# ----------------------------------------------------------------------------------------------

_SUMMARY_COLUMNS = {
    "group": "subset of sources ('all' = every source)",
    "n": "sources with a finite relative error",
    "bias_rel": "median((pred - true) / true) (Lumos eq. 17)",
    "sigma68_rel": "sigma68((pred - true) / true) (Lumos eq. 18)",
    "bias_abs": "median(pred - true)",
    "sigma68_abs": "sigma68(pred - true)",
    "n_pull": "sources with a finite pull",
    "pull_median": "median((pred - true) / err)",
    "pull_sigma68": "sigma68 of the pulls (1 for correct errors)",
    "frac_pull_gt3": "fraction with |pull| > 3",
    "frac_pull_gt5": "fraction with |pull| > 5",
}


def _summary_row(name: str, p: np.ndarray, t: np.ndarray, e: np.ndarray | None) -> dict:
    rel = relative_error(p, t)
    ps = _pull_stats(pulls(p, t, e)) if e is not None else _pull_stats(np.zeros(0))
    return {"group": name, "n": int(np.isfinite(rel).sum()), "bias_rel": _median(rel),
            "sigma68_rel": _sigma68(rel), "bias_abs": _median(p - t),
            "sigma68_abs": _sigma68(p - t), "n_pull": ps["n"], "pull_median": ps["median"],
            "pull_sigma68": ps["sigma68"], "frac_pull_gt3": ps["frac_gt_3"],
            "frac_pull_gt5": ps["frac_gt_5"]}


def background_summary(pred: Any, true: Any, err: Any = None, *, groups: Any = None):
    """Accuracy of background (or flux) estimates against truth, overall and per group.

    Parameters
    ----------
    pred, true : array-like, shape (n,)
        Estimated and true background per pixel (or any positive quantity).
    err : array-like, shape (n,), optional
        1-sigma errors of ``pred``; None gives NaN pull columns.
    groups : array-like, shape (n,), optional
        A label per source (e.g. "edge"/"centre", band); one row per distinct label, in order
        of first appearance, after the "all" row.

    Returns
    -------
    astropy.table.Table
        Columns ``group``, ``n``, ``bias_rel`` (median relative error), ``sigma68_rel``,
        ``bias_abs``, ``sigma68_abs``, ``n_pull``, ``pull_median``, ``pull_sigma68``,
        ``frac_pull_gt3``, ``frac_pull_gt5`` (each column's description says what it holds).
        Non-finite entries are ignored; a group without valid entries gets ``n = 0`` and NaN.

    Raises
    ------
    InputError
        Inputs not 1-D of one length, or a group label equal to "all".
    """
    from astropy.table import Table

    arrays = {"pred": pred, "true": true}
    if err is not None:
        arrays["err"] = err
    conv = {k: _as_float(v, k) for k, v in arrays.items()}
    n = conv["pred"].size
    for v in conv.values():
        if v.ndim != 1 or v.size != n:
            shapes = ", ".join(f"{kk}{vv.shape}" for kk, vv in conv.items())
            raise InputError(f"pred, true and err must be 1-D of equal length, got {shapes}")
    p, t = conv["pred"], conv["true"]
    e = conv.get("err")
    rows = [_summary_row("all", p, t, e)]
    if groups is not None:
        g = np.asarray(np.ma.getdata(groups) if np.ma.isMaskedArray(groups) else groups)
        if g.ndim != 1 or g.size != n:
            raise InputError(f"groups must be 1-D with one label per source ({n}), got shape "
                             f"{g.shape}")
        labels = np.asarray([str(x) for x in g]) if g.dtype.kind not in "US" else g.astype(str)
        if np.any(labels == "all"):
            raise InputError("group label 'all' is reserved for the row over every source")
        uniq, first = np.unique(labels, return_index=True)
        for lab in uniq[np.argsort(first)]:
            sel = labels == lab
            rows.append(_summary_row(str(lab), p[sel], t[sel], None if e is None else e[sel]))
    out = Table(rows=rows, names=list(_SUMMARY_COLUMNS))
    for name, desc in _SUMMARY_COLUMNS.items():
        out[name].description = desc
    return out
