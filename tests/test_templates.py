"""Scattered-light templates (BKGnet eq. 1-2) and TemplateCorrected, against known truth."""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from numpy.testing import assert_allclose, assert_array_equal

from skysub import flags as F
from skysub.background.base import BackgroundEstimator, BackgroundResult
from skysub.background.templates import (
    ScatteredLightTemplates,
    TemplateCorrected,
    central_level,
    central_region,
)
from skysub.errors import InputError, MissingFileError, OutputExistsError
from skysub.image import Image, ImageMeta
from skysub.stats import sigma68

SHAPE = (192, 256)
SRC_SIGMA = 2.0


def pattern(shape=SHAPE):
    """Known multiplicative scattered light: 1 + 0.2 exp(-d / 40), d = distance to the edge."""
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    d = np.minimum(np.minimum(xx, nx - 1 - xx), np.minimum(yy, ny - 1 - yy))
    return 1.0 + 0.2 * np.exp(-d / 40.0)


def expected_template(shape=SHAPE, central_fraction=0.5):
    """The pattern normalised by its central median, which is what eq. 1 recovers."""
    p = pattern(shape)
    rows, cols = central_region(shape, central_fraction)
    return p / np.median(p[rows, cols])


def exposure(rng, sky, *, n_src=12, shape=SHAPE, band="NB685", epoch="before", night=None,
             src_xy=None):
    """Poisson(sky x pattern + bright Gaussian sources); returns the Image and source (x, y)."""
    ny, nx = shape
    if src_xy is None:
        sx = rng.uniform(5, nx - 5, n_src)
        sy = rng.uniform(5, ny - 5, n_src)
    else:
        sx, sy = (np.asarray(v, float) for v in src_xy)
    flux = rng.uniform(5, 50, len(sx)) * sky * 2 * np.pi * SRC_SIGMA**2  # peak 5-50x sky
    yy, xx = np.mgrid[:ny, :nx]
    model = sky * pattern(shape)
    for x0, y0, f in zip(sx, sy, flux, strict=True):
        model += f / (2 * np.pi * SRC_SIGMA**2) * np.exp(
            -((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * SRC_SIGMA**2))
    data = rng.poisson(model).astype(float)
    return Image(data, None, meta=ImageMeta(band=band, epoch=epoch, night=night)), (sx, sy)


def near_sources(positions, radius, shape=SHAPE):
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    near = np.zeros(shape, bool)
    for sx, sy in positions:
        for x0, y0 in zip(sx, sy, strict=True):
            near |= (xx - x0) ** 2 + (yy - y0) ** 2 <= radius**2
    return near


@pytest.fixture(scope="module")
def built():
    rng = np.random.default_rng(11)
    imgs, pos = [], []
    for sky in np.linspace(15000, 30000, 6):
        im, p = exposure(rng, sky)
        imgs.append(im)
        pos.append(p)
    slt = ScatteredLightTemplates.build(imgs)
    return slt, imgs, pos


def test_template_recovers_known_pattern(built):
    """Away from sources (> 10 px from any) the template has the shape of the pattern.

    Both are normalised by their central medians (mu_BKG is the median of NOISY central pixels,
    which differs from sky x median(pattern) by ~0.1 % here; the correction uses the same
    definition, so only the shape matters).  Per-pixel noise of the median of 6 ratios at
    sigma / mu = 0.7 %: measured sigma68 0.30 %, 99th percentile 0.77 %; 8x8-block means within
    0.52 %; median offset 2e-5."""
    slt, _, pos = built
    assert slt.keys == [("NB685", "before", None)]
    assert slt.n_images[("NB685", "before", None)] == 6
    tmpl = slt.template("NB685", "before")
    assert tmpl.shape == SHAPE and tmpl.dtype == np.float32
    rows, cols = central_region(SHAPE, 0.5)
    assert abs(np.median(tmpl[rows, cols]) - 1) < 0.003
    rel = tmpl / np.median(tmpl[rows, cols]) / expected_template() - 1
    away = ~near_sources(pos, 10.0)
    assert sigma68(rel[away]) < 0.004
    assert np.percentile(np.abs(rel[away]), 99) < 0.01
    assert abs(np.median(rel[away])) < 0.0005
    blocks = np.where(away, rel, np.nan).reshape(SHAPE[0] // 8, 8, SHAPE[1] // 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        bmean = np.nanmean(blocks, axis=(1, 3))
    assert np.nanmax(np.abs(bmean)) < 0.008
    # the edges really carry ~20 % scattered light, and it is in the template
    assert tmpl[:, 0].mean() > 1.15


def test_sources_are_masked_not_in_template(built):
    """Even at the sources (peaks 5-50x the sky) the template stays within 2 % of the pattern
    (masked above 5 sigma, grown 2 px; measured max 1.3 %)."""
    slt, _, pos = built
    rel = slt.template("NB685", "before") / expected_template() - 1
    assert np.abs(rel).max() < 0.02
    assert slt.n_filled[("NB685", "before", None)] == 0


def test_correction_flattens_unseen_exposure(built):
    slt, _, _ = built
    rng = np.random.default_rng(99)
    im, p = exposure(rng, 22000.0)
    mu, _ = central_level(im, 0.5)
    corrected = slt.correct(im)
    assert isinstance(corrected, Image) and corrected.meta == im.meta
    ny, nx = SHAPE
    yy, xx = np.mgrid[:ny, :nx]
    d = np.minimum(np.minimum(xx, nx - 1 - xx), np.minimum(yy, ny - 1 - yy))
    edge = (d < 20) & ~near_sources([p], 10.0)
    before = np.mean(im.data[edge]) / mu - 1
    after = np.mean(corrected.data[edge]) / mu - 1
    assert before > 0.10  # ~15 % scattered light in the outer 20 px
    assert abs(after) < 0.005
    # eq. 2 literally
    assert_allclose(corrected.data,
                    im.data - (slt.template("NB685", "before").astype(float) - 1) * mu,
                    rtol=0, atol=1e-9)
    # the centre is barely touched
    rows, cols = central_region(SHAPE, 0.5)
    assert np.abs(np.median(corrected.data[rows, cols]) / mu - 1) < 0.002


class TinyAnnulus:
    """A minimal annulus-median estimator (r 10-15 px), written independently for the test."""

    name = "tiny"

    def estimate(self, image, x, y, *, mask=None, mag=None, neighbours=None):
        data, bad = image.data, image.mask
        ny, nx = data.shape
        yy, xx = np.mgrid[:ny, :nx]
        bkg, err, std, n = [], [], [], []
        for x0, y0 in zip(x, y, strict=True):
            r = np.hypot(xx - x0, yy - y0)
            v = data[(r >= 10) & (r < 15) & ~bad]
            bkg.append(np.median(v))
            std.append(np.std(v))
            err.append(1.2533 * np.std(v) / np.sqrt(v.size))
            n.append(v.size)
        k = len(bkg)
        return BackgroundResult(np.array(bkg), np.array(err), np.array(std), np.array(n),
                                F.zeros(k), {"inner_note": np.arange(k)})


def test_template_corrected_reduces_edge_errors(built):
    """Edge positions (3-12 px from an edge): the annulus alone is biased low by the curved
    scattered-light profile (measured mean |rel error| 1.6 %); with templates 0.18 % (seeds
    5-7: 0.16-0.19 %).  Asserted: < 0.3 % and at least 5x smaller.

    The remaining 0.18 % is the template's own per-pixel noise (median of 6 ratios, 0.3 %,
    times the pixel value of SLT at the source), which bkg_err neglects (as the paper does):
    bkg_err here is 0.05 %.  Templates from many more exposures make it negligible."""
    slt, _, _ = built
    rng = np.random.default_rng(5)
    ny, nx = SHAPE
    d = rng.uniform(3, 12, 40)
    along = rng.uniform(20, 170, 40)
    side = np.arange(40) % 4
    x = np.select([side == 0, side == 1, side == 2], [d, nx - 1 - d, along], along)
    y = np.select([side == 0, side == 1, side == 2], [along, along, d], ny - 1 - d)
    sky = 20000.0
    im, _ = exposure(rng, sky, n_src=0)
    truth = sky * (1 + 0.2 * np.exp(-np.minimum(np.minimum(x, nx - 1 - x),
                                                np.minimum(y, ny - 1 - y)) / 40.0))
    inner = TinyAnnulus()
    est = TemplateCorrected(inner, slt)
    assert isinstance(est, BackgroundEstimator) and est.name == "tiny+slt"
    plain = inner.estimate(im, x, y)
    res = est.estimate(im, x, y)
    err_plain = np.mean(np.abs(plain.bkg / truth - 1))
    err_slt = np.mean(np.abs(res.bkg / truth - 1))
    assert err_plain > 0.008
    assert err_slt < 0.003
    assert err_slt < err_plain / 5
    # bkg = inner estimate on the corrected image + scattered component at the source
    inner_corr = inner.estimate(slt.correct(im), x, y)
    assert_allclose(res.bkg, inner_corr.bkg + res.extra["bkg_scattered"], rtol=1e-12)
    assert_array_equal(res.bkg_err, inner_corr.bkg_err)
    assert_array_equal(res.extra["inner_note"], np.arange(40))
    mu, _ = central_level(im, 0.5)
    tm = slt.template("NB685", "before").astype(float)
    xi, yi = int(round(x[0])), int(round(y[0]))
    assert abs(res.extra["bkg_scattered"][0] - (tm[yi, xi] - 1) * mu) < 0.02 * mu * 0.2
    assert np.all(res.extra["bkg_scattered"] > 0.1 * sky)
    # off-image source: NaN and flagged
    r2 = est.estimate(im, [-5.0, 100.0], [50.0, 100.0])
    assert np.isnan(r2.bkg[0]) and r2.flags[0] & F.OFF_IMAGE and not r2.flags[1] & F.OFF_IMAGE


def test_background_map_of_template_corrected(built):
    slt, imgs, _ = built
    est = TemplateCorrected(TinyAnnulus(), slt)
    scattered, corrected = est.background_map(imgs[0])
    assert_allclose(corrected, slt.correct(imgs[0]).data)
    assert_allclose(scattered + corrected, imgs[0].data)
    assert est.map_names == ("SCATTERED", "CORRECTED")


def test_save_load_round_trip(built, tmp_path):
    slt, _, _ = built
    path = tmp_path / "slt.fits"
    assert slt.save(path) == path
    back = ScatteredLightTemplates.load(path)
    assert back.keys == slt.keys
    for k in slt.keys:
        assert_array_equal(back.template(*k), slt.template(*k))
        assert back.template(*k).dtype == np.float32
    assert back.n_images == slt.n_images and back.n_filled == slt.n_filled
    assert back.params == slt.params and back.central_fraction == 0.5
    with fits.open(path) as hdul:
        assert hdul[1].name == "SLT_NB685_BEFORE"
        assert hdul[1].header["BAND"] == "NB685" and hdul[1].header["NIMAGES"] == 6
        assert hdul[0].header["SRCTHRSH"] == 5.0
    # refuses to overwrite; overwrites when asked; no temporary file left behind
    with pytest.raises(OutputExistsError, match="overwrite"):
        slt.save(path)
    slt.save(path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slt.fits"]
    # a loaded file drives TemplateCorrected directly
    assert TemplateCorrected(TinyAnnulus(), path).templates.keys == slt.keys


def test_load_errors(tmp_path):
    with pytest.raises(MissingFileError, match="nope.fits"):
        ScatteredLightTemplates.load(tmp_path / "nope.fits")
    plain = tmp_path / "plain.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4))), fits.ImageHDU(np.ones((4, 4)), name="SCI")]
                 ).writeto(plain)
    with pytest.raises(InputError, match="no scattered-light template"):
        ScatteredLightTemplates.load(plain)
    junk = tmp_path / "junk.fits"
    junk.write_text("not a fits file at all")
    with pytest.raises(InputError, match="junk.fits"):
        ScatteredLightTemplates.load(junk)
    with pytest.raises(MissingFileError, match="directory"):
        ScatteredLightTemplates({("b", "e"): np.ones((3, 3))}, {("b", "e"): 3}).save(
            tmp_path / "missing_dir" / "x.fits")


def _flat_images(n, *, band="g", epoch="before", night=None, shape=(48, 64), seed=0):
    rng = np.random.default_rng(seed)
    return [Image(rng.poisson(1000.0, shape).astype(float), None,
                  meta=ImageMeta(band=band, epoch=epoch, night=night)) for _ in range(n)]


def test_build_errors():
    imgs = _flat_images(3)
    nameless = Image(np.ones((48, 64)), None, meta=ImageMeta(epoch="before"))
    with pytest.raises(InputError, match=r"image 3 .*meta\.band"):
        ScatteredLightTemplates.build([*imgs, nameless])
    with pytest.raises(InputError, match=r"g/before: 2 image\(s\), at least min_images=3"):
        ScatteredLightTemplates.build(imgs[:2])
    with pytest.raises(InputError, match="night"):
        ScatteredLightTemplates.build(imgs, per_night=True)
    odd = _flat_images(1, shape=(48, 60))
    with pytest.raises(InputError, match="differ in shape"):
        ScatteredLightTemplates.build([*imgs, *odd])
    with pytest.raises(InputError, match="catalogs has 1 entries for 3 images"):
        ScatteredLightTemplates.build(imgs, catalogs=[None])
    with pytest.raises(InputError, match="Image objects"):
        ScatteredLightTemplates.build([np.ones((4, 4))] * 3)
    with pytest.raises(InputError, match="no images"):
        ScatteredLightTemplates.build([])
    with pytest.raises(InputError, match="central_fraction"):
        ScatteredLightTemplates.build(imgs, central_fraction=0.0)


def test_correct_errors():
    slt = ScatteredLightTemplates.build(_flat_images(3))
    other = _flat_images(1, band="r")[0]
    with pytest.raises(InputError, match=r"band='r'.*known keys.*g/before"):
        slt.correct(other)
    with pytest.raises(InputError, match="known keys"):
        slt.template("r", "after")
    wrong = _flat_images(1, shape=(40, 64))[0]
    with pytest.raises(InputError, match=r"shape \(40, 64\) does not match"):
        slt.correct(wrong)
    with pytest.raises(InputError, match="meta.band and meta.epoch"):
        slt.correct(np.ones((48, 64)))
    with pytest.raises(InputError, match="estimate"):
        TemplateCorrected(object(), slt)
    assert ("g", "before") in slt and ("g", "before", None) in slt
    assert ("r", "before") not in slt and "junk" not in slt


def test_flat_sky_template_is_one_and_keys_split():
    """No scattered light -> template 1 within noise; bands, epochs and nights are separate."""
    imgs = (_flat_images(3, band="g", seed=1) + _flat_images(3, band="g", epoch="after", seed=2)
            + _flat_images(4, band="r", seed=3))
    slt = ScatteredLightTemplates.build(imgs)
    assert slt.keys == [("g", "after", None), ("g", "before", None), ("r", "before", None)]
    assert slt.n_images[("r", "before", None)] == 4
    for k in slt.keys:
        t = slt.template(*k)
        assert abs(np.median(t) - 1) < 0.002 and np.std(t) < 0.04
    # per night: keys carry the night; an image's night picks its own template
    nights = _flat_images(3, night="n1", seed=4) + _flat_images(3, night="n2", seed=5)
    pn = ScatteredLightTemplates.build(nights, per_night=True)
    assert pn.keys == [("g", "before", "n1"), ("g", "before", "n2")]
    assert pn.template("g", "before", "n2") is pn.template(*pn.keys[1])
    with pytest.raises(InputError, match="known keys"):
        pn.template("g", "before")  # no all-nights template
    # an all-nights template serves an image that has a night
    mu, _ = central_level(nights[0], 0.5)
    assert_allclose(slt.correct(nights[0]).data,
                    nights[0].data - (slt.template("g", "before").astype(float) - 1) * mu)


def test_catalog_masking_and_filled_pixels():
    """A source at the same place in every exposure: the catalogue circle masks it everywhere;
    those pixels have no valid ratio, are set to 1.0 and reported (count and warning)."""
    rng = np.random.default_rng(8)
    x0, y0, r = 30.3, 20.7, 5.0
    imgs = []
    for _ in range(3):
        im, _ = exposure(rng, 1000.0, shape=(48, 64), src_xy=([x0], [y0]))
        imgs.append(im)
    cats = [(np.array([x0]), np.array([y0]))] * 3
    with pytest.warns(UserWarning, match="no valid ratio"):
        slt = ScatteredLightTemplates.build(imgs, catalogs=cats, source_radius=r)
    yy, xx = np.mgrid[:48, :64]
    disk = (xx - x0) ** 2 + (yy - y0) ** 2 <= r**2
    key = ("NB685", "before", None)
    assert slt.n_filled[key] == disk.sum()
    t = slt.template(*key)
    assert np.all(t[disk] == 1.0)
    # without the catalogue the faint wings just outside the thresholded core leak in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loose = ScatteredLightTemplates.build(imgs, grow=0, source_threshold=50.0)
    assert loose.template(*key)[disk].max() > 1.5  # the source itself is in the template


def test_memory_chunking_gives_same_result(monkeypatch):
    """The row-chunked median equals the one-shot median."""
    import skysub.background.templates as T

    imgs = _flat_images(3, seed=9)
    whole = ScatteredLightTemplates.build(imgs).template("g", "before")
    monkeypatch.setattr(T, "_CHUNK_ELEMENTS", 3 * 64 * 5)  # 5 rows per chunk
    chunked = ScatteredLightTemplates.build(imgs).template("g", "before")
    assert_array_equal(whole, chunked)
