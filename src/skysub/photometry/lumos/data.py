"""Lumos' network inputs: tensors from cutouts, model images and the neighbour channel
(:func:`_tensors`), training tensors from Teahupoo-like stamps (:func:`training_tensors`), and the
stamps themselves from simulated or user exposures (:func:`_stamp_data`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ...errors import InputError
from ...stamps import cutouts
from .settings import LumosSettings

log = logging.getLogger("skysub")


def _colnames(catalog) -> list[str]:
    return list(getattr(catalog, "colnames", None) or catalog.keys())


def _catalog_mag(catalog, n: int) -> np.ndarray:
    """The catalogue's reference magnitudes (NaN where absent): the neighbour-channel weights,
    used in both Lumos modes (they describe the neighbours, not the target's prior)."""
    names = getattr(catalog, "colnames", None) or (list(catalog) if catalog is not None else [])
    if "mag" not in names:
        return np.full(n, np.nan)
    return np.ma.filled(np.ma.asarray(catalog["mag"], dtype=float), np.nan).astype(float)


def _rows(catalog, ii: np.ndarray):
    if hasattr(catalog, "colnames"):
        return catalog[ii]
    return {k: np.asarray(v)[ii] for k, v in catalog.items()}


def _tensors(data, valid, models, x, y, shape, mag, key, torch, neighbours=None,
             joint: bool = True, ratio: bool = False, ratio_mag=None,
             deblend: bool = False, nomag: bool = False) -> dict:
    """Network tensors from cutouts (NaN invalid), model images, the neighbour channel (or
    None) and per-source metadata.  ``ratio``: the catalogue flux-ratio deblend
    (``LumosArch.neighbour_ratio``) with the targets' magnitudes ``ratio_mag`` (default
    ``mag``; NaN or None = unknown: no deblend, or with ``deblend`` the joint fit's,
    ``LumosArch.data_deblend``).  ``nomag``: also ``feats_nomag``, every row's features with
    its magnitude unknown (the data-only mode's inputs; same pass)."""
    from ...nn.lumos import stamp_features
    from ...simulate.galaxies import reference_flux

    n = len(x)
    d = torch.from_numpy(np.nan_to_num(np.asarray(data, np.float32)))
    v = torch.from_numpy(np.asarray(valid, bool))
    nb = None if neighbours is None else torch.from_numpy(np.asarray(neighbours, np.float32))
    mg = np.full(n, np.nan) if mag is None else np.asarray(mag, float)
    ref = None
    if ratio:
        rm = mg if ratio_mag is None else np.asarray(ratio_mag, float)
        ref = torch.from_numpy(reference_flux(rm, unknown=np.nan))
    both = nomag and ref is not None and nb is not None and not joint  # else they are equal
    xin, feats, unit, ok, *rest = stamp_features(
        d, v, torch.from_numpy(np.asarray(models, np.float32)), nb, joint=joint, ref_flux=ref,
        data_deblend=deblend, also_unknown=both)
    ny, nx = shape
    coords = np.column_stack([np.asarray(x, float) / max(nx - 1, 1) * 2 - 1,
                              np.asarray(y, float) / max(ny - 1, 1) * 2 - 1])
    return {"x": xin.to(torch.float16), "feats": feats,
            "coords": torch.from_numpy(np.nan_to_num(coords).astype(np.float32)),
            "mag": torch.from_numpy(np.nan_to_num(mg, nan=0.0).astype(np.float32)),
            "has_mag": torch.from_numpy(np.isfinite(mg).astype(np.float32)),
            "key": torch.from_numpy(np.broadcast_to(np.asarray(key, np.int64), (n,)).copy()),
            "unit": unit.numpy(), "ok": ok.numpy()} | (
                {"feats_nomag": rest[0] if both else feats} if nomag else {})


# -- training tensors -----------------------------------------------------------------------------

def training_tensors(sim: dict, keys: list[str], *, chunk: int = 2048,
                     neighbours: bool = False, joint: bool = True, ratio: bool = False,
                     hidden_mag: np.ndarray | None = None, deblend: bool = False) -> dict:
    """Tensors for :class:`skysub.nn.trainer.Trainer` from :func:`simulate_galaxy_stamps` output
    (``keys`` is extended with new band x epoch entries), with the neighbour channel when
    ``neighbours`` (and the flux-ratio deblend when ``ratio``, except for rows in
    ``hidden_mag``: stamps shown without their magnitude, which get the joint fit's deblend
    with ``deblend``).  Adds ``y`` (normalised true flux),
    ``unit`` and ``ok``, and with ``ratio`` ``feats_nomag``: every row's features as the
    data-only mode computes them (the magnitude hidden), for its validation metrics."""
    import torch

    from ...simulate.trainingdata import key_name

    kidx = []
    for b, e in zip(sim["band"], sim["epoch"], strict=True):
        k = key_name(b, e)
        if k not in keys:
            keys.append(k)
        kidx.append(keys.index(k))
    kidx = np.asarray(kidx)
    n = len(kidx)
    out: dict = {}
    unit, ok = np.empty(n), np.empty(n, bool)
    for s in range(0, n, chunk):  # written into preallocated tensors: no second copy
        sl = slice(s, s + chunk)
        st = sim["stamps"][sl]
        rm = sim["mag"][sl] if hidden_mag is None else \
            np.where(np.asarray(hidden_mag, bool)[sl], np.nan, sim["mag"][sl])
        t = _tensors(st, np.isfinite(st), sim["models"][sl], np.zeros(len(st)),
                     np.zeros(len(st)), (1, 1), sim["mag"][sl], kidx[sl], torch,
                     neighbours=sim["neighbours"][sl] if neighbours else None, joint=joint,
                     ratio=ratio, ratio_mag=rm, deblend=deblend, nomag=ratio)
        # CCD coordinates from each cutout's own exposure size
        cx = sim["x"][sl] / np.maximum(sim["nx"][sl] - 1, 1) * 2 - 1
        cy = sim["y"][sl] / np.maximum(sim["ny"][sl] - 1, 1) * 2 - 1
        t["coords"] = torch.from_numpy(np.column_stack([cx, cy]).astype(np.float32))
        for k in ("x", "feats", "coords", "mag", "has_mag", "key", "feats_nomag"):
            if k not in t:
                continue
            if k not in out:
                out[k] = torch.empty((n, *t[k].shape[1:]), dtype=t[k].dtype)
            out[k][sl] = t[k]
        unit[sl], ok[sl] = t["unit"], t["ok"]
    if "cat_flux" in sim:  # the noise-relative magnitude (magnitudes.py)
        from .magnitudes import noise_mag

        nm = noise_mag(sim["cat_flux"], unit)
        out["mag"] = torch.from_numpy(np.nan_to_num(nm, nan=0.0).astype(np.float32))
        out["has_mag"] = out["has_mag"] * torch.from_numpy(np.isfinite(nm).astype(np.float32))
    with np.errstate(invalid="ignore", divide="ignore"):
        y = sim["flux_true"] / unit
    ok &= np.isfinite(y) & np.isfinite(unit) & (unit > 0)
    out["y"] = torch.from_numpy(np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
                                .astype(np.float32))
    out["unit"] = unit
    out["ok"] = ok
    return out


TENSOR_KEYS = ("x", "feats", "coords", "mag", "has_mag", "key", "y")


def torch_where_mag(batch):
    import torch

    return torch.where(batch["has_mag"] > 0, batch["mag"], torch.full_like(batch["mag"], 99.0))


def _subset(t: dict, sel: np.ndarray) -> dict:
    import torch

    idx = torch.from_numpy(np.flatnonzero(sel))
    return {k: t[k][idx] for k in (*TENSOR_KEYS, "feats_nomag") if k in t}


def _neighbour_channel(nmap: np.ndarray, x: np.ndarray, y: np.ndarray, mag: np.ndarray,
                       models: np.ndarray, cutter=None) -> np.ndarray:
    """The neighbour channel: the catalogue's expected image ``nmap`` cut out around each
    source, minus the source's own model (``models``, unit total, stamp-sized) times its
    reference flux from ``mag``.  Sources without a position get zeros.  ``cutter``: a float64
    :class:`skysub.stamps.WindowCutter` of ``nmap`` with zero fill (the same numbers, faster
    for many chunks of one image)."""
    from ...simulate.galaxies import reference_flux

    ok = np.isfinite(x) & np.isfinite(y)
    S = models.shape[-1]
    xs, ys = np.where(ok, x, -1e9), np.where(ok, y, -1e9)
    if cutter is not None:
        near = cutter(xs, ys)[0]
    else:
        near = np.nan_to_num(cutouts(nmap, xs, ys, S).data)
    return near - reference_flux(mag)[:, None, None] * models


def _stamp_data(images, catalog, cfg, ls: LumosSettings, gs, net_keys: list[str], *,
                simulated: bool, seed: int, quiet: bool, say, zeropoint: float | None = None,
                zeropoint_keys: tuple[str, ...] | None = None, max_masked: float = 0.5,
                photometric_system: str = "AB",
                use_zeropoints: bool = True, **read_kwargs: Any) -> dict:
    """Teahupoo-like stamps and their network tensors (training, and ``--calibrate-only``):
    from ``ls.n_exposures`` exposures of the built-in simulator (``simulated``) or from the
    user's ``images`` + ``catalog``; ``net_keys`` (band x epoch) is extended.  Returns a dict with
    ``sim`` (per-stamp truths; the pixel arrays freed), ``tensors``, ``free`` (prior-free
    stamps, shown without their magnitude), ``ims``, ``cats``, ``nbcats`` and ``summary``.

    User exposures: each one's zero point (``zeropoint``, a header keyword of
    ``zeropoint_keys`` or a fit; :mod:`.magnitudes`) sets the injected fluxes, and the network
    reads the noise-relative magnitude.  Their stamps with more than ``max_masked`` of their
    pixels invalid (NaN, masked, off the frame), or without a usable noise level, are rejected and
    counted in the summary (``n_rejected_masked``).  ``use_zeropoints`` False: the old
    convention (``settings.zero_point``; recalibrating models that read catalogue magnitudes)."""
    import torch

    from ...io import catalog_for_image, read_catalog
    from ...simulate.galaxies import band_system_catalog, simulate_galaxy_stamps
    from ...simulate.trainingdata import galaxy_pool, simulated_exposures

    rng = np.random.default_rng(seed)
    if simulated:
        say(f"simulating {ls.n_exposures} exposures with the built-in simulator "
            f"([simulate] of {cfg.name})")
        exps, fieldcat = simulated_exposures(ls.n_exposures, config=cfg.simulate, seed=seed)
        pool = galaxy_pool(fieldcat, rng)
        ims = [e[0] for e in exps]
        cats = []
        # the simulator's own sources in the injected galaxies' band system
        bandcat = band_system_catalog(fieldcat, cfg.simulate, gs)
        for im, _xy, _bg, _truth in exps:
            c = bandcat.copy()
            cx, cy = im.wcs.all_world2pix(np.asarray(c["ra"]), np.asarray(c["dec"]), 0)
            c["x"], c["y"] = cx, cy
            cats.append(c)
        pairs_xy = [(np.asarray(c["x"]), np.asarray(c["y"])) for c in cats]
        zps = None
        data_summary = {"source": "built-in simulator", "config": cfg.name,
                        "n_exposures": int(ls.n_exposures), "seed": int(seed)}
    else:
        from ...io import expand_paths, iter_images

        if not images:
            raise InputError("give training exposures (IMAGE...) or --simulated")
        if catalog is None:
            raise InputError("--catalog is required (empty positions, galaxy shapes)")
        paths = expand_paths(images)
        cat_all = catalog if hasattr(catalog, "colnames") else read_catalog(catalog)
        read_kwargs.setdefault("keys", cfg.header)
        ims = list(iter_images(paths, quiet=quiet, **read_kwargs))
        cats = [catalog_for_image(cat_all, im) for im in ims]
        pairs_xy = [(np.asarray(c["x"], float), np.asarray(c["y"], float)) for c in cats]
        pool = galaxy_pool(cat_all, rng)
        from .magnitudes import exposure_zeropoint

        zps = [exposure_zeropoint(im, c, given=zeropoint, header_keys=zeropoint_keys, say=say,
                                  photometric_system=photometric_system)
               for im, c in zip(ims, cats, strict=True)] if use_zeropoints else []
        data_summary = {"source": "user exposures", "n_exposures": len(paths),
                        "images": [p.name for p in paths[:50]],
                        "zero_points": [{"image": im.name, **_plain(zp.as_dict())}
                                        for im, zp in zip(ims[:50], zps, strict=False)]}
    # the neighbour channel shows what a user's catalogue holds: its catalogued sources
    nbcats = [c[np.asarray(c["catalogued"], bool)] if "catalogued" in c.colnames else c
              for c in cats]
    items = list(zip(ims, pairs_xy, nbcats, strict=True)) if ls.neighbours else \
        list(zip(ims, pairs_xy, strict=True))
    sim = simulate_galaxy_stamps(items, ls.stamps_per_image, gs,
                                 galaxies=pool, seed=seed + 1, quiet=quiet,
                                 neighbour_channel=ls.neighbours,
                                 zero_points=[z.value for z in zps] if zps else None)
    # stamps mostly masked (NaN chips, frame edges) teach nothing: rejected, and counted
    frac_bad = np.mean(~np.isfinite(sim["stamps"]), axis=(1, 2))
    # (user exposures only: the built-in simulator's stamps, and so the shipped models'
    # training, are as before)
    too_masked = (frac_bad > max_masked) & (not simulated)
    # one network, two modes (LumosPhotometer use_mag): stamps whose flux was drawn from the
    # locally flat density are shown without their magnitude (it says nothing about them)
    free = np.asarray(sim["prior_free"], bool)
    t = training_tensors(sim, net_keys, neighbours=ls.neighbours, joint=ls.neighbour_fit,
                         ratio=ls.neighbour_ratio, hidden_mag=free, deblend=ls.data_deblend)
    for k in ("stamps", "models", "neighbours"):  # the tensors hold them now (GBs)
        sim.pop(k, None)
    t["has_mag"][torch.from_numpy(free)] = 0.0
    n_bad_unit = int((~t["ok"] & ~too_masked).sum())
    t["ok"] = t["ok"] & ~too_masked
    data_summary["n_stamps"] = int(len(free))
    data_summary["n_rejected_masked"] = int(too_masked.sum())
    data_summary["n_rejected_unusable"] = n_bad_unit
    if too_masked.any() or n_bad_unit:
        say(f"rejected {int(too_masked.sum())} stamps with more than {max_masked:.0%} of their "
            f"pixels masked or NaN and {n_bad_unit} without a usable noise level, of "
            f"{len(free)}")
    if not t["ok"].any():
        raise InputError("no usable training stamps: every cutout is masked, NaN or flat "
                         "(check the exposures' data and masks)"
                         + small_frames_note(ims, gs.stamp_size))
    return {"sim": sim, "tensors": t, "free": free, "ims": ims, "cats": cats,
            "nbcats": nbcats, "summary": data_summary,
            "zero_points": [float(z.value) for z in zps] if zps else None}


def small_frames_note(ims, size: int) -> str:
    """'' or '; FILE is NY x NX px, smaller than a SIZE px stamp' for the frames a stamp cannot
    fit in (the usual reason no stamp could be drawn)."""
    small = [f"{im.name} is {im.data.shape[0]} x {im.data.shape[1]} px" for im in ims
             if min(im.data.shape) < size]
    if not small:
        return ""
    more = f" (and {len(small) - 3} more)" if len(small) > 3 else ""
    return f"; {', '.join(small[:3])}{more}, smaller than a {size} px stamp"


def _plain(d: dict) -> dict:
    """Python floats (4 decimals), ints and strings only: model cards hold plain JSON."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        elif isinstance(v, (float, np.floating)):
            out[k] = round(float(v), 4)
        else:
            out[k] = str(v)
    return out
