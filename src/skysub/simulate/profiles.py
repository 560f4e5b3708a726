"""Sérsic galaxy profiles, pixel-integrated by oversampling, batched over many galaxies.

Convention: ``r50`` is the semi-major half-light radius in pixels, ``ba`` = b/a, ``theta`` the
position angle of the major axis in DEGREES counter-clockwise from +x, and the profile centre is
at stamp pixel ``(size // 2 + dx, size // 2 + dy)`` (0-based, pixel centres at integers).

The surface brightness is ``I(R) = I_e exp(-b_n [(R / r50)^(1/n) - 1])`` (Lumos eq. 1) with the
exact ``b_n = gammaincinv(2n, 1/2)``; SPEC.md quotes the approximation ``b_n = 2n - 1/3``, which is
0.4 % off at n = 1 and makes r50 not quite the half-light radius.  ``flux`` is the TOTAL flux over
the infinite plane; a stamp holds less when the profile extends beyond it.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy.special import gamma, gammaincinv

from ..errors import InputError


def sersic_bn(n: float | np.ndarray) -> np.ndarray:
    """Exact Sérsic b_n: the half-light radius encloses half the light."""
    return gammaincinv(2.0 * np.asarray(n, float), 0.5)


def sersic_total(r50, n, ba=1.0) -> np.ndarray:
    """Total flux of a profile with I_e = 1: ``2 pi n ba r50^2 e^b b^(-2n) Gamma(2n)``."""
    n = np.asarray(n, float)
    b = sersic_bn(n)
    return 2 * np.pi * n * np.asarray(ba, float) * np.asarray(r50, float) ** 2 * np.exp(b) \
        * b ** (-2 * n) * gamma(2 * n)


def _check(name: str, v: np.ndarray, lo: float, hi: float = np.inf) -> None:
    if not np.all(np.isfinite(v)) or np.any(v <= lo) or np.any(v > hi):
        raise InputError(f"Sérsic parameter {name} must be finite and in ({lo}, {hi}], "
                         f"got {v[~(np.isfinite(v) & (v > lo) & (v <= hi))][:3]}")


def _evaluate(coords: np.ndarray, cx, cy, r50, n, ba, theta_deg, b) -> np.ndarray:
    """Surface brightness (I_e = 1) at points ``coords`` (..., 2) = (x, y) for m profiles."""
    t = np.deg2rad(theta_deg)[:, None, None]  # public angles in degrees
    ddx = coords[None, ..., 0] - cx[:, None, None]
    ddy = coords[None, ..., 1] - cy[:, None, None]
    u = ddx * np.cos(t) + ddy * np.sin(t)
    v = -ddx * np.sin(t) + ddy * np.cos(t)
    q2 = (u * u + (v / ba[:, None, None]) ** 2) / (r50 * r50)[:, None, None]
    # (R / r50)^(1/n) = exp(log(q2) / (2n)); float32 for speed (relative error ~1e-7)
    q2 = np.maximum(q2, 1e-30).astype(np.float32)
    expo = np.exp(np.log(q2) * (0.5 / n)[:, None, None].astype(np.float32))
    return np.exp(-b[:, None, None].astype(np.float32) * (expo - 1.0)).astype(float)


def _grid(lo: float, npix: int, os: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes (``os`` per pixel side) and weights for ``npix`` pixels starting at
    pixel ``lo`` (centres at integers).  Exact for polynomials of degree 2 os - 1 over a
    pixel: far more accurate than equally spaced sub-pixels for the same cost."""
    t, w = np.polynomial.legendre.leggauss(os)
    nodes = (lo + np.arange(npix)[:, None] + 0.5 * t[None, :]).ravel()
    return nodes, np.tile(0.5 * w, npix)


def convolve_batch(stamps: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Convolve every stamp of ``stamps`` (m, s, s) with ``psf`` (odd, centred) by one batched
    FFT; output has the stamps' shape (``same`` mode, flux kept)."""
    psf = np.asarray(psf, float)
    if psf.ndim != 2 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
        raise InputError(f"PSF must be a 2-D array of odd size, got shape {psf.shape}")
    s0, s1 = stamps.shape[-2:]
    p0, p1 = psf.shape
    shape = (sfft.next_fast_len(s0 + p0 - 1, real=True), sfft.next_fast_len(s1 + p1 - 1, real=True))
    f = sfft.rfft2(stamps, s=shape, axes=(-2, -1)) * sfft.rfft2(psf, s=shape)
    full = sfft.irfft2(f, s=shape, axes=(-2, -1))
    return full[..., p0 // 2:p0 // 2 + s0, p1 // 2:p1 // 2 + s1]


def _compiled():
    """The numba kernel :func:`skysub._numba_profiles.sersic_pixels`, or None
    (:func:`skysub.kernels.optional_kernel`: no numba, or ``SKYSUB_KERNELS=numpy``)."""
    from ..kernels import optional_kernel

    return optional_kernel("sersic_pixels", _load_sersic)


def _load_sersic():
    from .._numba_profiles import sersic_pixels

    one = np.ones(1)
    sersic_pixels(np.zeros(1), np.zeros(1), one, 1, 1, one, one, one, one, one,
                  np.zeros(1), one, np.empty((1, 1, 1)))
    return sersic_pixels


def _pixels(fast: bool, g, wg, os, npix, cx, cy, r50, n, ba, theta, b) -> np.ndarray:
    """Pixel integrals (m, npix, npix) of the profiles over the node grid ``g`` (weights
    ``wg``): the compiled kernel when ``fast`` and available, else numpy."""
    kernel = _compiled() if fast else None
    if kernel is not None:
        out = np.empty((len(cx), npix, npix))
        f = [np.ascontiguousarray(a, float) for a in (cx, cy, r50, n, ba, theta, b)]
        kernel(np.ascontiguousarray(g, float), np.ascontiguousarray(g, float),
               np.ascontiguousarray(wg, float), os, npix, *f, out)
        return out
    coords = np.stack(np.meshgrid(g, g, indexing="xy"), axis=-1)
    fine = _evaluate(coords, cx, cy, r50, n, ba, theta, b)
    return (fine * np.outer(wg, wg)).reshape(-1, npix, os, npix, os).sum(axis=(2, 4))


def sersic_stamps(size: int, flux, r50, n, *, ba=1.0, theta=0.0, dx=0.0, dy=0.0,
                  oversample: int = 10, psf: np.ndarray | None = None,
                  max_elements: int = 20_000_000, fast: bool = False) -> np.ndarray:
    """Pixel-integrated Sérsic profiles on ``size`` x ``size`` stamps, batched.

    Parameters
    ----------
    size : int
    flux, r50, n, ba, theta, dx, dy : scalars or arrays of length m
        Total flux, semi-major half-light radius [px], Sérsic index (0.2-10), axis ratio,
        position angle [deg, CCW from +x], sub-pixel offset of the centre from ``size // 2``.
    oversample : int
        Gauss-Legendre nodes per pixel side; the central 3 x 3 pixels get 8x more (the cusp
        of n >= 2).
    psf : 2-D array, optional
        Unit-sum PSF (odd size) convolved with every profile (one batched FFT).
    fast : evaluate with the compiled kernel (numba; ~5x faster, no large temporaries): the
        same operations, ~1e-7 relative apart from the numpy path (float32 ``exp``/``log``
        implementations).  Default False: the numpy path, which the simulators use.

    Returns
    -------
    ndarray (m, size, size)
    """
    size = int(size)
    os = int(oversample)
    if size < 1 or os < 1:
        raise InputError(f"size and oversample must be >= 1, got {size}, {os}")
    flux, r50, n, ba, theta, dx, dy = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(a, float)) for a in (flux, r50, n, ba, theta, dx, dy)))
    _check("r50", r50, 0.0)
    _check("n", n, 0.1, 10.0)
    _check("ba", ba, 0.0, 1.0)
    m = len(flux)
    b = sersic_bn(n)
    amp = flux / sersic_total(r50, n, ba)
    c = size // 2
    out = np.empty((m, size, size))
    g, wg = _grid(0, size, os)  # nodes along x and y; coordinates (x, y) = (g[j], g[i])
    # central 3x3 pixels (around the true centre pixel) at 8x the resolution
    os_c = 8 * os
    gc, wc = _grid(-1, 3, os_c)
    chunk = max(1, max_elements // (size * os) ** 2)
    for s in range(0, m, chunk):
        sl = slice(s, min(s + chunk, m))
        cx, cy = c + dx[sl], c + dy[sl]
        shape = (r50[sl], n[sl], ba[sl], theta[sl], b[sl])
        img = _pixels(fast, g, wg, os, size, cx, cy, *shape)
        # refine the 3x3 pixels nearest each centre
        ix = np.clip(np.floor(cx + 0.5).astype(int), 1, size - 2)
        iy = np.clip(np.floor(cy + 0.5).astype(int), 1, size - 2)
        cc = _pixels(fast, gc, wc, os_c, 3, cx - ix, cy - iy, *shape)
        rows = np.arange(img.shape[0])[:, None, None]
        yy = iy[:, None, None] + np.arange(-1, 2)[None, :, None]
        xx = ix[:, None, None] + np.arange(-1, 2)[None, None, :]
        if size >= 3:
            img[rows, yy, xx] = cc
        out[sl] = img * amp[sl, None, None]
    if psf is not None:
        out = convolve_batch(out, psf)
    return out


def sersic_image(shape: tuple[int, int], x0: float, y0: float, *, flux: float, r50: float,
                 n: float, ba: float = 1.0, theta: float = 0.0, oversample: int = 10,
                 psf: np.ndarray | None = None) -> np.ndarray:
    """One Sérsic profile centred at ``(x0, y0)`` on an image of ``shape`` (ny, nx)."""
    ny, nx = shape
    size = 2 * max(ny, nx) + 1
    c = size // 2
    ix, iy = int(np.floor(x0 + 0.5)), int(np.floor(y0 + 0.5))
    st = sersic_stamps(size, flux, r50, n, ba=ba, theta=theta, dx=x0 - ix, dy=y0 - iy,
                       oversample=oversample, psf=psf, max_elements=10**9)[0]
    return st[c - iy:c - iy + ny, c - ix:c - ix + nx]
