"""Zero-point fits on simulated deep, crowded frames of known zero point.

Each frame (:func:`deep_field`) is a 300 x 300 cut of ``skysub.simulate.ccd``: ~260
catalogued galaxies and ~7 stars (one source per ~350 px^2), Moffat PSF (FWHM 3.5 px, beta 4),
gain 2, 100 s (true zero point 25 + 2.5 log10(100 / 2) = 29.247 in image units), optionally
with uncatalogued faint sources (``--faint``, per 512 x 1024 px).  Per frame: whether the strict
+ relaxed fits (the code before the neighbour-masked attempt, ``masked=False``) give a zero
point, and the default fit's offset from the truth, its stated error (with the systematic
``MASKED_SYSTEMATIC``) and pull.  Prints the table and the mean offset over the frames.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import BenchResult, Check, base_parser, run_and_print

COLUMNS = [("seed", "seed", "d"), ("n_cat", "catalogued", "d"), ("old", "strict+relaxed", ""),
           ("source", "new", ""), ("n", "n", "d"), ("offset", "zp - true", "+.4f"),
           ("error", "error", ".4f"), ("pull", "pull", "+.2f"), ("scatter", "scatter", ".3f")]
TRUE_ZP = 25.0 + 2.5 * np.log10(100.0 / 2.0)


def deep_field(seed: int, n_faint: int = 0):
    """(image, catalogue, true zero point) of one simulated deep frame (module docstring); the
    catalogue's r50 is the galaxy's and the PSF's (2.05 px) in quadrature, as a pipeline
    measures it."""
    from astropy.table import Table, join

    from skysub.simulate.ccd import CCDSimConfig, simulate_exposure, simulate_field

    cfg = CCDSimConfig(shape=(300, 300), bands=["B"], epochs=["e"], sky={"B": 100.0},
                       exptime=100.0, gain=2.0, psf_fwhm=3.5, psf_beta=4.0, n_galaxies=1500,
                       n_stars=40, n_faint=n_faint, scattered_light=0.0, cosmic_rays=0,
                       hot_pixels=0, colour_scatter=0.0, max_offset=0)
    fld = simulate_field(cfg, seed=seed)
    img, truth, _ = simulate_exposure(cfg, fld, band="B", epoch="e", seed=seed + 1)
    r50 = Table({"id": fld["id"], "r50": np.hypot(np.asarray(fld["r50"]), 2.05)})
    return img, join(truth, r50, keys="id"), TRUE_ZP


def run(seeds: list[int], n_faint: int) -> BenchResult:
    from skysub.errors import InputError
    from skysub.photometry.zeropoint import fit_zeropoint

    res = BenchResult(f"Zero-point fits on simulated deep frames (faint uncatalogued: {n_faint}"
                      " per 512 x 1024 px)", COLUMNS)
    for seed in seeds:
        img, cat, truth = deep_field(seed, n_faint)
        row = {"seed": seed, "n_cat": len(cat)}
        try:
            fit_zeropoint(img, cat, masked=False)
            row["old"] = "fit"
        except InputError:
            row["old"] = "error"
        try:
            z = fit_zeropoint(img, cat)
            row.update(source="masked" if "neighbour-masked" in z.warning else "fit", n=z.n,
                       offset=z.value - truth, error=z.error,
                       pull=(z.value - truth) / z.error, scatter=z.scatter)
        except InputError:
            row["source"] = "error"
        res.rows.append(row)
    off = np.array([r["offset"] for r in res.rows if "offset" in r])
    pulls = np.array([r["pull"] for r in res.rows if "pull" in r])
    res.notes.append(f"{off.size} of {len(res.rows)} frames fitted; mean offset {off.mean():+.4f}"
                     f" mag (frame-to-frame scatter {off.std():.4f}); mean pull "
                     f"{pulls.mean():+.2f}" if off.size else "no frame fitted")
    res.goals.append(Check("every fitted frame within 3 stated errors of the true zero point",
                           bool(pulls.size) and bool(np.all(np.abs(pulls) < 3)),
                           f"max |pull| {np.abs(pulls).max():.2f}" if pulls.size else ""))
    return res


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=None,
                   help="frames, seeds SEED .. SEED + FRAMES - 1 (default 20; 4 --quick)")
    p.add_argument("--faint", type=int, default=0,
                   help="uncatalogued faint sources per 512 x 1024 px (default 0)")
    args = p.parse_args(argv)
    args.frames = args.frames or (4 if args.quick else 20)
    return args


def run_from_args(args: argparse.Namespace) -> BenchResult:
    return run(list(range(args.seed, args.seed + args.frames)), args.faint)


def main(argv: list[str] | None = None) -> BenchResult:
    """Command line: parse ``argv``, run, print the table; returns the result."""
    return run_and_print(parse, run_from_args, argv)


if __name__ == "__main__":
    sys.exit(0 if main().checks_passed else 1)
