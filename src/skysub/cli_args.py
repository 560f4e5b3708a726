"""Argument groups and readers shared by the ``skysub`` sub-commands (:mod:`skysub.cli`,
:mod:`skysub.batch_cli`): both import them from here, and neither imports the other's
helpers."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--batch-size`` (the learned estimators' options)."""
    g = p.add_argument_group("learned estimators")
    g.add_argument("--model", default=None,
                   help="model file or shipped model name (default for bkgnet: bkgnet-paus; "
                        "see `skysub models list`)")
    g.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    g.add_argument("--batch-size", type=int, default=512, help="stamps per forward pass (512)")


def add_common(p: argparse.ArgumentParser, *, images: bool = True) -> None:
    """``--config``, ``--quiet``, ``--overwrite`` and, with ``images``, the image-reading options
    (``--hdu``, ``--mask``, header overrides)."""
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


def read_kwargs(args: argparse.Namespace, cfg) -> dict:
    """Keyword arguments of :func:`skysub.io.read_image` from the options of :func:`add_common`
    and the configuration's header keywords."""
    overrides = {k: getattr(args, k) for k in ("band", "epoch", "exptime", "gain", "rdnoise")
                 if getattr(args, k, None) is not None}
    hdu = args.hdu
    if hdu is not None and hdu.isdigit():
        hdu = int(hdu)
    mask = args.mask
    if mask is not None and mask.isdigit():
        mask = int(mask)
    return {"hdu": hdu, "mask": mask, "keys": cfg.header, "overrides": overrides}


__all__ = ["add_common", "add_model_args", "read_kwargs"]


def add_error_calibration(p: argparse.ArgumentParser) -> None:
    """``--error-calibration`` of the aperture and optimal photometers."""
    p.add_argument("--error-calibration", choices=("auto", "empty", "neighbours", "matched",
                                                   "global", "level", "none"),
                   default="auto",
                   help="flux errors of the aperture and optimal photometers: auto (default) "
                        "calibrates them on the frame's empty positions (correlated noise and "
                        "background structure, and how they vary over the frame: "
                        "docs/photometry.md) where it has room for 50, else keeps the "
                        "white-noise model; empty: the same, but a frame without room is warned "
                        "about and flagged uncalibrated (64); neighbours: as auto with a "
                        "factor for the distance to the nearest catalogued source too "
                        "(opt-in); matched: as auto with the empty positions weighted to the "
                        "measured sources' distances to their nearest catalogued neighbour "
                        "(opt-in); global: as auto with one factor "
                        "for the whole frame; level: as auto with the local factor a function "
                        "of the local pixel-noise level (the background's pixel rms) before the "
                        "position (opt-in); none: white-noise model only")
