"""Mesh background of a 4096 x 2048 image: skysub MeshBackground vs sep vs photutils Background2D.

All three use 64 x 64 px boxes and a 3 x 3 box median filter and return the full-resolution
background and rms maps.  The table gives the best-of-k wall time, the ratio to sep and the
largest difference of each background (and rms) map from sep's, in units of sep's global rms.

Goal: skysub within 1.2x of sep's time (skysub calls sep and adds input handling and its
error-model bookkeeping).  Check: skysub's maps equal sep's (skysub *is* sep underneath).

Usage::

    python -m benchmarks.bench_mesh [--quick] [--repeats K] [--nx NX --ny NY] [--n-sources N]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import (
    FULL_SHAPE_XY,
    BenchResult,
    Check,
    base_parser,
    best_of,
    check_args,
    run_and_print,
    simulate_image,
)

BOX = 64
FILTER = 3
#: goal: skysub time / sep time
GOAL_RATIO = 1.2
#: skysub must reproduce sep's maps to this fraction of sep's global rms
SKYSUB_TOL = 1e-9

COLUMNS = [("method", "method", ""), ("time_s", "time [s]", ".3f"),
           ("ratio_to_sep", "ratio to sep", ".2f"),
           ("max_dback_rms", "max|Δback|/rms", ".2e"),
           ("max_drms_rms", "max|Δrms|/rms", ".2e")]


def _skysub(image: np.ndarray):
    from skysub.background.mesh import MeshBackground

    def run():
        return MeshBackground(box_size=BOX, filter_size=FILTER).background_map(image)

    return run


def _sep(image: np.ndarray):
    import sep

    def run():
        b = sep.Background(image, bw=BOX, bh=BOX, fw=FILTER, fh=FILTER)
        return b.back(), b.rms(), b.globalrms

    return run


def _photutils(image: np.ndarray):
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, SExtractorBackground

    def run():
        b = Background2D(image, box_size=BOX, filter_size=FILTER, sigma_clip=SigmaClip(sigma=3.0),
                         bkg_estimator=SExtractorBackground())
        # the maps are interpolated lazily: touch both so their cost is timed
        return np.asarray(b.background), np.asarray(b.background_rms)

    return run


def run(nx: int = FULL_SHAPE_XY[0], ny: int = FULL_SHAPE_XY[1], n_sources: int = 300, *,
        repeats: int = 3, seed: int = 0, photutils: bool = True) -> BenchResult:
    """Time the three mesh backgrounds on one simulated image and compare their maps.

    Parameters
    ----------
    nx, ny : int
        Image size in pixels (width, height).
    n_sources : int
        Gaussian sources on the image (a few hundred at full size).
    repeats : int
        Best of this many runs per method.
    seed : int
        Seed of the simulated image.
    photutils : bool
        Include photutils Background2D (the slowest).

    Returns
    -------
    BenchResult
        Rows have ``method``, ``time_s``, ``ratio_to_sep``, ``max_dback_rms`` and
        ``max_drms_rms`` (differences from sep's maps over sep's global rms).
    """
    image, _, _ = simulate_image(nx, ny, n_sources, seed=seed)
    # each method is called once untimed first (imports, caches): the table is steady state
    t_sep, (back_sep, rms_sep, grms) = best_of(_sep(image), repeats, warmup=True)
    t_sky, (back_sky, rms_sky) = best_of(_skysub(image), repeats, warmup=True)
    methods = [("sep.Background (+back, rms)", t_sep, back_sep, rms_sep),
               ("skysub MeshBackground", t_sky, back_sky, rms_sky)]
    if photutils:
        t_pu, (back_pu, rms_pu) = best_of(_photutils(image), repeats, warmup=True)
        methods.append(("photutils Background2D", t_pu, back_pu, rms_pu))

    rows = []
    for name, t, back, rms in methods:
        rows.append({"method": name, "time_s": t, "ratio_to_sep": t / t_sep,
                     "max_dback_rms": float(np.max(np.abs(back - back_sep)) / grms),
                     "max_drms_rms": float(np.max(np.abs(rms - rms_sep)) / grms)})
    sky = rows[1]
    res = BenchResult(
        title=(f"Mesh background, {nx} x {ny} px, {n_sources} sources, box {BOX}, "
               f"filter {FILTER} (best of {repeats})"),
        columns=COLUMNS, rows=rows)
    res.checks.append(Check(
        "skysub maps equal sep's", sky["max_dback_rms"] <= SKYSUB_TOL
        and sky["max_drms_rms"] <= SKYSUB_TOL,
        f"max|Δ| / sep global rms = {max(sky['max_dback_rms'], sky['max_drms_rms']):.1e}, "
        f"tolerance {SKYSUB_TOL:.0e}"))
    res.checks.append(Check("all maps finite", all(
        np.isfinite(b).all() and np.isfinite(r).all() for _, _, b, r in methods)))
    res.goals.append(Check(
        f"skysub within {GOAL_RATIO}x of sep's time", sky["ratio_to_sep"] <= GOAL_RATIO,
        f"{sky['ratio_to_sep']:.2f}x"))
    res.notes.append(f"sep global rms = {grms:.2f} ADU (sky ~1000 ADU, Poisson)")
    if photutils:
        res.notes.append("photutils differs from sep by design (its own clipping and mode; a "
                         "spline zoom instead of SExtractor's bicubic spline)")
    return res


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``nx``, ``ny`` and ``n_sources`` come back resolved."""
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n-sources", type=int, default=None,
                   help="Gaussian sources on the image (default 300; 100 with --quick)")
    p.add_argument("--no-photutils", action="store_true", help="skip photutils Background2D")
    args = p.parse_args(argv)
    check_args(p, args)
    nx0, ny0 = (1024, 512) if args.quick else FULL_SHAPE_XY
    args.nx = args.nx or nx0
    args.ny = args.ny or ny0
    if args.n_sources is None:
        args.n_sources = 100 if args.quick else 300
    if args.n_sources < 0:
        p.error(f"--n-sources must be >= 0, got {args.n_sources}")
    return args


def run_from_args(args: argparse.Namespace) -> BenchResult:
    return run(args.nx, args.ny, args.n_sources, repeats=args.repeats, seed=args.seed,
               photutils=not args.no_photutils)


def main(argv: list[str] | None = None) -> BenchResult:
    """Command line: parse ``argv``, run, print the table; returns the result."""
    return run_and_print(parse, run_from_args, argv)


if __name__ == "__main__":
    sys.exit(0 if main().checks_passed else 1)
