"""``skysub batch``: many exposures in parallel, locally or on Dask (parse arguments, call
skysub.batch.run)."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  skysub batch survey/*.fits --catalog cat.csv --method annulus --config paus --output bkg/
  skysub batch survey/*.fits --catalog cat.csv --method bkgnet --model bkgnet-paus \\
      --output bkg_bkgnet/ --workers 2
  skysub batch survey/*.fits --catalog cat.csv --photometer aperture --method annulus \\
      --output phot/ --format both
  skysub batch survey/*.fits --catalog cat.csv --method mesh --output bkg/ \\
      --scheduler tcp://head-node:8786        (a running `dask scheduler` + `dask worker`s)

writes DIR/parquet/<exposure>.parquet (and DIR/csv/<exposure>.csv with --format csv|both) as
exposures finish; columns as `skysub background` (image, id, x, y, bkg, bkg_err, flags, ...)
or, with --photometer, as `skysub photometry` (... flux, flux_err, bkg, bkg_err, flags).
Resume: run the same command again -- finished exposures are skipped, failed ones (listed in
DIR/_failures.json with the error and traceback) are retried.  Different settings into the same
DIR are refused; --overwrite deletes DIR's partitions and recomputes everything.
`skysub --verbose batch ...` reports where the time went (start-up, read, compute, write).
Exit status: 0 when every exposure succeeded, 1 when some failed, 2 on a usage error."""


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``batch`` to the ``skysub`` sub-parsers."""
    from .cli_args import add_common, add_model_args
    from .names import BACKGROUND_METHODS, CPU_BATCH_SIZE, GPU_BATCH_SIZE, PHOTOMETERS

    p = sub.add_parser("batch", help="many exposures in parallel, locally or on Dask "
                       "(resumable, Parquet)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="FITS exposures (globs allowed)")
    p.add_argument("--catalog", "-c", required=True,
                   help="catalogue (CSV/ECSV/FITS): id and x,y (0-based px) or ra,dec (deg)")
    p.add_argument("--method", "-m", default="annulus",
                   help=f"background method: {', '.join(BACKGROUND_METHODS)} (annulus)")
    p.add_argument("--photometer", "-p", default=None,
                   help=f"measure fluxes with this photometer ({', '.join(PHOTOMETERS)}) and "
                        "--method as its background; default: background only")
    p.add_argument("--output", "-o", required=True, help="output folder (created)")
    g = p.add_argument_group("estimator options (as skysub background / photometry)")
    g.add_argument("--templates", default=None, help="scattered-light templates (FITS)")
    g.add_argument("--r-in", type=float, default=None, help="annulus inner radius [px]")
    g.add_argument("--r-out", type=float, default=None, help="annulus outer radius [px]")
    g.add_argument("--statistic", choices=("median", "mean", "mode", "biweight"), default=None)
    g.add_argument("--radius", type=float, default=None, help="aperture radius [px]")
    g.add_argument("--psf-fwhm", type=float, default=None, help="Gaussian PSF FWHM [px]")
    g.add_argument("--psf", default=None, help="PSF image (FITS) for the optimal photometer")
    g.add_argument("--no-mag", action="store_true",
                   help="lumos: data-only PDFs (likelihoods) without the catalogue magnitude")
    g.add_argument("--mag-offset", type=float, default=0.0, metavar="DMAG",
                   help="lumos: added to the catalogue's mag column (the model's band system; "
                        "see `skysub photometry --help`)")
    add_model_args(p)
    for action in p._actions:  # batch runs choose the batch size per device
        if action.dest == "batch_size":
            action.default = None
            action.help = (f"stamps per forward pass (default {CPU_BATCH_SIZE} on CPU, "
                           f"{GPU_BATCH_SIZE} on a GPU)")
    g = p.add_argument_group("Dask")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--workers", "-w", type=int, default=None,
                       help="local worker processes, started once (default: the cores; 1 runs "
                            "in this process)")
    where.add_argument("--scheduler", default=None,
                       help="a running scheduler: tcp://host:8786 (or host:8786), a scheduler "
                            "file (.json); 'dask' for a local Dask cluster, 'threads' for an "
                            "in-process one")
    g.add_argument("--memory-limit", default="auto",
                   help="per local worker, e.g. 2GB, enforced by a local Dask cluster (auto: "
                        "no limit on the local pool, the machine's memory / workers on Dask)")
    g.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads per worker (1: one worker process per core)")
    g.add_argument("--format", choices=("parquet", "csv", "both"), default="parquet",
                   help="partition format (parquet)")
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help="process at most N unfinished exposures now (the rest on a rerun)")
    add_common(p)
    for action in p._actions:
        if action.dest == "overwrite":
            action.help = ("delete the output folder's partitions and records, recompute every "
                           "exposure (without it a rerun resumes)")
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``skysub batch``."""
    from . import batch
    from .cli_args import read_kwargs
    from .config import load_config

    cfg = load_config(args.config)
    rk = read_kwargs(args, cfg)
    if args.torch_threads is not None and args.torch_threads < 1:
        from .errors import InputError

        raise InputError(f"--torch-threads must be >= 1, got {args.torch_threads}")
    spec = batch.make_spec(args.method, photometer=args.photometer, config=args.config,
                           templates=args.templates, model=args.model, device=args.device,
                           batch_size=args.batch_size, r_in=args.r_in, r_out=args.r_out,
                           statistic=args.statistic, radius=args.radius,
                           psf_fwhm=args.psf_fwhm, psf=args.psf, hdu=rk["hdu"],
                           mask=rk["mask"], overrides=rk["overrides"],
                           torch_threads=args.torch_threads, use_mag=not args.no_mag,
                           mag_offset=args.mag_offset)
    formats = ("parquet", "csv") if args.format == "both" else (args.format,)
    res = batch.run(args.images, args.catalog, args.output, spec=spec, workers=args.workers,
                    scheduler=args.scheduler, formats=formats, overwrite=args.overwrite,
                    quiet=args.quiet, max_exposures=args.limit,
                    memory_limit=_memory_limit(args.memory_limit))
    if not args.quiet:
        print(res.summary())
    return 0 if res.ok else 1


def _memory_limit(value: str) -> str | float | None:
    if value in ("none", "None", "0"):
        return None
    try:
        return float(value)  # a fraction of the machine's memory, as Dask reads it
    except ValueError:
        return value
