"""The empty-aperture calibration's noise-level factor (skysub.photometry.emptyaper.level,
``error_calibration="level"``) on simulated frames of known truth: stars of known flux on a
frame whose correlated noise -- which the white-noise model misses -- varies across it with
a known analytic amplitude, and on white noise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from skysub.background.annulus import AnnulusBackground
from skysub.image import Image, ImageMeta
from skysub.photometry import AperturePhotometer
from skysub.photometry.emptyaper import CALIBRATIONS, NoiseLevelFactor, noise_level_factor
from skysub.stats import sigma68

SHAPE = (400, 400)
SIGMA, PERIOD, AMP = 4.0, 200.0, 1.5  # white rms; period and peak of the correlated part
RADIUS, PSF_SIGMA, FLUX = 4.0, 1.2, 300.0


def amplitude(x, y):
    """The correlated noise's rms (in units of the white rms) at ``x, y``: 0 ... AMP."""
    return AMP * (0.5 + 0.5 * np.sin(2 * np.pi * x / PERIOD) * np.sin(2 * np.pi * y / PERIOD))


def _frame(seed: int, amp: float = AMP):
    """White noise plus Gaussian-smoothed (sigma 1.5 px) noise of rms ``amplitude(x, y)``
    (scaled by ``amp / AMP``), and 169 noise-free Gaussian stars of flux FLUX on a 30 px grid
    (jittered); no shot noise (gain 1e9), so the truth is the flux inside the aperture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(float)
    corr = gaussian_filter(rng.normal(0.0, 1.0, SHAPE), 1.5, mode="wrap")
    noise = rng.normal(0.0, 1.0, SHAPE) + (amp / AMP) * amplitude(xx, yy) * corr / corr.std()
    g = np.arange(20.0, SHAPE[0] - 19, 30.0)
    sx, sy = (v.ravel() + rng.uniform(-3, 3, v.size) for v in np.meshgrid(g, g))
    stars = np.zeros(SHAPE)
    for x0, y0 in zip(sx, sy, strict=True):
        stars += (FLUX * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * PSF_SIGMA**2))
                  / (2 * np.pi * PSF_SIGMA**2))
    img = Image(data=200.0 + SIGMA * noise + stars, mask=None, meta=ImageMeta(gain=1e9))
    return img, sx, sy


def _pulls(modes, seeds, amp: float = AMP):
    """Per mode: the stars' known amplitudes, pulls and flux errors over the frames."""
    truth = FLUX * (1.0 - np.exp(-RADIUS**2 / (2 * PSF_SIGMA**2)))
    out = {m: ([], [], []) for m in modes}
    for seed in seeds:
        img, sx, sy = _frame(seed, amp)
        for m in modes:
            r = AperturePhotometer(RADIUS, background=AnnulusBackground(10, 20),
                                   error_calibration=m).measure(img, sx, sy)
            out[m][0].append(amplitude(sx, sy))
            out[m][1].append((np.asarray(r.flux) - truth) / np.asarray(r.flux_err))
            out[m][2].append(np.asarray(r.flux_err))
    return {m: tuple(np.concatenate(v) for v in vals) for m, vals in out.items()}


def _thirds(a, p):
    lo, hi = np.percentile(a, [100 / 3, 200 / 3])
    return [float(sigma68(p[s])) for s in (a <= lo, (a > lo) & (a <= hi), a > hi)]


def test_level_follows_a_known_varying_noise():
    """One factor per frame reads the quiet third's errors too large and the noisy third's
    too small; the position factor does not resolve the pattern either; the noise-level
    factor gives a pull width of 0.9-1.1 in each third (1014 stars over 6 frames: a third's
    width carries +- 0.04 of sampling noise)."""
    res = _pulls(("none", "global", "auto", "level"), range(6))
    white = _thirds(*res["none"][:2])
    glob = _thirds(*res["global"][:2])
    auto = _thirds(*res["auto"][:2])
    lev = _thirds(*res["level"][:2])
    assert min(white) > 1.5  # the white-noise model misses the correlated noise everywhere
    assert glob[0] < 0.7 and glob[2] > 1.15, glob  # one number: wrong at both ends
    assert auto[0] < 0.7 and auto[2] > 1.15, auto  # the position factor smooths it away
    assert all(0.9 <= v <= 1.1 for v in lev), lev
    assert 0.9 <= sigma68(res["level"][1]) <= 1.1


def test_level_on_white_noise_reduces_to_the_old_result():
    """Without correlated noise the noise-level factor changes the pull width by less than
    its sampling noise and the median error by < 2 %."""
    res = _pulls(("auto", "level"), range(4), amp=0.0)
    p_auto, p_lev = sigma68(res["auto"][1]), sigma68(res["level"][1])
    assert 0.93 <= p_auto <= 1.07
    assert abs(p_lev - p_auto) < 0.04, (p_auto, p_lev)
    assert abs(np.median(res["level"][2] / res["auto"][2]) - 1.0) < 0.02


def test_noise_level_factor_recovers_a_power_law():
    """Normalised fluxes whose variance grows as ``(s / s_0)^2`` with a known level ``s``: the
    factor's shape follows it (the ratio of the factor at the 90 % and 10 % levels, a factor
    ~9, within 25 % of the truth: 2000 positions); with the variance independent of ``s`` it
    stays within the sampling noise of flat."""
    rng = np.random.default_rng(3)
    s = np.exp(rng.uniform(np.log(2.0), np.log(8.0), 2000))
    z = rng.normal(0.0, 1.0, s.size) * (s / 4.0)
    f = noise_level_factor(s, z, np.random.default_rng(1))
    assert isinstance(f, NoiseLevelFactor)
    lo, hi = np.percentile(s, [10, 90])
    ratio = float(f(np.array([hi]))[0] / f(np.array([lo]))[0])
    assert ratio == pytest.approx((hi / lo) ** 2, rel=0.25)
    flat = noise_level_factor(s, rng.normal(0.0, 1.0, s.size), np.random.default_rng(1))
    q = flat(np.array([lo, hi]))
    assert 0.75 < q[1] / q[0] < 1.33, q


def test_level_needs_the_sources_levels():
    """A calibration with a noise-level factor refuses to guess the sources' levels."""
    assert "level" in CALIBRATIONS
    img, sx, sy = _frame(0)
    from skysub.photometry.aperture import calibrate_aperture

    phot = AperturePhotometer(RADIUS, background=AnnulusBackground(10, 20),
                              error_calibration="level")
    cal = calibrate_aperture(phot, img, (sx, sy))
    assert cal.level is not None and cal.as_dict()["level"]["n"] > 100
    with pytest.raises(ValueError, match="pixel-noise level"):
        cal.factor(sx, sy)
    q = cal.factor(sx, sy, np.full(sx.size, cal.level.s_ref))
    assert np.all(np.isfinite(q)) and np.all(q > 0)
