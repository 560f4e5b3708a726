"""skysub.metrics against analytic truth and seeded simulations with known answers."""

import itertools

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table
from scipy import stats as sps

from skysub import metrics as M
from skysub.errors import CatalogError, InputError

# every warning is an error here: NaN handling must be silent
pytestmark = pytest.mark.filterwarnings("error")


# ---------------------------------------------------------------------------------------------
# bias, scatter, relative error
# ---------------------------------------------------------------------------------------------

def test_scatter_of_gaussian_is_its_sigma():
    rng = np.random.default_rng(0)
    for s in (0.5, 3.0):
        x = rng.normal(2.0, s, 200_000)
        # absolute error against a truth of 2: sigma68 of N(0, s) = s (SE ~ 0.3 %)
        assert M.scatter(x, 2.0, relative=False) == pytest.approx(s, rel=0.01)
        assert M.bias(x, 2.0, relative=False) == pytest.approx(0.0, abs=0.01 * s)


def test_relative_error_exact_and_invalid_entries():
    pred = np.array([110.0, 90.0, 5.0, np.nan, 3.0, np.inf])
    true = np.array([100.0, 100.0, 0.0, 1.0, np.nan, 1.0])
    r = M.relative_error(pred, true)
    np.testing.assert_allclose(r[:2], [0.1, -0.1])
    assert np.isnan(r[2:]).all()  # zero truth, NaN pred, NaN truth, inf pred
    # broadcasting of a scalar truth
    np.testing.assert_allclose(M.relative_error([2.0, 4.0], 2.0), [0.0, 1.0])


def test_bias_and_scatter_on_constructed_data():
    rng = np.random.default_rng(1)
    true = rng.uniform(10.0, 1000.0, 100_000)
    b, s = 0.03, 0.05
    pred = true * (1.0 + b + s * rng.standard_normal(true.size))
    assert M.bias(pred, true) == pytest.approx(b, abs=0.001)  # Lumos eq. 17
    assert M.scatter(pred, true) == pytest.approx(s, rel=0.02)  # Lumos eq. 18
    # exact small case: relative errors 0.1, -0.2, 0.3, 0.0, 0.5 -> median 0.1
    assert M.bias([1.1, 0.8, 1.3, 1.0, 1.5], 1.0) == pytest.approx(0.1)
    # sigma68 = (q84 - q16) / 2 with numpy's linear interpolation
    rel = np.array([0.1, -0.2, 0.3, 0.0, 0.5])
    q16, q84 = np.percentile(rel, [16, 84])
    assert M.scatter(1.0 + rel, 1.0) == pytest.approx((q84 - q16) / 2)


def test_scatter_is_robust_to_a_few_outliers_and_ignores_nonfinite():
    rng = np.random.default_rng(2)
    true = np.full(50_000, 100.0)
    pred = true * (1 + 0.01 * rng.standard_normal(true.size))
    clean = M.scatter(pred, true)
    bad = pred.copy()
    bad[:500] = 1e6  # 1 % catastrophic outliers
    assert M.scatter(bad, true) == pytest.approx(clean, rel=0.05)
    assert np.std((bad - true) / true) > 100 * clean
    # NaN/inf anywhere are dropped, not propagated
    nan = pred.copy()
    nan[::7] = np.nan
    nan[1::7] = np.inf
    keep = np.ones(pred.size, bool)
    keep[::7] = keep[1::7] = False
    assert M.scatter(nan, true) == pytest.approx(M.scatter(pred[keep], true[keep]), rel=1e-12)
    assert M.bias(nan, true) == pytest.approx(M.bias(pred[keep], true[keep]), rel=1e-12)


def test_bias_scatter_of_nothing_valid_is_nan_without_warning():
    assert np.isnan(M.bias([np.nan, 1.0], [1.0, 0.0]))
    assert np.isnan(M.scatter([], []))
    assert np.isnan(M.scatter([np.nan], [np.nan], relative=False))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(InputError, match=r"pred\(3,\).*true\(2,\)"):
        M.bias([1, 2, 3], [1, 2])
    with pytest.raises(InputError, match="numeric"):
        M.relative_error(["a", "b"], [1, 2])


def test_masked_arrays_count_as_invalid():
    pred = np.ma.array([1.1, 50.0, 0.9], mask=[False, True, False])
    assert M.bias(pred, [1.0, 1.0, 1.0]) == pytest.approx(0.0)
    r = np.array([0.1, -0.1])
    q16, q84 = np.percentile(r, [16, 84])
    assert M.scatter(pred, 1.0) == pytest.approx((q84 - q16) / 2)


def test_sigma95_and_gaussianity():
    rng = np.random.default_rng(3)
    g = rng.normal(0, 2.0, 400_000)
    assert M.sigma95(g) == pytest.approx(1.959964 * 2.0, rel=0.01)
    # Lumos eq. 22 with sigma95 = half the 2.5-97.5 range: Gaussian -> 1.96 - 1
    assert M.gaussianity(g) == pytest.approx(0.959964, abs=0.02)
    u = rng.uniform(0, 1, 400_000)  # (0.975 - 0.025) / (0.84 - 0.16) - 1 = 0.397
    assert M.gaussianity(u) == pytest.approx(0.95 / 0.68 - 1, abs=0.01)
    lap = rng.laplace(0, 1, 400_000)  # heavy tails: ln(20) / ln(1/0.32) - 1 = 1.63
    assert M.gaussianity(lap) == pytest.approx(np.log(20) / np.log(1 / 0.32) - 1, abs=0.03)
    assert np.isnan(M.gaussianity([np.nan, np.nan]))
    assert np.isnan(M.gaussianity([1.0, 1.0, 1.0]))  # sigma68 = 0
    assert np.isnan(M.sigma95([]))


# ---------------------------------------------------------------------------------------------
# pulls
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gaussian_estimates():
    rng = np.random.default_rng(4)
    n = 200_000
    true = rng.uniform(50, 150, n)
    err = rng.uniform(0.5, 5.0, n)  # heteroscedastic, known
    pred = true + err * rng.standard_normal(n)
    return pred, true, err


@pytest.mark.parametrize("scale, width", [(1.0, 1.0), (2.0, 0.5), (0.5, 2.0)])
def test_pull_width_follows_error_scale(gaussian_estimates, scale, width):
    pred, true, err = gaussian_estimates
    s = M.pull_summary(pred, true, scale * err)
    assert s["n"] == pred.size
    assert s["sigma68"] == pytest.approx(width, rel=0.01)
    assert s["std"] == pytest.approx(width, rel=0.01)
    assert s["median"] == pytest.approx(0.0, abs=0.01 * width)
    if scale == 1.0:
        # P(|z| > 3) = 0.0027 (+- 0.00012 at n = 2e5); P(|z| > 5) = 5.7e-7
        assert s["frac_gt_3"] == pytest.approx(2 * sps.norm.sf(3), abs=6e-4)
        assert s["frac_gt_5"] < 2e-5
    if scale == 0.5:  # |pull| > 5 <=> |z| > 2.5
        assert s["frac_gt_5"] == pytest.approx(2 * sps.norm.sf(2.5), abs=1e-3)


def test_pulls_invalid_errors_and_empty():
    p = M.pulls([1.0, 2.0, 3.0, 4.0, np.nan], [0.0, 0.0, 0.0, 0.0, 0.0],
                [1.0, 0.0, -1.0, np.inf, 1.0])
    assert p[0] == 1.0
    assert np.isnan(p[1:]).all()
    s = M.pull_summary([1.0], [0.0], [0.0])
    assert s["n"] == 0 and all(np.isnan(s[k]) for k in s if k != "n")
    s = M.pull_summary([6.0, -4.0, 0.0, 1.0], 0.0, 1.0)
    assert s["frac_gt_5"] == 0.25 and s["frac_gt_3"] == 0.5 and s["median"] == 0.5


# ---------------------------------------------------------------------------------------------
# duplicates
# ---------------------------------------------------------------------------------------------

def _repeat_table(rng, n_obj=3000, err_factor=1.0, bands=("NB455", "NB685")):
    rows_id, rows_band, flux, ferr, k_of = [], [], [], [], {}
    for band in bands:
        k = rng.integers(1, 6, n_obj)  # 1-5 exposures per object and band
        ids = np.repeat(np.arange(n_obj), k)
        truth = rng.lognormal(4.0, 1.0, n_obj)[ids]
        sig = rng.uniform(1.0, 10.0, ids.size)  # per-exposure error
        rows_id.append(ids)
        rows_band.append(np.full(ids.size, band))
        flux.append(truth + sig * rng.standard_normal(ids.size))
        ferr.append(sig / err_factor)
        k_of[band] = k
    order = rng.permutation(sum(len(i) for i in rows_id))  # shuffled table
    t = Table({"id": np.concatenate(rows_id)[order], "band": np.concatenate(rows_band)[order],
               "flux": np.concatenate(flux)[order], "flux_err": np.concatenate(ferr)[order]})
    return t, k_of


def test_duplicates_formula():
    d = M.duplicates([3.0, 1.0, np.nan, 1.0], [0.0, 1.0, 0.0, 2.0], [3.0, 1.0, 1.0, 0.0],
                     [4.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(d[:2], [3.0 / 5.0, 0.0])  # BKGnet eq. 11
    assert np.isnan(d[2:]).all()


def test_duplicates_from_table_right_errors_give_unit_width():
    rng = np.random.default_rng(5)
    t, k_of = _repeat_table(rng)
    d = M.duplicates_from_table(t)
    expected_pairs = sum(int(np.sum(k * (k - 1) // 2)) for k in k_of.values())
    assert d.size == expected_pairs
    assert M.duplicates_sigma68(t) == pytest.approx(1.0, abs=0.02)
    # errors 20 % too small (as for PAUDM's annulus) -> sigma68[D] = 1.2
    t2, _ = _repeat_table(np.random.default_rng(5), err_factor=1.2)
    assert M.duplicates_sigma68(t2) == pytest.approx(1.2, abs=0.025)


def test_duplicates_pairs_match_brute_force():
    rng = np.random.default_rng(6)
    n = 60
    t = Table({"obj": rng.integers(0, 12, n), "band": rng.choice(["g", "r"], n),
               "f": rng.normal(10, 1, n), "e": rng.uniform(0.5, 1.5, n)})
    t["f"][[3, 17]] = np.nan  # invalid rows are dropped before pairing
    t["e"][5] = 0.0
    d, i, j = M.duplicates_from_table(t, id_col="obj", value_col="f", err_col="e",
                                      return_pairs=True)
    good = [r for r in range(n) if r not in (3, 17, 5)]
    brute = {(a, b) for a, b in itertools.combinations(good, 2)
             if t["obj"][a] == t["obj"][b] and t["band"][a] == t["band"][b]}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == brute
    assert len(i) == len(brute)
    assert np.all(i < j)
    np.testing.assert_allclose(d, (t["f"][i] - t["f"][j]) / np.hypot(t["e"][i], t["e"][j]))
    # no group columns: pairs across bands too
    d2 = M.duplicates_from_table(t, id_col="obj", value_col="f", err_col="e", group_cols=())
    brute2 = [(a, b) for a, b in itertools.combinations(good, 2) if t["obj"][a] == t["obj"][b]]
    assert d2.size == len(brute2)
    d3 = M.duplicates_from_table(t, id_col="obj", value_col="f", err_col="e", group_cols=None)
    np.testing.assert_array_equal(d2, d3)


def test_duplicates_from_dict_masked_and_empty():
    tab = {"id": np.array([1, 1, 2, 2, 3]), "flux": np.array([1.0, 2.0, 4.0, 4.0, 9.0]),
           "flux_err": np.ones(5)}
    d = M.duplicates_from_table(tab, group_cols=())
    np.testing.assert_allclose(np.sort(d), [-1 / np.sqrt(2), 0.0])
    t = Table({"id": MaskedColumn([1, 1, 1], mask=[False, False, True]),
               "band": ["g", "g", "g"], "flux": [1.0, 3.0, 100.0], "flux_err": [1.0, 1.0, 1.0]})
    np.testing.assert_allclose(M.duplicates_from_table(t), [-2 / np.sqrt(2)])
    single = Table({"id": [1, 2], "band": ["g", "g"], "flux": [1.0, 2.0], "flux_err": [1, 1]})
    assert M.duplicates_from_table(single).size == 0
    assert np.isnan(M.duplicates_sigma68(single))


def test_duplicates_with_many_high_cardinality_keys():
    # product of the key cardinalities > 2^62: the row-wise unique fallback must give the same
    rng = np.random.default_rng(16)
    n = 40_000
    cols = {f"k{c}": rng.permutation(n) for c in range(5)}  # 40000^5 > 2^62
    rep = np.r_[np.arange(n), np.arange(0, n, 4), np.arange(0, n, 8)]  # some rows 2-3 times
    t = Table({**{k: v[rep] for k, v in cols.items()}, "flux": rng.normal(0, 1, rep.size),
               "flux_err": np.ones(rep.size)})
    d, i, j = M.duplicates_from_table(t, id_col="k0", group_cols=("k1", "k2", "k3", "k4"),
                                      return_pairs=True)
    # ids 0, 8, 16...: 3 copies -> 3 pairs; 4, 12, ...: 2 copies -> 1 pair
    assert d.size == 3 * (n // 8) + (n // 4 - n // 8)
    assert np.all(rep[i] == rep[j])


def test_duplicates_missing_column_names_it():
    t = Table({"id": [1, 1], "flux": [1.0, 2.0], "flux_err": [1.0, 1.0]})
    with pytest.raises(CatalogError, match="'band'"):
        M.duplicates_from_table(t)
    with pytest.raises(CatalogError, match="'mag_err'"):
        M.duplicates_from_table(t, err_col="mag_err", group_cols=())


# ---------------------------------------------------------------------------------------------
# PIT
# ---------------------------------------------------------------------------------------------

def _mixtures(rng, n=4000, k=3):
    alpha = rng.dirichlet(np.ones(k), n)
    mu = rng.normal(100.0, 20.0, (n, k))
    sigma = rng.uniform(2.0, 15.0, (n, k))
    comp = (rng.random(n)[:, None] > np.cumsum(alpha, axis=1)).sum(axis=1)
    comp = np.minimum(comp, k - 1)
    rows = np.arange(n)
    truth = rng.normal(mu[rows, comp], sigma[rows, comp])
    return alpha, mu, sigma, truth


def test_mixture_cdf_matches_scipy():
    x = np.array([-1.0, 0.3, 2.5])
    c = M.mixture_cdf([[1.0]] * 3, [[0.5]] * 3, [[2.0]] * 3, x)
    np.testing.assert_allclose(c, sps.norm.cdf(x, 0.5, 2.0), rtol=1e-12)
    # unnormalised weights are normalised; a shared (k,) mixture broadcasts over objects
    c = M.mixture_cdf([2.0, 6.0], [0.0, 3.0], [1.0, 0.5], x)
    np.testing.assert_allclose(c, 0.25 * sps.norm.cdf(x, 0, 1) + 0.75 * sps.norm.cdf(x, 3, 0.5),
                               rtol=1e-12)
    # per-component truncation at 0 (Lumos eq. 10) == scipy truncnorm
    xs = np.array([-0.5, 0.0, 0.2, 1.0, 4.0])
    c = M.mixture_cdf([1.0, 1.0], [0.5, -1.0], [1.0, 2.0], xs, lower=0.0)
    ref = 0.5 * (sps.truncnorm.cdf(xs, -0.5, np.inf, loc=0.5, scale=1.0)
                 + sps.truncnorm.cdf(xs, 0.5, np.inf, loc=-1.0, scale=2.0))
    np.testing.assert_allclose(c, ref, rtol=1e-10, atol=1e-15)


def test_pit_of_samples_from_the_mixture_is_uniform():
    rng = np.random.default_rng(7)
    alpha, mu, sigma, truth = _mixtures(rng)
    pit = M.pit_gaussian_mixture(alpha, mu, sigma, truth)
    assert pit.shape == truth.shape and np.all((pit >= 0) & (pit <= 1))
    ks = M.pit_uniformity(pit)
    assert ks.pvalue > 0.01
    counts, edges = M.pit_histogram(pit, bins=10)
    np.testing.assert_allclose(edges, np.linspace(0, 1, 11))
    assert counts.sum() == truth.size
    # each bin ~ Binomial(4000, 0.1): 400 +- 19
    assert np.all(np.abs(counts - 400) < 5 * 19)


def test_pit_detects_biased_narrow_and_wide_pdfs():
    rng = np.random.default_rng(8)
    alpha, mu, sigma, truth = _mixtures(rng)
    biased = M.pit_gaussian_mixture(alpha, mu + 0.5 * sigma, sigma, truth)
    assert M.pit_uniformity(biased).pvalue < 1e-6
    assert np.median(biased) < 0.45  # truth sits low in a PDF shifted up
    narrow = M.pit_gaussian_mixture(alpha, mu, 0.5 * sigma, truth)
    c, _ = M.pit_histogram(narrow, bins=10)
    assert c[0] + c[-1] > 1.5 * 0.2 * truth.size  # piles up at 0 and 1 (uniform: 800 +- 25)
    assert M.pit_uniformity(narrow).pvalue < 1e-6
    wide = M.pit_gaussian_mixture(alpha, mu, 2 * sigma, truth)
    c, _ = M.pit_histogram(wide, bins=10)
    assert c[0] + c[-1] < 0.5 * 0.2 * truth.size
    assert M.pit_uniformity(wide).pvalue < 1e-6


def test_pit_of_truncated_mixture_samples_is_uniform_with_lower():
    rng = np.random.default_rng(9)
    n = 4000
    mu = rng.uniform(-2.0, 3.0, (n, 1))
    sigma = rng.uniform(0.5, 2.0, (n, 1))
    a = (0.0 - mu[:, 0]) / sigma[:, 0]
    truth = sps.truncnorm.rvs(a, np.inf, loc=mu[:, 0], scale=sigma[:, 0], random_state=rng)
    pit = M.pit_gaussian_mixture(np.ones((n, 1)), mu, sigma, truth, lower=0.0)
    assert M.pit_uniformity(pit).pvalue > 0.01
    # ignoring the truncation is detectably wrong
    assert M.pit_uniformity(M.pit_gaussian_mixture(np.ones((n, 1)), mu, sigma, truth)
                            ).pvalue < 1e-6


def test_pit_invalid_rows_and_bad_input():
    alpha = np.array([[0.5, 0.5], [np.nan, 1.0], [0.0, 0.0]])
    pit = M.pit_gaussian_mixture(alpha, np.zeros((3, 2)), np.ones((3, 2)), [0.0, 0.0, 0.0])
    assert pit[0] == pytest.approx(0.5)
    assert np.isnan(pit[1:]).all()
    assert np.isnan(M.pit_gaussian_mixture([[1.0]], [[0.0]], [[1.0]], [np.nan]))[0]
    with pytest.raises(InputError, match="alpha"):
        M.pit_gaussian_mixture([[-0.1, 1.1]], [[0, 0]], [[1, 1]], [0.0])
    with pytest.raises(InputError, match="sigma"):
        M.pit_gaussian_mixture([[1.0]], [[0.0]], [[0.0]], [0.0])
    with pytest.raises(InputError, match="n = len"):
        M.pit_gaussian_mixture(np.ones((3, 2)), np.zeros((3, 2)), np.ones((3, 2)), [0.0, 1.0])
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        M.pit_histogram([0.2, 1.5])
    with pytest.raises(InputError, match="bins"):
        M.pit_histogram([0.2], bins=0)
    ks = M.pit_uniformity([np.nan])
    assert np.isnan(ks.statistic) and np.isnan(ks.pvalue)
    c, _ = M.pit_histogram([0.0, 0.05, np.nan, 1.0], bins=2)
    np.testing.assert_array_equal(c, [2, 1])


# ---------------------------------------------------------------------------------------------
# power spectrum
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(128, 128), (96, 160)])
def test_white_noise_is_flat_and_parseval_holds(shape):
    rng = np.random.default_rng(10)
    s = 3.0
    img = 50.0 + rng.normal(0.0, s, shape)
    k, p, det = M.power_spectrum(img, return_details=True)
    n = img.size
    # Parseval: every non-DC mode is binned, the DC mode is zero after mean subtraction
    assert np.sum(p * det["n_modes"]) == pytest.approx(n * img.var(), rel=1e-10)
    assert det["n_modes"].sum() == n - 1
    assert det["masked_fraction"] == 0.0 and det["mean"] == pytest.approx(img.mean())
    # flat at s^2: per-bin mean of ~n_modes/2 independent exponential variables
    tol = 5 * np.sqrt(2.0 / det["n_modes"])
    assert np.all(np.abs(p / s**2 - 1) < np.maximum(tol, 0.05))
    assert np.average(p, weights=det["n_modes"]) / s**2 == pytest.approx(1.0, abs=0.03)
    slope = np.polyfit(k, p / s**2, 1)[0]
    assert abs(slope) < 0.3  # over k in [0, 0.7]: flat
    # unit-width bins: Delta k = 1 / min(nx, ny); bin j holds |k| around j * Delta k
    dk = 1.0 / min(shape)
    assert np.all(np.abs(k / dk - np.round(k / dk)) <= 0.5)
    assert k.min() > 0 and k.max() <= np.hypot(0.5, 0.5) + 1e-12


def test_sinusoid_peaks_at_its_frequency():
    ny, nx = 64, 128
    y, x = np.mgrid[:ny, :nx]
    u, v = 10, 3  # integer periods across the map: no leakage
    amp = 2.0
    img = 7.0 + amp * np.cos(2 * np.pi * (u * x / nx + v * y / ny) + 0.3)
    k0 = np.hypot(u / nx, v / ny)
    k, p, det = M.power_spectrum(img, return_details=True)
    ipk = np.argmax(p)
    assert abs(k[ipk] - k0) <= 0.5 / min(nx, ny)
    assert np.sum(p * det["n_modes"]) == pytest.approx(img.size * amp**2 / 2, rel=1e-10)
    others = np.delete(p, ipk)
    assert np.all(others < 1e-20 * p[ipk])
    # pixel_scale: k in cycles per unit
    k2, p2 = M.power_spectrum(img, pixel_scale=0.25)
    np.testing.assert_allclose(k2, k / 0.25)
    np.testing.assert_allclose(p2, p)
    # explicit bins
    k3, p3, d3 = M.power_spectrum(img, nbins=20, return_details=True)
    assert len(k3) <= 20
    assert abs(k3[np.argmax(p3)] - k0) <= np.hypot(0.5, 0.5) / 20
    assert np.sum(p3 * d3["n_modes"]) == pytest.approx(img.size * amp**2 / 2, rel=1e-10)


def test_hann_window_reduces_leakage_of_non_periodic_signal():
    n = 128
    y, x = np.mgrid[:n, :n]
    img = np.cos(2 * np.pi * 10.37 * x / n)  # not periodic on the map: leaks without a window
    k0 = 10.37 / n
    far = lambda k: np.abs(k - k0) > 0.15  # noqa: E731
    k, p = M.power_spectrum(img)
    kh, ph = M.power_spectrum(img, window="hann")
    assert abs(kh[np.argmax(ph)] - k0) < 1.0 / n
    leak = np.max(p[far(k)]) / p.max()
    leak_h = np.max(ph[far(kh)]) / ph.max()
    assert leak_h < 1e-3 * leak


def test_window_keeps_white_noise_level():
    rng = np.random.default_rng(11)
    img = rng.normal(0, 2.0, (128, 128))
    k, p, det = M.power_spectrum(img, window="hann", return_details=True)
    assert np.average(p, weights=det["n_modes"]) == pytest.approx(4.0, rel=0.05)
    assert np.sum(p * det["n_modes"]) == pytest.approx(img.size * det["variance"], rel=1e-10)


def test_masked_and_nan_pixels():
    rng = np.random.default_rng(12)
    s = 1.5
    img = 10.0 + rng.normal(0, s, (128, 128))
    mask = rng.random(img.shape) < 0.2
    k, p, det = M.power_spectrum(img, mask=mask, return_details=True)
    assert det["masked_fraction"] == pytest.approx(mask.mean())
    assert det["n_valid"] == (~mask).sum()
    # normalised by the number of valid pixels: white noise stays at s^2
    assert np.average(p, weights=det["n_modes"]) == pytest.approx(s**2, rel=0.03)
    assert det["mean"] == pytest.approx(img[~mask].mean())
    assert np.sum(p * det["n_modes"]) == pytest.approx(img.size * img[~mask].var(), rel=1e-10)
    # NaN pixels are the same as masked ones, whatever value hides under the mask
    nan = img.copy()
    nan[mask] = np.nan
    k2, p2 = M.power_spectrum(nan)
    np.testing.assert_allclose(p2, p, rtol=1e-12)
    other = img.copy()
    other[mask] = 1e9
    np.testing.assert_allclose(M.power_spectrum(other, mask=mask)[1], p, rtol=1e-12)


def test_smoothed_noise_follows_the_gaussian_transfer_function():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(13)
    w = 1.5
    img = gaussian_filter(rng.normal(0, 1, (256, 256)), w, mode="wrap")
    k, p, det = M.power_spectrum(img, return_details=True)
    model = np.exp(-4 * np.pi**2 * w**2 * k**2)  # |FT of a Gaussian kernel|^2
    sel = k < 0.2
    ratio = p[sel] / model[sel]
    # per bin: mean of ~n_modes / 2 independent exponentials
    assert np.all(np.abs(ratio - 1) < 5 * np.sqrt(2.0 / det["n_modes"][sel]))
    assert np.average(ratio, weights=det["n_modes"][sel]) == pytest.approx(1.0, abs=0.05)
    assert p[k > 0.4].max() < 1e-3 * p[0]  # strongly red


def test_power_spectrum_ratio():
    rng = np.random.default_rng(14)
    a = rng.normal(0, 1, (64, 64))
    k, r = M.power_spectrum_ratio(3 * a + 5, a)
    np.testing.assert_allclose(r, 9.0, rtol=1e-10)
    # NaN in either map masks the pixel in both
    b = a.copy()
    b[10:20, 10:20] = np.nan
    k2, r2 = M.power_spectrum_ratio(a, b)
    np.testing.assert_allclose(r2, 1.0, rtol=1e-10)
    with pytest.raises(InputError, match="same shape"):
        M.power_spectrum_ratio(a, a[:10])


def test_power_spectrum_bad_input():
    img = np.zeros((8, 8))
    with pytest.raises(InputError, match="2-D"):
        M.power_spectrum(np.zeros(10))
    with pytest.raises(InputError, match="window"):
        M.power_spectrum(img, window="hamming")
    with pytest.raises(InputError, match="mask shape"):
        M.power_spectrum(img, mask=np.zeros((4, 4), bool))
    with pytest.raises(InputError, match="no valid"):
        M.power_spectrum(np.full((8, 8), np.nan))
    with pytest.raises(InputError, match="nbins"):
        M.power_spectrum(img, nbins=0)
    with pytest.raises(InputError, match="pixel_scale"):
        M.power_spectrum(img, pixel_scale=0.0)


# ---------------------------------------------------------------------------------------------
# pixel statistics
# ---------------------------------------------------------------------------------------------

def test_pixel_stats_match_numpy_scipy():
    rng = np.random.default_rng(15)
    v = rng.gamma(2.0, 3.0, (50, 40))
    mask = rng.random(v.shape) < 0.1
    v[0, :5] = np.nan
    v[1, 0] = np.inf
    s = M.pixel_stats(v, mask)
    x = v[~mask & np.isfinite(v)]
    assert s["n"] == x.size
    assert s["mean"] == pytest.approx(np.mean(x), rel=1e-12)
    assert s["median"] == pytest.approx(np.median(x), rel=1e-12)
    assert s["std"] == pytest.approx(np.std(x), rel=1e-12)
    assert s["mad_std"] == pytest.approx(1.482602218505602 * np.median(np.abs(x - np.median(x))))
    assert s["skewness"] == pytest.approx(sps.skew(x), rel=1e-10)
    assert s["skewness"] == pytest.approx(2 / np.sqrt(2.0), rel=0.25)  # gamma(k=2): 2/sqrt(k)
    assert s["iqr"] == pytest.approx(sps.iqr(x), rel=1e-12)


def test_pixel_stats_degenerate():
    s = M.pixel_stats(np.full((3, 3), np.nan))
    assert s["n"] == 0 and all(np.isnan(s[k]) for k in s if k != "n")
    s = M.pixel_stats([5.0, 5.0, 5.0])
    assert s["std"] == 0.0 and s["iqr"] == 0.0 and np.isnan(s["skewness"])
    # nearly identical values: scipy's precision-loss case gives NaN skewness, silently
    s = M.pixel_stats([1.0, 1.0, 1.0 + 1e-15, 1.0])
    assert s["n"] == 4 and np.isnan(s["skewness"]) and s["mean"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="mask shape"):
        M.pixel_stats(np.zeros((3, 3)), np.zeros(9, bool))


# ---------------------------------------------------------------------------------------------
# summary table
# ---------------------------------------------------------------------------------------------

def test_background_summary_rows_and_values(gaussian_estimates):
    pred, true, err = (a[:20_000].copy() for a in gaussian_estimates)
    groups = np.where(np.arange(pred.size) % 3 == 0, "edge", "centre")
    err[groups == "edge"] *= 0.5  # underestimated errors at the edge -> pull width 2
    pred[5] = np.nan
    t = M.background_summary(pred, true, err, groups=groups)
    assert list(t["group"]) == ["all", "edge", "centre"]  # order of first appearance
    for c in ("n", "sigma68_rel", "bias_rel", "pull_sigma68", "frac_pull_gt5"):
        assert c in t.colnames and t[c].description
    assert t["n"][0] == pred.size - 1
    for row in t:
        sel = slice(None) if row["group"] == "all" else groups == row["group"]
        assert row["bias_rel"] == pytest.approx(M.bias(pred[sel], true[sel]), rel=1e-12)
        assert row["sigma68_rel"] == pytest.approx(M.scatter(pred[sel], true[sel]), rel=1e-12)
        ps = M.pull_summary(pred[sel], true[sel], err[sel])
        assert row["pull_sigma68"] == pytest.approx(ps["sigma68"], rel=1e-12)
        assert row["frac_pull_gt5"] == ps["frac_gt_5"]
    assert t["pull_sigma68"][2] == pytest.approx(1.0, abs=0.03)
    assert t["pull_sigma68"][1] == pytest.approx(2.0, abs=0.06)


def test_background_summary_no_err_empty_group_and_errors():
    t = M.background_summary([1.0, 2.0, np.nan], [1.0, 1.0, 1.0],
                             groups=np.array(["a", "a", "b"]))
    assert list(t["group"]) == ["all", "a", "b"]
    assert np.isnan(t["pull_sigma68"]).all() and list(t["n_pull"]) == [0, 0, 0]
    assert t["n"][2] == 0 and np.isnan(t["sigma68_rel"][2])
    assert t["bias_rel"][1] == pytest.approx(0.5)
    assert t["bias_abs"][1] == pytest.approx(0.5)
    t = M.background_summary([1.0, 2.0], [1.0, 1.0], [1.0, 1.0], groups=[1, 2])
    assert list(t["group"]) == ["all", "1", "2"]
    with pytest.raises(InputError, match="reserved"):
        M.background_summary([1.0], [1.0], groups=["all"])
    with pytest.raises(InputError, match="equal length"):
        M.background_summary([1.0, 2.0], [1.0])
    with pytest.raises(InputError, match="groups"):
        M.background_summary([1.0, 2.0], [1.0, 1.0], groups=["a"])
