"""Run photometers and background methods on injected frames and score them against truth.

Every method sees the same injected copies (same positions, fluxes and noise), so the figures
of one run compare methods side by side.  Scoring (MEASURING.md):

* flux: ``rel_err = (flux - truth) / truth`` and ``pull = (flux - truth) / flux_err``, where the
  truth is ``flux_true_aper`` for the fixed aperture (it measures the light inside it) and
  ``flux_true`` for the others (they estimate the total flux);
* background: ``bkg_dev = (bkg - bkg_true) / sky_sigma`` (in units of the frame's pixel noise)
  and ``bkg_pull = (bkg - bkg_true) / sqrt(bkg_err**2 + floor**2)``, against the photometric truth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from ..errors import InputError
from ..image import Image
from ..stats import sigma68
from .core import InjectionSettings, frame_zeropoint, inject_sources, merged_catalog, sky_sigma

log = logging.getLogger("skysub")

#: photometers scored on the light inside their aperture (not the total flux)
APERTURE_TRUTH = ("aperture",)
#: photometers that bring their own background (the --background list does not apply)
OWN_BACKGROUND = ("lumos",)


@dataclass(frozen=True)
class Method:
    """One photometer with one background method, as the CLI names them."""

    photometer: str
    background: str | None

    @property
    def label(self) -> str:
        if self.background is None:
            return self.photometer
        return f"{self.photometer}+{self.background}"


def parse_methods(photometers: Sequence[str] | str, backgrounds: Sequence[str] | str
                  ) -> list[Method]:
    """Every photometer with every background (``lumos`` once, with its own)."""
    from ..names import BACKGROUND_METHODS, PHOTOMETERS

    def split(v):
        return [s.strip() for s in (v.split(",") if isinstance(v, str) else v) if s.strip()]

    phots, bkgs = split(photometers), split(backgrounds)
    if not phots:
        raise InputError("--photometer: give at least one photometer")
    for p in phots:
        if p not in PHOTOMETERS:
            raise InputError(f"--photometer: unknown photometer {p!r}; expected one of "
                             f"{', '.join(PHOTOMETERS)}")
    for b in bkgs:
        if b not in BACKGROUND_METHODS:
            raise InputError(f"--background: unknown method {b!r}; expected one of "
                             f"{', '.join(BACKGROUND_METHODS)}")
    out: list[Method] = []
    for p in phots:
        if p in OWN_BACKGROUND:
            out.append(Method(p, None))
            continue
        if not bkgs:
            raise InputError(f"--background: photometer {p!r} needs a background method")
        out.extend(Method(p, b) for b in bkgs)
    return out


def score(truth: Table, measured: Any, method: Method) -> Table:
    """Per-source recovery table of one method on one injection."""
    t = Table()
    for c in ("image", "realisation", "id", "x", "y", "snr", "flux_true", "flux_true_aper",
              "bkg_true", "floor", "sky_sigma"):
        t[c] = truth[c]
    t["method"] = np.full(len(truth), method.label, dtype=object).astype(str)
    for c in ("flux", "flux_err", "bkg", "bkg_err", "flags"):
        t[c] = np.asarray(getattr(measured, c))
    ref = truth["flux_true_aper"] if method.photometer in APERTURE_TRUTH else truth["flux_true"]
    ref = np.asarray(ref, float)
    flux = np.asarray(t["flux"], float)
    err = np.asarray(t["flux_err"], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t["truth"] = ref
        t["rel_err"] = (flux - ref) / ref
        t["pull"] = np.where(err > 0, (flux - ref) / err, np.nan)
        bkg = np.asarray(t["bkg"], float)
        berr = np.asarray(t["bkg_err"], float)
        t["bkg_dev"] = (bkg - np.asarray(truth["bkg_true"])) / np.asarray(truth["sky_sigma"])
        t["bkg_pull"] = (bkg - np.asarray(truth["bkg_true"])) / np.sqrt(
            berr ** 2 + np.asarray(truth["floor"], float) ** 2)
    return t


def _row(method: str, lo: float, hi: float, t: Table) -> dict:
    rel = np.asarray(t["rel_err"], float)
    pull = np.asarray(t["pull"], float)
    bdev = np.asarray(t["bkg_dev"], float)
    bpull = np.asarray(t["bkg_pull"], float)
    fin = np.isfinite(rel)
    n = len(t)
    fp = pull[np.isfinite(pull)]
    return {
        "method": method, "group": "bin", "snr_lo": lo, "snr_hi": hi, "n": n,
        "n_nan": int(n - fin.sum()),
        "bias": float(np.median(rel[fin])) if fin.any() else np.nan,
        "sigma68": float(sigma68(rel[fin])) if fin.any() else np.nan,
        "pull_median": float(np.median(fp)) if fp.size else np.nan,
        "pull_sigma68": float(sigma68(fp)) if fp.size else np.nan,
        "pull_gt5": float(np.mean(np.abs(fp) > 5)) if fp.size else np.nan,
        "bkg_bias": float(np.nanmedian(bdev)) if np.isfinite(bdev).any() else np.nan,
        "bkg_sigma68": float(sigma68(bdev)) if np.isfinite(bdev).any() else np.nan,
        "bkg_pull_sigma68": float(sigma68(bpull)) if np.isfinite(bpull).any() else np.nan,
    }


def summarise(recovered: Table, snr_bins: Sequence[float] | None = None) -> Table:
    """Bias, sigma68 and pull width per method and SNR bin (and an ``all`` row per method).

    Columns: method, snr_lo, snr_hi, n, n_nan (sources without a finite flux), bias (median
    relative error), sigma68 (of the relative error), pull_median, pull_sigma68, pull_gt5
    (fraction |pull| > 5), bkg_bias and bkg_sigma68 (background minus photometric truth in
    units of the pixel noise), bkg_pull_sigma68.
    """
    if snr_bins is None:
        snr_bins = (0.0, 10.0, 30.0, 100.0, np.inf)
    edges = np.asarray(snr_bins, float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise InputError(f"SNR bins must be increasing edges, got {list(snr_bins)}")
    rows = []
    snr = np.asarray(recovered["snr"], float)
    methods = list(dict.fromkeys(np.asarray(recovered["method"]).tolist()))
    for m in methods:
        sel_m = np.asarray(recovered["method"]) == m
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sel = sel_m & (snr >= lo) & (snr < hi)
            if sel.any():
                rows.append(_row(m, float(lo), float(hi), recovered[sel]))
        rows.append(_row(m, float(edges[0]), float(edges[-1]), recovered[sel_m]) | {
            "snr_lo": float(np.min(snr[sel_m])) if sel_m.any() else np.nan,
            "snr_hi": float(np.max(snr[sel_m])) if sel_m.any() else np.nan,
            "method": m, "group": "all"})
    return Table(rows=rows)


def run_injection(images: Sequence[str | Path | Image], catalog: Any, methods: Sequence[Method],
                  settings: InjectionSettings | None = None, *, config: Any = None,
                  realisations: int = 1, seed: int = 0, psf: np.ndarray | None = None,
                  photometer_kwargs: dict | None = None, background_kwargs: dict | None = None,
                  quiet: bool = False, keep_images: bool = False, **read_kwargs: Any
                  ) -> dict[str, Any]:
    """Inject, measure with every method, score.

    Parameters
    ----------
    images : paths or Images
    catalog : path or Table of the frames' own sources (``skysub.io.read_catalog`` format)
    methods : list of :class:`Method`
    settings : InjectionSettings
    config : SurveyConfig (annulus radii, mesh settings, aperture radius, ...)
    realisations : int
        Independent injections per image (new positions, fluxes and noise each).
    seed : int
    psf : 2-D array, optional
        Injection PSF (default: the settings' Gaussian/Moffat).
    photometer_kwargs, background_kwargs : passed to
        :func:`skysub.workflows.make_photometer` / :func:`~skysub.workflows.make_background`
        (``radius``, ``psf_fwhm``, ``psf``, ``model``, ``r_in``, ...); ``radius`` and
        ``psf_fwhm`` default to the settings' (a Gaussian PSF; pass ``psf`` as a FITS path to
        give the photometers the frame's own PSF).
    keep_images : bool
        Return the injected Images and catalogues too (for writing them out).

    Returns
    -------
    dict with ``recovered`` (Table, one row per injected source per method), ``truth``
    (Table, one row per injected source) and, with ``keep_images``, ``injections`` (the
    :class:`~skysub.inject.core.Injection` of every image and realisation) and ``catalogs``
    (the catalogue the methods saw for each: the frame's rows plus the injected ones).
    """
    from ..config import load_config
    from ..io import catalog_for_image, read_catalog
    from ..progress import progress
    from ..workflows import _image_iter, make_background, make_photometer

    settings = settings or InjectionSettings()
    config = config or load_config()
    if int(realisations) < 1:
        raise InputError(f"realisations must be >= 1, got {realisations!r}")
    cat_all = read_catalog(catalog)  # files, Tables, photutils and sep catalogues alike
    pk = dict(photometer_kwargs or {})
    # the photometers measure with the injected PSF and the scoring aperture unless told not to
    pk.setdefault("psf_fwhm", settings.psf_fwhm)
    pk.setdefault("radius", settings.radius)
    bk = dict(background_kwargs or {})
    built: dict[str, Any] = {}
    for m in methods:  # each estimator and model is built (and loaded) once
        bg = None
        if m.background is not None:
            if m.background not in built:
                built[m.background] = make_background(m.background, config=config, **bk)
            bg = built[m.background]
        built[m.label] = make_photometer(m.photometer, background=bg, config=config, **pk)
    rec, truths, kept = [], [], []
    for image in _image_iter(images, quiet=quiet, **read_kwargs):
        cat = catalog_for_image(cat_all, image)
        s_img = settings
        if settings.zeropoint is None:  # one zero point per frame, shared by its realisations
            zp = frame_zeropoint(image, cat)
            if zp.warning:
                log.warning("%s: %s", image.name, zp.warning)
            log.info("%s: %s", image.name, zp.describe())
            s_img = replace(settings, zeropoint=zp.value)
        noise = sky_sigma(image)  # one mesh RMS map per frame, shared by its realisations
        for r in progress(range(int(realisations)), desc=f"{image.name}", quiet=quiet,
                          unit="realisation"):
            inj = inject_sources(image, cat, s_img, psf=psf, seed=seed, realisation=r,
                                 noise=noise)
            if len(inj.truth) == 0:
                continue
            truths.append(inj.truth)
            full = merged_catalog(cat, inj.catalog)
            n0 = len(full) - len(inj.catalog)
            for m in methods:
                res = built[m.label].measure(
                    inj.image, np.asarray(full["x"], float), np.asarray(full["y"], float),
                    mag=np.asarray(full["mag"], float) if "mag" in full.colnames else None,
                    neighbours=(np.asarray(full["x"], float), np.asarray(full["y"], float)),
                    catalog=full)
                sub = _Rows(res, slice(n0, None))
                rec.append(score(inj.truth, sub, m))
            if keep_images:
                kept.append((inj, full))
    if not truths:
        raise InputError("no source could be injected: the frames have no empty positions "
                         "for the settings (lower --min-separation / --edge-margin, or give "
                         "larger frames)")
    out: dict[str, Any] = {"recovered": vstack(rec, metadata_conflicts="silent"),
                           "truth": vstack(truths, metadata_conflicts="silent")}
    if keep_images:
        out["injections"] = [inj for inj, _ in kept]
        out["catalogs"] = [full for _, full in kept]
    return out


class _Rows:
    """The rows ``sel`` of a photometry result (attributes flux, flux_err, bkg, bkg_err, flags)."""

    def __init__(self, res: Any, sel: slice) -> None:
        for c in ("flux", "flux_err", "bkg", "bkg_err", "flags"):
            setattr(self, c, np.asarray(getattr(res, c))[sel])
