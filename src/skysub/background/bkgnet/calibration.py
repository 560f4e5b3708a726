"""BKGnet's error calibration: the network's predictions on a training set
(:func:`predict_set`) and the validation factor on sigma_net (:func:`sigma_scale`).
"""

from __future__ import annotations

import numpy as np

from .data import TrainingSet
from .errormodel import _bins, calibrated_errors, label_noise_at


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
    """Error calibration on the validation exposures: the factor ``k`` that makes the pull
    width ``sigma68[(b - label) / (k sigma_net)]`` one (temperature scaling of sigma_net).  The
    Gaussian likelihood fits sigma on the training stamps; held-out exposures scatter a little
    more, and ``k`` (typically 1.0-1.2) carries that into the reported errors."""
    from ...metrics import pull_summary

    b, s = predict_set(model, val)
    k = float(pull_summary(b, val.label, s)["sigma68"])
    return k if np.isfinite(k) and k > 0 else 1.0


# -- honest errors with pixel labels: per level and edge/centre ---------------------------------
#: stamps closer than this to an edge form the "edge" calibration bins [px]
CAL_EDGE_WIDTH = 150.0
#: background-level bins (quantiles of the validation labels) per edge/centre
N_LEVEL_BINS = 3
#: fewest stamps (or triplets) a bin needs; sparser bins take the value of all bins together
MIN_PER_BIN = 30


def label_noise(triplets: dict, cal: dict) -> dict:
    """Total label noise ``sigma_L`` per calibration bin from label triplets
    (:func:`skysub.background.bkgnet.data.label_triplets`): ``sigma_L = sigma68(D) / sqrt(6)``,
    and the EXTRA label noise beyond eq. 3, ``sigma_extra^2 = sigma_L^2 - median(eq3^2)``
    (faint uncatalogued sources, structure), as a fraction of the background level.

    Returns ``{"extra_rel": [...], "n": [...], "label_rel": [...]}``, one entry per bin.
    """
    from ...stats import sigma68

    d2, level, eq3 = (np.asarray(triplets[k], float) for k in ("d2", "level", "eq3"))
    ok = np.isfinite(d2) & np.isfinite(level) & (level > 0)
    b = _bins(level, np.asarray(triplets["edge_distance"], float), cal)
    n_bins = 2 * (len(cal["level_edges"]) + 1)

    def one(sel):
        if sel.sum() < MIN_PER_BIN:
            return None
        s_l = float(sigma68(d2[sel])) / np.sqrt(6.0)
        lev = float(np.median(level[sel]))
        extra2 = max(s_l**2 - float(np.median(eq3[sel] ** 2)), 0.0)
        return np.sqrt(extra2) / lev, s_l / lev

    glob = one(ok) or (0.0, float("nan"))
    out: dict[str, list] = {"extra_rel": [], "label_rel": [], "n": []}
    for j in range(n_bins):
        sel = ok & (b == j)
        v = one(sel) or glob
        out["extra_rel"].append(float(v[0]))
        out["label_rel"].append(float(v[1]))
        out["n"].append(int(sel.sum()))
    return out


def fit_error_calibration(bkg: np.ndarray, sigma_net: np.ndarray, label: np.ndarray,
                          edge_distance: np.ndarray, triplets: dict | None, *,
                          level: np.ndarray | None = None,
                          edge_width: float = CAL_EDGE_WIDTH,
                          n_level_bins: int = N_LEVEL_BINS) -> dict:
    """Calibrate BKGnet's errors on held-out exposures, per background level and edge/centre.

    - ``k_j``: the factor that makes ``sigma68[(b - label) / (k_j sigma_net)]`` one in bin
      ``j`` -- the network's sigma, which should cover its own error AND the label's noise,
      scaled to what held-out exposures show (as :func:`sigma_scale`, per bin);
    - ``extra_rel_j``: the label noise beyond eq. 3, measured from label triplets at empty
      positions of the user's own exposures (:func:`label_noise`), so that it can be removed
      from ``k_j sigma_net`` and ``bkg_err`` is the error of the smooth background alone.

    The level bins are defined on ``level``, the median of each stamp's pixels outside the
    hidden centre (default ``bkg``): binning on the label or the prediction would select on
    their own noise and narrow the scatter within each bin.

    Returns the card's ``inputs["error_calibration"]``.
    """
    from ...stats import sigma68

    bkg, sigma_net, label, edge_distance = (np.asarray(a, float) for a in
                                            (bkg, sigma_net, label, edge_distance))
    ok = np.isfinite(bkg) & np.isfinite(sigma_net) & (sigma_net > 0) & np.isfinite(label)
    lev = bkg if level is None else np.asarray(level, float)
    q = np.linspace(0, 1, n_level_bins + 1)[1:-1]
    edges = np.quantile(lev[ok], q).tolist() if ok.sum() >= n_level_bins else []
    cal = {"edge_width": float(edge_width), "level_edges": [float(e) for e in edges]}
    j = _bins(lev, edge_distance, cal)
    z = (bkg - label) / sigma_net
    k_all = float(sigma68(z[ok])) if ok.any() else 1.0
    ks, ns = [], []
    for b in range(2 * (len(edges) + 1)):
        sel = ok & (j == b)
        ns.append(int(sel.sum()))
        ks.append(float(sigma68(z[sel])) if sel.sum() >= MIN_PER_BIN else k_all)
    cal.update(k=ks, n=ns, k_all=k_all)
    if triplets is not None and len(triplets.get("d2", [])):
        ln = label_noise(triplets, cal)
        cal.update(extra_rel=ln["extra_rel"], label_rel=ln["label_rel"], n_triplets=ln["n"])
    else:
        cal.update(extra_rel=[0.0] * len(ks))
    return cal


__all__ = ["CAL_EDGE_WIDTH", "MIN_PER_BIN", "N_LEVEL_BINS", "calibrated_errors",
           "fit_error_calibration", "label_noise", "label_noise_at", "predict_set",
           "sigma_scale"]
