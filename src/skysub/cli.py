"""The ``skysub`` command: parse arguments, call the library (skysub.workflows), nothing else."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__, batch_cli
from .cli_args import add_common, add_error_calibration, add_model_args, read_kwargs
from .errors import SkysubError
from .pipeline import cli as timeseries_cli

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
  skysub photometry sim/images/*.fits --catalog sim/catalog.csv --photometer lumos \\
      --model lumos-paus --output phot_lumos.csv
output columns: image, id, x, y, flux, flux_err, bkg, bkg_err, flags (image units);
aperture and optimal add err_alpha, err_sigma_s, err_local (the empty-aperture error
calibration of each image and its local factor: --error-calibration) and optimal
flux_err_shape (from r50_err, ba_err, theta_err, sersic_n_err when the catalogue has them;
SExtractor FLUX_RADIUS, A/B_IMAGE, THETA_IMAGE are read as shapes when it has no r50);
lumos adds band, the mixture a1..a5, f1..f5, s1..s5 and flux_mean, flux_std, flux_mode,
flux_median, flux_sigma68, flux_sigma95, eta (flux = mode, flux_err = sigma68; bkg is NaN)"""

EPILOG_SIM = """example:
  skysub simulate ccd --output sim --n-exposures 12 --size 1024 512 --seed 1
writes sim/images/*.fits, sim/catalog.csv (id, ra, dec, mag, r50, sersic_n, ba, theta, kind)
and sim/truth.csv (image, id, x, y, bkg_true, flux_true, ...)."""

EPILOG_TEMPLATES = """example:
  skysub templates build sim/images/NB685_before_*.fits --catalog sim/catalog.csv \\
      --output slt.fits
one template per band x epoch (header keywords FILTER and EPOCH, or --band/--epoch)."""


BACKGROUND_CHOICES = ("annulus", "templates", "mesh", "bkgnet", "inpaint")




EPILOG_TRAIN_BKGNET = """examples:
  skysub train bkgnet exp/*.fits --catalog cat.csv --output my_bkgnet.pt --config my.toml
  skysub train bkgnet --simulated --config paus --labels truth --output bkgnet-sim.pt
  skysub train bkgnet exp/*.fits --catalog cat.csv --output my_bkgnet.pt --resume
then: skysub background exp/*.fits --catalog cat.csv --method bkgnet --model my_bkgnet.pt ...
the model card (my_bkgnet.json) records the data, the command and the validation metrics."""

EPILOG_EVAL_BKG = """examples:
  skysub evaluate background bkg_annulus.csv bkg_bkgnet.csv --truth sim/truth.csv -o eval/
  skysub evaluate background phot_annulus.csv phot_bkgnet.csv -o eval/   (duplicates test)
prints sigma68 of (b - b_true)/b_true for all / edge / centre sources and per band, the bias,
the pull width and the fraction of |pull| > 5; writes evaluate_background.csv and PNG plots."""


EPILOG_TRAIN_LUMOS = """examples:
  skysub train lumos --simulated --config paus --output lumos-sim.pt
  skysub train lumos exp/*.fits --catalog cat.csv --output my_lumos.pt --pairs auto
  skysub train lumos exp/*.fits --catalog cat.csv --output my_lumos.pt --pairs pairs.csv
  skysub train lumos exp/*.fits --catalog cat.csv --output scratch.pt --init none
on your exposures training fine-tunes the shipped lumos-paus by default (--init auto)
then: skysub photometry exp/*.fits --catalog cat.csv --photometer lumos --model my_lumos.pt ..."""

EPILOG_EVAL_PHOT = """example:
  skysub evaluate photometry --model lumos-paus --n-objects 4000 -o eval_phot/
simulates held-out galaxies on simulator backgrounds; prints bias and sigma68 of (f - f0)/f0
per magnitude for Lumos (with the magnitude prior, and data-only as lumos_nomag when the model
has that mode), the 62.5 % aperture, optimal weights (oracle and practical) and the profile
fit, the PIT KS test, the blending test (i = 22 target, i = 20 neighbour at R px) and the
duplicates test; writes evaluate_photometry_*.csv and evaluate_photometry.png."""

EPILOG_COADD = """example:
  skysub coadd phot_lumos_*.csv --output coadd.csv
one row per id (and band): flux_ivw, flux_ivw_err (eq. 21) and, for Lumos tables, the
summaries of the product of the PDFs (flux_pdf_mode, flux_pdf_sigma68, ...)."""

#: help of --photometric-system (skysub photometry and skysub train)
PHOTOMETRIC_SYSTEM_HELP = ("catalogue magnitude system, AB or ST, of a zero point taken from "
                           "HST-style PHOTFLAM (+ PHOTPLAM for AB, PHOTZPT for ST) header "
                           "keywords, the last resort after --zeropoint, MAGZPT-like keywords "
                           "and a fit (default AB)")


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
    add_common(s, images=False)

    p = sub.add_parser("background", help="background under each catalogued source",
                       epilog=EPILOG_BACKGROUND, formatter_class=fmt)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="FITS images (globs allowed)")
    p.add_argument("--catalog", "-c", required=True,
                   help="catalogue (CSV/ECSV/FITS): id and x,y (0-based px) or ra,dec (deg)")
    p.add_argument("--method", "-m", default="annulus",
                   choices=BACKGROUND_CHOICES, help="estimator (annulus)")
    p.add_argument("--templates", default=None, help="scattered-light templates (FITS)")
    add_model_args(p)
    p.add_argument("--unknown-key", choices=("error", "warn"), default="error",
                   help="bkgnet: a band x epoch the model never saw is an error (default) or, "
                        "with warn, estimated with the mean of the known embeddings")
    p.add_argument("--r-in", type=float, default=None, help="annulus inner radius [px]")
    p.add_argument("--r-out", type=float, default=None, help="annulus outer radius [px]")
    p.add_argument("--statistic", choices=("median", "mean", "mode", "biweight"), default=None,
                   help="annulus statistic (from the configuration; PAUS: median)")
    p.add_argument("--map", default=None, help="also write the background map (FITS)")
    p.add_argument("--output", "-o", required=True, help="output table (.csv, .ecsv, .fits)")
    add_common(p)

    p = sub.add_parser("templates", help="scattered-light templates")
    tsub = p.add_subparsers(dest="what", metavar="WHAT")
    t = tsub.add_parser("build", help="build templates per band x epoch (BKGnet eq. 1)",
                        epilog=EPILOG_TEMPLATES, formatter_class=fmt)
    t.add_argument("images", nargs="+", metavar="IMAGE",
                   help="FITS exposures (globs allowed); one template per band x epoch")
    t.add_argument("--catalog", "-c", default=None, help="catalogue of sources to mask")
    t.add_argument("--output", "-o", required=True, help="output FITS file")
    add_common(t)

    p = sub.add_parser("photometry", help="fluxes with a local background",
                       epilog=EPILOG_PHOT, formatter_class=fmt)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="FITS images (globs allowed)")
    p.add_argument("--catalog", "-c", required=True,
                   help="catalogue (CSV/ECSV/FITS/SExtractor): id and x,y (0-based px) or "
                        "ra,dec (deg); optional mag, r50, sersic_n, ba, theta")
    p.add_argument("--photometer", "-p", default="aperture",
                   choices=("aperture", "optimal", "lumos"),
                   help="aperture, optimal (eq. 6 weights) or lumos (flux PDFs; --model)")
    p.add_argument("--background", "-b", default="annulus", choices=BACKGROUND_CHOICES,
                   help="local background method of the aperture and optimal photometers "
                        "(default: annulus)")
    p.add_argument("--templates", default=None, help="scattered-light templates (FITS)")
    add_model_args(p)
    add_error_calibration(p)
    p.add_argument("--radius", type=float, default=None, help="aperture radius [px]")
    p.add_argument("--r-in", type=float, default=None,
                   help="annulus inner radius [px] (default: [annulus] r_in)")
    p.add_argument("--r-out", type=float, default=None,
                   help="annulus outer radius [px] (default: [annulus] r_out)")
    p.add_argument("--psf-fwhm", type=float, default=None, help="Gaussian PSF FWHM [px]")
    p.add_argument("--psf", default=None, help="PSF image (FITS) for the optimal photometer")
    p.add_argument("--no-mag", action="store_true",
                   help="lumos: data-only PDFs, without the catalogue magnitude as a prior (for "
                        "duplicates tests and PDF coadds; see docs/lumos.md)")
    p.add_argument("--zeropoint", type=float, default=None, metavar="ZP",
                   help="lumos (models trained on your exposures): mag = ZP - 2.5 log10(flux) "
                        "for every image (default: header MAGZPT/MAGZERO/PHOTZP, else fitted "
                        "per image from the catalogue's bright isolated sources -- on deep "
                        "frames with their neighbours masked -- else header PHOTFLAM)")
    p.add_argument("--photometric-system", choices=("AB", "ST"), default="AB",
                   help=PHOTOMETRIC_SYSTEM_HELP)
    p.add_argument("--mag-offset", type=float, default=0.0, metavar="DMAG",
                   help="lumos-paus and other models trained on the built-in simulator only: "
                        "added to the catalogue's mag column to put it in the model's band "
                        "system (zero point 23; exposures of `skysub simulate ccd` have 25, so "
                        "-2)")
    p.add_argument("--output", "-o", required=True, help="output table (.csv, .ecsv, .fits)")
    add_common(p)

    p = sub.add_parser("train", help="train a learned estimator")
    trsub = p.add_subparsers(dest="what", metavar="NETWORK")
    t = trsub.add_parser("bkgnet", help="BKGnet on your exposures (or the built-in simulator)",
                         epilog=EPILOG_TRAIN_BKGNET, formatter_class=fmt)
    t.add_argument("images", nargs="*", metavar="IMAGE", help="training exposures (FITS)")
    t.add_argument("--catalog", "-c", default=None,
                   help="catalogue of sources (avoided; their shapes are injected)")
    t.add_argument("--output", "-o", required=True, help="model file to write (.pt)")
    t.add_argument("--epochs", type=int, default=None, help="maximum epochs ([bkgnet] or 30)")
    t.add_argument("--seed", type=int, default=0,
                   help="seed of sampling, injection, initialisation and shuffling (0)")
    t.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    t.add_argument("--preset", choices=("lean", "paper"), default=None,
                   help="architecture (lean: fast default; paper: the published layout)")
    t.add_argument("--simulated", action="store_true",
                   help="train on the built-in simulator ([simulate] of --config) instead")
    t.add_argument("--n-exposures", type=int, default=48,
                   help="exposures to simulate with --simulated (48)")
    t.add_argument("--labels", choices=("pixels", "truth"), default="pixels",
                   help="pixels: mean of the r = 8 px circle (BKGnet); truth: the simulator's "
                        "noise-free background (--simulated only)")
    t.add_argument("--stamps-per-image", type=int, default=None,
                   help="training positions drawn per exposure (default: [bkgnet] "
                        "stamps_per_image, 600, raised to draw at least 2,400 in all when "
                        "there are fewer than 4 exposures)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="stamps per optimisation step (default: [bkgnet] batch_size, 128)")
    t.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default: [bkgnet] lr, 2e-3)")
    t.add_argument("--no-coords", action="store_true", help="hide the CCD position (ablation)")
    t.add_argument("--no-inject", action="store_true",
                   help="do not inject galaxies at the stamp centres (ablation)")
    t.add_argument("--resume", action="store_true", help="continue from <output>.ckpt")
    t.add_argument("--threads", type=int, default=None,
                   help="torch threads on CPU (default: all cores; 1 is faster on a busy "
                        "machine)")
    t.add_argument("--init", default="auto", metavar="MODEL",
                   help="model to fine-tune (default auto: the shipped bkgnet-paus on your "
                        "exposures, scratch with --simulated); none trains from scratch")
    t.add_argument("--select", choices=("duplicates", "duplicates-offset", "scaled-nll",
                                        "residual", "nll"),
                   default="duplicates",
                   help="held-out score that picks the best epoch (default duplicates: "
                        "label differences between exposures of one band at the same sky "
                        "points, the starting model scored too when fine-tuning; "
                        "duplicates-offset adds twice the squared median offset of the "
                        "predictions from the labels per band; scaled-nll when the exposures "
                        "give too few pairs, and the previous default)")
    add_common(t)

    # -- Lumos (issue 4) ------------------------------------------------------------------
    t = trsub.add_parser("lumos", help="Lumos flux PDFs on Teahupoo-like simulations",
                         epilog=EPILOG_TRAIN_LUMOS, formatter_class=fmt)
    t.add_argument("images", nargs="*", metavar="IMAGE",
                   help="exposures giving the background cutouts (FITS)")
    t.add_argument("--catalog", "-c", default=None,
                   help="catalogue (positions to avoid; joint mag, r50, sersic_n, ba, theta)")
    t.add_argument("--output", "-o", required=True, help="model file to write (.pt)")
    t.add_argument("--simulated", action="store_true",
                   help="background cutouts from the built-in simulator ([simulate])")
    t.add_argument("--n-exposures", type=int, default=None,
                   help="exposures to simulate with --simulated ([lumos] or 48)")
    t.add_argument("--stamps-per-image", type=int, default=None,
                   help="background cutouts drawn per exposure (default: [lumos] "
                        "stamps_per_image, 400)")
    t.add_argument("--pairs", default=None,
                   help="fine-tune the last layer on pairs (eq. 11-12): a CSV with id, image_1, "
                        "image_2, or 'auto' (same object, same band, two training exposures)")
    t.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs, early stopping on validation (default: [lumos] "
                        "epochs, 30)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="stamps per optimisation step (default: [lumos] batch_size, 128)")
    t.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default: [lumos] lr, 1e-3)")
    t.add_argument("--preset", choices=("lean", "paper"), default=None,
                   help="architecture (default: [lumos] preset, lean: fast; paper: the "
                        "published layout)")
    t.add_argument("--seed", type=int, default=0,
                   help="seed of sampling, injection, initialisation and shuffling (0)")
    t.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--resume", action="store_true", help="continue from <output>.ckpt")
    t.add_argument("--zeropoint", type=float, default=None, metavar="ZP",
                   help="mag = ZP - 2.5 log10(flux in image units) for every exposure (default: "
                        "header MAGZPT/MAGZERO/PHOTZP, else fitted per exposure from the "
                        "catalogue's bright isolated sources -- on deep frames with their "
                        "neighbours masked -- else header PHOTFLAM)")
    t.add_argument("--photometric-system", choices=("AB", "ST"), default="AB",
                   help=PHOTOMETRIC_SYSTEM_HELP)
    t.add_argument("--allow-poor", action="store_true",
                   help="exit 0 even when the model fails its own validation (|bright bias| > "
                        "5 %%, sigma68 = 0 or PIT KS p < 1e-3); it is written either way")
    t.add_argument("--calibrate-only", action="store_true",
                   help="re-measure the calibration (per-SNR shift and width with the "
                        "magnitude, one width factor without) of the trained model --output on "
                        "fresh stamps (--simulated --n-exposures N --seed S, or IMAGE... "
                        "--catalog) and rewrite its card; the weights are unchanged")
    t.add_argument("--init", default="auto", metavar="MODEL",
                   help="model to fine-tune (default auto: the shipped lumos-paus on your "
                        "exposures when its architecture fits the [lumos] settings, else from "
                        "scratch with a note; scratch with --simulated); a shipped name or .pt "
                        "file; none trains from scratch")
    add_common(t)
    p = sub.add_parser("coadd", help="coadd photometry across exposures (PDF product, eq. 21)",
                       epilog=EPILOG_COADD, formatter_class=fmt)
    p.add_argument("tables", nargs="+", metavar="PHOT", help="skysub photometry tables")
    p.add_argument("--output", "-o", required=True, help="coadded table (.csv, .ecsv, .fits)")
    p.add_argument("--quiet", "-q", action="store_true", help="no summary line")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    p = sub.add_parser("models", help="list or show models (shipped and your own)")
    msub = p.add_subparsers(dest="what", metavar="WHAT")
    msub.add_parser("list", help="the shipped models")
    m = msub.add_parser("show", help="a model's card")
    m.add_argument("name", help="shipped model name or model file")

    p = sub.add_parser("evaluate", help="judge estimates against truth or duplicates")
    esub = p.add_subparsers(dest="what", metavar="WHAT")
    e = esub.add_parser("background", help="background tables against truth (or duplicates)",
                        epilog=EPILOG_EVAL_BKG, formatter_class=fmt)
    e.add_argument("predictions", nargs="+", metavar="PRED",
                   help="skysub background/photometry tables (one per method)")
    e.add_argument("--truth", "-t", default=None,
                   help="truth table (skysub simulate's truth.csv); without it: duplicates test")
    e.add_argument("--label", action="append", default=None,
                   help="method label per table (default: file stem); repeat per table")
    e.add_argument("--output-dir", "-o", default=None, help="folder for CSV and PNG plots")
    e.add_argument("--edge-width", type=float, default=150.0,
                   help="px from a CCD edge that count as 'edge' (150)")
    e.add_argument("--quiet", "-q", action="store_true", help="no printed summary")
    e = esub.add_parser("photometry", help="Lumos-style benchmark of photometers on "
                        "simulations (Fig. 6-9)", epilog=EPILOG_EVAL_PHOT, formatter_class=fmt)
    e.add_argument("--model", default="lumos-paus", help="Lumos model (lumos-paus)")
    e.add_argument("--n-objects", type=int, default=4000,
                   help="held-out galaxies, each observed twice (4000)")
    e.add_argument("--n-blend", type=int, default=100,
                   help="i = 22 targets per neighbour distance in the blending test (100; "
                        "the median's standard error is printed: ~6 %% at 100, ~3 %% at 400)")
    e.add_argument("--seed", type=int, default=123,
                   help="seed of the held-out simulations (123; training never uses it)")
    e.add_argument("--estimator", choices=("mode", "mean", "median"), default=None,
                   help="Lumos point estimate (default: the model card's)")
    e.add_argument("--output-dir", "-o", default=None, help="folder for CSV and PNG plots")
    e.add_argument("--config", default="paus",
                   help="configuration of the simulations: a preset or a TOML file (paus)")
    e.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    e.add_argument("--quiet", "-q", action="store_true", help="no printed summary")
    timeseries_cli.add_parser(sub)
    batch_cli.add_parser(sub)  # skysub batch: many exposures on Dask (skysub.batch)
    from .inject.cli import add_parser as add_inject_parser

    add_inject_parser(sub)  # skysub inject: injection-recovery tests (skysub.inject)

    # -- compact-source removal (issue 5): remove, train inpaint, evaluate removal --------
    from .removal.cli import add_evaluate_parser, add_remove_parser, add_train_parser

    add_remove_parser(sub)
    add_train_parser(trsub)
    add_evaluate_parser(esub)

    p = sub.add_parser("demo", help="simulate, estimate, compare with truth (< 3 min)")
    p.add_argument("--output", "-o", default="skysub-demo", help="folder (skysub-demo)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated exposures (1)")
    p.add_argument("--quick", action="store_true", help="a smaller run, for tests")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or printed table")
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
                          r_out=args.r_out, statistic=args.statistic, model=args.model,
                          device=args.device, batch_size=args.batch_size,
                          unknown_key=args.unknown_key)
    table = measure_background(args.images, args.catalog, est, quiet=args.quiet,
                               map_path=args.map, overwrite=args.overwrite,
                               **read_kwargs(args, cfg))
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
                          **read_kwargs(args, cfg))
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
    est = None if args.photometer == "lumos" else make_background(
        args.background, config=cfg, templates=args.templates, r_in=args.r_in, r_out=args.r_out,
        model=args.model, device=args.device, batch_size=args.batch_size)
    phot = make_photometer(args.photometer, background=est, config=cfg, radius=args.radius,
                           psf_fwhm=args.psf_fwhm, psf=args.psf, model=args.model,
                           device=args.device, batch_size=args.batch_size,
                           use_mag=not args.no_mag, mag_offset=args.mag_offset,
                           zeropoint=args.zeropoint, error_calibration=args.error_calibration,
                           photometric_system=args.photometric_system)
    table = measure_photometry(args.images, args.catalog, phot, quiet=args.quiet,
                               **read_kwargs(args, cfg))
    if not args.quiet:
        for name, zp in (getattr(phot, "zeropoints", None) or {}).items():
            print(f"{name}: {zp.describe()}")
    write_table(table, args.output, overwrite=args.overwrite, inputs=inputs)
    if not args.quiet:
        print(f"{len(table)} rows -> {args.output}")
    return 0


def _one_line_errors(args, train, *a, **kw):
    """``train(*a, **kw)``; an unexpected exception becomes a one-line InputError (never a
    traceback for the user; --verbose shows it)."""
    try:
        return train(*a, **kw)
    except (SkysubError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if args.verbose:
            raise
        from .errors import InputError

        first = (str(exc).splitlines() or [""])[0][:300]
        raise InputError(f"training failed unexpectedly ({type(exc).__name__}: {first}); "
                         "rerun with --verbose for the traceback and report it") from None


def _cmd_train(args) -> int:
    from .config import load_config

    if args.what == "lumos":
        return _cmd_train_lumos(args)
    if args.what != "bkgnet":
        raise SystemExit("usage: skysub train bkgnet|lumos IMAGE... --catalog CAT --output "
                         "MODEL.pt (see --help)")
    from .background.bkgnet import command_line, train_bkgnet

    cfg = load_config(args.config or ("paus" if args.simulated else None))
    card = _one_line_errors(args, train_bkgnet, args.images, args.catalog, args.output,
                            config=cfg, epochs=args.epochs, seed=args.seed,
                            device=args.device, preset=args.preset, simulated=args.simulated,
                            n_exposures=args.n_exposures, labels=args.labels,
                            use_coords=not args.no_coords,
                            inject=False if args.no_inject else None, resume=args.resume,
                            overwrite=args.overwrite, quiet=args.quiet,
                            batch_size=args.batch_size, lr=args.lr,
                            stamps_per_image=args.stamps_per_image,
                            command=command_line(args.argv), threads=args.threads,
                            init=args.init, select=args.select, **read_kwargs(args, cfg))
    if not args.quiet:
        m = card["metrics"]
        print(f"wrote {args.output} (+ card {Path(args.output).with_suffix('.json')}): "
              f"{m['n_stamps']} validation stamps, sigma68 vs label "
              f"{m['sigma68_rel_vs_label']:.4f}, pull width {m['pull_sigma68_vs_label']:.2f}, "
              f"best epoch {m['best_epoch']}/{m['epochs_run']}, {m['train_seconds']:.0f} s")
    return 0


def _cmd_models(args) -> int:
    from .nn.modelfile import describe_card, read_card, shipped_models

    if args.what == "show":
        print(describe_card(read_card(args.name)))
        return 0
    names = shipped_models()
    if not names:
        print("no shipped models")
        return 0
    print(f"{'name':24s} {'kind':8s} {'size':>8s}  description")
    for n in names:
        c = read_card(n)
        print(f"{n:24s} {c.get('kind', '?'):8s} {c.get('file_size_bytes', 0) / 1e6:7.2f}M  "
              f"{c.get('description', '')}")
    return 0


def _cmd_evaluate(args) -> int:
    from .errors import InputError
    from .evaluate import evaluate_background, method_label, print_summary

    if args.what == "photometry":
        return _cmd_evaluate_photometry(args)
    if args.what != "background":
        raise SystemExit("usage: skysub evaluate background PRED.csv... [--truth TRUTH.csv]")
    labels = args.label or [method_label(p) for p in args.predictions]
    if len(labels) != len(args.predictions):
        raise InputError(f"--label given {len(labels)} times for {len(args.predictions)} "
                         "tables; give one per table or none")
    preds = dict(zip(labels, args.predictions, strict=True))
    t = evaluate_background(preds, args.truth, output_dir=args.output_dir,
                            edge_width=args.edge_width)
    if not args.quiet:
        print_summary(t)
        if args.output_dir:
            print(f"wrote {args.output_dir}/evaluate_background.csv and plots")
    return 0


# -- Lumos (issue 4) ------------------------------------------------------------------------------
def _cmd_train_lumos(args) -> int:
    from .background.bkgnet import command_line
    from .config import load_config
    from .photometry.lumos import train_lumos

    cfg = load_config(args.config or ("paus" if args.simulated else None))
    if args.calibrate_only:
        from .photometry.lumos import recalibrate_lumos

        card = recalibrate_lumos(args.output, args.images, args.catalog, config=cfg,
                                 simulated=args.simulated, n_exposures=args.n_exposures,
                                 stamps_per_image=args.stamps_per_image, seed=args.seed,
                                 quiet=args.quiet, command=command_line(args.argv),
                                 zeropoint=args.zeropoint, **read_kwargs(args, cfg))
        if not args.quiet:
            cal = card["calibration"]
            m = cal["metrics"]["mag"]
            nb = len(cal.get("snr_calibration", {}).get("mag", {}).get("shift", []))
            what = f"{nb}-bin SNR calibration" if nb else "width calibration"
            print(f"{what} (single width factors {cal['sigma_scale']}) from "
                  f"{cal['data']['n_catalogue_like'] + cal['data']['n_prior_free']} stamps "
                  f"written to the card of {args.output}; with-magnitude PIT KS p "
                  f"{m['pit_ks_pvalue']:.3g} (isolated stamps "
                  f"{m.get('pit_ks_pvalue_isolated', float('nan')):.3g}, with a neighbour "
                  f"{m.get('pit_ks_pvalue_blended', float('nan')):.3g}); data-only PIT KS p "
                  f"{cal['metrics'].get('no_mag', {}).get('pit_ks_pvalue', float('nan')):.3g}")
        return 0
    card = _one_line_errors(args, train_lumos, args.images, args.catalog, args.output,
                            config=cfg, simulated=args.simulated,
                            n_exposures=args.n_exposures,
                            stamps_per_image=args.stamps_per_image, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, preset=args.preset,
                            pairs=args.pairs, seed=args.seed, device=args.device,
                            threads=args.threads, resume=args.resume,
                            overwrite=args.overwrite, quiet=args.quiet,
                            command=command_line(args.argv), zeropoint=args.zeropoint,
                            photometric_system=args.photometric_system,
                            init=args.init, **read_kwargs(args, cfg))
    m = card["metrics"]
    if not args.quiet:
        nm = m.get("no_mag", {})
        br = m.get("bright", {})
        print(f"wrote {args.output}: {m['n']} validation stamps, bright bias (mode) "
              f"{br.get('bias_mode') if br.get('bias_mode') is not None else float('nan'):+.3f}, "
              f"sigma68 (mode) {m.get('sigma68_mode_all', float('nan')):.3f} "
              f"({nm.get('sigma68_mode_all', float('nan')):.3f} without the magnitude), "
              f"PIT KS p {m['pit_ks_pvalue']:.3g}, {m['train_seconds']:.0f} s")
        ic = card.get("injection_calibration") or {}
        if m.get("calibration_source") == "injections":
            ch = ic.get("check", {})
            extra = ""
            if "injection" in ch:
                extra = (f"; held-out check on {ch['n_check']}: pull width "
                         f"{ch['validation']['pull_sigma68']:.2f} -> "
                         f"{ch['injection']['pull_sigma68']:.2f}, PIT KS p "
                         f"{ch['validation']['pit_ks_pvalue']:.2g} -> "
                         f"{ch['injection']['pit_ks_pvalue']:.2g}")
            print(f"PDF calibration (with the magnitude, per SNR): {ic['n_injections']} galaxies "
                  f"injected into {ic.get('held_out', 'held-out positions')}{extra}")
        elif ic:
            print(f"PDF calibration: the validation stamps' ({ic.get('note', '')})")
    q = card.get("quality", {})
    if not q.get("ok", True):
        why = "; ".join(q.get("reasons", []))
        if args.allow_poor:
            print(f"skysub train: WARNING: {args.output} FAILED its own validation ({why}); "
                  "kept because of --allow-poor", file=sys.stderr)
            return 0
        print(f"skysub train: error: {args.output} failed its own validation ({why}); the card "
              "records why. Try more exposures or --stamps-per-image, more --epochs, a known "
              "--zeropoint, or --allow-poor to keep it anyway", file=sys.stderr)
        return 3
    return 0


def _cmd_evaluate_photometry(args) -> int:
    from .config import load_config
    from .evaluate import evaluate_photometry, print_photometry_summary

    if args.n_objects < 1 or args.n_blend < 1:
        from .errors import InputError

        raise InputError(f"--n-objects and --n-blend must be >= 1, got {args.n_objects} and "
                         f"{args.n_blend}")
    res = evaluate_photometry(args.model, n_objects=args.n_objects, seed=args.seed,
                              config=load_config(args.config), output_dir=args.output_dir,
                              overwrite=args.overwrite, quiet=args.quiet, n_blend=args.n_blend,
                              estimator=args.estimator)
    if not args.quiet:
        print_photometry_summary(res)
    return 0


def _cmd_coadd(args) -> int:
    from .io import check_output, read_catalog, write_table
    from .photometry.coadd import coadd_tables

    check_output(args.output, overwrite=args.overwrite, inputs=args.tables)
    out = coadd_tables([read_catalog(p) for p in args.tables])
    write_table(out, args.output, overwrite=args.overwrite, inputs=args.tables)
    if not args.quiet:
        print(f"{len(out)} objects -> {args.output}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.output), seed=args.seed, quick=args.quick, quiet=args.quiet)
    return 0


COMMANDS = {"simulate": _cmd_simulate, "background": _cmd_background,
            "templates": _cmd_templates, "photometry": _cmd_photometry, "demo": _cmd_demo,
            "train": _cmd_train, "models": _cmd_models, "evaluate": _cmd_evaluate,
            "timeseries": timeseries_cli.run, "coadd": _cmd_coadd, "batch": batch_cli.run}


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
