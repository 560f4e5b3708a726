"""The compiled clipping kernels against photutils/astropy and against the numpy fallback."""

import warnings

import numpy as np
import pytest
from astropy.stats import SigmaClip
from photutils.aperture import ApertureStats, CircularAnnulus, EllipticalAnnulus

from skysub import flags as F
from skysub import kernels
from skysub.background.annulus import AnnulusBackground
from skysub.errors import InputError
from skysub.stats import clipped_stats

pytestmark = pytest.mark.skipif(kernels.active_engine() != "numba",
                                reason="numba kernels unavailable")


@pytest.fixture(autouse=True)
def numba_engine():
    """The small test images are below the "auto" size threshold: force the kernels."""
    with kernels.engine("numba"):
        yield

REL = 1e-12


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = np.isfinite(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(a[ok] == b[ok], 0.0, np.abs(a[ok] - b[ok]) / np.abs(b[ok]))
    return float(d.max()) if d.size else 0.0


@pytest.fixture(scope="module")
def masked_image():
    """Poisson sky with bright outliers, NaNs, a masked blob and a fully masked corner."""
    rng = np.random.default_rng(3)
    img = rng.poisson(300.0, (300, 400)).astype(float)
    img[rng.random(img.shape) < 0.003] = 8000.0
    img[rng.random(img.shape) < 0.002] = np.nan
    mask = rng.random(img.shape) < 0.05
    mask[120:160, 200:260] = True
    mask[:60, :60] = True  # a source at (25, 25) with a 5-12 px annulus sees nothing
    return img, mask


def _positions(rng, n, shape):
    ny, nx = shape
    x = np.r_[rng.uniform(-10, nx + 10, n), 25.0, 0.0, nx - 1.0, 230.0, np.nan, -40.0]
    y = np.r_[rng.uniform(-10, ny + 10, n), 25.0, 0.0, ny - 1.0, 140.0, 10.0, 50.0]
    return x, y


@pytest.mark.parametrize("ba,theta", [(1.0, 0.0), (0.55, 35.0), (0.8, -110.0)])
@pytest.mark.parametrize("statistic", ["median", "mean"])
def test_kernel_equals_photutils_on_masked_data(masked_image, ba, theta, statistic):
    img, mask = masked_image
    rng = np.random.default_rng(11)
    x, y = _positions(rng, 150, img.shape)
    est = AnnulusBackground(5, 12, ba=ba, theta=theta, statistic=statistic, min_pixels=1)
    r = est.estimate(img, x, y, mask=mask)
    finite = np.isfinite(x)
    pos = np.c_[x[finite], y[finite]]
    ap = (CircularAnnulus(pos, 5, 12) if ba == 1.0 else
          EllipticalAnnulus(pos, 5, 12, 12 * ba, theta=np.deg2rad(theta)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # photutils warns about NaNs / empty apertures
        st = ApertureStats(img, ap, mask=mask, sigma_clip=SigmaClip(sigma=3.0, maxiters=10))
        ref = np.asarray(getattr(st, statistic), float)
        ref_std = np.asarray(st.std, float)
    # photutils gives NaN (or masked) for empty annuli; ours are NaN + NO_DATA
    ref = np.where(np.asarray(st.sum_aper_area.value) > 0, ref, np.nan)
    got = r.bkg[finite]
    assert _rel(got, ref) <= REL
    assert _rel(r.pixel_std[finite], np.where(np.isfinite(ref), ref_std, np.nan)) <= REL
    # the cases the data were built for
    corner = np.flatnonzero((x == 25.0) & (y == 25.0))[0]
    assert np.isnan(r.bkg[corner]) and r.flags[corner] & F.NO_DATA and r.flags[corner] & F.MASKED
    assert r.flags[np.flatnonzero(x == 0.0)[0]] & F.EDGE
    assert np.isnan(r.bkg[~finite]).all() and (r.flags[~finite] & F.OFF_IMAGE).all()
    assert (r.flags[x == -40.0] & F.OFF_IMAGE).all()
    assert np.isfinite(r.bkg).sum() > 100


@pytest.mark.parametrize("ba,theta,statistic",
                         [(1.0, 0.0, "median"), (0.6, 30.0, "mode"), (0.7, 80.0, "biweight"),
                          (1.0, 0.0, "mean")])
def test_kernel_equals_numpy_fallback(masked_image, ba, theta, statistic):
    img, mask = masked_image
    rng = np.random.default_rng(5)
    x, y = _positions(rng, 300, img.shape)
    est = AnnulusBackground(4, 9.5, ba=ba, theta=theta, statistic=statistic, chunk_size=70)
    a = est.estimate(img, x, y, mask=mask)
    with kernels.engine("numpy"):
        b = est.estimate(img, x, y, mask=mask)
    np.testing.assert_array_equal(a.n_pix, b.n_pix)
    np.testing.assert_array_equal(a.flags, b.flags)
    for name in ("bkg", "bkg_err", "pixel_std"):  # the same bits: the engine never matters
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_one_pixel_annulus_and_integer_image():
    # r 0-0.6 around a pixel centre: one pixel; std 0, error NaN (n = 1)
    img = np.arange(100, dtype=np.int32).reshape(10, 10)
    est = AnnulusBackground(0.0, 0.6, statistic="median", min_pixels=1)
    r = est.estimate(img, [3.0, 7.2], [4.0, 2.1])
    np.testing.assert_array_equal(r.n_pix, [1, 1])
    np.testing.assert_array_equal(r.bkg, [43.0, 27.0])
    np.testing.assert_array_equal(r.pixel_std, [0.0, 0.0])
    assert np.isnan(r.bkg_err).all()


def _astropy_row(v, **kw):
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan, np.nan, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = SigmaClip(**kw)(v, masked=True).compressed()
    return np.mean(c), np.median(c), np.std(c), c.size


@pytest.mark.parametrize("kw", [dict(sigma=3.0, maxiters=10), dict(sigma=2.0, maxiters=1),
                                dict(sigma=2.5, maxiters=None),
                                dict(sigma_lower=1.5, sigma_upper=4.0, maxiters=5)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clipped_stats_equal_astropy_and_fallback(kw, dtype):
    rng = np.random.default_rng(8)
    v = rng.normal(50.0, 4.0, (120, 90))
    v[:, :6] += rng.exponential(60.0, (120, 6))  # a one-sided tail: clipping re-admits values
    v[rng.random(v.shape) < 0.15] = np.nan
    v[0] = np.nan  # all masked
    v[1, 1:] = np.nan  # one value
    v[2] = 7.0  # constant: std 0, nothing clipped
    v[3, :2] = [np.inf, -np.inf]
    v = v.astype(dtype)
    ours = clipped_stats(v, **kw)
    with kernels.engine("numpy"):
        fallback = clipped_stats(v, **kw)
    ref = np.array([_astropy_row(row.astype(np.float64), **kw) for row in v])
    np.testing.assert_array_equal(ours.n, ref[:, 3].astype(int))
    np.testing.assert_array_equal(ours.n, fallback.n)
    for i, name in enumerate(("mean", "median", "std")):
        assert _rel(getattr(ours, name), ref[:, i]) <= REL, name
        np.testing.assert_array_equal(getattr(fallback, name), getattr(ours, name),
                                      err_msg=name)  # the same bits from both engines
    assert ours.n[0] == 0 and np.isnan(ours.median[0])
    assert ours.median[1] == v[1, 0] and ours.std[2] == 0.0 and ours.n[2] == 90


def test_unclipped_and_one_dimensional():
    v = np.array([1.0, 2.0, 3.0, 100.0, np.nan])
    s = clipped_stats(v, sigma=None)
    assert s.n == 4 and s.median == 2.5 and s.mean == pytest.approx(26.5, rel=1e-15)
    # 1-sigma: 100 goes first (bounds 2.5 -/+ 42.4), then 1 and 3 (2 -/+ 0.82), as astropy
    s = clipped_stats(v, sigma=1.0, maxiters=None)
    assert s.n == 1 and s.median == 2.0 and s.std == 0.0


def test_engine_selection_errors(monkeypatch):
    with pytest.raises(InputError, match="kernel engine"):
        kernels.set_engine("fortran")
    monkeypatch.setattr(kernels, "_engine", "cuda")
    with pytest.raises(InputError, match="SKYSUB_KERNELS"):
        kernels.compiled()
    monkeypatch.setattr(kernels, "_engine", "numba")
    monkeypatch.setattr(kernels, "_compiled", None)
    monkeypatch.setattr(kernels, "_failed", "ImportError: no numba")
    with pytest.raises(InputError, match="numba kernels are unavailable"):
        kernels.compiled()
    monkeypatch.setattr(kernels, "_engine", "auto")
    assert kernels.compiled() is None and kernels.active_engine() == "numpy"
    # and the estimator still works, through the fallback
    r = AnnulusBackground(2, 4).estimate(np.full((20, 20), 5.0), [10.0], [10.0])
    assert r.bkg[0] == 5.0


def test_uncachable_function_compiles_in_memory(monkeypatch):
    import numba

    from skysub import _numba_kernels as nk

    real = numba.njit

    def njit(*args, cache=False, **kw):
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available")
        return real(*args, **kw)

    monkeypatch.setattr(numba, "njit", njit)

    def f(a):
        return a + 1

    g = nk._jit(f)
    assert g(1) == 2 and not g._cache.__class__.__name__ == "FunctionCache"


def test_auto_engine_compiles_only_large_jobs(monkeypatch):
    monkeypatch.setattr(kernels, "_compiled", None)  # as in a fresh process
    monkeypatch.setattr(kernels, "_failed", None)
    with kernels.engine("auto"):
        small = kernels.AUTO_MIN_VALUES // 4
        assert kernels.active_engine(small) == "numpy"
        with kernels.job(4):  # four such calls to come in this process: worth the load
            assert kernels.active_engine(small) == "numba"
        # once loaded, the kernels serve every call (the numbers are the same either way)
        assert kernels.active_engine(10) == "numba"
        assert kernels.active_engine() == "numba"
    with kernels.engine("numpy"):
        assert kernels.active_engine(10**12) == "numpy"
