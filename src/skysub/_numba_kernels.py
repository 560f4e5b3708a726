"""The numba-compiled kernels behind :mod:`skysub.kernels` (imported only when first used).

See :mod:`skysub.kernels` for what they compute and why numba.  Every function is compiled on
its first call and cached on disk; where no cache location is writable (a read-only install
without a writable ``NUMBA_CACHE_DIR`` or home), it is compiled in memory instead.
"""

from __future__ import annotations

import logging

import numba
import numpy as np

log = logging.getLogger("skysub")


def _jit(func):
    try:
        return numba.njit(cache=True, nogil=True)(func)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        log.debug("numba cache unavailable for %s (%s); compiling in memory", func.__name__, exc)
        return numba.njit(cache=False, nogil=True)(func)


def _jit_reassoc(func):
    try:
        return numba.njit(cache=True, nogil=True, fastmath={"reassoc"})(func)
    except RuntimeError as exc:
        log.debug("numba cache unavailable for %s (%s); compiling in memory", func.__name__, exc)
        return numba.njit(cache=False, nogil=True, fastmath={"reassoc"})(func)


# -- kernels -------------------------------------------
@_jit
def gather_annulus(flat, bad, use_bad, ny, nx, xs, ys, xi, yi, dx, dy, n_certain, q0, gx, gy,
                   qa, qb, qc, r2_in, r2_out, ex, ey, edge_bit, masked_bit, out, n_valid, flags):
    """Pack the valid annulus pixels of source ``i`` into ``out[i, :n_valid[i]]`` (NaN after).

    ``dx, dy``: the candidate offsets, the ``n_certain`` first ones inside the annulus for any
    sub-pixel position; the others are kept when their squared elliptical radius ``q`` (the
    quadratic form ``q0 - gx fx - gy fy + const``) is in ``[r2_in, r2_out)`` -- photutils'
    "center" rule.  ``ex, ey``: the largest ``|dx|, |dy|``.  EDGE (a member pixel off the image)
    and MASKED (a member pixel masked or not finite) go to ``flags[i]``.
    """
    n, p = out.shape
    nb = dx.shape[0]
    off = dy * nx + dx
    for i in range(n):
        x0 = xi[i]
        y0 = yi[i]
        fx = xs[i] - x0
        fy = ys[i] - y0
        # the same operations, in the same order, as the numpy path (identical membership)
        const = qa * fx * fx + qb * fx * fy + qc * fy * fy
        interior = x0 - ex >= 0 and x0 + ex < nx and y0 - ey >= 0 and y0 + ey < ny
        base = y0 * nx + x0
        k = 0
        f = 0
        if interior and not use_bad:  # the common case: no bounds or mask tests per pixel
            row = out[i]
            nm = n_certain
            for j in range(n_certain):  # branch-free: store, advance only past finite values
                v = flat[base + off[j]]
                row[k] = v
                k += np.isfinite(v)
            for j in range(n_certain, nb):
                b = j - n_certain
                q = q0[b] - gx[b] * fx
                q -= gy[b] * fy
                q += const
                if q >= r2_in and q < r2_out:
                    v = flat[base + off[j]]
                    row[k] = v
                    k += np.isfinite(v)
                    nm += 1
            if k < nm:  # a member was not finite (never when the mask covers the NaNs)
                f |= masked_bit
        else:
            for j in range(nb):
                if j >= n_certain:
                    b = j - n_certain
                    q = q0[b] - gx[b] * fx
                    q -= gy[b] * fy
                    q += const
                    if not (q >= r2_in and q < r2_out):
                        continue
                xx = x0 + dx[j]
                yy = y0 + dy[j]
                if xx < 0 or xx >= nx or yy < 0 or yy >= ny:
                    f |= edge_bit
                    continue
                t = yy * nx + xx
                if use_bad and bad[t]:
                    f |= masked_bit
                    continue
                v = flat[t]
                if not np.isfinite(v):
                    f |= masked_bit
                    continue
                out[i, k] = v
                k += 1
        for j in range(k, p):
            out[i, j] = np.nan
        n_valid[i] = k
        flags[i] = f


@_jit
def _run_median(s, lo, hi):
    m = hi - lo
    if m <= 0:
        return np.nan
    a = lo + (m - 1) // 2
    b = lo + m // 2
    return 0.5 * (np.float64(s[a]) + np.float64(s[b]))


@_jit_reassoc
def _run_sums_fast(s, lo, hi, c):
    """Sums of ``d = s - c`` and ``d**2`` over ``s[lo:hi]`` in float64, reassociated (so that
    LLVM vectorises the reduction): for the clipping bounds of the iterations."""
    t1 = 0.0
    t2 = 0.0
    for j in range(lo, hi):
        d = np.float64(s[j]) - c
        t1 += d
        t2 += d * d
    return t1, t2


@_jit
def _run_sums(s, lo, hi, c):
    """The same sums in strict sequential order: the final statistics, which the numpy
    fallback reproduces bit for bit (a sequential ``cumsum``)."""
    t1 = 0.0
    t2 = 0.0
    for j in range(lo, hi):
        d = np.float64(s[j]) - c
        t1 += d
        t2 += d * d
    return t1, t2


@_jit
def _run_mean_std(s, lo, hi, exact):
    """Mean and population std of the sorted run ``s[lo:hi]`` (NaN if empty).  Sums of the
    values minus the run's median: the shift is within a fraction of a std of the mean, so
    ``var = <d^2> - <d>^2`` loses nothing to cancellation (as exact as numpy's two passes)."""
    m = hi - lo
    if m <= 0:
        return np.nan, np.nan
    c = _run_median(s, lo, hi)
    if exact:
        t1, t2 = _run_sums(s, lo, hi, c)
    else:
        t1, t2 = _run_sums_fast(s, lo, hi, c)
    d1 = t1 / m
    var = t2 / m - d1 * d1
    if var < 0.0:
        var = 0.0
    return c + d1, np.sqrt(var)


@_jit
def _search_left(s, lo, hi, bound):
    """First index in [lo, hi) of the sorted run with s >= bound (hi if none)."""
    a, b = lo, hi
    while a < b:
        mid = (a + b) // 2
        if s[mid] < bound:
            a = mid + 1
        else:
            b = mid
    return a


@_jit
def _search_right(s, lo, hi, bound):
    """First index in [lo, hi) of the sorted run with s > bound (hi if none)."""
    a, b = lo, hi
    while a < b:
        mid = (a + b) // 2
        if s[mid] <= bound:
            a = mid + 1
        else:
            b = mid
    return a


@_jit
def clip_sorted_rows(s, n_valid, do_clip, sl, su, lower_open, upper_open, maxiters,
                      lo_out, hi_out, mean_out, med_out, std_out):
    n = s.shape[0]
    for i in range(n):
        row = s[i]
        nv = n_valid[i]
        lo = 0
        hi = nv
        if do_clip and nv > 0:
            it = 0
            have = False
            lower = -np.inf
            upper = np.inf
            while maxiters < 0 or it < maxiters:
                med = _run_median(row, lo, hi)
                _, std = _run_mean_std(row, lo, hi, False)
                # an open side stays open even when std == 0 (inf * 0 = NaN)
                lower = -np.inf if lower_open else med - sl * std
                upper = np.inf if upper_open else med + su * std
                have = True
                if np.isnan(lower) or np.isnan(upper):
                    break  # an empty run: astropy's NaN bounds reject nothing at the end
                nlo = _search_left(row, lo, hi, lower)
                nhi = _search_right(row, lo, hi, upper)
                it += 1
                if nlo == lo and nhi == hi:
                    break
                lo = nlo
                hi = nhi
            if have:
                # astropy's final selection: every valid value within the LAST bounds (which
                # may re-admit a value an earlier iteration dropped)
                lo = 0 if np.isnan(lower) else _search_left(row, 0, nv, lower)
                hi = nv if np.isnan(upper) else _search_right(row, 0, nv, upper)
                if hi < lo:
                    hi = lo
        lo_out[i] = lo
        hi_out[i] = hi
        med_out[i] = _run_median(row, lo, hi)
        mean, std = _run_mean_std(row, lo, hi, True)
        mean_out[i] = mean
        std_out[i] = std
