"""``skysub timeseries {simulate,reduce,photometry,periodogram}``: argument parsing only; the
work is done by :mod:`skysub.simulate.timeseries` and :class:`skysub.pipeline.reduce.Reducer`.

Registered in :mod:`skysub.cli` with :func:`add_parser` and :func:`run`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ..errors import InputError

EPILOG_SIM = """examples:
  skysub timeseries simulate --output out/data --n-images 100
  skysub timeseries simulate --output out/data --n-images 100 --cameras g,r,i --binning 4 \\
      --seed 1 --rms 0.02 --frequency 0.135 --phase-lags 0,1.571,3.142
  skysub timeseries simulate --output out/rot --n-images 50 --psf-sigma 2.0 1.2 \\
      --psf-angle 30 --gradient 20 10 --max-rotation 1
writes <camera>_<k>.fits (DATE-OBS, MJD-OBS, EXPTIME, FILTER, CAMERA, BINNING, RA, DEC,
OBSGEO-B/L/H) and truth.json; prints the variable's position, RMS, frequency and lags."""

EPILOG_REDUCE = """examples:
  skysub timeseries reduce out/data --output out/reduced
  skysub timeseries reduce out/data --output out/reduced --align translation --processes 2
writes cat/<camera>_catalog.ecsv, cat/<camera>_transforms.json, cat/psf_params.json
(orientation in DEGREES), cat/<camera>_stack.fits and diagnostic plots in cat/ and diag/.
A re-run loads what exists; --overwrite redoes it."""

EPILOG_PHOT = """examples:
  skysub timeseries photometry out/data --output out/reduced --photometer optimal
  skysub timeseries photometry out/data --output out/reduced --photometer aperture,optimal \\
      --background annulus-median
  skysub timeseries photometry out/data --output out/reduced --photometer optimal \\
      --background custom_local_background:custom_local_background
--background: annulus (opticam default: clipped mean, 5-7.5 PSF sigmas), annulus-median, or
MODULE:NAME -- an opticam-style function f(data, position, semimajor_axis, semiminor_axis,
orientation[deg]) -> (bkg, pixel scatter), or a skysub estimator (searched in the current folder
too).  Writes lcs/<photometer>_<background>/<camera>_source_<n>.csv with columns BMJD, flux,
flux_err, bkg, bkg_err, bkg_pixel_std, bkg_mean_err, x, y, flags, frame (see columns.json).
Cameras whose light curves exist are skipped unless --overwrite."""

EPILOG_PERIOD = """examples:
  skysub timeseries periodogram out/data --output out/reduced --photometer optimal_annulus \\
      --near 131 115
  skysub timeseries periodogram out/data --output out/reduced --photometer optimal_annulus \\
      --camera g --target 2 --comparisons 1,3
relative light curve (target / sum of comparisons) and Lomb-Scargle periodogram per camera;
prints the peak frequency [Hz]; writes lcs/<photometer>/relative/ and a plot in diag/."""


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _common(p: argparse.ArgumentParser, *, overwrite: bool = True) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summaries")
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="redo / replace existing outputs")


def _reducer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="folder of FITS frames")
    p.add_argument("--output", "-o", required=True, help="reduction folder")
    p.add_argument("--processes", "-j", type=int, default=None,
                   help="worker processes (default: CPUs available, at most 8)")
    p.add_argument("--align", choices=("affine", "translation"), default="affine",
                   help="transform fitted between frames (affine)")
    p.add_argument("--threshold", type=float, default=5.0,
                   help="detection threshold in background RMS (5)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``timeseries`` and its sub-commands to the ``skysub`` sub-parsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("timeseries", help="opticam-style multi-camera light curves",
                              description="Time-series photometry of multi-camera frames: "
                                          "simulate, reduce, photometry, periodogram.")
    sub = p.add_subparsers(dest="what", metavar="WHAT")

    s = sub.add_parser("simulate", help="frames of a few stars, one variable, per camera",
                       epilog=EPILOG_SIM, formatter_class=fmt)
    s.add_argument("--output", "-o", required=True, help="output folder")
    s.add_argument("--n-images", type=int, default=100, help="frames per camera (100)")
    s.add_argument("--cameras", default="g,r,i", help="comma-separated filters (g,r,i)")
    s.add_argument("--binning", type=int, default=4, help="binning; frame side 2048/binning (4)")
    s.add_argument("--seed", type=int, default=0, help="random seed (0)")
    s.add_argument("--n-stars", type=int, default=6, help="stars per field (6)")
    s.add_argument("--rms", type=float, default=0.02, help="variable's relative RMS (0.02)")
    s.add_argument("--frequency", type=float, default=0.135,
                   help="variable's frequency [Hz] (0.135)")
    s.add_argument("--phase-lags", default=None,
                   help="per-camera phase lags [rad], comma-separated (0, pi/2, pi, ...)")
    s.add_argument("--background", type=float, default=100.0, help="mean background (100)")
    s.add_argument("--gradient", type=float, nargs=2, default=(0.0, 0.0), metavar=("GX", "GY"),
                   help="background change across the frame in x and y [counts] (0 0)")
    s.add_argument("--psf-sigma", type=float, nargs=2, default=(1.4, 1.4),
                   metavar=("MAJOR", "MINOR"), help="PSF sigmas [px] (1.4 1.4)")
    s.add_argument("--psf-angle", type=float, default=0.0,
                   help="PSF orientation, DEGREES counter-clockwise from +x (0)")
    s.add_argument("--jitter", type=float, default=1.5, help="RMS pointing jitter [px] (1.5)")
    s.add_argument("--max-rotation", type=float, default=0.0,
                   help="frames rotated by up to this many degrees (0)")
    s.add_argument("--cadence", type=float, default=1.0, help="seconds between frames (1)")
    _common(s)

    r = sub.add_parser("reduce", help="scan, catalogues, alignment, PSF parameters",
                       epilog=EPILOG_REDUCE, formatter_class=fmt)
    _reducer_args(r)
    _common(r)

    ph = sub.add_parser("photometry", help="light curves with a local background",
                        epilog=EPILOG_PHOT, formatter_class=fmt)
    _reducer_args(ph)
    ph.add_argument("--photometer", "-p", default="optimal",
                    help="aperture, optimal, or both comma-separated (optimal)")
    ph.add_argument("--background", "-b", default="annulus",
                    help="annulus, annulus-median or MODULE:NAME (annulus)")
    ph.add_argument("--aperture-scale", type=float, default=4.0,
                    help="aperture semi-major axis in PSF sigmas (4)")
    ph.add_argument("--unforced", action="store_true",
                    help="re-centre every source on every frame (default: forced positions)")
    _common(ph)

    pg = sub.add_parser("periodogram", help="relative light curve + Lomb-Scargle",
                        epilog=EPILOG_PERIOD, formatter_class=fmt)
    _reducer_args(pg)
    pg.add_argument("--photometer", "-p", required=True,
                    help="light-curve folder name under lcs/ (e.g. optimal_annulus)")
    pg.add_argument("--camera", default=None, help="one camera (default: all)")
    g = pg.add_mutually_exclusive_group(required=True)
    g.add_argument("--target", type=int, help="catalogue id of the target")
    g.add_argument("--near", type=float, nargs=2, metavar=("X", "Y"),
                   help="target = catalogue source nearest this reference-frame position")
    pg.add_argument("--comparisons", default=None,
                    help="comma-separated comparison ids (default: 3 brightest others)")
    pg.add_argument("--min-frequency", type=float, default=None, help="[Hz]")
    pg.add_argument("--max-frequency", type=float, default=None, help="[Hz]")
    _common(pg)
    return p


def _import_object(spec: str):
    """``MODULE:NAME`` -> the object (the current folder is importable)."""
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise InputError(f"--background {spec!r}: expected annulus, annulus-median or "
                         "MODULE:NAME")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(mod)
    except ImportError as exc:
        raise InputError(f"--background {spec!r}: cannot import module {mod!r} ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InputError(f"--background {spec!r}: module {mod!r} has no {attr!r}") from None


def _background(spec: str):
    from .photometers import PSFAnnulus

    if spec == "annulus":
        return None
    if spec == "annulus-median":
        p = PSFAnnulus(statistic="median")
        p.name = "annulus_median"
        return p
    return _import_object(spec)


def _reducer(args):
    from .reduce import Reducer

    return Reducer(args.data, args.output, align=args.align, threshold=args.threshold,
                   processes=args.processes, quiet=args.quiet)


def _simulate(args) -> int:
    from ..simulate.timeseries import TimeSeriesSimConfig, describe, simulate_observations

    cams = tuple(c.strip() for c in args.cameras.split(",") if c.strip())
    lags = None
    if args.phase_lags is not None:
        vals = _floats(args.phase_lags, "--phase-lags")
        if len(vals) != len(cams):
            raise InputError(f"--phase-lags gives {len(vals)} values for {len(cams)} cameras "
                             f"({', '.join(cams)})")
        lags = dict(zip(cams, vals, strict=True))
    cfg = TimeSeriesSimConfig(
        cameras=cams, binning=args.binning, n_stars=args.n_stars, rms=args.rms,
        frequency=args.frequency, phase_lags=lags, background=args.background,
        gradient=tuple(args.gradient), psf_sigma=tuple(args.psf_sigma),
        psf_angle=args.psf_angle, jitter=args.jitter, max_rotation=args.max_rotation,
        cadence=args.cadence)
    truth = simulate_observations(args.output, args.n_images, cfg, seed=args.seed,
                                  overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        print(describe(cfg, truth))
        print(f"wrote {args.n_images} frames x {len(cams)} cameras and truth.json to "
              f"{args.output}/")
    return 0


def _reduce(args) -> int:
    red = _reducer(args)
    if not args.quiet:
        print(red.summary())
    red.create_catalogs(overwrite=args.overwrite)
    if not args.quiet:
        for cam, psf in red.psf_params.items():
            print(f"{cam}: {len(red.catalogs[cam])} sources; PSF semimajor_sigma "
                  f"{psf['semimajor_sigma']:.3f} px, semiminor_sigma {psf['semiminor_sigma']:.3f}"
                  f" px, orientation {psf['orientation']:.2f} deg")
        print(f"catalogues, transforms and plots in {args.output}/cat and {args.output}/diag")
    return 0


def _photometry(args) -> int:
    from .photometers import pipeline_photometer

    kinds = [k.strip() for k in args.photometer.split(",") if k.strip()]
    est = _background(args.background)
    recipes = []
    for k in kinds:
        kw = {"aperture_scale": args.aperture_scale} if k == "aperture" else {}
        recipes.append(pipeline_photometer(k, local_background_estimator=est,
                                           forced=not args.unforced, **kw))
    red = _reducer(args)
    red.create_catalogs()  # loads them (a re-run) or makes them
    out = red.photometry(recipes, overwrite=args.overwrite)
    if not args.quiet:
        for name, cams in out.items():
            n = sum(len(v) for v in cams.values())
            print(f"{name}: {n} light curves in {red.lc_directory(name)}")
    return 0


def _periodogram(args) -> int:
    import numpy as np

    red = _reducer(args)
    red.create_catalogs()
    cams = [args.camera] if args.camera else red.cameras
    comps = None if args.comparisons is None else [int(v) for v in
                                                   _floats(args.comparisons, "--comparisons")]
    for cam in cams:
        red._check_camera(cam)
        if args.near is not None:
            cat = red.catalogs[cam]
            d = np.hypot(np.asarray(cat["x"]) - args.near[0], np.asarray(cat["y"]) - args.near[1])
            target = int(cat["id"][int(np.argmin(d))])
        else:
            target = args.target
        res = red.periodogram(args.photometer, cam, target, comps,
                              min_frequency=args.min_frequency, max_frequency=args.max_frequency)
        if not args.quiet:
            print(f"{cam} source {target}: peak frequency {res.peak_frequency:.5f} Hz "
                  f"(false-alarm probability {res.false_alarm_probability:.2g})")
    return 0


HANDLERS = {"simulate": _simulate, "reduce": _reduce, "photometry": _photometry,
            "periodogram": _periodogram}


def run(args) -> int:
    """Handler of ``skysub timeseries``."""
    if getattr(args, "what", None) not in HANDLERS:
        raise SystemExit("usage: skysub timeseries {simulate,reduce,photometry,periodogram} "
                         "... (see skysub timeseries --help)")
    return HANDLERS[args.what](args)
