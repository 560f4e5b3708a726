"""Coadded fluxes across exposures (Lumos §6.3): the product of the per-exposure flux PDFs on a
grid, and the inverse-variance weighted mean (eq. 21).

Both assume the exposures' fluxes are on one calibrated scale (same units and zero point);
PAUS calibrates every exposure's mixture components by its zero point before coadding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError


def inverse_variance_mean(flux: np.ndarray, err: np.ndarray) -> tuple[float, float]:
    """Lumos eq. 21: ``sum f_i / s_i^2 / sum 1 / s_i^2`` and its error ``(sum 1/s_i^2)^-1/2``
    over the finite entries (NaN when none)."""
    f, e = np.asarray(flux, float), np.asarray(err, float)
    ok = np.isfinite(f) & np.isfinite(e) & (e > 0)
    if not ok.any():
        return np.nan, np.nan
    w = 1.0 / e[ok] ** 2
    return float((w * f[ok]).sum() / w.sum()), float(1.0 / np.sqrt(w.sum()))


def product_of_mixtures(alphas: Sequence[np.ndarray], mus: Sequence[np.ndarray],
                        sigmas: Sequence[np.ndarray], *, lower: float | None = 0.0,
                        likelihood: bool = False, n_grid: int = 2048) -> dict[str, np.ndarray]:
    """Coadded PDF of ``n`` objects from ``J`` observations each: ``prod_j p_j(f)``, normalised,
    evaluated on a grid per object spanning every component's +-8 sigma (from ``lower``).

    Parameters
    ----------
    alphas, mus, sigmas : J arrays of shape (n, k) -- the mixtures of observation j (rows with
        NaN are skipped for that object: fewer observations)
    lower : the product lives on [lower, inf) (0 for fluxes); None = everywhere
    likelihood : the mixtures are likelihoods (Lumos' data-only mode): multiplied as they are,
        the flux >= ``lower`` prior applied once, to the product.  Otherwise each component is
        a Gaussian truncated at ``lower`` and renormalised (Lumos eq. 10 posteriors).
    n_grid : grid points

    Returns
    -------
    dict of (n,) arrays: flux_mean, flux_std, flux_mode, flux_median, flux_sigma68,
    flux_sigma95, eta, n_obs
    """
    from scipy.special import log_ndtr

    if not (len(alphas) == len(mus) == len(sigmas)) or not alphas:
        raise InputError("product_of_mixtures needs the same non-zero number of alpha, mu and "
                         "sigma arrays")
    A = np.stack([np.atleast_2d(np.asarray(a, float)) for a in alphas])  # (J, n, k)
    M = np.stack([np.atleast_2d(np.asarray(a, float)) for a in mus])
    S = np.stack([np.atleast_2d(np.asarray(a, float)) for a in sigmas])
    ok = np.isfinite(A).all(-1) & np.isfinite(M).all(-1) & np.isfinite(S).all(-1)  # (J, n)
    Mf, Sf = np.where(ok[..., None], M, np.nan), np.where(ok[..., None], S, np.nan)
    import warnings

    with warnings.catch_warnings():  # objects without any valid observation: NaN, flagged below
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanmin(Mf - 8 * Sf, axis=(0, 2))
        hi = np.nanmax(Mf + 8 * Sf, axis=(0, 2))
    lo, hi = np.nan_to_num(lo, nan=0.0), np.nan_to_num(hi, nan=1.0)
    if lower is not None:
        lo = np.maximum(lo, lower)
    n = A.shape[1]
    u = np.linspace(0.0, 1.0, int(n_grid))
    grid = lo[:, None] + (hi - lo)[:, None] * u[None]  # (n, G)
    logp = np.zeros_like(grid)
    for j in range(A.shape[0]):
        a = A[j] / A[j].sum(-1, keepdims=True)
        z = (grid[:, :, None] - M[j][:, None, :]) / S[j][:, None, :]
        lc = np.log(np.clip(a, 1e-300, None))[:, None, :] - 0.5 * z * z \
            - np.log(S[j])[:, None, :]
        if lower is not None and not likelihood:
            lc = lc - log_ndtr((M[j] - lower) / S[j])[:, None, :]
        mx = lc.max(-1, keepdims=True)
        lp = (mx + np.log(np.exp(lc - mx).sum(-1, keepdims=True)))[..., 0]
        logp += np.where(ok[j][:, None], lp, 0.0)
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    dg = (hi - lo) / (n_grid - 1)
    p /= (p.sum(1) * dg)[:, None]
    mean = (p * grid).sum(1) * dg
    std = np.sqrt(np.clip((p * (grid - mean[:, None]) ** 2).sum(1) * dg, 0, None))
    cdf = np.cumsum(p, 1) * dg[:, None]
    cdf /= cdf[:, -1:]

    def q(v):
        idx = np.argmax(cdf >= v, axis=1)
        i0 = np.maximum(idx - 1, 0)
        c0, c1 = cdf[np.arange(n), i0], cdf[np.arange(n), idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.clip((v - c0) / (c1 - c0), 0, 1)
        return grid[np.arange(n), i0] + np.nan_to_num(t) * (grid[np.arange(n), idx]
                                                            - grid[np.arange(n), i0])

    q025, q16, q50, q84, q975 = (q(v) for v in (0.025, 0.16, 0.5, 0.84, 0.975))
    mode = grid[np.arange(n), np.argmax(p, axis=1)]
    s68, s95 = 0.5 * (q84 - q16), 0.5 * (q975 - q025)
    with np.errstate(invalid="ignore", divide="ignore"):
        eta = s95 / s68 - 1
    nobs = ok.sum(0)
    bad = nobs == 0
    out = {"flux_mean": mean, "flux_std": std, "flux_mode": mode, "flux_median": q50,
           "flux_sigma68": s68, "flux_sigma95": s95, "eta": eta}
    out = {k: np.where(bad, np.nan, v) for k, v in out.items()}
    out["n_obs"] = nobs
    return out


def coadd_tables(tables, *, id_col: str = "id", group_cols: Sequence[str] = ("band",),
                 n_grid: int = 2048):
    """Coadd photometry tables (``skysub photometry`` outputs): one row per object (and band,
    when the tables have a ``band`` column).

    Columns: ``id`` (+ groups), ``n_obs``, ``flux_ivw``/``flux_ivw_err`` (eq. 21 of the tables'
    ``flux``/``flux_err``), and, when the tables hold Lumos mixtures (a1..a5, f1..f5, s1..s5),
    the summaries of the product PDF (``flux_pdf_mode``, ``flux_pdf_mean``, ...).  Tables from
    Lumos' data-only mode (column ``likelihood`` true) are multiplied as likelihoods with the
    flux >= 0 prior applied once; posteriors (with the magnitude prior) are multiplied as
    they are -- which counts that prior once per exposure (see docs/lumos.md).  Mixing both
    kinds is refused.
    """
    from astropy.table import Table, vstack

    t = vstack(list(tables), metadata_conflicts="silent") if not hasattr(tables, "colnames") \
        else tables
    for c in (id_col, "flux", "flux_err"):
        if c not in t.colnames:
            raise InputError(f"photometry table lacks column {c!r} (has {t.colnames})")
    groups = [g for g in group_cols if g in t.colnames]
    keys = [id_col, *groups]
    kk = np.array(["\x1f".join(str(v) for v in row) for row in zip(*(np.asarray(t[c]) for c in
                                                                     keys), strict=True)])
    uniq, inv = np.unique(kk, return_inverse=True)
    first = np.array([np.flatnonzero(inv == i)[0] for i in range(len(uniq))], int)
    out = Table({c: np.asarray(t[c])[first] for c in keys})
    f, e = np.asarray(t["flux"], float), np.asarray(t["flux_err"], float)
    ivw = [inverse_variance_mean(f[inv == i], e[inv == i]) for i in range(len(uniq))]
    okr = np.isfinite(f) & np.isfinite(e)
    out["n_obs"] = np.bincount(inv, weights=okr, minlength=len(uniq)).astype(int)
    out["flux_ivw"] = [v[0] for v in ivw]
    out["flux_ivw_err"] = [v[1] for v in ivw]
    comps = [c for c in (f"a{i}" for i in range(1, 10)) if c in t.colnames]
    if comps:
        k = len(comps)
        a = np.column_stack([np.asarray(t[f"a{i}"], float) for i in range(1, k + 1)])
        m = np.column_stack([np.asarray(t[f"f{i}"], float) for i in range(1, k + 1)])
        s = np.column_stack([np.asarray(t[f"s{i}"], float) for i in range(1, k + 1)])
        bad = ~np.isfinite(f)
        a[bad] = np.nan
        # pad each object's observations to J slots
        counts = np.bincount(inv, minlength=len(uniq))
        J = int(counts.max(initial=1))
        slot = np.zeros(len(t), int)
        order = np.argsort(inv, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot[order] = np.arange(len(t)) - np.repeat(starts, counts)
        As, Ms, Ss = (np.full((J, len(uniq), k), np.nan) for _ in range(3))
        As[slot, inv], Ms[slot, inv], Ss[slot, inv] = a, m, s
        like = False
        if "likelihood" in t.colnames:
            lk = np.asarray(t["likelihood"]).astype(str)
            lk = np.isin(np.char.lower(lk), ("true", "1", "1.0"))
            if lk.any() and not lk.all():
                raise InputError("the tables mix Lumos likelihoods (--no-mag) and posteriors: "
                                 "coadd one kind")
            like = bool(lk.all())
        r = product_of_mixtures(list(As), list(Ms), list(Ss), lower=0.0, likelihood=like,
                                n_grid=n_grid)
        for key, v in r.items():
            if key != "n_obs":
                out[key.replace("flux_", "flux_pdf_") if key != "eta" else "eta_pdf"] = v
    return out


__all__ = ["inverse_variance_mean", "product_of_mixtures", "coadd_tables"]
