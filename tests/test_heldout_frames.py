"""The benchmarks' held-out real frames are prepared without touching their sources.

No network and no held-out data here: the DASH frame's source distribution is stood in for by
a small tarball with the same member, so the preparation path (extract, decompress, write
atomically into the cache, never write next to the source) is what is tested.
"""

from __future__ import annotations

import io
import tarfile
import tempfile

import numpy as np
import pytest

astropy_fits = pytest.importorskip("astropy.io.fits")

from benchmarks import heldout  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path / "tmp" / "skysub-bench"


def fake_sdist(path, data):
    buf = io.BytesIO()
    astropy_fits.HDUList([astropy_fits.PrimaryHDU(),
                          astropy_fits.CompImageHDU(data)]).writeto(buf)
    raw = buf.getvalue()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(heldout.DASH_MEMBER)
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return path


def test_dash_frame_from_a_named_sdist(cache, tmp_path, monkeypatch):
    data = np.random.default_rng(3).integers(900, 1200, size=(40, 60)).astype(np.int16)
    sdist = fake_sdist(tmp_path / "regularizepsf-1.2.1.tar.gz", data)
    before = sdist.read_bytes()
    monkeypatch.setenv("SKYSUB_DASH_SDIST", str(sdist))
    out = heldout.held_out_frames(["dash-3072x2048"])
    path, hdu = out["dash-3072x2048"]
    assert path.parent == cache and hdu == 0
    got = astropy_fits.getdata(path)
    assert got.dtype.kind == "f" and got.dtype.itemsize == 4 and got.shape == data.shape
    np.testing.assert_array_equal(got, data.astype(np.float32))   # values unchanged
    assert sdist.read_bytes() == before                            # source only read
    assert not list(cache.glob("*.tmp"))                           # written atomically


def test_missing_sources_are_clear_errors(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("SKYSUB_DASH_SDIST", str(tmp_path / "nope.tar.gz"))
    with pytest.raises(SystemExit, match="SKYSUB_DASH_SDIST"):
        heldout.dash_frame()
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
        pass
    monkeypatch.setenv("SKYSUB_DASH_SDIST", str(tmp_path / "empty.tar.gz"))
    with pytest.raises(SystemExit, match="compressed_dash.fits"):
        heldout.dash_frame()
    with pytest.raises(SystemExit, match="unknown"):
        heldout.held_out_frames(["no-such-frame"])


def fake_member_sdist(path, member, hdu, data):
    """A tarball holding ``member``, a FITS file whose HDU ``hdu`` is ``data``."""
    buf = io.BytesIO()
    hdus = [astropy_fits.PrimaryHDU(data if hdu == 0 else None)]
    if hdu == 1:
        img = astropy_fits.ImageHDU(data, name="DATA")
        img.header["INSTRUME"] = "WFPC2"
        hdus.append(img)
    astropy_fits.HDUList(hdus).writeto(buf)
    raw = buf.getvalue()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return path


def test_frames_from_a_source_distribution_folder(cache, tmp_path, monkeypatch):
    _, member, hdu, _ = heldout.MEMBERS["wfpc2-500x500"]
    data = np.random.default_rng(4).normal(0.0, 1e-4, size=(30, 20)).astype(">f4")
    folder = tmp_path / "sdists"
    folder.mkdir()
    sdist = fake_member_sdist(folder / "mpdaf-3.6.tar.gz", member, hdu, data)
    before = sdist.read_bytes()
    monkeypatch.setitem(heldout.SDISTS, "mpdaf-3.6.tar.gz",
                        ("http://unused.invalid/", heldout._sha256(sdist)))
    monkeypatch.setenv("SKYSUB_HELDOUT_SDISTS", str(folder))
    path, h = heldout.held_out_frames(["wfpc2-500x500"])["wfpc2-500x500"]
    assert path.parent == cache and h == 0
    with astropy_fits.open(path) as hdul:
        got, hdr = hdul[0].data, hdul[0].header
    assert got.dtype.kind == "f" and got.dtype.itemsize == 4
    np.testing.assert_array_equal(got, data.astype(np.float32))   # values unchanged
    assert hdr["INSTRUME"] == "WFPC2" and "HDF-S" in hdr["ORIGIN"]  # header kept
    assert sdist.read_bytes() == before                            # source only read
    assert not list(cache.glob("*.tmp"))


def test_source_distribution_checks(cache, tmp_path, monkeypatch):
    folder = tmp_path / "sdists"
    folder.mkdir()
    monkeypatch.setenv("SKYSUB_HELDOUT_SDISTS", str(folder))
    with pytest.raises(SystemExit, match="has no astrodendro-0.3.1.tar.gz"):
        heldout.held_out_maps(["scuba-l1551"])
    _, member, hdu, _ = heldout.MEMBERS["scuba-l1551"]
    fake_member_sdist(folder / "astrodendro-0.3.1.tar.gz", member, hdu, np.ones((5, 5)))
    with pytest.raises(SystemExit, match="SHA-256"):   # not the published file
        heldout.held_out_maps(["scuba-l1551"])
    with pytest.raises(SystemExit, match="unknown"):
        heldout.held_out_maps(["no-such-map"])


@pytest.mark.parametrize("name", ["muse-326x331", "nircam-2040x2040", "cfht-1797x1909"])
def test_every_member_frame_is_prepared_from_its_distribution(name, cache, tmp_path,
                                                              monkeypatch):
    """Each registered member frame comes from a registered distribution, its HDU as float32
    with values unchanged and its origin recorded."""
    filename, member, hdu, origin = heldout.MEMBERS[name]
    assert filename in heldout.SDISTS and name in heldout.HELD_OUT_FRAMES
    data = np.arange(12.0, dtype=">f8").reshape(3, 4) * 1e-3
    folder = tmp_path / "sdists"
    folder.mkdir()
    sdist = fake_member_sdist(folder / filename, member, hdu, data)
    monkeypatch.setitem(heldout.SDISTS, filename, ("http://unused.invalid/",
                                                   heldout._sha256(sdist)))
    monkeypatch.setenv("SKYSUB_HELDOUT_SDISTS", str(folder))
    path, _ = heldout.held_out_frames([name])[name]
    with astropy_fits.open(path) as hdul:
        got, hdr = hdul[0].data, hdul[0].header
    assert got.dtype.kind == "f" and got.dtype.itemsize == 4
    np.testing.assert_array_equal(got, data.astype(np.float32))
    assert hdr["ORIGIN"] == origin
