"""BKGnet's validation metrics against the labels of the held-out sky tiles
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


def _fold_errors(b, sn, val: TrainingSet, keys: list[str], followed: float | None = None
                 ) -> np.ndarray:
    """Total error of ``b - label`` on each validation stamp, ``sqrt(bkg_err^2 + eq3^2)``,
    the calibration fitted on the OTHER held-out sky tiles (two folds of tiles; of exposures
    for sets without sky positions), so that the pull width reported is not the one the
    calibration was fitted to."""
    from ...simulate.trainingdata import sky_tiles
    from .calibration import calibrated_errors, fit_error_calibration

    group = sky_tiles(val.sky) if val.sky is not None else val.exposure
    groups = np.unique(group)
    total = np.full(len(b), np.nan)
    if len(groups) < 2:
        return total
    names = np.asarray(keys)[val.key.numpy()]
    fold = np.isin(group, groups[::2])
    st = val.stencils  # the label noise: a property of the exposures, not of the model
    for test in (fold, ~fold):
        fit = ~test
        cal = fit_error_calibration(b[fit], sn[fit], val.label[fit], val.label_sigma[fit],
                                    val.edge_distance[fit], names[fit], st, keys,
                                    followed=followed)
        err, _ = calibrated_errors(b[test], sn[test], val.label_sigma[test],
                                   val.edge_distance[test], cal)
        total[test] = np.sqrt(err**2 + val.label_sigma[test] ** 2)  # as the fit
    return total


def training_report(model, val: TrainingSet, keys: list[str], *,
                    edge_width: float = 150.0, followed: float | None = None) -> dict:
    """What a user needs to trust a trained model, on the held-out (validation) sky tiles:
    sigma68 of ``(b - label) / label`` for BKGnet and for the tuned annulus (30-45 px clipped
    median) on the same stamps, their ratio, BKGnet's bias and pull width (errors calibrated on
    the other held-out sky tiles, with the ``followed`` share of faint-source light of
    :func:`~skysub.background.bkgnet.calibration.fit_error_calibration`), overall, per
    band x epoch and edge/centre.

    Labels are pixel labels (photometric truth, with their own noise in both methods'
    scatter); models trained on simulator truth are scored against that truth.
    """
    from ...metrics import bias, pull_summary, scatter

    b, sn = predict_set(model, val)
    total = (_fold_errors(b, sn, val, keys, followed) if val.stencils is not None
             else np.full(len(b), np.nan))
    ann = val.annulus if val.annulus is not None else np.full(len(b), np.nan)
    edge = (val.edge_distance < edge_width if val.edge_distance is not None
            else np.zeros(len(b), bool))
    key = val.key.numpy()
    groups = {"all": np.ones(len(b), bool), "edge": edge, "centre": ~edge}
    for i, k in enumerate(keys):
        if (key == i).any():
            groups[f"key:{k}"] = key == i
    rows = {}
    for g, sel in groups.items():
        if sel.sum() < 5:
            continue
        s_b = float(scatter(b[sel], val.label[sel]))
        s_a = float(scatter(ann[sel], val.label[sel]))
        row = {"n": int(sel.sum()), "sigma68_bkgnet": s_b, "sigma68_annulus": s_a,
               "ratio": s_b / s_a if s_a > 0 else float("nan"),
               "bias_bkgnet": float(bias(b[sel], val.label[sel]))}
        if np.isfinite(total[sel]).sum() >= 5:
            p = pull_summary(b[sel], val.label[sel], total[sel])
            row.update(pull_sigma68=float(p["sigma68"]), frac_pull_gt5=float(p["frac_gt_5"]))
        rows[g] = row
    return {"truth": "pixel labels of held-out sky tiles", "groups": rows,
            "n_exposures": int(len(np.unique(val.exposure)))}


def format_report(report: dict) -> str:
    """The training report as a small table (printed at the end of ``skysub train bkgnet``)."""
    lines = [f"held-out sky tiles of {report['n_exposures']} exposures, against "
             f"{report['truth']}:",
             f"  {'group':<22} {'n':>6} {'s68 bkgnet':>10} {'s68 annulus':>11} {'ratio':>6} "
             f"{'bias':>8} {'pull s68':>8} {'|pull|>5':>8}"]
    for g, r in report["groups"].items():
        ps = f"{r['pull_sigma68']:8.2f}" if "pull_sigma68" in r else f"{'-':>8}"
        pf = f"{100 * r['frac_pull_gt5']:7.2f}%" if "frac_pull_gt5" in r else f"{'-':>8}"
        lines.append(f"  {g:<22} {r['n']:>6} {r['sigma68_bkgnet']:10.4f} "
                     f"{r['sigma68_annulus']:11.4f} {r['ratio']:6.2f} {r['bias_bkgnet']:+8.4f} "
                     f"{ps} {pf}")
    return "\n".join(lines)
