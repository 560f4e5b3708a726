"""skysub.pipeline against known truth: simulated multi-camera frames with known background,
fluxes, shifts/rotations and variability; analytic cases for alignment and optimal extraction."""

import json
import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from skysub.errors import HeaderError, InputError, MissingFileError, OutputExistsError
from skysub.pipeline import (
    AlignmentError,
    ApertureExtraction,
    OptimalExtraction,
    PSFAnnulus,
    Reducer,
    TimeSeriesSimConfig,
    match_transform,
    simulate_observations,
)
from skysub.pipeline.catalog import detect_sources, psf_params
from skysub.pipeline.lightcurves import LC_COLUMNS, periodogram
from skysub.simulate.timeseries import frame_transform, render_frame, simulate_truth

# a rotated elliptical PSF: axis ratio 0.6, major axis at 30 degrees
PSF = {"semimajor_sigma": 2.0, "semiminor_sigma": 1.2, "orientation": 30.0}
CFG = dict(cameras=("g", "r"), binning=16, n_stars=4, min_separation=25.0,
           psf_sigma=(2.0, 1.2), psf_angle=30.0, max_rotation=1.0, jitter=1.5)
N_IMAGES = 60


def custom_local_background(data, position, semimajor_axis, semiminor_axis, orientation):
    """The tutorial's custom estimator, with the degrees -> radians conversion photutils needs
    (the published example passes degrees)."""
    from astropy.stats import SigmaClip
    from photutils.aperture import ApertureStats, EllipticalAnnulus

    ann = EllipticalAnnulus(position, a_in=5 * semimajor_axis, a_out=7.5 * semimajor_axis,
                            b_in=5 * semiminor_axis, b_out=7.5 * semiminor_axis,
                            theta=np.deg2rad(orientation))
    st = ApertureStats(data, ann, sigma_clip=SigmaClip(sigma=3.5, maxiters=10))
    return st.median, st.mad_std


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("ts")
    cfg = TimeSeriesSimConfig(**CFG)
    truth = simulate_observations(root / "data", N_IMAGES, cfg, seed=5, quiet=True)
    return root, cfg, truth


@pytest.fixture(scope="module")
def reduced(sim):
    root, cfg, truth = sim
    red = Reducer(root / "data", root / "reduced", processes=1, quiet=True)
    red.create_catalogs()
    red.photometry([ApertureExtraction(), OptimalExtraction()])
    return red


def _ids_of_truth(red, cam, truth):
    """Catalogue id of every truth star (nearest catalogue position)."""
    cat = red.catalogs[cam]
    out = []
    for x, y in zip(truth["x"], truth["y"], strict=True):
        d = np.hypot(np.asarray(cat["x"]) - x, np.asarray(cat["y"]) - y)
        assert d.min() < 0.3, "every simulated star is catalogued at its true position"
        out.append(int(cat["id"][np.argmin(d)]))
    return out


# -- simulation ---------------------------------------------------------------------------------
def test_simulation_is_poisson_seeded_and_has_headers(sim):
    root, cfg, truth = sim
    h = fits.getheader(root / "data" / "g_00003.fits")
    for key in ("DATE-OBS", "MJD-OBS", "EXPTIME", "FILTER", "BINNING", "RA", "DEC"):
        assert key in h
    assert h["FILTER"] == "g" and h["BINNING"] == "16x16" and h["NAXIS1"] == 2048 // 16
    big = TimeSeriesSimConfig(n_stars=1, jitter=0.0)
    t = simulate_truth(big, 2, seed=1)
    model, frame = render_frame(big, t, "g", 1)
    far = np.hypot(*(np.indices(model.shape)[::-1] - np.array([t["x"][0], t["y"][0]])[:, None,
                                                                                     None])) > 30
    d = frame[far]
    assert np.array_equal(d, np.round(d))  # counts, not a Gaussian approximation
    assert abs(d.mean() - 100) < 0.1 and abs(d.var() / d.mean() - 1) < 0.02
    # third moment of Poisson(100) is 100 (a Gaussian's is 0)
    assert abs(np.mean((d - 100) ** 3) - 100) < 40
    _, again = render_frame(big, t, "g", 1)
    assert np.array_equal(frame, again)
    grad = TimeSeriesSimConfig(n_stars=1, gradient=(40.0, 0.0))
    g_model, _ = render_frame(grad, simulate_truth(grad, 1, 1), "g", 0)
    assert g_model[:, -1].min() - g_model[:, 0].max() > 39 - 1e-6


# -- alignment ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rot,model", [(0.0, "translation"), (2.0, "affine"), (-35.0, "affine"),
                                       (180.0, "affine")])
def test_alignment_recovers_known_transform(rot, model):
    rng = np.random.default_rng(1)
    ref = rng.uniform(10, 500, (20, 2))
    m, t = frame_transform(rot, (7.25, -3.5), 512)
    frm = ref @ m.T + t + rng.normal(0, 0.03, ref.shape)
    keep = rng.permutation(20)[:16]  # some sources lost, some spurious ones added
    frm = np.r_[frm[keep], rng.uniform(0, 512, (5, 2))]
    tr = match_transform(ref, frm, model=model)
    assert tr.n_matches == 16
    assert abs(tr.rotation_deg - rot + 360 * round((tr.rotation_deg - rot) / -360)) < 0.02
    x, y = tr.apply(ref[:, 0], ref[:, 1])
    xt, yt = (ref @ m.T + t).T
    assert np.max(np.hypot(x - xt, y - yt)) < 0.05
    back = tr.inverse()
    xb, yb = back.apply(x, y)
    assert np.allclose(xb, ref[:, 0]) and np.allclose(yb, ref[:, 1])


def test_alignment_failures_are_clear():
    rng = np.random.default_rng(2)
    with pytest.raises(AlignmentError, match="too few sources"):
        match_transform(rng.uniform(0, 100, (2, 2)), rng.uniform(0, 100, (8, 2)))
    with pytest.raises(AlignmentError, match="no transform matches"):
        match_transform(rng.uniform(0, 500, (10, 2)), rng.uniform(0, 500, (10, 2)), tol=0.5)
    with pytest.raises(InputError, match="alignment model"):
        match_transform(np.zeros((5, 2)), np.zeros((5, 2)), model="projective")


def test_reducer_transforms_match_truth(reduced, sim):
    _, _, truth = sim
    for cam in reduced.cameras:
        d = json.loads((reduced.out_directory / "cat" / f"{cam}_transforms.json").read_text())
        assert d["reference"] == f"{cam}_00000.fits"
        for k in range(N_IMAGES):
            tr = reduced.transforms[cam][f"{cam}_{k:05d}.fits"]
            m, t = frame_transform(truth["rotation_deg"][k], truth["shift"][k], truth["size"])
            xt, yt = (np.c_[truth["x"], truth["y"]] @ m.T + t).T
            x, y = tr.apply(truth["x"], truth["y"])
            assert np.max(np.hypot(x - xt, y - yt)) < 0.1, (cam, k)
            assert abs(tr.rotation_deg - truth["rotation_deg"][k]) < 0.05


# -- angle convention ---------------------------------------------------------------------------
def test_psf_orientation_is_degrees(reduced, sim):
    for cam in reduced.cameras:
        p = reduced.psf_params[cam]
        assert abs(p["semimajor_sigma"] - 2.0) < 0.05 and abs(p["semiminor_sigma"] - 1.2) < 0.05
        assert abs(p["orientation"] - 30.0) < 1.5  # degrees (30 rad would be 98.9 deg)
    saved = json.loads((reduced.out_directory / "cat" / "psf_params.json").read_text())
    assert saved["g"]["orientation"] == pytest.approx(reduced.psf_params["g"]["orientation"])
    cat = reduced.catalogs["g"]  # sep's theta (radians) converted to degrees
    assert abs(np.median(cat["theta_deg"]) - 30) < 5


def test_angle_convention_changes_fluxes_measurably():
    """The published mistake -- orientation in degrees read as radians -- costs > 1 % of the
    aperture flux and > 5 % of the optimal flux on a b/a = 0.6 PSF rotated by 30 degrees."""
    cfg = TimeSeriesSimConfig(psf_sigma=(2.0, 1.2), psf_angle=30.0, jitter=0.0, binning=8)
    truth = simulate_truth(cfg, 1, seed=3)
    model, _ = render_frame(cfg, truth, "g", 0)
    flux = np.array(truth["cameras"]["g"]["mean_flux"])
    flux[0] = truth["cameras"]["g"]["variable_flux"][0]
    wrong = dict(PSF, orientation=np.degrees(30.0))  # 30 "radians" as degrees
    # noise-free image: the pixel variance must come from the noise model (Poisson sky), the
    # measured scatter of a noise-free annulus is 0
    for recipe, min_loss in ((ApertureExtraction(), 0.01),
                             (OptimalExtraction(error_model="model"), 0.05)):
        good = recipe.build(PSF).measure(model, truth["x"], truth["y"]).flux / flux
        bad = recipe.build(wrong).measure(model, truth["x"], truth["y"]).flux / flux
        assert np.all(np.abs(good - 1) < 2e-3), good
        assert np.all(1 - bad > min_loss), bad


def test_callable_gets_degrees_and_matches_builtin_annulus():
    cfg = TimeSeriesSimConfig(psf_sigma=(2.0, 1.2), psf_angle=30.0, jitter=0.0, binning=8,
                              n_stars=2)
    truth = simulate_truth(cfg, 1, seed=4)
    _, frame = render_frame(cfg, truth, "g", 0)
    seen = []

    def spy(data, position, a, b, orientation):
        seen.append(orientation)
        return custom_local_background(data, position, a, b, orientation)

    est_c = OptimalExtraction(spy).build(PSF).background
    rc = est_c.estimate(frame, truth["x"], truth["y"])
    assert seen == [30.0, 30.0]
    # same annulus as skysub's PSFAnnulus with the median: same pixels, close statistics
    est_b = PSFAnnulus(statistic="median", sigma=3.5).for_psf(PSF)
    rb = est_b.estimate(frame, truth["x"], truth["y"])
    assert np.allclose(rc.bkg, rb.bkg, atol=0.6)
    assert np.all(np.abs(rc.bkg - 100) < 3)


# -- optimal extraction normalisation ------------------------------------------------------------
@pytest.mark.parametrize("stamp_scale", [2.0, 6.0])
def test_optimal_extraction_unit_sum_psf_gives_total_flux(stamp_scale):
    """Noise-free star of known total flux on a flat sky: the estimate is the TOTAL flux, even
    when the weighted stamp (+-2 sigma) truncates the star, because the PSF model has unit sum
    over the plane."""
    cfg = TimeSeriesSimConfig(psf_sigma=(2.0, 1.2), psf_angle=30.0, jitter=0.0, binning=8,
                              n_stars=3)
    truth = simulate_truth(cfg, 1, seed=6)
    model, _ = render_frame(cfg, truth, "g", 0)
    flux = np.array(truth["cameras"]["g"]["mean_flux"])
    flux[0] = truth["cameras"]["g"]["variable_flux"][0]
    phot = OptimalExtraction(stamp_scale=stamp_scale, error_model="model").build(PSF)
    res = phot.measure(model, truth["x"], truth["y"])
    assert np.allclose(res.flux / flux, 1.0, atol=2e-3), res.flux / flux
    assert np.allclose(res.bkg, 100.0, atol=0.05)
    # the stamp holds less than the total light when truncated, yet the flux is total
    if stamp_scale == 2.0:
        assert np.all(res.extra["model_in_stamp"] < 0.99)


# -- light curves -------------------------------------------------------------------------------
def test_light_curve_files_layout_and_values(reduced, sim):
    root, cfg, truth = sim
    for name in ("aperture_annulus", "optimal_annulus"):
        d = root / "reduced" / "lcs" / name
        meta = json.loads((d / "columns.json").read_text())
        assert meta["time_system"] == "BMJD_TDB" and "bkg_mean_err" in meta
        for cam in cfg.cameras:
            ids = _ids_of_truth(reduced, cam, truth)
            files = sorted(p.name for p in d.glob(f"{cam}_source_*.csv"))
            assert files == sorted(f"{cam}_source_{i}.csv" for i in reduced.catalogs[cam]["id"])
            for j, sid in enumerate(ids):
                lc = Table.read(d / f"{cam}_source_{sid}.csv", format="ascii.csv")
                assert tuple(lc.colnames) == LC_COLUMNS and len(lc) == N_IMAGES
                bmjd = np.asarray(lc["BMJD"])
                assert np.all(np.diff(bmjd) > 0)
                # barycentric: differs from the UTC MJD of the header by the light time (+TDB)
                mjd = np.asarray(truth["mjd_start"]) + cfg.exptime / 2 / 86400
                assert 1 < np.max(np.abs(bmjd - mjd)) * 86400 < 600
                assert abs(np.mean(lc["bkg"]) / 100 - 1) < 0.01
                assert abs(np.mean(lc["bkg_err"]) / 10 - 1) < 0.1
                # the error of the level is the pixel scatter / sqrt(pixels in the annulus)
                n_ann = np.pi * (7.5**2 - 5**2) * 2.0 * 1.2
                assert np.mean(lc["bkg_mean_err"]) == pytest.approx(
                    np.mean(lc["bkg_pixel_std"]) / np.sqrt(n_ann), rel=0.1)
                assert np.all(lc["bkg_err"] > lc["bkg_pixel_std"])
                if j != truth["variable_index"]:
                    true = truth["cameras"][cam]["mean_flux"][j]
                    assert abs(np.mean(lc["flux"]) / true - 1) < 0.01, (name, cam, sid)
                    # flux_err predicts the scatter of the light curve
                    assert 0.7 < np.std(lc["flux"]) / np.mean(lc["flux_err"]) < 1.4


def test_periodogram_recovers_frequency(reduced, sim):
    _, cfg, truth = sim
    for cam in cfg.cameras:
        vid = _ids_of_truth(reduced, cam, truth)[truth["variable_index"]]
        res = reduced.periodogram("optimal_annulus", cam, vid, true_frequency=cfg.frequency)
        assert abs(res.peak_frequency / cfg.frequency - 1) < 0.01, res
        assert res.false_alarm_probability < 1e-3
        rel = Table.read(reduced.out_directory / "lcs" / "optimal_annulus" / "relative"
                         / f"{cam}_source_{vid}.csv", format="ascii.csv")
        # the relative light curve's RMS is the simulated 2 %
        assert np.std(rel["rel_flux"]) == pytest.approx(cfg.rms, rel=0.25)
        var = reduced.variability("optimal_annulus", cam)
        assert int(var["id"][np.argmax(var["chi2_red"])]) == vid
    assert (reduced.out_directory / "diag" / f"optimal_annulus_g_source_{vid}_periodogram.png"
            ).exists()


def test_periodogram_function_on_sinusoid():
    t = 60310 + np.arange(200) * 0.7 / 86400
    rng = np.random.default_rng(0)
    y = 1 + 0.01 * np.sin(2 * np.pi * 0.2 * (t - t[0]) * 86400) + rng.normal(0, 0.002, 200)
    res = periodogram(t, y, np.full(200, 0.002))
    assert abs(res.peak_frequency - 0.2) < 0.002
    with pytest.raises(InputError, match="at least 5"):
        periodogram(t[:3], y[:3])


def test_diagnostic_plots_written(reduced):
    out = reduced.out_directory
    for p in ("cat/catalogs.png", "diag/header_times.png", "diag/background.png",
              "diag/optimal_annulus_rms_vs_median.png", "diag/aperture_annulus_rms_vs_median.png"):
        assert (out / p).stat().st_size > 1000, p
    frames = Table.read(out / "diag" / "g_frames.ecsv")
    assert np.all(frames["aligned"]) and abs(np.mean(frames["background"]) - 100) < 1


# -- plug-ins, re-runs, parallel ----------------------------------------------------------------
def test_custom_estimators_plug_in(reduced, sim):
    from skysub.background.annulus import AnnulusBackground

    root, cfg, truth = sim
    red = Reducer(root / "data", root / "reduced", processes=1, quiet=True)
    red.create_catalogs()
    fixed = AnnulusBackground(10, 16, statistic="median", name="ring10")
    recipes = [OptimalExtraction(custom_local_background), ApertureExtraction(fixed),
               OptimalExtraction(PSFAnnulus(statistic="median"), name="optimal_psfmedian")]
    out = red.photometry(recipes)
    assert set(out) == {"optimal_custom_local_background", "aperture_ring10",
                        "optimal_psfmedian"}
    vi = truth["variable_index"]
    j = 1 if vi != 1 else 2
    sid = _ids_of_truth(red, "g", truth)[j]
    ref = red.light_curve("optimal_annulus", "g", sid)
    for name in out:
        lc = red.light_curve(name, "g", sid)
        assert abs(np.mean(lc["bkg"]) / 100 - 1) < 0.01, name
        assert abs(np.mean(lc["bkg_err"]) / 10 - 1) < 0.1, name
        assert np.all(np.isfinite(lc["flux_err"]))
        assert np.mean(lc["flux"]) == pytest.approx(np.mean(ref["flux"]), rel=0.01)
    meta = json.loads((red.lc_directory("optimal_custom_local_background")
                       / "columns.json").read_text())
    assert "assumed" in meta["photometer"]["callable_pixels"]


def test_reruns_skip_unless_overwrite(reduced, sim, capsys):
    root, _, _ = sim
    lc = reduced.lc_directory("optimal_annulus") / "g_source_1.csv"
    cat = root / "reduced" / "cat" / "g_catalog.ecsv"
    before = (os.stat(lc).st_mtime_ns, os.stat(cat).st_mtime_ns)
    red = Reducer(root / "data", root / "reduced", processes=1)
    red.create_catalogs()
    red.photometry(OptimalExtraction())
    assert (os.stat(lc).st_mtime_ns, os.stat(cat).st_mtime_ns) == before
    text = capsys.readouterr().out
    assert "catalogue exists" in text and "light curves exist, skipped" in text
    red.quiet = True
    red.photometry(OptimalExtraction(), overwrite=True)
    assert os.stat(lc).st_mtime_ns != before[0]


def test_parallel_equals_serial_and_unforced_close(reduced, sim):
    root, _, _ = sim
    red = Reducer(root / "data", root / "reduced", processes=2, quiet=True)
    red.create_catalogs()
    red.photometry([OptimalExtraction(name="optimal_parallel"),
                    OptimalExtraction(forced=False, name="optimal_unforced")])
    a = red.light_curve("optimal_annulus", "r", 2)
    b = red.light_curve("optimal_parallel", "r", 2)
    c = red.light_curve("optimal_unforced", "r", 2)
    assert np.array_equal(np.asarray(a["flux"]), np.asarray(b["flux"]))
    assert np.allclose(c["flux"], a["flux"], rtol=3e-3)
    assert not np.array_equal(np.asarray(c["x"]), np.asarray(a["x"]))


# -- bad input ----------------------------------------------------------------------------------
def _write(path, **cards):
    h = fits.Header()
    for k, v in cards.items():
        h[k.replace("_", "-")] = v
    fits.PrimaryHDU(np.zeros((40, 40), np.float32), header=h).writeto(path)


def test_bad_inputs_give_clear_errors(tmp_path, sim):
    with pytest.raises(MissingFileError, match="data directory not found"):
        Reducer(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no FITS files"):
        Reducer(tmp_path / "empty", tmp_path / "out")
    d = tmp_path / "d1"
    d.mkdir()
    _write(d / "a.fits", FILTER="g", EXPTIME=1.0, MJD_OBS=60000.0, BINNING="4x4")
    _write(d / "b.fits", EXPTIME=1.0, MJD_OBS=60000.1, BINNING="4x4")
    with pytest.raises(HeaderError, match=r"b\.fits: header keyword FILTER missing"):
        Reducer(d, tmp_path / "out")
    d2 = tmp_path / "d2"
    d2.mkdir()
    _write(d2 / "a.fits", FILTER="g", EXPTIME=1.0, MJD_OBS=60000.0, BINNING="4x4")
    _write(d2 / "b.fits", FILTER="g", EXPTIME=1.0, MJD_OBS=60000.1, BINNING="2x2")
    with pytest.raises(HeaderError, match="different binnings"):
        Reducer(d2, tmp_path / "out")
    d3 = tmp_path / "d3"
    d3.mkdir()
    _write(d3 / "a.fits", FILTER="g", CAMERA=1, EXPTIME=1.0, MJD_OBS=60000.0, BINNING="4x4")
    _write(d3 / "b.fits", FILTER="r", CAMERA=1, EXPTIME=1.0, MJD_OBS=60000.1, BINNING="4x4")
    with pytest.raises(HeaderError, match="camera 1 has frames with several filters"):
        Reducer(d3, tmp_path / "out")
    _write(d3 / "c.fits", FILTER="i", CAMERA=3, EXPTIME=1.0, BINNING="4x4")
    (d3 / "b.fits").unlink()
    with pytest.raises(HeaderError, match=r"c\.fits: no observation time"):
        Reducer(d3, tmp_path / "out")
    root, cfg, _ = sim
    red = Reducer(root / "data", tmp_path / "fresh", processes=1, quiet=True)
    with pytest.raises(InputError, match="run create_catalogs"):
        red.photometry(OptimalExtraction())
    with pytest.raises(InputError, match="local_background_estimator"):
        OptimalExtraction(42)
    with pytest.raises(OutputExistsError, match="already holds"):
        simulate_observations(root / "data", 2, cfg, quiet=True)


def test_detect_and_fit_on_single_frame():
    cfg = TimeSeriesSimConfig(psf_sigma=(1.8, 1.8), jitter=0.0, binning=8, n_stars=4)
    truth = simulate_truth(cfg, 1, seed=9)
    _, frame = render_frame(cfg, truth, "g", 0)
    cat, sky = detect_sources(frame)
    assert len(cat) == 4 and abs(sky["background"] - 100) < 1 and abs(sky["rms"] - 10) < 0.5
    p = psf_params(frame, cat["x"], cat["y"])
    assert abs(p["semimajor_sigma"] - 1.8) < 0.08 and abs(p["semiminor_sigma"] - 1.8) < 0.08
