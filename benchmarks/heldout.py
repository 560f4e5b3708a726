"""Real frames kept out of every development choice: only ``--held-out`` runs read them.

None of these frames is committed to skysub, and no development environment has them:

* ``saao-512x520``: the SAAO 1.0 m STE3 CCD frame (536 x 520, raw, with GAIN and RDNOISE) of
  ccdproc's test data (``pip install ccdproc``), prepared as a user would: the overscan's row
  medians (BIASSEC) subtracted and the frame trimmed to TRIMSEC.
* ``dash-3072x2048``: a 3072 x 2048 wide-field star frame of the PUNCH Science Operations
  Center's DASH camera, from the test data of the ``regularizepsf`` source distribution (LGPL-3,
  so it is fetched from PyPI at benchmark time with ``pip download``, never copied into skysub).
  Vignetted, with a satellite trail, ~3,000 stars, no gain or zero-point keywords: a frame as
  a user with a small camera brings it.  Read as it is (integers, with their pedestal).

* ``cfht-1797x1909``: a CFHT FOCAM I-band frame of the galaxy cluster Abell 370 (the median of
  five 1800 s exposures, 1991; integers with their sky pedestal), from the test data of the
  ``mpdaf`` 3.6 source distribution (BSD-3).
* ``wfpc2-500x500``: a 500 x 500 cut of the HST WFPC2 F606W Hubble Deep Field South (drizzled,
  so its noise is correlated; counts per second, values ~1e-4), from the same distribution.
* ``wfpc2-600x600``: a 600 x 600 HST WFPC2 F814W cut of Abell 478 (counts per second, with its
  weight map left aside), from the same distribution.
* ``muse-326x331``: the VLT MUSE white-light image of the Hubble Deep Field South (326 x 331,
  the DATA extension, in 1e-20 erg/s/cm2/A, no gain or exposure keywords; its variance and
  quality extensions left aside), from the same distribution.
* ``nircam-2040x2040``: a simulated JWST NIRCam F115W detector frame (2040 x 2040; a simulator
  that is not skysub's, with Poisson and read noise, flat-field, dark and cosmic-ray residuals;
  no gain keyword), from the documentation of the ``astroimtools`` 0.4.0 source distribution
  (BSD-3).

And real maps, for compact-source removal (:func:`held_out_maps`):

* ``scuba-l1551``: the JCMT SCUBA 850 um map of L1551 (156 x 171), and
* ``pera-extinction``: the 2MASS extinction map of Perseus (313 x 217), both from the
  documentation of the ``astrodendro`` 0.3.1 source distribution (MIT).

The mpdaf, astrodendro and astroimtools distributions are downloaded from PyPI the first time
(their SHA-256 is checked), or read from ``SKYSUB_HELDOUT_SDISTS=DIR``, a folder that holds
them already.  None of these files is copied into skysub.  Each frame is written once,
atomically, into ``$TMPDIR/skysub-bench``; the installed or downloaded files are only read.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

#: the held-out frames' names
HELD_OUT_FRAMES = ("saao-512x520", "dash-3072x2048", "cfht-1797x1909", "wfpc2-500x500",
                   "wfpc2-600x600", "muse-326x331", "nircam-2040x2040")
#: the held-out real maps' names
HELD_OUT_MAPS = ("scuba-l1551", "pera-extinction")

#: source distributions fetched by URL: file name -> (URL, SHA-256)
SDISTS = {
    "mpdaf-3.6.tar.gz": (
        "https://files.pythonhosted.org/packages/4f/5c/"
        "c1a7c67d9b8246da2b754da8655510dd053d377f30ffce13b23385efc003/mpdaf-3.6.tar.gz",
        "836cd0b3b2941900f1257c640449cca931d33dcf914419ceeb661a7607557208"),
    "astrodendro-0.3.1.tar.gz": (
        "https://files.pythonhosted.org/packages/77/92/"
        "b4e85c884ebc14388f5070d6b84ce91c4f3e83020f0896e389474f61c410/astrodendro-0.3.1.tar.gz",
        "115451c6b66fcfed510994f248404f0ce3283e890a7df3d0c89e035c70165b5d"),
    "astroimtools-0.4.0.tar.gz": (
        "https://files.pythonhosted.org/packages/13/ab/"
        "44b8396c117954c977ad7d426ac39468242e6519ec2fa0a6a17d527e3528/astroimtools-0.4.0.tar.gz",
        "a03bd7f336b88747db0899a39d635b16d5579e71db638fa4641047d89ecbda02"),
}
#: name -> (source distribution, member, HDU, ORIGIN card)
MEMBERS = {
    "cfht-1797x1909": ("mpdaf-3.6.tar.gz", "mpdaf-3.6/lib/mpdaf/data/obj/a370II.fits", 0,
                       "CFHT FOCAM I, Abell 370 (mpdaf 3.6)"),
    "wfpc2-500x500": ("mpdaf-3.6.tar.gz", "mpdaf-3.6/lib/mpdaf/data/obj/HST-HDFS.fits", 1,
                      "HST WFPC2 F606W, HDF-S (mpdaf 3.6)"),
    "wfpc2-600x600": ("mpdaf-3.6.tar.gz", "mpdaf-3.6/lib/mpdaf/data/sdetect/a478hst-cutout.fits",
                      1, "HST WFPC2 F814W, Abell 478 (mpdaf 3.6)"),
    "muse-326x331": ("mpdaf-3.6.tar.gz", "mpdaf-3.6/lib/mpdaf/data/obj/IMAGE-HDFS-1.34.fits", 1,
                     "VLT MUSE white light, HDF-S (mpdaf 3.6)"),
    "nircam-2040x2040": ("astroimtools-0.4.0.tar.gz", "astroimtools-0.4.0/docs/notebooks/data/"
                         "sim143951060215_0_0-detA1-corrected_wcs.fits", 0,
                         "simulated JWST NIRCam F115W A1 (astroimtools 0.4.0)"),
    "scuba-l1551": ("astrodendro-0.3.1.tar.gz", "astrodendro-0.3.1/docs/L1551_scuba_850mu.fits",
                    0, "JCMT SCUBA 850 um, L1551 (astrodendro 0.3.1)"),
    "pera-extinction": ("astrodendro-0.3.1.tar.gz",
                        "astrodendro-0.3.1/docs/PerA_Extn2MASS_F_Gal.fits", 0,
                        "2MASS extinction, Perseus (astrodendro 0.3.1)"),
}

#: the regularizepsf source distribution that holds the DASH frame, and the member
DASH_SDIST = "regularizepsf==1.2.1"
DASH_MEMBER = "regularizepsf-1.2.1/tests/data/compressed_dash.fits"


def cache_dir() -> Path:
    out = Path(tempfile.gettempdir()) / "skysub-bench"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _member(tar: tarfile.TarFile, path: Path, member: str):
    """The file object of ``member`` in the open source distribution ``tar`` (at ``path``)."""
    try:
        fobj = tar.extractfile(member)
    except KeyError:
        fobj = None
    if fobj is None:
        raise SystemExit(f"held-out data: {path} has no {member}")
    return fobj


def _write_atomic(out: Path, frame: np.ndarray, header) -> Path:
    import astropy.io.fits as afits

    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    afits.PrimaryHDU(frame, header=header).writeto(tmp, overwrite=True)
    os.replace(tmp, out)
    return out


def saao_frame() -> Path:
    """The SAAO frame of ccdproc's test data, overscan-subtracted and trimmed (header kept)."""
    import importlib.util

    import astropy.io.fits as afits

    out = cache_dir() / "saao-512x520.fits"
    if out.exists():
        return out
    spec = importlib.util.find_spec("ccdproc")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("--held-out: the SAAO frame comes from ccdproc's test data; "
                         "pip install ccdproc")
    raw = Path(list(spec.submodule_search_locations)[0]) / "tests" / "data" / "a8280271.fits"
    if not raw.exists():
        raise SystemExit(f"--held-out: no file {raw} in the installed ccdproc")
    with afits.open(raw) as hdul:
        hdr = hdul[0].header.copy()
        data = hdul[0].data.astype(np.float64)

    def section(key):  # FITS '[x1:x2, y1:y2]', 1-based inclusive -> numpy slices
        xs, ys = hdr[key].strip("[] ").split(",")
        x1, x2 = (int(v) for v in xs.split(":"))
        y1, y2 = (int(v) for v in ys.split(":"))
        return slice(y1 - 1, y2), slice(x1 - 1, x2)

    by, bx = section("BIASSEC")
    ty, tx = section("TRIMSEC")
    level = np.median(data[by, bx], axis=1, keepdims=True)
    frame = (data - level)[ty, tx].astype(np.float32)
    for key in ("BSCALE", "BZERO", "TRIMSEC", "BIASSEC"):
        hdr.remove(key, ignore_missing=True)
    hdr["HISTORY"] = "skysub benchmark: overscan row medians subtracted, trimmed to TRIMSEC"
    return _write_atomic(out, frame, hdr)


def dash_frame() -> Path:
    """The DASH frame of regularizepsf's source distribution, as float32 (values unchanged).

    The source distribution is downloaded once with ``pip download`` (network needed the first
    time) into the cache directory; ``SKYSUB_DASH_SDIST=PATH`` names an already downloaded one.
    """
    import astropy.io.fits as afits

    out = cache_dir() / "dash-3072x2048.fits"
    if out.exists():
        return out
    sdist = os.environ.get("SKYSUB_DASH_SDIST")
    if sdist:
        sdist_path = Path(sdist)
        if not sdist_path.is_file():
            raise SystemExit(f"--held-out: SKYSUB_DASH_SDIST={sdist}: no such file")
    else:
        dl = cache_dir() / "sdist"
        sdist_path = dl / "regularizepsf-1.2.1.tar.gz"
        if not sdist_path.is_file():
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--no-binary", "regularizepsf", "-d", str(dl), DASH_SDIST]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not sdist_path.is_file():
                why = (proc.stderr.strip().splitlines() or ["no file"])[-1]
                raise SystemExit(
                    "--held-out: the DASH frame comes from the source distribution of "
                    f"{DASH_SDIST} on PyPI, and `pip download` failed ({why}); "
                    "download it elsewhere and set SKYSUB_DASH_SDIST=PATH")
    with tarfile.open(sdist_path, "r:gz") as tar:
        with afits.open(_member(tar, sdist_path, DASH_MEMBER)) as hdul:
            hdu = next(h for h in hdul if h.data is not None and h.data.ndim == 2)
            data = np.asarray(hdu.data, dtype=np.float32)
    hdr = afits.Header()
    hdr["ORIGIN"] = "PUNCH SOC DASH camera (regularizepsf 1.2.1 tests/data/compressed_dash.fits)"
    hdr["HISTORY"] = "skysub benchmark: decompressed to float32, values unchanged"
    return _write_atomic(out, data, hdr)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sdist(filename: str) -> Path:
    """The source distribution ``filename`` of :data:`SDISTS`: from ``SKYSUB_HELDOUT_SDISTS``,
    the cache, or downloaded once from PyPI (atomically); its SHA-256 is checked."""
    import urllib.request

    url, sha = SDISTS[filename]
    folder = os.environ.get("SKYSUB_HELDOUT_SDISTS")
    if folder:
        path = Path(folder) / filename
        if not path.is_file():
            raise SystemExit(f"held-out data: SKYSUB_HELDOUT_SDISTS={folder} has no {filename}")
    else:
        path = cache_dir() / "sdist" / filename
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            try:
                with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
                    while block := r.read(1 << 20):
                        f.write(block)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise SystemExit(f"held-out data: could not download {url} ({exc}); download "
                                 "it elsewhere and set SKYSUB_HELDOUT_SDISTS=DIR") from None
            os.replace(tmp, path)
    got = _sha256(path)
    if got != sha:
        raise SystemExit(f"held-out data: {path} has SHA-256 {got}, expected {sha}")
    return path


def member_frame(name: str) -> Path:
    """The 2-D image ``name`` of :data:`MEMBERS`, read from its source distribution and
    written as float32 (values unchanged; the HDU's header kept, with the primary header's
    other keywords as :func:`skysub.io.read_image` would merge them; ORIGIN and HISTORY
    added)."""
    import astropy.io.fits as afits

    out = cache_dir() / f"{name}.fits"
    if out.exists():
        return out
    filename, member, hdu, origin = MEMBERS[name]
    path = sdist(filename)
    with tarfile.open(path, "r:gz") as tar:
        with afits.open(_member(tar, path, member)) as hdul:
            data = np.asarray(hdul[hdu].data, dtype=np.float32)
            hdr = hdul[hdu].header.copy()
            if hdu:  # the primary header's keywords too, as skysub reads the original file
                for card in hdul[0].header.cards:
                    if card.keyword not in hdr and card.keyword not in ("SIMPLE", "BITPIX",
                                                                        "NAXIS", "EXTEND",
                                                                        "COMMENT", "HISTORY",
                                                                        ""):
                        hdr.append(card)
    if data.ndim != 2:
        raise SystemExit(f"held-out data: {member}[{hdu}] is not a 2-D image")
    for key in ("BSCALE", "BZERO", "BLANK", "EXTNAME", "XTENSION", "PCOUNT", "GCOUNT"):
        hdr.remove(key, ignore_missing=True)
    hdr["ORIGIN"] = origin
    hdr["HISTORY"] = f"skysub benchmark: {member.split('/', 1)[1]}[{hdu}]"
    hdr["HISTORY"] = "skysub benchmark: converted to float32, values unchanged"
    return _write_atomic(out, data, hdr)


def held_out_maps(names=HELD_OUT_MAPS) -> dict[str, tuple[Path, int]]:
    """Name -> (path, HDU) of the held-out real maps named (default all)."""
    unknown = [n for n in names if n not in HELD_OUT_MAPS]
    if unknown:
        raise SystemExit(f"held-out maps: unknown {unknown}; known: {list(HELD_OUT_MAPS)}")
    return {n: (member_frame(n), 0) for n in names}


def held_out_frames(names=HELD_OUT_FRAMES) -> dict[str, tuple[Path, int]]:
    """Name -> (path, HDU) of the held-out frames named (default all); exits with the reason
    when one cannot be had."""
    unknown = [n for n in names if n not in HELD_OUT_FRAMES]
    if unknown:
        raise SystemExit(f"held-out frames: unknown {unknown}; known: {list(HELD_OUT_FRAMES)}")
    make = {"saao-512x520": saao_frame, "dash-3072x2048": dash_frame}
    return {n: ((make[n] if n in make else lambda n=n: member_frame(n))(), 0) for n in names}
