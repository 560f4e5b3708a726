"""BKGnet's error calibration: the network's predictions on a training set
(:func:`predict_set`), the validation factor on sigma_net (:func:`sigma_scale`) and, for models
trained on pixel labels, the label noise measured from the user's exposures and the error of
the prediction calibrated against it (:func:`fit_error_calibration`).
"""

from __future__ import annotations

import numpy as np

from .data import STENCIL_NORM, TrainingSet
from .errormodel import calibrated_errors


def predict_set(model, ts: TrainingSet, *, batch_size: int = 1024) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Network background and sigma (image units) for a training set."""
    return _predict(model, ts.x, ts, ts.loc, ts.scale, batch_size=batch_size)


def _predict(model, x, ts: TrainingSet, loc, scale, *, batch_size: int = 1024
             ) -> tuple[np.ndarray, np.ndarray]:
    """Background and sigma (image units) of normalised stamps ``x`` (N, 2, S, S) with the
    coordinates, magnitudes and keys of ``ts`` and the normalisation ``loc, scale``."""
    import torch

    from ...nn.bkgnet import denormalise

    model.eval()
    dev = next(model.parameters()).device
    loc, scale = (torch.as_tensor(np.asarray(a, float)) for a in (loc, scale))
    bs, ss = [], []
    with torch.inference_mode():
        for s in range(0, len(ts), batch_size):
            sl = slice(s, s + batch_size)
            mu, ls = model(x[sl].float().to(dev), ts.coords[sl].to(dev), ts.mag[sl].to(dev),
                           ts.has_mag[sl].to(dev), ts.key[sl].to(dev))
            b, sg = denormalise(mu.cpu(), ls.cpu(), loc[sl], scale[sl])
            bs.append(b.numpy())
            ss.append(sg.numpy())
    return np.concatenate(bs), np.concatenate(ss)


def sigma_scale(model, val: TrainingSet) -> float:
    """Error calibration on the validation stamps: the factor ``k`` that makes the pull
    width ``sigma68[(b - label) / (k sigma_net)]`` one (temperature scaling of sigma_net).  The
    Gaussian likelihood fits sigma on the training stamps; held-out stamps scatter a little
    more, and ``k`` (typically 1.0-1.2) carries that into the reported errors."""
    from ...metrics import pull_summary

    b, s = predict_set(model, val)
    k = float(pull_summary(b, val.label, s)["sigma68"])
    return k if np.isfinite(k) and k > 0 else 1.0


# -- honest errors with pixel labels: the label noise measured, the network's sigma scaled ------
#: stamps closer than this to an edge form the "edge" calibration group [px]
CAL_EDGE_WIDTH = 150.0
#: fewest label-noise stencils for a band x epoch key's own value (else the pooled ratio)
MIN_STENCILS = 300


#: faint sources are injected with centres uniformly within this many label radii of a
#: stamp's centre (sources further out add no light to the label circle)
FOLLOW_RADIUS = 4.0
#: injected magnitudes: ``lim + U(0, FOLLOW_MAGS)``, ``lim`` the catalogue's 99th percentile
FOLLOW_MAGS = 1.5


def followed_fraction(model, ts: TrainingSet, galaxies: dict, settings, *, seed: int = 0,
                      n_min: int = 2000, radius: float | None = None,
                      mags: tuple[float, float] | None = None) -> dict:
    """The share ``g`` of the light of faint uncatalogued sources in a label circle that the
    network follows, measured by injection into held-out stamps.

    A faint galaxy (shape from the faint end of ``galaxies``, a :func:`~skysub.simulate.
    trainingdata.galaxy_pool`; magnitude ``lim + U(0, FOLLOW_MAGS)`` below the catalogue's
    limit ``lim``, its 99th percentile; ``mags`` overrides the range) is added, noise-free,
    with its centre uniformly in the disc of ``radius`` px (default ``FOLLOW_RADIUS`` label
    radii) about the stamp centre -- a Poisson population's geometry.  ``dl`` is the light it
    adds to the label circle, ``db`` the change of the network's prediction (stamp
    renormalised and the centre hidden as in training).  For additive responses ``g =
    sum(db dl) / sum(dl^2)`` is the regression of the prediction on the label's faint-source
    light ``G``: ``cov(b - sky, G) = g var(G)``, the share the error calibration needs
    (:func:`fit_error_calibration`).

    ``ts`` needs ``flux_unit``; its raw pixels are recovered from the normalised stamps.
    Returns ``{"followed": g, "err": standard error, "n": injections, "mags": range}``.
    """
    if ts.flux_unit is None or len(ts) == 0:
        raise ValueError("followed_fraction needs a training set with flux_unit")
    rng = np.random.default_rng(seed)
    rad = float(radius if radius is not None else FOLLOW_RADIUS * settings.label_radius)
    gm = np.asarray(galaxies["mag"], float)
    lim = float(np.percentile(gm, 99))
    lo, hi = mags if mags is not None else (lim, lim + FOLLOW_MAGS)
    faint = np.flatnonzero(gm >= np.percentile(gm, 80))
    idx = np.tile(np.arange(len(ts)), int(np.ceil(n_min / len(ts))))
    m = len(idx)
    pick = rng.choice(faint, m)
    r = rad * np.sqrt(rng.uniform(0, 1, m))
    phi = rng.uniform(0, 2 * np.pi, m)
    rows = {q: np.asarray(galaxies[q], float)[pick] for q in ("r50", "sersic_n", "ba", "theta")}
    db, dl = _injection_responses(model, ts, idx, rows, r * np.cos(phi), r * np.sin(phi),
                                  rng.uniform(lo, hi, m), settings)
    out = _share(db, dl)
    return {**out, "mags": [float(lo), float(hi)], "radius": rad}


def _share(db: np.ndarray, dl: np.ndarray) -> dict:
    """The regression ``g = sum(db dl) / sum(dl^2)`` through the origin and its error."""
    ok = np.isfinite(db) & np.isfinite(dl) & (dl > 0)
    den = float(np.sum(dl[ok] ** 2))
    if not ok.any() or den <= 0:
        return {"followed": float("nan"), "err": float("nan"), "n": int(ok.sum())}
    g_hat = float(np.sum(db[ok] * dl[ok]) / den)
    res = db[ok] - g_hat * dl[ok]
    err = float(np.sqrt(np.sum(res**2 * dl[ok] ** 2)) / den)
    return {"followed": g_hat, "err": err, "n": int(ok.sum())}


def neighbour_pool(catalog) -> dict:
    """Every catalogued source with a finite magnitude as (mag, r50, sersic_n, ba, theta):
    the catalogue's own shapes where present, point sources (``r50`` 0.3 px, ``n`` 1,
    round) where not -- stars, or catalogues without shape columns."""
    cols = getattr(catalog, "colnames", None) or list(catalog)
    if "mag" not in cols:
        raise ValueError("neighbour_pool needs a catalogue with a 'mag' column")
    mag = np.asarray(catalog["mag"], float)
    n = len(mag)

    def col(name, default):
        v = np.asarray(catalog[name], float) if name in cols else np.full(n, default)
        return np.where(np.isfinite(v), v, default)

    r50, ser = col("r50", 0.0), col("sersic_n", 1.0)
    point = ~(r50 > 0) | ~((ser > 0.2) & (ser <= 8))
    out = {"mag": mag, "r50": np.where(point, 0.3, r50), "sersic_n": np.where(point, 1.0, ser),
           "ba": np.where(point, 1.0, np.clip(col("ba", 1.0), 0.05, 1.0)),
           "theta": np.where(point, 0.0, col("theta", 0.0))}
    ok = np.isfinite(mag)
    return {k: v[ok] for k, v in out.items()}


def neighbour_response(model, ts: TrainingSet, pool: dict, settings, *, seed: int = 0,
                       n_min: int = 2000) -> dict:
    """How the network follows the light that catalogued neighbours just beyond the empty
    radius put into a label circle, measured by injection into held-out stamps.

    A label position is empty when no catalogued source lies within ``empty_radius`` of it,
    so catalogued sources beyond it -- whose centres and inner parts the network sees --
    still put their wings into the label circle: part of the label's extra light ``G`` that
    the faint-source injections (:func:`followed_fraction`) do not sample.  Here a source
    drawn from ``pool`` (:func:`neighbour_pool`: the user's catalogue, stars included) is
    added, noise-free, with its centre uniformly in the annulus ``empty_radius < r <
    R`` (``R`` = the injected stamp's half-size plus the label radius: beyond it the
    injected light does not reach the circle) about each held-out stamp's centre.

    For a Poisson population of density ``n`` [sources / px^2] the label light of the
    neighbours has ``var(G_c) = n A mean(dl^2)`` and ``cov(b - sky, G_c) = n A mean(db dl)``
    (``A`` the annulus' area); returns ``{"followed": mean(db dl) / mean(dl^2), "err", "n",
    "area": A, "dl2": mean(dl^2), "dbdl": mean(db dl), "dl": dl}`` (``dl`` per injection, in
    image units, for trimming as the calibration does).
    """
    if ts.flux_unit is None or len(ts) == 0:
        raise ValueError("neighbour_response needs a training set with flux_unit")
    rng = np.random.default_rng(seed)
    S = int(ts.x.shape[-1])
    r_in = float(settings.empty_radius)
    r_out = float(min(63, S - (1 - S % 2)) // 2 + settings.label_radius)
    idx = np.tile(np.arange(len(ts)), int(np.ceil(n_min / len(ts))))
    m = len(idx)
    pick = rng.integers(0, len(pool["mag"]), m)
    r = np.sqrt(rng.uniform(r_in**2, r_out**2, m))
    phi = rng.uniform(0, 2 * np.pi, m)
    rows = {q: np.asarray(pool[q], float)[pick] for q in ("r50", "sersic_n", "ba", "theta")}
    db, dl = _injection_responses(model, ts, idx, rows, r * np.cos(phi), r * np.sin(phi),
                                  np.asarray(pool["mag"], float)[pick], settings)
    ok = np.isfinite(db) & np.isfinite(dl)
    out = _share(db[ok], dl[ok])
    out.update(area=float(np.pi * (r_out**2 - r_in**2)), r_in=r_in, r_out=r_out,
               db=db[ok], dl=dl[ok])
    return out


def _injection_responses(model, ts: TrainingSet, idx: np.ndarray, rows: dict, px: np.ndarray,
                         py: np.ndarray, mag: np.ndarray, settings
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Sources of shapes ``rows`` (r50, sersic_n, ba, theta) and magnitudes ``mag`` added,
    noise-free, at offsets ``(px, py)`` from the centres of stamps ``idx`` of ``ts``: the
    change of the prediction ``db`` and the light added to the label circle ``dl`` (image
    units)."""
    import torch

    from ...nn.bkgnet import ASINH_SCALE, normalise_stamps
    from ...simulate.profiles import sersic_stamps
    from ...simulate.psf import moffat_psf

    S = int(ts.x.shape[-1])
    c = S // 2
    m = len(idx)
    ix, iy = np.round(px).astype(int), np.round(py).astype(int)
    flux = ts.flux_unit[idx] * 10 ** (-0.4 * (np.asarray(mag, float) - settings.zero_point))
    size = min(63, S - (1 - S % 2))
    h = size // 2
    psf = moffat_psf(int(2 * np.ceil(3 * settings.psf_fwhm) + 1), settings.psf_fwhm,
                     settings.psf_beta)
    yy, xx = np.mgrid[:S, :S]
    circle = np.hypot(xx - c, yy - c) <= settings.label_radius
    mask = int(model.arch.mask_size)
    min_valid = int(getattr(settings, "min_valid", 1))
    db, dl = np.zeros(m), np.zeros(m)
    for s0 in range(0, m, 256):
        k = np.arange(s0, min(s0 + 256, m))
        x = ts.x[torch.from_numpy(idx[k])].float()
        valid = x[:, 1] > 0.5
        raw = (torch.from_numpy(ts.loc[idx[k]]).float()[:, None, None]
               + torch.from_numpy(ts.scale[idx[k]]).float()[:, None, None]
               * ASINH_SCALE * torch.sinh(x[:, 0] / ASINH_SCALE))
        src = sersic_stamps(size, flux[k], rows["r50"][k], np.clip(rows["sersic_n"][k], 0.3, 8.0),
                            ba=np.clip(rows["ba"][k], 0.05, 1.0), theta=rows["theta"][k],
                            dx=px[k] - ix[k], dy=py[k] - iy[k], oversample=2,
                            psf=psf).clip(0, None)
        add = np.zeros((len(k), S, S), np.float32)
        for j in range(len(k)):  # the source's stamp placed at its integer offset, clipped
            y0, x0 = c + iy[k[j]] - h, c + ix[k[j]] - h
            ys, xs = slice(max(y0, 0), min(y0 + size, S)), slice(max(x0, 0), min(x0 + size, S))
            add[j, ys, xs] = src[j, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
        dl[k] = add[:, circle].mean(1)
        view = _Rows(ts, idx[k])
        out = []
        for stamps in (raw, raw + torch.from_numpy(add)):
            xin, loc, scale, _ = normalise_stamps(stamps, valid, mask, min_valid=min_valid)
            out.append(_predict(model, xin, view, loc.numpy(), scale.numpy())[0])
        db[k] = out[1] - out[0]
    return db, dl


class _Rows:
    """Coordinates, magnitudes and keys of rows ``idx`` of a training set (for _predict)."""

    def __init__(self, ts: TrainingSet, idx: np.ndarray):
        import torch

        t = torch.from_numpy(np.asarray(idx))
        self.coords, self.mag, self.has_mag, self.key = (ts.coords[t], ts.mag[t],
                                                         ts.has_mag[t], ts.key[t])
        self.n = len(idx)

    def __len__(self) -> int:
        return self.n


def combined_share(followed: float, var_stencil: float, neighbours: dict | None,
                   sigma_label: float) -> dict:
    """The followed share of ALL the label's extra light: faint uncatalogued sources (share
    ``followed``, :func:`followed_fraction`) and the wings of catalogued neighbours beyond the
    empty radius (``neighbours``: :func:`neighbour_response` with ``density``, the
    catalogue's sources per px^2, added).

    The stencils' nine circles must all be empty, which keeps them away from catalogued
    neighbours: they measure the faint sources' part ``var_stencil`` and little of the
    wings (development band: stencils 0.071 ADU^2, single empty labels against the truth
    0.131, injected wings 0.072).  So ``var(G) = var_stencil + var_c`` with ``var_c = n A
    mean(dl^2)`` and ``cov(b - sky, G) = followed var_stencil + n A mean(db dl)``, the
    injections whose label light exceeds ``TRIM`` x ``sigma_label`` (the median total label
    noise) left out as the calibration's trimming leaves such labels out.
    Returns ``{"followed", "var_g", "var_stencil", "var_wings", "followed_wings"}``."""
    vs = max(float(var_stencil), 0.0)
    out = {"followed": float(followed), "var_g": vs, "var_stencil": vs, "var_wings": 0.0,
           "followed_wings": None}
    if neighbours is None or not np.isfinite(followed):
        return out
    dl, db = (np.asarray(neighbours[k], float) for k in ("dl", "db"))
    keep = (dl <= TRIM * float(sigma_label)) if sigma_label > 0 else np.ones(len(dl), bool)
    na = float(neighbours["density"]) * float(neighbours["area"])
    var_c = na * float(np.mean(np.where(keep, dl**2, 0.0))) if len(dl) else 0.0
    cov_c = na * float(np.mean(np.where(keep, db * dl, 0.0))) if len(dl) else 0.0
    var_g = vs + var_c
    if var_g <= 0:
        return out
    out.update(followed=float(np.clip((followed * vs + cov_c) / var_g, 0.0, 1.0)),
               var_g=var_g, var_wings=var_c,
               followed_wings=cov_c / var_c if var_c > 0 else None)
    return out


def label_noise(stencils: dict, key_names: list[str]) -> dict:
    """Total noise of a pixel label per band x epoch key, from label-noise stencils at empty
    positions of the user's exposures (:func:`skysub.background.bkgnet.data.label_stencils`):
    ``sigma_L^2 = mean(D^2) / 2.25`` (gross outliers, beyond ``TRIM`` sigma68, left out: a
    variance, as :func:`fit_error_calibration` removes it), written as a factor on eq. 3,
    ``f = sigma_L / sqrt(median(eq3^2))``; the extra label noise (faint uncatalogued sources,
    structure) is ``eq3 sqrt(f^2 - 1)``.

    Keys with fewer than ``MIN_STENCILS`` stencils take the factor of all keys together.
    Returns ``{"factor": {key: f}, "factor_all": f, "n": {key: n}}``.
    """
    d, eq3 = (np.asarray(stencils[k], float) for k in ("d", "eq3"))
    key = np.asarray(stencils["key"], int)
    ok = np.isfinite(d) & np.isfinite(eq3) & (eq3 > 0)

    def one(sel):  # second moment of D (gross outliers out), as the calibration's
        dd = _trimmed(d[sel])
        s_l = float(np.sqrt(np.mean(dd**2) / STENCIL_NORM))
        return float(max(s_l / float(np.sqrt(np.median(eq3[sel] ** 2))), 1.0))

    f_all = one(ok) if ok.sum() >= 30 else 1.0
    out: dict = {"factor": {}, "factor_all": f_all, "n": {}}
    for j, name in enumerate(key_names):
        sel = ok & (key == j)
        if not sel.any():
            continue
        out["n"][name] = int(sel.sum())
        out["factor"][name] = one(sel) if sel.sum() >= MIN_STENCILS else f_all
    return out


def label_noise_of(eq3: np.ndarray, keys: np.ndarray, cal: dict) -> np.ndarray:
    """Total noise of the pixel labels ``f_key eq3`` of stamps with band x epoch ``keys``
    (names), from a calibration of :func:`fit_error_calibration`."""
    f = np.array([cal["label_factor"].get(str(k), cal["label_factor_all"]) for k in keys],
                 float)
    return f * np.asarray(eq3, float)


#: residuals (and stencils) further than this many sigma68 from their centre are left out of
#: the second moments of the error calibration, both alike: the variances removed and fitted
#: are those of the core the pulls' sigma68 measures, not of rare tails (outliers, bright
#: faint sources) that dominate a plain variance (on the development field, 10 instead of 4
#: made the 16-exposure errors 20 % too large)
TRIM = 4.0


def _trimmed(v: np.ndarray) -> np.ndarray:
    """``v`` less its values more than ``TRIM`` sigma68 from the median."""
    from ...stats import sigma68

    v = np.asarray(v, float)
    s = float(sigma68(v)) if len(v) else 0.0
    return v[np.abs(v - np.median(v)) <= TRIM * s] if s > 0 else v


def _scale(resid, shape, sig_l) -> float:
    """The ``a`` that makes ``mean[r^2 / ((a shape)^2 + sig_l^2)] = 1``, ``r`` the residuals
    about their mean, gross outliers (``TRIM``) left out (0 when the label noise alone
    already explains the scatter).

    Second moments, not sigma68: the label noise is removed as a variance, and the faint
    sources' light in a label is skewed (most labels have none, a few a source), so a
    sigma68 of the residual grows by less than the variance removed and a sigma68 fit
    with the variance removed leaves the errors too small (pulls ~1.5 on a simulation with
    known label noise that the prediction does not follow at all)."""
    from scipy.optimize import brentq

    from ...stats import sigma68

    resid, shape, sig_l = (np.asarray(a, float) for a in (resid, shape, sig_l))
    z = resid / np.sqrt(shape**2 + sig_l**2)
    s = float(sigma68(z))
    keep = np.abs(z - np.median(z)) <= TRIM * s if s > 0 else np.ones(len(z), bool)
    r = resid[keep] - resid[keep].mean()
    r2, sh2, n2 = r**2, shape[keep] ** 2, sig_l[keep] ** 2

    def f(a):
        return float(np.mean(r2 / np.maximum(a * a * sh2 + n2, 1e-300))) - 1.0

    if f(0.0) <= 0:
        return 0.0
    hi = 1.0
    while f(hi) > 0 and hi < 1e3:
        hi *= 2
    return float(brentq(f, 0.0, hi, xtol=1e-4)) if f(hi) <= 0 else float("nan")


def fit_error_calibration(bkg: np.ndarray, sigma_net: np.ndarray, label: np.ndarray,
                          eq3: np.ndarray, edge_distance: np.ndarray, keys: np.ndarray,
                          stencils: dict | None, key_names: list[str], *,
                          edge_width: float = CAL_EDGE_WIDTH,
                          followed: float | None = None,
                          neighbours: dict | None = None) -> dict:
    """Calibrate BKGnet's errors on held-out stamps (sky tiles no training label came from),
    against their pixel labels.

    ``b - label = (b - sky) - (label - sky)``: the error of the prediction and the label's
    noise, pixel noise (eq. 3, independent of everything the network sees) plus what faint
    uncatalogued sources add, ``G``.  The network sees the wings of those sources beyond its
    hidden centre and follows a share ``g`` of ``G`` (``cov(b - sky, G) = g var(G)``), so
    ``var(b - label) - eq3^2 = var(b - sky) + (1 - 2 g) var(G)``: the error of the
    prediction against the smooth sky is what is left after removing eq. 3 and ``(1 - 2 g)``
    of the measured extra label noise ``var(G)``.

    ``a`` is the factor that makes ``sigma68[(b - label) / sqrt((a sigma_net)^2 + eq3^2 +
    (1 - 2 g) var(G))] = 1`` on the held-out stamps (one factor: per edge/centre it was
    noisier than the difference it resolves), the reported error ``a sigma_net``.  ``var(G)
    = eq3^2 (f_key^2 - 1)`` is measured from the user's exposures (:func:`label_noise`),
    ``g`` (``followed``) by injecting faint sources into held-out stamps
    (:func:`followed_fraction`); without it ``g = 1/2`` (eq. 3 alone removed: right for
    ``g = 1/2``, errors on the large side below).  Also recorded: ``a_if_unseen`` (``g = 0``,
    all of ``G`` removed: the smallest errors the data allow) and ``a_half`` (``g = 1/2``).

    ``neighbours`` (:func:`neighbour_response` with ``density`` added) brings in the wings
    of catalogued neighbours, which the stencils barely see and the network follows in
    part: ``var(G)`` and ``g`` become those of :func:`combined_share` (the per-stamp extra
    label noise scaled by ``var(G) / var_stencil``); without it (or without ``followed``)
    the stencils' ``var(G)`` and ``followed`` as given.

    ``keys`` are the band x epoch names of the stamps.  Returns the card's
    ``inputs["error_calibration"]``.
    """
    bkg, sigma_net, label, eq3, edge_distance = (np.asarray(a, float) for a in
                                                 (bkg, sigma_net, label, eq3, edge_distance))
    keys = np.asarray(keys).astype(str)
    ln = (label_noise(stencils, key_names) if stencils is not None and len(stencils.get("d", []))
          else {"factor": {}, "factor_all": 1.0, "n": {}})
    g = 0.5 if followed is None or not np.isfinite(followed) else float(np.clip(followed, 0, 1))
    cal = {"scheme": "label-noise-stencils", "edge_width": float(edge_width),
           "label_factor": ln["factor"], "label_factor_all": float(ln["factor_all"]),
           "n_stencils": ln["n"], "followed": g, "followed_measured": followed is not None}
    sig_l = label_noise_of(eq3, keys, cal)
    ok = (np.isfinite(bkg) & np.isfinite(sigma_net) & (sigma_net > 0) & np.isfinite(label)
          & np.isfinite(sig_l) & np.isfinite(eq3))
    resid = bkg - label
    if neighbours is not None and followed is not None and ok.any():
        var_st = float(np.mean(sig_l[ok] ** 2 - eq3[ok] ** 2))
        comb = combined_share(g, var_st, neighbours, float(np.median(sig_l[ok])))
        scale = comb["var_g"] / var_st if var_st > 0 else 1.0
        extra = (sig_l**2 - eq3**2) * scale if var_st > 0 else np.full(len(eq3), comb["var_g"])
        sig_l = np.sqrt(eq3**2 + np.clip(extra, 0, None))
        g = comb["followed"]
        cal.update(followed=g, followed_faint=float(followed), var_g=comb["var_g"],
                   var_g_stencil=comb["var_stencil"], var_g_wings=comb["var_wings"],
                   followed_wings=comb["followed_wings"])

    def fit(noise):
        return (float(_scale(resid[ok], sigma_net[ok], noise[ok])) if ok.sum() >= 10
                else float("nan"))

    def removed(share):  # eq. 3 and ``share`` of the measured extra label noise
        return np.sqrt(np.clip(eq3**2 + share * (sig_l**2 - eq3**2), 0, None))

    a = fit(removed(1 - 2 * g))
    if not (np.isfinite(a) and a > 0):
        a = 1.0  # nothing measurable: the network's own sigma
    lo = fit(sig_l)  # 0 when the measured label noise alone explains the scatter
    half = fit(eq3)
    edge = edge_distance < edge_width
    cal.update(a=[a, a], a_all=a, a_if_unseen=lo if np.isfinite(lo) else None,
               a_half=half if np.isfinite(half) else None,
               n=[int((ok & ~edge).sum()), int((ok & edge).sum())])
    return cal


def _mixture_sigma68(p: float, s1: float, s2: float) -> float:
    """sigma68 (half-width of the central 68.27 %) of ``p N(0, s1^2) + (1 - p) N(0, s2^2)``."""
    from scipy.optimize import brentq
    from scipy.special import erf

    def f(x):
        return p * erf(x / (s1 * np.sqrt(2))) + (1 - p) * erf(x / (s2 * np.sqrt(2))) - 0.682689

    return float(brentq(f, 0.0, 10 * max(s1, s2)))


def pair_scale(bkg: np.ndarray, sigma_net: np.ndarray, label: np.ndarray, eq3: np.ndarray,
               i1: np.ndarray, i2: np.ndarray) -> dict:
    """The error factor ``a`` from pairs of exposures of one band at the same sky point
    (:class:`~skysub.background.bkgnet.selection.DuplicatePositions`): the sigma68 of the
    prediction's error in units of ``sigma_net``, deconvolved from the pairs.

    ``w = (b1 - l1) - (b2 - l2) = (e1 - e2) - (n1 - n2)``: the faint sources' light ``G`` is
    the same in both labels and cancels, leaving the prediction's errors ``e`` and the labels'
    pixel noise ``n`` -- Gaussian, of known variance (eq. 3).  ``e / sigma_net`` is modelled
    as a scale mixture of two Gaussians, ``p N(0, s1^2) + (1 - p) N(0, s2^2)`` (it is
    kurtotic: development field, sigma68 of ``(b - sky) / sigma_net`` 0.54 where second
    moments gave 0.67), so each ``w`` is a mixture of four Gaussians of variances
    ``s_j^2 sigma_1^2 + s_k^2 sigma_2^2 + eq3_1^2 + eq3_2^2``; ``(p, s1, s2)`` by maximum
    likelihood and ``a`` = the mixture's sigma68, what the pulls measure.  A sigma68 of ``w``
    itself would not do: the difference of two kurtotic errors and the Gaussian noise are
    less kurtotic than one error.  What the pairs cannot see is the part of ``e`` common to
    both exposures (what the network follows of ``G``, a misfit at the same sky point): where
    it is large this ``a`` is too small.  The pairs' positions are empty, so ``sigma_net``
    there is the network's sigma without a magnitude: ``a`` is in its units, not in those of
    sigma at catalogued sources with magnitudes (development instrument: 1.4x smaller);
    :func:`pair_scale_sources` reads them again with magnitudes.  Both are recorded
    (``error_calibration["pairs"]``), not applied.  Returns ``{"a",
    "n", "p", "s1", "s2", "a_std",
    "degenerate"}`` (``a_std``: the mixture's std, which second moments would give;
    ``degenerate``: a component of ~zero width or weight, ``a`` not measured; NaN with fewer
    than 50 pairs)."""
    from scipy.optimize import minimize
    from scipy.special import expit, logsumexp

    from ...stats import sigma68

    b, s, lab, q = (np.asarray(v, float) for v in (bkg, sigma_net, label, eq3))
    i1, i2 = np.asarray(i1, int), np.asarray(i2, int)
    w = (b[i1] - lab[i1]) - (b[i2] - lab[i2])
    v1, v2, n2 = s[i1] ** 2, s[i2] ** 2, q[i1] ** 2 + q[i2] ** 2
    ok = np.isfinite(w) & np.isfinite(v1 + v2) & (v1 > 0) & (v2 > 0) & np.isfinite(n2)
    nan = {"a": float("nan"), "n": int(ok.sum()), "p": float("nan"), "s1": float("nan"),
           "s2": float("nan"), "a_std": float("nan"), "degenerate": True}
    if ok.sum() < 50:
        return nan
    w, v1, v2, n2 = w[ok] - np.median(w[ok]), v1[ok], v2[ok], n2[ok]
    z = w / np.sqrt(v1 + v2)
    keep = np.abs(z) <= 10 * float(sigma68(z))  # gross outliers only: the mixture has tails
    w, v1, v2, n2 = w[keep], v1[keep], v2[keep], n2[keep]

    def nll(t):
        p, s1, s2 = expit(t[0]), np.exp(t[1]), np.exp(t[2])
        terms = []
        for pj, sj in ((p, s1), (1 - p, s2)):
            for pk, sk in ((p, s1), (1 - p, s2)):
                var = sj * sj * v1 + sk * sk * v2 + n2
                terms.append(np.log(pj * pk) - 0.5 * (np.log(2 * np.pi * var) + w * w / var))
        return -float(np.sum(logsumexp(np.stack(terms), axis=0)))

    s0 = float(np.sqrt(max(np.mean(w * w - n2) / np.mean(v1 + v2), 1e-4)))
    best = None
    for t0 in ([1.4, np.log(0.6 * s0), np.log(2 * s0)], [0.0, np.log(s0), np.log(1.5 * s0)]):
        r = minimize(nll, t0, method="Nelder-Mead",
                     options={"xatol": 1e-4, "fatol": 1e-3, "maxiter": 2000})
        if best is None or r.fun < best.fun:
            best = r
    p, s1, s2 = float(expit(best.x[0])), float(np.exp(best.x[1])), float(np.exp(best.x[2]))
    # a component of (nearly) no error, or (nearly) no weight: the pixel noise hides the
    # core's width and the sigma68 is not measured (a quick 3-epoch development model gave
    # s1 ~ 0 for 69 % of the pairs)
    lo = min(s1, s2) / max(s1, s2, 1e-300) < 0.05 or not 0.02 < p < 0.98
    return {"a": _mixture_sigma68(p, s1, s2), "n": int(len(w)), "p": p, "s1": s1, "s2": s2,
            "a_std": float(np.sqrt(p * s1**2 + (1 - p) * s2**2)), "degenerate": bool(lo)}


def pair_scale_sources(bkg: np.ndarray, sigma_net: np.ndarray, bkg_mag: np.ndarray,
                       sigma_mag: np.ndarray, label: np.ndarray, eq3: np.ndarray,
                       i1: np.ndarray, i2: np.ndarray, *, a_single: float | None = None
                       ) -> dict:
    """The pairs' error factor in the unit that applies at the user's sources.

    The pairs' positions are empty, and the network run there without a magnitude (``bkg``,
    ``sigma_net``) gives a larger sigma than at catalogued sources with their magnitudes
    (development instrument: 1.4x), so the ``a`` of :func:`pair_scale` on them is in another
    unit.  Run again at the same positions with catalogue-like magnitudes (``bkg_mag``,
    ``sigma_mag``: the training's condition, where every stamp carries the magnitude of the
    source at its centre), :func:`pair_scale` gives ``a`` in units of the sigma at sources
    (``"with_mag"``); ``sigma_ratio`` is the median ``sigma_net / sigma_mag`` at the same rows.

    Neither run sees the part of the error common to both exposures of a sky point (what the
    network follows of the labels' faint light, a misfit of the same sky): with correlation
    ``rho`` between the two exposures' errors the pairs measure ``var(e1 - e2) = 2 (1 - rho)
    var(e)``; the duplicates test (aperture fluxes of two exposures) cancels it alike.  The
    single-label second moments (``a_single``, :func:`fit_error_calibration`'s ``a_all``,
    in the same unit) include it, so ``shared = 1 - (a_std / a_single)^2`` (``a_std`` the
    with-magnitude mixture's std) estimates ``rho`` as far as the single-label scheme's
    assumptions (the followed share ``g``) hold -- a diagnostic, not a measurement free of
    them.  ``a_shared`` puts it back: the sigma68 of the pairs' mixture convolved with a
    Gaussian shared part of variance ``a_single^2 - a_std^2`` (the mixture's components
    widened to ``sqrt(s_j^2 + v_c)``; NaN where the pairs are degenerate).
    Returns ``{"with_mag": pair_scale(...), "sigma_ratio", "shared", "a_shared"}``."""
    b, s, bm, sm = (np.asarray(v, float) for v in (bkg, sigma_net, bkg_mag, sigma_mag))
    wm = pair_scale(bm, sm, label, eq3, i1, i2)
    ok = np.isfinite(s) & np.isfinite(sm) & (s > 0) & (sm > 0)
    ratio = float(np.median(s[ok] / sm[ok])) if ok.any() else float("nan")
    shared = a_sh = None
    if a_single is not None and np.isfinite(a_single) and a_single > 0 \
            and np.isfinite(wm["a_std"]) and not wm["degenerate"]:
        shared = float(1.0 - (wm["a_std"] / float(a_single)) ** 2)
        vc = max(float(a_single) ** 2 - wm["a_std"] ** 2, 0.0)
        a_sh = _mixture_sigma68(wm["p"], float(np.sqrt(wm["s1"] ** 2 + vc)),
                                float(np.sqrt(wm["s2"] ** 2 + vc)))
    return {"with_mag": wm, "sigma_ratio": ratio, "shared": shared, "a_shared": a_sh}


__all__ = ["CAL_EDGE_WIDTH", "FOLLOW_MAGS", "FOLLOW_RADIUS", "MIN_STENCILS",
           "calibrated_errors", "combined_share", "fit_error_calibration", "followed_fraction",
           "label_noise", "label_noise_of", "neighbour_pool", "neighbour_response",
           "pair_scale", "pair_scale_sources", "predict_set", "sigma_scale"]
