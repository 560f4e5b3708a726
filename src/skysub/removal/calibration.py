"""Calibrated errors of the inpainted background (``InpaintBackground.bkg_err``).

The error of an inpainted mean depends on the field's structure and on the hole, not only on
the pixel noise, so skysub measures it: on held-out simulated (or the user's) fields never used
in training, every source's hole is inpainted exactly as at inference (normalisation, network,
anchoring), and the error of the mean prediction within a disc of radius ``r_avg`` is compared
with the truth.  The model is

    bkg_err = c(hole radius, r_avg) x sigma_bg

with ``sigma_bg`` the robust scatter of the source's annulus (eq. 1) and ``c`` measured per bin
of hole radius and per averaging radius as

    c^2 = sigma68(err / sigma_bg)^2 - median(sigma_n^2 / (A sigma_bg^2))

-- the truth map holds noise, whose mean over the disc (area ``A``, pixel noise ``sigma_n``)
is the photometer's own pixel-noise term and is taken out, so ``bkg_err`` is the error of the
background *level* only, as eq. 9 of the PAUS background paper wants it.  The table goes into
the model card (``error_calibration``); :class:`skysub.removal.InpaintBackground` uses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: averaging radii [px] of the calibration (nearest used for others)
AVG_RADII = (2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0)
#: bin edges of the hole radius [px]
HOLE_EDGES = (0.0, 5.5, 7.5, 9.5, 11.5, 14.0, 18.0, 30.0)
MIN_PER_BIN = 30


def cutout_noise(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-cutout pixel noise from adjacent-pixel differences (MAD-std / sqrt 2), (n,)."""
    d = data[:, :, 1:] - data[:, :, :-1]
    ok = valid[:, :, 1:] & valid[:, :, :-1]
    a = np.where(ok, d, np.nan).reshape(len(d), -1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(a, axis=1)
        return 1.4826 * np.nanmedian(np.abs(a - med[:, None]), axis=1) / np.sqrt(2.0)


def measure_errors(net: Any, data: dict[str, np.ndarray], *, size: int, anchor: float = 8.0,
                   avg_radii: tuple[float, ...] = AVG_RADII, batch_size: int = 256
                   ) -> dict[str, np.ndarray]:
    """Inpaint every cutout of ``data`` (from :func:`skysub.removal.training.make_fields`) as at
    inference and return per cutout: ``err`` (n, len(avg_radii)) mean prediction - truth in each
    disc, ``area`` (len(avg_radii),) nominal disc areas, ``hole``, ``sigma_bg``, ``noise``."""
    from .core import _anchor_offsets, _aperture_sums, predict_cutouts

    s = data["image"].shape[-1]
    o = (s - size) // 2
    crop = (slice(None), slice(o, o + size), slice(o, o + size))
    img = data["image"][crop].astype(np.float64)
    tru = data["target"][crop].astype(np.float64)
    valid = data["mask"][crop] > 0
    dx, dy = data["dx"].astype(float), data["dy"].astype(float)
    hole = data["radius"].astype(float)
    pred = predict_cutouts(net, img, valid, batch_size=batch_size)
    if anchor > 0:
        pred += _anchor_offsets(img, pred, valid, dx, dy, hole, anchor, plane=False)
    everywhere = np.ones(img.shape, bool)
    err = np.empty((len(img), len(avg_radii)))
    area = np.empty(len(avg_radii))
    for j, r in enumerate(avg_radii):
        sp, a, _ = _aperture_sums(pred, everywhere, r, dx, dy)
        st, _, _ = _aperture_sums(tru, everywhere, r, dx, dy)
        err[:, j] = (sp - st) / a
        area[j] = float(np.median(a))
    return {"err": err, "area": area, "hole": hole, "sigma_bg": data["sigma_bg"].astype(float),
            "noise": cutout_noise(tru, np.ones(tru.shape, bool))}


def fit_calibration(m: dict[str, np.ndarray], *, avg_radii: tuple[float, ...] = AVG_RADII,
                    hole_edges: tuple[float, ...] = HOLE_EDGES,
                    min_per_bin: int = MIN_PER_BIN) -> dict[str, Any]:
    """The ``c`` table of the module doc from :func:`measure_errors` output (JSON-ready).

    Bins with fewer than ``min_per_bin`` cutouts take the nearest filled bin of the same
    averaging radius; ``n`` holds the counts."""
    from ..metrics import _sigma68

    ok = np.isfinite(m["sigma_bg"]) & (m["sigma_bg"] > 0) & np.isfinite(m["noise"])
    nb = len(hole_edges) - 1
    scale = np.full((nb, len(avg_radii)), np.nan)
    counts = np.zeros(nb, int)
    b = np.clip(np.searchsorted(hole_edges, m["hole"], side="right") - 1, 0, nb - 1)
    for i in range(nb):
        sel = ok & (b == i)
        counts[i] = int(sel.sum())
        if counts[i] < min_per_bin:
            continue
        for j in range(len(avg_radii)):
            ratio = m["err"][sel, j] / m["sigma_bg"][sel]
            noise_term = np.median(m["noise"][sel] ** 2 / (m["area"][j] * m["sigma_bg"][sel] ** 2))
            c2 = _sigma68(ratio) ** 2 - noise_term
            # never below a tenth of the raw scatter: the subtraction is itself noisy
            scale[i, j] = np.sqrt(max(c2, (0.1 * _sigma68(ratio)) ** 2))
    filled = np.flatnonzero(np.isfinite(scale[:, 0]))
    if filled.size == 0:
        raise ValueError(f"error calibration needs >= {min_per_bin} cutouts in some hole-radius "
                         f"bin; got {int(ok.sum())} usable cutouts")
    for i in range(nb):
        if not np.isfinite(scale[i, 0]):
            scale[i] = scale[filled[np.argmin(np.abs(filled - i))]]
    return {"model": "bkg_err = scale[hole bin][avg radius] x sigma_bg (annulus MAD-std)",
            "avg_radii": [float(r) for r in avg_radii],
            "hole_edges": [float(e) for e in hole_edges],
            "scale": np.round(scale, 5).tolist(), "n": counts.tolist(),
            "n_cutouts": int(ok.sum())}


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


def calibrate(net: Any, data: dict[str, np.ndarray], *, size: int, anchor: float = 8.0
              ) -> dict[str, Any]:
    """:func:`measure_errors` then :func:`fit_calibration`: the card's ``error_calibration``."""
    return fit_calibration(measure_errors(net, data, size=size, anchor=anchor))
