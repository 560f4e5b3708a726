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
