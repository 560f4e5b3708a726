"""Command-line parsers of compact-source removal: ``skysub remove``, ``skysub train inpaint``,
``skysub evaluate removal``.  Thin: each command reads its settings and calls the library.

``skysub.cli`` registers them with::

    from .removal.cli import add_remove_parser, add_train_parser, add_evaluate_parser
    add_remove_parser(sub)            # sub = the top-level subparsers
    add_train_parser(train_sub)       # train_sub = subparsers of `skysub train`
    add_evaluate_parser(eval_sub)     # eval_sub = subparsers of `skysub evaluate`

Every parser sets ``func`` (``args.func(args) -> exit status``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG_REMOVE = """examples:
  skysub remove field.fits --catalog sources.csv --output-image field_clean.fits \\
      --output-catalog removed.csv
  skysub remove pacs70.fits --catalog ppsc.ecsv --config inpaint-scanmap --band blue \\
      --radii 4,6,8,10 --output-image clean.fits --output-catalog phot.csv --psf psf70.fits
  skysub remove map.fits -c cat.csv --model my-inpaint.pt --output-image out.fits \\
      --output-catalog out.csv --overwrite
writes OUT.fits (primary: the map with the sources removed; extensions REMOVED = original -
cleaned, HOLES = inpainted pixels; header and WCS of the input kept) and OUT.csv, one row per
source and aperture radius: id, x, y, radius [px], flux (aperture sum of image - prediction,
aperture-corrected), flux_annulus (classical annulus-subtracted, aperture-corrected),
bkg_annulus, aper_corr, snr (eq. 1), mask_radius [px], flags -- in image units (x pixels)."""

EPILOG_TRAIN = """examples:
  skysub train inpaint --config inpaint-generic --output my-inpaint.pt
  skysub train inpaint --config my.toml --output my-inpaint.pt --resume
  skysub train inpaint --config inpaint-generic --output tiny.pt --epochs 1 --n-train 2
  skysub train inpaint --maps my/*.fits --epochs 6 --output my-inpaint.pt
      # fine-tune the shipped model on your own maps (--init inpaint-default --lr 0.001
      # are the defaults with --maps; --from-scratch trains new weights)
  skysub train inpaint --maps my.fits --catalog my_sources.csv --psf-fwhm 4.2 \
      --init inpaint-default --calibrate-only --output my-cal.pt
      # the shipped weights, calibrated on beams injected into your map (no training)
the [removal.train] table of the configuration sets the data (simulated fields, or your own
source-poor maps: maps = ["a.fits", "b.fits", "c.fits"]), the U-Net preset and the training
(Adam, ReduceLROnPlateau, best checkpoint, early stopping); OUTPUT.ckpt allows --resume.
The shipped model was trained with:
  skysub train inpaint --config inpaint-generic --output src/skysub/models/inpaint-default.pt"""

EPILOG_EVAL = """examples:
  skysub evaluate removal --output eval/ --n-fields 4
  skysub evaluate removal --maps my.fits --catalog my_sources.csv --output eval-my/
  skysub evaluate removal --model my-inpaint.pt --config inpaint-generic --output eval/
  skysub evaluate removal --output eval-robust/ --position-error 0.3 --psf-blur 0.5
simulates held-out fields (test seeds never used in training), removes the injected sources
and writes eval/flux_ratio.png + .csv (measured/injected per flux level, model vs annulus box
plots), eval/power_spectra.png + .csv (original, with sources, predicted, difference),
eval/pixel_stats.csv (mean, median, std, MAD, skewness, IQR in the masked regions) and
eval/summary.txt.  --position-error / --psf-blur give the removal inexact positions and a PSF
model too wide, to see how much the results rely on them."""


#: learning rate of ``skysub train inpaint --maps`` when it fine-tunes the shipped model
FINE_TUNE_LR = 0.001


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help="configuration: a preset (inpaint-generic, inpaint-scanmap, "
                        "inpaint-parallel) or a TOML file (default inpaint-generic)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summaries")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, mps")


def _radii(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--radii must be comma-separated numbers, got "
                                         f"{text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"--radii must be positive pixel radii, got {text!r}")
    return vals


def add_remove_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("remove", help="remove compact sources from a map (inpainting U-Net)",
                       epilog=EPILOG_REMOVE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE", help="FITS map")
    p.add_argument("--catalog", "-c", required=True,
                   help="catalogue (CSV/ECSV/FITS): id and x,y (0-based px) or ra,dec (deg)")
    p.add_argument("--output-image", required=True, help="source-removed map (FITS)")
    p.add_argument("--output-catalog", required=True, help="photometry table (.csv/.ecsv/.fits)")
    p.add_argument("--radii", type=_radii, default=None,
                   help="aperture radii [px], comma-separated (default from the configuration)")
    p.add_argument("--model", default=None,
                   help="shipped model name or .pt file (default inpaint-default)")
    p.add_argument("--psf", default=None, help="PSF image (FITS) for the aperture correction")
    p.add_argument("--psf-fwhm", type=float, default=None,
                   help="Gaussian PSF FWHM [px] when no --psf (default from the configuration)")
    p.add_argument("--hdu", default=None, help="extension holding the map")
    p.add_argument("--mask", default=None, help="bad-pixel mask (extension or FITS file)")
    p.add_argument("--band", default=None, help="band (chooses the mask table of a preset)")
    p.add_argument("--batch-size", type=int, default=None, help="cutouts per forward pass")
    p.add_argument("--tta", type=int, choices=(1, 2, 4, 8), default=None,
                   help="average the network over this many symmetries of each cutout "
                        "(flips/transposes; N times slower; default from [removal] tta, 1)")
    p.add_argument("--wings", type=int, default=None,
                   help="PSF-wing subtraction passes: measure, subtract flux x PSF, inpaint "
                        "again (0 = the paper's single pass; default from [removal] wings, "
                        "else the model card's)")
    p.add_argument("--texture", choices=("residual", "highpass", "none"), default=None,
                   help="texture of the filled holes: residual (default: a nearby disc's "
                        "inpainting residual, conditional simulation), highpass (its small "
                        "scales only) or none; the photometry never uses it")
    p.add_argument("--no-texture", action="store_true", help="= --texture none")
    _common(p)
    p.set_defaults(func=cmd_remove)
    return p


def add_train_parser(train_sub) -> argparse.ArgumentParser:
    p = train_sub.add_parser("inpaint", help="train the compact-source inpainting U-Net",
                             epilog=EPILOG_TRAIN,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", "-o", required=True, help="model file to write (.pt + .json)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.ckpt")
    p.add_argument("--calibrate-only", action="store_true",
                   help="do not train: measure the error, level and flux calibration of the "
                        "existing model OUTPUT (or of --init MODEL, written to OUTPUT) on the "
                        "configuration's test fields or on beams injected into --maps, and "
                        "rewrite its card (weights unchanged)")
    p.add_argument("--epochs", type=int, default=None, help="override [removal.train] epochs")
    p.add_argument("--n-train", type=int, default=None, help="override the training fields")
    p.add_argument("--preset", choices=("default", "paper"), default=None,
                   help="U-Net preset (override)")
    p.add_argument("--seed", type=int, default=None, help="override the seed")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from this model's weights (e.g. inpaint-default, or a .pt): "
                        "fine-tune it on the configuration's data (override [removal.train] "
                        "init)")
    p.add_argument("--lr", type=float, default=None, help="override the learning rate")
    p.add_argument("--maps", nargs="+", default=None, metavar="MAP",
                   help="train (or, with --calibrate-only, calibrate) on your own FITS maps "
                        "instead of simulated fields: their own sources removed, beams "
                        "injected at empty positions (override [removal.train] maps)")
    p.add_argument("--catalog", nargs="+", default=None, metavar="CAT",
                   help="the maps' own sources: one catalogue per map, or one for all "
                        "(ra/dec); default: found in the maps (5 sigma peaks)")
    p.add_argument("--from-scratch", action="store_true",
                   help="with --maps: train from random weights (default: fine-tune "
                        "inpaint-default at lr 0.001)")
    p.add_argument("--psf", default=None, metavar="PSF",
                   help="the maps' beam: gaussian, airy, herschel or a FITS image (override "
                        "[removal.train] psf)")
    p.add_argument("--psf-fwhm", type=float, default=None,
                   help="FWHM [px] of the named beam (override [removal.train] psf_fwhm)")
    _common(p)
    p.set_defaults(func=cmd_train, device="auto")
    return p


def add_evaluate_parser(eval_sub) -> argparse.ArgumentParser:
    p = eval_sub.add_parser("removal", help="benchmark source removal on held-out simulations",
                            epilog=EPILOG_EVAL,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument("--model", default=None, help="model name or file (default inpaint-default)")
    p.add_argument("--n-fields", type=int, default=4, help="held-out fields (4)")
    p.add_argument("--field-size", type=int, default=384, help="field side [px] (384)")
    p.add_argument("--seed", type=int, default=12345,
                   help="seed of the test fields (12345; training never uses it)")
    p.add_argument("--tta", type=int, default=None, choices=(1, 2, 4, 8),
                   help="symmetries of the square averaged per cutout (default: [removal] tta)")
    p.add_argument("--position-error", type=float, default=0.0, metavar="PX",
                   help="give the removal positions moved by a Gaussian of PX per axis (0)")
    p.add_argument("--psf-blur", type=float, default=0.0, metavar="PX",
                   help="give the removal the PSF convolved with a Gaussian of PX: a PSF model "
                        "too wide (0.5 widens a 3.5 px FWHM by 5.5 %%; default 0)")
    g = p.add_argument_group("injection-recovery on your own maps (instead of simulations)")
    g.add_argument("--maps", nargs="+", default=None, metavar="MAP",
                   help="FITS maps: inject beams of known flux at empty positions, remove "
                        "every source, compare with the injected fluxes and the map before "
                        "injection")
    g.add_argument("--catalog", nargs="+", default=None, metavar="CAT",
                   help="the maps' own sources (one per map, or one for all with ra/dec; "
                        "default: found in the maps, 5 sigma peaks)")
    g.add_argument("--n", type=int, default=40,
                   help="beams per map and realisation (40; fewer when there is no room)")
    g.add_argument("--realisations", type=int, default=3, help="injections per map (3)")
    g.add_argument("--min-separation", type=float, default=None, metavar="PX",
                   help="px between an injected beam and any other source (default: 4 beam "
                        "FWHM, at least 12)")
    g.add_argument("--psf", default=None, help="the maps' beam (FITS image; default: a "
                                                "Gaussian of --psf-fwhm)")
    g.add_argument("--psf-fwhm", type=float, default=None,
                   help="beam FWHM [px] (default: the FITS header's BMAJ/BMIN, else "
                        "[removal] psf_fwhm)")
    _common(p)
    p.set_defaults(func=cmd_evaluate)
    return p


def _removal_settings(args) -> tuple:
    from ..config import load_config

    cfg = load_config(args.config or "inpaint-generic")
    return cfg, dict(cfg.removal)


def cmd_remove(args) -> int:
    from ..io import catalog_for_image, check_output, read_catalog, read_image, write_table
    from ..simulate.psf import load_psf
    from .core import removal_options, removal_summary, remove_sources, write_removed_map
    from .masks import MaskTable

    cfg, section = _removal_settings(args)
    inputs = [args.image, args.catalog, args.psf]
    check_output(args.output_image, overwrite=args.overwrite, inputs=inputs)
    check_output(args.output_catalog, overwrite=args.overwrite, inputs=inputs)
    if Path(args.output_image).resolve() == Path(args.output_catalog).resolve():
        from ..errors import InputError

        raise InputError("--output-image and --output-catalog must be different files")
    hdu = int(args.hdu) if args.hdu is not None and args.hdu.isdigit() else args.hdu
    mask = int(args.mask) if args.mask is not None and args.mask.isdigit() else args.mask
    overrides = {"band": args.band} if args.band else {}
    img = read_image(args.image, hdu=hdu, mask=mask, keys=cfg.header, overrides=overrides)
    cat = catalog_for_image(read_catalog(args.catalog), img)
    psf_fwhm = args.psf_fwhm if args.psf_fwhm is not None else section.get("psf_fwhm")
    psf = load_psf(args.psf) if args.psf else None
    opts = removal_options(section)
    masks = None
    if section.get("masks"):
        masks = MaskTable.from_config(section["masks"], band=img.meta.band or args.band,
                                      psf_fwhm=psf_fwhm)
    res = remove_sources(img, catalog=cat, model=args.model or section.get("model",
                                                                           "inpaint-default"),
                         masks=masks, radii=args.radii or section.get("radii", (4, 6, 8, 10)),
                         psf=psf, psf_fwhm=psf_fwhm, feather=opts["feather"],
                         anchor=opts["anchor"], tta=args.tta or int(section.get("tta", 1)),
                         wings=args.wings if args.wings is not None else opts["wings"],
                         texture="none" if args.no_texture else (args.texture or opts["texture"]),
                         batch_size=args.batch_size or opts["batch_size"],
                         device=args.device, quiet=args.quiet)
    from .domain import check_image

    problems = check_image(img, res, psf=psf, psf_fwhm=args.psf_fwhm if args.psf_fwhm
                           is not None else section.get("psf_fwhm"))
    if problems:
        import sys

        from .domain import domain_warning

        print(domain_warning(Path(args.image).name, problems,
                             str(args.model or section.get("model", "inpaint-default"))),
              file=sys.stderr)
    write_removed_map(args.output_image, img, res, overwrite=args.overwrite,
                      inputs=inputs)
    write_table(res.table, args.output_catalog, overwrite=args.overwrite, inputs=inputs)
    if not args.quiet:
        print(removal_summary(res))
        if psf is None:
            fwhm = (f"FWHM {psf_fwhm:g} px" if psf_fwhm is not None
                    else "the model card's FWHM")
            print(f"note: no --psf, so the holes, the wing model and the aperture correction "
                  f"use a Gaussian PSF of {fwhm}; for any other PSF (Airy rings, lobes) give "
                  f"--psf psf.fits (docs/removal.md, 'Removal holes')")
        print(f"map -> {args.output_image}; {len(res.table)} rows -> {args.output_catalog}")
    return 0


def cmd_train(args) -> int:
    from .core import removal_options
    from .masks import MaskTable
    from .training import InpaintTrainConfig, train_inpaint

    cfg, section = _removal_settings(args)
    train = dict(section.get("train", {}))
    # [removal.train.masks]: the table training cuts its holes with, when it differs from the
    # removal table [removal.masks] (which --calibrate-only records for removal)
    train.pop("masks", None)
    for key, val in (("epochs", args.epochs), ("n_train", args.n_train),
                     ("preset", args.preset), ("seed", args.seed), ("threads", args.threads),
                     ("init", args.init), ("lr", args.lr), ("psf_fwhm", args.psf_fwhm)):
        if val is not None:
            train[key] = val
    if args.maps:
        from ..io import expand_paths

        train["maps"] = [str(p) for p in expand_paths(args.maps)]
        if not args.calibrate_only and not args.from_scratch and train.get("init") is None:
            # the user path fine-tunes the shipped model (as for BKGnet), at a lower rate
            train["init"] = "inpaint-default"
            if args.lr is None:
                train["lr"] = FINE_TUNE_LR
    if args.catalog:
        train["catalogs"] = list(args.catalog)
    if args.psf:
        train["psf"] = [args.psf]
    train["device"] = args.device
    tc = InpaintTrainConfig.from_dict(train)
    masks = MaskTable.from_config(section.get("masks"), psf_fwhm=tc.psf_fwhm)
    train_masks = MaskTable.for_training(section, psf_fwhm=tc.psf_fwhm)
    import shlex
    import sys

    argv = [a for a in getattr(args, "argv", sys.argv[1:]) if a != "--resume"]
    command = " ".join(shlex.quote(a) for a in ["skysub", *argv])
    if args.calibrate_only:
        from ..nn.device import configure_threads
        from .training import recalibrate

        configure_threads(tc.threads)
        card = recalibrate(args.output, tc, masks=masks, quiet=args.quiet, command=command,
                           options=removal_options(section), init=args.init,
                           overwrite=args.overwrite)
        if not args.quiet:
            cal = card["error_calibration"]
            print(f"error calibration from {cal['n_cutouts']} test cutouts written to the card "
                  f"of {args.output}")
            from .levels import describe_level

            print(describe_level(cal))
        return 0
    card = train_inpaint(args.output, config=tc, masks=train_masks or masks, resume=args.resume,
                         overwrite=args.overwrite or args.resume, quiet=args.quiet,
                         command=command, options=removal_options(section))
    if not args.quiet:
        t = card["training"]
        print(f"trained {t['epochs_run']} epochs in {t['seconds']:.0f} s (best epoch "
              f"{t['best_epoch']}, val loss {card['metrics']['best_val_loss']:.4g}) -> "
              f"{args.output}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_removal

    cfg, section = _removal_settings(args)
    if args.maps:
        from .realmaps import evaluate_map_files

        summary = evaluate_map_files(
            args.output, args.maps, catalogs=args.catalog, model=args.model or section.get(
                "model", "inpaint-default"), config=cfg, n=args.n,
            realisations=args.realisations, psf=args.psf, psf_fwhm=args.psf_fwhm,
            seed=args.seed, separation=args.min_separation, overwrite=args.overwrite,
            quiet=args.quiet, device=args.device)
        if not args.quiet:
            print(summary["text"])
        return 0
    summary = evaluate_removal(args.output, model=args.model or section.get(
        "model", "inpaint-default"), config=cfg, n_fields=args.n_fields,
        field_size=args.field_size, seed=args.seed, overwrite=args.overwrite,
        quiet=args.quiet, device=args.device,
        tta=int(args.tta if args.tta is not None else section.get("tta", 1)),
        position_error=args.position_error, psf_blur=args.psf_blur)
    if not args.quiet:
        print(summary["text"])
    return 0
