"""AnnulusBackground and CallableBackground against truth and against photutils."""

import numpy as np
import pytest
from astropy.stats import SigmaClip, biweight_location
from photutils.aperture import ApertureStats, CircularAnnulus, EllipticalAnnulus

from skysub import flags as F
from skysub.background.annulus import AnnulusBackground, CallableBackground, as_estimator
from skysub.errors import InputError
from skysub.image import Image


@pytest.fixture(scope="module")
def poisson_sky():
    rng = np.random.default_rng(42)
    return rng.poisson(400.0, (600, 600)).astype(float)


def test_flat_poisson_median_unbiased_and_pulls_unit(poisson_sky):
    rng = np.random.default_rng(1)
    # non-overlapping annuli so that estimates are independent
    g = np.arange(50, 560, 95.0)
    x, y = [a.ravel() + rng.uniform(-0.5, 0.5, a.size) for a in np.meshgrid(g, g)]
    est = AnnulusBackground(10, 20, statistic="median")
    pulls, bias = [], []
    for seed in range(12):
        img = np.random.default_rng(seed).poisson(400.0, (600, 600)).astype(float)
        r = est.estimate(img, x, y)
        pulls.append((r.bkg - 400.0) / r.bkg_err)
        bias.append(r.bkg - 400.0)
    pulls = np.concatenate(pulls)
    # The median of a Poisson sky sits below its mean by skewness * sigma / 6 = 1/6 count
    # (Pearson's rule: mean - median ~ 1/6 whatever the level), a 4e-4 relative bias at 400
    # counts -- ten times below the per-source error.  Assert that and nothing looser.
    mean_bias = np.mean(np.concatenate(bias))
    assert -0.3 < mean_bias < -0.05
    assert abs(mean_bias) / 400.0 < 1e-3
    assert 0.85 < np.std(pulls) < 1.15


def test_mean_statistic_pulls(poisson_sky):
    g = np.arange(50, 560, 95.0)
    x, y = [a.ravel() for a in np.meshgrid(g + 0.3, g - 0.2)]
    est = AnnulusBackground(10, 20, statistic="mean", sigma=None)
    pulls = []
    for seed in range(12):
        img = np.random.default_rng(100 + seed).poisson(400.0, (600, 600)).astype(float)
        r = est.estimate(img, x, y)
        pulls.append((r.bkg - 400.0) / r.bkg_err)
        np.testing.assert_allclose(r.pixel_std, 20.0, rtol=0.1)
    assert 0.85 < np.std(np.concatenate(pulls)) < 1.15


@pytest.mark.parametrize("ba,theta", [(1.0, 0.0), (0.5, 30.0), (0.5, 120.0), (0.7, -75.2)])
def test_agrees_with_photutils_aperturestats(poisson_sky, ba, theta):
    rng = np.random.default_rng(7)
    img = poisson_sky.copy()
    img[rng.random(img.shape) < 0.002] = 5000.0  # outliers for the clipping to remove
    x = rng.uniform(-15, 615, 200)
    y = rng.uniform(0, 600, 200)
    est = AnnulusBackground(12, 25, ba=ba, theta=theta, sigma=3.0, maxiters=10)
    r = est.estimate(img, x, y)
    pos = np.c_[x, y]
    if ba == 1.0:
        ap = CircularAnnulus(pos, 12, 25)
    else:  # photutils wants radians: our public API takes degrees
        ap = EllipticalAnnulus(pos, 12, 25, 25 * ba, theta=np.deg2rad(theta))
    st = ApertureStats(img, ap, sigma_clip=SigmaClip(sigma=3.0, maxiters=10))
    np.testing.assert_allclose(r.bkg, st.median, rtol=1e-10)
    np.testing.assert_allclose(r.pixel_std, st.std, rtol=1e-10)
    # a degree/radian mix-up would select other pixels: check that it is detectable
    if ba < 1:
        wrong = EllipticalAnnulus(pos, 12, 25, 25 * ba, theta=theta)  # degrees given as radians
        stw = ApertureStats(img, wrong, sigma_clip=SigmaClip(sigma=3.0, maxiters=10))
        assert np.nanmax(np.abs(stw.std - r.pixel_std)) > 1e-6


def test_rotated_ellipse_selects_right_pixels():
    # a bright bar along 30 deg: an annulus elongated along the bar sees it, one across does not
    img = np.zeros((201, 201))
    yy, xx = np.indices(img.shape)
    t = np.deg2rad(30.0)
    across = -(xx - 100) * np.sin(t) + (yy - 100) * np.cos(t)
    img[np.abs(across) < 2] = 100.0
    along = AnnulusBackground(20, 40, ba=0.2, theta=30.0, statistic="mean", sigma=None)
    perp = AnnulusBackground(20, 40, ba=0.2, theta=120.0, statistic="mean", sigma=None)
    b_along = along.estimate(img, [100.0], [100.0]).bkg[0]
    b_perp = perp.estimate(img, [100.0], [100.0]).bkg[0]
    b_mirror = AnnulusBackground(20, 40, ba=0.2, theta=-30.0, statistic="mean",
                                 sigma=None).estimate(img, [100.0], [100.0]).bkg[0]
    assert b_along > 4 * b_perp and b_along > 4 * b_mirror
    # theta and theta + 180 deg describe the same ellipse
    same = AnnulusBackground(20, 40, ba=0.2, theta=210.0, statistic="mean", sigma=None)
    assert same.estimate(img, [100.0], [100.0]).bkg[0] == pytest.approx(b_along)


def test_biweight_and_mode(poisson_sky):
    x, y = np.array([300.2]), np.array([299.7])
    est_b = AnnulusBackground(10, 20, statistic="biweight", sigma=None)
    r = est_b.estimate(poisson_sky, x, y)
    m = est_b.annulus_mask(poisson_sky.shape, x[0], y[0])
    assert r.n_pix[0] == m.sum()
    np.testing.assert_allclose(r.bkg[0], biweight_location(poisson_sky[m]), rtol=1e-12)
    est_m = AnnulusBackground(10, 20, statistic="mode", sigma=None)
    v = poisson_sky[m]
    expect = 2.5 * np.median(v) - 1.5 * np.mean(v)
    np.testing.assert_allclose(est_m.estimate(poisson_sky, x, y).bkg[0], expect, rtol=1e-12)


def test_edges_masks_and_offimage_are_flagged_not_raised():
    rng = np.random.default_rng(3)
    img = rng.normal(100, 5, (200, 200))
    img[50:60, 50:60] = np.nan
    mask = np.zeros(img.shape, bool)
    mask[150:200, 150:200] = True  # fully masks the annulus of the last source
    x = np.array([100.0, 3.0, 55.0, 500.0, 175.0, np.nan])
    y = np.array([100.0, 100.0, 70.0, 500.0, 175.0, 10.0])
    r = AnnulusBackground(10, 20).estimate(Image(img, mask), x, y)
    assert r.flags[0] == 0 and abs(r.bkg[0] - 100) < 1.5
    assert r.flags[1] & F.EDGE and np.isfinite(r.bkg[1]) and abs(r.bkg[1] - 100) < 2
    assert r.flags[2] & F.MASKED and np.isfinite(r.bkg[2])
    assert r.flags[3] & F.OFF_IMAGE and r.flags[3] & F.NO_DATA and np.isnan(r.bkg[3])
    assert r.flags[4] & F.NO_DATA and np.isnan(r.bkg[4]) and np.isnan(r.bkg_err[4])
    assert r.flags[5] & F.OFF_IMAGE and np.isnan(r.bkg[5])


def test_crowding_flag_and_empty_catalogue():
    img = np.full((100, 100), 10.0)
    est = AnnulusBackground(5, 10)
    r = est.estimate(img, [30.0, 36.0, 80.0], [30.0, 30.0, 80.0])
    assert list(r.flags & F.CROWDED) == [F.CROWDED, F.CROWDED, 0]
    r0 = est.estimate(img, np.array([]), np.array([]))
    assert len(r0) == 0


def test_big_endian_same_numbers(poisson_sky):
    x, y = np.array([100.3, 250.0]), np.array([80.0, 400.6])
    est = AnnulusBackground(10, 20)
    a = est.estimate(poisson_sky, x, y)
    b = est.estimate(poisson_sky.astype(">f4"), x, y)
    np.testing.assert_array_equal(a.bkg, b.bkg)
    np.testing.assert_array_equal(a.bkg_err, b.bkg_err)


def test_bad_parameters_are_clear():
    with pytest.raises(InputError, match="r_in < r_out"):
        AnnulusBackground(20, 10)
    with pytest.raises(InputError, match="statistic"):
        AnnulusBackground(10, 20, statistic="avg")
    with pytest.raises(InputError, match="ba"):
        AnnulusBackground(10, 20, ba=1.5)
    with pytest.raises(InputError, match="x and y"):
        AnnulusBackground(10, 20).estimate(np.zeros((10, 10)), [1.0, 2.0], [1.0])
    with pytest.raises(InputError, match="annulus"):
        AnnulusBackground.from_config({"r_in": 1, "r_outer": 3})


def test_from_psf_opticam_geometry():
    est = AnnulusBackground.from_psf(2.0, 1.0, -75.0)
    assert (est.r_in, est.r_out, est.ba, est.theta) == (10.0, 15.0, 0.5, -75.0)
    assert est.statistic == "mean"


def test_callable_background_matches_builtin(poisson_sky):
    """An opticam-style callable (converting degrees itself) equals the built-in estimator."""

    def opticam_like(data, position, semimajor_axis, semiminor_axis, orientation):
        ann = EllipticalAnnulus(position, 5 * semimajor_axis, 7.5 * semimajor_axis,
                                7.5 * semiminor_axis, theta=np.deg2rad(orientation))
        st = ApertureStats(data, ann, sigma_clip=SigmaClip(sigma=3.0, maxiters=10))
        return st.mean, st.std

    x, y = np.array([200.4, 400.0]), np.array([300.0, 150.2])
    wrapped = as_estimator(opticam_like, semimajor_axis=3.0, semiminor_axis=1.8,
                           orientation=40.0)
    assert isinstance(wrapped, CallableBackground)
    wrapped.n_pixels = None
    with pytest.warns(UserWarning, match="n_pixels"):
        rc = wrapped.estimate(poisson_sky, x, y)
    rb = AnnulusBackground.from_psf(3.0, 1.8, 40.0).estimate(poisson_sky, x, y)
    np.testing.assert_allclose(rc.bkg, rb.bkg, rtol=1e-10)
    np.testing.assert_allclose(rc.pixel_std, rb.pixel_std, rtol=1e-10)
    assert np.isnan(rc.bkg_err).all()
    wrapped.n_pixels = 100
    rc2 = wrapped.estimate(poisson_sky, x, y)
    np.testing.assert_allclose(rc2.bkg_err, rc2.pixel_std / 10)


def test_chunks_give_the_same_numbers(poisson_sky):
    """Sources processed in several chunks (edge, masked and interior ones mixed) give the
    numbers of one chunk."""
    img = poisson_sky.copy()
    img[40:60, 40:60] = np.nan
    rng = np.random.default_rng(3)
    x, y = rng.uniform(-5, img.shape[1] + 5, 50), rng.uniform(-5, img.shape[0] + 5, 50)
    x, y = np.r_[x, 50.2], np.r_[y, 70.6]  # its annulus crosses the NaN block
    one = AnnulusBackground(8, 14).estimate(img, x, y)
    many = AnnulusBackground(8, 14, chunk_size=7).estimate(img, x, y)
    for a, b in ((one.bkg, many.bkg), (one.bkg_err, many.bkg_err), (one.flags, many.flags)):
        np.testing.assert_array_equal(a, b)
    assert (one.flags & 1).any() and (one.flags & 2).any()  # edge and masked cases present
