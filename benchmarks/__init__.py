"""Speed/accuracy benchmarks of skysub against sep and photutils (``make bench``).

Benchmarks print plain-text tables; they are not unit tests and assert nothing about time.
Shared helpers live here: the simulated image, best-of-k timing, machine description, the
result container and its table rendering.

Run ``python -m benchmarks.run_all`` (or ``python -m benchmarks.bench_mesh`` /
``python -m benchmarks.bench_annulus``) from the repository root; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: full-size image of both benchmarks: (nx, ny) = 4096 x 2048 pixels, a PAUS-like CCD
FULL_SHAPE_XY = (4096, 2048)


# -- timing -------------------------------------------------------------------------------------
def best_of(func: Callable[[], Any], repeats: int = 3, *, warmup: bool = False
            ) -> tuple[float, Any]:
    """Run ``func()`` ``repeats`` times; return (fastest wall time in s, last result).

    Uses :func:`time.perf_counter`.  The best of k is the usual estimate of the cost of the code
    itself on a shared machine (other processes only ever add time).  ``warmup`` makes one
    untimed call first (imports, caches), so that ``repeats=1`` measures a steady-state call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got repeats={repeats}")
    if warmup:
        func()
    best = np.inf
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - t0)
    return float(best), result


# -- machine ------------------------------------------------------------------------------------
def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    return str(getattr(mod, "__version__", "?"))


def machine_info() -> dict[str, str]:
    """CPU count (as this process sees it) and the versions that matter for the timings."""
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        ncpu = os.cpu_count() or 0
    return {"nproc": str(ncpu), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "numpy": _version("numpy"),
            "scipy": _version("scipy"), "sep": _version("sep"),
            "photutils": _version("photutils"), "astropy": _version("astropy"),
            "skysub": _version("skysub")}


def machine_line(info: dict[str, str] | None = None) -> str:
    info = machine_info() if info is None else info
    return "machine: " + ", ".join(f"{k} {v}" for k, v in info.items())


# -- results ------------------------------------------------------------------------------------
@dataclass
class Check:
    """A named pass/fail statement printed under a table (agreement check or goal)."""

    name: str
    passed: bool
    detail: str = ""

    def line(self) -> str:
        return f"[{'PASS' if self.passed else 'FAIL'}] {self.name}" + (
            f"  ({self.detail})" if self.detail else "")


@dataclass
class BenchResult:
    """What a benchmark measured.

    Attributes
    ----------
    title : str
    columns : list of (key, header, format) -- the table's columns, in order
    rows : list of dict -- one per method; numeric fields are floats (NaN = not applicable)
    checks : agreement checks (numbers that must match; a failure is a bug)
    goals : performance goals (machine dependent; a failure is reported, not raised)
    notes : free-text lines printed under the table
    extra_tables : further (title, columns, rows) tables printed after the first
    """

    title: str
    columns: list[tuple[str, str, str]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    goals: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra_tables: list[tuple[str, list, list]] = field(default_factory=list)

    @property
    def checks_passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def render(self) -> str:
        return "\n".join([self.title, "=" * len(self.title),
                          format_table(self.columns, self.rows), ""]
                         + [c.line() for c in self.checks]
                         + [("goal " + g.line()) for g in self.goals]
                         + self.notes
                         + [line for title, cols, rows in self.extra_tables
                            for line in ("", title, "-" * len(title), format_table(cols, rows))])


def _cell(value: Any, fmt: str) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return format(value, fmt)


def format_table(columns: Sequence[tuple[str, str, str]], rows: Sequence[dict]) -> str:
    """Aligned plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[h for _, h, _ in columns]]
    cells += [[_cell(r.get(k), f) for k, _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]

    def fmt_row(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    lines = [fmt_row(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt_row(r) for r in cells[1:]]
    return "\n".join(lines)


# -- simulated image ----------------------------------------------------------------------------
def simulate_image(nx: int, ny: int, n_sources: int, *, sky: float = 1000.0,
                   gradient: tuple[float, float] = (150.0, 80.0),
                   flux_range: tuple[float, float] = (2e3, 2e5),
                   sigma_range: tuple[float, float] = (1.5, 3.0), seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat sky + linear gradient + Gaussian sources + Poisson noise (gain 1), seeded.

    Parameters
    ----------
    nx, ny : int
        Image width and height in pixels; the array has shape ``(ny, nx)``.
    n_sources : int
        Circular Gaussian sources placed uniformly over the image (edges included).
    sky : float
        Sky level at the image centre, ADU per pixel.
    gradient : (float, float)
        Sky change across the full width (x) and height (y), ADU.
    flux_range : (float, float)
        Total source fluxes are log-uniform in this range, ADU.
    sigma_range : (float, float)
        Gaussian sigmas are uniform in this range, pixels.
    seed : int

    Returns
    -------
    image : float64 (ny, nx), native byte order, C-contiguous
    x, y : float arrays (n_sources,), 0-based source centres (column, row)
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ny, 0:nx]
    model = (sky + gradient[0] * (xx / max(nx - 1, 1) - 0.5)
             + gradient[1] * (yy / max(ny - 1, 1) - 0.5))
    x = rng.uniform(-0.5, nx - 0.5, n_sources)
    y = rng.uniform(-0.5, ny - 0.5, n_sources)
    flux = np.exp(rng.uniform(*np.log(flux_range), n_sources))
    sig = rng.uniform(*sigma_range, n_sources)
    # render every source on its own (2h+1)^2 stamp at once (vectorised over sources)
    h = int(np.ceil(5 * sigma_range[1]))
    off = np.arange(-h, h + 1)
    dy, dx = np.meshgrid(off, off, indexing="ij")
    xi, yi = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
    px = xi[:, None, None] + dx[None]
    py = yi[:, None, None] + dy[None]
    r2 = (px - x[:, None, None]) ** 2 + (py - y[:, None, None]) ** 2
    s2 = sig[:, None, None] ** 2
    val = flux[:, None, None] / (2 * np.pi * s2) * np.exp(-0.5 * r2 / s2)
    inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    np.add.at(model, (py[inside], px[inside]), val[inside])
    image = rng.poisson(model).astype(np.float64)
    return np.ascontiguousarray(image), x, y


# -- command line -------------------------------------------------------------------------------
def base_parser(description: str) -> argparse.ArgumentParser:
    """Parser with the options every benchmark takes (``--quick``, ``--repeats``, sizes)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="smaller sizes (a quick look; the README quotes full-size numbers)")
    p.add_argument("--repeats", type=int, default=3, metavar="K",
                   help="report the best of K runs of each method (default 3)")
    p.add_argument("--nx", type=int, default=None, help="image width in pixels (overrides)")
    p.add_argument("--ny", type=int, default=None, help="image height in pixels (overrides)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated image")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    for name in ("nx", "ny"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name} must be a positive number of pixels, got {v}")


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / |b| over entries where both are finite (NaN if there are none); NaN in one
    but not the other counts as infinitely different."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    fa, fb = np.isfinite(a), np.isfinite(b)
    if np.any(fa != fb):
        return float("inf")
    both = fa & fb
    if not both.any():
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.abs(a[both] - b[both]) / np.abs(b[both])
    d = np.where(a[both] == b[both], 0.0, d)
    return float(np.max(d))


def run_and_print(parse: Callable, run_from_args: Callable, argv: list[str] | None = None
                  ) -> BenchResult:
    """The body of every benchmark's ``main``: parse ``argv``, run, print the machine line and
    the table; returns the result."""
    res = run_from_args(parse(argv))
    print(machine_line())
    print(res.render())
    return res
