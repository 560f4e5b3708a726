"""Tests of skysub.io: FITS images, products, tables and catalogues."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from skysub import io as sio
from skysub.config import HeaderKeys
from skysub.errors import (
    CatalogError,
    HeaderError,
    InputError,
    MissingFileError,
    OutputExistsError,
)
from skysub.image import Image
from skysub.io import (
    catalog_for_image,
    check_output,
    read_catalog,
    read_image,
    read_meta,
    write_fits_product,
    write_table,
)

NY, NX = 40, 60


def _wcs_header(sip: bool = False) -> fits.Header:
    """A rotated TAN (optionally TAN-SIP) WCS written with a CD matrix."""
    h = fits.Header()
    rot = np.deg2rad(30.0)
    scale = 0.26 / 3600
    h["CTYPE1"] = "RA---TAN-SIP" if sip else "RA---TAN"
    h["CTYPE2"] = "DEC--TAN-SIP" if sip else "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 150.1, 2.2
    h["CRPIX1"], h["CRPIX2"] = 30.5, 20.5
    h["CD1_1"] = -scale * np.cos(rot)
    h["CD1_2"] = scale * np.sin(rot)
    h["CD2_1"] = scale * np.sin(rot)
    h["CD2_2"] = scale * np.cos(rot)
    if sip:
        h["A_ORDER"], h["B_ORDER"] = 2, 2
        h["A_2_0"], h["A_0_2"], h["B_1_1"] = 2e-5, -1e-5, 3e-5
    return h


def _meta_header(**extra) -> fits.Header:
    h = fits.Header()
    h["FILTER"] = "NB685"
    h["EPOCH"] = "before"
    h["EXPTIME"] = 100.0
    h["GAIN"] = 2.5
    h["RDNOISE"] = 4.0
    h["NIGHT"] = 20170101
    h["OBSERVER"] = "someone"
    for k, v in extra.items():
        h[k] = v
    return h


def _ramp() -> np.ndarray:
    yy, xx = np.indices((NY, NX))
    return (100.0 + xx + 1000.0 * yy).astype(np.float64)


@pytest.fixture
def wcs_image(tmp_path):
    """A float image with metadata, a rotated SIP WCS, a NaN and an inf."""
    data = _ramp()
    data[3, 4] = np.nan
    data[5, 6] = np.inf
    h = _meta_header()
    h.update(_wcs_header(sip=True))
    path = tmp_path / "exp.fits"
    fits.PrimaryHDU(data.astype(np.float32), header=h).writeto(path)
    return path


# ------------------------------------------------------------------------------------- reading
def test_read_image_data_mask_meta_wcs(wcs_image):
    im = read_image(wcs_image)
    expect = _ramp()
    assert im.data.dtype == np.float64 and im.data.dtype.isnative
    assert im.shape == (NY, NX)
    ok = np.isfinite(im.data)
    np.testing.assert_array_equal(im.data[ok], expect.astype(np.float32)[ok])
    # NaN and inf masked, nothing else
    assert im.mask.sum() == 2 and im.mask[3, 4] and im.mask[5, 6]
    assert im.meta.band == "NB685" and im.meta.epoch == "before"
    assert im.meta.exptime == 100.0 and im.meta.gain == 2.5 and im.meta.rdnoise == 4.0
    assert im.meta.night == "20170101"
    assert im.header["OBSERVER"] == "someone"
    assert im.path == wcs_image and im.name == "exp.fits"
    assert im.wcs is not None and im.wcs.has_celestial
    ref = WCS(_wcs_header(sip=True))
    xp = np.array([0.0, 10.3, 59.0, 25.0])
    yp = np.array([0.0, 33.1, 39.0, 2.5])
    np.testing.assert_allclose(im.wcs.all_pix2world(xp, yp, 0), ref.all_pix2world(xp, yp, 0),
                               rtol=0, atol=1e-10)


def test_big_endian_and_scaled_integers_give_identical_float64(tmp_path):
    yy, xx = np.indices((NY, NX))
    values = (10.0 + 2.0 * ((xx + 7 * yy) % 1000)).astype(np.float64)  # exact in every dtype
    files = {}
    for name, arr in (("f4", values.astype(">f4")), ("f8", values.astype(">f8")),
                      ("i4", values.astype(">i4")), ("le_f8", values.astype("<f8"))):
        files[name] = tmp_path / f"{name}.fits"
        fits.PrimaryHDU(arr).writeto(files[name])
    # int16 with BSCALE = 2, BZERO = 10
    hdu = fits.PrimaryHDU(values.copy())
    hdu.scale("int16", bscale=2, bzero=10)
    files["i2_scaled"] = tmp_path / "i2.fits"
    hdu.writeto(files["i2_scaled"])
    # uint16 stored as int16 + BZERO = 32768
    big = (values * 30).astype(np.uint16)
    files["u2"] = tmp_path / "u2.fits"
    fits.PrimaryHDU(big).writeto(files["u2"])
    with fits.open(files["i2_scaled"]) as h:  # the file really holds scaled int16
        assert h[0].header["BITPIX"] == 16 and h[0].header["BSCALE"] == 2
    with fits.open(files["u2"]) as h:
        assert h[0].header["BITPIX"] == 16 and h[0].header["BZERO"] == 32768
    for name, p in files.items():
        im = read_image(p)
        assert im.data.dtype == np.float64 and im.data.dtype.isnative, name
        expect = big.astype(np.float64) if name == "u2" else values
        np.testing.assert_array_equal(im.data, expect, err_msg=name)
        assert not im.mask.any(), name
        # the scaling cards are gone from the kept header (the data are physical now)
        assert "BZERO" not in im.header and "BSCALE" not in im.header


def test_hdu_selection_by_name_number_and_default(tmp_path):
    sci = _ramp()
    var = np.full((NY, NX), 4.0)
    path = tmp_path / "mef.fits"
    prim = fits.PrimaryHDU(header=_meta_header())  # metadata in the primary, no data
    tab = fits.BinTableHDU(Table({"a": [1, 2]}), name="TAB")
    fits.HDUList([prim, tab, fits.ImageHDU(sci, name="SCI"),
                  fits.ImageHDU(var, name="VAR")]).writeto(path)
    np.testing.assert_array_equal(read_image(path).data, sci)  # first 2-D HDU
    np.testing.assert_array_equal(read_image(path, hdu="var").data, var)  # case-insensitive
    np.testing.assert_array_equal(read_image(path, hdu=3).data, var)
    np.testing.assert_array_equal(read_image(path, hdu="3").data, var)
    # metadata inherited from the primary header
    im = read_image(path, hdu="VAR")
    assert im.meta.band == "NB685" and im.meta.exptime == 100.0
    with pytest.raises(InputError, match=r"no HDU named 'DQ'.*SCI.*VAR"):
        read_image(path, hdu="DQ")
    with pytest.raises(InputError, match=r"HDU 7 does not exist.*SCI"):
        read_image(path, hdu=7)
    with pytest.raises(InputError, match=r"HDU 'TAB' does not hold a 2-D image"):
        read_image(path, hdu="TAB")
    with pytest.raises(InputError, match=r"does not hold a 2-D image"):
        read_image(path, hdu=0)


def test_missing_and_non_fits_files(tmp_path):
    with pytest.raises(MissingFileError, match="nope.fits"):
        read_image(tmp_path / "nope.fits")
    bad = tmp_path / "text.fits"
    bad.write_text("not a FITS file\n")
    with pytest.raises(InputError, match="text.fits"):
        read_image(bad)
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((2, 3, 4))).writeto(cube)
    with pytest.raises(InputError, match=r"cube.fits: no HDU holds a 2-D image"):
        read_image(cube)


def test_mask_extension_and_mask_file(tmp_path):
    data = _ramp()
    m = np.zeros((NY, NX), np.uint8)
    m[10, 20] = 1
    m[0, 0] = 255
    path = tmp_path / "img.fits"
    fits.HDUList([fits.PrimaryHDU(data), fits.ImageHDU(m, name="BPM")]).writeto(path)
    expect = m != 0
    np.testing.assert_array_equal(read_image(path, mask="BPM").mask, expect)
    np.testing.assert_array_equal(read_image(path, mask=1).mask, expect)
    np.testing.assert_array_equal(read_image(path, hdu=0).mask, np.zeros((NY, NX), bool))
    mfile = tmp_path / "bpm.fits"
    fm = np.zeros((NY, NX), np.float32)
    fm[7, 8] = 0.5  # any nonzero value is bad
    fits.PrimaryHDU(fm).writeto(mfile)
    got = read_image(path, hdu=0, mask=mfile).mask
    assert got.sum() == 1 and got[7, 8]
    got = read_image(path, hdu=0, mask=str(mfile)).mask
    assert got.sum() == 1 and got[7, 8]
    # mask and NaN combine
    data2 = data.copy()
    data2[1, 1] = np.nan
    p2 = tmp_path / "img2.fits"
    fits.PrimaryHDU(data2).writeto(p2)
    got = read_image(p2, mask=mfile).mask
    assert got.sum() == 2 and got[1, 1] and got[7, 8]
    small = tmp_path / "small_mask.fits"
    fits.PrimaryHDU(np.zeros((5, 5), np.uint8)).writeto(small)
    with pytest.raises(InputError, match=r"small_mask.fits has shape \(5, 5\).*img.fits"):
        read_image(path, hdu=0, mask=small)
    with pytest.raises(MissingFileError, match=r"'nomask.fits' is neither an extension"):
        read_image(path, hdu=0, mask="nomask.fits")


def test_metadata_overrides_required_and_errors(tmp_path):
    h = _meta_header()
    del h["EXPTIME"]
    h["GAIN"] = "fast"
    path = tmp_path / "noexp.fits"
    fits.PrimaryHDU(_ramp(), header=h).writeto(path)
    with pytest.raises(HeaderError) as info:
        read_image(path, required=("exptime",), overrides={"gain": 1.5})
    msg = str(info.value)
    assert "noexp.fits" in msg and "EXPTIME" in msg and "--exptime" in msg
    with pytest.raises(HeaderError, match=r"noexp.fits.*GAIN.*'fast'"):
        read_image(path)
    im = read_image(path, required=("exptime", "band"),
                    overrides={"exptime": 30.0, "gain": 1.5, "band": "r", "rdnoise": None})
    assert im.meta.exptime == 30.0 and im.meta.gain == 1.5 and im.meta.band == "r"
    assert im.meta.rdnoise == 4.0  # None override ignored: header value used
    # defaults of missing optional fields
    meta = read_meta(fits.Header(), source="empty.fits")
    assert (meta.band, meta.epoch, meta.exptime, meta.night) == (None, None, None, None)
    assert meta.gain == 1.0 and meta.rdnoise == 0.0
    # custom keywords
    meta = read_meta({"FILT": "g", "TEXP": 12.5}, keys=HeaderKeys(band="FILT", exptime="TEXP"))
    assert meta.band == "g" and meta.exptime == 12.5
    with pytest.raises(InputError, match="unknown metadata override"):
        read_meta(fits.Header(), overrides={"exposure": 3.0})


@pytest.mark.parametrize("exptime", [0.0, -5.0])
def test_non_positive_exptime_names_file(tmp_path, exptime):
    path = tmp_path / "zero.fits"
    fits.PrimaryHDU(_ramp(), header=_meta_header(EXPTIME=exptime)).writeto(path)
    with pytest.raises(InputError, match=r"zero.fits: exposure time must be positive"):
        read_image(path)
    ok = tmp_path / "ok.fits"
    fits.PrimaryHDU(_ramp(), header=_meta_header()).writeto(ok)
    with pytest.raises(InputError, match=r"ok.fits: exposure time must be positive"):
        read_image(ok, overrides={"exptime": exptime})


def test_no_celestial_wcs_gives_none(tmp_path):
    path = tmp_path / "plain.fits"
    # EPOCH as a string and no WCS: astropy would warn (FITSFixedWarning), we stay quiet
    fits.PrimaryHDU(_ramp(), header=_meta_header()).writeto(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        im = read_image(path)
    assert im.wcs is None


# ------------------------------------------------------------------------------------- writing
def test_fits_product_round_trip(wcs_image, tmp_path):
    im = read_image(wcs_image)
    rms = np.full(im.shape, 3.25)
    out = tmp_path / "bkg.fits"
    ret = write_fits_product(out, im.data * 0.5, header=im.header, wcs=im.wcs,
                             extensions={"RMS": rms, "MASK": im.mask},
                             inputs=[wcs_image])
    assert ret == out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    with fits.open(out) as h:
        assert [x.name for x in h] == ["PRIMARY", "RMS", "MASK"]
        assert h[0].data.dtype == np.dtype(">f4")
        assert h["MASK"].data.dtype == np.uint8
        np.testing.assert_array_equal(h["MASK"].data, im.mask.astype(np.uint8))
        # the CD matrix was replaced by the WCS as astropy writes it, not duplicated
        assert "CD1_1" not in h[0].header and "PC1_1" in h[0].header
        assert "CD1_1" not in h["RMS"].header
    back = read_image(out)
    np.testing.assert_array_equal(back.data[~im.mask],
                                  (im.data * 0.5).astype(np.float32)[~im.mask])
    assert back.mask.sum() == 2  # the NaN and the inf survive as non-finite
    for key in ("FILTER", "EPOCH", "EXPTIME", "OBSERVER"):
        assert back.header[key] == im.header[key]
    assert back.meta == im.meta
    xp = np.array([0.0, 12.7, 59.0])
    yp = np.array([0.0, 30.2, 39.0])
    ref = WCS(_wcs_header(sip=True))
    for hdu in (0, "RMS", "MASK"):
        b = read_image(out, hdu=hdu)
        np.testing.assert_allclose(b.wcs.all_pix2world(xp, yp, 0),
                                   ref.all_pix2world(xp, yp, 0), rtol=0, atol=1e-10)
        # and back: world -> pixel
        ra, dec = ref.all_pix2world(xp, yp, 0)
        np.testing.assert_allclose(b.wcs.all_world2pix(ra, dec, 0), [xp, yp], atol=1e-6)
    np.testing.assert_array_equal(read_image(out, hdu="RMS").data, 3.25)


def test_product_without_wcs(tmp_path):
    out = write_fits_product(tmp_path / "p.fits", np.ones((4, 5)), header=None, wcs=None)
    back = read_image(out)
    assert back.wcs is None and back.data.shape == (4, 5)
    np.testing.assert_array_equal(back.data, 1.0)


def test_refuses_to_overwrite_inputs_and_existing_outputs(wcs_image, tmp_path):
    im = read_image(wcs_image)
    before = wcs_image.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match=r"one of the inputs"):
            write_fits_product(wcs_image, im.data, inputs=[wcs_image], overwrite=overwrite)
        # also through a different spelling of the same path
        alias = tmp_path / "." / "sub" / ".." / "exp.fits"
        with pytest.raises(OutputExistsError, match=r"one of the inputs"):
            check_output(alias, overwrite=overwrite, inputs=[str(wcs_image)])
        with pytest.raises(OutputExistsError, match=r"one of the inputs"):
            check_output(wcs_image, overwrite=overwrite, inputs=[im])
    assert wcs_image.read_bytes() == before
    out = tmp_path / "out.fits"
    write_fits_product(out, np.zeros((3, 3)))
    with pytest.raises(OutputExistsError, match=r"out.fits exists; use --overwrite"):
        write_fits_product(out, np.ones((3, 3)))
    np.testing.assert_array_equal(read_image(out).data, 0.0)
    write_fits_product(out, np.ones((3, 3)), overwrite=True)
    np.testing.assert_array_equal(read_image(out).data, 1.0)
    table = Table({"id": [1, 2], "bkg": [1.5, 2.5]})
    tout = tmp_path / "t.csv"
    write_table(table, tout)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_table(table, tout)
    with pytest.raises(OutputExistsError, match="one of the inputs"):
        write_table(table, tout, overwrite=True, inputs=[tout])
    table["bkg"] = [7.0, 8.0]
    write_table(table, tout, overwrite=True)
    np.testing.assert_array_equal(Table.read(tout, format="ascii.csv")["bkg"], [7.0, 8.0])
    with pytest.raises(InputError, match="is a directory"):
        check_output(tmp_path, overwrite=True)


def test_atomic_write_leaves_no_temp_file_and_keeps_old_output(tmp_path, monkeypatch):
    out = tmp_path / "map.fits"
    write_fits_product(out, np.zeros((3, 3)))
    old = out.read_bytes()

    def fail(src, dst):
        raise OSError("disk full (provoked)")

    monkeypatch.setattr(sio.os, "replace", fail)
    with pytest.raises(OSError, match="provoked"):
        write_fits_product(out, np.ones((3, 3)), overwrite=True)
    with pytest.raises(OSError, match="provoked"):
        write_table(Table({"a": [1]}), tmp_path / "t.ecsv")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.fits"]
    assert out.read_bytes() == old
    # a failure inside the writer itself (FITS cannot hold a column of dicts)
    bad = Table({"a": np.array([{"k": 1}, {"k": 2}], dtype=object)})
    with pytest.raises(Exception):  # noqa: B017 -- whatever astropy raises; we test cleanup
        write_table(bad, tmp_path / "bad.fits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.fits"]
    with pytest.raises(InputError, match="extension WEIRD"):
        write_fits_product(tmp_path / "x.fits", np.zeros((2, 2)),
                           extensions={"WEIRD": np.array([["a", "b"]])})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.fits"]


@pytest.mark.parametrize("suffix", [".csv", ".ecsv", ".fits"])
def test_write_table_formats_round_trip(tmp_path, suffix):
    t = Table({"image": ["a.fits", "b.fits"], "id": [3, 4], "bkg": [1.25, np.nan]})
    p = write_table(t, tmp_path / f"t{suffix}")
    back = Table.read(p, format=sio.TABLE_FORMATS[suffix])
    assert list(back["id"]) == [3, 4]
    bkg = np.ma.filled(back["bkg"], np.nan)  # astropy reads FITS NaN as masked
    assert bkg[0] == 1.25 and np.isnan(bkg[1])
    assert [str(s) for s in back["image"]] == ["a.fits", "b.fits"]


def test_write_table_unknown_extension(tmp_path):
    with pytest.raises(InputError, match=r"t.xlsx.*\.csv, \.ecsv, \.fits"):
        write_table(Table({"a": [1]}), tmp_path / "t.xlsx")


# ---------------------------------------------------------------------------------- catalogues
def _image_with_wcs(tmp_path, name="field.fits") -> Image:
    path = tmp_path / name
    h = _meta_header()
    h.update(_wcs_header(sip=True))
    fits.PrimaryHDU(np.zeros((NY, NX), np.float32), header=h).writeto(path)
    return read_image(path)


def test_catalog_xy_lowercases_and_flags_on_image(tmp_path):
    p = tmp_path / "cat.csv"
    p.write_text("ID,X,Y,Mag,Kind\n"
                 "1,10.0,5.0,20.5,galaxy\n"
                 "2,-0.5,-0.5,21.0,star\n"
                 "3,59.49,39.49,,galaxy\n"
                 "4,59.5,10.0,22.0,star\n"
                 "5,10.0,-0.51,23.0,star\n")
    cat = read_catalog(p)
    assert cat.colnames == ["id", "x", "y", "mag", "kind"]
    assert cat["mag"].dtype == np.float64 and np.isnan(cat["mag"][2])
    assert cat.meta["source"] == str(p)
    im = Image(data=np.zeros((NY, NX)), mask=None)
    c = catalog_for_image(cat, im)
    np.testing.assert_array_equal(c["on_image"], [True, True, True, False, False])
    np.testing.assert_array_equal(c["x"], [10.0, -0.5, 59.49, 59.5, 10.0])
    assert list(c["kind"]) == ["galaxy", "star", "galaxy", "star", "star"]
    assert len(cat.colnames) == 5  # the input table is not modified


def test_catalog_radec_projection_matches_wcs(tmp_path):
    im = _image_with_wcs(tmp_path)
    rng = np.random.default_rng(3)
    x = rng.uniform(-5, NX + 5, 50)
    y = rng.uniform(-5, NY + 5, 50)
    ra, dec = WCS(_wcs_header(sip=True)).all_pix2world(x, y, 0)
    t = Table({"ID": np.arange(50), "RA": ra, "Dec": dec, "theta": np.full(50, 45.0)})
    p = tmp_path / "cat.fits"
    t.write(p)
    cat = read_catalog(p)
    c = catalog_for_image(cat, im)
    np.testing.assert_allclose(c["x"], x, atol=1e-5)
    np.testing.assert_allclose(c["y"], y, atol=1e-5)
    inside = (x >= -0.5) & (x < NX - 0.5) & (y >= -0.5) & (y < NY - 0.5)
    np.testing.assert_array_equal(c["on_image"], inside)
    assert 0 < inside.sum() < 50
    np.testing.assert_array_equal(c["theta"], 45.0)


def test_catalog_radec_needs_wcs(tmp_path):
    p = tmp_path / "sky.ecsv"
    Table({"id": [1], "ra": [150.0], "dec": [2.0]}).write(p)
    path = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.zeros((NY, NX))).writeto(path)
    with pytest.raises(CatalogError, match=r"sky.ecsv gives ra/dec but nowcs.fits has no "
                                           r"celestial WCS"):
        catalog_for_image(read_catalog(p), read_image(path))


def test_catalog_image_column_selects_rows(tmp_path):
    im = _image_with_wcs(tmp_path, "exp_001.fits")
    p = tmp_path / "cat.csv"
    p.write_text("id,x,y,image\n"
                 "1,1,1,exp_001.fits\n"
                 "2,2,2,exp_002.fits\n"
                 "3,3,3,exp_001\n"
                 "4,4,4,some/dir/exp_001.fits\n"
                 "5,5,5,exp_0011.fits\n")
    c = catalog_for_image(read_catalog(p), im)
    assert list(c["id"]) == [1, 3, 4]
    np.testing.assert_array_equal(c["x"], [1.0, 3.0, 4.0])
    with pytest.raises(CatalogError, match="image column"):
        catalog_for_image(read_catalog(p), Image(np.zeros((3, 3)), None))


def test_catalog_errors_name_file_and_column(tmp_path):
    p = tmp_path / "nopos.csv"
    p.write_text("id,x,flux\n1,2,3\n")
    with pytest.raises(CatalogError, match=r"nopos.csv.*found: id, x, flux"):
        read_catalog(p)
    p = tmp_path / "noid.csv"
    p.write_text("ra,dec\n1,2\n")
    with pytest.raises(CatalogError, match=r"noid.csv.*found: ra, dec"):
        read_catalog(p)
    p = tmp_path / "text.csv"
    p.write_text("id,x,y,mag\n1,2,3,20.1\n2,4,5,bright\n")
    with pytest.raises(CatalogError, match=r"text.csv: column 'mag' must be numeric.*'bright'"):
        read_catalog(p)
    p = tmp_path / "dupe.csv"
    p.write_text("id,x,y,X\n1,2,3,4\n")
    with pytest.raises(CatalogError, match=r"dupe.csv.*x appear twice"):
        read_catalog(p)
    with pytest.raises(MissingFileError, match="absent.csv"):
        read_catalog(tmp_path / "absent.csv")
    p = tmp_path / "cat.txt"
    p.write_text("id x y\n")
    with pytest.raises(CatalogError, match="cat.txt: unknown table format"):
        read_catalog(p)


def test_empty_catalogue(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("id,ra,dec,mag\n")
    cat = read_catalog(p)
    assert len(cat) == 0
    im = _image_with_wcs(tmp_path)
    c = catalog_for_image(cat, im)
    assert len(c) == 0 and c["x"].dtype == np.float64 and c["on_image"].dtype == bool


def test_temp_names_are_hidden_and_keep_suffix(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real(src, dst)

    monkeypatch.setattr(sio.os, "replace", spy)
    write_fits_product(tmp_path / "m.fits.gz", np.ones((3, 3)))
    assert seen[0].startswith(".tmp-") and seen[0].endswith("-m.fits.gz")
    with open(tmp_path / "m.fits.gz", "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # really gzipped
    np.testing.assert_array_equal(read_image(tmp_path / "m.fits.gz").data, 1.0)


def test_window_cutter_equals_cutouts():
    """The padded sliding-window cutter gives the cutouts() stamps (edges, NaN, off-image)."""
    from skysub.stamps import WindowCutter, cutouts

    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (90, 130))
    img[10:20, 10:20] = np.nan
    x = np.r_[rng.uniform(-30, 160, 40), 15.0, -300.0, 500.0]
    y = np.r_[rng.uniform(-30, 120, 40), 15.0, 10.0, 40.0]
    st = cutouts(img, x, y, 25)
    d, v, x0, y0 = WindowCutter(img, 25)(x, y)
    np.testing.assert_array_equal(v, st.valid)
    np.testing.assert_array_equal(d, np.where(st.valid, st.data, 0).astype(np.float32))
    np.testing.assert_array_equal(x0, st.x0)
    np.testing.assert_array_equal(y0, st.y0)
    assert not v[-2:].any()  # far off the image: nothing valid
