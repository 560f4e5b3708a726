"""skysub.stats and skysub.stamps (existing modules) against astropy, numpy slicing and
simulations with known answers."""

import warnings

import numpy as np
import pytest
from astropy.stats import SigmaClip, biweight_location, sigma_clipped_stats

from skysub.errors import InputError
from skysub.image import Image
from skysub.stamps import annulus_offsets, cutouts, gather
from skysub.stats import (
    biweight_of_run,
    clipped_stats,
    estimate_error,
    mad_std,
    sextractor_mode,
    sigma68,
)

# ---------------------------------------------------------------------------------------------
# sigma68, mad_std
# ---------------------------------------------------------------------------------------------


def test_sigma68_and_mad_std_of_gaussian():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, (4, 100_000))
    np.testing.assert_allclose(sigma68(x, axis=1), 2.0, rtol=0.02)
    np.testing.assert_allclose(mad_std(x, axis=1), 2.0, rtol=0.02)
    assert sigma68(x) == pytest.approx(2.0, rel=0.01)
    # exact definition: (q84 - q16) / 2, NaN ignored
    v = np.array([1.0, 2.0, 4.0, np.nan, 8.0])
    q16, q84 = np.percentile([1.0, 2.0, 4.0, 8.0], [16, 84])
    assert sigma68(v) == pytest.approx((q84 - q16) / 2)
    mad = np.median(np.abs(np.array([1, 2, 4, 8]) - 3.0))
    assert mad_std(v) == pytest.approx(1.482602218505602 * mad)
    assert np.isnan(sigma68(np.array([np.nan, np.nan])))
    assert np.isnan(sigma68(np.array([])))
    assert sigma68(np.full((3, 4), np.nan), axis=0).shape == (4,)


def test_mad_std_all_nan_is_silent_nan():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=RuntimeWarning, module="skysub.*")
        out = mad_std(np.array([[1.0, 2.0, 3.0], [np.nan, np.nan, np.nan]]), axis=1)
    assert out[0] == pytest.approx(1.482602218505602) and np.isnan(out[1])


def test_sigma68_axis_with_all_nan_row_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sigma68(np.array([[1.0, 2.0, 3.0], [np.nan, np.nan, np.nan]]), axis=1)
    assert np.isnan(out[1])


# ---------------------------------------------------------------------------------------------
# clipped_stats against astropy
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rows_with_outliers():
    rng = np.random.default_rng(1)
    n, p = 400, 60
    level = rng.uniform(100, 2000, n)[:, None]
    v = level + rng.normal(0, 1, (n, p)) * np.sqrt(level)
    hit = rng.random((n, p)) < 0.07  # bright contaminants: one-sided outliers
    v[hit] += rng.exponential(20, hit.sum()) * np.sqrt(np.broadcast_to(level, (n, p))[hit])
    v[rng.random((n, p)) < 0.1] = np.nan
    v[3] = np.nan  # fully masked row
    v[7, :50] = np.nan  # few valid values
    return v


CLIP_CASES = [
    dict(sigma=3.0, maxiters=1),
    dict(sigma=3.0, maxiters=5),
    dict(sigma=3.0, maxiters=None),
    dict(sigma=2.0, maxiters=None),
    dict(sigma=3.0, sigma_upper=1.5, maxiters=None),  # asymmetric
    dict(sigma=3.0, sigma_lower=2.0, sigma_upper=np.inf, maxiters=10),  # one-sided
    dict(sigma=2.5, sigma_lower=np.inf, maxiters=5),  # clip high only
]


@pytest.mark.parametrize("kw", CLIP_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in
                                                                     kw.items()))
def test_clipped_stats_equals_astropy(rows_with_outliers, kw):
    v = rows_with_outliers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns on the all-NaN row
        ref = np.array(sigma_clipped_stats(v, axis=1, **kw))
        kept = SigmaClip(**kw)(v, axis=1, masked=False)
    out = clipped_stats(v, **kw)
    for i, name in enumerate(("mean", "median", "std")):
        got = getattr(out, name)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref[i]), err_msg=name)
        np.testing.assert_allclose(got, ref[i], rtol=1e-12, atol=1e-12 * np.nanmax(v),
                                   err_msg=name)
    np.testing.assert_array_equal(out.n, np.isfinite(kept).sum(axis=1))
    np.testing.assert_array_equal(out.n_valid, np.isfinite(v).sum(axis=1))
    assert out.n[3] == 0 and np.isnan(out.mean[3]) and np.isnan(out.median[3])
    assert np.isnan(out.std[3])
    # clipping does something on these rows (otherwise the comparison would be weak)
    assert np.sum(out.n < out.n_valid) > 10


def test_clipped_stats_without_clipping_is_plain_nan_stats(rows_with_outliers):
    v = rows_with_outliers[:20]
    out = clipped_stats(v, sigma=None)
    ok = np.isfinite(v).any(axis=1)
    np.testing.assert_allclose(out.mean[ok], np.nanmean(v[ok], axis=1), rtol=1e-12)
    np.testing.assert_allclose(out.median[ok], np.nanmedian(v[ok], axis=1), rtol=1e-12)
    np.testing.assert_allclose(out.std[ok], np.nanstd(v[ok], axis=1), rtol=1e-10)
    np.testing.assert_array_equal(out.n, out.n_valid)


def test_clipped_stats_1d_sorted_and_bad_shape():
    v = np.array([1.0, 2.0, np.nan, 3.0, 100.0, 2.5, 1.5, 2.2, 1.8, 2.1, 1.9])
    out, s, lo, hi = clipped_stats(v, sigma=2.0, return_sorted=True)
    assert np.ndim(out.mean) == 0 and out.n == 9 and out.n_valid == 10
    kept = s[0, lo[0]:hi[0]]
    assert kept.max() == 3.0 and out.mean == pytest.approx(np.mean(kept))
    with pytest.raises(InputError, match="1-D or 2-D"):
        clipped_stats(np.zeros((2, 2, 2)))


def test_clipped_stats_constant_and_single_value_rows():
    v = np.array([[7.0, 7.0, 7.0, 7.0], [1.0, np.nan, np.nan, np.nan]])
    out = clipped_stats(v, sigma=3.0)
    np.testing.assert_array_equal(out.median, [7.0, 1.0])
    np.testing.assert_array_equal(out.std, [0.0, 0.0])
    np.testing.assert_array_equal(out.n, [4, 1])


def test_one_sided_clip_keeps_zero_spread_rows():
    v = np.array([[7.0, 7.0, 7.0, 7.0], [1.0, np.nan, np.nan, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = clipped_stats(v, sigma=None, sigma_lower=3.0)
    np.testing.assert_array_equal(out.median, [7.0, 1.0])
    np.testing.assert_array_equal(out.n, [4, 1])


def test_location_and_sextractor_mode():
    mean = np.array([10.0, 10.0, 10.0, np.nan])
    med = np.array([9.9, 9.0, 9.0, 1.0])
    std = np.array([1.0, 1.0, 4.0, 1.0])
    mode = sextractor_mode(mean, med, std)
    # |mean - med| < 0.3 std: 2.5 med - 1.5 mean; otherwise the median (SExtractor)
    np.testing.assert_allclose(mode[:3], [2.5 * 9.9 - 15.0, 9.0, 2.5 * 9.0 - 15.0])
    assert np.isnan(mode[3])  # NaN in, NaN out
    out = clipped_stats(np.array([[1.0, 2.0, 3.0, 10.0]]), sigma=None)
    assert out.location("mean")[0] == pytest.approx(4.0)
    assert out.location("median")[0] == pytest.approx(2.5)
    assert out.location("mode")[0] == pytest.approx(
        sextractor_mode(out.mean, out.median, out.std)[0])
    with pytest.raises(InputError, match="biweight"):
        out.location("biweight")
    with pytest.raises(InputError, match="unknown statistic"):
        out.location("average")


# astropy's biweight_location warns on the fully clipped (all-NaN) row; biweight_of_run's
# np.errstate does not silence warnings.warn (noise only: the result is NaN as documented)
@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
def test_biweight_of_run_equals_astropy(rows_with_outliers):
    v = rows_with_outliers[:50]
    out, s, lo, hi = clipped_stats(v, sigma=3.0, return_sorted=True)
    bw = biweight_of_run(s, lo, hi)
    for r in range(len(v)):
        kept = s[r, lo[r]:hi[r]]
        if kept.size == 0:
            assert np.isnan(bw[r])
        else:
            assert bw[r] == pytest.approx(biweight_location(kept, c=6.0), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# estimate_error
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("statistic, sigma", [("mean", None), ("median", None),
                                              ("median", 3.0),
                                              ("mode", None)])
def test_estimate_error_matches_scatter_of_estimates(statistic, sigma):
    rng = np.random.default_rng(2)
    n_rows, p, s, level = 6000, 151, 4.0, 100.0
    v = rng.normal(level, s, (n_rows, p))
    out = clipped_stats(v, sigma=sigma)
    est = out.location(statistic)
    err = estimate_error(out.std, out.n, statistic)
    # empirical scatter of the estimates over many rows vs predicted (SE ~ 1 %)
    assert np.std(est) == pytest.approx(np.mean(err), rel=0.05)
    pulls = (est - level) / err
    assert np.std(pulls) == pytest.approx(1.0, rel=0.05)
    if statistic == "mode":  # not all rows fall back to the median: the mode factor applies
        assert np.std(est) / (s / np.sqrt(p)) == pytest.approx(2.137, rel=0.05)
    if statistic == "median":  # the sqrt(pi / 2) factor (BKGnet eq. 9)
        np.testing.assert_allclose(err, np.sqrt(np.pi / 2) * out.std / np.sqrt(out.n))
        assert np.std(est) / (s / np.sqrt(p)) == pytest.approx(np.sqrt(np.pi / 2), rel=0.05)


def test_estimate_error_edge_cases():
    e = estimate_error(np.array([2.0, 2.0, 2.0]), np.array([4, 1, 0]), "mean")
    assert e[0] == pytest.approx(1.0) and np.isnan(e[1:]).all()
    assert estimate_error(1.0, 100, "biweight") == pytest.approx(0.1 / np.sqrt(0.98))
    with pytest.raises(InputError, match="unknown statistic"):
        estimate_error(1.0, 10, "mad")


# ---------------------------------------------------------------------------------------------
# stamps
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ramp():
    ny, nx = 40, 50
    return (np.arange(ny)[:, None] * 1000.0 + np.arange(nx)[None, :]).astype(float)


@pytest.mark.parametrize("size", [1, 4, 7, 10])
def test_interior_cutouts_equal_slicing(ramp, size):
    x = np.array([20.0, 24.3, 17.6])
    y = np.array([15.0, 21.5, 18.49])
    st = cutouts(ramp, x, y, size)
    assert st.data.shape == (3, size, size) and len(st) == 3 and st.size == size
    xi = np.floor(x + 0.5).astype(int)
    yi = np.floor(y + 0.5).astype(int)
    for k in range(3):
        x0, y0 = xi[k] - size // 2, yi[k] - size // 2
        np.testing.assert_array_equal(st.data[k], ramp[y0:y0 + size, x0:x0 + size])
        assert st.x0[k] == x0 and st.y0[k] == y0
        # the source pixel sits at index size // 2 (centre for odd sizes)
        assert st.data[k, size // 2, size // 2] == ramp[yi[k], xi[k]]
    assert st.valid.all()
    np.testing.assert_allclose(st.valid_fraction, 1.0)


def test_subpixel_offsets_round_half_up():
    img = np.zeros((10, 10))
    x = np.array([3.0, 3.49, 3.5, 3.51, -0.5, 2.5])
    y = np.array([4.0, 4.5, 4.49, -0.3, 5.5, 6.5])
    st = cutouts(img, x, y, 3)
    np.testing.assert_array_equal(st.x0 + 1, [3, 3, 4, 4, 0, 3])  # anchor = floor(x + 0.5)
    np.testing.assert_array_equal(st.y0 + 1, [4, 5, 4, 0, 6, 7])
    np.testing.assert_allclose(st.dx, [0.0, 0.49, -0.5, -0.49, -0.5, -0.5])
    np.testing.assert_allclose(st.dy, [0.0, -0.5, 0.49, -0.3, -0.5, -0.5])
    assert np.all((st.dx >= -0.5) & (st.dx < 0.5) & (st.dy >= -0.5) & (st.dy < 0.5))


@pytest.mark.parametrize("size", [5, 6])
def test_edge_and_off_image_positions(ramp, size):
    ny, nx = ramp.shape
    x = np.array([0.0, nx - 1.0, 1.2, -3.0, 500.0, -100.0, np.nan])
    y = np.array([0.0, ny - 1.0, ny - 1.6, 10.0, 5.0, -100.0, 3.0])
    st = cutouts(ramp, x, y, size)
    for k in range(len(x)):
        if np.isfinite(x[k]):
            cols = st.x0[k] + np.arange(size)
            rows = st.y0[k] + np.arange(size)
            inside = ((rows[:, None] >= 0) & (rows[:, None] < ny)
                      & (cols[None, :] >= 0) & (cols[None, :] < nx))
        else:
            inside = np.zeros((size, size), bool)
        np.testing.assert_array_equal(st.valid[k], inside)
        assert np.isnan(st.data[k][~inside]).all()
        if inside.any():
            rr, cc = np.nonzero(inside)
            np.testing.assert_array_equal(st.data[k][inside],
                                          ramp[st.y0[k] + rr, st.x0[k] + cc])
        np.testing.assert_allclose(st.valid_fraction[k], inside.mean())
    # corner source: a quarter-ish of the stamp is inside
    h = size // 2
    assert st.valid[0].sum() == (size - h) ** 2
    # fully off the image
    for k in (4, 5, 6):
        assert not st.valid[k].any() and np.isnan(st.data[k]).all()


def test_masks_nans_and_image_objects(ramp):
    img = ramp.copy()
    img[10, 10] = np.nan
    mask = np.zeros(img.shape, bool)
    mask[11, 12] = True
    st = cutouts(img, [11.0], [11.0], 5, mask=mask)
    assert not st.valid[0, 1, 1] and np.isnan(st.data[0, 1, 1])  # NaN pixel (10, 10)
    assert not st.valid[0, 2, 3] and np.isnan(st.data[0, 2, 3])  # masked pixel (x=12, y=11)
    assert st.valid[0].sum() == 23
    im = Image(img, mask)
    st2 = cutouts(im, [11.0], [11.0], 5)
    np.testing.assert_array_equal(st2.valid, st.valid)
    np.testing.assert_array_equal(st2.data, st.data)


def test_big_endian_image_gives_identical_stamps(ramp):
    rng = np.random.default_rng(3)
    img = ramp + rng.normal(0, 1, ramp.shape)
    big = img.astype(">f8")
    assert not big.dtype.isnative
    x = rng.uniform(-5, 55, 30)
    y = rng.uniform(-5, 45, 30)
    a = cutouts(img, x, y, 9)
    b = cutouts(big, x, y, 9)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.valid, b.valid)
    assert b.data.dtype == np.float64 and b.data.dtype.isnative
    c = cutouts(img.astype(">f4"), x, y, 9)  # big-endian float32 too
    np.testing.assert_array_equal(c.data, cutouts(img.astype("<f4"), x, y, 9).data)


def test_gather_offsets(ramp):
    vals, valid = gather(ramp, np.array([5, 0]), np.array([5, 0]), np.array([-1, 0, 2]),
                         np.array([0, 1, -1]))
    np.testing.assert_array_equal(vals[0], [ramp[5, 4], ramp[6, 5], ramp[4, 7]])
    np.testing.assert_array_equal(valid[1], [False, True, False])
    assert np.isnan(vals[1, [0, 2]]).all()


def test_cutouts_bad_input(ramp):
    with pytest.raises(InputError, match="size"):
        cutouts(ramp, [1.0], [1.0], 0)
    with pytest.raises(InputError, match="size"):
        cutouts(ramp, [1.0], [1.0], 2.5)
    with pytest.raises(InputError, match="equal length"):
        cutouts(ramp, [1.0, 2.0], [1.0], 3)
    with pytest.raises(InputError, match="2-D"):
        cutouts(np.zeros(10), [1.0], [1.0], 3)


@pytest.mark.parametrize("r_in, r_out", [(0.0, 3.0), (5.0, 8.5), (30.0, 45.0)])
def test_annulus_offsets_cover_every_ring_pixel(r_in, r_out):
    dx, dy = annulus_offsets(r_out, r_in)
    have = set(zip(dx.tolist(), dy.tolist(), strict=True))
    rng = np.random.default_rng(4)
    R = int(np.ceil(r_out)) + 2
    off = np.arange(-R, R + 1)
    gy, gx = np.meshgrid(off, off, indexing="ij")
    for sx, sy in rng.uniform(-0.5, 0.5, (25, 2)):
        r = np.hypot(gx - sx, gy - sy)
        need = (r >= r_in) & (r <= r_out)
        assert set(zip(gx[need].tolist(), gy[need].tolist(), strict=True)) <= have
    # and not wastefully many: nothing beyond r_out + margin
    assert np.hypot(dx, dy).max() <= r_out + 1.0
