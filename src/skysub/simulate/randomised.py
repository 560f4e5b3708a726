"""Domain-randomised CCD exposures: instruments the built-in PAUS-like simulator does not make.

An *instrument* (:func:`random_instrument`) is drawn once from a seed and a
:class:`RandomisedFamily` of parameter ranges: band names and sky levels, gain, read noise,
exposure time, a Moffat PSF (FWHM and beta: beta ~ 2 has strong wings, large beta is nearly
Gaussian), galaxy, faint-galaxy and star densities, cosmic rays, and a set of illumination
patterns beyond the edge bands of :mod:`skysub.simulate.scattered` -- linear gradients, rings,
vignetting and corner glows.  Every exposure of it (:func:`instrument_exposures`) jitters the
sky level, the PSF size, the pattern amplitudes and positions, and may carry bad columns and a
NaN region (masked by :class:`skysub.image.Image`).

Two families are defined so that a model can be measured on a generator configuration it
never saw: ``PRETRAIN`` and ``HELDOUT`` differ in their band names, sky and gain ranges, PSF
ranges and pattern shapes (rings and vignetting appear in ``HELDOUT`` only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ccd import CCDSimConfig, exposure_wcs, simulate_exposure, simulate_field


@dataclass(frozen=True)
class RandomisedFamily:
    """Ranges (lo, hi) an instrument is drawn from; ``patterns`` are the illumination shapes
    it may show (from "gradient", "ring", "vignetting", "corner")."""

    name: str
    bands: tuple[str, ...]
    sky: tuple[float, float]  #: ADU / px, per band
    gain: tuple[float, float]  #: e- / ADU
    rdnoise: tuple[float, float]  #: e-
    exptime: tuple[float, float]  #: s
    psf_fwhm: tuple[float, float]  #: px
    psf_beta: tuple[float, float]
    n_galaxies: tuple[float, float]  #: per 512 x 1024 px
    n_faint: tuple[float, float]
    n_stars: tuple[float, float]
    scattered_light: tuple[float, float]  #: edge-band peak excess
    patterns: tuple[str, ...]
    pattern_amplitude: tuple[float, float]  #: fractional
    cosmic_rays: tuple[float, float]  #: per exposure
    bad_columns: int = 2  #: most bad columns per exposure
    nan_region: float = 0.3  #: probability of a NaN rectangle per exposure


PRETRAIN = RandomisedFamily(
    name="pretrain", bands=("R1", "R2", "R3"), sky=(40.0, 400.0), gain=(0.8, 3.0),
    rdnoise=(3.0, 9.0), exptime=(60.0, 200.0), psf_fwhm=(2.0, 8.0), psf_beta=(2.0, 6.0),
    n_galaxies=(150.0, 450.0), n_faint=(300.0, 1200.0), n_stars=(10.0, 50.0),
    scattered_light=(0.0, 0.25), patterns=("gradient", "corner"),
    pattern_amplitude=(0.0, 0.08), cosmic_rays=(20.0, 120.0))

HELDOUT = RandomisedFamily(
    name="heldout", bands=("Xg", "Xr", "Xi", "Xz"), sky=(80.0, 900.0), gain=(1.5, 4.0),
    rdnoise=(4.0, 12.0), exptime=(90.0, 300.0), psf_fwhm=(2.5, 6.0), psf_beta=(1.8, 4.5),
    n_galaxies=(200.0, 400.0), n_faint=(600.0, 1500.0), n_stars=(20.0, 60.0),
    scattered_light=(0.05, 0.2), patterns=("gradient", "ring", "vignetting", "corner"),
    pattern_amplitude=(0.02, 0.1), cosmic_rays=(40.0, 150.0))

FAMILIES = {f.name: f for f in (PRETRAIN, HELDOUT)}


def _u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(*r))


def random_instrument(family: RandomisedFamily = HELDOUT, *, seed=0,
                      shape: tuple[int, int] = (1024, 1024), n_epochs: int = 2) -> dict:
    """One instrument of ``family``: a :class:`CCDSimConfig` and its illumination patterns."""
    rng = np.random.default_rng(seed)
    bands = list(family.bands)
    cfg = CCDSimConfig(
        shape=shape, bands=bands, epochs=[f"e{k}" for k in range(n_epochs)],
        sky={b: _u(rng, family.sky) for b in bands}, exptime=_u(rng, family.exptime),
        gain=_u(rng, family.gain), rdnoise=_u(rng, family.rdnoise),
        psf_fwhm=_u(rng, family.psf_fwhm), psf_beta=_u(rng, family.psf_beta),
        n_galaxies=int(_u(rng, family.n_galaxies)), n_faint=int(_u(rng, family.n_faint)),
        n_stars=int(_u(rng, family.n_stars)), scattered_light=_u(rng, family.scattered_light),
        scattered_variation=0.2, cosmic_rays=int(_u(rng, family.cosmic_rays)))
    k = int(rng.integers(1, len(family.patterns) + 1))
    chosen = list(rng.choice(family.patterns, size=k, replace=False))
    patterns = [{"kind": str(p), "amplitude": _u(rng, family.pattern_amplitude),
                 "angle": float(rng.uniform(0, 2 * np.pi)), "x0": float(rng.uniform(0, 1)),
                 "y0": float(rng.uniform(0, 1)), "radius": float(rng.uniform(0.2, 0.5)),
                 "width": float(rng.uniform(0.03, 0.1)), "corner": int(rng.integers(4))}
                for p in chosen]
    return {"family": family, "config": cfg, "patterns": patterns}


def illumination(shape: tuple[int, int], patterns: list[dict], rng: np.random.Generator,
                 *, jitter: float = 0.2) -> np.ndarray:
    """Multiplicative illumination of one exposure (>= 0.5): the instrument's patterns with
    their amplitudes jittered by ``1 + jitter N(0, 1)`` and their centres by ~2 % of the CCD."""
    ny, nx = shape
    y, x = np.mgrid[:ny, :nx]
    u, v = x / max(nx - 1, 1), y / max(ny - 1, 1)
    f = np.ones(shape)
    for p in patterns:
        a = p["amplitude"] * max(0.0, 1 + jitter * rng.standard_normal())
        x0 = p["x0"] + 0.02 * rng.standard_normal()
        y0 = p["y0"] + 0.02 * rng.standard_normal()
        if p["kind"] == "gradient":
            t = (u - 0.5) * np.cos(p["angle"]) + (v - 0.5) * np.sin(p["angle"])
            f = f + a * t
        elif p["kind"] == "ring":
            r = np.hypot(u - x0, v - y0)
            f = f + a * np.exp(-0.5 * ((r - p["radius"]) / p["width"]) ** 2)
        elif p["kind"] == "vignetting":
            r2 = (u - 0.5) ** 2 + (v - 0.5) ** 2
            f = f - a * r2 / 0.5
        elif p["kind"] == "corner":
            cu, cv = (p["corner"] % 2), (p["corner"] // 2)
            d = np.hypot(u - cu, v - cv)
            f = f + a * np.exp(-d / (2 * p["width"]))
    return np.clip(f, 0.5, None)


def instrument_exposures(instrument: dict, n_exposures: int, *, seed=0,
                         field_seed=None) -> tuple[list, object]:
    """``n_exposures`` repeated exposures of one field with ``instrument``; as
    :func:`skysub.simulate.trainingdata.simulated_exposures`: a list of (image, cat_xy,
    truth background, truth table) and the catalogue of catalogued sources.

    Exposure ``k`` is band x epoch ``k mod (n_bands n_epochs)`` (bands fastest); each has its
    own sky level (x ``1 + 0.15 N(0, 1)``), PSF FWHM (x ``1 + 0.1 N(0, 1)``), illumination
    jitter, up to ``bad_columns`` NaN columns and, with probability ``nan_region``, a NaN
    rectangle."""
    import dataclasses

    from ..image import Image

    cfg: CCDSimConfig = instrument["config"]
    fam: RandomisedFamily = instrument["family"]
    ss = np.random.SeedSequence(seed)
    fs, *exp_seeds = ss.spawn(int(n_exposures) + 1)
    fieldcat = simulate_field(cfg, seed=np.random.default_rng(fs if field_seed is None
                                                               else field_seed))
    keys = [(b, e) for e in cfg.epochs for b in cfg.bands]
    cat = fieldcat[np.asarray(fieldcat["catalogued"], bool)]
    out = []
    for k in range(int(n_exposures)):
        band, epoch = keys[k % len(keys)]
        rng = np.random.default_rng(exp_seeds[k])
        sky = dict(cfg.sky)
        sky[band] = cfg.sky[band] * max(0.5, 1 + 0.15 * rng.standard_normal())
        ecfg = dataclasses.replace(cfg, sky=sky,
                                   psf_fwhm=cfg.psf_fwhm * max(0.7, 1 + 0.1 *
                                                               rng.standard_normal()))
        offset = tuple(rng.uniform(-cfg.max_offset, cfg.max_offset, 2))
        factor = illumination(cfg.shape, instrument["patterns"], rng)
        image, truth, background = simulate_exposure(ecfg, fieldcat, band=band, epoch=epoch,
                                                     offset=offset, seed=rng,
                                                     background_factor=factor)
        data = image.data.copy()
        ny, nx = data.shape
        for c in rng.integers(0, nx, rng.integers(0, fam.bad_columns + 1)):
            data[:, c] = np.nan
        if rng.uniform() < fam.nan_region:
            h, w = int(rng.integers(20, ny // 6)), int(rng.integers(20, nx // 6))
            y0, x0 = int(rng.integers(0, ny - h)), int(rng.integers(0, nx - w))
            data[y0:y0 + h, x0:x0 + w] = np.nan
        image = Image(data, None, header=image.header, wcs=image.wcs, meta=image.meta)
        image.path = Path(f"{fam.name}_{band}_{epoch}_{k:03d}.fits")
        wcs = exposure_wcs(cfg, offset)
        cx, cy = wcs.all_world2pix(np.asarray(cat["ra"]), np.asarray(cat["dec"]), 0)
        out.append((image, (cx, cy), background, truth))
    return out, cat


__all__ = ["FAMILIES", "HELDOUT", "PRETRAIN", "RandomisedFamily", "illumination",
           "instrument_exposures", "random_instrument"]
