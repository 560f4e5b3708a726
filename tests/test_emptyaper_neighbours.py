"""The empty-aperture calibration's neighbour factor (skysub.photometry.emptyaper.NeighbourFactor)
on simulated frames of known white noise with catalogued bright stars whose wings reach into
the annuli of the positions around them: faint injected stars and the same positions on the
frame without them (the null: true flux 0) must get honest errors whatever their distance to
the catalogued stars -- the calibration before the neighbour factor gave those further from
the stars than the average empty position errors too large."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from skysub.background.annulus import AnnulusBackground
from skysub.image import Image, ImageMeta
from skysub.inject import InjectionSettings, parse_methods, run_injection
from skysub.photometry import AperturePhotometer
from skysub.simulate.psf import moffat_psf
from skysub.stats import sigma68

SIGMA, SKY, SHAPE = 10.0, 100.0, (256, 256)
N_FRAMES = 14


def _frame(seed: int, n_stars: int = 40) -> tuple[Image, Table]:
    """White noise (sigma 10 ADU) and ``n_stars`` catalogued Moffat stars (FWHM 3.5, beta 3)
    of 2e3-1e5 ADU; the gain is large, so the noise is the known white noise only."""
    rng = np.random.default_rng([seed, 23])
    d = SKY + rng.normal(0.0, SIGMA, SHAPE)
    x, y = rng.uniform(5, SHAPE[1] - 5, n_stars), rng.uniform(5, SHAPE[0] - 5, n_stars)
    flux = 10 ** rng.uniform(np.log10(2e3), 5.0, n_stars)
    h = 20
    for xi, yi, f in zip(x, y, flux, strict=True):
        cx, cy = int(round(xi)), int(round(yi))
        p = f * moffat_psf(2 * h + 1, 3.5, dx=xi - cx, dy=yi - cy)
        y0, y1 = max(cy - h, 0), min(cy + h + 1, SHAPE[0])
        x0, x1 = max(cx - h, 0), min(cx + h + 1, SHAPE[1])
        d[y0:y1, x0:x1] += p[y0 - cy + h:y1 - cy + h, x0 - cx + h:x1 - cx + h]
    img = Image(d, np.zeros(SHAPE, bool), meta=ImageMeta(gain=1e6))
    return img, Table({"id": np.arange(1, n_stars + 1), "x": x, "y": y})


def _faint_pulls(separation: float, n_stars: int = 40,
                 mode: str = "neighbours") -> tuple[np.ndarray, np.ndarray]:
    """Pulls of the faint (SNR < 30) injected stars and of the same positions on the frame
    without them, aperture r = 5 px with a 10-20 px annulus, ``error_calibration`` = ``mode``."""
    inj_pulls, null_pulls = [], []
    st = InjectionSettings(kind="star", n_per_image=40, snr=(5.0, 30.0), radius=5.0,
                           psf_fwhm=3.5, min_separation=separation, poisson=False)
    phot = AperturePhotometer(5.0, background=AnnulusBackground(10, 20, statistic="mean"),
                              error_calibration=mode)
    for s in range(N_FRAMES):
        img, cat = _frame(s, n_stars)
        res = run_injection([img], cat, parse_methods("aperture", "annulus"), st, seed=s,
                            quiet=True, keep_images=True,
                            photometer_kwargs={"error_calibration": mode})
        rec = res["recovered"]
        faint = np.asarray(rec["snr"]) < 30  # all of them
        inj_pulls.append(np.asarray(rec["pull"], float)[faint])
        full = res["catalogs"][0]
        xx, yy = np.asarray(full["x"], float), np.asarray(full["y"], float)
        r = phot.measure(img, xx, yy, neighbours=(xx, yy))
        n0 = len(full) - len(rec)
        null_pulls.append((np.asarray(r.flux) / np.asarray(r.flux_err))[n0:][faint])
    return np.concatenate(inj_pulls), np.concatenate(null_pulls)


@pytest.mark.parametrize("separation", [15.0, 20.0])
def test_faint_pulls_honest_at_every_separation(separation):
    inj, null = _faint_pulls(separation)
    assert inj.size > 150
    assert 0.9 <= sigma68(inj) <= 1.1, sigma68(inj)
    assert 0.9 <= sigma68(null) <= 1.1, sigma68(null)


def test_without_neighbour_factor_the_isolated_errors_are_too_large():
    """The same frames and injections at 20 px: the default calibration (the average over the
    empty positions) gives pulls well below 1 (the diagnosis of docs/photometry.md)."""
    inj, null = _faint_pulls(20.0, mode="auto")
    assert sigma68(inj) < 0.87 and sigma68(null) < 0.87, (sigma68(inj), sigma68(null))


def test_factor_follows_distance_and_is_recorded():
    """The empty positions next to the stars are biased low (the stars' light in their
    annulus) and, on average over frames, noisier than those far from them; the meta records
    both."""
    ratios = []
    for seed in range(4):
        img, cat = _frame(seed)
        xy = (np.asarray(cat["x"]), np.asarray(cat["y"]))
        r = AperturePhotometer(5.0, background=AnnulusBackground(10, 20),
                               error_calibration="neighbours").measure(img, xy[0], xy[1])
        nb = r.meta["error_calibration"]["neighbour"]
        assert nb["bias_shrink"] > 0.5 and min(nb["bias_at_distance_percentiles"]) < -0.3
        q = nb["q_at_distance_percentiles"]
        ratios.append(q[0] / q[-1])
    assert np.mean(ratios) > 1.3, ratios


def test_default_has_no_neighbour_factor():
    """The neighbour factor is opt-in: the default calibration records none."""
    img, cat = _frame(0)
    r = AperturePhotometer(5.0, background=AnnulusBackground(10, 20)).measure(
        img, np.asarray(cat["x"]), np.asarray(cat["y"]))
    assert r.meta["error_calibration"].get("neighbour") is None


def test_frame_without_neighbours_unchanged():
    """White noise, sources on a 45 px grid (no source's light reaches another's annulus):
    the neighbour factor finds nothing to model and the errors are those of the position
    factor alone within 2 %; faint stars injected on a frame without catalogued stars keep
    honest pulls."""
    rng = np.random.default_rng(5)
    img = Image(SKY + rng.normal(0.0, SIGMA, SHAPE), np.zeros(SHAPE, bool),
                meta=ImageMeta(gain=1e6))
    g = np.arange(20.0, 250.0, 45.0)
    x, y = (v.ravel() + rng.uniform(-5, 5, v.size) for v in np.meshgrid(g, g))
    new = AperturePhotometer(5.0, background=AnnulusBackground(10, 20),
                             error_calibration="neighbours").measure(img, x, y)
    nb = new.meta["error_calibration"]["neighbour"]
    old = AperturePhotometer(5.0, background=AnnulusBackground(10, 20)).measure(img, x, y)
    ratio = np.asarray(new.flux_err) / np.asarray(old.flux_err)
    assert nb["shrink"] < 0.2, nb
    assert np.all(np.abs(ratio - 1.0) < 0.02), ratio
    inj, null = _faint_pulls(15.0, n_stars=0)
    assert 0.9 <= sigma68(inj) <= 1.1 and 0.9 <= sigma68(null) <= 1.1
