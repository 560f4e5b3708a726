"""Empty-aperture error calibration (skysub.photometry.emptyaper) and shape errors, against
simulations whose noise and background structure are known."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.table import Table
from scipy.ndimage import gaussian_filter, uniform_filter

from skysub import flags as F
from skysub.background.annulus import AnnulusBackground
from skysub.errors import InputError
from skysub.image import Image
from skysub.inject import InjectionSettings, parse_methods, run_injection, summarise
from skysub.photometry import AperturePhotometer, OptimalPhotometer
from skysub.photometry.emptyaper import NoiseCalibration, calibrate, fit_factors
from skysub.simulate.psf import gaussian_psf

SIGMA = 4.0


def _white(shape=(400, 400), seed=0) -> Image:
    rng = np.random.default_rng(seed)
    return Image(data=200.0 + rng.normal(0.0, SIGMA, shape), mask=None)


def _structured(shape=(420, 420), seed=0) -> Image:
    """Flat sky + correlated pixel noise (white noise smoothed by a 2 x 2 box, rescaled to
    SIGMA) + a smooth random background field (Gaussian-filtered noise, 10 px scale, rms 0.8)."""
    rng = np.random.default_rng(seed)
    corr = uniform_filter(rng.normal(0.0, 1.0, shape), 2, mode="wrap")
    corr *= SIGMA / corr.std()
    field = gaussian_filter(rng.normal(0.0, 1.0, shape), 10.0, mode="wrap")
    field *= 0.8 / field.std()
    return Image(data=200.0 + corr + field, mask=None)


def _photometers(calibration: str):
    bg = AnnulusBackground(10, 20)
    return (AperturePhotometer(5.0, background=bg, error_calibration=calibration),
            OptimalPhotometer(gaussian_psf(19, 3.0), background=bg,
                              error_calibration=calibration))


@pytest.mark.parametrize("gamma", [2.0, 1.5])
def test_fit_recovers_known_factors(gamma):
    # observed^2 = alpha W + s^2 N0^2 (N / N0)^gamma exactly, for four sizes (N0 = 20)
    alpha, s = 1.7, 0.3
    sizes = ((20.0, 300.0), (80.0, 1300.0), (180.0, 3000.0), (320.0, 5200.0))
    groups = [{"n_aper": n, "W": w, "n": 10**9,
               "observed": np.sqrt(alpha * w + s * s * 400.0 * (n / 20.0) ** gamma)}
              for n, w in sizes]
    a, ss, g = fit_factors(groups)
    assert g == pytest.approx(gamma)
    assert a == pytest.approx(alpha, rel=1e-6) and ss == pytest.approx(s, rel=1e-6)
    # one size: a factor only
    a1, s1, _ = fit_factors(groups[:1])
    assert s1 == 0.0 and a1 == pytest.approx(groups[0]["observed"] ** 2 / 300.0)


def test_calibration_applies_to_every_term():
    cal = NoiseCalibration("calibrated", alpha=2.0, sigma_s=0.5)  # gamma 2: fully correlated
    var = cal.variance(10.0, 100.0, 20.0, 0.1)
    assert var == pytest.approx(10.0 + 2.0 * 100.0 + 400.0 * (2.0 * 0.01 + 0.25))
    assert cal.bkg_err(0.1, 20.0) == pytest.approx(np.sqrt(0.02 + 0.25))
    # gamma 1: the structure variance grows like the area, its per-pixel error falls as 1/N
    cal = NoiseCalibration("calibrated", alpha=2.0, sigma_s=0.5, gamma=1.0, n_ref=20.0)
    assert cal.bkg_err(0.1, 80.0) == pytest.approx(np.sqrt(0.02 + 0.25 / 4))


@pytest.mark.parametrize("which", [0, 1])
def test_white_noise_gives_unit_factors(which):
    """On skysub's white-noise flat sky the calibration finds alpha ~ 1 and no structure, and
    changes the errors by a few per cent at most (several noise realisations)."""
    x, y = np.array([60.0, 300.0]), np.array([70.0, 250.0])
    alphas, ratios, sig_s = [], [], []
    for seed in range(4):
        img = _white(seed=seed)
        cal_phot, raw_phot = _photometers("auto")[which], _photometers("none")[which]
        r = cal_phot.measure(img, x, y)
        r0 = raw_phot.measure(img, x, y)
        c = r.meta["error_calibration"]
        assert c["status"] == "calibrated" and c["n_probe"] >= 500
        alphas.append(c["alpha"])
        sig_s.append(c["sigma_s"])
        ratios.append(np.asarray(r.flux_err) / np.asarray(r0.flux_err))
        np.testing.assert_array_equal(r.flux, r0.flux)  # the fluxes are untouched
        assert np.all(r.extra["err_alpha"] == c["alpha"])
    assert 0.95 < np.mean(alphas) < 1.1 and all(0.88 < a < 1.15 for a in alphas)
    # sigma_s is small against the annulus' own error (4 * sqrt(pi/2) / sqrt(940) ~ 0.16)
    assert np.mean(sig_s) < 0.08
    assert 0.97 < np.mean(ratios) < 1.06


def _pulls(img: Image, calibration: str) -> dict[str, float]:
    settings = InjectionSettings(kind="star", n_per_image=70, snr=(5.0, 200.0), radius=5.0,
                                 psf_fwhm=3.0, min_separation=22.0)
    res = run_injection([img], Table({"id": [1], "x": [5.0], "y": [5.0]}),
                        parse_methods("aperture,optimal", "annulus"), settings,
                        realisations=3, seed=3, quiet=True,
                        photometer_kwargs={"error_calibration": calibration})
    s = summarise(res["recovered"])
    s = s[s["group"] == "all"]
    return {str(m): float(p) for m, p in zip(s["method"], s["pull_sigma68"], strict=True)}


def test_structured_sky_pulls_become_honest():
    """Correlated noise and a smooth background field: the white-noise errors are too small
    (pull widths > 1.2); calibrated on the frame's empty positions they are honest."""
    img = _structured()
    before = _pulls(img, "none")
    after = _pulls(img, "auto")
    for m in ("aperture+annulus", "optimal+annulus"):
        assert before[m] > 1.2, before
        assert 0.85 < after[m] < 1.15, after


def test_structured_sky_factors_and_bkg_err():
    img = _structured()
    phot = _photometers("auto")[0]
    r = phot.measure(img, np.array([100.0]), np.array([100.0]))
    c = r.meta["error_calibration"]
    assert c["alpha"] > 1.3  # the 2 x 2 box correlates the pixel noise
    assert c["sigma_s"] > 0.1  # the smooth field is background structure
    raw = _photometers("none")[0].measure(img, np.array([100.0]), np.array([100.0]))
    assert r.bkg_err[0] > 1.5 * raw.bkg_err[0]
    for s in c["sizes"]:  # the fit follows every probe size
        assert s["fitted"] == pytest.approx(s["observed"], rel=0.12)
        assert s["observed"] > 1.2 * s["predicted"]


def test_too_few_empty_positions(caplog):
    """A small crowded frame: 'empty' warns and flags UNCALIBRATED, 'auto' stays quiet; the
    errors are the white-noise ones in both, and nothing crashes."""
    img = _white(shape=(80, 80))
    g = np.arange(10.0, 80.0, 12.0)
    x, y = (v.ravel() for v in np.meshgrid(g, g))
    raw = _photometers("none")[0].measure(img, x, y)
    with caplog.at_level(logging.WARNING, logger="skysub"):
        r = _photometers("empty")[0].measure(img, x, y)
    assert "NOT empty-aperture calibrated" in caplog.text
    assert np.all(r.flags & F.UNCALIBRATED)
    assert r.meta["error_calibration"]["status"] == "uncalibrated"
    np.testing.assert_allclose(r.flux_err, raw.flux_err)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skysub"):
        ra = _photometers("auto")[0].measure(img, x, y)
    assert "NOT empty-aperture" not in caplog.text
    assert not np.any(ra.flags & F.UNCALIBRATED)
    assert ra.meta["error_calibration"]["status"] == "skipped"
    np.testing.assert_allclose(ra.flux_err, raw.flux_err)


def test_probes_avoid_sources_masks_and_edges():
    from skysub.photometry.emptyaper import empty_positions

    mask = np.zeros((200, 300), bool)
    mask[:, 150:] = True
    src = (np.array([50.0, 100.0]), np.array([50.0, 120.0]))
    x, y = empty_positions(mask.shape, mask, src, 8.0, 500, np.random.default_rng(0))
    assert x.size > 50
    assert np.all(x >= 8) and np.all(y >= 8) and np.all(y <= 191) and np.all(x < 150 - 8)
    d = np.hypot(x[:, None] - src[0][None], y[:, None] - src[1][None])
    assert d.min() >= 8.0
    dd = np.hypot(x[:, None] - x[None], y[:, None] - y[None]) + np.eye(x.size) * 1e9
    assert dd.min() >= 8.0


def test_noise_free_frame_is_not_calibrated():
    img = Image(data=np.full((300, 300), 100.0), mask=None)
    cal = calibrate(lambda k, x, y: {"flux": np.zeros(x.size), "var_white": np.ones(x.size),
                                      "n_aper": np.ones(x.size),
                                      "flags": np.zeros(x.size, np.int32)},
                    1, img.shape, img.mask, (np.zeros(0), np.zeros(0)), 5.0, required=False)
    assert cal.status == "skipped" and cal.alpha == 1.0


def test_unknown_calibration_is_a_clear_error():
    with pytest.raises(InputError, match="error_calibration"):
        AperturePhotometer(5.0, background=AnnulusBackground(10, 20), error_calibration="x")


def test_shape_errors_enter_the_optimal_flux_error():
    """Galaxies measured with scattered catalogue shapes: without the shape errors the pulls
    are too wide; with r50_err, ba_err, theta_err, sersic_n_err in the catalogue they are
    honest (the truth is the injected total flux)."""
    rng = np.random.default_rng(0)
    frame = Image(data=200.0 + rng.normal(0.0, SIGMA, (400, 500)), mask=None)
    own = Table({"id": [1], "x": [5.0], "y": [5.0]})
    st = InjectionSettings(kind="galaxy", n_per_image=50, snr=(30, 500), radius=6.0,
                           psf_fwhm=3.0, min_separation=30, shape_scatter=True)
    out = run_injection([frame], own, parse_methods("optimal", "annulus"), st,
                        realisations=2, seed=1, quiet=True, keep_images=True)
    s = summarise(out["recovered"])
    with_err = float(s[s["group"] == "all"]["pull_sigma68"][0])
    # the same injected frames, measured without the error columns
    phot = OptimalPhotometer(gaussian_psf(19, 3.0), background=AnnulusBackground(10, 20),
                             error_calibration="none")
    pulls = []
    for inj, full in zip(out["injections"], out["catalogs"], strict=True):
        n0 = len(full) - len(inj.truth)
        cat = full.copy()
        r_err = phot.measure(inj.image, cat["x"], cat["y"], catalog=cat)
        for c in ("r50_err", "ba_err", "theta_err", "sersic_n_err"):
            cat.remove_column(c)
        r = phot.measure(inj.image, cat["x"], cat["y"], catalog=cat)
        truth = np.asarray(inj.truth["flux_true"], float)
        pulls.append((np.asarray(r.flux)[n0:] - truth) / np.asarray(r.flux_err)[n0:])
        shape_part = np.asarray(r_err.extra["flux_err_shape"])[n0:]
        assert np.all(shape_part > 0) and "flux_err_shape" not in r.extra
        np.testing.assert_array_equal(np.asarray(r_err.flux), np.asarray(r.flux))
    from skysub.stats import sigma68

    without = float(sigma68(np.concatenate(pulls)))
    assert without > 1.3
    assert 0.75 < with_err < 1.15


def test_cli_photometry_records_the_calibration(tmp_path):
    from astropy.io import fits

    from skysub.cli import main

    img = _structured(shape=(300, 300), seed=5)
    fits.PrimaryHDU(img.data.astype(np.float32)).writeto(tmp_path / "frame.fits")
    Table({"id": [1, 2], "x": [100.0, 200.0], "y": [120.0, 180.0]}).write(
        tmp_path / "cat.csv")
    common = ["photometry", str(tmp_path / "frame.fits"), "--catalog", str(tmp_path / "cat.csv"),
              "--radius", "5", "--r-in", "10", "--r-out", "20", "--quiet"]
    assert main([*common, "--output", str(tmp_path / "cal.ecsv")]) == 0
    assert main([*common, "--output", str(tmp_path / "raw.ecsv"),
                 "--error-calibration", "none"]) == 0
    cal, raw = Table.read(tmp_path / "cal.ecsv"), Table.read(tmp_path / "raw.ecsv")
    assert "err_alpha" in cal.colnames and "err_alpha" not in raw.colnames
    assert cal["err_alpha"][0] > 1.3  # correlated noise found
    assert cal.meta["error_calibration"]["frame.fits"]["status"] == "calibrated"
    np.testing.assert_array_equal(cal["flux"], raw["flux"])
    assert np.all(cal["flux_err"] > 1.3 * raw["flux_err"])
    assert np.all(cal["bkg_err"] > raw["bkg_err"])
