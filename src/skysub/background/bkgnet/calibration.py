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
    import torch

    from ...nn.bkgnet import denormalise

    model.eval()
    dev = next(model.parameters()).device
    bs, ss = [], []
    with torch.inference_mode():
        for s in range(0, len(ts), batch_size):
            sl = slice(s, s + batch_size)
            mu, ls = model(ts.x[sl].float().to(dev), ts.coords[sl].to(dev), ts.mag[sl].to(dev),
                           ts.has_mag[sl].to(dev), ts.key[sl].to(dev))
            b, sg = denormalise(mu.cpu(), ls.cpu(), torch.from_numpy(ts.loc[sl]),
                                torch.from_numpy(ts.scale[sl]))
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


def label_noise(stencils: dict, key_names: list[str]) -> dict:
    """Total noise of a pixel label per band x epoch key, from label-noise stencils at empty
    positions of the user's exposures (:func:`skysub.background.bkgnet.data.label_stencils`):
    ``sigma_L = sigma68(D) / 1.5``, written as a factor on eq. 3, ``f = sigma_L /
    sqrt(median(eq3^2))``; the extra label noise (faint uncatalogued sources, structure) is
    ``eq3 sqrt(f^2 - 1)``.

    Keys with fewer than ``MIN_STENCILS`` stencils take the factor of all keys together.
    Returns ``{"factor": {key: f}, "factor_all": f, "n": {key: n}}``.
    """
    from ...stats import sigma68

    d, eq3 = (np.asarray(stencils[k], float) for k in ("d", "eq3"))
    key = np.asarray(stencils["key"], int)
    ok = np.isfinite(d) & np.isfinite(eq3) & (eq3 > 0)

    def one(sel):
        s_l = float(sigma68(d[sel])) / np.sqrt(STENCIL_NORM)
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


def _scale(resid, shape, sig_l) -> float:
    """The ``a`` that makes ``sigma68[resid / sqrt((a shape)^2 + sig_l^2)] = 1`` (0 when the
    label noise alone already explains the scatter)."""
    from scipy.optimize import brentq

    from ...stats import sigma68

    def f(a):
        return float(sigma68(resid / np.sqrt((a * shape) ** 2 + sig_l**2))) - 1.0

    if f(0.0) <= 0:
        return 0.0
    hi = 1.0
    while f(hi) > 0 and hi < 1e3:
        hi *= 2
    return float(brentq(f, 0.0, hi, xtol=1e-4)) if f(hi) <= 0 else float("nan")


def fit_error_calibration(bkg: np.ndarray, sigma_net: np.ndarray, label: np.ndarray,
                          eq3: np.ndarray, edge_distance: np.ndarray, keys: np.ndarray,
                          stencils: dict | None, key_names: list[str], *,
                          edge_width: float = CAL_EDGE_WIDTH) -> dict:
    """Calibrate BKGnet's errors on held-out stamps (sky tiles no training label came from),
    against their pixel labels.

    ``b - label = (b - sky) - (label - sky)``: the error of the prediction and the label's
    noise, pixel noise (eq. 3, independent of everything the network sees) plus what faint
    uncatalogued sources add, ``G``.  The network sees the wings of those sources beyond its
    hidden centre and follows a share ``g`` of ``G``, so ``var(b - label) - eq3^2 = var(b -
    sky) + (1 - 2 g) var(G)``: removing eq. 3 alone is exact for ``g = 1/2`` and errs on the
    large side for ``g < 1/2``; removing all of ``var(G)`` as well is exact only for ``g = 0``
    and too small otherwise (on the ``heldout`` instrument of ``bench_bkgnet_transfer`` it
    made the errors ~2x too small, removing eq. 3 alone ~10 % too small).

    So: the error of the prediction is ``a sigma_net``, ``a`` the factor that makes
    ``sigma68[(b - label) / sqrt((a sigma_net)^2 + eq3^2)] = 1`` on the held-out stamps (one
    factor: per edge/centre it was noisier than the difference it resolves).  The label
    noise measured from the user's exposures (:func:`label_noise`, ``f_key`` on eq. 3) is
    recorded with ``a_if_unseen``, the factor were none of ``G`` visible to the network -- the
    smallest errors the data allow.

    ``keys`` are the band x epoch names of the stamps.  Returns the card's
    ``inputs["error_calibration"]``.
    """
    bkg, sigma_net, label, eq3, edge_distance = (np.asarray(a, float) for a in
                                                 (bkg, sigma_net, label, eq3, edge_distance))
    keys = np.asarray(keys).astype(str)
    ln = (label_noise(stencils, key_names) if stencils is not None and len(stencils.get("d", []))
          else {"factor": {}, "factor_all": 1.0, "n": {}})
    cal = {"scheme": "label-noise-stencils", "edge_width": float(edge_width),
           "label_factor": ln["factor"], "label_factor_all": float(ln["factor_all"]),
           "n_stencils": ln["n"]}
    sig_l = label_noise_of(eq3, keys, cal)
    ok = (np.isfinite(bkg) & np.isfinite(sigma_net) & (sigma_net > 0) & np.isfinite(label)
          & np.isfinite(sig_l) & np.isfinite(eq3))
    resid = bkg - label

    def fit(noise):
        return (float(_scale(resid[ok], sigma_net[ok], noise[ok])) if ok.sum() >= 10
                else float("nan"))

    a = fit(eq3)
    if not (np.isfinite(a) and a > 0):
        a = 1.0  # nothing measurable: the network's own sigma
    lo = fit(sig_l)  # 0 when the measured label noise alone explains the scatter
    edge = edge_distance < edge_width
    cal.update(a=[a, a], a_all=a, a_if_unseen=lo if np.isfinite(lo) else None,
               n=[int((ok & ~edge).sum()), int((ok & edge).sum())])
    return cal


__all__ = ["CAL_EDGE_WIDTH", "MIN_STENCILS", "calibrated_errors",
           "fit_error_calibration", "label_noise", "label_noise_of", "predict_set",
           "sigma_scale"]
