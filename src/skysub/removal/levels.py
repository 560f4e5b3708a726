"""A model card's background calibration applied at inference: the level bias per source
(:func:`level_offset`, subtracted by :func:`skysub.removal.remove_sources`), the error scale
``c`` (:func:`error_scale`, used by :class:`skysub.removal.InpaintBackground`) and a readable
table of the level bias (:func:`describe_level`).  :mod:`skysub.removal.calibration` measures
them; this module only reads a card, so inference does not import the measuring code."""

from __future__ import annotations

from typing import Any

import numpy as np


def _bins(hole: np.ndarray, edges) -> np.ndarray:
    edges = np.asarray(edges, float)
    return np.clip(np.searchsorted(edges, np.nan_to_num(np.asarray(hole, float), nan=edges[-1]),
                                   side="right") - 1, 0, len(edges) - 2)


def level_offset(cal: dict[str, Any] | None, hole: np.ndarray,
                 snr: np.ndarray | None = None) -> np.ndarray:
    """Level bias of the prediction per source, in units of its sigma_bg: by peak SNR
    (``level_snr_edges``), or by hole radius in cards calibrated before that; 0 when the
    calibration has none."""
    hole = np.asarray(hole, float)
    if not cal or "level_bias" not in cal:
        return np.zeros(hole.shape)
    if "level_snr_edges" in cal:
        if snr is None:
            raise ValueError("this model's level calibration is binned by peak SNR: give snr")
        return np.asarray(cal["level_bias"], float)[_bins(snr, cal["level_snr_edges"])]
    return np.asarray(cal["level_bias"], float)[_bins(hole, cal["hole_edges"])]


def flux_scale(cal: dict[str, Any] | None, snr: np.ndarray) -> np.ndarray:
    """The card's flux level per source (median removed / injected flux of injected sources in
    its peak-SNR bin, ``flux_scale``), which :func:`skysub.removal.remove_sources` divides the
    fluxes by; 1 when the calibration has none (cards made before it)."""
    snr = np.asarray(snr, float)
    if not cal or "flux_scale" not in cal:
        return np.ones(snr.shape)
    return np.asarray(cal["flux_scale"], float)[_bins(snr, cal["flux_snr_edges"])]


def describe_level(cal: dict[str, Any] | None) -> str:
    """The card's level bias as a table: one line per peak-SNR bin (count, bias +- standard
    error in sigma_bg), or a line saying the card has no SNR-binned level calibration."""
    if not cal or "level_snr_edges" not in cal:
        return "no SNR-binned level calibration in this card"
    e = cal["level_snr_edges"]
    lines = ["level bias (prediction - truth) / sigma_bg per peak-SNR bin, subtracted at removal:"]
    for i, b in enumerate(cal["level_bias"]):
        hi = f"{e[i + 1]:g}" if e[i + 1] < 1e8 else "inf"
        lines.append(f"  SNR {e[i]:>5g}-{hi:<5s} n {cal['level_n'][i]:>6d}  "
                     f"{b:+.4f} +- {cal['level_bias_se'][i]:.4f}")
    if "flux_scale" in cal:
        fe = cal["flux_snr_edges"]
        lines.append(f"flux level: median removed / injected flux of injected sources (r = "
                     f"{cal.get('flux_radius', 6.0):g} px) per peak-SNR bin, divided out at "
                     "removal:")
        for i, s in enumerate(cal["flux_scale"]):
            hi = f"{fe[i + 1]:g}" if fe[i + 1] < 1e8 else "inf"
            lines.append(f"  SNR {fe[i]:>5g}-{hi:<5s} n {cal['flux_n'][i]:>6d}  "
                         f"{s:.4f} +- {cal['flux_scale_se'][i]:.4f}")
    return "\n".join(lines)


def error_scale(cal: dict[str, Any], hole: np.ndarray, r_avg: np.ndarray) -> np.ndarray:
    """``c`` for each source: its hole-radius bin and the nearest calibrated averaging radius."""
    edges = np.asarray(cal["hole_edges"], float)
    radii = np.asarray(cal["avg_radii"], float)
    scale = np.asarray(cal["scale"], float)
    hole = np.asarray(hole, float)
    b = np.clip(np.searchsorted(edges, np.nan_to_num(hole, nan=edges[-1]), side="right") - 1,
                0, len(edges) - 2)
    j = np.argmin(np.abs(np.asarray(r_avg, float)[..., None] - radii), axis=-1)
    return scale[b, np.broadcast_to(j, b.shape)]
