"""Real frames kept out of every development choice: only ``--held-out`` runs read them.

Neither frame is committed to skysub, and no development environment has them:

* ``saao-512x520``: the SAAO 1.0 m STE3 CCD frame (536 x 520, raw, with GAIN and RDNOISE) of
  ccdproc's test data (``pip install ccdproc``), prepared as a user would: the overscan's row
  medians (BIASSEC) subtracted and the frame trimmed to TRIMSEC.
* ``dash-3072x2048``: a 3072 x 2048 wide-field star frame of the PUNCH Science Operations
  Center's DASH camera, from the test data of the ``regularizepsf`` source distribution (LGPL-3,
  so it is fetched from PyPI at benchmark time with ``pip download``, never copied into skysub).
  Vignetted, with a satellite trail, ~3,000 stars, no gain or zero-point keywords: a frame as
  a user with a small camera brings it.  Read as it is (integers, with their pedestal).

Each is written once, atomically, into ``$TMPDIR/skysub-bench``; the installed or downloaded
files are only read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

#: the held-out frames' names
HELD_OUT_FRAMES = ("saao-512x520", "dash-3072x2048")

#: the regularizepsf source distribution that holds the DASH frame, and the member
DASH_SDIST = "regularizepsf==1.2.1"
DASH_MEMBER = "regularizepsf-1.2.1/tests/data/compressed_dash.fits"


def cache_dir() -> Path:
    out = Path(tempfile.gettempdir()) / "skysub-bench"
    out.mkdir(parents=True, exist_ok=True)
    return out


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
        try:
            member = tar.extractfile(DASH_MEMBER)
        except KeyError:
            member = None
        if member is None:
            raise SystemExit(f"--held-out: {sdist_path} has no {DASH_MEMBER}")
        with afits.open(member) as hdul:
            hdu = next(h for h in hdul if h.data is not None and h.data.ndim == 2)
            data = np.asarray(hdu.data, dtype=np.float32)
    hdr = afits.Header()
    hdr["ORIGIN"] = "PUNCH SOC DASH camera (regularizepsf 1.2.1 tests/data/compressed_dash.fits)"
    hdr["HISTORY"] = "skysub benchmark: decompressed to float32, values unchanged"
    return _write_atomic(out, data, hdr)


def held_out_frames(names=HELD_OUT_FRAMES) -> dict[str, tuple[Path, int]]:
    """Name -> (path, HDU) of the held-out frames named (default all); exits with the reason
    when one cannot be had."""
    unknown = [n for n in names if n not in HELD_OUT_FRAMES]
    if unknown:
        raise SystemExit(f"held-out frames: unknown {unknown}; known: {list(HELD_OUT_FRAMES)}")
    make = {"saao-512x520": saao_frame, "dash-3072x2048": dash_frame}
    return {n: (make[n](), 0) for n in names}
