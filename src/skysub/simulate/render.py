"""Source models: catalogue shapes (:class:`SourceShapes`, :func:`source_shapes`) and
unit-total PSF-convolved model images in the :mod:`skysub.stamps` layout
(:func:`render_models`, :func:`shift_psf`).

The simulators draw with them and the photometers (:mod:`skysub.photometry`) fit them, so they
live here, below both: ``skysub.simulate`` imports no estimator or photometer.  They are also
importable from :mod:`skysub.photometry.aperture`, their former home.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CatalogError


@dataclass
class SourceShapes:
    """Catalogue shapes per source: point sources have ``is_point`` True (PSF only)."""

    r50: np.ndarray
    n: np.ndarray
    ba: np.ndarray
    theta: np.ndarray  #: degrees CCW from +x
    is_point: np.ndarray

    def take(self, idx) -> SourceShapes:
        """The shapes of the sources ``idx`` (index array, mask or slice)."""
        return SourceShapes(*(np.asarray(v)[idx] for v in (self.r50, self.n, self.ba,
                                                          self.theta, self.is_point)))


def source_shapes(catalog, n_src: int) -> SourceShapes:
    """Read ``r50`` (semi-major half-light radius, px), ``sersic_n``, ``ba`` and ``theta``
    (degrees CCW from +x) from a catalogue (astropy Table, dict of arrays, or None = all point
    sources).  Rows with missing (NaN / masked) or non-positive r50 are point sources.  ``ba``
    and ``theta`` default to 1 and 0 when the columns are absent; ``sersic_n`` is required when
    ``r50`` is given."""
    if catalog is None:
        one = np.ones(n_src)
        return SourceShapes(np.zeros(n_src), one, one.copy(), np.zeros(n_src),
                            np.ones(n_src, bool))
    names = list(catalog.colnames) if hasattr(catalog, "colnames") else list(catalog.keys())

    def col(name: str, default: float | None) -> np.ndarray:
        if name not in names:
            if default is None:
                raise CatalogError(f"catalogue lacks column {name!r} (has {names}); model "
                                   "photometry needs r50 (px), sersic_n, and optionally ba, theta")
            return np.full(n_src, float(default))
        v = catalog[name]
        v = np.ma.filled(np.ma.asarray(v, dtype=float), np.nan)
        v = np.atleast_1d(np.asarray(v, float))
        if v.shape != (n_src,):
            raise CatalogError(f"catalogue column {name!r} has {v.shape[0] if v.ndim else 1} "
                               f"rows, expected {n_src} (one per source)")
        return v

    r50 = col("r50", None)
    with np.errstate(invalid="ignore"):
        is_point = ~(np.isfinite(r50) & (r50 > 0))
    nser = col("sersic_n", None)
    ba = col("ba", 1.0)
    theta = col("theta", 0.0)
    gal = ~is_point
    bad_n = gal & ~(np.isfinite(nser) & (nser > 0))
    if bad_n.any():
        raise CatalogError(f"catalogue column 'sersic_n' must be positive and finite where r50 > "
                           f"0; {bad_n.sum()} rows are not (first: row {np.flatnonzero(bad_n)[0]})")
    bad_ba = gal & ~(np.isfinite(ba) & (ba > 0) & (ba <= 1))
    if bad_ba.any():
        raise CatalogError(f"catalogue column 'ba' must be in (0, 1]; {bad_ba.sum()} rows are not "
                           f"(first: row {np.flatnonzero(bad_ba)[0]})")
    bad_t = gal & ~np.isfinite(theta)
    if bad_t.any():
        raise CatalogError(f"catalogue column 'theta' (degrees) must be finite; {bad_t.sum()} "
                           "rows are not")
    # point sources: circular, angle irrelevant
    ba = np.where(is_point, 1.0, ba)
    theta = np.where(is_point, 0.0, theta)
    nser = np.where(is_point, 1.0, nser)
    r50 = np.where(is_point, 0.0, r50)
    return SourceShapes(r50, nser, ba, theta, is_point)


def shift_psf(psf: np.ndarray, size: int, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Unit-sum PSF placed in ``size`` x ``size`` stamps centred at ``size // 2 + (dx, dy)``.

    The sub-pixel shift is a Fourier phase ramp (batched over sources) on a zero-padded grid,
    so nothing wraps around; light beyond the stamp is dropped (the stamps then sum to < 1).
    """
    m = len(dx)
    n = psf.shape[0]
    pad = 4
    big = max(size, n) + 2 * pad
    big += (big % 2 == 0)  # odd, so the centre is exactly big // 2
    base = np.zeros((big, big))
    c = big // 2
    h = n // 2
    base[c - h:c - h + n, c - h:c - h + n] = psf
    fx = np.fft.fftfreq(big)
    ft = np.fft.fft2(base)
    ramp_x = np.exp(-2j * np.pi * fx[None, :] * np.asarray(dx, float)[:, None])  # (m, big)
    ramp_y = np.exp(-2j * np.pi * fx[None, :] * np.asarray(dy, float)[:, None])
    shifted = np.fft.ifft2(ft[None] * ramp_y[:, :, None] * ramp_x[:, None, :]).real
    s = size // 2
    out = shifted[:, c - s:c - s + size, c - s:c - s + size]
    return out.reshape(m, size, size)


def render_models(shapes: SourceShapes, psf: np.ndarray, size: int, dx: np.ndarray,
                  dy: np.ndarray, *, oversample: int = 10, fast: bool = False) -> np.ndarray:
    """Unit-total PSF-convolved models in the :mod:`skysub.stamps` layout.

    Galaxies (Sérsic, :func:`skysub.simulate.profiles.sersic_stamps`, batched) and point
    sources (the PSF, Fourier-shifted) are centred at ``size // 2 + (dx, dy)`` of each stamp,
    which is where :func:`skysub.stamps.cutouts` puts the source.

    ``fast``: galaxies through the compiled Sérsic kernel (``sersic_stamps(fast=True)``).

    Returns
    -------
    ndarray (m, size, size); each model's total flux (over the whole plane) is 1.
    """
    m = len(dx)
    out = np.zeros((m, size, size))
    pt = shapes.is_point
    if pt.any():
        out[pt] = shift_psf(psf, size, dx[pt], dy[pt])
    gal = ~pt
    if gal.any():
        from .profiles import sersic_stamps

        out[gal] = sersic_stamps(size, np.ones(gal.sum()), shapes.r50[gal], shapes.n[gal],
                                 ba=shapes.ba[gal], theta=shapes.theta[gal], dx=dx[gal],
                                 dy=dy[gal], oversample=oversample, psf=psf, fast=fast)
    return out


__all__ = ["SourceShapes", "render_models", "shift_psf", "source_shapes"]
