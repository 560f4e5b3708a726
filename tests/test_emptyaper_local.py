"""The empty-aperture calibration's local factor (skysub.photometry.emptyaper.LocalFactor) on
simulated frames whose noise changes across the frame in a known way, and its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from scipy.ndimage import gaussian_filter, uniform_filter

from skysub.background.annulus import AnnulusBackground
from skysub.image import Image
from skysub.inject import InjectionSettings, parse_methods, run_injection
from skysub.photometry import AperturePhotometer
from skysub.photometry.aperture import calibrate_aperture
from skysub.photometry.emptyaper import local_factor
from skysub.stats import sigma68

SIGMA = 4.0
SHAPE = (420, 420)


def _ramp(nx: int) -> np.ndarray:
    """0 on the left 30 % of the frame, 1 on the right 30 %, linear between."""
    return np.clip((np.arange(nx) - 0.3 * nx) / (0.4 * nx), 0.0, 1.0)[None, :]


def _varying(kind: str, seed: int = 0) -> Image:
    """White noise on the left; on the right either correlated noise of the same pixel rms
    (``"corr"``: a 3 x 3 box, so the pixel statistics the annulus sees do not change while
    the variance of an aperture sum grows several times) or unresolved structure
    (``"struct"``: a 4 px smooth field of 0.5 x the pixel rms on top of the white noise)."""
    rng = np.random.default_rng(seed)
    w = _ramp(SHAPE[1])
    white = rng.normal(0.0, 1.0, SHAPE)
    if kind == "corr":
        corr = uniform_filter(rng.normal(0.0, 1.0, SHAPE), 3, mode="wrap")
        noise = SIGMA * (np.sqrt(1 - w) * white + np.sqrt(w) * corr / corr.std())
    else:
        field = gaussian_filter(rng.normal(0.0, 1.0, SHAPE), 4.0, mode="wrap")
        noise = SIGMA * white + 0.5 * SIGMA * w * field / field.std()
    return Image(data=200.0 + noise, mask=None)


def _true_spread(kind: str, phot: AperturePhotometer, xs: float) -> float:
    """Spread of the photometer's flux at empty positions near column ``xs``, measured on 6
    other noise realisations of the same frame (the truth the errors should follow)."""
    vals = []
    for seed in range(10, 16):
        img = _varying(kind, seed)
        yy = np.arange(30.0, SHAPE[0] - 30.0, 24.0)
        xx = np.full(yy.size, xs)
        r = phot.measure(img, np.r_[xx - 12.0, xx + 12.0], np.r_[yy, yy + 12.0])
        vals.append(np.asarray(r.flux))
    return float(sigma68(np.concatenate(vals)))


@pytest.mark.parametrize("kind", ["corr", "struct"])
def test_local_errors_follow_the_true_noise(kind):
    """Errors at the quiet (left) and noisy (right) sides: the local calibration follows the
    true ratio of the flux spreads there; one fit per frame cannot (its ratio is ~1)."""
    img = _varying(kind)
    bg = AnnulusBackground(10, 20)
    xs = np.array([60.0, 60.0, 360.0, 360.0])
    ys = np.array([100.0, 300.0, 100.0, 300.0])
    loc = AperturePhotometer(5.0, background=bg).measure(img, xs, ys)
    glo = AperturePhotometer(5.0, background=bg, error_calibration="global").measure(img, xs,
                                                                                     ys)
    truth = _true_spread(kind, AperturePhotometer(5.0, background=bg,
                                                  error_calibration="none"), 360.0) / \
        _true_spread(kind, AperturePhotometer(5.0, background=bg,
                                              error_calibration="none"), 60.0)
    assert truth > 1.4  # the simulation does make the right side noisier
    ratio_loc = np.mean(loc.flux_err[2:]) / np.mean(loc.flux_err[:2])
    ratio_glo = np.mean(glo.flux_err[2:]) / np.mean(glo.flux_err[:2])
    assert ratio_loc == pytest.approx(truth, rel=0.2), (ratio_loc, truth)
    assert abs(ratio_glo - 1.0) < 0.15 < abs(ratio_glo - truth)  # the single fit fails there
    lf = loc.meta["error_calibration"]["local"]
    assert lf["shrink"] > 0.5  # the variation is far above the sampling noise
    assert loc.extra["err_local"][2] > 1.2 > 0.95 > loc.extra["err_local"][0]
    assert glo.meta["error_calibration"]["local"] is None
    assert np.all(glo.extra["err_local"] == 1.0)


def test_local_pulls_honest_on_both_sides():
    """Injected stars: with one fit per frame the pulls are too narrow on the quiet side and
    too wide on the noisy one; with the local factor both are honest."""
    img = _varying("corr", seed=1)
    settings = InjectionSettings(kind="star", n_per_image=80, snr=(5.0, 60.0), radius=5.0,
                                 psf_fwhm=3.0, min_separation=22.0)
    widths = {}
    for cal in ("global", "auto"):
        res = run_injection([img], Table({"id": [1], "x": [5.0], "y": [5.0]}),
                            parse_methods("aperture", "annulus"), settings, realisations=3,
                            seed=5, quiet=True, photometer_kwargs={"error_calibration": cal})
        t = res["recovered"]
        x, pull = np.asarray(t["x"], float), np.asarray(t["pull"], float)
        widths[cal] = (sigma68(pull[x < 150]), sigma68(pull[x > 270]))
    left, right = widths["global"]
    assert left < 0.8 and right > 1.2, widths
    for w in widths["auto"]:
        assert 0.8 < w < 1.2, widths


def test_uniform_noise_keeps_one_factor():
    """White noise everywhere: the local factor is shrunk to the frame's (no added noise)."""
    rng = np.random.default_rng(3)
    img = Image(data=200.0 + rng.normal(0.0, SIGMA, (400, 400)), mask=None)
    r = AperturePhotometer(5.0, background=AnnulusBackground(10, 20)).measure(
        img, np.array([50.0, 200.0, 350.0]), np.array([50.0, 200.0, 350.0]))
    lf = r.meta["error_calibration"]["local"]
    assert lf["shrink"] < 0.35
    assert lf["q_percentiles"][2] / lf["q_percentiles"][0] < 1.3
    assert np.all(np.abs(np.asarray(r.extra["err_local"]) - 1.0) < 0.1)


def test_local_factor_shrinkage_on_known_z():
    """``local_factor`` on synthetic normalised fluxes: a step in the noise by 2x is found
    (q ~ 4 on the noisy side, ~1 on the quiet one); i.i.d. ones give shrink ~ 0."""
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 400, 1000), rng.uniform(0, 400, 1000)
    z = rng.normal(0.0, 1.0, 1000) * np.where(x > 200, 2.0, 1.0)
    lf = local_factor(x, y, z, np.random.default_rng(1))
    assert lf.shrink > 0.8
    q = lf(np.array([50.0, 350.0]), np.array([200.0, 200.0]))
    assert q[0] == pytest.approx(1.0, rel=0.3) and q[1] == pytest.approx(4.0, rel=0.3)
    flat = local_factor(x, y, rng.normal(0.0, 1.0, 1000), np.random.default_rng(1))
    assert flat.shrink < 0.3
    assert local_factor(x[:50], y[:50], z[:50], np.random.default_rng(1)) is None


def test_crowded_frame_lowers_the_clearance():
    """A small frame full of sources: too few positions at the full clearance, so the probes
    come closer (never nearer than the photometer's own aperture + margin) and it calibrates."""
    rng = np.random.default_rng(4)
    img = Image(data=100.0 + rng.normal(0.0, SIGMA, (200, 200)), mask=None)
    gx, gy = np.meshgrid(np.arange(10.0, 200.0, 13.0), np.arange(10.0, 200.0, 13.0))
    src = (gx.ravel(), gy.ravel())
    phot = AperturePhotometer(5.0, background=AnnulusBackground(10, 20))
    full_clear = 1.5 * 5.0 + phot.crowd_margin
    cal = calibrate_aperture(phot, img, src)
    assert cal.calibrated and cal.n_probe >= 100
    assert phot.radius + phot.crowd_margin <= cal.clearance < full_clear


def test_cli_photometry_writes_the_local_factor(tmp_path):
    """``skysub photometry`` writes err_local and the local model in the table's metadata;
    ``--error-calibration global`` keeps one factor per frame (err_local = 1)."""
    from astropy.io import fits

    from skysub.cli import main

    fits.PrimaryHDU(_varying("corr", seed=2).data.astype(np.float32)).writeto(
        tmp_path / "frame.fits")
    Table({"id": [1, 2], "x": [60.0, 360.0], "y": [200.0, 200.0]}).write(tmp_path / "cat.csv")
    common = ["photometry", str(tmp_path / "frame.fits"), "--catalog", str(tmp_path / "cat.csv"),
              "--radius", "5", "--r-in", "10", "--r-out", "20", "--quiet"]
    assert main([*common, "--output", str(tmp_path / "loc.ecsv")]) == 0
    assert main([*common, "--output", str(tmp_path / "glo.ecsv"),
                 "--error-calibration", "global"]) == 0
    loc, glo = Table.read(tmp_path / "loc.ecsv"), Table.read(tmp_path / "glo.ecsv")
    model = loc.meta["error_calibration"]["frame.fits"]["local"]
    assert model["k"] >= 25 and 0.5 < model["shrink"] <= 1.0
    assert loc["err_local"][1] > 1.2 * loc["err_local"][0]  # the right side is noisier
    assert np.all(glo["err_local"] == 1.0)
    assert glo.meta["error_calibration"]["frame.fits"]["local"] is None
    np.testing.assert_array_equal(loc["flux"], glo["flux"])
