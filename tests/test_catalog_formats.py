"""Catalogues astronomers already have: SExtractor ASCII_HEAD and FITS_LDAC (1-based
X_IMAGE/Y_IMAGE -> 0-based x, y), photutils SourceCatalog tables and sep record arrays, each
written here with sources at known 0-based positions."""

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.table import Table
from numpy.testing import assert_allclose, assert_array_equal

from skysub.catalogs import FORMATS_UNDERSTOOD
from skysub.errors import CatalogError
from skysub.image import Image
from skysub.io import catalog_for_image, read_catalog

# 0-based truth: pixel centres at integers (numpy / photutils / sep convention)
TRUE_X = np.array([10.0, 25.5, 40.25])
TRUE_Y = np.array([12.0, 30.0, 5.75])
RA = np.array([150.1, 150.2, 150.3])
DEC = np.array([2.1, 2.2, 2.3])

ASCII_HEAD = """\
#   1 NUMBER                 Running object number
#   2 X_IMAGE                Object position along x                                    [pixel]
#   3 Y_IMAGE                Object position along y                                    [pixel]
#   4 ALPHA_J2000            Right ascension of barycenter (J2000)                      [deg]
#   5 DELTA_J2000            Declination of barycenter (J2000)                          [deg]
#   6 MAG_AUTO               Kron-like elliptical aperture magnitude                    [mag]
#   7 THETA_IMAGE            Position angle (CCW/x)                                     [deg]
"""


def _write_ascii_head(path):
    rows = [f"{i + 1:10d} {x + 1:10.4f} {y + 1:10.4f} {r:12.7f} {d:+12.7f} {18 + i:8.4f} 30.0"
            for i, (x, y, r, d) in enumerate(zip(TRUE_X, TRUE_Y, RA, DEC, strict=True))]
    path.write_text(ASCII_HEAD + "\n".join(rows) + "\n")
    return path


def _write_ldac(path):
    imhead = fits.BinTableHDU.from_columns(
        [fits.Column(name="Field Header Card", format="1680A", array=np.array(["x" * 80]))],
        name="LDAC_IMHEAD")
    objects = fits.BinTableHDU.from_columns([
        fits.Column(name="NUMBER", format="J", array=np.arange(1, 4)),
        fits.Column(name="X_IMAGE", format="E", array=TRUE_X + 1),
        fits.Column(name="Y_IMAGE", format="E", array=TRUE_Y + 1),
        fits.Column(name="ALPHA_J2000", format="D", array=RA),
        fits.Column(name="DELTA_J2000", format="D", array=DEC),
    ], name="LDAC_OBJECTS")
    fits.HDUList([fits.PrimaryHDU(), imhead, objects]).writeto(path)
    return path


def test_sextractor_ascii_head_is_one_based(tmp_path):
    cat = read_catalog(_write_ascii_head(tmp_path / "image.cat"))
    assert cat.meta["catalog_format"] == "sextractor"
    assert_array_equal(cat["id"], [1, 2, 3])
    assert_allclose(cat["x"], TRUE_X, atol=1e-4)
    assert_allclose(cat["y"], TRUE_Y, atol=1e-4)
    assert_allclose(cat["ra"], RA, atol=1e-7)
    assert_allclose(cat["dec"], DEC, atol=1e-7)
    assert_allclose(cat["x_image"], TRUE_X + 1, atol=1e-4)  # the original columns are kept
    # positioned on an image: the 0-based x, y are used as they are
    on = catalog_for_image(cat, Image(np.zeros((40, 50)), None))
    assert_allclose(on["x"], TRUE_X, atol=1e-4)
    assert list(on["on_image"]) == [True, True, True]


@pytest.mark.parametrize("name", ["image.fits", "image.ldac", "image.cat"])
def test_sextractor_fits_ldac_is_one_based(tmp_path, name):
    cat = read_catalog(_write_ldac(tmp_path / name))
    assert cat.meta["catalog_format"] == "sextractor"
    assert_array_equal(cat["id"], [1, 2, 3])
    assert_allclose(cat["x"], TRUE_X, atol=1e-5)
    assert_allclose(cat["y"], TRUE_Y, atol=1e-5)
    assert_allclose(cat["ra"], RA)


def _blobs():
    yy, xx = np.mgrid[0:40, 0:50]
    img = np.zeros((40, 50))
    for x, y in zip(TRUE_X, TRUE_Y, strict=True):
        img += 1000 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    return img


def test_photutils_source_catalog_table():
    from astropy.wcs import WCS
    from photutils.segmentation import SourceCatalog, detect_sources

    img = _blobs()
    segm = detect_sources(img, threshold=50.0, n_pixels=5)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [1.0, 1.0]
    w.wcs.cdelt = [-1e-4, 1e-4]
    qt = SourceCatalog(img, segm, wcs=w).to_table()
    before = qt.copy()
    cat = read_catalog(qt)
    assert cat.meta["catalog_format"] == "photutils"
    order = np.argsort(cat["x"])
    assert_allclose(np.asarray(cat["x"])[order], TRUE_X, atol=0.02)  # centroids of blobs
    assert_allclose(np.asarray(cat["y"])[order], TRUE_Y[np.argsort(TRUE_X)], atol=0.02)
    assert_array_equal(cat["id"], qt["label"])
    ra, dec = w.pixel_to_world_values(np.asarray(cat["x"]), np.asarray(cat["y"]))
    assert_allclose(cat["ra"], ra, atol=1e-9)
    assert_allclose(cat["dec"], dec, atol=1e-9)
    assert qt.colnames == before.colnames  # the caller's table is not modified


def test_sep_record_array():
    img = _blobs()
    objs = sep.extract(img, 50.0)
    before = objs.copy()
    cat = read_catalog(objs)
    assert cat.meta["catalog_format"] == "sep"
    assert_array_equal(cat["id"], np.arange(len(objs)))
    order = np.argsort(cat["x"])
    assert_allclose(np.asarray(cat["x"])[order], TRUE_X, atol=0.02)
    assert_allclose(np.asarray(cat["theta"]), np.degrees(objs["theta"]))  # sep: radians
    assert_array_equal(objs, before)
    # a plain numpy x, y record array (no id) works too
    rec = np.rec.fromarrays([TRUE_X, TRUE_Y], names="x,y")
    plain = read_catalog(rec)
    assert_array_equal(plain["id"], [0, 1, 2])
    assert_allclose(plain["x"], TRUE_X)


def test_unknown_catalogue_lists_the_formats(tmp_path):
    p = tmp_path / "odd.csv"
    Table({"name": ["a"], "col": [1.0], "row": [2.0]}).write(p)
    with pytest.raises(CatalogError, match="odd.csv.*found: name, col, row.*Formats understood"
                       ) as exc:
        read_catalog(p)
    for fmt in ("SExtractor", "photutils", "sep"):
        assert fmt in str(exc.value)
    assert len(FORMATS_UNDERSTOOD) == 4
    with pytest.raises(CatalogError, match="cannot read as SExtractor"):
        (tmp_path / "bad.cat").write_text("not a catalogue\n1 2 3\n")
        read_catalog(tmp_path / "bad.cat")


def test_empty_catalogues_of_each_format(tmp_path):
    p = tmp_path / "empty.cat"
    p.write_text(ASCII_HEAD)
    cat = read_catalog(p)
    assert len(cat) == 0 and "x" in cat.colnames
    empty = np.zeros(0, dtype=[("x", "f8"), ("y", "f8")])
    assert len(read_catalog(empty)) == 0


def test_workflows_translate_tables_handed_over_in_python():
    """A SExtractor-named Table given to measure_background is read like the file would be."""
    import numpy as np
    from astropy.table import Table

    from skysub.background.annulus import AnnulusBackground
    from skysub.image import Image
    from skysub.workflows import measure_background

    img = Image(data=np.full((60, 60), 10.0) + np.arange(60)[None, :] * 0.0, mask=None)
    sx = Table({"NUMBER": [1, 2], "X_IMAGE": [21.0, 41.0], "Y_IMAGE": [31.0, 11.0]})
    out = measure_background([img], sx, AnnulusBackground(3, 6))
    np.testing.assert_allclose(out["x"], [20.0, 40.0])  # 1-based -> 0-based
    np.testing.assert_allclose(out["bkg"], 10.0)
    assert list(sx.colnames) == ["NUMBER", "X_IMAGE", "Y_IMAGE"]  # the input is not modified


# -- shapes: SExtractor FLUX_RADIUS, A/B_IMAGE, THETA_IMAGE -> skysub r50, ba, theta ----------

def _measured_like_sextractor(r50, ba, theta, n=1.0, fwhm=3.0, seed=0):
    """One PSF-convolved Sersic galaxy of known shape, measured as SExtractor does (sep:
    isophotal moments, angle, and the radius of the circle holding half the light)."""
    from skysub.simulate.profiles import sersic_stamps
    from skysub.simulate.psf import gaussian_psf

    flux = 1e5
    if r50 is None:  # a point source: the PSF itself
        st = np.zeros((101, 101))
        st[38:63, 38:63] = flux * gaussian_psf(25, fwhm)
    else:
        st = sersic_stamps(101, flux, r50, n, ba=ba, theta=theta % 180.0,
                           psf=gaussian_psf(25, fwhm))[0]
    img = np.ascontiguousarray(st + np.random.default_rng(seed).normal(0.0, 1.0, st.shape))
    obj = sep.extract(img, 3.0, err=1.0, minarea=5)
    o = obj[np.argmax(obj["flux"])]
    fr, _ = sep.flux_radius(img, [o["x"]], [o["y"]], [45.0], 0.5, normflux=[flux], subpix=5)
    # a SExtractor catalogue: 1-based positions, THETA_IMAGE in degrees (CCW from +x)
    return {"NUMBER": 1, "X_IMAGE": o["x"] + 1, "Y_IMAGE": o["y"] + 1, "FLUX_RADIUS": fr[0],
            "A_IMAGE": o["a"], "B_IMAGE": o["b"], "THETA_IMAGE": np.degrees(o["theta"])}


TRUE_SHAPES = [(4.0, 0.5, 30.0), (2.5, 0.7, 120.0), (6.0, 0.4, -50.0), (3.0, 0.6, 75.0)]


def test_sextractor_shapes_recover_known_galaxies(tmp_path):
    from skysub.catalogs import has_sextractor_shapes, sextractor_shapes

    rows = [_measured_like_sextractor(*s) for s in TRUE_SHAPES]
    rows.append(_measured_like_sextractor(None, 1.0, 0.0))  # a point source (just the PSF)
    t = Table(rows=rows)
    path = tmp_path / "cat.fits"
    t.write(path)
    cat = read_catalog(path)  # SExtractor columns, lower-cased, 1-based positions translated
    assert cat.meta["catalog_format"] == "sextractor" and has_sextractor_shapes(cat)
    sh = sextractor_shapes(cat, psf_sigma=3.0 / 2.3548)
    for i, (r50, ba, theta) in enumerate(TRUE_SHAPES):
        assert sh["r50"][i] == pytest.approx(r50, rel=0.1)  # semi-major, PSF removed
        assert sh["ba"][i] == pytest.approx(ba, abs=0.05)
        # skysub: degrees CCW from +x in [0, 180): SExtractor's -50 is 130
        assert abs((sh["theta"][i] - theta % 180.0 + 90) % 180 - 90) < 2.0
        assert 0 <= sh["theta"][i] < 180 and sh["sersic_n"][i] == 1.0
    assert sh["r50"][-1] == 0.0 and sh["ba"][-1] == 1.0  # the star stays a point source
    # without the PSF the shapes are those of the convolved light: larger and rounder
    raw = sextractor_shapes(cat)
    assert np.all(raw["r50"][:4] > sh["r50"][:4]) and np.all(raw["ba"][:4] >= sh["ba"][:4])
    # a catalogue's own r50 wins: nothing to convert
    cat["r50"] = 1.0
    assert not has_sextractor_shapes(cat)


def test_sextractor_shapes_name_missing_columns():
    from skysub.catalogs import sextractor_shapes

    t = Table({"id": [1], "x": [1.0], "y": [2.0], "flux_radius": [2.0], "a_image": [2.0]})
    with pytest.raises(CatalogError, match="B_IMAGE, THETA_IMAGE"):
        sextractor_shapes(t)
    t["b_image"] = [1.0]
    t["theta_image"] = [0.0]
    with pytest.raises(CatalogError, match="psf_sigma"):
        sextractor_shapes(t, psf_sigma=-1.0)


def test_circle_factor():
    from skysub.catalogs import circle_factor

    # q = 1: the circle is the half-light circle; narrower ellipses need a larger circle
    assert circle_factor(1.0) == pytest.approx(1.0, abs=1e-4)
    f = circle_factor([0.8, 0.5, 0.2])
    assert np.all(np.diff(f) > 0) and f[0] > 1.0
    # check one value by Monte Carlo: an elliptical Gaussian of axis ratio 0.5
    rng = np.random.default_rng(0)
    q = 0.5
    xy = rng.normal(size=(400_000, 2)) * [q**-0.5, q**0.5]
    r_half = np.median(np.hypot(*xy.T))
    assert r_half / 1.1774100225154747 == pytest.approx(circle_factor(q), rel=5e-3)


def test_optimal_photometry_reads_sextractor_shapes():
    """A SExtractor catalogue without r50 gives the optimal photometer its galaxies' shapes:
    the total flux of a known galaxy comes back (as a point source it would not)."""
    from skysub.background.annulus import AnnulusBackground
    from skysub.photometry import OptimalPhotometer
    from skysub.simulate.profiles import sersic_stamps
    from skysub.simulate.psf import gaussian_psf
    from skysub.workflows import measure_photometry

    psf = gaussian_psf(25, 3.0)
    row = _measured_like_sextractor(4.0, 0.5, 30.0)
    data = np.random.default_rng(1).normal(0.0, 1.0, (201, 201)) + 10.0
    flux = 2e4
    data[50:151, 50:151] += sersic_stamps(101, flux, 4.0, 1.0, ba=0.5, theta=30.0, psf=psf)[0]
    row.update(X_IMAGE=101.0, Y_IMAGE=101.0)  # the galaxy is at 0-based (100, 100)
    cat = read_catalog(Table(rows=[row]))
    phot = OptimalPhotometer(psf, background=AnnulusBackground(30, 45), size=51,
                             error_calibration="none")
    out = measure_photometry([Image(data=data, mask=None)], cat, phot, quiet=True)
    assert out["flux"][0] == pytest.approx(flux, rel=0.03)
    as_point = phot.measure(Image(data=data, mask=None), [100.0], [100.0])
    assert abs(as_point.flux[0] / flux - 1) > 0.1
