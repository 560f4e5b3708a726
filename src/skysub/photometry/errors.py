"""Flux error model shared by every photometer (BKGnet eq. 8-10).

All quantities are in image units (ADU); the Poisson terms are evaluated in electrons with the
image gain ``g`` (e-/ADU) and converted back.  For a flux ``F = S - N_a b`` (BKGnet eq. 8) the
variance is

.. math::

    \\sigma_F^2 = \\max(F, 0) / g + N_{\\rm noise}\\,\\sigma_{\\rm pix}^2 + N_a^2\\,\\sigma_b^2

with

- ``max(F, 0) / g`` -- photon noise of the source itself (``F g`` electrons have variance
  ``F g``, i.e. ``F / g`` ADU^2);
- ``N_noise sigma_pix^2`` -- the noise of the pixels summed in the aperture around the
  background level (``N_noise = N_a`` for a plain aperture; the sum of the squared pixel weights
  for fractional or weighted apertures, see ``n_noise``);
- ``N_a^2 sigma_b^2`` -- the error of the subtracted background, ``sigma_b`` being the 1-sigma
  error of the background estimate itself (``BackgroundResult.bkg_err``), fully correlated
  over the aperture.

How it reduces to the paper's equations
---------------------------------------
Annulus median (BKGnet eq. 9), ``sigma^2 = (S - b) + N_a sigma_b^2 + N_a^2 (pi/2) sigma_b^2/N_b``
(the paper's ``S - b`` is the net source signal, ``F``, and its ``sigma_b`` the per-pixel
scatter): take ``pixel_var = sigma_b^2`` (``pixel_variance(..., mode="measured")`` =
the annulus' clipped pixel std squared) and ``bkg_err^2 = (pi/2) sigma_b^2 / N_b``, which is
exactly what :class:`skysub.background.annulus.AnnulusBackground` reports as ``bkg_err`` for the
median.

Per-source background error (BKGnet eq. 10), ``sigma^2 = (S - b) + N_a (b + RN^2) + N_a^2
sigma_b^2`` in electrons: take ``pixel_var = (b g + RN^2) / g^2`` (``mode="model"``: Poisson
background plus read noise, converted to ADU^2) and ``bkg_err`` = the estimator's own error
(BKGnet's sigma).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

ERROR_MODES = ("measured", "model", "auto")


def source_gain(img) -> float:
    """The gain for a source's own shot noise on ``img``: its gain, or infinity (no shot
    noise, SExtractor's ``GAIN = 0``) with a warning naming the frame when its header gave
    none."""
    import warnings

    if img.meta.gain_known:
        return float(img.meta.gain)
    name = getattr(img, "name", None) or "image"
    warnings.warn(f"{name}: no gain in the header (GAIN, CCDGAIN, ATODGAIN, EGAIN, or BUNIT "
                  "per second with EXPTIME): the sources' own shot noise is left out of "
                  "flux_err; give --gain e-/ADU (for counts per second: the exposure time x "
                  "the detector gain)", stacklevel=2)
    return float("inf")


def pixel_variance(bkg: np.ndarray, pixel_std: np.ndarray, gain: float, rdnoise: float,
                   mode: str = "measured") -> np.ndarray:
    """Per-pixel noise variance of the background under each source, in ADU^2.

    Parameters
    ----------
    bkg : array (n,)
        Background per pixel, ADU.
    pixel_std : array (n,)
        Measured per-pixel scatter of the background (``BackgroundResult.pixel_std``), ADU.
    gain : float
        e-/ADU (> 0).
    rdnoise : float
        Read noise, electrons (>= 0).
    mode : {"measured", "model", "auto"}
        ``"measured"``: ``pixel_std**2`` (BKGnet eq. 9; NaN where the estimator gives no
        scatter).  ``"model"``: ``(max(bkg, 0) g + RN^2) / g^2`` -- Poisson background plus
        read noise (BKGnet eq. 10); a negative background (sky-subtracted image) contributes no
        Poisson term, only read noise.  ``"auto"``: measured where finite, else model.

    Returns
    -------
    ndarray (n,), ADU^2
    """
    if mode not in ERROR_MODES:
        raise InputError(f"unknown error model mode={mode!r}; expected one of {ERROR_MODES}")
    if not (np.isfinite(gain) and gain > 0):
        raise InputError(f"gain must be positive (e-/ADU), got gain={gain!r}")
    if not (np.isfinite(rdnoise) and rdnoise >= 0):
        raise InputError(f"read noise must be >= 0 (e-), got rdnoise={rdnoise!r}")
    bkg = np.asarray(bkg, float)
    measured = np.asarray(pixel_std, float) ** 2 + np.zeros_like(bkg)
    with np.errstate(invalid="ignore"):
        model = (np.maximum(bkg, 0.0) * gain + rdnoise**2) / gain**2  # BKGnet eq. 10, in ADU^2
    if mode == "measured":
        return measured
    if mode == "model":
        return model
    return np.where(np.isfinite(measured), measured, model)


def flux_variance(flux: np.ndarray, n_aper: np.ndarray, pixel_var: np.ndarray,
                  bkg_err: np.ndarray, gain: float, *, n_noise: np.ndarray | None = None
                  ) -> np.ndarray:
    """Variance of a background-subtracted flux ``F = S - N_a b`` (ADU^2).

    ``var = max(F, 0) / g + n_noise * pixel_var + n_aper^2 * bkg_err^2`` (see the module
    docstring for the reduction to BKGnet eq. 9 and eq. 10).

    Parameters
    ----------
    flux : array (n,)
        Net source flux in the aperture, ADU (negative values add no Poisson term).
    n_aper : array (n,)
        Aperture area in pixels (may be fractional): the multiplier of the background.
    pixel_var : array (n,)
        Per-pixel background noise variance, ADU^2 (:func:`pixel_variance`).
    bkg_err : array (n,)
        1-sigma error of the background estimate per pixel, ADU.
    gain : float
        e-/ADU.
    n_noise : array (n,), optional
        Effective number of pixels for the pixel-noise term: ``sum(w**2)`` of the pixel
        weights ``w`` (equal to ``n_aper`` for a top-hat aperture of whole pixels, the default).

    Returns
    -------
    ndarray (n,), ADU^2
    """
    if not (np.isfinite(gain) and gain > 0):
        raise InputError(f"gain must be positive (e-/ADU), got gain={gain!r}")
    flux = np.asarray(flux, float)
    n_aper = np.asarray(n_aper, float)
    n_noise = n_aper if n_noise is None else np.asarray(n_noise, float)
    with np.errstate(invalid="ignore"):
        return (np.maximum(flux, 0.0) / gain + n_noise * np.asarray(pixel_var, float)
                + n_aper**2 * np.asarray(bkg_err, float) ** 2)
