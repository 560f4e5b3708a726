"""Azimuthally averaged power spectra and pixel statistics of maps (Madarasz et al. section 5.3).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from ..errors import InputError
from ..stats import mad_std
from ._common import _as_float

log = logging.getLogger("skysub.metrics")


WINDOWS = (None, "hann")



# ----------------------------------------------------------------------------------------------
# power spectrum
# ----------------------------------------------------------------------------------------------

def _window(shape: tuple[int, int], window: str | None) -> np.ndarray:
    if window is None:
        return np.ones(shape)
    if window == "hann":
        from scipy.signal.windows import hann

        # periodic (sym=False) Hann: the DFT-even form, zero only at the first pixel
        return np.outer(hann(shape[0], sym=False), hann(shape[1], sym=False))
    raise InputError(f"unknown window {window!r}; expected one of {WINDOWS}")



def _valid_map(image: Any, mask: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    img = _as_float(image, name)
    if img.ndim != 2:
        raise InputError(f"{name} must be a 2-D array, got shape {img.shape}")
    valid = np.isfinite(img)
    if mask is not None:
        mk = np.asarray(mask, bool)
        if mk.shape != img.shape:
            raise InputError(f"mask shape {mk.shape} does not match {name} shape {img.shape}")
        valid &= ~mk
    return img, valid



def _spectrum(img: np.ndarray, valid: np.ndarray, *, nbins: int | None, pixel_scale: float,
              window: str | None, name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    ny, nx = img.shape
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise InputError(f"{name} has no valid (finite, unmasked) pixel")
    if not (np.isfinite(pixel_scale) and pixel_scale > 0):
        raise InputError(f"pixel_scale must be positive, got pixel_scale={pixel_scale!r}")
    if nbins is not None and (int(nbins) != nbins or nbins < 1):
        raise InputError(f"nbins must be a positive integer or None, got nbins={nbins!r}")
    w = _window((ny, nx), window)
    wv = np.where(valid, w, 0.0)
    sw = wv.sum()
    sw2 = np.sum(wv * wv)
    if not sw2 > 0:
        raise InputError(f"{name}: the {window} window vanishes on every valid pixel")
    # window-weighted mean of the valid pixels; masked pixels take this value, so they add
    # nothing after subtraction and the DC mode is exactly zero
    mean = np.sum(np.where(valid, img, 0.0) * wv) / sw
    dev = np.where(valid, img - mean, 0.0)
    f = dev * w
    p2 = np.abs(np.fft.fft2(f)) ** 2 / sw2  # white noise of variance s^2 -> s^2 per mode
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    kk = np.hypot(kx, ky).ravel()  # cycles per pixel
    p2 = p2.ravel()
    nodc = kk > 0
    kk, p2 = kk[nodc], p2[nodc]
    if kk.size == 0:  # a 1 x 1 image
        return np.zeros(0), np.zeros(0), {"n_modes": np.zeros(0, np.int64),
                                          "masked_fraction": 1.0 - n_valid / img.size,
                                          "mean": float(mean), "dc_power": 0.0}
    if nbins is None:
        dk = 1.0 / min(nx, ny)  # unit-width bins of the |k| index along the shorter axis
        idx = np.floor(kk / dk + 0.5).astype(np.int64)
    else:
        edges = np.linspace(0.0, kk.max(), int(nbins) + 1)
        idx = np.clip(np.searchsorted(edges, kk, side="right") - 1, 0, int(nbins) - 1)
    nb = int(idx.max()) + 1
    counts = np.bincount(idx, minlength=nb)
    psum = np.bincount(idx, weights=p2, minlength=nb)
    ksum = np.bincount(idx, weights=kk, minlength=nb)
    keep = counts > 0
    k = ksum[keep] / counts[keep] / pixel_scale
    power = psum[keep] / counts[keep]
    masked_fraction = 1.0 - n_valid / img.size
    details = {"n_modes": counts[keep], "masked_fraction": masked_fraction,
               "mean": float(mean), "n_valid": n_valid,
               "variance": float(np.sum(wv * wv * dev * dev) / sw2)}
    if masked_fraction > 0:
        log.info("%s: %.1f%% of pixels masked or non-finite, replaced by the mean of the valid "
                 "pixels", name, 100 * masked_fraction)
    return k, power, details



def power_spectrum(image: Any, *, mask: Any = None, nbins: int | None = None,
                   pixel_scale: float = 1.0, window: str | None = None,
                   return_details: bool = False
                   ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict]:
    """Azimuthally averaged power spectrum of a 2-D map.

    Steps: the (window-weighted) mean of the valid pixels is subtracted; masked and non-finite
    pixels are set to that mean (i.e. to 0 after subtraction); the optional window is applied;
    ``P(k) = |FFT|^2 / sum_valid(w^2)`` per Fourier mode; modes are averaged in annuli of
    ``|k|``.

    Parameters
    ----------
    image : array-like, shape (ny, nx)
        The map (any units).  NaN/inf pixels count as masked.
    mask : bool array, shape (ny, nx), optional
        True = bad pixel.
    nbins : int, optional
        None (default): bins of unit width in the Fourier index, ``Delta k = 1 / min(nx, ny)``
        cycles per pixel, bin ``j`` holding ``(j - 1/2) Delta k <= |k| < (j + 1/2) Delta k``.
        An integer: that many equal-width bins from 0 to the largest ``|k|``.  Bins without a
        mode are omitted.
    pixel_scale : float
        Pixel size (e.g. arcsec); ``k`` is returned in cycles per that unit.  The power is not
        rescaled.
    window : {None, "hann"}
        Apodisation: None, or a 2-D periodic Hann window (reduces leakage from the map edges
        and from non-periodic structure, at the cost of resolution in ``k``).
    return_details : bool
        Also return a dict: ``n_modes`` per bin, ``masked_fraction`` (fraction of pixels that
        were masked or non-finite and filled), ``mean`` (subtracted), ``n_valid``,
        ``variance`` (window-weighted variance of the valid pixels).

    Returns
    -------
    k : ndarray
        Mean ``|k|`` of the Fourier modes in each bin, cycles per pixel / ``pixel_scale``.  The
        DC mode (k = 0) is excluded.  ``|k| > 0.5`` cycles/px covers only the corners of the
        Fourier plane.
    power : ndarray
        Mean power per mode in each bin (image units squared).

    Notes
    -----
    Normalisation.  With ``N = nx * ny`` pixels, no mask and no window, Parseval's theorem
    gives ``sum(power * n_modes) = N * var(image)`` exactly (all modes but the zero DC mode are
    binned).  In general ``sum(power * n_modes) = N * details["variance"]``.  The normalisation
    by ``sum_valid(w^2)`` (= number of valid pixels without a window) makes white noise of
    variance ``s^2`` give a flat ``power = s^2`` whatever the mask and the window, so spectra of
    differently masked maps can be compared.  Masking still correlates modes (the spectrum is
    convolved with that of the mask): for maps with structure, compare maps with the *same*
    mask (as :func:`power_spectrum_ratio` does).

    Raises
    ------
    InputError
        Not 2-D, mask shape mismatch, no valid pixel, unknown window, bad ``nbins`` or
        ``pixel_scale``.
    """
    img, valid = _valid_map(image, mask, "image")
    k, power, details = _spectrum(img, valid, nbins=nbins, pixel_scale=pixel_scale,
                                  window=window, name="image")
    if return_details:
        return k, power, details
    return k, power



def power_spectrum_ratio(a: Any, b: Any, *, mask: Any = None, nbins: int | None = None,
                         pixel_scale: float = 1.0, window: str | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Ratio ``P_a(k) / P_b(k)`` of the power spectra of two maps of the same field.

    Both spectra use the same valid pixels: the union of ``mask`` and the non-finite pixels of
    either map is masked in both (e.g. original vs source-removed map, Madarasz et al. 5.3.1).
    Parameters as :func:`power_spectrum`.

    Returns
    -------
    k : ndarray
    ratio : ndarray
        NaN where ``P_b == 0``.
    """
    ia, va = _valid_map(a, mask, "a")
    ib, vb = _valid_map(b, mask, "b")
    if ia.shape != ib.shape:
        raise InputError(f"maps a and b must have the same shape, got {ia.shape} and {ib.shape}")
    valid = va & vb
    k, pa, _ = _spectrum(ia, valid, nbins=nbins, pixel_scale=pixel_scale, window=window,
                         name="a")
    _, pb, _ = _spectrum(ib, valid, nbins=nbins, pixel_scale=pixel_scale, window=window,
                         name="b")
    ratio = np.full(pa.shape, np.nan)
    np.divide(pa, pb, out=ratio, where=pb > 0)
    return k, ratio



# ----------------------------------------------------------------------------------------------
# pixel statistics
# ----------------------------------------------------------------------------------------------

def pixel_stats(values: Any, mask: Any = None) -> dict[str, float | int]:
    """Statistics of the valid pixels (Madarasz et al. Table 6).

    Parameters
    ----------
    values : array-like, any shape
        Pixel values; non-finite entries are ignored.
    mask : bool array, same shape, optional
        True = ignore.

    Returns
    -------
    dict
        ``mean``, ``median``, ``std`` (ddof=0), ``mad_std`` (MAD x 1.4826), ``skewness``
        (``scipy.stats.skew``, biased moment estimator; NaN for constant or nearly constant
        data, where scipy reports catastrophic cancellation), ``iqr``
        (q75 - q25), ``n`` (valid pixels).  NaN statistics and ``n = 0`` without valid pixels.
    """
    v = _as_float(values, "values")
    valid = np.isfinite(v)
    if mask is not None:
        mk = np.asarray(mask, bool)
        if mk.shape != v.shape:
            raise InputError(f"mask shape {mk.shape} does not match values shape {v.shape}")
        valid &= ~mk
    x = v[valid]
    n = int(x.size)
    if n == 0:
        return {"mean": np.nan, "median": np.nan, "std": np.nan, "mad_std": np.nan,
                "skewness": np.nan, "iqr": np.nan, "n": 0}
    from scipy.stats import skew

    std = float(np.std(x))
    sk = np.nan
    if std > 0:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sk = float(skew(x))
        if any(issubclass(w.category, RuntimeWarning) for w in caught):
            sk = np.nan  # scipy: catastrophic cancellation for nearly identical values
    q25, q75 = np.percentile(x, [25.0, 75.0])
    return {"mean": float(np.mean(x)), "median": float(np.median(x)), "std": std,
            "mad_std": float(mad_std(x)), "skewness": sk, "iqr": float(q75 - q25), "n": n}
