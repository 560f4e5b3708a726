"""Lumos' validation metrics (:func:`evaluate_mixtures`: bias, sigma68 and PIT per magnitude
range; they go into the model card).
"""

from __future__ import annotations

import numpy as np

from .calibration import SNRCalibration, _calibrated, crowding
from .mixtures import mixture_summary, predict_mixtures


def evaluate_mixtures(model, t: dict, flux_true: np.ndarray, mag: np.ndarray, *,
                      sigma_scale: float | SNRCalibration = 1.0, lower: float | None = 0.0,
                      prior_knee: float | None = None) -> dict:
    """Validation metrics of a model on tensors ``t``: bias and sigma68 of the relative error of
    mode and mean, PIT KS p-value, per magnitude range; widths times ``sigma_scale``, components
    truncated at ``lower`` (None: the likelihood mode), divided by the prior-free training
    density of knee ``prior_knee`` (the likelihood mode; None: not)."""
    from ...metrics import bias, pit_gaussian_mixture, pit_uniformity, scatter

    model.eval()
    a, m, s = predict_mixtures(model, t["x"], t["feats"], t["coords"], t["mag"], t["has_mag"],
                               t["key"])
    a, m, s = _calibrated(a, m, s, sigma_scale, prior_knee, crowding(t["feats"]))
    unit = np.asarray(t["unit"])[:, None]
    summ = mixture_summary(a, m * unit, s * unit, lower=lower)
    pit = pit_gaussian_mixture(a, m * unit, s * unit, flux_true, lower=lower)
    out = {"n": int(len(flux_true)), "pit_ks_pvalue": pit_uniformity(pit).pvalue}
    for name, sel in (("all", np.ones(len(mag), bool)), ("i_lt_21", mag < 21),
                      ("i_gt_21", mag >= 21)):
        if sel.sum() < 5:
            continue
        for est in ("mode", "mean"):
            f = summ[f"flux_{est}"][sel]
            out[f"bias_{est}_{name}"] = bias(f, flux_true[sel])
            out[f"sigma68_{est}_{name}"] = scatter(f, flux_true[sel])
    return {k: (round(float(v), 5) if isinstance(v, float) else v) for k, v in out.items()}
