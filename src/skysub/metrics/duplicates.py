"""The duplicates test (BKGnet eq. 11) over repeated measurements of one object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import CatalogError
from ._common import _as_float, _broadcast, _sigma68

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
