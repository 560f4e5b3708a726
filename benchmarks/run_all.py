"""Run every skysub benchmark and print their tables (``make bench``).

Usage::

    python -m benchmarks.run_all [--quick] [--repeats K] [--seed S]

Exit status 1 when an agreement check fails (numbers that must match do not); performance goals
are printed as PASS/FAIL but never change the exit status (they depend on the machine).
"""

from __future__ import annotations

import argparse
import sys

from . import (
    bench_annulus,
    bench_batch,
    bench_bkgnet,
    bench_bkgnet_real,
    bench_bkgnet_transfer,
    bench_cli,
    bench_inject,
    bench_lumos,
    bench_lumos_real,
    bench_mesh,
    bench_removal,
    bench_removal_real,
    bench_timeseries,
    machine_line,
)

#: the benchmarks ``make bench`` runs, in order
BENCHMARKS = (bench_mesh, bench_annulus, bench_timeseries, bench_inject, bench_bkgnet,
              bench_bkgnet_transfer, bench_bkgnet_real, bench_lumos, bench_lumos_real,
              bench_removal, bench_removal_real, bench_batch, bench_cli)


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark with the shared options; return the exit status."""
    p = argparse.ArgumentParser(description="Run all skysub benchmarks.")
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--repeats", type=int, default=3, metavar="K",
                   help="best of K runs per method (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated images")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    common = ["--repeats", str(args.repeats), "--seed", str(args.seed)]
    if args.quick:
        common.append("--quick")
    print(machine_line(), flush=True)
    ok = True
    for bench in BENCHMARKS:
        print()
        res = bench.run_from_args(bench.parse(common))
        print(res.render(), flush=True)
        ok &= res.checks_passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
