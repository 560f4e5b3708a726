"""Lumos' validation calibration: the per-SNR shift and width (:class:`SNRCalibration`,
:func:`fit_snr_calibration`), the single width factor (:func:`fit_width_factor`,
:func:`calibrate_widths`), and their application to the network's mixtures (:func:`_calibrated`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ...errors import InputError
from .mixtures import divide_training_prior, predict_mixtures

#: crowding above which a target gets the crowded calibration (:class:`SNRCalibration`)
CROWD_C = 0.05
#: nearest-neighbour distance [px] below which a target of the least crowded level gets that
#: level's near-neighbour calibration (:attr:`SNRCalibration.near`), where it has one
NEAR_PX = 15.0


def _prior_knee(settings) -> float:
    """The prior-free training density's knee in the network's normalised flux units
    (``prior_free_knee`` pixel sigmas; one unit is ``FLUX_UNIT`` pixel sigmas)."""
    from ...nn.lumos import FLUX_UNIT

    return float(settings.prior_free_knee) / FLUX_UNIT


@dataclass(frozen=True)
class SNRCalibration:
    """Validation recalibration of the network's mixtures as a function of their SNR: every
    component mean moves by ``shift`` times the mixture's standard deviation and every width is
    multiplied by ``exp(log_scale)``, both interpolated linearly in ``asinh(mean / std)`` of the
    network's mixture between the calibration bins' centres ``asinh_snr`` (constant beyond).

    The single width factor (temperature scaling) cannot correct a location error, and the
    network's errors differ with SNR: the neighbour-ratio model measured bright isolated
    galaxies a little low and faint ones a little high.  Fitted by
    :func:`fit_snr_calibration` (maximum likelihood per bin).

    ``crowded``: a second calibration for crowded targets -- those whose neighbours put more
    than ``crowd_c`` of the target's own flux into its matched filter (the head feature ``c``:
    from the catalogue's flux ratio with the magnitude, from the joint fit's neighbour amplitude
    in the data-only mode) -- whose errors differ from isolated ones' (one calibration for both
    improved the isolated PIT and spoiled the crowded one, in both modes).  The crowded
    calibration may itself hold a ``crowded`` one for targets above its own ``crowd_c`` (the
    crowding levels of :func:`crowd_edges`): a chain of calibrations by crowding.

    ``near``: a calibration (with crowding levels of its own) for the targets whose nearest
    other source is closer than ``near_px`` (the distance a catalogue gives,
    :func:`nearest_distance`); this one's bins and levels then hold the targets at ``near_px``
    or more.  At the same ``c`` a target beside a faint neighbour errs unlike an isolated one
    (``c`` comes from catalogue fluxes, which can be far off; docs/lumos.md, near neighbours),
    so the calibration is split by the distance first where the injections allow
    (:func:`fit_snr_calibration`).  Targets of unknown distance get this one's own."""

    asinh_snr: tuple[float, ...]
    log_scale: tuple[float, ...]
    shift: tuple[float, ...]
    crowded: SNRCalibration | None = None
    crowd_c: float = CROWD_C
    near: SNRCalibration | None = None
    near_px: float = NEAR_PX

    @classmethod
    def from_dict(cls, d: dict) -> SNRCalibration:
        try:
            out = cls(*(tuple(float(v) for v in d[k]) for k in ("asinh_snr", "log_scale",
                                                                 "shift")),
                      crowded=cls.from_dict(d["crowded"]) if d.get("crowded") else None,
                      crowd_c=float(d.get("crowd_c", CROWD_C)),
                      near=cls.from_dict(d["near"]) if d.get("near") else None,
                      near_px=float(d.get("near_px", NEAR_PX)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"model card: malformed snr_calibration {d!r} ({exc})") from None
        if not (len(out.asinh_snr) == len(out.log_scale) == len(out.shift) >= 1) or \
                np.any(np.diff(out.asinh_snr) <= 0):
            raise InputError(f"model card: malformed snr_calibration {d!r}")
        return out

    def as_dict(self) -> dict:
        out: dict[str, Any] = {k: [round(float(v), 5) for v in getattr(self, k)]
                               for k in ("asinh_snr", "log_scale", "shift")}
        if self.crowded is not None:
            out |= {"crowded": self.crowded.as_dict(), "crowd_c": self.crowd_c}
        if self.near is not None:
            out |= {"near": self.near.as_dict(), "near_px": self.near_px}
        return out

    def apply(self, a, m, s, c=None, d=None):
        """Calibrated ``(a, m, s)``; ``c`` (n,): the crowding feature, ``d`` (n,): the distance
        to the nearest other source [px] (:func:`nearest_distance`), None = unknown."""
        a, m, s = (np.asarray(v, float) for v in (a, m, s))
        if self.near is not None and d is not None:  # by the distance first, then by c
            near = np.asarray(d, float) < self.near_px
            cc = None if c is None else np.asarray(c, float)
            return _split_apply(near, (a, m, s), lambda v: self.near.apply(
                *v, None if cc is None else cc[near]), lambda v: replace(self, near=None).apply(
                *v, None if cc is None else cc[~near]))
        if self.crowded is not None and c is not None:
            crowd = np.asarray(c, float) > self.crowd_c
            if crowd.any():  # the crowded calibration may hold more crowding levels
                return _split_apply(crowd, (a, m, s), lambda v: self.crowded.apply(
                    *v, np.asarray(c, float)[crowd]),
                    lambda v: replace(self, crowded=None).apply(*v))
        z, sd = _mixture_snr(a, m, s)
        ls = np.interp(z, self.asinh_snr, self.log_scale)
        d = np.interp(z, self.asinh_snr, self.shift)
        return a, m + (d * sd)[:, None], s * np.exp(ls)[:, None]


def _split_apply(sel: np.ndarray, ams: tuple, on, off) -> tuple:
    """``(a, m, s)`` with the rows ``sel`` calibrated by ``on`` and the others by ``off``
    (each called on its rows' ``(a, m, s)``)."""
    a, m, s = ams
    out = [np.empty_like(a), np.empty_like(m), np.empty_like(s)]
    for rows, f in ((sel, on), (~sel, off)):
        if rows.any():
            for o, v in zip(out, f((a[rows], m[rows], s[rows])), strict=True):
                o[rows] = v
    return tuple(out)


def nearest_distance(x, y, rows=None) -> np.ndarray:
    """Distance [px] from each source ``rows`` (default: all) of the positions ``x, y`` to the
    nearest other one (inf where there is none or the position is not finite): the distance
    that picks a target's near-neighbour calibration (:attr:`SNRCalibration.near`)."""
    from scipy.spatial import cKDTree

    x, y = np.asarray(x, float), np.asarray(y, float)
    rows = np.arange(x.size) if rows is None else np.asarray(rows, int)
    out = np.full(rows.size, np.inf)
    fin = np.isfinite(x) & np.isfinite(y)
    if fin.sum() < 2:
        return out
    ok = fin[rows]
    dist, _ = cKDTree(np.column_stack([x[fin], y[fin]])).query(
        np.column_stack([x[rows[ok]], y[rows[ok]]]), k=2)
    out[ok] = dist[:, 1]
    return out


def _mixture_snr(a, m, s) -> tuple[np.ndarray, np.ndarray]:
    """``asinh(mean / std)`` and the standard deviation of each row's mixture (the binning
    variable of :class:`SNRCalibration`)."""
    mean = (a * m).sum(1)
    sd = np.sqrt(np.clip((a * (s ** 2 + m ** 2)).sum(1) - mean ** 2, 1e-30, None))
    return np.arcsinh(mean / sd), sd


def _mixture_nll(a, m, s, y, truncated: bool) -> float:
    """Mean negative log-likelihood of ``y`` (n, 1) under the mixtures (eq. 10's truncated
    density, or eq. 8's), up to the constant log sqrt(2 pi)."""
    from scipy.special import log_ndtr, logsumexp

    lp = np.log(np.clip(a, 1e-30, None)) - 0.5 * ((y - m) / s) ** 2 - np.log(s)
    if truncated:
        lp = lp - log_ndtr(m / s)
    return float(-logsumexp(lp, axis=1).mean())


def _coverage_loss(a, m, s, y, truncated: bool) -> float:
    """``median(u)^2 + log(sigma68(u))^2`` of the normal scores ``u = Phi^-1(PIT)`` of the
    truths ``y`` (n,) in the mixtures (truncated at 0 with ``truncated``): 0 when the
    mixtures' medians and central 68 % intervals are calibrated."""
    from scipy.special import ndtri

    from ...metrics import pit_gaussian_mixture
    from ...stats import sigma68

    pit = pit_gaussian_mixture(a, m, s, y, lower=0.0 if truncated else None)
    u = ndtri(np.clip(np.asarray(pit, float), 1e-9, 1 - 1e-9))
    u = u[np.isfinite(u)]
    if u.size < 2:
        return float("inf")
    w = max(float(sigma68(u)), 1e-6)
    return float(np.median(u) ** 2 + np.log(w) ** 2)


def crowding(feats) -> np.ndarray | None:
    """The crowding ``c`` of each row of network features (the ``neighbour_ratio`` feature
    ``log(1 + c)``), None for networks without it."""
    f = np.asarray(feats, float)
    return np.expm1(f[:, 5]) if f.ndim == 2 and f.shape[1] >= 6 else None


def _calibrated(a, m, s, sigma_scale: float | SNRCalibration, prior_knee: float | None,
                c=None, d=None):
    """Normalised network mixtures with the validation calibration (``sigma_scale``: a width
    factor or an :class:`SNRCalibration`, calibrated on the posterior the network learned;
    ``c`` the rows' :func:`crowding`, ``d`` their :func:`nearest_distance`), then -- for the
    data-only mode -- divided by the prior-free training density (:func:`divide_training_prior`)."""
    if isinstance(sigma_scale, SNRCalibration):
        a, m, s = sigma_scale.apply(a, m, s, c, d)
    else:
        s = s * sigma_scale
    if prior_knee is not None:
        a, m, s = divide_training_prior(a, m, s, prior_knee)
    return a, m, s


def calibrate_widths(model, t: dict, *, truncated: bool = True,
                     prior_knee: float | None = None) -> float:
    """Validation calibration of the PDF widths (as BKGnet's ``sigma_scale``): the factor ``c``
    on every component width that minimises the mixture negative log-likelihood (eq. 10's
    truncated density, or eq. 8's with ``truncated=False``) of the true fluxes of tensors ``t``
    -- temperature scaling, which keeps the means and weights.  With ``prior_knee`` the scaled
    mixture is divided by the prior-free training density first (:func:`_calibrated`): the
    likelihood itself is fitted to the true fluxes.  The shipped calibration does not do that
    for the data-only mode -- true fluxes drawn from a prior are not a proper score for a
    likelihood -- but fits the posterior before the division (:func:`_calibrate_modes`).
    Returns ``c`` (> 1: the network's PDFs were too narrow)."""
    return fit_width_factor(*_predict(model, t), np.asarray(t["y"], float), truncated=truncated,
                            prior_knee=prior_knee)


def _predict(model, t: dict):
    model.eval()
    return predict_mixtures(model, t["x"], t["feats"], t["coords"], t["mag"], t["has_mag"],
                            t["key"])


def fit_width_factor(a, m, s, y, *, truncated: bool = True,
                     prior_knee: float | None = None) -> float:
    """:func:`calibrate_widths` on given mixtures ``a, m, s`` and true values ``y``."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, float)[:, None]
    if truncated:
        y = np.clip(y, 0.0, None)

    def nll(logc: float) -> float:
        return _mixture_nll(*_calibrated(a, m, s, float(np.exp(logc)), prior_knee), y,
                            truncated)

    r = minimize_scalar(nll, bounds=(np.log(0.2), np.log(5.0)), method="bounded",
                        options={"xatol": 1e-4})
    return float(np.exp(r.x))


def crowd_edges(c, *, crowd_c: float = CROWD_C, min_rows: int = 600,
                levels: int = 1) -> tuple[float, ...]:
    """The crowding levels of a calibration: ``()`` (one calibration for all rows), or the
    lower edges ``(e_0, e_1, ...)`` of the crowded levels above the least crowded one (``c <=
    e_0``), every level holding ``min_rows`` rows at least.

    ``levels=1`` (the rule before levels): one split at ``e_0 = crowd_c`` when both sides hold
    ``min_rows``.  ``levels`` > 1: ``e_0 = crowd_c``, or -- a crowded frame with fewer than
    ``min_rows`` isolated rows -- the crowding of the ``min_rows``-th least crowded row (the
    least crowded level takes the isolated rows and the least crowded of the others); the rows
    above ``e_0`` are cut at quantiles of ``c`` into at most ``levels`` equal-count levels."""
    c = np.sort(np.asarray(c, float)[np.isfinite(np.asarray(c, float))])
    n_min = max(int(min_rows), 1)
    n_iso = int((c <= crowd_c).sum())
    if int(levels) <= 1:
        return (float(crowd_c),) if min(n_iso, c.size - n_iso) >= n_min else ()
    if c.size < 2 * n_min:
        return ()
    e0 = float(crowd_c) if n_iso >= n_min else float(c[n_min - 1])
    rest = c[c > e0]
    if rest.size < n_min:
        return ()
    k = int(min(int(levels), rest.size // n_min))
    q = np.quantile(rest, np.arange(1, k) / k) if k > 1 else np.zeros(0)
    edges = [e0, *(float(v) for v in q)]
    return tuple(e for i, e in enumerate(edges) if i == 0 or e > edges[i - 1])


def fit_snr_calibration(a, m, s, y, *, truncated: bool = True, prior_knee: float | None = None,
                        n_bins: int = 6, min_per_bin: int = 300, c=None,
                        crowd_c: float = CROWD_C, score: str = "log",
                        shrink_n: float = 0.0, crowd_levels: int = 1,
                        like: SNRCalibration | None = None, d=None,
                        near_px: float = NEAR_PX) -> SNRCalibration:
    """Fit an :class:`SNRCalibration` to mixtures ``a, m, s`` (n, K) and true normalised
    fluxes ``y`` (n,): the stamps are split into ``n_bins`` equal-count bins of the mixture's
    ``asinh(mean / std)``, and in each the shift and log width factor that minimise the
    negative log-likelihood of the true fluxes (eq. 10's truncated density, or eq. 8's with
    ``truncated=False``; with ``prior_knee`` after the prior division, as users get the
    data-only mode).  Fewer bins when there are fewer than ``min_per_bin`` stamps per bin.
    With the rows' crowding ``c`` (:func:`crowding`), crowded rows (``c > crowd_c``) get their
    own calibration (half the bins) when both groups hold ``2 min_per_bin`` rows; with
    ``crowd_levels`` > 1 the crowded rows are cut further into up to that many levels of
    ``2 min_per_bin`` rows at least (:func:`crowd_edges`), each with its own calibration.
    With the rows' nearest-neighbour distances ``d`` [px] (:func:`nearest_distance`), the rows
    are split at ``near_px`` first (:attr:`SNRCalibration.near`: the rows nearer than that get
    a calibration of their own), each side with its own crowding levels, when both sides hold
    ``2 min_per_bin`` rows; otherwise (a frame whose injections give fewer) there is no split.
    ``like``: an :class:`SNRCalibration` whose crowding levels, distance split and bin counts
    the fit takes instead of choosing them from the rows' counts (a fit on part of the rows,
    e.g. a check half, then has the structure of the fit on all of them that it checks).

    ``score``: ``"log"`` (the likelihood, above) or ``"coverage"``: in each bin the shift and
    width that put the median of the true fluxes' normal scores ``u = Phi^-1(PIT)`` at 0 and
    their sigma68 at 1 -- the central 68 % interval covers 68 % of the truths, as the pull
    width ``(median - truth) / sigma68`` reads it.  The likelihood is dominated by the few
    truths far out in the tails where the errors of real frames are heavier than the
    network's mixtures: it widens every PDF to hold them and the core reads too wide
    (docs/lumos.md); the coverage fit is not moved by them.

    ``shrink_n`` (default 0: off): each bin's shift and log width are shrunk towards one
    global fit on all rows, ``p_b = w p_bin + (1 - w) p_global`` with ``w = n_b / (n_b +
    shrink_n)`` -- fewer effective free parameters, so a bin of a few hundred rows does not
    over-fit its own noise."""
    if shrink_n < 0:
        raise InputError(f"fit_snr_calibration: shrink_n must be >= 0, got {shrink_n!r}")
    if score not in ("log", "coverage"):
        raise InputError(f"fit_snr_calibration: score must be 'log' or 'coverage', got {score!r}")
    if d is not None:  # by the distance first: each side its own crowding levels
        near = np.asarray(d, float) < near_px
        split = (like.near is not None if like is not None else
                 min(int(near.sum()), int((~near).sum())) >= 2 * min_per_bin)
        if split and near.any() and (~near).any():
            kw = {"truncated": truncated, "prior_knee": prior_knee, "n_bins": n_bins,
                  "min_per_bin": min_per_bin, "score": score, "shrink_n": shrink_n,
                  "crowd_c": crowd_c, "crowd_levels": crowd_levels}
            a, m, s, y = (np.asarray(v, float) for v in (a, m, s, y))
            parts = [fit_snr_calibration(
                a[v], m[v], s[v], y[v], c=None if c is None else np.asarray(c, float)[v],
                like=None if like is None else (like.near if i == 0 else
                                                replace(like, near=None)), **kw)
                for i, v in enumerate((near, ~near))]
            return replace(parts[1], near=parts[0], near_px=float(near_px))
    if like is not None:
        like = replace(like, near=None)
    chain = []  # the levels of ``like``, least crowded first
    while like is not None:
        chain.append(like)
        like = like.crowded
    edges: tuple[float, ...] = ()
    if c is not None:
        c = np.asarray(c, float)
        edges = (tuple(v.crowd_c for v in chain[:-1]) if chain else
                 crowd_edges(c, crowd_c=crowd_c, min_rows=2 * min_per_bin, levels=crowd_levels))
        if edges:
            kw = {"truncated": truncated, "prior_knee": prior_knee, "min_per_bin": min_per_bin,
                  "score": score, "shrink_n": shrink_n}
            bounds = (*edges, np.inf)
            levels = [~(c > edges[0])] + [(c > lo) & (c <= hi) for lo, hi in
                                        zip(bounds[:-1], bounds[1:], strict=True)]
            if min(int(v.sum()) for v in levels) >= 1:
                fits = [fit_snr_calibration(a[v], m[v], s[v], np.asarray(y)[v],
                                            n_bins=n_bins if i == 0 else max(n_bins // 2, 1),
                                            like=(replace(chain[i], crowded=None) if chain
                                                  else None), **kw)
                        for i, v in enumerate(levels)]
                out = fits[-1]  # chained from the most crowded level down
                for f_, e in zip(fits[-2::-1], edges[::-1], strict=True):
                    out = replace(f_, crowded=out, crowd_c=float(e))
                return out
    from scipy.optimize import minimize

    a, m, s = (np.asarray(v, float) for v in (a, m, s))
    y = np.asarray(y, float)[:, None]
    if truncated:
        y = np.clip(y, 0.0, None)
    z, sd = _mixture_snr(a, m, s)
    nb = (len(chain[0].shift) if chain else
          int(max(1, min(n_bins, len(z) // max(min_per_bin, 1)))))
    edges = np.quantile(z, np.linspace(0, 1, nb + 1))
    idx = np.clip(np.searchsorted(edges, z, side="right") - 1, 0, nb - 1)
    centres, log_scale, shift = [], [], []
    groups = [idx == b for b in range(nb)]
    if shrink_n > 0 and nb > 1:
        groups.append(np.ones(len(z), bool))  # the global fit, last
    fits = []
    for sel in groups:
        ab, mb, sb, yb, sdb = a[sel], m[sel], s[sel], y[sel], sd[sel, None]

        def nll(p, ab=ab, mb=mb, sb=sb, yb=yb, sdb=sdb):
            a_, m_, s_ = ab, mb + p[1] * sdb, sb * np.exp(p[0])
            if prior_knee is not None:
                a_, m_, s_ = divide_training_prior(a_, m_, s_, prior_knee)
            if score == "coverage":
                return _coverage_loss(a_, m_, s_, yb[:, 0], truncated)
            return _mixture_nll(a_, m_, s_, yb, truncated)

        r = minimize(nll, np.zeros(2), method="Nelder-Mead",
                     options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 400}
                     | ({"initial_simplex": [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]]}
                        if score == "coverage" else {}))
        fits.append((np.asarray(r.x, float), int(sel.sum()), float(np.median(z[sel]))))
    glob = fits.pop()[0] if len(fits) > nb else None
    for x, n_b, cz_b in fits:
        if glob is not None:
            w = n_b / (n_b + shrink_n)
            x = w * x + (1.0 - w) * glob
        centres.append(cz_b)
        log_scale.append(float(np.clip(x[0], np.log(0.2), np.log(5.0))))
        shift.append(float(np.clip(x[1], -2.0, 2.0)))
    order = np.argsort(centres)
    cz = np.asarray(centres)[order]
    cz = cz + np.arange(len(cz)) * 1e-9  # strictly increasing for np.interp
    return SNRCalibration(tuple(cz), tuple(np.asarray(log_scale)[order]),
                          tuple(np.asarray(shift)[order]))


def instrument_key(image) -> str:
    """The instrument a frame comes from, for the per-instrument calibration: its header's
    ``TELESCOP`` and ``INSTRUME`` and its band (``?`` where absent)."""
    h = getattr(image, "header", None) or {}
    meta = getattr(image, "meta", None)

    def get(k):
        try:
            v = h.get(k)
        except Exception:  # noqa: BLE001 -- a header that cannot say
            v = None
        return "?" if v is None or str(v).strip() == "" else str(v).strip()

    band = getattr(meta, "band", None)
    return f"{get('TELESCOP')}/{get('INSTRUME')}/{'?' if band is None else band}"
