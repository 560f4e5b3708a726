"""Training Lumos (``skysub train lumos``): the loss (:func:`make_loss`, eq. 8 / 10),
:func:`train_lumos`, the per-mode calibration of the model card, and :func:`recalibrate_lumos`
(``--calibrate-only``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from .calibration import _predict, _prior_knee, crowding, fit_snr_calibration, fit_width_factor
from .data import _stamp_data, _subset, small_frames_note, torch_where_mag
from .evaluation import evaluate_mixtures
from .magnitudes import NOISE_MAG, NOISE_MAG_DOC
from .pairs import find_pairs, fine_tune_pairs, pairs_from_exposures, read_pairs
from .settings import DEFAULT_MODEL, LumosSettings

#: training stamps drawn from the user's exposures at least (when --stamps-per-image is not set)
MIN_STAMPS = 8000

#: training defaults when fine-tuning a pre-trained model (``[lumos]`` and options override)
FINETUNE_DEFAULTS = {"epochs": 12, "lr": 3e-4}
#: early-stopping patience (epochs) when fine-tuning (from scratch: 6)
FINETUNE_PATIENCE = 4
#: settings that fix the architecture: a model to fine-tune brings its own unless the
#: ``[lumos]`` section or an option sets them
ARCH_SETTINGS = ("preset", "neighbours", "neighbour_fit", "neighbour_ratio", "data_deblend")


def _initial_model(init, section: dict, preset: str | None, stamp_size: int, *,
                   simulated: bool, say) -> tuple[Any, dict | None, str | None]:
    """``(model, card, None)`` to fine-tune, or ``(None, None, note)`` to train from scratch
    (``note``: why ``auto`` did not fine-tune; None when nothing was asked)."""
    from ...nn.modelfile import load_model

    if init is None or str(init).lower() == "none":
        return None, None, None
    auto = str(init) == "auto"
    if auto and simulated:
        return None, None, None
    name = DEFAULT_MODEL if auto else init
    model, card = load_model(name, kind="lumos")
    a = card["arch"]
    given = {k: section[k] for k in ARCH_SETTINGS if k in section}
    if preset is not None:
        given["preset"] = preset
    clash = [f"{k} {a.get(k)} (settings: {v})" for k, v in
             (("stamp_size", stamp_size), *given.items()) if a.get(k) != v]
    if not a.get("compress_feats", False):
        clash.append("compress_feats False (training uses True)")
    if clash:
        why = f"{name} does not fit the training settings: {'; '.join(clash)}"
        if auto:
            say(f"note: not fine-tuning {why}; training from scratch (--init none does so "
                "without this check)")
            return None, None, why
        raise InputError(f"--init {init}: {why}; change them or use --init none")
    return model.train(), card, None


def make_loss(faint_mag: float, knee: float = 0.0, weight_cap: float = 1.0):
    """``loss(model, batch)`` for the Trainer: eq. 8 (bright) / eq. 10 (faint).

    Prior-free rows (``has_mag`` 0) get the importance weight ``min((|y| + knee) / knee,
    weight_cap)`` (``knee`` in normalised flux units): their fluxes were drawn with density
    ``~ 1 / (|f| + knee)``, and the weight makes the effective training prior flat up to
    ``weight_cap`` knees, so the data-only mode learns the likelihood without a pull towards
    faint fluxes; they are normalised to a mean of 1 over the batch's prior-free rows.
    ``weight_cap`` 1 = unweighted."""
    import torch

    from ...nn.lumos import lumos_loss

    def loss(model, batch):
        a, m, s = model(batch["x"].float(), batch["feats"], batch["coords"], batch["mag"],
                        batch["has_mag"], batch["key"])
        mag = torch_where_mag(batch)
        free = batch["has_mag"] <= 0
        w = None
        if weight_cap > 1 and knee > 0 and bool(free.any()):
            raw = ((batch["y"].abs() + knee) / knee).clamp(max=weight_cap)
            # normalised over the prior-free rows: they keep their share of the batch (the
            # with-magnitude mode is not starved)
            w = torch.where(free, raw / raw[free].mean(), torch.ones_like(raw))
        return lumos_loss(a, m, s, batch["y"], mag, faint_mag=faint_mag, likelihood=free,
                          weight=w)

    return loss


def train_lumos(images, catalog, output: str | Path, *, config: Any = None,
                simulated: bool = False, n_exposures: int | None = None,
                stamps_per_image: int | None = None, epochs: int | None = None,
                batch_size: int | None = None, lr: float | None = None,
                preset: str | None = None, pairs: Any = None, seed: int = 0,
                device: str = "auto", threads: int | None = None, resume: bool = False,
                overwrite: bool = False, quiet: bool = False, command: str | None = None,
                description: str = "", zeropoint: float | None = None,
                zeropoint_keys: tuple[str, ...] | None = None, photometric_system: str = "AB",
                init: str | Path | None = "auto", **read_kwargs: Any) -> dict:
    """Train Lumos on Teahupoo-like simulations and write it (weights + card); return the card.

    Parameters
    ----------
    images : FITS exposures whose empty positions give the background cutouts (ignored with
        ``simulated``)
    catalog : catalogue (positions to avoid; joint galaxy shapes and magnitudes to draw from)
    output : model file (.pt); checkpoint ``<output>.ckpt``
    config : SurveyConfig (``[lumos]``; ``[simulate]`` with ``simulated``)
    simulated : background cutouts from ``n_exposures`` exposures of the built-in simulator
    pairs : None, "auto" (pairs of the same catalogued object in two exposures of the same
        band among the training exposures) or a table / path with ``id, image_1, image_2``:
        fine-tune the last layer on them (eq. 11-12) after the supervised training
    zeropoint, zeropoint_keys : user exposures: every exposure's zero point is ``zeropoint``,
        else the first header keyword of ``zeropoint_keys`` (default MAGZPT, MAGZERO, PHOTZP,
        ...), else a fit of the catalogue magnitudes (:mod:`.magnitudes`); recorded in the card
    init : the model to fine-tune: "auto" (default: the shipped ``lumos-paus`` for user
        exposures when its architecture fits the settings -- :data:`ARCH_SETTINGS` not set in
        ``[lumos]`` or ``preset`` are taken from it --, from scratch for ``simulated`` or with
        a one-line note when it does not fit), a model name or file (an error when it does not
        fit), or None / "none" (from scratch).  Band x epoch keys the model has not seen get
        the mean of its known embeddings and are trained; fine-tuning defaults to
        ``FINETUNE_DEFAULTS`` (lower learning rate, fewer epochs) and a patience of
        ``FINETUNE_PATIENCE``.  The card records it (``init``, ``init_note``)

    The card's ``quality`` says whether the model passed its own validation
    (:func:`model_quality`); the model is written either way.
    """
    import torch

    from ... import __version__
    from ...config import load_config
    from ...io import check_output
    from ...nn.device import seed_everything
    from ...nn.lumos import Lumos, LumosArch, flops_per_stamp
    from ...nn.modelfile import save_model
    from ...nn.trainer import TrainConfig, Trainer
    from ...simulate.galaxies import GalaxySimSettings, psf_for

    t0 = time.perf_counter()
    cfg = config or load_config()
    output = Path(output)
    if output.suffix != ".pt":
        raise InputError(f"--output must end in .pt, got {output}")
    inputs = [] if simulated else list(images or [])
    if catalog is not None and not hasattr(catalog, "colnames"):
        inputs.append(catalog)
    check_output(output, overwrite=overwrite or resume, inputs=inputs)
    if pairs is not None and not (isinstance(pairs, str) and pairs == "auto") \
            and not hasattr(pairs, "colnames"):
        pairs = read_pairs(pairs)  # before the training: a bad table fails at once
    section = dict(getattr(cfg, "lumos", {}) or {})
    if (stamps_per_image is None and "stamps_per_image" not in section and not simulated
            and images):  # few exposures: more stamps from each (>= ~8000 in all)
        from ...io import expand_paths

        n_img = max(len(expand_paths(images)), 1)
        stamps_per_image = int(min(4000, max(LumosSettings.stamps_per_image,
                                              np.ceil(MIN_STAMPS / n_img))))
    gs = GalaxySimSettings.from_config(section)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    init_model, init_card, init_note = _initial_model(init, section, preset, gs.stamp_size,
                                                      simulated=simulated, say=say)
    base = section
    if init_model is not None:  # the init's architecture; the fine-tuning schedule
        base = {**FINETUNE_DEFAULTS,
                **{k: init_card["arch"][k] for k in ARCH_SETTINGS}, **section}
    ls = LumosSettings.from_config(base, epochs=epochs, batch_size=batch_size, lr=lr,
                                   preset=preset, stamps_per_image=stamps_per_image,
                                   n_exposures=n_exposures)
    seed_everything(seed)
    keys: list[str] = list(init_card["inputs"]["keys"]) if init_model is not None else []
    if init_model is not None:
        say(f"fine-tuning {init_card.get('path', init)} (--init none trains from scratch)")
    data = _stamp_data(images, catalog, cfg, ls, gs, net_keys=keys, simulated=simulated, seed=seed,
                       quiet=quiet, say=say, zeropoint=zeropoint, zeropoint_keys=zeropoint_keys,
                       photometric_system=photometric_system,
                       **read_kwargs)
    sim, t, free = data["sim"], data["tensors"], data["free"]
    noise_mags = "cat_flux" in sim
    ims, cats, nbcats, data_summary = data["ims"], data["cats"], data["nbcats"], data["summary"]
    ok = t["ok"]
    is_val, val_note = split_stamps(sim, ls.val_fraction, seed)
    if val_note:
        say(f"note: {val_note}")
    tr, va = ok & ~is_val, ok & is_val
    if tr.sum() < 2 * ls.batch_size // 4 or va.sum() < 20:
        raise InputError(f"only {int(tr.sum())} training and {int(va.sum())} validation stamps "
                         "could be drawn (frames too small, crowded or masked?): give more or "
                         "larger exposures, or raise --stamps-per-image"
                         + small_frames_note(ims, gs.stamp_size))
    say(f"{tr.sum()} training and {va.sum()} validation stamps; keys: {', '.join(keys)}")
    if init_model is not None:
        n_old = len(init_card["inputs"]["keys"])
        arch = replace(init_model.arch, n_keys=len(keys))
        from ...nn.trainer import extend_key_embeddings  # (torch: only when fine-tuning)
        model = extend_key_embeddings(init_model, Lumos(arch), n_old)
        if keys[n_old:]:
            say(f"new band x epoch keys (embeddings start at the mean of the known ones): "
                f"{', '.join(keys[n_old:])}")
    else:
        arch = LumosArch.from_preset(ls.preset, stamp_size=gs.stamp_size, n_keys=len(keys),
                                     neighbours=ls.neighbours, compress_feats=True,
                                     neighbour_fit=ls.neighbour_fit,
                                     neighbour_ratio=ls.neighbour_ratio,
                                     data_deblend=ls.data_deblend)
        model = Lumos(arch)
    tc = TrainConfig(epochs=int(ls.epochs), batch_size=int(ls.batch_size), lr=float(ls.lr),
                     weight_decay=1e-4,
                     patience=FINETUNE_PATIENCE if init_model is not None else 6,
                     scheduler="plateau",
                     scheduler_kwargs={"factor": 0.3, "patience": 2}, grad_clip=10.0,
                     seed=seed, device=device, threads=threads, quiet=quiet)
    from ...nn.lumos import FLUX_UNIT

    loss = make_loss(ls.faint_mag, knee=gs.prior_free_knee / FLUX_UNIT,
                     weight_cap=ls.prior_free_weight_cap)
    trainer = Trainer(model, loss, tc, checkpoint=output.with_suffix(".ckpt"))
    hist = trainer.fit(_subset(t, tr), _subset(t, va), resume=resume)
    model = trainer.model.cpu().eval()
    # validation: the catalogue-like stamps (with and without their magnitude) and the
    # prior-free ones (the no-magnitude mode's calibration set)
    va_cat, va_free = va & ~free, va & free
    if va_cat.sum() == 0:
        va_cat = va
    vt = {**_subset(t, va_cat), "unit": t["unit"][va_cat]}
    ftrue, vmag = sim["flux_true"][va_cat], sim["mag"][va_cat]
    metrics = evaluate_mixtures(model, vt, ftrue, vmag)
    finetune = None
    if pairs is not None:
        if isinstance(pairs, str) and pairs == "auto":
            from astropy.table import Table, vstack

            rows = [Table({"id": np.asarray(c["id"]), "image": [im.name] * len(c),
                           "band": [str(im.meta.band)] * len(c)})
                    for im, c in zip(ims, cats, strict=True)]
            ptab = find_pairs(vstack(rows), seed=seed, max_pairs=ls.max_pairs)
            # keep galaxies on the CCD in both exposures
        else:
            ptab = pairs if hasattr(pairs, "colnames") else read_pairs(pairs)
        onccd = [c[np.asarray(c["on_image"], bool)] if "on_image" in c.colnames else
                 c[(np.asarray(c["x"]) > 0) & (np.asarray(c["x"]) < im.shape[1] - 1)
                   & (np.asarray(c["y"]) > 0) & (np.asarray(c["y"]) < im.shape[0] - 1)]
                 for im, c in zip(ims, cats, strict=True)]
        if "kind" in onccd[0].colnames:
            onccd = [c[np.asarray(c["kind"]) == "galaxy"] for c in onccd]
        names = {im.name: set(np.asarray(c["id"]).tolist()) for im, c in zip(ims, onccd,
                                                                            strict=True)}
        keep = np.array([r["id"] in names.get(str(r["image_1"]), ()) and
                         r["id"] in names.get(str(r["image_2"]), ()) for r in ptab], bool)
        ptab = ptab[keep]
        auto = isinstance(pairs, str) and pairs == "auto"
        pt = None
        if len(ptab):
            say(f"fine-tuning the last layer on {len(ptab)} pairs (eq. 11-12)")
            pt = pairs_from_exposures(ims, onccd, ptab, gs, keys, psf_for(gs),
                                      nbcats if ls.neighbours else None,
                                      joint=ls.neighbour_fit, ratio=ls.neighbour_ratio,
                                      deblend=ls.data_deblend)
        if pt is None or len(pt["ratio"]) == 0:
            why = (f"no usable pairs among the {len(ims)} training exposures (--pairs auto pairs "
                   "the same catalogued galaxy on the CCD in two exposures of the SAME band; "
                   f"bands here: {', '.join(sorted({str(im.meta.band) for im in ims}))})"
                   if auto else "no usable pairs in --pairs (their ids must be galaxies on the "
                   "CCD of both named training exposures, with usable cutouts)")
            if not auto:
                raise InputError(why)
            say(f"note: {why}; the fine-tuning step is skipped")
            pairs = None
            finetune = {"n_pairs": 0, "skipped": why}
    if pairs is not None:
        if len(keys) > arch.n_keys:
            raise InputError(f"pairs come from band x epoch combinations unseen in training: "
                             f"{keys[arch.n_keys:]}")
        fh = fine_tune_pairs(model, pt, _subset(t, tr), faint_mag=ls.faint_mag,
                             pair_weight=ls.pair_weight, epochs=ls.finetune_epochs,
                             lr=ls.finetune_lr, batch_size=ls.batch_size, seed=seed,
                             device=device, threads=threads, quiet=quiet)
        model = model.cpu().eval()
        metrics_ft = evaluate_mixtures(model, vt, ftrue, vmag)
        finetune = {"n_pairs": int(len(pt["ratio"])), "epochs": ls.finetune_epochs,
                    "lr": ls.finetune_lr, "final_loss": fh.train_loss[-1] if fh.epochs else None,
                    "metrics_before": metrics, "metrics_after": metrics_ft}
    # temperature scaling of the widths on the validation exposures, per mode
    sigma_scale, snr_cal, metrics, no_mag = _calibrate_modes(model, t, vt, va_free, ftrue, vmag,
                                                            gs, bins=ls.calibration_bins)
    metrics["uncalibrated"] = evaluate_mixtures(model, vt, ftrue, vmag)
    if no_mag is not None:
        metrics["no_mag"] = no_mag
    say("validation width calibration (sigma_scale): "
        + ", ".join(f"{k} {v:.3f}" for k, v in sigma_scale.items()))
    bright = np.asarray(vt["feats"][:, 0], float) > 20.0  # reference SNR
    if bright.sum() >= 20:
        mb = evaluate_mixtures(model, {**_subset(vt, bright), "unit": vt["unit"][bright]},
                               ftrue[bright], vmag[bright],
                               sigma_scale=snr_cal.get("mag", sigma_scale["mag"]))
        metrics["bright"] = {"n": int(mb["n"]), "bias_mode": mb.get("bias_mode_all"),
                             "bias_mean": mb.get("bias_mean_all"),
                             "sigma68_mode": mb.get("sigma68_mode_all")}
    injcal, by_instrument = None, {}
    if not simulated and ls.calibration_injections > 0:
        injcal = _injection_step(model, arch, keys, gs, ls, sigma_scale, snr_cal, noise_mags,
                                 data, is_val, seed=seed, say=say)
        by_instrument = injcal.pop("instruments", {})
        if injcal.get("calibration") is not None:
            snr_cal["mag"] = injcal.pop("calibration")
            metrics["calibration_source"] = "injections"
        else:
            injcal.pop("calibration", None)
    metrics.setdefault("calibration_source", "validation stamps")
    metrics.update(best_epoch=hist.best_epoch + 1, epochs_run=len(hist.epochs),
                   best_val_nll=hist.best_val, train_seconds=round(time.perf_counter() - t0, 1))
    from ...nn.modelfile import model_reference
    card = {
        "kind": "lumos", "arch": arch.as_dict(), "preset": arch.preset,
        "description": description or "Lumos flux PDF (5-Gaussian mixture) per source",
        "inputs": {"keys": keys, "simulation": gs.as_dict(), "estimator": ls.estimator,
                   "sigma_scale": {k: round(v, 5) for k, v in sigma_scale.items()},
                   "snr_calibration": {k: v.as_dict() for k, v in snr_cal.items()},
                   "snr_calibration_instruments": {k: v.as_dict()
                                                   for k, v in by_instrument.items()},
                   "normalisation": "cutout: median and 1.4826 MAD of valid pixels (2x2 grid), "
                                    "5 asinh(v/5), invalid = 0, validity channel; model: "
                                    "unit-total PSF-convolved Sersic / its peak; flux unit: "
                                    "pixel sigma x 10",
                   "coords": "x / (nx - 1) * 2 - 1, y / (ny - 1) * 2 - 1",
                   "mag": "(mag - 21) / 2; learned default when absent"}
                  | ({"mag_input": NOISE_MAG, "mag_input_doc": NOISE_MAG_DOC} if noise_mags
                     else {}),
        "training": {"settings": {f.name: getattr(ls, f.name) for f in fields(ls)},
                     "seed": seed, "flops_per_stamp": flops_per_stamp(model),
                     "history": [{k: round(v, 6) if isinstance(v, float) else v
                                  for k, v in e.items()} for e in hist.epochs],
                     "finetune": finetune},
        "data": {**data_summary, "n_train": int(tr.sum()), "n_val": int(va.sum())},
        "injection_calibration": injcal,
        "metrics": metrics,
        "quality": model_quality(metrics, note=val_note,
                                 check=((injcal or {}).get("check") or {}).get("injection")
                                 if metrics["calibration_source"] == "injections" else None),
        "init": model_reference(init_card.get("path", init)) if init_model is not None else None,
        **({"init_note": init_note} if init_note else {}),
        "training_command": command or "(API) skysub.photometry.lumos.train_lumos",
        "skysub_version": __version__,
    }
    save_model(output, model, card, overwrite=True)
    del torch
    return card


def _injection_step(model, arch, keys, gs, ls, sigma_scale, snr_cal, noise_mags, data,
                    is_val, *, seed: int, say) -> dict:
    """The with-magnitude calibration on galaxies injected into the held-out part of the
    user's exposures (:func:`.injection.injection_calibration`); the card entry (with the
    fitted ``calibration``, None when there was no room)."""
    from .injection import held_out_regions, injection_calibration

    card = {"arch": arch.as_dict(),
            "inputs": {"keys": keys, "simulation": gs.as_dict(), "estimator": ls.estimator,
                       "sigma_scale": dict(sigma_scale),
                       "snr_calibration": {k: v.as_dict() for k, v in snr_cal.items()}}
            | ({"mag_input": NOISE_MAG} if noise_mags else {})}
    zps = data.get("zero_points")
    regions = held_out_regions(data["sim"], is_val, len(data["ims"]))
    whole = all(r in (None, 0.0) for r in regions)
    if not whole:
        # fewer than 4 exposures: no exposure to spare.  The validation strip is the frames'
        # top edge, not the frame a user measures (its calibration left the optical frame's
        # pull width at 1.26; docs/lumos.md), so the galaxies go everywhere on the frames at
        # new empty positions: the pixels were seen in training, as the user's own sources'
        # are; the galaxies, their positions and their noise were not
        regions = [0.0] * len(data["ims"])
    out = injection_calibration(model, card, data["ims"], data["nbcats"], zps, regions, gs=gs,
                                seed=seed, bins=ls.calibration_bins or 1,
                                target=ls.calibration_injections,
                                shrink_n=float(ls.calibration_shrink),
                                placement=ls.calibration_placement, say=say)
    out["held_out"] = ("whole validation exposures" if whole
                       else "new empty positions of the training frames")
    ch = out.get("check", {})
    if out.get("calibration") is not None:
        msg = (f"calibration on {out['n_injections']} galaxies injected into "
               f"{out['held_out']} ({out['n_realisations']} realisations, "
               f"{len(out['calibration'].shift)} SNR bins"
               + (f", {len(out['crowd_edges'])} crowded levels" if out.get("crowd_edges")
                  else "")
               + (f", split at {out['near']['near_px']:g} px from the nearest source"
                  if out.get("near") else "")
               + f"; placement {out['placement']}"
               + (" -- nearest-neighbour distance median "
                  f"{out['nn_distance']['injections'][2]:.1f} px, catalogue's "
                  f"{out['nn_distance']['catalogue'][2]:.1f} px"
                  if out.get("nn_distance", {}).get("catalogue") else "") + ")")
        if "injection" in ch:
            v, i = ch["validation"], ch["injection"]
            msg += (f"; on the check half ({ch['n_check']}): pull width "
                    f"{v['pull_sigma68']:.2f} -> {i['pull_sigma68']:.2f}, PIT KS p "
                    f"{v['pit_ks_pvalue']:.2g} -> {i['pit_ks_pvalue']:.2g} (validation -> "
                    "injection calibration)")
        for key, pi in out.get("per_instrument", {}).items():
            v, i = pi["check"]["validation"], pi["check"]["injection"]
            say(f"  {key}: {pi['n_injections']} injections"
                f"{' (own calibration)' if pi['own_calibration'] else ''}; check half: pull "
                f"width {v['pull_sigma68']:.2f} -> {i['pull_sigma68']:.2f}, PIT KS p "
                f"{v['pit_ks_pvalue']:.2g} -> {i['pit_ks_pvalue']:.2g}")
    else:
        say(f"note: {out['note']}")
    return out


def split_stamps(sim: dict, val_fraction: float, seed: int, min_exposures: int = 4
                 ) -> tuple[np.ndarray, str]:
    """Boolean "is validation" per stamp and a note: whole exposures validate
    (:func:`skysub.simulate.trainingdata.split_by_exposure`) when there are ``min_exposures``
    or more; with fewer, the top ``val_fraction`` of each exposure's rows does (its stamps
    still see other parts of the same frame: a weaker test, said in the note and the card)."""
    from ...simulate.trainingdata import split_by_exposure

    exp = np.asarray(sim["exposure"])
    ids = np.unique(exp)
    if len(ids) >= min_exposures:
        return split_by_exposure(exp, val_fraction, seed), ""
    is_val = np.zeros(len(exp), bool)
    y = np.asarray(sim["y"], float)
    for j in ids:
        sel = exp == j
        is_val[sel] = y[sel] > np.quantile(y[sel], 1.0 - val_fraction)
    return is_val, (f"{len(ids)} exposure(s): validated on the top {val_fraction:.0%} of each "
                    f"exposure's rows (give {min_exposures} or more exposures to validate on "
                    "whole exposures)")


#: a model's own validation fails it when: |bright bias| above, sigma68 zero or not finite,
#: or the PIT KS p-value below
QUALITY_LIMITS = {"bias": 0.05, "pit_ks_p": 1e-3}


def model_quality(metrics: dict, note: str = "", check: dict | None = None) -> dict:
    """``{"ok", "reasons", "note"}``: whether the with-magnitude mode passed its validation
    (the bias of bright stamps -- reference SNR > 20 -- within 5 %, a nonzero finite sigma68,
    PIT KS p >= 1e-3).

    ``check``: the injection calibration's check half under the calibration the card keeps
    (``{"pit_ks_pvalue", ...}``), when the PDF widths come from injections into the user's
    frames: the PIT criterion then judges those widths on those galaxies, not the
    validation stamps' widths the card no longer uses."""
    reasons = []
    b = (metrics.get("bright") or {}).get("bias_mode")
    if b is None:
        b = metrics.get("bias_mode_all")
    if b is None or not np.isfinite(b) or abs(b) > QUALITY_LIMITS["bias"]:
        reasons.append(f"bright-source bias {b if b is None else round(float(b), 4)} "
                       f"(|bias| must be <= {QUALITY_LIMITS['bias']:g})")
    s68 = metrics.get("sigma68_mode_all")
    if s68 is None or not np.isfinite(s68) or s68 <= 0:
        reasons.append(f"sigma68 {s68} (a model whose every flux is the same is useless)")
    # the with-magnitude posterior only: the data-only likelihood's PIT against truths drawn
    # from the catalogue's prior is not expected to be uniform (see _calibrate_modes)
    p, where = metrics.get("pit_ks_pvalue"), "with the magnitude"
    if check is not None and check.get("pit_ks_pvalue") is not None:
        p, where = check["pit_ks_pvalue"], "with the magnitude, injection check half"
    if p is None or not np.isfinite(p) or p < QUALITY_LIMITS["pit_ks_p"]:
        reasons.append(f"PIT KS p {p} {where} (the PDFs are miscalibrated; must be "
                       f">= {QUALITY_LIMITS['pit_ks_p']:g})")
    return {"ok": not reasons, "reasons": reasons, "limits": dict(QUALITY_LIMITS),
            "note": note}


def _calibrate_modes(model, t: dict, vt: dict, free_sel: np.ndarray, ftrue: np.ndarray,
                     vmag: np.ndarray, gs, *, min_free: int = 1, bins: int = 6
                     ) -> tuple[dict, dict, dict, dict | None]:
    """Validation calibration of both modes (training and ``--calibrate-only``): the
    with-magnitude mode on the catalogue-like tensors ``vt`` (true fluxes ``ftrue``, magnitudes
    ``vmag``), the data-only mode on the prior-free rows ``free_sel`` of ``t`` (at least
    ``min_free``) as the posterior the network learned there (the photometer divides the
    training density out after the calibration).  Returns the single width factors
    (``sigma_scale``), each mode's per-SNR calibration in ``bins`` bins (:class:`SNRCalibration`;
    none when ``bins`` is 0) and the calibrated metrics of each mode on ``vt`` (data-only: None
    without prior-free rows), measured with the calibration the photometer applies."""
    scale, snr = {}, {}

    def fit(mode: str, t_: dict, truncated: bool) -> None:
        """One prediction pass serves both fits of ``mode``: the single width factor and, with
        ``bins``, the per-SNR calibration (crowded rows apart)."""
        a, m, s = _predict(model, t_)
        y = np.asarray(t_["y"], float)
        scale[mode] = fit_width_factor(a, m, s, y, truncated=truncated)
        if bins:
            snr[mode] = fit_snr_calibration(a, m, s, y, truncated=truncated, n_bins=bins,
                                            c=crowding(t_["feats"]))

    fit("mag", vt, truncated=True)
    m_mag = evaluate_mixtures(model, vt, ftrue, vmag, sigma_scale=snr.get("mag", scale["mag"]))
    if int(np.sum(free_sel)) < max(min_free, 1):
        return scale, snr, m_mag, None
    knee = _prior_knee(gs)
    free = _subset(t, free_sel)
    # the data-only mode is calibrated as the network's POSTERIOR on the prior-free stamps,
    # whose true fluxes follow the training density that the posterior assumes, and divided by
    # that density afterwards (as the photometer does).  Fitting the likelihood itself to the
    # true fluxes is not a proper score: the truths come from a prior, and the fit pulls the
    # likelihood towards it (docs/lumos.md)
    fit("no_mag", free, truncated=False)
    # the data-only mode on the same stamps, with the inputs it computes without the magnitude
    vt0 = {**vt, "has_mag": vt["has_mag"] * 0, "feats": vt.get("feats_nomag", vt["feats"])}
    m_nomag = evaluate_mixtures(model, vt0, ftrue, vmag, lower=None, prior_knee=knee,
                                sigma_scale=snr.get("no_mag", scale["no_mag"]))
    return scale, snr, m_mag, m_nomag


def recalibrate_lumos(model_path: str | Path, images=None, catalog=None, *, config: Any = None,
                      simulated: bool = False, n_exposures: int | None = None,
                      stamps_per_image: int | None = None, seed: int = 1,
                      quiet: bool = False, command: str | None = None,
                      zeropoint: float | None = None, **read_kwargs: Any) -> dict:
    """Re-measure a trained model's width calibration (``sigma_scale`` of both modes) on a
    fresh calibration set and rewrite its card; the weights are unchanged
    (``skysub train lumos --calibrate-only``).

    The stamps are simulated exactly as in training, with the card's simulation settings, from
    ``n_exposures`` simulator exposures (``simulated``; seed ``seed``: use one that neither
    training nor the benchmark used) or from the user's ``images`` + ``catalog``.  Every stamp
    is a calibration stamp: the catalogue-like ones calibrate the posterior mode, the
    prior-free ones the data-only likelihood (after the prior division, as users get it).
    The card records the data, the command and the calibrated metrics under ``calibration``.
    Models trained on user exposures take each calibration exposure's zero point as training
    does (``zeropoint``, a header keyword, or a fit).
    """
    from ...config import load_config
    from ...nn.modelfile import load_model, save_model
    from ...simulate.galaxies import GalaxySimSettings

    cfg = config or load_config()
    net, card = load_model(model_path, kind="lumos")
    card.pop("path", None)
    card.pop("file_size_bytes", None)
    inputs = card.setdefault("inputs", {})
    gs = GalaxySimSettings.from_config(inputs.get("simulation", {}))
    ls = LumosSettings.from_config(dict(getattr(cfg, "lumos", {}) or {}),
                                   stamps_per_image=stamps_per_image, n_exposures=n_exposures)
    ls = replace(ls, neighbours=bool(net.arch.neighbours),
                 neighbour_fit=bool(net.arch.neighbour_fit),
                 neighbour_ratio=bool(getattr(net.arch, "neighbour_ratio", False)),
                 data_deblend=bool(getattr(net.arch, "data_deblend", False)))
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    keys = list(inputs.get("keys", []))
    n_keys = len(keys)
    data = _stamp_data(images, catalog, cfg, ls, gs, net_keys=keys, simulated=simulated, seed=seed,
                       quiet=quiet, say=say,
                       use_zeropoints=inputs.get("mag_input") == NOISE_MAG,
                       zeropoint=zeropoint, **read_kwargs)
    if len(keys) > n_keys:
        raise InputError(f"calibration exposures come from band x epoch combinations the model "
                         f"was not trained on: {keys[n_keys:]}")
    sim, t, free = data["sim"], data["tensors"], data["free"]
    ok = np.asarray(t["ok"], bool)
    cat_sel, free_sel = ok & ~free, ok & free
    if cat_sel.sum() < 100:
        raise InputError(f"only {int(cat_sel.sum())} usable calibration stamps: raise "
                         "--n-exposures or --stamps-per-image")
    vt = {**_subset(t, cat_sel), "unit": t["unit"][cat_sel]}
    ftrue, vmag = sim["flux_true"][cat_sel], sim["mag"][cat_sel]
    scale, snr_cal, m_mag, m_nomag = _calibrate_modes(net, t, vt, free_sel, ftrue, vmag, gs,
                                                      min_free=100, bins=ls.calibration_bins)
    metrics = {"mag": m_mag} | ({} if m_nomag is None else {"no_mag": m_nomag})
    # the with-magnitude PIT of stamps with and without an injected neighbour: a network that
    # cannot tell them apart errs in opposite directions on the two (docs/lumos.md)
    blended = np.isfinite(np.asarray(sim["blend_r"], float))[cat_sel]
    for name, sel in (("isolated", ~blended), ("blended", blended)):
        if sel.sum() >= 100:
            sub = _subset(vt, sel) | {"unit": vt["unit"][sel]}
            m_mag[f"pit_ks_pvalue_{name}"] = evaluate_mixtures(
                net, sub, ftrue[sel], vmag[sel],
                sigma_scale=snr_cal.get("mag", scale["mag"]))["pit_ks_pvalue"]
    say("width calibration (sigma_scale): "
        + ", ".join(f"{k} {inputs.get('sigma_scale', {}).get(k, float('nan')):.4f} -> {v:.4f}"
                    for k, v in scale.items()))
    injcal = None
    if not simulated and ls.calibration_injections > 0:  # every frame is a calibration frame
        from .injection import injection_calibration

        injcal = injection_calibration(
            net, card, data["ims"], data["nbcats"], data.get("zero_points"),
            [0.0] * len(data["ims"]), gs=gs, seed=seed, bins=ls.calibration_bins or 1,
            target=ls.calibration_injections, shrink_n=float(ls.calibration_shrink),
            placement=ls.calibration_placement, say=say)
        injcal["held_out"] = "the calibration exposures"
        inputs["snr_calibration_instruments"] = {
            k: v.as_dict() for k, v in injcal.pop("instruments", {}).items()}
        if injcal.get("calibration") is not None:
            snr_cal["mag"] = injcal.pop("calibration")
            say(f"with-magnitude calibration from {injcal['n_injections']} injected galaxies")
        else:
            injcal.pop("calibration", None)
            say(f"note: {injcal['note']}")
    inputs["sigma_scale"] = {k: round(v, 5) for k, v in scale.items()}
    inputs["snr_calibration"] = {k: v.as_dict() for k, v in snr_cal.items()}
    card["calibration"] = {
        "data": {**data["summary"], "stamps_per_image": int(ls.stamps_per_image),
                 "n_catalogue_like": int(cat_sel.sum()), "n_prior_free": int(free_sel.sum())},
        "sigma_scale": inputs["sigma_scale"], "snr_calibration": inputs["snr_calibration"],
        "injection_calibration": injcal,
        "metrics": metrics,
        "command": command or "(API) skysub.photometry.lumos.recalibrate_lumos",
    }
    save_model(model_path, net, card, overwrite=True)
    return card
