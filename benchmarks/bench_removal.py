"""Compact-source removal: U-Net speed (default vs paper preset) and accuracy on held-out fields.

Speed: cutouts per second through the network (96 x 96, batch of 256 for the default preset and
16 for the paper's Table 4 network, channels-last), best of k, with one torch thread and with
every core of this process (``SKYSUB_BENCH_THREADS`` overrides): on a shared machine OpenMP
threads spinning against other processes can make the multi-threaded figure the slower one.

Accuracy (the shipped model ``inpaint-default``): held-out simulated fields (seeds disjoint from
training; Gaussian / Airy-like / Herschel-like PSFs), one simulation per flux level with every
source at that level; sources removed on the whole map and measured in a 6 px aperture with
aperture correction.  Rows per flux level: median and IQR of measured / injected flux for the
model (image - prediction) and the classical annulus method, their ratio, and the IQR with the TRUE
background subtracted (the floor set by neighbours' light and pixel phase, common to every
background estimate); the eq. 1 peak SNR.  Under the
table: masked-pixel statistics vs the source-free original and the normalised power-spectrum
difference.

Goals (the issue's): >= 200 cutouts/s (default preset); median flux ratio within 2 % of 1 at
every level with SNR > 10 and IQR <= 0.5 x the annulus IQR; masked-pixel mean, median, std,
skewness, IQR within 3 %; normalised power-spectrum difference < 1e-3 at every scale.

Held-out generator family (``--family cascade``): the accuracy fields come from
:mod:`skysub.simulate.families`' ``cascade`` generator (a multiplicative cascade), which no
training configuration draws (``[removal.train] families`` refuses it), with beams of five
shapes and FWHM 1.5-8 px (holes scaled by FWHM / 3.5 px).

Usage::

    python -m benchmarks.bench_removal [--quick] [--repeats K] [--n-fields N] [--field-size S]
        [--model M] [--tta {1,2,4,8}] [--family {classic,cascade}]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import BenchResult, Check, base_parser, best_of, check_args, run_and_print

GOAL_RATE = 200.0
COLUMNS = [("row", "row", ""), ("cutouts_s", "cutouts/s", ".0f"), ("n", "n", ".0f"),
           ("snr", "SNR", ".0f"), ("model_median", "model median", ".3f"),
           ("model_median_se", "± SE", ".3f"),
           ("model_iqr", "model IQR", ".3f"), ("annulus_median", "annulus median", ".3f"),
           ("annulus_iqr", "annulus IQR", ".3f"), ("iqr_ratio", "IQR model/annulus", ".2f"),
           ("oracle_iqr", "oracle IQR", ".3f")]


def speed(preset: str, n: int, batch: int, repeats: int, seed: int = 0,
          threads: int | None = None) -> float:
    """Cutouts per second through the ``preset`` network (random weights: the speed does not
    depend on them) with ``threads`` torch threads (None: every core of this process)."""
    import torch

    from skysub.nn.device import configure_threads
    from skysub.nn.unet import arch_for, build_from_arch
    from skysub.removal.core import predict_cutouts

    configure_threads(threads)
    torch.manual_seed(seed)
    net = build_from_arch(arch_for(preset, 96)).eval()
    rng = np.random.default_rng(seed)
    data = 10 + rng.standard_normal((n, 96, 96))
    valid = np.ones((n, 96, 96), bool)
    yy, xx = np.indices((96, 96))
    valid[:, (xx - 48) ** 2 + (yy - 48) ** 2 <= 64] = False
    predict_cutouts(net, data[:batch], valid[:batch], batch_size=batch)  # warm-up
    t, _ = best_of(lambda: predict_cutouts(net, data, valid, batch_size=batch), repeats)
    return n / t


def run(*, quick: bool = False, repeats: int = 3, seed: int = 12345, n_fields: int = 12,
        field_size: int = 384, model: str = "inpaint-default", tta: int = 1,
        family: str = "classic") -> BenchResult:
    from skysub.removal.evaluation import (
        evaluate_fields,
        flux_ratio_table,
        goals,
        simulate_test_fields,
    )

    res = BenchResult(title=(f"Compact-source removal: U-Net speed (96 x 96 cutouts, best of "
                             f"{repeats}) and flux ratio on {n_fields} held-out fields of "
                             f"{field_size} px (aperture r = 6 px"
                             + (")" if family == "classic" else
                                f"; generator family {family}, beams 1.5-8 px)")),
                    columns=COLUMNS)
    n_def, n_pap = (256, 16) if quick else (1024, 48)
    # on a shared machine OpenMP threads spin against other processes: report one thread and
    # every core, and take the better as the figure of merit
    import os

    from skysub.nn.device import configure_threads

    ncores = configure_threads(int(os.environ.get("SKYSUB_BENCH_THREADS", "0")) or None)
    rates = {}
    for preset, n, batch in (("default", n_def, 256), ("paper", n_pap, 16)):
        for th in sorted({1, ncores}):
            rates[preset, th] = speed(preset, n, batch, repeats, threads=th)
            res.rows.append({"row": f"speed: {preset} preset, {th} thread{'s' * (th > 1)}",
                             "cutouts_s": rates[preset, th]})
    configure_threads(ncores)
    r_def = max(v for (p, _), v in rates.items() if p == "default")
    r_pap = max(v for (p, _), v in rates.items() if p == "paper")
    sims = simulate_test_fields(n_fields, field_size, seed, family=family)
    if family != "classic":
        res.notes.append("beams: " + ", ".join(f"{s.extra['psf_kind']} {s.extra['psf_fwhm']:.1f}"
                                              for s in sims[::len(sims) // n_fields]))
    ev = evaluate_fields(sims, model=model, tta=tta)
    if tta > 1:
        res.notes.append(f"accuracy with test-time augmentation over {tta} symmetries (the "
                         f"removal then costs {tta} network passes per cutout)")
    ratio = flux_ratio_table(ev["rows"])
    for r in ratio:
        res.rows.append({"row": f"flux {r['flux']:g}", "n": float(r["n"]),
                         "snr": float(r["snr_median"]),
                         "model_median": float(r["model_median"]),
                         "model_median_se": float(r["model_median_se"]),
                         "model_iqr": float(r["model_iqr"]),
                         "annulus_median": float(r["annulus_median"]),
                         "annulus_iqr": float(r["annulus_iqr"]),
                         "iqr_ratio": float(r["model_iqr"] / r["annulus_iqr"]),
                         "oracle_iqr": float(r["oracle_iqr"])})
    st = ev["stats"]
    for key in ("mean", "median", "std", "skewness", "iqr"):
        rel = np.abs(np.asarray(st[f"reldiff_{key}"], float))
        dstd = np.abs(np.asarray(st[f"diff_over_std_{key}"], float))
        floor = np.asarray(st[f"floor_reldiff_{key}"], float)
        res.notes.append(f"masked pixels, {key:8s}: |predicted - original| / |original| median "
                         f"{np.nanmedian(rel):.4f}, max {np.nanmax(rel):.4f}; in original-std "
                         f"units max {np.nanmax(dstd):.4f}; sampling floor (holes moved at "
                         f"random) median {np.nanmedian(floor):.4f}, max {np.nanmax(floor):.4f}; "
                         f"model below its floor in {int(np.sum(rel < floor))} of {len(rel)}")
    d = np.abs(np.asarray(ev["spectra"]["difference"], float))
    res.notes.append(f"normalised power-spectrum difference |P_orig - P_pred| / sum P_orig: "
                     f"median {np.nanmedian(d):.1e}, max {np.nanmax(d):.1e}")
    res.checks.append(Check("every simulation evaluated", len(st) == len(sims),
                            f"{len(st)} of {len(sims)}"))
    res.goals.append(Check(f">= {GOAL_RATE:g} cutouts/s with the default preset",
                           bool(r_def >= GOAL_RATE), f"{r_def:.0f}/s; paper preset {r_pap:.1f}/s"))
    for g in goals(ratio, st, ev["spectra"]):
        res.goals.append(Check(g["name"], bool(g["passed"]), g["value"]))
    return res


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n-fields", type=int, default=None,
                   help="held-out fields (default 12: ~800 sources per level, so a 2 %% median "
                        "offset at SNR 10 is resolved; 1 with --quick)")
    p.add_argument("--field-size", type=int, default=None,
                   help="field side in px (default 384; 256 with --quick)")
    p.add_argument("--model", default="inpaint-default", help="model name or file")
    p.add_argument("--tta", type=int, choices=(1, 2, 4, 8), default=1,
                   help="symmetries averaged per cutout in the accuracy part (default 1)")
    p.add_argument("--family", choices=("classic", "cascade"), default="classic",
                   help="generator of the accuracy fields: skysub's classic simulator "
                        "(default) or the held-out cascade family training never draws")
    args = p.parse_args(argv)
    check_args(p, args)
    if args.n_fields is None:
        args.n_fields = 1 if args.quick else 12
    if args.field_size is None:
        args.field_size = 256 if args.quick else 384
    if args.n_fields < 1:
        p.error(f"--n-fields must be >= 1, got {args.n_fields}")
    if args.field_size < 128:
        p.error(f"--field-size must be >= 128 px, got {args.field_size}")
    return args


def run_from_args(args: argparse.Namespace) -> BenchResult:
    seed = args.seed if args.seed else 12345
    return run(quick=args.quick, repeats=args.repeats, seed=seed, n_fields=args.n_fields,
               field_size=args.field_size, model=getattr(args, "model", "inpaint-default"),
               tta=getattr(args, "tta", 1), family=getattr(args, "family", "classic"))


def main(argv: list[str] | None = None) -> BenchResult:
    """Command line: parse ``argv``, run, print the table; returns the result."""
    return run_and_print(parse, run_from_args, argv)


if __name__ == "__main__":
    sys.exit(0 if main().checks_passed else 1)
