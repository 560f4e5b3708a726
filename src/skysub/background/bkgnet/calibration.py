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
    import torch

    from ...nn.bkgnet import ASINH_SCALE, normalise_stamps
    from ...simulate.profiles import sersic_stamps
    from ...simulate.psf import moffat_psf

    if ts.flux_unit is None or len(ts) == 0:
        raise ValueError("followed_fraction needs a training set with flux_unit")
    rng = np.random.default_rng(seed)
    S = int(ts.x.shape[-1])
    c = S // 2
    rad = float(radius if radius is not None else FOLLOW_RADIUS * settings.label_radius)
    gm = np.asarray(galaxies["mag"], float)
    lim = float(np.percentile(gm, 99))
    lo, hi = mags if mags is not None else (lim, lim + FOLLOW_MAGS)
    faint = np.flatnonzero(gm >= np.percentile(gm, 80))
    reps = int(np.ceil(n_min / len(ts)))
    idx = np.tile(np.arange(len(ts)), reps)
    m = len(idx)
    pick = rng.choice(faint, m)
    r = rad * np.sqrt(rng.uniform(0, 1, m))
    phi = rng.uniform(0, 2 * np.pi, m)
    px, py = r * np.cos(phi), r * np.sin(phi)
    ix, iy = np.round(px).astype(int), np.round(py).astype(int)
    mag = rng.uniform(lo, hi, m)
    flux = ts.flux_unit[idx] * 10 ** (-0.4 * (mag - settings.zero_point))
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
        sl = slice(s0, min(s0 + 256, m))
        k = np.arange(sl.start, sl.stop)
        x = ts.x[torch.from_numpy(idx[k])].float()
        valid = x[:, 1] > 0.5
        raw = (torch.from_numpy(ts.loc[idx[k]]).float()[:, None, None]
               + torch.from_numpy(ts.scale[idx[k]]).float()[:, None, None]
               * ASINH_SCALE * torch.sinh(x[:, 0] / ASINH_SCALE))
        g = {q: np.asarray(galaxies[q], float)[pick[k]] for q in ("r50", "sersic_n", "ba",
                                                                   "theta")}
        src = sersic_stamps(size, flux[k], g["r50"], np.clip(g["sersic_n"], 0.3, 8.0),
                            ba=np.clip(g["ba"], 0.05, 1.0), theta=g["theta"], dx=px[k] - ix[k],
                            dy=py[k] - iy[k], oversample=2, psf=psf).clip(0, None)
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
    ok = np.isfinite(db) & np.isfinite(dl) & (dl > 0)
    g_hat = float(np.sum(db[ok] * dl[ok]) / np.sum(dl[ok] ** 2))
    res = db[ok] - g_hat * dl[ok]
    err = float(np.sqrt(np.sum(res**2 * dl[ok] ** 2)) / np.sum(dl[ok] ** 2))
    return {"followed": g_hat, "err": err, "n": int(ok.sum()), "mags": [float(lo), float(hi)],
            "radius": rad}


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
                          followed: float | None = None) -> dict:
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


__all__ = ["CAL_EDGE_WIDTH", "FOLLOW_MAGS", "FOLLOW_RADIUS", "MIN_STENCILS",
           "calibrated_errors", "fit_error_calibration", "followed_fraction", "label_noise",
           "label_noise_of", "predict_set", "sigma_scale"]
