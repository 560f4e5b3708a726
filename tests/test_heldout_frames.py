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
