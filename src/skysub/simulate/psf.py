"""Point-spread functions: unit-sum, odd-sized, centred at ``size // 2``, pixel-integrated.

``theta`` angles are in DEGREES counter-clockwise from +x.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import erf

from ..errors import InputError, MissingFileError

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _odd(size: int) -> int:
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise InputError(f"PSF size must be a positive odd integer, got size={size}")
    return size


def _subgrid(size: int, os: int, dx: float = 0.0, dy: float = 0.0):
    c = size // 2
    g = -0.5 + (np.arange(size * os) + 0.5) / os - c
    return np.meshgrid(g - dx, g - dy, indexing="xy")


def gaussian_psf(size: int, fwhm: float, *, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Circular Gaussian integrated exactly over each pixel (erf), unit sum over the stamp."""
    size = _odd(size)
    if not fwhm > 0:
        raise InputError(f"PSF fwhm must be positive, got fwhm={fwhm}")
    s = fwhm / FWHM_PER_SIGMA
    edges = np.arange(size + 1) - 0.5 - size // 2

    def axis(d):
        cdf = 0.5 * (1 + erf((edges - d) / (np.sqrt(2) * s)))
        return np.diff(cdf)

    img = np.outer(axis(dy), axis(dx))
    return img / img.sum()


def elliptical_gaussian_psf(size: int, sigma_x: float, sigma_y: float, theta: float = 0.0, *,
                            oversample: int = 9) -> np.ndarray:
    """Elliptical Gaussian with sigmas along its own axes, major axis at ``theta`` degrees."""
    size = _odd(size)
    if not (sigma_x > 0 and sigma_y > 0):
        raise InputError(f"PSF sigmas must be positive, got {sigma_x}, {sigma_y}")
    xx, yy = _subgrid(size, oversample)
    t = np.deg2rad(theta)
    u = xx * np.cos(t) + yy * np.sin(t)
    v = -xx * np.sin(t) + yy * np.cos(t)
    fine = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    img = fine.reshape(size, oversample, size, oversample).sum(axis=(1, 3))
    return img / img.sum()


def moffat_psf(size: int, fwhm: float, beta: float = 3.0, *, dx: float = 0.0, dy: float = 0.0,
               oversample: int = 7) -> np.ndarray:
    """Moffat ``(1 + (r/alpha)^2)^-beta`` with ``alpha = fwhm / (2 sqrt(2^(1/beta) - 1))``."""
    size = _odd(size)
    if not (fwhm > 0 and beta > 1):
        raise InputError(f"Moffat PSF needs fwhm > 0 and beta > 1, got {fwhm}, {beta}")
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    xx, yy = _subgrid(size, oversample, dx, dy)
    fine = (1 + (xx * xx + yy * yy) / alpha**2) ** (-beta)
    img = fine.reshape(size, oversample, size, oversample).sum(axis=(1, 3))
    return img / img.sum()


def moffat_stamps(size: int, fwhm: float, beta: float, dx, dy, flux, *,
                  oversample: int = 5) -> np.ndarray:
    """Many Moffat stars at sub-pixel offsets ``(dx, dy)`` from ``size // 2``, batched;
    each normalised to its ``flux`` over the infinite plane (so the stamp holds slightly less)."""
    size = _odd(size)
    dx, dy, flux = np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, float))
                                         for a in (dx, dy, flux)))
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    g = -0.5 + (np.arange(size * oversample) + 0.5) / oversample - size // 2
    xx = g[None, None, :] - dx[:, None, None]
    yy = g[None, :, None] - dy[:, None, None]
    fine = (1 + (xx * xx + yy * yy) / alpha**2) ** (-beta)
    img = fine.reshape(-1, size, oversample, size, oversample).mean(axis=(2, 4))
    total = np.pi * alpha**2 / (beta - 1)  # integral of the profile over the plane
    return img * (flux / total)[:, None, None]


def load_psf(path: str | Path, *, hdu: int | str = 0) -> np.ndarray:
    """A PSF image from FITS, normalised to unit sum; must be 2-D, odd-sized, finite."""
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"PSF file not found: {path}")
    try:
        data = fits.getdata(path, hdu)
    except (OSError, KeyError, IndexError) as exc:
        raise InputError(f"{path}: cannot read a PSF image from HDU {hdu!r}: {exc}") from None
    data = np.asarray(data, float)
    if data.ndim != 2 or data.shape[0] % 2 == 0 or data.shape[1] % 2 == 0:
        raise InputError(f"{path}: PSF must be a 2-D image of odd size, got shape {data.shape}")
    if not np.isfinite(data).all() or data.sum() <= 0:
        raise InputError(f"{path}: PSF must be finite with a positive sum")
    return data / data.sum()


def fwhm_of(psf: np.ndarray) -> float:
    """FWHM [px] of a circular PSF from its second moment (exact for a Gaussian)."""
    p = np.asarray(psf, float)
    yy, xx = np.indices(p.shape)
    c = np.array(p.shape) // 2
    r2 = (xx - c[1]) ** 2 + (yy - c[0]) ** 2
    return float(np.sqrt((p * r2).sum() / p.sum() / 2) * FWHM_PER_SIGMA)
