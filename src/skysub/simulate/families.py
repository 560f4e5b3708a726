"""Generator families of extended-emission fields, drawn per field, for training and testing
compact-source removal on maps unlike skysub's classic simulator.

:func:`skysub.simulate.extended.random_field_config` draws one narrow family (log-normal clouds
of P(k) slope 2.5-3.5, filaments, white noise, a 3.5 px beam).  Real maps range much further:
radio continuum maps with P(k) slopes near 0.5 (beam-smoothed noise-like skies), deep optical
frames with steep slopes, 1/f stripes from scanning, beams of 1.5-8 px.  The **training
families** (:data:`TRAINING_FAMILIES`) are

``clouds``
    a log-normal field ``exp(s g - s^2/2)`` of a power-law Gaussian random field ``g``
    (``P(k) ~ k^-slope``, slope 0.5-4.5, contrast ``s`` 0.1-1.5) with 0-5 filaments;
``bubbles``
    the same clouds (contrast 0.1-0.8) with 1-8 shells / bubbles: rings of radius 6-120 px
    and Gaussian width 1-6 px, some partial arcs, their interiors slightly filled;
``knots``
    the clouds with 10-80 point-like knots of emission (Gaussian blobs of 0.6-2 beam sigma,
    half of them clustered along a filament): uncatalogued compact structure that belongs to
    the background and that the removal must leave alone.

Every family adds, per field: a large-scale gradient (linear plus a quadratic bowl, half the
fields), the sky convolved with the beam (half the fields; a real sky is always seen through
it, but the map may hold unresolved noise-like structure), and noise of one kind: white,
smoothed (Gaussian correlation of 0.5-2 px, as map-makers regrid), 1/f stripes along one scan
direction or two crossed ones (cross-linked scans), or smoothed noise plus stripes.  The noise
level is drawn log-uniformly over 0.1-10 (the sky's mean level 2-200).  Beams
(:func:`random_beam`): Gaussian, Airy, Herschel-like three-lobed, Moffat (beta 2.5-4.5) or
elliptical Gaussian (axis ratio 0.6-0.9), FWHM log-uniform in 1.5-8 px.

The **held-out family** (:data:`HELD_OUT_FAMILY`, ``cascade``) is a different field generator,
never drawn by any training configuration: a random multiplicative cascade (the product over
dyadic scales of smoothly interpolated log-normal weights, a multifractal intermittent field
with no Gaussian random field under it), with white or smoothed noise and a beam-convolved
sky.  The removal benchmark's held-out-family evaluation
(``python -m benchmarks.bench_removal --family cascade``) draws its fields from it.
Everything is deterministic from the generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .extended import FieldConfig, filaments, gaussian_random_field
from .psf import FWHM_PER_SIGMA

TRAINING_FAMILIES = ("clouds", "bubbles", "knots")
HELD_OUT_FAMILY = "cascade"
FAMILIES = TRAINING_FAMILIES + (HELD_OUT_FAMILY,)
NOISE_KINDS = ("white", "smoothed", "stripes", "smoothed+stripes")
BEAM_KINDS = ("gaussian", "airy", "herschel", "moffat", "elliptical")
#: the training span of the P(k) slope and the beam FWHM [px]
SLOPE_RANGE = (0.5, 4.5)
FWHM_RANGE = (1.5, 8.0)


@dataclass
class FamilyConfig(FieldConfig):
    """:class:`FieldConfig` plus the settings of the families (lengths in px; amplitudes in
    units of ``level`` unless said otherwise).

    Attributes
    ----------
    family : one of :data:`FAMILIES`
    n_shells, shell_amplitude : shells / bubbles (``bubbles``)
    n_knots, knot_amplitude : point-like knots (``knots``)
    gradient : peak-to-peak amplitude of the large-scale gradient; gradient_angle [rad]
    beam_fwhm : FWHM of the beam the sky is seen through [px]; smooth_sky : convolve with it
    noise_kind : one of :data:`NOISE_KINDS`
    stripe_amplitude : rms of the 1/f stripes in units of ``noise``; stripe_angle [rad];
    stripe_directions : 1 or 2 (crossed scans); stripe_index : ``alpha`` of the 1/f^alpha
    cascade_sigma : log-normal width per dyadic level (``cascade``)
    """

    family: str = "clouds"
    n_shells: int = 0
    shell_amplitude: float = 0.5
    n_knots: int = 0
    knot_amplitude: float = 0.5
    gradient: float = 0.0
    gradient_angle: float = 0.0
    beam_fwhm: float = 3.5
    smooth_sky: bool = False
    noise_kind: str = "white"
    stripe_amplitude: float = 0.0
    stripe_angle: float = 0.0
    stripe_directions: int = 1
    stripe_index: float = 1.0
    cascade_sigma: float = 0.35


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_beam(rng: np.random.Generator, kinds: tuple[str, ...] = BEAM_KINDS,
                fwhm_range: tuple[float, float] = FWHM_RANGE) -> tuple[str, float]:
    """A beam kind (uniform over ``kinds``) and FWHM [px] (log-uniform over ``fwhm_range``)."""
    lo, hi = (float(v) for v in fwhm_range)
    if not 0 < lo <= hi:
        raise InputError(f"beam FWHM range must be 0 < lo <= hi, got {fwhm_range}")
    return str(kinds[int(rng.integers(len(kinds)))]), (lo if lo == hi else _loguniform(rng, lo, hi))


def random_family_config(rng: np.random.Generator, shape: tuple[int, int] = (512, 512), *,
                         families: tuple[str, ...] = TRAINING_FAMILIES,
                         beam_fwhm: float = 3.5,
                         slope_range: tuple[float, float] = SLOPE_RANGE) -> FamilyConfig:
    """Field settings of one field: the family uniform over ``families``, then its parameters
    (module doc).  ``beam_fwhm``: the field's beam [px] (smoothing of sky and noise)."""
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise InputError(f"unknown field families {bad or list(families)}; expected some of "
                         f"{', '.join(FAMILIES)}")
    fam = str(families[int(rng.integers(len(families)))])
    c = FamilyConfig(shape=tuple(shape), family=fam, beam_fwhm=float(beam_fwhm),
                     level=_loguniform(rng, 2.0, 200.0), noise=_loguniform(rng, 0.1, 10.0),
                     slope=float(rng.uniform(*slope_range)), n_filaments=0)
    if fam == HELD_OUT_FAMILY:
        c.cascade_sigma = float(rng.uniform(0.2, 0.5))
        c.smooth_sky = True
        c.noise_kind = str(rng.choice(["white", "smoothed"]))
        c.noise_smoothing = float(rng.uniform(0.5, 2.0)) if c.noise_kind == "smoothed" else 0.0
        return c
    c.sigma_ln = float(rng.uniform(0.1, 0.8 if fam == "bubbles" else 1.5))
    c.n_filaments = int(rng.integers(0, 6 if fam == "clouds" else 3))
    c.filament_amplitude = float(rng.uniform(0.2, 1.5))
    if fam == "bubbles":
        c.n_shells = int(rng.integers(1, 9))
        c.shell_amplitude = float(rng.uniform(0.2, 1.5))
    if fam == "knots":
        c.n_knots = int(rng.integers(10, 81))
        c.knot_amplitude = float(rng.uniform(0.2, 2.0))
    if rng.uniform() < 0.5:
        c.gradient = float(rng.uniform(0.1, 2.0))
        c.gradient_angle = float(rng.uniform(0, 2 * np.pi))
    c.smooth_sky = bool(rng.uniform() < 0.5)
    c.noise_kind = str(NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))])
    if "smoothed" in c.noise_kind:
        c.noise_smoothing = float(rng.uniform(0.5, 2.0))
    if "stripes" in c.noise_kind:
        c.stripe_amplitude = float(rng.uniform(0.3, 2.0))
        c.stripe_angle = float(rng.uniform(0, np.pi))
        c.stripe_directions = int(rng.integers(1, 3))
        c.stripe_index = float(rng.uniform(0.5, 2.0))
    return c


# -- components ---------------------------------------------------------------------------------
def shells(shape: tuple[int, int], n: int, rng: np.random.Generator, *,
           amplitude: float = 1.0) -> np.ndarray:
    """``n`` shells / bubbles: rings of radius 6-120 px with a Gaussian cross-section of
    1-6 px, a third of them partial arcs, each interior filled to 0-30 % of its rim."""
    ny, nx = shape
    out = np.zeros(shape)
    for _ in range(int(n)):
        cx, cy = rng.uniform(0, nx), rng.uniform(0, ny)
        r0 = rng.uniform(6.0, min(120.0, 0.4 * min(nx, ny)))
        ring = shell(shape, cx, cy, r0, rng.uniform(1.0, 6.0), rng.uniform(0, 0.3))
        if rng.uniform() < 1 / 3:  # a partial arc: a smooth angular window
            yy, xx = np.indices(shape, dtype=float)
            t = np.arctan2(yy - cy, xx - cx) - rng.uniform(-np.pi, np.pi)
            ring *= 0.5 * (1 + np.cos(np.angle(np.exp(1j * t)) * rng.uniform(0.5, 1.0)))
        out += ring * amplitude * rng.uniform(0.3, 1.0)
    return out


def shell(shape: tuple[int, int], cx: float, cy: float, radius: float, width: float,
          fill: float = 0.0) -> np.ndarray:
    """One shell: a ring of unit peak at ``radius`` around ``(cx, cy)`` with a Gaussian
    cross-section of sigma ``width`` [px], its interior raised by ``fill``."""
    yy, xx = np.indices(shape, dtype=float)
    r = np.hypot(xx - cx, yy - cy)
    return np.exp(-0.5 * ((r - radius) / width) ** 2) + fill * (r < radius)


def knots(shape: tuple[int, int], n: int, rng: np.random.Generator, *, beam_fwhm: float,
          amplitude: float = 1.0) -> np.ndarray:
    """``n`` point-like knots: Gaussian blobs of sigma 0.6-2 x the beam's, amplitudes
    log-uniform over a decade below ``amplitude``; half of them along a random line."""
    ny, nx = shape
    n = int(n)
    x = rng.uniform(0, nx, n)
    y = rng.uniform(0, ny, n)
    half = n // 2
    if half:
        x0, y0, ang = rng.uniform(0, nx), rng.uniform(0, ny), rng.uniform(0, np.pi)
        t = rng.uniform(-0.4, 0.4, half) * max(nx, ny)
        x[:half] = (x0 + t * np.cos(ang) + rng.normal(0, 4, half)) % nx
        y[:half] = (y0 + t * np.sin(ang) + rng.normal(0, 4, half)) % ny
    s0 = beam_fwhm / FWHM_PER_SIGMA
    out = np.zeros(shape)
    for xi, yi in zip(x, y, strict=True):
        s = s0 * rng.uniform(0.6, 2.0)
        h = int(np.ceil(4 * s)) + 1
        x1, x2 = max(0, int(xi) - h), min(nx, int(xi) + h + 1)
        y1, y2 = max(0, int(yi) - h), min(ny, int(yi) + h + 1)
        gy, gx = np.mgrid[y1:y2, x1:x2]
        a = amplitude * np.exp(rng.uniform(np.log(0.1), 0.0))
        out[y1:y2, x1:x2] += a * np.exp(-0.5 * ((gx - xi) ** 2 + (gy - yi) ** 2) / s ** 2)
    return out


def gradient(shape: tuple[int, int], amplitude: float, angle: float,
             rng: np.random.Generator) -> np.ndarray:
    """A large-scale gradient of peak-to-peak ``amplitude``: a linear ramp along ``angle``
    plus a quadratic bowl of random sign and 0-50 % of the ramp."""
    ny, nx = shape
    yy, xx = np.indices(shape, dtype=float)
    u = ((xx - nx / 2) * np.cos(angle) + (yy - ny / 2) * np.sin(angle)) / max(nx, ny)
    q = ((xx - nx / 2) ** 2 + (yy - ny / 2) ** 2) / max(nx, ny) ** 2
    g = u + rng.uniform(-0.5, 0.5) * q
    span = g.max() - g.min()
    return amplitude * (g - g.mean()) / span if span > 0 else np.zeros(shape)


def stripes(shape: tuple[int, int], rng: np.random.Generator, *, angle: float = 0.0,
            directions: int = 1, index: float = 1.0) -> np.ndarray:
    """Unit-rms 1/f^index stripes from map-making: a random 1-D signal across the scan
    direction ``angle`` (constant along each scan line), plus a second set at right angles for
    ``directions = 2`` (cross-linked scans)."""
    ny, nx = shape
    yy, xx = np.indices(shape, dtype=float)
    out = np.zeros(shape)
    for d in range(int(directions)):
        a = angle + d * np.pi / 2
        # coordinate across the scan lines (pixels of a line share one offset)
        v = -(xx - nx / 2) * np.sin(a) + (yy - ny / 2) * np.cos(a)
        n = int(np.ceil(np.hypot(nx, ny))) + 2
        f = np.fft.rfftfreq(n)
        f[0] = np.inf
        spec = (rng.standard_normal(len(f)) + 1j * rng.standard_normal(len(f))) * f ** (
            -index / 2)
        line = np.fft.irfft(spec, n)
        line -= line.mean()
        out += np.interp(v + n / 2 - 1, np.arange(n), line)
    sd = out.std()
    return out / sd if sd > 0 else out


def cascade(shape: tuple[int, int], rng: np.random.Generator, *, sigma: float = 0.35
            ) -> np.ndarray:
    """A random multiplicative cascade with unit mean: the product over dyadic scales (from
    the field size down to 2 px) of log-normal weights ``exp(sigma w - sigma^2/2)`` on a grid
    of that scale, each interpolated smoothly (cubic) onto the pixels."""
    from scipy.ndimage import zoom

    ny, nx = shape
    n = int(2 ** np.ceil(np.log2(max(ny, nx))))
    out = np.ones((n, n))
    cells = 2
    while cells <= n // 2:
        w = np.exp(sigma * rng.standard_normal((cells, cells)) - 0.5 * sigma ** 2)
        out *= zoom(np.pad(w, 1, mode="wrap"), n / cells, order=3, mode="grid-wrap",
                    grid_mode=True)[n // cells:n // cells + n, n // cells:n // cells + n]
        cells *= 2
    out = np.clip(out[:ny, :nx], 1e-6, None)
    return out / out.mean()


def smooth(image: np.ndarray, fwhm: float) -> np.ndarray:
    """``image`` convolved with a Gaussian of ``fwhm`` [px] (periodic edges)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, fwhm / FWHM_PER_SIGMA, mode="wrap")


def family_field(config: FamilyConfig, rng: np.random.Generator) -> np.ndarray:
    """A source-free map of ``config``'s family (module doc), noise included."""
    from scipy.ndimage import gaussian_filter

    c = config
    if c.family not in FAMILIES:
        raise InputError(f"unknown field family {c.family!r}; expected one of "
                         f"{', '.join(FAMILIES)}")
    if c.family == HELD_OUT_FAMILY:
        sky = c.level * cascade(c.shape, rng, sigma=c.cascade_sigma)
    else:
        g = gaussian_random_field(c.shape, c.slope, rng)
        sky = c.level * np.exp(c.sigma_ln * g - 0.5 * c.sigma_ln ** 2)
        if c.n_filaments:
            sky += filaments(c.shape, c.n_filaments, rng, amplitude=c.filament_amplitude * c.level)
        if c.n_shells:
            sky += shells(c.shape, c.n_shells, rng, amplitude=c.shell_amplitude * c.level)
        if c.n_knots:
            sky += knots(c.shape, c.n_knots, rng, beam_fwhm=c.beam_fwhm,
                         amplitude=c.knot_amplitude * c.level)
        if c.gradient:
            sky += gradient(c.shape, c.gradient * c.level, c.gradient_angle, rng)
    if c.smooth_sky:
        sky = smooth(sky, c.beam_fwhm)
    noise = rng.standard_normal(c.shape)
    if c.noise_smoothing > 0:
        noise = gaussian_filter(noise, c.noise_smoothing)
        noise /= noise.std()
    if c.stripe_amplitude > 0:
        noise = noise + c.stripe_amplitude * stripes(c.shape, rng, angle=c.stripe_angle,
                                                     directions=c.stripe_directions,
                                                     index=c.stripe_index)
        noise /= np.sqrt(1.0 + c.stripe_amplitude ** 2)
    return sky + c.noise * noise


# -- beams ------------------------------------------------------------------------------------
def moffat_psf(size: int, fwhm: float, beta: float = 3.0, *, oversample: int = 5) -> np.ndarray:
    """A Moffat profile ``(1 + (r/alpha)^2)^-beta`` of the given FWHM, unit sum."""
    if not beta > 1:
        raise InputError(f"Moffat beta must be > 1, got {beta}")
    size = size + (size % 2 == 0)
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    g = (np.arange(size * oversample) + 0.5) / oversample - size / 2
    xx, yy = np.meshgrid(g, g)
    img = (1 + (xx ** 2 + yy ** 2) / alpha ** 2) ** -beta
    img = img.reshape(size, oversample, size, oversample).sum(axis=(1, 3))
    return img / img.sum()


def elliptical_psf(size: int, fwhm: float, axis_ratio: float = 0.75, angle: float = 0.5, *,
                   oversample: int = 5) -> np.ndarray:
    """An elliptical Gaussian whose geometric-mean FWHM is ``fwhm`` (minor / major axis
    ``axis_ratio``, major axis at ``angle`` rad), unit sum."""
    if not 0 < axis_ratio <= 1:
        raise InputError(f"axis_ratio must lie in (0, 1], got {axis_ratio}")
    size = size + (size % 2 == 0)
    s = fwhm / FWHM_PER_SIGMA
    sa, sb = s / np.sqrt(axis_ratio), s * np.sqrt(axis_ratio)
    g = (np.arange(size * oversample) + 0.5) / oversample - size / 2
    xx, yy = np.meshgrid(g, g)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    img = np.exp(-0.5 * (u ** 2 / sa ** 2 + v ** 2 / sb ** 2))
    img = img.reshape(size, oversample, size, oversample).sum(axis=(1, 3))
    return img / img.sum()


def family_psf(kind: str, fwhm: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """A unit-sum beam of ``kind`` (:data:`BEAM_KINDS`) and ``fwhm`` [px]; the shape
    parameters (Moffat beta 2.5-4.5, ellipse axis ratio 0.6-0.9 and angle, the Herschel
    lobes' angle) drawn from ``rng`` (fixed defaults without one)."""
    from .extended import make_psf

    size = int(2 * np.ceil(4 * fwhm) + 1)
    if kind == "moffat":
        return moffat_psf(size, fwhm, float(rng.uniform(2.5, 4.5)) if rng is not None else 3.0)
    if kind == "elliptical":
        if rng is None:
            return elliptical_psf(size, fwhm)
        return elliptical_psf(size, fwhm, float(rng.uniform(0.6, 0.9)),
                              float(rng.uniform(0, np.pi)))
    if kind in ("gaussian", "airy", "herschel"):
        return make_psf(kind, fwhm, size)
    raise InputError(f"unknown beam {kind!r}; expected one of {', '.join(BEAM_KINDS)}")
