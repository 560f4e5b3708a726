"""BKGnet's validation metrics against the labels of held-out exposures
(:func:`validation_metrics`; they go into the model card).
"""

from __future__ import annotations

import numpy as np

from .calibration import predict_set
from .data import TrainingSet


def validation_metrics(model, val: TrainingSet) -> dict:
    """sigma68 of (b - label) / label, pull width against the label with sigma_net, bias."""
    from ...metrics import pull_summary, scatter

    b, s = predict_set(model, val)
    rel = scatter(b, val.label)
    pulls = pull_summary(b, val.label, s)
    from ...metrics import bias

    return {"n_stamps": int(len(val)), "sigma68_rel_vs_label": float(rel),
            "bias_rel_vs_label": float(bias(b, val.label)),
            "pull_sigma68_vs_label": float(pulls["sigma68"]),
            "frac_pull_gt5_vs_label": float(pulls["frac_gt_5"]),
            "median_label_sigma_rel": float(np.median(val.label_sigma / val.label))}
