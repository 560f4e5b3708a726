"""Teahupoo-like galaxy stamps (Lumos §2.2): simulated Sérsic galaxies added to REAL background
cutouts taken at empty positions of exposures (the user's, or the built-in simulator's).

Per stamp:

1. (mag, r50, n, b/a, theta) drawn jointly from a catalogue's rows (the user's, or the built-in
   PAUS-like distribution, :func:`skysub.simulate.trainingdata.galaxy_pool`);
2. the band flux ``exptime 10^(-0.4 (mag + dmag - zero_point)) / gain`` (image units) with a
   per-stamp colour ``dmag ~ N(0, colour_scatter)`` (the paper samples each narrow band's flux
   distribution independently), clipped so that the rate lies in ``flux_range`` (paper:
   0-1000 e-/s);
3. the profile drawn with a sub-pixel offset, pixel-integrated by Gauss-Legendre quadrature
   (``oversample`` nodes per pixel side, 8x more in the central 3 x 3 pixels; exact for
   polynomials of degree 2 oversample - 1 over a pixel, so 4-5 nodes beat the paper's 10x
   equally spaced grid) and convolved with the PSF of the background exposure, all batched
   (:func:`skysub.simulate.profiles.sersic_stamps`: one FFT per batch, where the published code
   convolves one 600 x 600 grid per source);
4. photon noise of the galaxy (Poisson in electrons), then added to the cutout, which already
   carries sky noise, read noise, cosmic rays and neighbours;
5. (skysub's addition) in a fraction ``blend_fraction`` of the stamps a second catalogue galaxy
   -- often brighter than the target -- is drawn ``blend_radius`` px from the centre, so that
   the network learns to keep a neighbour's light out of the target's flux (Lumos §5.3 tests
   this on blends; the published training set only has the neighbours its background cutouts
   happen to hold, none closer than the empty-position radius).

The PSF-convolved MODEL image that Lumos receives as its second input is drawn from the same
catalogue parameters by :func:`model_images` -- the function LumosPhotometer uses at inference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from ..errors import ConfigError

#: typical catalogue shape errors of a detection pipeline (as ``skysub inject --shape-scatter``):
#: r50 (log-normal sigma), b/a, angle [deg], Sersic n
CATALOGUE_SHAPE_ERRORS = {"r50": 0.10, "ba": 0.05, "theta": 10.0, "sersic_n": 0.3}


@dataclass
class GalaxySimSettings:
    """Galaxy-stamp simulation settings (part of the ``[lumos]`` configuration section).

    Attributes
    ----------
    stamp_size : cutout side [px] (Lumos: 60)
    model_size : side of the rendered model image, zero-padded to ``stamp_size`` [px]
    model_oversample : Gauss-Legendre nodes per pixel side of the model image
    oversample : nodes per pixel side of the simulated galaxy (see the module notes)
    zero_point : magnitude of 1 image unit per second in the simulated band
    colour_scatter : sigma of the band - reference magnitude colour [mag]
    flux_range : allowed flux per second (image units / s); paper: 0-1000 e-/s
    psf_fwhm, psf_beta : Moffat PSF of the background exposures [px]
    empty_radius : background positions have no catalogued source within this [px]
    saturation : cutouts with a pixel above this are skipped
    blend_fraction : fraction of stamps that get an injected neighbour galaxy
    blend_radius : (min, max) distance of that neighbour from the target [px]
    blend_dmag : (min, max) of neighbour - target reference magnitude for half of the
        neighbours (mostly brighter ones); the other half are drawn from the catalogue
    prior_free_fraction : fraction of stamps whose flux is drawn, independently of the
        reference magnitude, from the locally flat density ``p(f) ~ 1 / (|f| + knee)`` with
        ``knee = prior_free_knee x sigma_pix`` (the cutout's pixel noise): flat on the scale of
        the noise, log-uniform far above it, and extending to NEGATIVE fluxes down to
        ``-2 knee`` (a galaxy profile subtracted).  A network shown these stamps without the
        magnitude learns the likelihood of the data (see docs/lumos.md).
    shape_scatter : the model image (the network's second input) is drawn from the galaxy's
        shapes with this multiple of :data:`CATALOGUE_SHAPE_ERRORS` (a detection pipeline's
        measurement errors), as a user's catalogue gives them; 0 = the exact shapes
    """

    stamp_size: int = 60
    model_size: int = 31
    model_oversample: int = 3
    oversample: int = 4
    zero_point: float = 23.0
    colour_scatter: float = 0.2
    flux_range: tuple[float, float] = (0.0, 1000.0)
    psf_fwhm: float = 3.5
    psf_beta: float = 3.0
    empty_radius: float = 12.0
    saturation: float = 60000.0
    blend_fraction: float = 0.0
    blend_radius: tuple[float, float] = (2.0, 20.0)
    blend_dmag: tuple[float, float] = (-3.0, 1.0)
    prior_free_fraction: float = 0.0
    prior_free_knee: float = 30.0
    shape_scatter: float = 0.0

    @classmethod
    def from_config(cls, section: dict | None, **overrides: Any) -> GalaxySimSettings:
        section = {**(section or {}), **{k: v for k, v in overrides.items() if v is not None}}
        names = {f.name for f in fields(cls)}
        s = cls(**{k: v for k, v in section.items() if k in names})
        for name in ("flux_range", "blend_radius", "blend_dmag"):
            v = getattr(s, name)
            if np.ndim(v) != 1 or len(v) != 2 or not float(v[0]) < float(v[1]):
                raise ConfigError(f"[lumos]: {name} must be [low, high] with low < high, got {v}")
            setattr(s, name, tuple(float(u) for u in v))
        for name in ("blend_fraction", "prior_free_fraction"):
            if not 0.0 <= getattr(s, name) <= 1.0:
                raise ConfigError(f"[lumos]: {name} must be in [0, 1], got {getattr(s, name)}")
        if s.prior_free_knee <= 0:
            raise ConfigError(f"[lumos]: prior_free_knee must be > 0, got {s.prior_free_knee}")
        if s.shape_scatter < 0:
            raise ConfigError(f"[lumos]: shape_scatter must be >= 0, got {s.shape_scatter}")
        if s.colour_scatter < 0:
            raise ConfigError(f"[lumos]: colour_scatter must be >= 0, got {s.colour_scatter}")
        if s.stamp_size < 16 or s.model_size > s.stamp_size or s.model_size % 2 == 0:
            raise ConfigError(f"[lumos]: need stamp_size >= 16 and an odd model_size <= "
                              f"stamp_size, got {s.stamp_size}, {s.model_size}")
        return s

    def as_dict(self) -> dict:
        d = asdict(self)
        for name in ("flux_range", "blend_radius", "blend_dmag"):
            d[name] = list(getattr(self, name))
        return d


def psf_for(settings: GalaxySimSettings) -> np.ndarray:
    """The Moffat PSF of ``settings`` (odd size covering +-3 FWHM)."""
    from .psf import moffat_psf

    return moffat_psf(int(2 * np.ceil(3 * settings.psf_fwhm) + 1), settings.psf_fwhm,
                      settings.psf_beta)


def pad_center(stamps: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (m, k, k) stamps centred at ``k // 2`` into (m, size, size) centred at
    ``size // 2`` (the :mod:`skysub.stamps` layout)."""
    m, k, _ = stamps.shape
    out = np.zeros((m, size, size), dtype=stamps.dtype)
    o = size // 2 - k // 2
    out[:, o:o + k, o:o + k] = stamps
    return out


def model_images(shapes: Any, psf: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                 settings: GalaxySimSettings, *, fast: bool = False) -> np.ndarray:
    """Unit-total PSF-convolved catalogue models (m, stamp_size, stamp_size), source at
    ``stamp_size // 2 + (dx, dy)``: the second Lumos input, in training and inference alike.
    ``shapes`` is a :class:`skysub.photometry.aperture.SourceShapes`; ``fast``: the compiled
    Sérsic kernel (:func:`skysub.simulate.profiles.sersic_stamps`, ~1e-7 relative)."""
    from .render import render_models

    m = render_models(shapes, psf, settings.model_size, np.asarray(dx, float),
                      np.asarray(dy, float), oversample=settings.model_oversample, fast=fast)
    return pad_center(m, settings.stamp_size)


def band_flux(mag: np.ndarray, dmag: np.ndarray, exptime: float, gain: float,
              settings: GalaxySimSettings) -> np.ndarray:
    """Total flux in image units of galaxies of reference magnitude ``mag`` and colour ``dmag``,
    the rate clipped to ``flux_range``."""
    rate = 10 ** (-0.4 * (np.asarray(mag, float) + dmag - settings.zero_point))
    rate = np.clip(rate, *settings.flux_range)
    return rate * exptime / gain


def render_galaxies(flux: np.ndarray, r50: np.ndarray, n: np.ndarray, ba: np.ndarray,
                    theta: np.ndarray, dx: np.ndarray, dy: np.ndarray, psf: np.ndarray,
                    size: int, oversample: int) -> np.ndarray:
    """Noise-free PSF-convolved Sérsic galaxies on (m, size, size) stamps, batched by a few
    render sizes (23, 39, 59 px, chosen from r50) so small galaxies cost little."""
    from .profiles import sersic_stamps

    m = len(flux)
    out = np.zeros((m, size, size))
    extent = 6 * r50 + psf.shape[0]
    sizes = np.where(extent < 24, 23, np.where(extent < 40, 39, 59))
    sizes = np.minimum(sizes, size - (1 - size % 2))
    for s in np.unique(sizes):
        sel = np.flatnonzero(sizes == s)
        st = sersic_stamps(int(s), flux[sel], r50[sel], n[sel], ba=ba[sel], theta=theta[sel],
                           dx=dx[sel], dy=dy[sel], oversample=oversample, psf=psf)
        out[sel] = pad_center(st, size)
    return out


def add_galaxies(backgrounds: np.ndarray, galaxies: dict[str, np.ndarray], *, exptime: float,
                 gain: float, settings: GalaxySimSettings, rng: np.random.Generator,
                 psf: np.ndarray | None = None, mag: np.ndarray | None = None,
                 neighbour_channel: bool = True, shot_gain: float | None = None
                 ) -> dict[str, np.ndarray]:
    """Add one catalogue-like galaxy (with photon noise) at the centre of every cutout.

    Parameters
    ----------
    backgrounds : (m, S, S) background cutouts (NaN where invalid), image units
    galaxies : dict of joint rows ``mag, r50, sersic_n, ba, theta`` to draw from
    exptime, gain : of the exposure the cutouts come from
    mag : force these reference magnitudes (blending / benchmark set-ups)
    neighbour_channel : also return ``neighbours`` (off: not rendered, and no memory spent)
    shot_gain : e-/unit of the galaxies' photon noise (default ``gain``); infinite for a frame
        whose gain is unknown (``ImageMeta.source_gain``): no photon noise is added, as the
        photometers leave it out of ``flux_err`` there

    Returns
    -------
    dict with ``stamps`` (m, S, S) float32 (NaN where invalid), ``models`` (m, S, S) unit-total
    model images, ``flux_true`` (image units), ``mag``, ``r50``, ``sersic_n``, ``ba``, ``theta``,
    ``dx``, ``dy`` (offset of the galaxy from ``S // 2``), ``prior_free`` (flux drawn from the
    locally flat density, not from ``mag``), ``blend_r``, ``blend_flux`` (the injected
    neighbour's distance [px] and flux; NaN without one), ``neighbours`` (m, S, S) float32: the
    injected neighbour's catalogue model times its :func:`reference_flux` (the neighbour channel;
    only with ``neighbour_channel``).
    """
    from .render import SourceShapes

    s = settings
    m = len(backgrounds)
    psf = psf_for(s) if psf is None else psf
    pick = rng.integers(0, len(galaxies["mag"]), m)
    g = {k: np.asarray(v, float)[pick] for k, v in galaxies.items()}
    if mag is not None:
        g["mag"] = np.broadcast_to(np.asarray(mag, float), (m,)).copy()
    g["sersic_n"] = np.clip(g["sersic_n"], 0.3, 8.0)
    g["ba"] = np.clip(g["ba"], 0.05, 1.0)
    dmag = rng.normal(0.0, s.colour_scatter, m)
    flux = band_flux(g["mag"], dmag, exptime, gain, s)
    free = rng.random(m) < s.prior_free_fraction if s.prior_free_fraction > 0 else np.zeros(m, bool)
    if free.any():
        hi = band_flux(np.min(galaxies["mag"]) - 2 * s.colour_scatter, 0.0, exptime, gain, s)
        flux[free] = locally_flat_flux(rng, pixel_sigma(backgrounds[free]) * s.prior_free_knee,
                                       hi)
    dx, dy = rng.uniform(-0.5, 0.5, (2, m))
    clean = render_galaxies(flux, g["r50"], g["sersic_n"], g["ba"], g["theta"], dx, dy, psf,
                            s.stamp_size, s.oversample)
    nb = _neighbours(g, dx, dy, galaxies, exptime, gain, s, rng, psf, neighbour_channel)
    clean += nb.pop("image")
    # the galaxies' photon noise; the negative profiles of prior-free stamps are subtracted
    # noise-free (only where the sky's noise dominates anyway)
    sg = gain if shot_gain is None else float(shot_gain)
    if np.isfinite(sg):
        noisy = rng.poisson(np.clip(clean, 0, None) * sg) / sg + np.minimum(clean, 0.0)
    else:
        noisy = clean
    stamps = (np.asarray(backgrounds, float) + noisy).astype(np.float32)
    r50, n_, ba, th = g["r50"], g["sersic_n"], g["ba"], g["theta"]
    if s.shape_scatter > 0:  # the catalogue's shapes, measured with a pipeline's errors
        e = {k: v * s.shape_scatter for k, v in CATALOGUE_SHAPE_ERRORS.items()}
        r50 = r50 * np.exp(rng.normal(0, e["r50"], m))
        ba = np.clip(ba + rng.normal(0, e["ba"], m), 0.05, 1.0)
        th = (th + rng.normal(0, e["theta"], m)) % 180.0
        n_ = np.clip(n_ + rng.normal(0, e["sersic_n"], m), 0.3, 8.0)
    shapes = SourceShapes(r50, n_, ba, th, np.zeros(m, bool))
    models = model_images(shapes, psf, dx, dy, s)
    return {"stamps": stamps, "models": models.astype(np.float32), "flux_true": flux,
            "mag": g["mag"], "r50": g["r50"], "sersic_n": g["sersic_n"], "ba": g["ba"],
            "theta": g["theta"], "dx": dx, "dy": dy, "prior_free": free, **nb}


def pixel_sigma(stamps: np.ndarray) -> np.ndarray:
    """Robust pixel noise of each (m, S, S) cutout: 1.4826 x MAD of its finite pixels."""
    v = np.asarray(stamps, float).reshape(len(stamps), -1)
    med = np.nanmedian(v, axis=1)
    return 1.4826 * np.nanmedian(np.abs(v - med[:, None]), axis=1)


def locally_flat_flux(rng: np.random.Generator, knee: np.ndarray, high: float,
                      negative: float = 2.0) -> np.ndarray:
    """Fluxes in [-negative x knee, high] with density ``~ 1 / (max(f, 0) + knee)``: flat for
    f << knee (negative values included), log-uniform for f >> knee -- flat on the scale of
    the noise at every flux when ``knee`` is a few times the faint-source flux error
    (inverse-CDF sampling)."""
    k = np.maximum(np.nan_to_num(np.asarray(knee, float), nan=1.0), 1e-6)
    log_span = np.log((high + k) / k)
    p_neg = negative / (negative + log_span)  # mass of the flat part below 0
    u = rng.random(k.shape)
    neg = u < p_neg
    v = np.where(neg, 0.0, (u - p_neg) / (1 - p_neg))
    pos = k * ((high + k) / k) ** v - k
    return np.where(neg, -negative * k * rng.random(k.shape), pos)


def _neighbours(g: dict, dx: np.ndarray, dy: np.ndarray, galaxies: dict, exptime: float,
                gain: float, s: GalaxySimSettings, rng: np.random.Generator, psf: np.ndarray,
                channel: bool) -> dict[str, np.ndarray]:
    """Noise-free neighbour galaxies for a ``blend_fraction`` of the stamps (see the module
    notes).  Returns ``image`` (m, S, S) and per stamp ``blend_r`` [px] and ``blend_flux``
    (image units), NaN where a stamp has no neighbour; with ``channel`` also ``neighbours``
    (m, S, S): each neighbour's catalogue model times its reference flux."""
    from .profiles import sersic_stamps
    from .render import SourceShapes

    m, S = len(dx), s.stamp_size
    image = np.zeros((m, S, S))
    model = np.zeros((m, S, S), np.float32) if channel else None
    r_out, f_out = np.full(m, np.nan), np.full(m, np.nan)
    sel = np.flatnonzero(rng.random(m) < s.blend_fraction) if s.blend_fraction > 0 else []
    if len(sel):
        k = len(sel)
        pick = rng.integers(0, len(galaxies["mag"]), k)
        h = {c: np.asarray(v, float)[pick] for c, v in galaxies.items()}
        relative = rng.random(k) < 0.5  # half relative to the target (mostly brighter)
        h["mag"] = np.where(relative, g["mag"][sel] + rng.uniform(*s.blend_dmag, k), h["mag"])
        flux = band_flux(h["mag"], rng.normal(0.0, s.colour_scatter, k), exptime, gain, s)
        r = rng.uniform(*s.blend_radius, k)
        ang = rng.uniform(0.0, 2 * np.pi, k)
        ox, oy = dx[sel] + r * np.cos(ang), dy[sel] + r * np.sin(ang)
        shp = SourceShapes(h["r50"], np.clip(h["sersic_n"], 0.3, 8.0), np.clip(h["ba"], 0.05, 1.0),
                           h["theta"], np.zeros(k, bool))
        size = S - (1 - S % 2)  # odd, centred like the target
        st = sersic_stamps(size, flux, shp.r50, shp.n, ba=shp.ba, theta=shp.theta, dx=ox, dy=oy,
                           oversample=s.oversample, psf=psf)
        image[sel] = pad_center(st, S)
        r_out[sel], f_out[sel] = r, flux
        if channel:  # what a catalogue would say of it: its model times its reference flux
            ix, iy = np.rint(ox).astype(int), np.rint(oy).astype(int)
            mdl = model_images(shp, psf, ox - ix, oy - iy, s)
            model[sel] = _shift_int(mdl * reference_flux(h["mag"])[:, None, None], ix, iy)
    out = {"image": image, "blend_r": r_out, "blend_flux": f_out}
    return out | ({"neighbours": model} if channel else {})


def _shift_int(stamps: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """(m, S, S) stamps moved by integer pixels (ix, iy), zero-filled (no wrap-around)."""
    m, S, _ = stamps.shape
    out = np.zeros_like(stamps)
    for j in range(m):
        a, b = int(ix[j]), int(iy[j])
        out[j, max(b, 0):S + min(b, 0), max(a, 0):S + min(a, 0)] = \
            stamps[j, max(-b, 0):S - max(b, 0), max(-a, 0):S - max(a, 0)]
    return out


def band_system_catalog(catalog, simulate: Any, settings: GalaxySimSettings):
    """A copy of the built-in CCD simulator's catalogue (:mod:`skysub.simulate.ccd`; its
    settings ``simulate``, the ``[simulate]`` section or a ``CCDSimConfig``) with its
    magnitudes in the band system of the galaxies this module injects.

    The simulator draws its own sources with ``[simulate] zero_point`` (25) and this module
    injects galaxies with ``settings.zero_point`` (23 in the ``paus`` preset: a narrow band 2 mag
    shallower).  A catalogued source of magnitude ``m`` is then as bright in the pixels as an
    injected one of ``m + settings.zero_point - ccd_zero_point``: that is its magnitude in the
    system the Lumos inputs assume (the catalogue prior, the neighbour channel, the flux-ratio
    deblend).  A real survey's catalogue is one system; the simulator's world was not, and the
    with-magnitude mode read its own sources 2 mag too faint (``python -m
    benchmarks.bench_lumos`` measures both).  The pixels are unchanged."""
    from .ccd import CCDSimConfig

    ccd = simulate if isinstance(simulate, CCDSimConfig) else CCDSimConfig(**(simulate or {}))
    out = catalog.copy()
    if "mag" in getattr(out, "colnames", out):
        out["mag"] = np.asarray(out["mag"], float) + (float(settings.zero_point)
                                                       - float(ccd.zero_point))
    return out


#: reference magnitude of unit expected flux in the neighbour channel
REFERENCE_MAG = 21.0


def reference_flux(mag: Any, unknown: float = 1.0) -> np.ndarray:
    """Expected relative flux ``10^(-0.4 (mag - 21))`` of sources with reference magnitudes
    ``mag`` (``unknown`` where the magnitude is not finite): the weights of the Lumos neighbour
    channel, and the targets' catalogue fluxes of its flux-ratio deblend."""
    m = np.asarray(mag, float)
    with np.errstate(invalid="ignore", over="ignore"):
        f = 10 ** (-0.4 * (m - REFERENCE_MAG))
    return np.where(np.isfinite(f), f, unknown)


def neighbour_map(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, shapes: Any,
                  mag: Any, psf: np.ndarray, settings: GalaxySimSettings,
                  chunk: int = 8192, models: np.ndarray | None = None) -> np.ndarray:
    """Image of ``shape`` holding every catalogued source's unit-total PSF-convolved model times
    its reference flux (:func:`reference_flux`): what the catalogue expects the exposure to
    look like.  Lumos' neighbour channel is this map's cutout minus the target's own model.
    ``models``: the (n, model_size, model_size) models already rendered at each source's
    sub-pixel offset from its rounded pixel (else rendered here)."""
    from ..stamps import _round_half_up
    from .ccd import _add_stamps
    from .render import render_models

    out = np.zeros(shape)
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    w = reference_flux(np.broadcast_to(np.asarray(mag, float), x.shape))
    for s0 in range(0, len(x), chunk):
        ii = np.flatnonzero(ok[s0:s0 + chunk]) + s0
        if not len(ii):
            continue
        xi, yi = _round_half_up(x[ii]), _round_half_up(y[ii])
        if models is not None:
            m = models[ii]
        else:
            m = render_models(shapes.take(ii), psf, settings.model_size, x[ii] - xi, y[ii] - yi,
                              oversample=settings.model_oversample)
        _add_stamps(out, m * w[ii, None, None], xi, yi)
    return out


def background_cutouts(image: Any, cat_xy: tuple[np.ndarray, np.ndarray] | None, n: int,
                       settings: GalaxySimSettings, rng: np.random.Generator
                       ) -> dict[str, np.ndarray]:
    """``n`` cutouts at empty positions of one exposure (no catalogued source within
    ``empty_radius``, none saturated), reusing BKGnet's sampler
    (:func:`skysub.simulate.trainingdata.sample_training_stamps`).  Returns ``stamps`` (NaN
    where invalid) and the positions ``x, y``."""
    from .trainingdata import StampSampling, sample_training_stamps

    bs = StampSampling(stamp_size=settings.stamp_size, inject=False,
                       empty_radius=settings.empty_radius, saturation=settings.saturation,
                       stamps_per_image=int(n))
    d = sample_training_stamps(image, cat_xy, bs, rng, n=int(n))
    return {"stamps": d["stamps"], "x": d["x"], "y": d["y"]}


def simulate_galaxy_stamps(exposures, n_per_exposure: int, settings: GalaxySimSettings, *,
                           galaxies: dict[str, np.ndarray], seed: int = 0,
                           mag: np.ndarray | None = None, quiet: bool = True,
                           neighbour_channel: bool = True,
                           zero_points: Any = None) -> dict[str, np.ndarray]:
    """Teahupoo-like stamps from ``exposures`` (iterable of ``(image, cat_xy)`` or
    ``(image, cat_xy, catalog)``): background cutouts at empty positions plus simulated
    galaxies.  With the exposure's ``catalog`` rows (``x, y``, shapes, optional ``mag``) the
    neighbour channel also holds the catalogued sources around each cutout
    (:func:`neighbour_map`), as :class:`skysub.photometry.lumos.LumosPhotometer` sees them;
    ``neighbour_channel=False`` leaves the channel out (networks without one).

    Returns the arrays of :func:`add_galaxies` concatenated over exposures, plus ``x, y``
    (CCD position of the cutout centre), ``nx, ny`` (image size), ``band``, ``epoch``,
    ``exposure`` (index), ``gain``, ``exptime``.

    ``zero_points`` (one per exposure: ``mag = zp - 2.5 log10(flux in image units)``, the
    user's own, :mod:`skysub.photometry.zeropoint`): a galaxy of catalogue magnitude ``m`` gets
    the flux ``10^(-0.4 (m + colour - zp))`` instead of ``settings.zero_point``'s (no
    ``flux_range`` clipping), and the output gains ``cat_flux``, its colour-free catalogue flux
    in image units.
    """
    from ..progress import progress
    from ..stamps import cutouts
    from .render import source_shapes

    rng = np.random.default_rng(seed)
    psf = psf_for(settings)
    parts: list[dict] = []
    for j, item in enumerate(progress(exposures, desc="simulating galaxies", quiet=quiet,
                                      unit="image")):
        image, cat_xy = item[0], item[1]
        catalog = item[2] if len(item) > 2 else None
        bg = background_cutouts(image, cat_xy, n_per_exposure, settings, rng)
        m = len(bg["x"])
        if m == 0:
            continue
        meta = image.meta
        exptime = meta.exptime or 1.0
        shift, pool, sset = 0.0, galaxies, settings
        if zero_points is not None:  # the band system of this exposure: its own zero point
            shift = (settings.zero_point - float(zero_points[j])
                     + 2.5 * np.log10(exptime / meta.gain))
            pool = {**galaxies, "mag": np.asarray(galaxies["mag"], float) + shift}
            sset = replace(settings, flux_range=(0.0, 1e30))
        d = add_galaxies(bg["stamps"], pool, exptime=exptime, gain=meta.gain,
                         shot_gain=meta.source_gain, settings=sset, rng=rng, psf=psf,
                         mag=None if mag is None else np.resize(mag, m) + shift,
                         neighbour_channel=neighbour_channel)
        if zero_points is not None:
            d["mag"] = d["mag"] - shift
            d["cat_flux"] = 10 ** (-0.4 * (d["mag"] - float(zero_points[j])))
        ny, nx = image.shape
        if neighbour_channel and catalog is not None and len(catalog):
            names = catalog.colnames if hasattr(catalog, "colnames") else list(catalog)
            nmap = neighbour_map(image.shape, np.asarray(catalog["x"], float),
                                 np.asarray(catalog["y"], float),
                                 source_shapes(catalog, len(catalog)),
                                 np.asarray(catalog["mag"], float) if "mag" in names
                                 else np.nan, psf, settings)
            d["neighbours"] += np.nan_to_num(cutouts(nmap, bg["x"], bg["y"],
                                                     settings.stamp_size).data).astype(np.float32)
        d.update(x=bg["x"], y=bg["y"], nx=np.full(m, nx), ny=np.full(m, ny),
                 band=np.array([str(meta.band)] * m, dtype=object),
                 epoch=np.array([str(meta.epoch)] * m, dtype=object),
                 exposure=np.full(m, j), gain=np.full(m, meta.gain),
                 exptime=np.full(m, exptime))
        parts.append(d)
    if not parts:
        from ..errors import InputError

        raise InputError("no background cutouts could be drawn from the exposures (crowded, "
                         "saturated or masked everywhere?)")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


__all__ = ["GalaxySimSettings", "simulate_galaxy_stamps", "band_system_catalog", "add_galaxies",
           "model_images", "locally_flat_flux", "pixel_sigma", "neighbour_map", "reference_flux",
           "background_cutouts", "band_flux", "render_galaxies", "psf_for", "pad_center"]
