"""Lumos' calibration on the user's own frames: galaxies of known flux injected at empty
positions of the held-out part of the training exposures (``skysub inject``'s machinery) and
measured by the photometer exactly as a user measures them; the per-SNR shift and width
(:class:`SNRCalibration`) of the with-magnitude mode are fitted to them
(:func:`injection_calibration`, the default of ``skysub train lumos`` on user exposures).

Why: the validation calibration is fitted on the training simulation's own stamps (its galaxy
model, its catalogue-magnitude scatter ``colour_scatter``, its neighbours), and on real frames
the photometer's inputs differ from them (the frame's own catalogue in the neighbour channel,
whole-frame cutouts, the catalogue's magnitude accuracy); docs/lumos.md gives the figures.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np

from ...errors import InputError
from .calibration import (
    NEAR_PX,
    _calibrated,
    fit_snr_calibration,
    instrument_key,
    nearest_distance,
)
from .mixtures import mixture_summary

#: injections asked for per instrument (6 calibration bins of 200); fewer when the frames have
#: no room
TARGET_INJECTIONS = 1200
#: below this many usable injections the validation calibration is kept
MIN_INJECTIONS = 300
#: crowded levels at most (each of 2 x 150 injections at least, :func:`.calibration.crowd_edges`)
#: above the isolated one: where the errors grow with the crowding, one calibration for all
#: crowded targets is too wide for the least and too narrow for the most crowded of them
#: (``tests/test_lumos_crowd_levels.py``; docs/lumos.md, crowded frames)
CROWD_LEVELS = 3
#: injections per calibration bin at least (the fit on all injections; a check half's fit has
#: the same bins and crowding levels, with half the rows in each)
MIN_PER_BIN = 150
#: where the calibration galaxies go: ``"catalogue"`` (opt-in) -- their distance to the
#: nearest catalogued source follows the catalogue sources' own nearest-neighbour distances
#: (:func:`draw_matched_positions`), so the calibration sees the neighbours the user's sources
#: have; ``"empty"`` (the default) -- ``skysub inject``'s empty positions, 15 px from every
#: catalogued source (no injection then came as close as 84 % of M13's sources' neighbours;
#: docs/lumos.md)
PLACEMENTS = ("catalogue", "empty")
#: the nearest catalogued source of a ``"catalogue"`` injection is this far at least [px]
#: (sources closer than that are one blend to a detection pipeline; the catalogue's own
#: closer pairs count at this distance)
PLACEMENT_FLOOR = 5.0
#: log-spaced distance bins of the nearest-neighbour histogram matched
NN_BINS = 16
#: share of the ``"catalogue"`` injections placed ``NEAR_PX`` or more from every source at
#: least (the catalogue's own share where it is larger): the least crowded level is split by
#: that distance when both sides hold 2 x ``MIN_PER_BIN`` injections
#: (:attr:`.calibration.SNRCalibration.near`), and on a crowded frame (M13: 12 % of the matched
#: positions) the isolated side would not fill; each side keeps the catalogue's distances
FAR_SHARE = 0.45


def held_out_regions(sim: dict, is_val: np.ndarray, n_images: int) -> list[float | None]:
    """Per exposure, the lowest row ``y`` of its held-out part (0: the whole exposure
    validates; None: none of it does), from the training split ``is_val`` of the stamps."""
    exp = np.asarray(sim["exposure"])
    y = np.asarray(sim["y"], float)
    out: list[float | None] = []
    for j in range(n_images):
        sel = exp == j
        if not sel.any() or not is_val[sel].any():
            out.append(None)
        elif is_val[sel].all():
            out.append(0.0)
        else:
            out.append(float(np.min(y[sel & is_val])))
    return out


def injection_calibration(net, card: dict, images: list, catalogs: list,
                          zero_points: list[float] | None, regions: list[float | None], *,
                          gs, seed: int, bins: int = 6, target: int = TARGET_INJECTIONS,
                          n_per_image: int = 40, max_realisations: int = 60,
                          min_injections: int = MIN_INJECTIONS, mag_scatter: float = 0.0,
                          score: str = "coverage", shrink_n: float = 0.0,
                          crowd_levels: int = CROWD_LEVELS, placement: str = "empty",
                          say=None) -> dict:
    """Inject galaxies into the held-out ``regions`` (:func:`held_out_regions`) of ``images``
    (with their catalogue rows ``catalogs`` and zero points), measure them with a
    :class:`LumosPhotometer` of ``net`` + ``card`` without calibration, and fit the
    with-magnitude :class:`SNRCalibration` (``bins`` bins) to the injected fluxes: one for all
    frames, and one per instrument (:func:`instrument_key`) when the frames come from several.

    The injections (``skysub inject`` conventions: Sérsic galaxies, SNR 5-500 log-uniform in
    an 8 px aperture, the model's PSF, catalogue shapes with a pipeline's errors, ``mag = zp -
    2.5 log10(flux)``) use seeds no training stamp used; about ``target`` per instrument.
    Realisations alternate between two halves: the calibration fitted on the even ones is
    checked on the odd ones (``check``: pull width, PIT KS p and median relative error there
    with the validation calibration and with the injection one), and the calibrations returned
    are fitted on all of them.  ``mag_scatter``: the injected rows' catalogue magnitudes get
    this Gaussian error [mag] (0: exact, as ``skysub inject``).  ``score``: how each bin is
    fitted (:func:`fit_snr_calibration`; ``"coverage"``, the default: the central 68 %
    intervals; ``"log"``: the likelihood, which the tails of real frames' errors widen).
    ``shrink_n``: each bin shrunk towards the global fit (:func:`fit_snr_calibration`; 0 off).
    ``crowd_levels``: crowded levels at most, each with its own calibration
    (:func:`.calibration.crowd_edges`; 1: one crowded level).  The check halves' calibrations
    have the bins and the crowding levels of the calibration they check (fitted on all the
    injections), not the fewer that half the rows alone would give: the check tests the
    calibration that is kept.  ``placement`` (:data:`PLACEMENTS`): ``"catalogue"`` draws the
    positions so that their nearest catalogued source is as near as the catalogue sources'
    own nearest neighbours are (:func:`draw_matched_positions`), ``"empty"`` at 15 px from
    every catalogued source (the default).  Every fit is split by the injections' distance to
    their nearest other source first, at :data:`.calibration.NEAR_PX`, where each side holds
    2 x :data:`MIN_PER_BIN` injections (:attr:`.calibration.SNRCalibration.near`; only
    ``"catalogue"`` puts injections nearer).

    Returns ``{"calibration": SNRCalibration | None, "instruments": {key: SNRCalibration},
    "n_injections", "n_realisations", "n_images", "per_instrument": {key: {"n_injections",
    "check"}}, "check": {...}, "placement", "crowd_edges" (of the isolated side where split),
    "near" (where split: ``near_px`` and the near side's ``crowd_edges``), "nn_distance":
    {"injections", "catalogue"}
    (5/25/50/75/95 % quantiles [px] of the nearest-neighbour distances), "note"}``;
    ``calibration`` is None (and ``note`` says why) with fewer than ``min_injections`` usable
    injections, and an instrument with fewer gets none of its own (the pooled one applies)."""
    from .photometer import LumosPhotometer

    if placement not in PLACEMENTS:
        raise InputError(f"injection_calibration: placement must be one of {PLACEMENTS}, got "
                         f"{placement!r}")
    say = say or (lambda *a: None)
    phot = LumosPhotometer((copy.deepcopy(net), card), device="cpu")
    d, done, r, n_images = collect_injections(phot, images, catalogs, zero_points, regions,
                                              gs=gs, seed=seed, target=target,
                                              n_per_image=n_per_image,
                                              max_realisations=max_realisations,
                                              mag_scatter=mag_scatter,
                                              placement=placement)
    n_done = int(sum(done.values()))
    out: dict[str, Any] = {"calibration": None, "instruments": {}, "n_injections": n_done,
                           "n_realisations": int(r), "n_images": n_images, "check": {},
                           "per_instrument": {}, "placement": placement, "note": ""}
    if d is not None:
        q = [5, 25, 50, 75, 95]
        out["nn_distance"] = {
            k: [round(float(v), 2) for v in np.percentile(x[np.isfinite(x)], q)]
            if np.isfinite(x).any() else [] for k, x in (("injections", d["sep"]),
                                                          ("catalogue", d.pop("nn_catalogue")))}
    need = min(int(min_injections), int(target))
    if n_done < need:
        out["note"] = (f"only {n_done} injections fitted in the held-out parts of the frames "
                       f"(need {need}): the validation calibration is kept")
        return out
    y = d["f"] / d["unit"]
    c = d["crowding"] if np.isfinite(d["crowding"]).all() else None

    def fit(sel, like=None):
        """The calibration fitted on the rows ``sel``; with ``like`` (the calibration it
        checks) that one's bins and crowding levels."""
        return fit_snr_calibration(d["a"][sel], d["m"][sel], d["s"][sel], y[sel],
                                   truncated=True, n_bins=bins, min_per_bin=MIN_PER_BIN,
                                   c=None if c is None else c[sel], score=score,
                                   shrink_n=shrink_n, crowd_levels=crowd_levels, like=like,
                                   d=d["sep"][sel])

    every = np.ones(len(y), bool)
    even, odd = d["half"] == 0, d["half"] == 1
    groups = [g for g in done if done[g] >= need] if len(done) > 1 else []
    out["calibration"] = fit(every)
    out["crowd_edges"] = _edges(out["calibration"])
    if out["calibration"].near is not None:  # split by distance: the near side's own levels
        out["near"] = {"near_px": out["calibration"].near_px,
                       "crowd_edges": _edges(out["calibration"].near)}
    out["instruments"] = {g: fit(d["group"] == g) for g in groups}
    # the check: calibrations fitted on the even realisations, scored on the odd ones (each
    # instrument with its own where it has one, as the photometer applies them), with the
    # structure of the calibrations kept
    check: dict[str, Any] = {"n_fit": int(even.sum()), "n_check": int(odd.sum())}
    if even.sum() >= need // 2 and odd.sum() >= 50:
        pooled = fit(even, out["calibration"])
        own = {g: fit(even & (d["group"] == g), out["instruments"][g]) for g in groups
               if (even & (d["group"] == g)).sum() >= need // 2}
        check["validation"] = _scores(d, odd, lambda g: phot.sigma_scale, phot.estimator, c)
        check["injection"] = _scores(d, odd, lambda g: own.get(g, pooled), phot.estimator, c)
        for g in done:
            sel = odd & (d["group"] == g)
            if sel.sum() >= 50:
                out["per_instrument"][g] = {
                    "n_injections": int(done[g]), "own_calibration": g in out["instruments"],
                    "check": {"validation": _scores(d, sel, lambda g: phot.sigma_scale,
                                                    phot.estimator, c),
                              "injection": _scores(d, sel, lambda g: own.get(g, pooled),
                                                   phot.estimator, c)}}
    out["check"] = check
    return out


def _edges(cal) -> list[float]:
    """The lower edges of the crowding levels of a calibration chain
    (:func:`.calibration.crowd_edges`)."""
    out = []
    while cal is not None and cal.crowded is not None:
        out.append(round(float(cal.crowd_c), 5))
        cal = cal.crowded
    return out


def collect_injections(phot, images: list, catalogs: list, zero_points: list[float] | None,
                       regions: list[float | None], *, gs, seed: int,
                       target: int = TARGET_INJECTIONS, n_per_image: int = 40,
                       max_realisations: int = 60, mag_scatter: float = 0.0,
                       placement: str = "empty"
                       ) -> tuple[dict | None, dict[str, int], int, int]:
    """The injections of :func:`injection_calibration`, measured by ``phot`` (a
    :class:`LumosPhotometer`) without calibration: ``(d, done, n_realisations, n_images)``,
    ``d`` the usable injections' raw mixtures ``a, m, s`` (normalised units), ``unit``,
    ``crowding``, true flux ``f``, aperture ``snr``, the check ``half``, the instrument
    ``group``, ``sep`` (the distance to the nearest other source, catalogued or injected) and
    ``nn_catalogue`` (the catalogue sources' own nearest-neighbour distances, one row per
    source and realisation) (None when none fitted); ``done`` the count per instrument;
    ``placement`` as :func:`injection_calibration`'s."""
    from ...inject.core import InjectionSettings, merged_catalog, sky_sigma
    from ...simulate.galaxies import psf_for

    psf = psf_for(gs)
    settings = InjectionSettings(kind="galaxy", n_per_image=int(n_per_image), snr=(5.0, 500.0),
                                 radius=8.0, psf_fwhm=float(gs.psf_fwhm), psf_kind="moffat",
                                 min_separation=15.0, shape_scatter=True)
    frames = []
    for j, (im, cat) in enumerate(zip(images, catalogs, strict=True)):
        y0 = regions[j]
        if y0 is None:
            continue
        hold = im
        if y0 > 0:  # only the held-out rows take injections
            rows = np.arange(im.shape[0])[:, None] >= y0
            hold = replace(im, mask=im.mask | ~np.broadcast_to(rows, im.shape))
        try:
            noise = sky_sigma(im)
        except Exception:  # noqa: BLE001 -- a frame whose noise cannot be measured is skipped
            continue
        zp = None if not zero_points else float(zero_points[j])
        frames.append((instrument_key(im), im, hold, cat, noise, zp))
    parts: list[dict] = []
    done: dict[str, int] = {f[0]: 0 for f in frames}
    r = 0
    while frames and min(done.values()) < target and r < max_realisations:
        for key, im, hold, cat, noise, zp in frames:
            if done[key] >= target:
                continue
            rng = np.random.default_rng([int(seed), r, 0x1A7EC7, len(parts)])
            image, icat, f = _inject(im, hold, cat, settings, psf, noise,
                                     25.0 if zp is None else zp, gs.oversample, rng,
                                     matched=placement == "catalogue")
            m = len(f)
            if m == 0:
                continue
            if mag_scatter > 0:
                icat["mag"] = icat["mag"] + rng.normal(0.0, mag_scatter, m)
            full = merged_catalog(cat, icat)
            n0 = len(full) - m
            phot.zeropoint = zp
            mix = phot._mixtures(image, np.asarray(full["x"], float),
                                 np.asarray(full["y"], float), np.asarray(full["mag"], float),
                                 full, calibrate=False, rows=np.arange(n0, len(full)))
            good = mix["good"]
            ng = int(good.sum())
            fx, fy = np.asarray(full["x"], float), np.asarray(full["y"], float)
            parts.append({k: np.asarray(mix[k])[good] for k in ("a", "m", "s", "unit",
                                                               "crowding")}
                         | {"f": f[good], "half": np.full(ng, r % 2),
                            "group": np.full(ng, key, dtype=object),
                            "snr": (f / (noise * np.sqrt(np.pi * settings.radius ** 2)))[good],
                            "sep": nearest_distance(fx, fy, np.arange(n0, len(fx)))[good],
                            "x": fx[n0:][good], "y": fy[n0:][good],
                            "nn_catalogue": nearest_distance(fx[:n0], fy[:n0])})
            done[key] += ng
        r += 1
    d = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else None
    return d, done, int(r), len(frames)


def _scores(d: dict, sel: np.ndarray, cal_for, estimator: str, c) -> dict:
    """Pull width (sigma68 of (estimate - truth) / sigma68), PIT KS p and median relative
    error of the rows ``sel`` of the injections ``d``, each instrument's rows with the
    calibration ``cal_for(instrument)`` (with the magnitude: truncated at 0)."""
    from ...metrics import pit_gaussian_mixture, pit_uniformity
    from ...stats import sigma68

    idx = np.flatnonzero(sel)
    a, m, s = d["a"][idx].copy(), d["m"][idx].copy(), d["s"][idx].copy()
    g = d["group"][idx]
    for key in np.unique(g):
        k = g == key
        a[k], m[k], s[k] = _calibrated(a[k], m[k], s[k], cal_for(key), None,
                                       None if c is None else c[idx][k], d["sep"][idx][k])
    u = d["unit"][idx][:, None]
    summ = mixture_summary(a, m * u, s * u, lower=0.0)
    f = d["f"][idx]
    est = summ[f"flux_{estimator}"]
    err = summ["flux_std"] if estimator == "mean" else summ["flux_sigma68"]
    pit = pit_gaussian_mixture(a, m * u, s * u, f, lower=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pull = (est - f) / err
        rel = (est - f) / f
    fin = np.isfinite(pull)
    return {"pull_sigma68": round(float(sigma68(pull[fin])), 4),
            "pit_ks_pvalue": round(float(pit_uniformity(pit).pvalue), 6),
            "bias": round(float(np.median(rel[np.isfinite(rel)])), 5)}


def _inject(im, hold, cat, settings, psf, noise: float, zp: float, oversample: int, rng, *,
            matched: bool = False):
    """Galaxies of known flux added to a copy of ``im`` at empty positions of ``hold`` (``im``
    with the rows not held out masked) by ``skysub inject``'s conventions
    (:func:`skysub.inject.core.draw_positions`, SNR log-uniform in an 8 px aperture, Sérsic
    shapes from ``settings``' ranges, the injected light's photon noise), rendered by the
    training's renderer (Gauss-Legendre, ``oversample`` nodes per pixel side); ``matched``:
    at positions of :func:`draw_matched_positions` instead.  Returns the
    image (the frame's own mask), the catalogue rows (``id, x, y, mag`` and shapes with a
    pipeline's errors) and the true fluxes."""
    from astropy.table import Table

    from ...inject.core import SHAPE_SCATTER, add_stamps, draw_positions
    from ...simulate.galaxies import render_galaxies

    cat_xy = ((np.asarray(cat["x"], float), np.asarray(cat["y"], float))
              if cat is not None and len(cat) else (np.zeros(0), np.zeros(0)))
    draw = draw_matched_positions if matched else draw_positions
    x, y = draw(hold, cat_xy, int(settings.n_per_image), settings, rng)
    m = x.size
    if m == 0:
        return im, Table(), np.zeros(0)
    snr = np.exp(rng.uniform(np.log(settings.snr[0]), np.log(settings.snr[1]), m))
    flux = snr * noise * np.sqrt(np.pi * settings.radius ** 2)
    r50 = np.exp(rng.uniform(np.log(settings.r50[0]), np.log(settings.r50[1]), m))
    n_ = rng.uniform(*settings.sersic_n, m)
    ba = rng.uniform(*settings.ba, m)
    th = rng.uniform(0.0, 180.0, m)
    xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
    stamps = render_galaxies(flux, r50, n_, ba, th, x - xi, y - yi, psf, 59, int(oversample))
    model = np.zeros(im.shape)
    add_stamps(model, stamps, xi, yi)
    gain = im.meta.source_gain  # no gain in the header: no shot noise
    model = model + rng.normal(0.0, 1.0, model.shape) * np.sqrt(np.clip(model, 0, None) / gain)
    image = replace(im, data=im.data + model, mask=im.mask.copy())
    e = SHAPE_SCATTER
    with np.errstate(divide="ignore"):
        mag = zp - 2.5 * np.log10(flux)
    icat = Table({"id": 2_000_000_000 + np.arange(m), "x": x, "y": y, "mag": mag,
                  "r50": r50 * np.exp(rng.normal(0, e["r50"], m)),
                  "sersic_n": np.clip(n_ + rng.normal(0, e["sersic_n"], m), 0.3, 8.0),
                  "ba": np.clip(ba + rng.normal(0, e["ba"], m), 0.05, 1.0),
                  "theta": (th + rng.normal(0, e["theta"], m)) % 180.0})
    return image, icat, flux


def draw_matched_positions(image, cat_xy: tuple[np.ndarray, np.ndarray], n: int, settings,
                           rng: np.random.Generator, *, floor: float = PLACEMENT_FLOOR,
                           far_share: float = FAR_SHARE, far_px: float = NEAR_PX
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` positions on ``image`` (its mask, ``settings.edge_margin`` and
    ``clear_radius`` as :func:`skysub.inject.core.draw_positions`) whose distance to the
    nearest catalogued source (``cat_xy``) follows the distribution of the catalogue sources'
    own nearest-neighbour distances (those below ``floor`` counted at ``floor``; none nearer
    than ``floor``), with ``far_share`` of them at least at ``far_px`` or more (the
    distribution's parts below and above ``far_px`` reweighted, each keeping its shape, where
    the catalogue has fewer there: the isolated calibration level then fills).

    Uniform candidates are weighted by the ratio of that distribution to their own in
    :data:`NN_BINS` log-spaced distance bins (importance resampling), taken in a weighted
    random order (keys ``E / w``, ``E`` exponential: a draw without replacement in proportion
    to ``w``) and kept greedily while each kept position's nearest source stays the catalogued
    one it was drawn for (two injections are at least as far apart as either's catalogued
    neighbour, and ``floor``): the distances are those the photometer sees.  Reproducible from
    ``rng``; fewer than ``n`` come back when the frame has no more room, and a frame with fewer
    than 2 catalogued sources gets :func:`~skysub.inject.core.draw_positions`' empty ones."""
    from scipy.spatial import cKDTree

    from ...inject.core import _distance_to_mask, draw_positions

    cx, cy = (np.asarray(v, float) for v in cat_xy)
    fin = np.isfinite(cx) & np.isfinite(cy)
    cx, cy = cx[fin], cy[fin]
    if cx.size < 2:
        return draw_positions(image, (cx, cy), n, settings, rng)
    ny, nx = image.shape
    m = float(settings.edge_margin)
    if nx - 1 - 2 * m <= 0 or ny - 1 - 2 * m <= 0 or n <= 0:
        return np.zeros(0), np.zeros(0)
    tree = cKDTree(np.column_stack([cx, cy]))
    target = np.maximum(tree.query(np.column_stack([cx, cy]), k=2)[0][:, 1], floor)
    n_cand = max(400 * int(n), 20000)
    x = rng.uniform(m, nx - 1 - m, n_cand)
    y = rng.uniform(m, ny - 1 - m, n_cand)
    clear = settings.clear_radius if settings.clear_radius is not None else settings.radius + 2
    xi = np.clip(np.rint(x).astype(int), 0, nx - 1)
    yi = np.clip(np.rint(y).astype(int), 0, ny - 1)
    d = tree.query(np.column_stack([x, y]))[0]
    ok = (_distance_to_mask(image.mask)[yi, xi] > clear) & (d >= floor)
    x, y, d = x[ok], y[ok], d[ok]
    if x.size == 0:
        return np.zeros(0), np.zeros(0)
    edges = np.geomspace(floor, max(float(target.max()), float(d.max())) * 1.0001, NN_BINS + 1)
    if edges[0] < far_px < edges[-1]:  # an edge at far_px: the share below and above it
        edges = np.unique(np.r_[edges, float(far_px)])
    t_h = np.histogram(target, edges)[0] / target.size
    far = edges[:-1] >= far_px  # the bins at far_px or more
    share = float(t_h[far].sum())
    if 0.0 < share < far_share and far.any() and share < 1.0:
        t_h = np.where(far, t_h * far_share / share, t_h * (1.0 - far_share) / (1.0 - share))
    q_h = np.histogram(d, edges)[0] / d.size
    ratio = np.divide(t_h, q_h, out=np.zeros_like(t_h), where=q_h > 0)
    w = ratio[np.clip(np.searchsorted(edges, d, side="right") - 1, 0, edges.size - 2)]
    with np.errstate(divide="ignore"):
        key = rng.exponential(1.0, x.size) / w
    order = np.argsort(key, kind="stable")
    order = order[np.isfinite(key[order])]
    keep: list[int] = []
    for i in order:  # greedy, in the weighted random order (reproducible); n is small
        if keep:
            k = np.asarray(keep)
            sep = np.hypot(x[k] - x[i], y[k] - y[i])
            if np.any(sep < np.maximum(np.maximum(d[k], d[i]), floor)):
                continue
        keep.append(int(i))
        if len(keep) == n:
            break
    k = np.asarray(keep, int)
    return x[k], y[k]
