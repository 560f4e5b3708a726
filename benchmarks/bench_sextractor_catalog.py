"""SExtractor's own catalogue, read by skysub: the 1-based -> 0-based rule checked on real output.

sep's source distribution ships SExtractor's test image (``data/image.fits``) and the catalogue
SExtractor made of it (``data/image.cat``, ASCII_HEAD, ``X_IMAGE``/``Y_IMAGE`` 1-based).  This
benchmark reads ``image.cat`` with :func:`skysub.io.read_catalog` and checks the positions two
ways, each with the conversion (skysub's ``x, y``) and without it (the raw ``X_IMAGE``):

1. against ``sep.extract`` on the same image (0-based, like numpy): median offset to the
   nearest sep detection;
2. skysub aperture photometry (radius 5 px = SExtractor's ``PHOT_APERTURES 10`` diameter, on the
   ``BACK_SIZE 64``/``BACK_FILTERSIZE 3`` mesh background of ``default.sex``) at the catalogue
   positions against SExtractor's own ``FLUX_APER``.

Nothing from sep's distribution is copied into the repository: give the path of the sdist
(``pip download --no-binary :all: --no-deps sep==1.4.1``) or of its unpacked folder::

    python -m benchmarks.bench_sextractor_catalog --sep-sdist sep-1.4.1.tar.gz
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np


def _data_folder(sdist: Path, scratch: Path) -> Path:
    if sdist.is_dir():
        cands = [sdist / "data", *sdist.glob("*/data")]
    else:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.endswith(("data/image.cat", "data/image.fits"))]
            tar.extractall(scratch, members=members, filter="data")
        cands = list(scratch.glob("*/data"))
    for c in cands:
        if (c / "image.cat").is_file() and (c / "image.fits").is_file():
            return c
    raise SystemExit(f"{sdist}: no data/image.cat and data/image.fits inside (is it sep's sdist?)")


def run(sdist: Path) -> dict:
    import sep
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning
    from scipy.spatial import cKDTree

    from skysub.background.mesh import MeshBackground
    from skysub.io import read_catalog
    from skysub.photometry import AperturePhotometer

    with tempfile.TemporaryDirectory() as tmp:
        folder = _data_folder(sdist, Path(tmp))
        cat = read_catalog(folder / "image.cat")
        with warnings.catch_warnings():  # the 1992 ESO-LOG cards are not standard FITS
            warnings.simplefilter("ignore", AstropyWarning)
            data = fits.getdata(folder / "image.fits").astype(np.float64)
    bkg = sep.Background(data, bw=64, bh=64, fw=3, fh=3)
    objs = sep.extract(data - bkg.back(), 1.5, err=bkg.globalrms, minarea=5)
    tree = cKDTree(np.c_[objs["x"], objs["y"]])
    x, y = np.asarray(cat["x"]), np.asarray(cat["y"])
    raw_x, raw_y = np.asarray(cat["x_image"]), np.asarray(cat["y_image"])
    clean = np.asarray(cat["flags"]) == 0
    phot = AperturePhotometer(5.0, background=MeshBackground(box_size=64, filter_size=3))
    ref = np.asarray(cat["flux_aper"], float)
    rows = {}
    for label, (px, py) in {"skysub x, y (X_IMAGE - 1)": (x, y),
                            "raw X_IMAGE, Y_IMAGE": (raw_x, raw_y)}.items():
        d, _ = tree.query(np.c_[px, py])
        res = phot.measure(data, px, py)
        ratio = np.asarray(res.flux)[clean] / ref[clean]
        rows[label] = {"median_offset_to_sep_px": float(np.median(d)),
                       "median_flux_ratio": float(np.nanmedian(ratio)),
                       "p16_p84_flux_ratio": tuple(np.nanpercentile(ratio, [16, 84]))}
    return {"n_sources": len(cat), "n_clean": int(clean.sum()), "n_sep": len(objs),
            "format": cat.meta["catalog_format"], "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sep-sdist", type=Path, required=True,
                   help="sep's source distribution (.tar.gz) or its unpacked folder")
    out = run(p.parse_args(argv).sep_sdist)
    print(f"SExtractor image.cat read as {out['format']!r}: {out['n_sources']} sources "
          f"({out['n_clean']} with FLAGS = 0); sep.extract finds {out['n_sep']}")
    print(f"{'positions':<28s} {'median offset to sep [px]':>26s} "
          f"{'median F/FLUX_APER':>19s} {'16-84 %':>16s}")
    for label, r in out["rows"].items():
        lo, hi = r["p16_p84_flux_ratio"]
        print(f"{label:<28s} {r['median_offset_to_sep_px']:>26.4f} "
              f"{r['median_flux_ratio']:>19.4f} {lo:>7.4f}-{hi:<8.4f}")
    good = out["rows"]["skysub x, y (X_IMAGE - 1)"]
    ok_pos = good["median_offset_to_sep_px"] < 0.01
    ok_flux = abs(good["median_flux_ratio"] - 1) < 0.005
    print(f"[{'PASS' if ok_pos else 'FAIL'}] SExtractor positions read 0-based: median offset "
          f"to sep.extract {good['median_offset_to_sep_px']:.4f} px < 0.01 px")
    print(f"[{'PASS' if ok_flux else 'FAIL'}] aperture flux at those positions matches "
          f"FLUX_APER: median ratio {good['median_flux_ratio']:.4f} within 0.5 %")
    return out


if __name__ == "__main__":
    main()
