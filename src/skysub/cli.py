"""The ``skysub`` command: parse arguments, call the library (skysub.workflows), nothing else."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import SkysubError

EPILOG_BACKGROUND = """examples:
  skysub background sim/images/*.fits --catalog sim/catalog.csv --method annulus \\
      --r-in 30 --r-out 45 --output bkg.csv
  skysub background exp.fits --catalog cat.ecsv --method mesh --map exp_bkg.fits --output bkg.csv
  skysub background exp.fits --catalog cat.csv --method templates --templates slt.fits \\
      --output bkg.csv
output columns: image, id, x, y, bkg, bkg_err, flags  (background per pixel in image units;
bkg_err is the 1-sigma error of bkg itself; flags: 1 edge, 2 masked, 4 crowded, 8 no data,
16 off image, 32 heavily clipped)"""

EPILOG_PHOT = """examples:
  skysub photometry sim/images/*.fits --catalog sim/catalog.csv --photometer aperture \\
      --background annulus --radius 8 --output phot.csv
  skysub photometry exp.fits --catalog cat.csv --photometer optimal --psf-fwhm 3.5 \\
      --background templates --templates slt.fits --output phot.csv
output columns: image, id, x, y, flux, flux_err, bkg, bkg_err, flags (image units)"""

EPILOG_SIM = """example:
  skysub simulate ccd --output sim --n-exposures 12 --size 1024 512 --seed 1
writes sim/images/*.fits, sim/catalog.csv (id, ra, dec, mag, r50, sersic_n, ba, theta, kind)
and sim/truth.csv (image, id, x, y, bkg_true, flux_true, ...)."""

EPILOG_TEMPLATES = """example:
  skysub templates build sim/images/NB685_before_*.fits --catalog sim/catalog.csv \\
      --output slt.fits
one template per band x epoch (header keywords FILTER and EPOCH, or --band/--epoch)."""


def _add_common(p: argparse.ArgumentParser, *, images: bool = True) -> None:
    p.add_argument("--config", default=None,
                   help="survey configuration: a preset name (generic, paus) or a TOML file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summaries")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    if images:
        g = p.add_argument_group("reading images")
        g.add_argument("--hdu", default=None,
                       help="extension holding the image (number or EXTNAME; default: first 2-D)")
        g.add_argument("--mask", default=None,
                       help="bad-pixel mask: an extension of the image file or a FITS file "
                            "(nonzero = bad)")
        for key, typ, what in (("band", str, "filter"), ("epoch", str, "camera epoch"),
                               ("exptime", float, "exposure time [s]"),
                               ("gain", float, "gain [e-/ADU]"),
                               ("rdnoise", float, "read noise [e-]")):
            g.add_argument(f"--{key}", type=typ, default=None,
                           help=f"{what}: overrides the header keyword")


def _read_kwargs(args: argparse.Namespace, cfg) -> dict:
    overrides = {k: getattr(args, k) for k in ("band", "epoch", "exptime", "gain", "rdnoise")
                 if getattr(args, k, None) is not None}
    hdu = args.hdu
    if hdu is not None and hdu.isdigit():
        hdu = int(hdu)
    mask = args.mask
    if mask is not None and mask.isdigit():
        mask = int(mask)
    return {"hdu": hdu, "mask": mask, "keys": cfg.header, "overrides": overrides}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skysub",
        description="Sky background under astronomical sources, and the photometry that "
                    "depends on it.",
        epilog="Run `skysub demo` for a tour; `skysub COMMAND --help` for each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"skysub {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("simulate", help="simulate exposures with known truth")
    simsub = p.add_subparsers(dest="what", metavar="WHAT")
    s = simsub.add_parser("ccd", help="PAUS-like CCD exposures of one field", epilog=EPILOG_SIM,
                          formatter_class=fmt)
    s.add_argument("--output", "-o", required=True, help="output directory")
    s.add_argument("--n-exposures", type=int, default=12, help="number of exposures (12)")
    s.add_argument("--size", type=int, nargs=2, metavar=("NX", "NY"), default=None,
                   help="image size in pixels (default from the configuration)")
    s.add_argument("--seed", type=int, default=0, help="random seed (0)")
    _add_common(s, images=False)

    p = sub.add_parser("background", help="background under each catalogued source",
                       epilog=EPILOG_BACKGROUND, formatter_class=fmt)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="FITS images (globs allowed)")
    p.add_argument("--catalog", "-c", required=True,
                   help="catalogue (CSV/ECSV/FITS): id and x,y (0-based px) or ra,dec (deg)")
    p.add_argument("--method", "-m", default="annulus",
                   choices=("annulus", "templates", "mesh", "inpaint"), help="estimator (annulus)")
    p.add_argument("--templates", default=None, help="scattered-light templates (FITS)")
    p.add_argument("--r-in", type=float, default=None, help="annulus inner radius [px]")
    p.add_argument("--r-out", type=float, default=None, help="annulus outer radius [px]")
    p.add_argument("--statistic", choices=("median", "mean", "mode", "biweight"), default=None,
                   help="annulus statistic (from the configuration; PAUS: median)")
    p.add_argument("--map", default=None, help="also write the background map (FITS)")
    p.add_argument("--output", "-o", required=True, help="output table (.csv, .ecsv, .fits)")
    _add_common(p)

    p = sub.add_parser("templates", help="scattered-light templates")
    tsub = p.add_subparsers(dest="what", metavar="WHAT")
    t = tsub.add_parser("build", help="build templates per band x epoch (BKGnet eq. 1)",
                        epilog=EPILOG_TEMPLATES, formatter_class=fmt)
    t.add_argument("images", nargs="+", metavar="IMAGE")
    t.add_argument("--catalog", "-c", default=None, help="catalogue of sources to mask")
    t.add_argument("--output", "-o", required=True, help="output FITS file")
    _add_common(t)

    p = sub.add_parser("photometry", help="fluxes with a local background",
                       epilog=EPILOG_PHOT, formatter_class=fmt)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--catalog", "-c", required=True)
    p.add_argument("--photometer", "-p", default="aperture", choices=("aperture", "optimal"))
    p.add_argument("--background", "-b", default="annulus",
                   choices=("annulus", "templates", "mesh", "inpaint"))
    p.add_argument("--templates", default=None, help="scattered-light templates (FITS)")
    p.add_argument("--radius", type=float, default=None, help="aperture radius [px]")
    p.add_argument("--r-in", type=float, default=None)
    p.add_argument("--r-out", type=float, default=None)
    p.add_argument("--psf-fwhm", type=float, default=None, help="Gaussian PSF FWHM [px]")
    p.add_argument("--psf", default=None, help="PSF image (FITS) for the optimal photometer")
    p.add_argument("--output", "-o", required=True)
    _add_common(p)

    from .removal.cli import add_evaluate_parser, add_remove_parser, add_train_parser

    add_remove_parser(sub)
    p = sub.add_parser("train", help="train a network")
    train_sub = p.add_subparsers(dest="what", metavar="WHAT")
    add_train_parser(train_sub)
    p = sub.add_parser("evaluate", help="benchmark a method on simulations with known truth")
    eval_sub = p.add_subparsers(dest="what", metavar="WHAT")
    add_evaluate_parser(eval_sub)

    p = sub.add_parser("demo", help="simulate, estimate, compare with truth (< 3 min)")
    p.add_argument("--output", "-o", default="skysub-demo", help="folder (skysub-demo)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a smaller run, for tests")
    p.add_argument("--quiet", "-q", action="store_true")
    return parser


def _cmd_simulate(args) -> int:
    from .config import load_config
    from .simulate.ccd import CCDSimConfig, simulate_survey

    if args.what != "ccd":
        raise SystemExit("usage: skysub simulate ccd --output DIR  (see --help)")
    cfg = load_config(args.config or "paus")
    section = dict(cfg.simulate)
    if args.size is not None:
        section["shape"] = [args.size[1], args.size[0]]
    info = simulate_survey(args.output, CCDSimConfig(**section), n_exposures=args.n_exposures,
                           seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {args.n_exposures} exposures, catalog and truth to {args.output}/")
    return 0 if info is not None else 1


def _cmd_background(args) -> int:
    from .config import load_config
    from .io import check_output, write_table
    from .workflows import make_background, measure_background

    cfg = load_config(args.config)
    inputs = [args.catalog, *args.images]
    check_output(args.output, overwrite=args.overwrite, inputs=inputs)
    est = make_background(args.method, config=cfg, templates=args.templates, r_in=args.r_in,
                          r_out=args.r_out, statistic=args.statistic)
    table = measure_background(args.images, args.catalog, est, quiet=args.quiet,
                               map_path=args.map, overwrite=args.overwrite,
                               **_read_kwargs(args, cfg))
    write_table(table, args.output, overwrite=args.overwrite, inputs=inputs)
    if not args.quiet:
        print(f"{len(table)} rows -> {args.output}")
    return 0


def _cmd_templates(args) -> int:
    from .config import load_config
    from .io import check_output
    from .workflows import build_templates

    if args.what != "build":
        raise SystemExit("usage: skysub templates build IMAGE... --output SLT.fits")
    cfg = load_config(args.config)
    check_output(args.output, overwrite=args.overwrite, inputs=[*args.images, args.catalog])
    slt = build_templates(args.images, args.catalog, config=cfg, quiet=args.quiet,
                          **_read_kwargs(args, cfg))
    slt.save(args.output, overwrite=args.overwrite)
    if not args.quiet:
        print(f"{len(slt.keys)} templates -> {args.output}")
    return 0


def _cmd_photometry(args) -> int:
    from .config import load_config
    from .io import check_output, write_table
    from .workflows import make_background, make_photometer, measure_photometry

    cfg = load_config(args.config)
    inputs = [args.catalog, *args.images]
    check_output(args.output, overwrite=args.overwrite, inputs=inputs)
    est = make_background(args.background, config=cfg, templates=args.templates,
                          r_in=args.r_in, r_out=args.r_out)
    phot = make_photometer(args.photometer, background=est, config=cfg, radius=args.radius,
                           psf_fwhm=args.psf_fwhm, psf=args.psf)
    table = measure_photometry(args.images, args.catalog, phot, quiet=args.quiet,
                               **_read_kwargs(args, cfg))
    write_table(table, args.output, overwrite=args.overwrite, inputs=inputs)
    if not args.quiet:
        print(f"{len(table)} rows -> {args.output}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.output), seed=args.seed, quick=args.quick, quiet=args.quiet)
    return 0


COMMANDS = {"simulate": _cmd_simulate, "background": _cmd_background,
            "templates": _cmd_templates, "photometry": _cmd_photometry, "demo": _cmd_demo}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in model cards
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="skysub: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if hasattr(args, "func"):  # commands registered by subpackages (skysub.removal.cli)
            return args.func(args)
        if args.command not in COMMANDS:
            parser.parse_args([args.command, "--help"])
        return COMMANDS[args.command](args)
    except SkysubError as exc:
        print(f"skysub {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skysub: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
