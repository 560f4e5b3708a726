"""Survey-scale batch throughput on Dask (1 vs 2 workers), network stamps/s on CPU, worker memory.

Four tables:

0. The whole command as a user runs it: ``skysub batch --workers 1`` and ``--workers 2`` on 8
   and 32 exposures of 1024 x 1024 px (annulus), wall clock including interpreter start and
   imports, median of alternated runs, with the command's own time report (start-up, read,
   compute, write) and the CPU share the workers got (goals: 2 workers >= 1.6x on 8
   exposures, >= 1.8x on 32).

1. ``skysub.batch.run`` on N simulated PAUS-like exposures (``skysub.simulate.ccd``) with the
   default local pool of 1 and of 2 single-threaded worker processes: exposures/s and the speed-up
   (goal: >= 1.8x with 2 workers on 2 cores).  The results of the two runs must be identical.
2. Stamps/s of each network on CPU (untrained weights: speed does not depend on them), forward
   pass only and end to end through the estimator (cutouts, normalisation, network), for a few
   batch sizes and torch thread counts, in ``torch.inference_mode`` with channels-last memory
   and batch-norm fused into the convolutions (what :class:`BKGnetBackground` does).
3. Peak resident memory of one worker processing a 4096 x 2048 exposure with 5,000 sources,
   for the annulus and BKGnet (goal: < 2 GB per worker).

Timings need a quiet machine: the load average is printed with the tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import (
    BenchResult,
    Check,
    base_parser,
    best_of,
    check_args,
    format_table,
    run_and_print,
    simulate_image,
)

GOAL_SPEEDUP = 1.8
GOAL_RSS_MB = 2000.0
COLUMNS = [("workers", "workers", "d"), ("exposures", "exposures", "d"),
           ("rows", "rows", "d"), ("seconds", "time [s]", ".2f"),
           ("exp_per_s", "exposures/s", ".3f"), ("speedup", "speed-up", ".2f"),
           ("task_s", "task wall [s]", ".3f"), ("task_cpu_s", "task CPU [s]", ".3f"),
           ("cpu_share", "CPU got", ".2f"),
           ("startup_s", "cluster start [s]", ".1f"), ("peak_rss_mb", "peak RSS [MB]", ".0f")]


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def simulate(out: Path, n_exposures: int, shape: tuple[int, int], seed: int) -> tuple:
    """PAUS-like exposures (paus preset, ``shape`` = (ny, nx)); returns (image glob, catalog)."""
    from skysub.config import load_config
    from skysub.simulate.ccd import CCDSimConfig, simulate_survey

    sec = dict(load_config("paus").simulate)
    sec["shape"] = list(shape)
    simulate_survey(out, CCDSimConfig(**sec), n_exposures=n_exposures, seed=seed,
                    progress=False)
    return str(out / "images" / "*.fits"), str(out / "catalog.csv")


def throughput(images: str, catalog: str, out: Path, workers: int, method: str,
               model: str | None) -> tuple[dict, object]:
    """One batch run with the default local executor (``workers`` processes started once)."""
    from skysub import batch

    res = batch.run([images], catalog, out, method=method, config="paus", model=model,
                    device="cpu", workers=workers, quiet=True, overwrite=True)
    startup = res.startup_seconds - res.preload_seconds
    if not res.ok:
        raise RuntimeError(f"batch run failed: {res.summary()}")
    wall = np.array([r["seconds"] for r in res.records])
    cpu = np.array([r["cpu_seconds"] for r in res.records])
    row = {"workers": workers, "exposures": res.n_done, "rows": res.n_rows,
           "seconds": res.seconds, "exp_per_s": res.exposures_per_s,
           "task_s": float(np.mean(wall)), "task_cpu_s": float(np.mean(cpu)),
           # CPU time the workers got / (workers x wall time): 1 = each worker had a whole core
           "cpu_share": float(cpu.sum() / (workers * res.seconds)),
           "startup_s": startup + res.preload_seconds, "peak_rss_mb": res.peak_rss_mb}
    return row, res


WHOLE_COLUMNS = [("exposures", "exposures", "d"), ("workers", "workers", "d"),
                 ("seconds", "whole command [s]", ".2f"), ("runs", "runs [s]", ""),
                 ("speedup", "speed-up", ".2f"), ("startup", "start-up [s]", ".2f"),
                 ("read", "read [s]", ".2f"), ("compute", "compute [s]", ".2f"),
                 ("write", "write [s]", ".2f"), ("cpu_share", "CPU got", ".2f"),
                 ("serial", "serial [s]", ".2f"), ("bound", "Amdahl bound", ".2f")]
#: whole-command goals: (exposures, speed-up of 2 workers over 1)
WHOLE_GOALS = {8: 1.6, 32: 1.8}


def whole_command(paths: list[str], catalog: str, out: Path, workers: tuple[int, ...],
                  method: str, repeats: int) -> list[dict]:
    """``skysub batch`` as a user runs it: the wall clock of the whole command (interpreter
    start, imports, workers, exposures, shutdown) for each worker count, the counts alternated
    ``repeats`` times (so that a busy spell of the shared machine hits all of them) and the
    median reported, with the command's own time report (summed over all runs' exposures:
    read, compute, write in worker-seconds) and the CPU share its workers got."""
    import json
    import subprocess

    times: dict[int, list[float]] = {w: [] for w in workers}
    reports: dict[int, list[dict]] = {w: [] for w in workers}
    for _ in range(repeats):
        for w in workers:
            dest = out / f"w{w}"
            cmd = [sys.executable, "-m", "skysub.cli", "batch", *paths, "--catalog", catalog,
                   "--config", "paus", "--method", method, "--output", str(dest),
                   "--workers", str(w), "--overwrite", "--quiet", "--device", "cpu"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            times[w].append(time.perf_counter() - t0)
            reports[w].append(json.loads((dest / "_summary.json").read_text()))
    rows = []
    for w in workers:
        t = [r["timing"] for r in reports[w]]
        cores = sum(r["exposures_wall"] for r in t) * w
        rows.append({"exposures": len(paths), "workers": w,
                     "seconds": float(np.median(times[w])),
                     "runs": " ".join(f"{v:.2f}" for v in times[w]),
                     "startup": float(np.median([r["startup"] for r in t])),
                     "read": float(np.median([r["read"] for r in t])),
                     "compute": float(np.median([r["compute"] for r in t])),
                     "write": float(np.median([r["write"] for r in t])),
                     "cpu_share": (sum(r["cpu"] for r in t) / cores if cores > 0
                                   else float("nan"))})
    base = rows[0]["seconds"]
    # Amdahl: the 1-worker run's own exposure work (its timing report's exposures_wall) is all
    # that more workers can share; the rest of its wall clock (interpreter start, imports,
    # configuration, output folder, summary) is serial.  "bound" = the speed-up if the
    # exposures divided perfectly among the workers at no cost.
    one = [r["timing"]["exposures_wall"] for r in reports[workers[0]]]
    work = float(np.median(one))
    serial = max(base - work, 0.0)
    for r in rows:
        r["speedup"] = base / r["seconds"]
        r["serial"] = serial
        r["bound"] = base / (serial + work * workers[0] / r["workers"])
    return rows


def interrupted_resume(images: str, catalog: str, out: Path, method: str, model: str | None,
                       n_exposures: int, reference, timeout: float = 600.0) -> Check:
    """Start ``skysub batch`` (2 workers), interrupt it (SIGINT, as Ctrl-C) once half of the
    exposures are written, rerun it: finished exposures must be skipped (files untouched) and
    the final table must equal ``reference`` (an uninterrupted run)."""
    import signal
    import subprocess

    from skysub import batch

    cmd = [sys.executable, "-m", "skysub.cli", "batch", images, "--catalog", catalog,
           "--config", "paus", "--method", method, "--output", str(out), "--workers", "2",
           "--quiet", "--device", "cpu"] + (["--model", model] if model else [])
    parts = out / "parquet"
    proc = subprocess.Popen(cmd)
    t0 = time.perf_counter()
    while proc.poll() is None and time.perf_counter() - t0 < timeout:
        if parts.is_dir() and len(list(parts.glob("*.parquet"))) >= n_exposures // 2:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.parquet")}
    res = batch.run([images], catalog, out, method=method, config="paus", model=model,
                    device="cpu", workers=2, quiet=True)
    untouched = all((parts / n).stat().st_mtime_ns == t for n, t in done.items())
    same = _equal(batch.read_results(out), reference)
    ok = (0 < len(done) < n_exposures and res.n_skipped == len(done)
          and res.n_done == n_exposures - len(done) and untouched and same)
    return Check(f"{n_exposures}-exposure run interrupted (SIGINT) after {len(done)} exposures "
                 "resumes without recomputing them, with identical results", bool(ok),
                 f"rerun: {res.n_skipped} skipped, {res.n_done} computed, finished files "
                 f"{'untouched' if untouched else 'REWRITTEN'}, results "
                 f"{'identical' if same else 'DIFFERENT'}; exit status {proc.returncode}")


def random_bkgnet(path: Path, preset: str, stamp_size: int = 120, mask_size: int = 16) -> Path:
    """A BKGnet model file with untrained weights (for speed and memory measurements only)."""
    import torch

    from skysub.background.bkgnet import key_name
    from skysub.nn.bkgnet import BKGnetArch, build_from_arch
    from skysub.nn.modelfile import save_model

    torch.manual_seed(0)
    arch = BKGnetArch.from_preset(preset, stamp_size=stamp_size, mask_size=mask_size).as_dict()
    net = build_from_arch(arch).eval()
    card = {"kind": "bkgnet", "arch": arch, "description": f"untrained {preset} (benchmark)",
            "inputs": {"keys": [key_name(None, None)], "labels": "truth", "min_valid": 64}}
    save_model(path, net, card, overwrite=True)
    return path


def network_speed(model_path: Path, name: str, batch_sizes: list[int], threads: list[int],
                  repeats: int) -> list[dict]:
    """Stamps/s of one network: the forward pass alone (best of ``repeats`` after a warm-up)
    and end to end through BKGnetBackground.estimate (cutouts, normalisation, network) on two
    batches of sources of a noise image."""
    import torch

    from skysub.background.bkgnet import BKGnetBackground
    from skysub.image import Image, ImageMeta
    from skysub.nn.bkgnet import n_parameters
    from skysub.nn.device import configure_threads

    rows = []
    rng = np.random.default_rng(0)
    for th in threads:
        for bs in batch_sizes:
            est = BKGnetBackground(model_path, device="cpu", batch_size=bs, threads=th)
            configure_threads(th)
            S = est.stamp_size
            n_stamps = 2 * bs
            side = int(np.ceil(np.sqrt(n_stamps)))
            step = S + 10
            data = rng.normal(110.0, 10.0, ((side + 1) * step, (side + 1) * step))
            img = Image(data, None, meta=ImageMeta(gain=1.0, rdnoise=5.0))
            g = np.arange(n_stamps)
            x, y = step * (1.0 + g % side), step * (1.0 + g // side)
            xin = torch.randn(bs, 2, S, S).contiguous(memory_format=torch.channels_last)
            coords, mag = torch.zeros(bs, 2), torch.zeros(bs)
            has, key = torch.ones(bs), torch.zeros(bs, dtype=torch.long)

            def forward(est=est, xin=xin, coords=coords, mag=mag, has=has, key=key):
                with torch.inference_mode():
                    return est.net(xin, coords, mag, has, key)

            t_fwd, _ = best_of(forward, repeats, warmup=True)
            t_e2e, _ = best_of(lambda est=est, img=img, x=x, y=y: est.estimate(img, x, y), 1)
            rows.append({"network": name, "params": n_parameters(est.net), "batch": bs,
                         "threads": th, "fwd": bs / t_fwd, "e2e": n_stamps / t_e2e})
    return rows


def memory(tmp: Path, methods: list[tuple[str, str | None]], nx: int, ny: int,
           n_sources: int, seed: int) -> list[dict]:
    """Peak RSS of one worker process on a (ny, nx) exposure with ``n_sources`` sources."""
    from astropy.io import fits
    from astropy.table import Table

    from skysub import batch
    from skysub.io import write_fits_product

    image, x, y = simulate_image(nx, ny, n_sources, seed=seed)
    path = write_fits_product(tmp / "big" / "big.fits", image.astype(np.float32),
                              header=fits.Header({"EXPTIME": 100.0, "GAIN": 1.0,
                                                  "RDNOISE": 5.0}),
                              overwrite=True)
    cat = Table({"id": np.arange(n_sources), "x": x, "y": y})
    cat_path = tmp / "big" / "big_catalog.csv"
    cat.write(cat_path, format="ascii.csv", overwrite=True)
    rows = []
    for method, model in methods:
        res = batch.run([str(path)], str(cat_path), tmp / f"mem_{method}", method=method,
                        model=model, device="cpu", workers=1, quiet=True, overwrite=True,
                        memory_limit=None)
        if not res.ok:
            raise RuntimeError(f"memory run failed: {res.summary()}")
        rows.append({"method": method, "image": f"{nx} x {ny}", "sources": n_sources,
                     "rows": res.n_rows, "seconds": res.seconds,
                     "peak_rss_mb": res.peak_rss_mb})
    return rows


#: batch sizes timed per BKGnet preset (the paper network needs ~1.4 GFLOP per stamp: one size)
NETWORK_BATCHES = {"lean": (64, 256, 512), "paper": (64,)}


def run(n_exposures: int = 32, shape: tuple[int, int] = (512, 1024), *, method: str = "annulus",
        workers: tuple[int, ...] = (1, 2), networks: tuple[str, ...] = ("lean", "paper"),
        batch_sizes: dict | None = None, threads: tuple[int, ...] = (1, 2),
        resume: bool = True, memory_shape: tuple[int, int] = (4096, 2048),
        memory_sources: int = 5000, repeats: int = 3, seed: int = 0,
        workdir: str | None = None, whole: tuple[int, ...] = (8, 32),
        whole_shape: tuple[int, int] = (1024, 1024), whole_repeats: int = 3) -> BenchResult:
    """Run the measurements; see the module docstring."""
    from skysub import batch

    res = BenchResult(
        title=(f"skysub batch: {n_exposures} exposures of {shape[1]} x {shape[0]} px "
               f"(paus simulation), method {method}, local pool (workers started once), "
               "1 thread per worker"),
        columns=COLUMNS)
    res.notes.append(f"load average at start: {_load()} (timings need a quiet machine)")
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        tmp = Path(d)
        whole_rows = []
        if whole:
            import glob

            simulate(tmp / "whole", max(whole), whole_shape, seed)
            paths = sorted(glob.glob(str(tmp / "whole" / "images" / "*.fits")))
            for n in whole:
                whole_rows += whole_command(paths[:n], str(tmp / "whole" / "catalog.csv"),
                                            tmp / f"whole_out_{n}", workers, method,
                                            whole_repeats)
            res.extra_tables.append((
                f"Whole command `skysub batch --method {method} --workers N` on exposures of "
                f"{whole_shape[1]} x {whole_shape[0]} px (wall clock incl. interpreter start; "
                f"median of {whole_repeats} alternated runs; start-up / read / compute / "
                "write: the command's own --verbose report, worker-seconds; serial: the "
                "1-worker wall clock outside its exposures (interpreter, imports, "
                "configuration, output); Amdahl bound: the speed-up with that serial part and "
                "the exposures divided perfectly among the workers)",
                WHOLE_COLUMNS, whole_rows))
            for n, goal in WHOLE_GOALS.items():
                two = [r for r in whole_rows if r["exposures"] == n and r["workers"] == 2]
                if two and 1 in workers:
                    res.goals.append(Check(f"whole command, {n} exposures: 2 workers >= "
                                           f"{goal:g}x 1 worker", bool(two[0]["speedup"] >= goal),
                                           f"{two[0]['speedup']:.2f}x (CPU got "
                                           f"{two[0]['cpu_share']:.2f}; Amdahl bound "
                                           f"{two[0]['bound']:.2f}x)"))
        res.whole_rows = whole_rows
        images, catalog = simulate(tmp / "sim", n_exposures, shape, seed)
        model = None
        if method == "bkgnet":
            model = str(random_bkgnet(tmp / "bkgnet_lean.pt", "lean"))
        tables = {}
        for w in workers:
            row, _ = throughput(images, catalog, tmp / f"out_{w}", w, method, model)
            res.rows.append(row)
            tables[w] = batch.read_results(tmp / f"out_{w}")
        base = res.rows[0]["exp_per_s"]
        for row in res.rows:
            row["speedup"] = row["exp_per_s"] / base
        first = tables[workers[0]]
        same = all(_equal(first, t) for t in tables.values())
        res.checks.append(Check("same rows and values with every worker count", same,
                                f"{len(first)} rows"))
        if resume and n_exposures >= 4:
            res.checks.append(interrupted_resume(images, catalog, tmp / "out_resume", method,
                                                 model, n_exposures, first))
        if 2 in workers:
            sp = next(r["speedup"] for r in res.rows if r["workers"] == 2)
            res.goals.append(Check(f">= {GOAL_SPEEDUP:g}x throughput with 2 workers vs 1",
                                   bool(sp >= GOAL_SPEEDUP), f"{sp:.2f}x"))
        res.notes.append(f"load average after the throughput runs: {_load()}")
        res.notes.append("task wall/CPU: mean per exposure; CPU got: the workers' CPU time over "
                         "workers x wall time (1.00 = a whole core each; less = the cores were "
                         "shared with other processes)")
        if 2 in workers and 1 in workers:
            one = next(r for r in res.rows if r["workers"] == 1)
            two = next(r for r in res.rows if r["workers"] == 2)
            # do the workers slow each other down (memory bandwidth, caches, the scheduler)?
            res.notes.append(f"CPU cost per exposure, 2 workers / 1 worker: "
                             f"{two['task_cpu_s'] / one['task_cpu_s']:.2f} (about 1 = the "
                             "workers do not slow each other down; the speed-up is then limited "
                             "by the cores they get)")

        net_rows = []
        for preset in networks:
            path = random_bkgnet(tmp / f"bkgnet_{preset}.pt", preset)
            sizes = (batch_sizes or NETWORK_BATCHES)[preset]
            net_rows += network_speed(path, f"bkgnet-{preset}", list(sizes), list(threads),
                                      repeats)
        if net_rows:
            res.notes += ["", "Networks on CPU (untrained weights; 120 x 120 stamps; "
                          "inference_mode, channels-last, batch-norm fused; forward: best of "
                          f"{repeats}; estimator: 2 batches, cutouts to denormalised output)",
                          format_table([("network", "network", ""), ("params", "params", "d"),
                                        ("batch", "batch", "d"), ("threads", "threads", "d"),
                                        ("fwd", "forward stamps/s", ".0f"),
                                        ("e2e", "estimator stamps/s", ".0f")], net_rows)]
        res.net_rows = net_rows

        mem_rows = []
        if memory_sources > 0:
            methods = [("annulus", None),
                       ("bkgnet", str(random_bkgnet(tmp / "bkgnet_mem.pt", "lean")))]
            mem_rows = memory(tmp, methods, *memory_shape, memory_sources, seed)
            res.notes += ["", "Peak memory of one worker process (VmHWM of /proc/self/status: "
                          "the whole worker incl. Dask, torch, astropy)",
                          format_table([("method", "method", ""), ("image", "image", ""),
                                        ("sources", "sources", "d"), ("rows", "rows", "d"),
                                        ("seconds", "time [s]", ".1f"),
                                        ("peak_rss_mb", "peak RSS [MB]", ".0f")], mem_rows)]
            worst = max(r["peak_rss_mb"] for r in mem_rows)
            res.goals.append(Check(f"worker peak memory < {GOAL_RSS_MB:.0f} MB on "
                                   f"{memory_shape[0]} x {memory_shape[1]} px, "
                                   f"{memory_sources} sources", bool(worst < GOAL_RSS_MB),
                                   f"worst {worst:.0f} MB"))
        res.mem_rows = mem_rows
    res.notes.append(f"load average at the end: {_load()}")
    return res


def _equal(a, b) -> bool:
    if a.colnames != b.colnames or len(a) != len(b):
        return False
    a, b = a.copy(), b.copy()
    a.sort(["image", "id"])
    b.sort(["image", "id"])
    for c in a.colnames:
        x, y = np.asarray(a[c]), np.asarray(b[c])
        if x.dtype.kind == "f":
            if not np.array_equal(x, y, equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``nx`` and ``ny`` come back resolved."""
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n-exposures", type=int, default=None, help="exposures (32; 8 quick)")
    p.add_argument("--method", default="annulus", help="background method (annulus)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                   help="worker counts to compare (1 2)")
    p.add_argument("--no-memory", action="store_true", help="skip the 4096 x 2048 memory run")
    p.add_argument("--no-networks", action="store_true", help="skip the network table")
    p.add_argument("--no-resume", action="store_true",
                   help="skip the interrupt-and-resume check")
    p.add_argument("--whole", type=int, nargs="*", default=None, metavar="N",
                   help="exposure counts of the whole-command runs (8 32; 8 with --quick; "
                        "none: skip)")
    p.add_argument("--whole-size", type=int, default=None, metavar="PX",
                   help="side of the whole-command exposures (1024; 512 with --quick)")
    args = p.parse_args(argv)
    check_args(p, args)
    if args.n_exposures is None:
        args.n_exposures = 8 if args.quick else 32
    if args.n_exposures < 1:
        p.error(f"--n-exposures must be >= 1, got {args.n_exposures}")
    # default size: the paus preset's simulated CCD section (1024 x 512 px)
    args.nx = args.nx or (512 if args.quick else 1024)
    args.ny = args.ny or (256 if args.quick else 512)
    if min(args.nx, args.ny) < 64:
        p.error(f"--nx/--ny must be at least 64 px, got {args.nx} x {args.ny}")
    if any(w < 1 for w in args.workers):
        p.error(f"--workers must be >= 1, got {args.workers}")
    return args


def run_from_args(args: argparse.Namespace) -> BenchResult:
    quick = args.quick
    whole = tuple(args.whole) if args.whole is not None else ((8,) if quick else (8, 32))
    side = args.whole_size or (512 if quick else 1024)
    return run(args.n_exposures, (args.ny, args.nx), method=args.method,
               whole=whole, whole_shape=(side, side), whole_repeats=1 if quick else 3,
               workers=tuple(args.workers),
               networks=() if args.no_networks else (("lean",) if quick else ("lean", "paper")),
               batch_sizes={"lean": (64,)} if quick else None,
               threads=(1,) if quick else (1, 2),
               memory_sources=0 if (quick or args.no_memory) else 5000,
               resume=not (quick or args.no_resume),
               repeats=1 if quick else args.repeats, seed=args.seed)


def main(argv: list[str] | None = None) -> BenchResult:
    """Command line: parse ``argv``, run, print the table; returns the result."""
    return run_and_print(parse, run_from_args, argv)


if __name__ == "__main__":
    sys.exit(0 if main().checks_passed else 1)
