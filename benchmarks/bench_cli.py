"""CLI start-up: whole-command wall times of `skysub --version` and a one-image annulus run.

Each command is run as a fresh process (``python -m skysub.cli ...`` with this interpreter),
alternated, ``--repeats`` times; the table gives the median and the range.  The goal of issue 22:
``skysub --version`` within 2x of ``python -c "import skysub"``, and classical commands that
import neither torch nor dask (the import check is in ``tests/test_cli_imports.py``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import BenchResult, Check, base_parser, run_and_print, simulate_image

COLUMNS = [("command", "command", ""), ("median_s", "median [s]", ".3f"),
           ("min_s", "min [s]", ".3f"), ("max_s", "max [s]", ".3f"),
           ("ratio", "/ import skysub", ".2f")]


def _time(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


def run(repeats: int = 7, *, nx: int = 1024, ny: int = 1024, n_sources: int = 500,
        seed: int = 0) -> BenchResult:
    from astropy.io import fits
    from astropy.table import Table

    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        img, x, y = simulate_image(nx, ny, n_sources, seed=seed)
        fits.PrimaryHDU(img).writeto(d / "exp.fits")
        Table({"id": np.arange(len(x)), "x": x, "y": y}).write(d / "cat.csv")
        cmds = {
            'python -c "import skysub"': [py, "-c", "import skysub"],
            "skysub --version": [py, "-m", "skysub.cli", "--version"],
            "skysub background --method annulus (1 image)":
                [py, "-m", "skysub.cli", "background", "exp.fits", "--catalog", "cat.csv",
                 "--method", "annulus", "--output", "b.csv", "--overwrite", "--quiet"],
        }
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for c in cmds.values():  # warm the file cache once
            _time(c, d)
        for _ in range(repeats):
            for k, c in cmds.items():
                times[k].append(_time(c, d))
    base = float(np.median(times['python -c "import skysub"']))
    res = BenchResult(title=(f"CLI start-up: whole-command wall time, {repeats} alternated runs "
                             f"(annulus: {nx} x {ny} px, {n_sources} sources)"), columns=COLUMNS)
    for k, v in times.items():
        res.rows.append({"command": k, "median_s": float(np.median(v)), "min_s": float(min(v)),
                         "max_s": float(max(v)), "ratio": float(np.median(v)) / base})
    ver = res.rows[1]["ratio"]
    res.goals.append(Check("skysub --version within 2x of python -c 'import skysub'", ver <= 2.0,
                           f"{ver:.2f}x"))
    return res


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.set_defaults(repeats=7)
    p.add_argument("--n-sources", type=int, default=None, help="sources of the annulus run (500)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 3)
    args.n_sources = args.n_sources or 500
    return args


def run_from_args(args: argparse.Namespace) -> BenchResult:
    return run(args.repeats, nx=args.nx or 1024, ny=args.ny or 1024, n_sources=args.n_sources,
               seed=args.seed)


def main(argv: list[str] | None = None) -> BenchResult:
    """Command line: parse ``argv``, run, print the table; returns the result."""
    return run_and_print(parse, run_from_args, argv)


if __name__ == "__main__":
    sys.exit(0 if main().checks_passed else 1)
