"""BKGnet's calibrated error model, applied at inference (:func:`calibrated_errors`); fitted on
held-out sky tiles by :func:`skysub.background.bkgnet.calibration.fit_error_calibration`.
Plain numpy, importing nothing from the package (the estimator and the calibration both use
it)."""

from __future__ import annotations

import numpy as np


def _bins(level: np.ndarray, edge_distance: np.ndarray, cal: dict) -> np.ndarray:
    """Calibration bin of each row: ``edge * n_level + level_bin``."""
    lb = np.searchsorted(np.asarray(cal["level_edges"], float), np.asarray(level, float))
    edge = np.asarray(edge_distance, float) < float(cal["edge_width"])
    return edge.astype(int) * (len(cal["level_edges"]) + 1) + lb


def label_noise_at(bkg: np.ndarray, eq3: np.ndarray, edge_distance: np.ndarray, cal: dict,
                   *, level: np.ndarray | None = None) -> np.ndarray:
    """Total noise of a pixel label at background ``bkg``: eq. 3 and the measured extra
    (``level``: what the bins are defined on, see :func:`fit_error_calibration`)."""
    j = np.clip(_bins(bkg if level is None else level, edge_distance, cal), 0,
                len(cal["k"]) - 1)
    f = np.asarray(cal["extra_rel"], float)[j]
    return np.sqrt(np.asarray(eq3, float) ** 2 + (f * bkg) ** 2)


def calibrated_errors(bkg: np.ndarray, sigma_net: np.ndarray, eq3: np.ndarray,
                      edge_distance: np.ndarray, cal: dict, *,
                      level: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The error of the prediction against the smooth sky, and the network sigma.

    Calibrations of :func:`skysub.background.bkgnet.calibration.fit_error_calibration`
    (``scheme`` "label-noise-stencils"): ``a_g sigma_net``, ``g`` = centre or edge (within
    ``edge_width`` px); ``bkg``, ``eq3`` and ``level`` are not needed.

    Earlier cards (per-level factors ``k``): ``sqrt((k_j sigma_net)^2 - eq3^2 - (f_j b)^2)``,
    floored at ``0.3 k_j sigma_net``, ``j`` the bin of the stamp median ``level`` and
    edge/centre."""
    sigma_net = np.asarray(sigma_net, float)
    if cal.get("scheme") == "label-noise-stencils":
        edge = np.asarray(edge_distance, float) < float(cal["edge_width"])
        a = np.asarray(cal["a"], float)[edge.astype(int)]
        return a * sigma_net, sigma_net
    lev = bkg if level is None else level
    j = np.clip(_bins(lev, edge_distance, cal), 0, len(cal["k"]) - 1)
    s = sigma_net * np.asarray(cal["k"], float)[j]
    var = s**2 - label_noise_at(bkg, eq3, edge_distance, cal, level=lev) ** 2
    with np.errstate(invalid="ignore"):
        err = np.where(var > (0.3 * s) ** 2, np.sqrt(np.clip(var, 0, None)), 0.3 * s)
    return err, s
