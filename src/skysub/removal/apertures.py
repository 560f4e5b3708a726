"""Photometry of the removed light: exact-overlap circular apertures with the PSF's aperture
correction (:func:`source_fluxes`, :func:`enclosed_fraction`), plain aperture sums
(:func:`_aperture_sums`, for background means) and the per-hole fluxes of the wing passes.
Used by :mod:`skysub.removal.core` (inference), :mod:`.estimator` and :mod:`.calibration`."""

from __future__ import annotations

import numpy as np


def _aperture_psf(psf: np.ndarray, radius: float, dx: np.ndarray, dy: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Exact aperture overlap weights and the unit PSF at sub-pixel offsets ``(dx, dy)``, both
    (n, 2h + 1, 2h + 1) with h = ceil(radius) + 1, centred like :func:`_aperture_sums`."""
    from ..photometry.aperture import overlap_weights, shift_psf

    half = int(np.ceil(radius)) + 1
    size = 2 * half + 1
    big = max(size, psf.shape[0] + (psf.shape[0] % 2 == 0))
    stamps = shift_psf(psf, big, dx, dy)
    c = big // 2
    stamps = stamps[:, c - half:c + half + 1, c - half:c + half + 1]
    w = overlap_weights(np.asarray(dx, float), np.asarray(dy, float), radius, 1.0, 0.0, half)
    return w, stamps


def enclosed_fraction(psf: np.ndarray, radius: float, dx: np.ndarray, dy: np.ndarray
                      ) -> np.ndarray:
    """Fraction of a unit PSF centred at sub-pixel offsets ``(dx, dy)`` inside a circle of
    ``radius`` (exact pixel overlaps): the aperture correction is its inverse."""
    w, p = _aperture_psf(psf, radius, dx, dy)
    return (w * p).sum(axis=(1, 2))


def source_fluxes(values: np.ndarray, valid: np.ndarray, psf: np.ndarray, radius: float,
                  dx: np.ndarray, dy: np.ndarray, bkg: np.ndarray | float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aperture-corrected point-source fluxes of ``values - bkg`` (n, S, S; source at
    S // 2 + (dx, dy)) in a circle of ``radius`` with exact overlaps.

    Invalid pixels are left out of the sum AND of the aperture correction: the flux is
    ``sum_valid w (v - b) / sum_valid w psf``, exact for a point source whatever part of the
    aperture is lost (an edge, NaN coverage) -- scaling the sum by the lost AREA, as for a
    background mean, is wrong for a peaked profile.  Returns (flux, enclosed fraction of the
    whole aperture, fraction of the aperture area lost)."""
    w, p = _aperture_psf(psf, radius, dx, dy)
    half = w.shape[-1] // 2
    c = values.shape[-1] // 2
    sl = slice(c - half, c + half + 1)
    v = values[:, sl, sl] - np.asarray(bkg, float).reshape(-1, 1, 1)
    ok = valid[:, sl, sl] & np.isfinite(v)
    wv = np.where(ok, w, 0.0)
    ee_valid = (wv * p).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = (wv * np.where(ok, v, 0.0)).sum(axis=(1, 2)) / ee_valid
        bad = 1.0 - wv.sum(axis=(1, 2)) / w.sum(axis=(1, 2))
    return np.where(ee_valid > 0.05, flux, np.nan), (w * p).sum(axis=(1, 2)), bad


def _aperture_sums(values: np.ndarray, valid: np.ndarray, radius: float, dx: np.ndarray,
                   dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum of ``values`` (n, S, S; source at S // 2 + (dx, dy)) in a circular aperture with
    exact overlaps, scaled up for invalid pixels; returns (sum, area, bad_fraction)."""
    from ..photometry.aperture import overlap_weights

    s = values.shape[-1]
    half = int(np.ceil(radius)) + 1
    c = s // 2
    sl = slice(c - half, c + half + 1)
    v = values[:, sl, sl]
    ok = valid[:, sl, sl] & np.isfinite(v)
    w = overlap_weights(dx, dy, radius, 1.0, 0.0, half)
    area = w.sum(axis=(1, 2))
    wv = np.where(ok, w, 0.0)
    av = wv.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        total = (wv * np.where(ok, v, 0.0)).sum(axis=(1, 2)) * area / av
        bad = 1.0 - av / area
    return np.where(av > 0, total, np.nan), area, bad


def _psf_stamps(psf: np.ndarray, size: int, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """The unit PSF at sub-pixel offsets (dx, dy) on (n, size, size) stamps, centred like
    :func:`skysub.stamps.cutouts` (a PSF image larger than ``size`` is cropped)."""
    from ..photometry.aperture import shift_psf

    big = max(size, psf.shape[0] + (psf.shape[0] % 2 == 0))
    st = shift_psf(psf, big, dx, dy)
    o = big // 2 - size // 2
    return st[:, o:o + size, o:o + size]


def _hole_fluxes(values: np.ndarray, valid: np.ndarray, psf: np.ndarray, radius: np.ndarray,
                 dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Aperture-corrected flux of ``values`` (image - prediction) within each source's own hole
    radius (rounded to 0.5 px; one :func:`source_fluxes` call per distinct radius)."""
    out = np.full(len(values), np.nan)
    rr = np.round(np.nan_to_num(radius) * 2) / 2
    for r in np.unique(rr[rr > 0]):
        sel = np.flatnonzero(rr == r)
        out[sel] = source_fluxes(values[sel], valid[sel], psf, float(r), dx[sel], dy[sel])[0]
    return out
