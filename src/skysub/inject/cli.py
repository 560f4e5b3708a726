"""``skysub inject``: artificial-source tests on the user's own frames (parse arguments, call
:func:`skysub.inject.run_injection`, write tables and the figure)."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  skysub inject frames/*.fits --catalog cat.csv --output-dir inj/ --photometer aperture,optimal \\
      --background annulus,mesh --realisations 3
  skysub inject frame.fits --catalog cat.csv --output-dir inj_gal/ --kind galaxy \\
      --photometer optimal,lumos --model my_lumos.pt --shape-scatter
  skysub inject frame.fits --catalog cat.csv --output-dir inj_near/ --near 6 15   (blends)
adds PSF stars (or PSF-convolved Sersic galaxies) of known flux at empty positions of copies of
the frames -- away from catalogued sources, masked pixels, the edges and each other -- runs every
photometer with every background method on the same copies and scores them against the truth:
the injected light (inside the aperture for --photometer aperture, total otherwise) and, for the
background, the mean of the frame's own pixels in the aperture before injection.
writes DIR/recovery.csv (one row per injected source and method: snr, truth, flux, flux_err,
rel_err, pull, bkg, bkg_true, bkg_dev, bkg_pull, flags), DIR/summary.csv (per method and SNR
bin: n, bias, sigma68, pull_sigma68, pull_gt5, bkg_bias, bkg_sigma68, bkg_pull_sigma68; one
`all` row per method), DIR/truth.csv, DIR/recovery.png and, with --write-images, the injected
frames DIR/images/*.fits with DIR/catalog_injected.csv (the frames' rows plus the injected ones).
SNR = injected flux / (pixel noise x sqrt(pi radius^2)); a pull width of 1 means honest errors."""


def _pair(name: str):
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes numbers, got {text!r}") from None
    return parse


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``inject`` to the ``skysub`` sub-parsers."""
    from ..cli_args import add_common, add_error_calibration
    p = sub.add_parser("inject", help="injection-recovery test of any method on your frames",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="FITS frames (globs allowed)")
    p.add_argument("--catalog", "-c", required=True,
                   help="the frames' own sources (CSV/ECSV/FITS): id and x,y (0-based px) or "
                        "ra,dec (deg); optional mag, r50, sersic_n, ba, theta")
    p.add_argument("--output-dir", "-o", required=True, help="output folder (created)")
    g = p.add_argument_group("what to inject")
    g.add_argument("--kind", choices=("star", "galaxy"), default="star",
                   help="PSF stars or PSF-convolved Sersic galaxies (default: star)")
    g.add_argument("--n", type=int, default=100,
                   help="sources per frame and realisation (default: 100; fewer when the frame "
                        "has no room)")
    g.add_argument("--realisations", type=int, default=3,
                   help="independent injections per frame (default: 3)")
    g.add_argument("--snr", nargs=2, type=_pair("--snr"), default=(5.0, 500.0),
                   metavar=("LOW", "HIGH"),
                   help="aperture SNR range, drawn log-uniformly (default: 5 500)")
    g.add_argument("--radius", type=float, default=None,
                   help="scoring and aperture radius [px] (default: [photometry] "
                        "aperture_radius, 8)")
    g.add_argument("--psf", default=None,
                   help="PSF image (FITS) of the frames: used to inject and by the optimal "
                        "photometer")
    g.add_argument("--psf-fwhm", type=float, default=None,
                   help="FWHM [px] of the PSF when no --psf (default: [photometry] psf_fwhm, "
                        "else 3)")
    g.add_argument("--psf-kind", choices=("gaussian", "moffat"), default="gaussian",
                   help="profile of the injected PSF (default: gaussian; moffat beta=3 has "
                        "wings; the optimal photometer keeps a Gaussian of --psf-fwhm unless "
                        "--psf: a PSF-model mismatch test)")
    g.add_argument("--min-separation", type=float, default=None,
                   help="px from catalogued and other injected sources (default: the annulus "
                        "outer radius + 5)")
    g.add_argument("--edge-margin", type=float, default=12.0,
                   help="px from the frame border (default: 12)")
    g.add_argument("--near", nargs=2, type=_pair("--near"), default=None,
                   metavar=("RMIN", "RMAX"),
                   help="place each source RMIN-RMAX px from a random catalogued source "
                        "(a blending test; default: off)")
    g.add_argument("--zeropoint", type=float, default=None,
                   help="mag = ZP - 2.5 log10(flux) of the injected rows (default: the frame's "
                        "header MAGZPT/MAGZERO/PHOTZP/MAGZP/ZEROPT, else a fit to the "
                        "catalogue's mag column, else 25)")
    g.add_argument("--shape-scatter", action="store_true",
                   help="galaxies: give the photometers catalogue shapes with a detection "
                        "pipeline's scatter (10%% r50, 0.05 b/a, 10 deg, 0.3 in n)")
    g.add_argument("--no-poisson", action="store_true",
                   help="do not add the injected light's shot noise")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    m = p.add_argument_group("what to run")
    m.add_argument("--photometer", "-p", default="aperture,optimal",
                   help="comma-separated photometers: aperture, optimal, lumos "
                        "(default: aperture,optimal)")
    m.add_argument("--background", "-b", default="annulus",
                   help="comma-separated background methods for each photometer: annulus, "
                        "mesh, templates, bkgnet, inpaint (default: annulus; lumos uses its own)")
    m.add_argument("--model", default=None,
                   help="model of the learned method (bkgnet / lumos; default: the shipped one)")
    m.add_argument("--templates", default=None, help="scattered-light templates (FITS)")
    m.add_argument("--r-in", type=float, default=None, help="annulus inner radius [px]")
    m.add_argument("--r-out", type=float, default=None, help="annulus outer radius [px]")
    m.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    add_error_calibration(m)
    m.add_argument("--snr-bins", default="0,10,30,100,inf",
                   help="SNR bin edges of the summary, comma-separated (default: 0,10,30,100,inf)")
    m.add_argument("--write-images", action="store_true",
                   help="also write the injected frames and their catalogue")
    add_common(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..cli_args import read_kwargs as image_read_kwargs
    from ..config import load_config
    from ..errors import InputError
    from ..io import check_output, write_fits_product, write_table
    from ..simulate.psf import load_psf
    from .core import InjectionSettings, describe
    from .plots import recovery_figure
    from .recovery import parse_methods, run_injection, summarise

    read_kwargs = image_read_kwargs(args, cfg := load_config(args.config))
    try:
        bins = [float(v) for v in args.snr_bins.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--snr-bins must be comma-separated numbers, got {args.snr_bins!r}"
                         ) from None
    if args.n < 1 or args.realisations < 1:
        raise InputError(f"--n and --realisations must be >= 1, got {args.n} and "
                         f"{args.realisations}")
    out = Path(args.output_dir)
    names = ["recovery.csv", "summary.csv", "truth.csv", "recovery.png"]
    inputs = [args.catalog, *args.images]
    for nm in names:
        check_output(out / nm, overwrite=args.overwrite, inputs=inputs)
    phot_cfg = cfg.photometry or {}
    radius = args.radius if args.radius is not None else float(
        phot_cfg.get("aperture_radius", 8.0))
    fwhm = args.psf_fwhm if args.psf_fwhm is not None else float(phot_cfg.get("psf_fwhm", 3.0))
    r_out = args.r_out if args.r_out is not None else float(cfg.annulus.get("r_out", 45.0))
    sep = args.min_separation if args.min_separation is not None else r_out + 5.0
    settings = InjectionSettings(
        kind=args.kind, n_per_image=args.n, snr=tuple(args.snr), radius=radius, psf_fwhm=fwhm,
        psf_kind=args.psf_kind, min_separation=sep, edge_margin=args.edge_margin,
        near=None if args.near is None else tuple(args.near), poisson=not args.no_poisson,
        zeropoint=args.zeropoint, shape_scatter=args.shape_scatter)
    psf = None if args.psf is None else load_psf(args.psf)
    methods = parse_methods(args.photometer, args.background)
    pk = {"radius": radius, "psf_fwhm": fwhm, "psf": args.psf, "model": args.model,
          "device": args.device, "error_calibration": args.error_calibration}
    needs_model = {m.background for m in methods} & {"bkgnet"}
    bk = {"templates": args.templates, "r_in": args.r_in, "r_out": args.r_out,
          "model": args.model if needs_model else None, "device": args.device}
    res = run_injection(args.images, args.catalog, methods, settings, config=cfg,
                        realisations=args.realisations, seed=args.seed, psf=psf,
                        photometer_kwargs=pk, background_kwargs=bk, quiet=args.quiet,
                        keep_images=args.write_images, **read_kwargs)
    rec, truth = res["recovered"], res["truth"]
    summary = summarise(rec, bins)
    meta = {"settings": describe(settings), "methods": [m.label for m in methods],
            "command": "skysub " + " ".join(args.argv)}
    for t in (rec, summary, truth):
        t.meta.update(meta)
    write_table(rec, out / "recovery.csv", overwrite=args.overwrite, inputs=inputs)
    write_table(summary, out / "summary.csv", overwrite=args.overwrite, inputs=inputs)
    write_table(truth, out / "truth.csv", overwrite=args.overwrite, inputs=inputs)
    recovery_figure(rec, summary, out / "recovery.png",
                    title=f"{args.kind} injection-recovery, {len(truth)} sources")
    if args.write_images:
        cat_rows = []
        for inj, full in zip(res["injections"], res["catalogs"], strict=True):
            stem = inj.image.path.stem if inj.image.path is not None else "image"
            r = int(inj.truth["realisation"][0])
            fn = out / "images" / f"{stem}_inj{r}.fits"
            write_fits_product(fn, inj.image.data, header=inj.image.header, wcs=inj.image.wcs,
                               extensions={"MASK": inj.image.mask.astype(np.uint8)},
                               overwrite=args.overwrite, inputs=inputs)
            full = full.copy()
            full["image"] = np.full(len(full), fn.name)
            cat_rows.append(full)
        if cat_rows:
            from astropy.table import vstack

            write_table(vstack(cat_rows), out / "catalog_injected.csv",
                        overwrite=args.overwrite, inputs=inputs)
    if not args.quiet:
        print_summary(summary)
        print(f"{len(truth)} injected sources x {len(methods)} methods -> {out}/")
    return 0


def print_summary(summary) -> None:
    """The summary as a fixed-width table on stdout."""
    hdr = (f"{'method':<22} {'SNR':>11} {'n':>5} {'bias':>8} {'sigma68':>8} {'pull68':>7} "
           f"{'|p|>5':>6} {'bkg68/sig':>9} {'bkgpull68':>9}")
    print(hdr)
    for r in summary:
        snr = "all" if r["group"] == "all" else f"{r['snr_lo']:.0f}-{r['snr_hi']:.0f}"
        print(f"{r['method']:<22} {snr:>11} {r['n']:>5d} {r['bias']:>+8.4f} "
              f"{r['sigma68']:>8.4f} {r['pull_sigma68']:>7.2f} {r['pull_gt5']:>6.3f} "
              f"{r['bkg_sigma68']:>9.4f} {r['bkg_pull_sigma68']:>9.2f}")
