"""Per-group background summary tables (bias, scatter, pulls) for ``skysub evaluate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ._common import _as_float, _median, _sigma68
from .accuracy import _pull_stats, pulls, relative_error

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
