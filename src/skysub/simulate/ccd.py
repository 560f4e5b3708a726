"""PAUS-like CCD exposures of one field, with the truth needed to judge background estimators.

An exposure is, in ADU::

    sky(band) x SLT(band, epoch, exposure)          <- the background: known exactly
    + catalogued galaxies (Sérsic * PSF) and stars (Moffat PSF)
    + faint uncatalogued galaxies (they bias local backgrounds, as on the real sky)
    -> Poisson noise in electrons (gain) + Gaussian read noise
    + cosmic rays + hot pixels, saturation at ``saturation`` ADU

Truth per catalogued source: ``bkg_true`` = mean of the noise-free background over the pixels
within 8 px (the BKGnet label aperture), ``flux_true`` = total flux in ADU.

Field sources have fixed sky positions (ra, dec through a TAN WCS, 0.26"/px as PAUS);
repeated exposures are pointed with random offsets, so the same galaxy lands on different pixels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from ..errors import ConfigError, OutputExistsError
from ..image import Image, ImageMeta
from ..progress import progress
from .profiles import sersic_stamps
from .psf import moffat_psf, moffat_stamps
from .scattered import scattered_light_pattern

LABEL_RADIUS = 8.0  # px, BKGnet's label aperture


@dataclass
class CCDSimConfig:
    """Simulation settings (the ``[simulate]`` section of a survey configuration).

    Fluxes: a source of magnitude ``m`` yields ``exptime * 10^(-0.4 (m - zero_point))``
    electrons in total (flat spectrum across bands, plus a per-source colour scatter).
    """

    shape: tuple[int, int] = (512, 1024)  #: (ny, nx)
    bands: list[str] = field(default_factory=lambda: ["NB455", "NB685", "NB845"])
    epochs: list[str] = field(default_factory=lambda: ["before", "after"])
    sky: dict[str, float] = field(default_factory=lambda: {"NB455": 60.0, "NB685": 110.0,
                                                           "NB845": 150.0})  #: ADU / px
    exptime: float = 100.0  #: s
    gain: float = 1.0  #: e-/ADU
    rdnoise: float = 5.0  #: e-
    psf_fwhm: float = 3.5  #: px
    psf_beta: float = 3.0  #: Moffat beta
    n_galaxies: int = 300  #: per 512 x 1024 px of field (counts scale with the area)
    n_stars: int = 30  #: per 512 x 1024 px
    n_faint: int = 600  #: per 512 x 1024 px, uncatalogued
    scattered_light: float = 0.15  #: peak fractional excess at the brightest edge
    scattered_variation: float = 0.1
    cosmic_rays: int = 40
    hot_pixels: int = 20
    zero_point: float = 25.0
    pixel_scale: float = 0.26  #: arcsec / px
    max_offset: float = 30.0  #: px, pointing jitter between exposures
    saturation: float = 65535.0
    colour_scatter: float = 0.2  #: mag, per source and band
    oversample: int = 2  #: sub-pixels per side (the 3x3 central pixels get 8x more)

    def __init__(self, **kwargs):
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ConfigError(f"[simulate]: unknown setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(names))}")
        for f in dataclasses.fields(self):
            if f.name in kwargs:
                val = kwargs[f.name]
            elif f.default is not dataclasses.MISSING:
                val = f.default
            else:
                val = f.default_factory()  # type: ignore[misc]
            setattr(self, f.name, val)
        self.shape = tuple(int(s) for s in self.shape)
        self.bands = [str(b) for b in self.bands]
        self.epochs = [str(e) for e in self.epochs]
        self.sky = {str(k): float(v) for k, v in dict(self.sky).items()}
        missing = [b for b in self.bands if b not in self.sky]
        if missing:
            raise ConfigError(f"[simulate]: no sky level for band(s) {missing}; add them to sky")
        if len(self.shape) != 2 or min(self.shape) < 32:
            raise ConfigError(f"[simulate]: shape must be [ny, nx] >= 32, got {self.shape}")
        for k in ("exptime", "gain", "psf_fwhm"):
            if not float(getattr(self, k)) > 0:
                raise ConfigError(f"[simulate]: {k} must be positive")


def _field_wcs(config: CCDSimConfig, ny: int, nx: int) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [nx / 2 + 0.5, ny / 2 + 0.5]  # FITS 1-based
    s = config.pixel_scale / 3600.0
    w.wcs.cdelt = [-s, s]
    return w


def simulate_field(config: CCDSimConfig, *, seed=None) -> Table:
    """Sources of one field, on the sky.

    Returns a Table with id, ra, dec, kind ("galaxy", "star", "faint"), catalogued (bool), mag,
    r50 [px] (0 for stars), sersic_n, ba, theta [deg], and ``dmag_<band>`` colour offsets.
    The field covers the CCD plus ``max_offset`` on every side.
    """
    rng = np.random.default_rng(seed)
    ny, nx = config.shape
    m = int(np.ceil(config.max_offset)) + 10
    fy, fx = ny + 2 * m, nx + 2 * m
    wcs = _field_wcs(config, fy, fx)
    area = fy * fx / (512.0 * 1024.0)  # source counts are densities per 512 x 1024 px
    ng, ns, nf = (int(round(area * c)) for c in (config.n_galaxies, config.n_stars,
                                                  config.n_faint))
    n = ng + ns + nf
    X = rng.uniform(0, fx - 1, n)
    Y = rng.uniform(0, fy - 1, n)
    ra, dec = wcs.all_pix2world(X, Y, 0)

    def rising(lo, hi, k):  # counts rising as 10^(0.35 m)
        u = rng.uniform(size=k)
        a, b = 10 ** (0.35 * lo), 10 ** (0.35 * hi)
        return np.log10(a + u * (b - a)) / 0.35

    mag = np.concatenate([rising(18.0, 23.0, ng), rng.uniform(16.0, 21.0, ns),
                          rising(23.0, 25.5, nf)])
    kind = np.array(["galaxy"] * ng + ["star"] * ns + ["faint"] * nf)
    r50 = 10 ** rng.normal(np.log10(3.2) - 0.08 * (mag - 20), 0.15)
    r50 = np.clip(r50, 0.8, 10.0)
    r50[kind == "star"] = 0.0
    nser = np.clip(10 ** rng.normal(np.log10(1.5), 0.25, n), 0.5, 4.5)
    ba = rng.uniform(0.3, 1.0, n)
    theta = rng.uniform(0.0, 180.0, n)
    nser[kind == "star"] = np.nan
    ba[kind == "star"] = 1.0
    theta[kind == "star"] = 0.0
    t = Table({"id": np.arange(1, n + 1), "ra": ra, "dec": dec, "kind": kind,
               "catalogued": kind != "faint", "mag": mag, "r50": r50, "sersic_n": nser,
               "ba": ba, "theta": theta})
    for b in config.bands:
        t[f"dmag_{b}"] = rng.normal(0.0, config.colour_scatter, n)
    t.meta["field_shape"] = (fy, fx)
    return t


def exposure_wcs(config: CCDSimConfig, offset: tuple[float, float]) -> WCS:
    """TAN WCS of an exposure pointed ``offset`` = (dx, dy) px from the field centre."""
    ny, nx = config.shape
    w = _field_wcs(config, ny, nx)
    w.wcs.crpix = [nx / 2 + 0.5 - offset[0], ny / 2 + 0.5 - offset[1]]
    return w


def _add_stamps(img: np.ndarray, stamps: np.ndarray, xi: np.ndarray, yi: np.ndarray) -> None:
    """Add (m, s, s) stamps centred on integer pixels (xi, yi), clipped at the edges."""
    ny, nx = img.shape
    s = stamps.shape[-1]
    h = s // 2
    for st, x, y in zip(stamps, xi, yi, strict=True):
        x0, y0 = x - h, y - h
        ax0, ay0 = max(x0, 0), max(y0, 0)
        ax1, ay1 = min(x0 + s, nx), min(y0 + s, ny)
        if ax1 <= ax0 or ay1 <= ay0:
            continue
        img[ay0:ay1, ax0:ax1] += st[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0]


def _label_mean(bkg: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean of ``bkg`` over the pixels whose centres lie within LABEL_RADIUS of (x, y)."""
    from ..stamps import _round_half_up, annulus_offsets, gather

    dx, dy = annulus_offsets(LABEL_RADIUS, 0.0)
    xi, yi = _round_half_up(x), _round_half_up(y)
    vals, valid = gather(bkg, xi, yi, dx, dy)
    r = np.hypot(dx[None] - (x - xi)[:, None], dy[None] - (y - yi)[:, None])
    use = valid & (r <= LABEL_RADIUS)
    with np.errstate(invalid="ignore"):
        return np.where(use, vals, 0).sum(1) / use.sum(1)


def simulate_exposure(config: CCDSimConfig, fieldcat: Table, *, band: str, epoch: str,
                      offset: tuple[float, float] = (0.0, 0.0), seed=None, night: str = "N00",
                      background_factor: np.ndarray | None = None
                      ) -> tuple[Image, Table, np.ndarray]:
    """One exposure of the field.

    ``background_factor`` (ny, nx), optional, multiplies the background (sky x scattered
    light) before the noise: further illumination patterns (:mod:`skysub.simulate.randomised`).

    Returns
    -------
    image : Image (ADU; header with FILTER, EPOCH, EXPTIME, GAIN, RDNOISE, NIGHT and the WCS)
    truth : Table, one row per catalogued source whose centre is on the CCD: id, x, y,
        bkg_true, flux_true, mag, kind, edge_distance
    background : ndarray, the noise-free background (sky x scattered light) in ADU
    """
    if band not in config.bands:
        raise ConfigError(f"band {band!r} is not one of the configured bands {config.bands}")
    rng = np.random.default_rng(seed)
    ny, nx = config.shape
    wcs = exposure_wcs(config, offset)
    slt = scattered_light_pattern((ny, nx), band, epoch, amplitude=config.scattered_light,
                                  seed=rng.integers(2**32), variation=config.scattered_variation)
    background = config.sky[band] * slt
    if background_factor is not None:
        background = background * np.asarray(background_factor, float)
    x, y = wcs.all_world2pix(np.asarray(fieldcat["ra"]), np.asarray(fieldcat["dec"]), 0)
    mag = np.asarray(fieldcat["mag"]) + np.asarray(fieldcat[f"dmag_{band}"])
    flux = config.exptime * 10 ** (-0.4 * (mag - config.zero_point)) / config.gain  # ADU
    kind = np.asarray(fieldcat["kind"])
    signal = np.zeros((ny, nx))
    xi = np.floor(x + 0.5).astype(int)
    yi = np.floor(y + 0.5).astype(int)
    near = (xi > -40) & (xi < nx + 40) & (yi > -40) & (yi < ny + 40)
    psf = moffat_psf(int(2 * np.ceil(3 * config.psf_fwhm) + 1), config.psf_fwhm, config.psf_beta)
    gal = near & (kind != "star")
    r50 = np.asarray(fieldcat["r50"], float)
    sizes = np.where(r50 * 6 + psf.shape[0] < 24, 23, np.where(r50 * 6 + psf.shape[0] < 40,
                                                                 39, 63))
    for s in np.unique(sizes[gal]):
        sel = np.flatnonzero(gal & (sizes == s))
        st = sersic_stamps(int(s), flux[sel], r50[sel], np.asarray(fieldcat["sersic_n"])[sel],
                           ba=np.asarray(fieldcat["ba"])[sel],
                           theta=np.asarray(fieldcat["theta"])[sel], dx=x[sel] - xi[sel],
                           dy=y[sel] - yi[sel], oversample=config.oversample, psf=psf)
        _add_stamps(signal, st, xi[sel], yi[sel])
    star = np.flatnonzero(near & (kind == "star"))
    if len(star):
        st = moffat_stamps(63, config.psf_fwhm, config.psf_beta, x[star] - xi[star],
                           y[star] - yi[star], flux[star])
        _add_stamps(signal, st, xi[star], yi[star])
    electrons = rng.poisson(np.clip((background + signal) * config.gain, 0, None))
    data = electrons / config.gain + rng.normal(0.0, config.rdnoise / config.gain, (ny, nx))
    _cosmic_rays(data, rng, int(config.cosmic_rays))
    hot_rng = np.random.default_rng(7)  # hot pixels belong to the CCD: same in every exposure
    hy, hx = hot_rng.integers(0, ny, config.hot_pixels), hot_rng.integers(0, nx, config.hot_pixels)
    data[hy, hx] += hot_rng.uniform(2e3, 2e4, config.hot_pixels)
    data = np.minimum(data, config.saturation)

    hdr = wcs.to_header()
    hdr["FILTER"] = (band, "band")
    hdr["EPOCH"] = (epoch, "camera epoch")
    hdr["EXPTIME"] = (config.exptime, "[s]")
    hdr["GAIN"] = (config.gain, "[e-/ADU]")
    hdr["RDNOISE"] = (config.rdnoise, "[e-]")
    hdr["NIGHT"] = night
    hdr["BUNIT"] = "ADU"
    hdr["SKYLEVEL"] = (config.sky[band], "simulated sky [ADU/px] before scattered light")
    hdr["SIMSEED"] = (str(seed), "skysub simulate seed")
    meta = ImageMeta(band=band, epoch=epoch, exptime=config.exptime, gain=config.gain,
                     rdnoise=config.rdnoise, night=night)
    image = Image(data=data, mask=None, header=hdr, wcs=wcs, meta=meta)

    cat = np.asarray(fieldcat["catalogued"], bool)
    on = cat & (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    idx = np.flatnonzero(on)
    truth = Table({"id": np.asarray(fieldcat["id"])[idx], "x": x[idx], "y": y[idx],
                   "bkg_true": _label_mean(background, x[idx], y[idx]),
                   "flux_true": flux[idx], "mag": mag[idx], "kind": kind[idx],
                   "edge_distance": np.minimum.reduce([x[idx], y[idx], nx - 1 - x[idx],
                                                       ny - 1 - y[idx]])})
    return image, truth, background


def _cosmic_rays(data: np.ndarray, rng: np.random.Generator, n: int) -> None:
    ny, nx = data.shape
    for _ in range(n):
        length = rng.integers(1, 7)
        ang = rng.uniform(0, np.pi)
        x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
        t = np.arange(length)
        xs = np.clip((x0 + t * np.cos(ang)).astype(int), 0, nx - 1)
        ys = np.clip((y0 + t * np.sin(ang)).astype(int), 0, ny - 1)
        data[ys, xs] += rng.uniform(500.0, 5000.0)


def simulate_survey(out_dir: str | Path, config: CCDSimConfig | None = None, *,
                    n_exposures: int = 12, seed=0, overwrite: bool = False,
                    progress_bar: bool = True, **kwargs) -> dict:
    """Write repeated exposures of one field, its catalogue and the truth.

    Exposure ``k`` is band x epoch number ``k mod (n_bands * n_epochs)`` (bands vary fastest),
    pointed with a random offset of up to ``max_offset`` px.

    Writes ``out_dir/images/<band>_<epoch>_<k>.fits``, ``out_dir/catalog.csv`` (catalogued
    sources: id, ra, dec, mag, r50, sersic_n, ba, theta, kind) and ``out_dir/truth.csv`` (image,
    id, x, y, bkg_true, flux_true, mag, kind, edge_distance, band, epoch).

    Returns a dict with the paths and the number of exposures.
    """
    from astropy.table import vstack

    from ..io import check_output, write_fits_product, write_table

    show = kwargs.pop("progress", progress_bar)
    if kwargs:
        raise TypeError(f"unexpected arguments {sorted(kwargs)}")
    config = config or CCDSimConfig()
    if int(n_exposures) < 1:
        raise ConfigError(f"n_exposures must be >= 1, got {n_exposures}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for p in (out / "catalog.csv", out / "truth.csv"):
        check_output(p, overwrite=overwrite)
    if not overwrite:
        existing = sorted((out / "images").glob("*.fits"))
        if existing:
            raise OutputExistsError(f"{out / 'images'} already holds {len(existing)} FITS files; "
                                    "use --overwrite to replace them")
    else:
        for old in (out / "images").glob("*.fits"):
            old.unlink()
    ss = np.random.SeedSequence(seed)
    field_seed, *exp_seeds = ss.spawn(int(n_exposures) + 1)
    fieldcat = simulate_field(config, seed=np.random.default_rng(field_seed))
    keys = [(b, e) for e in config.epochs for b in config.bands]
    truths, paths = [], []
    for k in progress(range(int(n_exposures)), desc="simulating", quiet=not show,
                      unit="exposure"):
        band, epoch = keys[k % len(keys)]
        rng = np.random.default_rng(exp_seeds[k])
        off = tuple(rng.uniform(-config.max_offset, config.max_offset, 2))
        image, truth, _ = simulate_exposure(config, fieldcat, band=band, epoch=epoch,
                                            offset=off, seed=rng.integers(2**63),
                                            night=f"N{k // len(keys):02d}")
        name = f"{band}_{epoch}_{k:03d}.fits"
        path = write_fits_product(out / "images" / name, image.data.astype(np.float32),
                                  header=image.header, wcs=image.wcs, overwrite=overwrite)
        truth.add_column(name, name="image", index=0)
        truth["band"] = band
        truth["epoch"] = epoch
        truths.append(truth)
        paths.append(path)
    cat = fieldcat[fieldcat["catalogued"]]["id", "ra", "dec", "mag", "r50", "sersic_n", "ba",
                                          "theta", "kind"]
    write_table(cat, out / "catalog.csv", overwrite=overwrite)
    write_table(vstack(truths), out / "truth.csv", overwrite=overwrite)
    return {"images": paths, "catalog": out / "catalog.csv", "truth": out / "truth.csv",
            "n_exposures": int(n_exposures)}
