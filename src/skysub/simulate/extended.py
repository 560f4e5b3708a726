"""Extended emission (dust, nebulae, radio continuum) with compact sources, and the truth.

The training and evaluation data of compact-source removal (Madarász et al. §2.3): a
source-free map (the *truth*, noise included, as a real map is), compact sources injected at
flux levels of the paper's Table 1, and the catalogue of what was injected.

Fields are the sum of

- a log-normal intensity field ``I0 exp(s g - s^2 / 2)`` of a power-law Gaussian random field
  ``g`` (``P(k) ~ k^-slope``, slope 2.5-3.5 as measured for the ISM),
- filaments: random smooth curves with a Gaussian cross-section,
- white Gaussian noise (optionally smoothed by the beam, as map-makers do).

Sources are PSFs (Gaussian, Airy-like, a three-lobed Herschel/PACS-like shape, or a PSF image
from FITS) with unit total flux, shifted to sub-pixel positions (Fourier phase ramp) and scaled
to their flux.  Units are "flux per pixel" with fluxes in the same unit summed over pixels
(think mJy/pixel and mJy).  Everything is deterministic from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..errors import InputError
from .psf import FWHM_PER_SIGMA, gaussian_psf, load_psf

#: Madarász et al. Table 1: flux density levels [mJy].
FLUX_LEVELS = np.array([10, 20, 40, 60, 80, 100, 125, 150, 175, 200, 250, 300, 350, 400, 500,
                        600, 700, 800, 900, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 3500, 4000,
                        4500, 5000, 6000, 7000, 8000, 9000, 10000, 11000, 12000, 13000, 14000,
                        15000, 16000, 18000, 20000, 22500, 25000, 27500, 30000, 32500, 35000,
                        37500, 40000], float)

PSF_KINDS = ("gaussian", "airy", "herschel")


# -- fields -----------------------------------------------------------------------------------
def gaussian_random_field(shape: tuple[int, int], slope: float, rng: np.random.Generator
                          ) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with ``P(k) ~ k^-slope``."""
    ny, nx = shape
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    k = np.hypot(kx, ky)
    k[0, 0] = np.inf
    amp = k ** (-slope / 2.0)
    noise = rng.standard_normal((ny, nx // 2 + 1)) + 1j * rng.standard_normal((ny, nx // 2 + 1))
    g = np.fft.irfft2(noise * amp, s=(ny, nx))
    g -= g.mean()
    sd = g.std()
    return g / sd if sd > 0 else g


def filaments(shape: tuple[int, int], n: int, rng: np.random.Generator, *,
              width: tuple[float, float] = (2.0, 6.0), amplitude: float = 1.0) -> np.ndarray:
    """``n`` smooth random curves with Gaussian cross-sections (peak ~``amplitude``)."""
    from scipy.ndimage import gaussian_filter

    ny, nx = shape
    out = np.zeros(shape)
    for _ in range(int(n)):
        layer = np.zeros(shape)
        length = rng.uniform(0.3, 1.0) * max(nx, ny)
        steps = int(length * 2)
        angle = rng.uniform(0, 2 * np.pi)
        turn = np.cumsum(rng.normal(0, 0.04, steps))  # slowly bending direction
        ang = angle + turn
        x = rng.uniform(0, nx) + np.cumsum(0.5 * np.cos(ang))
        y = rng.uniform(0, ny) + np.cumsum(0.5 * np.sin(ang))
        ok = (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
        np.add.at(layer, (y[ok].astype(int), x[ok].astype(int)), 1.0)
        w = rng.uniform(*width)
        layer = gaussian_filter(layer, w)
        peak = layer.max()
        if peak > 0:
            out += layer / peak * amplitude * rng.uniform(0.3, 1.0)
    return out


@dataclass
class FieldConfig:
    """Settings of one simulated extended-emission field (all lengths in px).

    Attributes
    ----------
    shape : (ny, nx)
    level : mean intensity of the log-normal component
    sigma_ln : log-normal width ``s`` (contrast of the clouds)
    slope : power-law index of the random field
    n_filaments, filament_amplitude : filaments (amplitude in units of ``level``)
    noise : white-noise sigma per pixel (before beam smoothing)
    noise_smoothing : Gaussian sigma of the noise correlation [px] (0 = white)
    """

    shape: tuple[int, int] = (512, 512)
    level: float = 20.0
    sigma_ln: float = 0.6
    slope: float = 3.0
    n_filaments: int = 3
    filament_amplitude: float = 1.0
    noise: float = 1.0
    noise_smoothing: float = 0.0


def extended_field(config: FieldConfig, rng: np.random.Generator) -> np.ndarray:
    """A source-free map: log-normal clouds + filaments + noise (see module doc)."""
    from scipy.ndimage import gaussian_filter

    c = config
    g = gaussian_random_field(c.shape, c.slope, rng)
    field_ = c.level * np.exp(c.sigma_ln * g - 0.5 * c.sigma_ln ** 2)
    if c.n_filaments:
        field_ += filaments(c.shape, c.n_filaments, rng, amplitude=c.filament_amplitude * c.level)
    noise = rng.standard_normal(c.shape)
    if c.noise_smoothing > 0:
        noise = gaussian_filter(noise, c.noise_smoothing)
        noise /= noise.std()
    return field_ + c.noise * noise


def random_field_config(rng: np.random.Generator, shape: tuple[int, int] = (512, 512)
                        ) -> FieldConfig:
    """Field settings drawn to span faint smooth skies to bright, structured clouds."""
    return FieldConfig(shape=tuple(shape), level=float(np.exp(rng.uniform(np.log(2), np.log(200)))),
                       sigma_ln=float(rng.uniform(0.2, 1.0)), slope=float(rng.uniform(2.5, 3.5)),
                       n_filaments=int(rng.integers(0, 6)),
                       filament_amplitude=float(rng.uniform(0.2, 1.5)),
                       noise=float(np.exp(rng.uniform(np.log(0.3), np.log(3.0)))),
                       noise_smoothing=float(rng.choice([0.0, 0.0, 0.7, 1.2])))


# -- PSFs -------------------------------------------------------------------------------------
def airy_psf(size: int, fwhm: float, *, oversample: int = 5) -> np.ndarray:
    """Airy pattern with the given FWHM (first dark ring at 1.22 lambda/D = 1.186 FWHM)."""
    from scipy.special import j1

    size = size + (size % 2 == 0)
    g = (np.arange(size * oversample) + 0.5) / oversample - size / 2
    xx, yy = np.meshgrid(g, g)
    r = np.hypot(xx, yy)
    v = np.pi * r / (fwhm / 1.029)  # FWHM = 1.029 lambda/D
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(v > 0, (2 * j1(v) / v) ** 2, 1.0)
    img = a.reshape(size, oversample, size, oversample).sum(axis=(1, 3))
    return img / img.sum()


def herschel_like_psf(size: int, fwhm: float, *, lobe_fraction: float = 0.12,
                      wing_fraction: float = 0.05, angle: float = 0.0,
                      oversample: int = 5) -> np.ndarray:
    """A three-lobed PSF reminiscent of Herschel/PACS (Lutz 2015): a Gaussian core, three
    elongated lobes 120 degrees apart at ~1.3 FWHM, and a faint broad wing.  Unit sum."""
    size = size + (size % 2 == 0)
    s = fwhm / FWHM_PER_SIGMA
    g = (np.arange(size * oversample) + 0.5) / oversample - size / 2
    xx, yy = np.meshgrid(g, g)
    img = np.exp(-0.5 * (xx ** 2 + yy ** 2) / s ** 2) / (2 * np.pi * s ** 2)
    img *= 1.0 - lobe_fraction - wing_fraction
    for k in range(3):
        t = np.deg2rad(angle + 120.0 * k)
        cx, cy = 1.3 * fwhm * np.cos(t), 1.3 * fwhm * np.sin(t)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        su, sv = 0.6 * s, 1.4 * s  # lobes elongated tangentially
        img += lobe_fraction / 3 * np.exp(-0.5 * (u ** 2 / su ** 2 + v ** 2 / sv ** 2)) / (
            2 * np.pi * su * sv)
    sw = 3.0 * s
    img += wing_fraction * np.exp(-0.5 * (xx ** 2 + yy ** 2) / sw ** 2) / (2 * np.pi * sw ** 2)
    img = img.reshape(size, oversample, size, oversample).mean(axis=(1, 3))
    return img / img.sum()


def make_psf(kind: str | Path = "gaussian", fwhm: float = 3.5, size: int | None = None
             ) -> np.ndarray:
    """A unit-sum PSF image: ``gaussian``, ``airy``, ``herschel`` or the path of a FITS PSF."""
    if size is None:
        size = int(2 * np.ceil(4 * fwhm) + 1)
    if not fwhm > 0:
        raise InputError(f"PSF fwhm must be positive, got {fwhm}")
    if kind == "gaussian":
        return gaussian_psf(size, fwhm)
    if kind == "airy":
        return airy_psf(size, fwhm)
    if kind == "herschel":
        return herschel_like_psf(size, fwhm)
    if isinstance(kind, Path) or str(kind).lower().endswith((".fits", ".fit", ".fits.gz")):
        return load_psf(kind)
    raise InputError(f"unknown PSF {kind!r}; expected one of {', '.join(PSF_KINDS)} or a FITS "
                     "file")


# -- sources ----------------------------------------------------------------------------------
def inject_sources(image: np.ndarray, psf: np.ndarray, x: np.ndarray, y: np.ndarray,
                   flux: np.ndarray) -> np.ndarray:
    """``image`` plus PSFs of total ``flux`` at ``(x, y)`` (0-based px), a new array.

    The PSF is Fourier-shifted to each sub-pixel position (no interpolation smoothing); light
    falling off the image is lost, as in a real map.
    """
    from ..stamps import _round_half_up
    from .render import shift_psf

    out = np.array(image, float, copy=True)
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    flux = np.broadcast_to(np.asarray(flux, float), x.shape)
    if len(x) == 0:
        return out
    size = psf.shape[0] + (psf.shape[0] % 2 == 0)
    xi, yi = _round_half_up(x), _round_half_up(y)
    stamps = shift_psf(psf, size, x - xi, y - yi) * flux[:, None, None]
    h = size // 2
    off = np.arange(size) - h
    yy = yi[:, None, None] + off[None, :, None] + 0 * off[None, None, :]
    xx = xi[:, None, None] + off[None, None, :] + 0 * off[None, :, None]
    ny, nx = out.shape
    ok = (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
    np.add.at(out, (yy[ok], xx[ok]), stamps[ok])
    return out


@dataclass
class ExtendedSim:
    """A simulated map: ``image`` (with sources), ``truth`` (source-free), the catalogue
    (id, x, y, flux, level) of the injected sources, the PSF and the field settings."""

    image: np.ndarray
    truth: np.ndarray
    catalog: Table
    psf: np.ndarray
    field: FieldConfig
    seed: int | None = None
    extra: dict = field(default_factory=dict)


def flux_levels_for(noise: float, psf: np.ndarray, *, min_snr: float = 3.0,
                    max_snr: float = 3000.0) -> np.ndarray:
    """The Table 1 levels whose peak SNR (flux x PSF peak / noise) lies in [min_snr, max_snr]
    (the paper's per-field min/max: faint enough to be barely visible, bright but real)."""
    peak = FLUX_LEVELS * float(psf.max()) / noise
    sel = FLUX_LEVELS[(peak >= min_snr) & (peak <= max_snr)]
    return sel if sel.size else FLUX_LEVELS[[np.argmin(np.abs(peak - min_snr))]]


def simulate_extended(config: FieldConfig | None = None, *, n_sources: int | None = None,
                      flux: float | np.ndarray | None = None, psf: np.ndarray | str = "gaussian",
                      psf_fwhm: float = 3.5, margin: float = 0.0, seed: int | None = 0,
                      truth: np.ndarray | None = None) -> ExtendedSim:
    """One simulated map with compact sources on extended emission.

    Parameters
    ----------
    config : FieldConfig, optional
        Field settings (default: drawn at random from the seed).
    n_sources : int, optional
        Number of injected sources (default 25-210 scaled to the area, as the paper).
    flux : float or array, optional
        Source flux(es); default one Table 1 level per source, drawn from the levels visible
        against this field's noise (:func:`flux_levels_for`).
    psf : array or {"gaussian", "airy", "herschel"} or FITS path
    psf_fwhm : FWHM [px] of the named PSFs
    margin : keep sources this far [px] from the edges
    seed : int
    truth : array, optional
        A source-free map of the user's to inject into instead of a simulated field.

    Returns
    -------
    ExtendedSim
    """
    rng = np.random.default_rng(seed)
    if truth is None:
        config = config or random_field_config(rng)
        truth = extended_field(config, rng)
    else:
        truth = np.asarray(truth, float)
        if truth.ndim != 2:
            raise InputError(f"truth map must be 2-D, got shape {truth.shape}")
        config = config or FieldConfig(shape=truth.shape, noise=float(np.nanstd(truth)))
    kernel = make_psf(psf, psf_fwhm) if not isinstance(psf, np.ndarray) else psf / psf.sum()
    ny, nx = truth.shape
    if n_sources is None:
        n_sources = int(np.clip(round(rng.uniform(25, 210) * nx * ny / 512 ** 2), 1, 210))
    x = rng.uniform(margin - 0.5, nx - 0.5 - margin, n_sources)
    y = rng.uniform(margin - 0.5, ny - 0.5 - margin, n_sources)
    if flux is None:
        levels = flux_levels_for(config.noise, kernel)
        f = rng.choice(levels, n_sources)
    else:
        f = np.broadcast_to(np.asarray(flux, float), (n_sources,)).copy()
    image = inject_sources(truth, kernel, x, y, f)
    cat = Table({"id": np.arange(1, n_sources + 1), "x": x, "y": y, "flux": f})
    cat["peak_snr"] = f * kernel.max() / config.noise
    return ExtendedSim(image=image, truth=truth, catalog=cat, psf=kernel, field=config,
                       seed=seed)
