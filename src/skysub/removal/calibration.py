"""Calibrated errors of the inpainted background (``InpaintBackground.bkg_err``).

The error of an inpainted mean depends on the field's structure and on the hole, not only on
the pixel noise, so skysub measures it: on held-out simulated (or the user's) fields never used
in training, the sources are removed exactly as at inference (:func:`remove_sources` on the
whole field: holes, normalisation, network, anchoring, wing passes), and the error of the mean
prediction within a disc of radius ``r_avg`` around each source is compared with the truth.
The model is

    bkg_err = c(hole radius, r_avg) x sigma_bg

with ``sigma_bg`` the robust scatter of the source's annulus (eq. 1) and ``c`` measured per bin
of hole radius and per averaging radius as

    c^2 = sigma68(err / sigma_bg)^2 - median(sigma_n^2 / (A sigma_bg^2))

-- the truth map holds noise, whose mean over the disc (area ``A``, pixel noise ``sigma_n``)
is the photometer's own pixel-noise term and is taken out, so ``bkg_err`` is the error of the
background *level* only, as eq. 9 of the PAUS background paper wants it.  The table goes into
the model card (``error_calibration``); :class:`skysub.removal.InpaintBackground` uses it.

Level bias (skysub's addition).  A small network's holes are not unbiased: the earlier 10-epoch
default model's predictions sat above the truth by ~0.1-0.15 ``sigma_bg`` (-5 % of the flux of an
SNR-13 source); the shipped 20-epoch model's, with its removal table and two wing passes, sit
0.01-0.044 ``sigma_bg`` below it below SNR 300.  The same held-out fields measure it:
per bin of the source's peak SNR (eq. 1), ``level_bias`` = the median of (mean prediction - truth
over the disc nearest the hole) / ``sigma_bg`` (per-field medians scatter much less in these units
than in pixel-noise units), with its standard error ``level_bias_se``.  It is binned by SNR, not by
hole radius, because it depends on the source's own light: faint sources, whose hole fluxes are
noisy, get wing models and anchoring rings of their own, and they share hole radii with sources a
hundred times brighter.  :func:`skysub.removal.remove_sources` subtracts ``level_bias x sigma_bg``
from every prediction; the error scale ``c`` is measured after that correction.  (Older cards bin
the level by hole radius, ``hole_edges``; :func:`level_offset` reads both.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

# applied at inference, so they live in .levels; importable from here too (their old home)
from .levels import _bins, level_offset
from .levels import describe_level as describe_level
from .levels import error_scale as error_scale

#: averaging radii [px] of the calibration (nearest used for others)
AVG_RADII = (2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0)
#: bin edges of the hole radius [px]
HOLE_EDGES = (0.0, 5.5, 7.5, 9.5, 11.5, 14.0, 18.0, 30.0)
MIN_PER_BIN = 30
#: bin edges of the peak SNR of the level bias (the last bin is open-ended)
LEVEL_SNR_EDGES = (0.0, 4.0, 6.0, 8.0, 10.0, 13.0, 20.0, 40.0, 100.0, 300.0, 1e9)
#: a level-bias bin needs this many sources (else it takes the nearest filled bin's value)
MIN_PER_LEVEL_BIN = 300
#: aperture radius [px] at which the flux ratio of the injected sources is calibrated
FLUX_RADIUS = 6.0
#: a flux-scale bin needs this many injected sources (else the nearest filled bin's value)
MIN_PER_FLUX_BIN = 100


def cutout_noise(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-cutout pixel noise from adjacent-pixel differences (MAD-std / sqrt 2), (n,)."""
    d = data[:, :, 1:] - data[:, :, :-1]
    ok = valid[:, :, 1:] & valid[:, :, :-1]
    a = np.where(ok, d, np.nan).reshape(len(d), -1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(a, axis=1)
        return 1.4826 * np.nanmedian(np.abs(a - med[:, None]), axis=1) / np.sqrt(2.0)


def measure_fields(net: Any, sims: list, masks: Any, *,
                   avg_radii: tuple[float, ...] = AVG_RADII, quiet: bool = True,
                   options: dict[str, Any] | None = None,
                   flux_radius: float = FLUX_RADIUS) -> dict[str, np.ndarray]:
    """Remove the sources of each simulation (:class:`skysub.simulate.extended.ExtendedSim`:
    image, truth, catalog, psf) exactly as at inference, without any level correction, and
    return per source: ``err`` (n, len(avg_radii)) mean prediction - truth in each disc,
    ``area`` (len(avg_radii),) nominal disc areas, ``hole``, ``snr`` (eq. 1 peak SNR),
    ``sigma_bg`` (eq. 1 annulus MAD-std), ``noise`` (the truth's pixel noise), ``sim`` (the
    index of its simulation), ``flux`` (removed flux in an aperture of ``flux_radius``),
    ``flux_true`` (the injected flux), ``aper_corr``, ``flags`` and ``settings`` (what
    :func:`remove_sources` ran with).  A catalogue with an ``injected`` column (sources
    injected into a real map, :mod:`skysub.removal.realmaps`) keeps only those rows: only
    their truths are known.
    ``options``: the removal settings that shape the predictions
    (``wings``, ``anchor``; :func:`skysub.removal.core.removal_options`), so that the
    calibration is measured as the removal will run."""
    from ..progress import progress
    from ..stamps import cutouts
    from .apertures import _aperture_sums
    from .core import remove_sources
    from .masks import peak_snr

    parts: dict[str, list] = {k: [] for k in ("err", "hole", "snr", "sigma_bg", "noise", "sim",
                                              "flux", "flux_true", "aper_corr", "flags")}
    area = np.empty(len(avg_radii))
    settings: dict[str, Any] = {}
    for k, sim in enumerate(progress(sims, desc="calibrating", quiet=quiet, unit="field")):
        x, y = np.asarray(sim.catalog["x"], float), np.asarray(sim.catalog["y"], float)
        # a bare network: no calibration of its own is applied
        # a field of a wider or narrower beam (``extra["mask_scale"]``): holes scaled with it
        tab = masks.scaled(sim.extra.get("mask_scale", 1.0)) if hasattr(masks, "scaled") \
            else masks
        res = remove_sources(sim.image, x, y, model=net, masks=tab, psf=sim.psf,
                             radii=(float(flux_radius),), keep_cutouts=True,
                             **prediction_options(options))
        settings = res.extra.get("settings", settings)
        pred = res.predictions
        ok = np.isfinite(pred).all(axis=(1, 2))
        if "injected" in sim.catalog.colnames:
            ok &= np.asarray(sim.catalog["injected"], bool)
        st = cutouts(sim.truth, x, y, pred.shape[-1])
        tru = np.nan_to_num(st.data)
        dx, dy = np.nan_to_num(st.dx), np.nan_to_num(st.dy)
        err = np.empty((len(x), len(avg_radii)))
        for j, r in enumerate(avg_radii):
            valid = st.valid & np.isfinite(pred)
            sp, a, _ = _aperture_sums(np.nan_to_num(pred), valid, r, dx, dy)
            stt, _, _ = _aperture_sums(tru, valid, r, dx, dy)
            err[:, j] = (sp - stt) / a
            area[j] = float(np.median(a))
        parts["err"].append(err[ok])
        parts["hole"].append(np.asarray(res.sources["mask_radius"], float)[ok])
        parts["snr"].append(np.asarray(res.sources["snr"], float)[ok])
        parts["sigma_bg"].append(peak_snr(sim.image, x, y, tab)["sigma_bg"][ok])
        parts["noise"].append(cutout_noise(tru, st.valid)[ok])
        parts["sim"].append(np.full(int(ok.sum()), k))
        # one row per source (a single aperture radius): the removed and the injected flux
        parts["flux"].append(np.asarray(res.table["flux"], float)[ok])
        parts["flux_true"].append(np.asarray(sim.catalog["flux"], float)[ok])
        parts["aper_corr"].append(np.asarray(res.table["aper_corr"], float)[ok])
        parts["flags"].append(np.asarray(res.table["flags"], np.int64)[ok])
    return {k: np.concatenate(v) for k, v in parts.items()} | {
        "area": area, "settings": settings, "flux_radius": float(flux_radius)}


def fit_level_bias(m: dict[str, np.ndarray], *, avg_radii: tuple[float, ...] = AVG_RADII,
                   snr_edges: tuple[float, ...] = LEVEL_SNR_EDGES,
                   min_per_bin: int = MIN_PER_LEVEL_BIN) -> tuple[list[float], list[float]]:
    """Per peak-SNR bin: median of (mean prediction - truth over the disc nearest the hole)
    / sigma_bg (module doc), and its standard error.  The sources of one field share its
    structure, so the error is a bootstrap over the simulations (``m["sim"]``; 200 resamples,
    seed 0) when they are known, else 1.2533 x sigma68 / sqrt n.  Bins with fewer than
    ``min_per_bin`` sources take the nearest filled bin; 0 when none is filled."""
    from ..metrics import _sigma68

    j = np.argmin(np.abs(np.asarray(m["hole"], float)[:, None] - np.asarray(avg_radii)), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = m["err"][np.arange(len(j)), j] / m["sigma_bg"]
    b = _bins(m["snr"], snr_edges)
    nb = len(snr_edges) - 1
    out, se = np.full(nb, np.nan), np.full(nb, np.nan)
    for i in range(nb):
        sel = (b == i) & np.isfinite(e)
        if sel.sum() >= min_per_bin:
            out[i] = float(np.median(e[sel]))
            se[i] = (_bootstrap_se(e[sel], np.asarray(m["sim"])[sel]) if "sim" in m
                     else float(1.2533 * _sigma68(e[sel]) / np.sqrt(sel.sum())))
    filled = np.flatnonzero(np.isfinite(out))
    if filled.size == 0:
        return [0.0] * nb, [float("nan")] * nb
    for i in range(nb):
        if not np.isfinite(out[i]):
            k = filled[np.argmin(np.abs(filled - i))]
            out[i], se[i] = out[k], se[k]
    return np.round(out, 5).tolist(), np.round(se, 5).tolist()


def _bootstrap_se(v: np.ndarray, group: np.ndarray, n_boot: int = 200, seed: int = 0) -> float:
    """Standard error of ``median(v)`` when the values come in correlated ``group``s: the
    std of the median over resamples of whole groups with replacement."""
    rng = np.random.default_rng(seed)
    ids, inv = np.unique(group, return_inverse=True)
    members = [v[inv == g] for g in range(len(ids))]
    meds = [np.median(np.concatenate([members[g] for g in rng.integers(len(ids), size=len(ids))]))
            for _ in range(n_boot)]
    return float(np.std(meds))


def fit_calibration(m: dict[str, np.ndarray], *, avg_radii: tuple[float, ...] = AVG_RADII,
                    hole_edges: tuple[float, ...] = HOLE_EDGES,
                    min_per_bin: int = MIN_PER_BIN) -> dict[str, Any]:
    """The ``c`` table of the module doc from :func:`measure_errors` output (JSON-ready).

    Bins with fewer than ``min_per_bin`` cutouts take the nearest filled bin of the same
    averaging radius; ``n`` holds the counts."""
    from ..metrics import _sigma68

    ok = np.isfinite(m["sigma_bg"]) & (m["sigma_bg"] > 0) & np.isfinite(m["noise"])
    nb = len(hole_edges) - 1
    scale = np.full((nb, len(avg_radii)), np.nan)
    counts = np.zeros(nb, int)
    b = np.clip(np.searchsorted(hole_edges, m["hole"], side="right") - 1, 0, nb - 1)
    for i in range(nb):
        sel = ok & (b == i)
        counts[i] = int(sel.sum())
        if counts[i] < min_per_bin:
            continue
        for j in range(len(avg_radii)):
            ratio = m["err"][sel, j] / m["sigma_bg"][sel]
            noise_term = np.median(m["noise"][sel] ** 2 / (m["area"][j] * m["sigma_bg"][sel] ** 2))
            c2 = _sigma68(ratio) ** 2 - noise_term
            # never below a tenth of the raw scatter: the subtraction is itself noisy
            scale[i, j] = np.sqrt(max(c2, (0.1 * _sigma68(ratio)) ** 2))
    filled = np.flatnonzero(np.isfinite(scale[:, 0]))
    if filled.size == 0:
        raise ValueError(f"error calibration needs >= {min_per_bin} cutouts in some hole-radius "
                         f"bin; got {int(ok.sum())} usable cutouts")
    for i in range(nb):
        if not np.isfinite(scale[i, 0]):
            scale[i] = scale[filled[np.argmin(np.abs(filled - i))]]
    return {"model": "bkg_err = scale[hole bin][avg radius] x sigma_bg (annulus MAD-std)",
            "avg_radii": [float(r) for r in avg_radii],
            "hole_edges": [float(e) for e in hole_edges],
            "scale": np.round(scale, 5).tolist(), "n": counts.tolist(),
            "n_cutouts": int(ok.sum())}


def level_corrected_flux(m: dict[str, np.ndarray], level: np.ndarray) -> np.ndarray:
    """The removed fluxes of :func:`measure_fields` as they are once ``level`` (per source,
    in sigma_bg) is subtracted from the predictions: the aperture sum of ``image - prediction``
    rises by ``level x sigma_bg x area`` and the flux by that times ``aper_corr`` (the area of
    a full aperture of ``m["flux_radius"]``; the wing passes' second-order response to the
    level is left out)."""
    area = np.pi * float(m["flux_radius"]) ** 2
    return m["flux"] + level * m["sigma_bg"] * area * m["aper_corr"]


def fit_flux_scale(ratio: np.ndarray, snr: np.ndarray, sim: np.ndarray | None = None, *,
                   snr_edges: tuple[float, ...] = LEVEL_SNR_EDGES,
                   min_per_bin: int = MIN_PER_FLUX_BIN
                   ) -> tuple[list[float], list[float], list[int]]:
    """Per peak-SNR bin: the median removed / injected flux ratio of the injected sources (the
    flux level :func:`skysub.removal.remove_sources` divides its fluxes by), its standard error
    (a bootstrap over ``sim``, the fields, whose sources share their structure; else 1.2533 x
    sigma68 / sqrt n) and the count.  Bins with fewer than ``min_per_bin`` sources take the
    nearest filled bin's value; 1 when none is filled."""
    from ..metrics import _sigma68

    ratio = np.asarray(ratio, float)
    b = _bins(snr, snr_edges)
    nb = len(snr_edges) - 1
    out, se = np.full(nb, np.nan), np.full(nb, np.nan)
    counts = [0] * nb
    for i in range(nb):
        sel = (b == i) & np.isfinite(ratio)
        counts[i] = int(sel.sum())
        if counts[i] >= min_per_bin:
            out[i] = float(np.median(ratio[sel]))
            se[i] = (_bootstrap_se(ratio[sel], np.asarray(sim)[sel]) if sim is not None
                     else float(1.2533 * _sigma68(ratio[sel]) / np.sqrt(counts[i])))
    filled = np.flatnonzero(np.isfinite(out))
    if filled.size == 0:
        return [1.0] * nb, [float("nan")] * nb, counts
    for i in range(nb):
        if not np.isfinite(out[i]):
            k = filled[np.argmin(np.abs(filled - i))]
            out[i], se[i] = out[k], se[k]
    return np.round(out, 5).tolist(), np.round(se, 5).tolist(), counts


#: flags that keep a source out of the flux-scale fit (masked pixels in the aperture, no data,
#: off image); edge (its cutout runs off the map or into NaN coverage) is kept
_FLUX_FIT_BAD = 2 | 8 | 16


def prediction_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The removal settings that change the predictions themselves (wing passes, anchoring),
    from ``options`` (:func:`skysub.removal.core.removal_options`); {} for None."""
    return {k: (int if k == "wings" else float)(v) for k, v in (options or {}).items()
            if k in ("wings", "anchor") and v is not None}


#: coarser peak-SNR bins and smaller counts for a calibration on beams injected into a user's
#: maps (a few hundred sources, not the simulated test fields' ~15,000)
MAP_SNR_EDGES = (0.0, 10.0, 20.0, 50.0, 150.0, 1e9)
MAP_MIN_PER_BIN = 20


def calibrate(net: Any, sims: list, masks: Any, *, quiet: bool = True,
              options: dict[str, Any] | None = None,
              min_per_flux_bin: int = MIN_PER_FLUX_BIN,
              min_per_level_bin: int = MIN_PER_LEVEL_BIN,
              snr_edges: tuple[float, ...] = LEVEL_SNR_EDGES) -> dict[str, Any]:
    """:func:`measure_fields`, the level bias, then :func:`fit_calibration` of the corrected
    errors and :func:`fit_flux_scale` of the injected sources' flux ratios: the card's
    ``error_calibration`` (with the ``removal_options`` it was measured with)."""
    m = measure_fields(net, sims, masks, quiet=quiet, options=options)
    bias, bias_se = fit_level_bias(m, snr_edges=snr_edges, min_per_bin=min_per_level_bin)
    level = {"level_snr_edges": snr_edges, "level_bias": bias}
    m["err"] = m["err"] - (level_offset(level, m["hole"], m["snr"]) * m["sigma_bg"])[:, None]
    cal = fit_calibration(m, min_per_bin=min(MIN_PER_BIN, min_per_level_bin))
    cal["level_snr_edges"] = [float(v) for v in snr_edges]
    cal["level_bias"] = bias
    cal["level_bias_se"] = bias_se
    cal["level_n"] = np.bincount(_bins(m["snr"], snr_edges),
                                 minlength=len(snr_edges) - 1).tolist()
    cal["level_model"] = ("prediction -= level_bias[peak-SNR bin] x sigma_bg "
                          "(annulus MAD-std)")
    cal["removal_options"] = {k: m["settings"][k] for k in ("wings", "anchor")}
    # the flux level (skysub's addition, issue 18): the median removed / injected flux of the
    # injected sources per peak-SNR bin, after the level bias -- what the removal divides by
    good = ((m["flags"] & _FLUX_FIT_BAD) == 0) & np.isfinite(m["flux_true"]) & (
        m["flux_true"] > 0)
    corrected = level_corrected_flux(m, level_offset(level, m["hole"], m["snr"]))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(good, corrected / m["flux_true"], np.nan)
    scale, scale_se, counts = fit_flux_scale(ratio, m["snr"], m["sim"], snr_edges=snr_edges,
                                             min_per_bin=min_per_flux_bin)
    cal["flux_snr_edges"] = [float(v) for v in snr_edges]
    cal["flux_scale"] = scale
    cal["flux_scale_se"] = scale_se
    cal["flux_n"] = counts
    cal["flux_radius"] = float(m["flux_radius"])
    cal["flux_model"] = ("flux /= flux_scale[peak-SNR bin]: the median removed / injected flux "
                         "of injected sources, measured at flux_radius after the level bias")
    return cal
