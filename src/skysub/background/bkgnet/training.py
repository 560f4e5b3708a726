"""Training BKGnet (``skysub train bkgnet``): :func:`train_bkgnet` from FITS exposures and a
catalogue, or from the built-in simulator; the model card records the command
(:func:`command_line`).
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, SkysubError
from ...simulate.trainingdata import simulated_exposures, split_by_sky
from .calibration import (
    fit_error_calibration,
    followed_fraction,
    neighbour_pool,
    neighbour_response,
    predict_set,
    sigma_scale,
)
from .data import build_training_set
from .estimator import DEFAULT_MODEL, TRAIN_KEYS, BKGnetSettings
from .evaluation import format_report, training_report, validation_metrics
from .selection import MIN_PAIRS, OFFSET_WEIGHT

log = logging.getLogger("skysub")


#: training defaults when fine-tuning a pre-trained model (``[bkgnet]`` and options override)
FINETUNE_DEFAULTS = {"epochs": 12, "lr": 5e-4, "patience": 4}


def _initial_model(init, s: BKGnetSettings, *, simulated: bool, preset: str | None,
                   use_coords: bool):
    """``(model, card)`` to fine-tune, or ``(None, None)`` to train from scratch."""
    from ...nn.modelfile import load_model

    if init is None or str(init).lower() == "none":
        return None, None
    auto = str(init) == "auto"
    if auto and simulated:
        return None, None
    name = DEFAULT_MODEL if auto else init
    model, card = load_model(name, kind="bkgnet")
    a = card["arch"]
    clash = [f"{what} {have} (settings: {want})" for what, have, want in (
        ("stamp_size", a["stamp_size"], s.stamp_size), ("mask_size", a["mask_size"], s.mask_size),
        ("preset", a["preset"], preset or a["preset"]),
        ("use_coords", a["use_coords"], use_coords)) if have != want]
    if clash:
        if auto:
            log.info("not fine-tuning %s (%s): training from scratch", name, "; ".join(clash))
            return None, None
        raise InputError(f"--init {init}: the model does not fit the training settings: "
                         f"{'; '.join(clash)}; change them or use --init none")
    return model.train(), card


#: fewest training positions drawn in all (user exposures, default ``stamps_per_image``):
#: one small real frame at the default 600 gave ~450 training stamps and a model worse than
#: the annulus (optical 300 x 440 frame of benchmarks.bench_bkgnet_real); 2,400 is what 4
#: exposures at 600 give, the smallest set documented for the user's path
MIN_TOTAL_STAMPS = 2400


def _stamps_floor(images) -> int | None:
    """``stamps_per_image`` that draws at least :data:`MIN_TOTAL_STAMPS` positions over
    ``images`` (None: the default already does)."""
    from ...io import expand_paths

    try:
        n = len(expand_paths(images or []))
    except SkysubError:  # bad paths get their clear error further on
        return None
    default = BKGnetSettings.stamps_per_image
    if n == 0 or n * default >= MIN_TOTAL_STAMPS:
        return None
    per = -(-MIN_TOTAL_STAMPS // n)
    log.info("%d exposure(s): drawing %d training positions per exposure (at least %d in "
             "all; --stamps-per-image sets it)", n, per, MIN_TOTAL_STAMPS)
    return per


def _loss(model, batch):
    from ...nn.bkgnet import gaussian_nll

    mu, ls = model(batch["x"].float(), batch["coords"], batch["mag"], batch["has_mag"],
                   batch["key"])
    return gaussian_nll(mu, ls, batch["y"])


#: model selection (best epoch, early stopping, learning-rate plateaus) on the held-out sky
#: tiles: "duplicates" = the labels' differences between exposures of one band at the same sky
#: points (:mod:`.selection`; the scaled NLL where the exposures give too few pairs),
#: "duplicates-offset" = the same plus twice the squared median offset of the predictions
#: from the labels (per band; not the default: on the development instrument the median
#: label lies ~0.1 % above the sky, so the offset cannot see the bias against the sky),
#: "scaled-nll" = the Gaussian NLL with sigma_net rescaled by its best factor (its
#: calibration), "residual" = sigma68 of (b - label) / label, "nll" = the training loss
SELECT = ("duplicates", "duplicates-offset", "scaled-nll", "residual", "nll")
#: the selections scored on pairs of exposures (:class:`.selection.DuplicatesScorer`)
PAIR_SELECT = ("duplicates", "duplicates-offset")


def _selecting_trainer(select: str, scorer=None):
    """The Trainer class whose validation score is ``select`` (see ``SELECT``).

    "duplicates" scores the model with ``scorer`` (a :class:`.selection.DuplicatesScorer`):
    faint sources' light cancels in the difference of two exposures' labels, so the score
    follows the error against the smooth sky, where the scaled NLL picked epoch 1 of 6 on a
    development run that was 1.86x worse against the truth than epoch 6 (docs/bkgnet.md).
    "duplicates-offset" adds twice the squared median offset of the prediction from the
    labels (a common offset cancels in the differences, :func:`.selection.selection_score`).

    The Gaussian NLL of the held-out stamps also scores the overall scale of the network's
    sigma, which fine-tuning shrinks on the training tiles from the first epoch on (the
    factor that calibrates it on the held-out tiles grew from 1.1 to 1.6 over 12 epochs on
    the development band): the NLL stopped at epoch 1 while the prediction still improved.
    "scaled-nll" scores the NLL with sigma_net times the factor ``k`` that minimises it,
    ``k^2 = mean(((mu - y) / sigma)^2)`` -- the errors are calibrated afterwards anyway --
    i.e. ``mean(2 log sigma) + log mean(((mu - y) / sigma)^2) + 1``: the prediction's
    scatter weighted by the network's relative sigma.  The sigma68 of ``b - label``
    ("residual") is dominated by the labels' noise and kept improving on the held-out tiles
    while the error against the true sky grew (development band: epoch 10 chosen, 0.67x the
    annulus, where epoch 3 gave 0.57x)."""
    from ...nn.trainer import Trainer

    if select == "nll":
        return Trainer
    if select not in SELECT:
        raise InputError(f"select must be one of {', '.join(SELECT)}, got {select!r}")
    if select in PAIR_SELECT:
        if scorer is None:
            raise InputError(f"select={select!r} needs the pairs of exposures to score")

        class DuplicatesTrainer(Trainer):
            def evaluate(self, data):
                return float(scorer(self.model))

        return DuplicatesTrainer

    class SelectingTrainer(Trainer):
        def evaluate(self, data):
            import torch

            from ...stats import sigma68

            self.model.eval()
            bs = self.config.eval_batch_size or 4 * self.config.batch_size
            z2, ls2, rel = [], [], []
            with torch.no_grad():
                for batch in self._batches(dict(data), bs, None):
                    mu, ls = self.model(batch["x"].float(), batch["coords"], batch["mag"],
                                        batch["has_mag"], batch["key"])
                    z2.append((((mu - batch["y"]) * torch.exp(-ls)) ** 2).double().cpu())
                    ls2.append((2.0 * ls).double().cpu())
                    if select == "residual":
                        b = batch["loc"] + batch["scale"] * mu.double()
                        rel.append(((b - batch["label"]) / batch["label"]).cpu())
            if select == "residual":
                r = torch.cat(rel).numpy() if rel else np.zeros(0)
                r = r[np.isfinite(r)]
                return float(sigma68(r)) if len(r) else float("inf")
            z, lv = torch.cat(z2), torch.cat(ls2)
            ok = torch.isfinite(z) & torch.isfinite(lv)
            if not ok.any():
                return float("inf")
            return float(lv[ok].mean() + torch.log(z[ok].mean()) + 1.0)

    return SelectingTrainer


def _duplicates_scorer(again, s: BKGnetSettings, ts, is_val, keys, arch, seed: int,
                       select: str = "duplicates"):
    """``(select, scorer, pairs)``: the duplicates score on the held-out tiles of the
    exposures ``again()`` yields, or the scaled NLL (scorer None) with too few pairs."""
    from ...simulate.trainingdata import sky_tiles
    from .selection import DuplicatesScorer, duplicate_positions

    tiles = np.unique(sky_tiles(ts.sky[is_val])) if is_val.any() else np.zeros(0, np.int64)
    pos = duplicate_positions(again(), s, tiles, seed=seed)
    if pos.n_pairs < MIN_PAIRS:
        return "scaled-nll", None, pos.n_pairs
    card = {"arch": arch.as_dict(), "inputs": {"keys": list(keys), "labels": "truth",
                                               "label_radius": s.label_radius,
                                               "min_valid": s.min_valid}}
    w = OFFSET_WEIGHT if select == "duplicates-offset" else 0.0
    return select, DuplicatesScorer(again, pos, card, offset_weight=w), pos.n_pairs


def _pair_calibration(scorer, model, mags: np.ndarray | None = None, *, seed: int = 0,
                      a_single: float | None = None) -> dict:
    """:func:`.calibration.pair_scale` at the scorer's pairs of exposures (held-out tiles),
    the positions read as they are (empty, no magnitude); with ``mags`` (the magnitudes the
    training injects) also read with one of them drawn per sky point, the same in every
    exposure of it (:func:`.calibration.pair_scale_sources`: ``with_mag``, ``sigma_ratio``,
    ``shared``, ``a_shared``)."""
    from .calibration import pair_scale, pair_scale_sources

    b, sg, eq3 = scorer.predict(model, errors=True)
    p = scorer.positions
    out = pair_scale(b, sg, p.label, eq3, p.i1, p.i2)
    mags = np.asarray(mags if mags is not None else [], float)
    mags = mags[np.isfinite(mags)]
    if len(mags) and p.point is not None and len(p.point):
        pt = np.asarray(p.point, np.int64)
        draw = np.random.default_rng([int(seed), 104729]).choice(mags, int(pt.max()) + 1)
        bm, sm, _ = scorer.predict(model, errors=True, mag=draw[pt])
        out.update(pair_scale_sources(b, sg, bm, sm, p.label, eq3, p.i1, p.i2,
                                      a_single=a_single))
    return out


def _score_log(scorer) -> list[dict] | None:
    """The duplicates scorer's per-call scores and their parts (the starting weights first
    when they were scored), rounded for the card; None without a scorer."""
    if scorer is None:
        return None
    return [{"score": float(f"{e['score']:.6g}"), "duplicates": float(f"{e['duplicates']:.6g}"),
             "offset2": float(f"{e['offset2']:.6g}"),
             "offset": {k: round(v, 6) for k, v in e["offset"].items()}} for e in scorer.log]


def _val_tensors(val, select: str) -> dict:
    import torch

    t = val.tensors()
    if select == "residual":
        t.update(loc=torch.from_numpy(np.asarray(val.loc, float)),
                 scale=torch.from_numpy(np.asarray(val.scale, float)),
                 label=torch.from_numpy(np.asarray(val.label, float)))
    return t


def train_bkgnet(images: Sequence[str | Path] | None, catalog: Any, output: str | Path, *,
                 config: Any = None, epochs: int | None = None, seed: int = 0,
                 device: str = "auto", preset: str | None = None, simulated: bool = False,
                 n_exposures: int = 48, labels: str = "pixels", use_coords: bool = True,
                 inject: bool | None = None, resume: bool = False, overwrite: bool = False,
                 quiet: bool = False, batch_size: int | None = None, lr: float | None = None,
                 stamps_per_image: int | None = None, threads: int | None = None,
                 command: str | None = None, description: str = "",
                 init: str | Path | None = "auto", select: str = "duplicates",
                 **read_kwargs: Any) -> dict:
    """Train a BKGnet and write it (weights + card) to ``output``; return the card.

    Parameters
    ----------
    images : FITS paths (globs allowed); ignored with ``simulated``
    catalog : catalogue path or Table (positions to avoid; galaxy shapes to inject)
    output : model file (.pt); the checkpoint is ``<output>.ckpt`` beside it
    config : SurveyConfig (``[bkgnet]`` settings and training defaults; ``[simulate]`` for
        ``simulated``)
    epochs, batch_size, lr, preset : override ``[bkgnet]``
    simulated : train on ``n_exposures`` exposures of the built-in simulator instead
    labels : "pixels" (BKGnet: mean of the label circle) or "truth" (simulator's noise-free
        background; needs ``simulated``)
    use_coords : give the net the CCD position (the paper's ablation switches it off)
    inject : inject galaxies at the stamp centres (default from the configuration)
    resume : continue an interrupted run from its checkpoint
    init : the model to fine-tune: "auto" (default: the shipped ``bkgnet-paus`` for user
        exposures when its stamp geometry fits the settings, from scratch for ``simulated``),
        a model name or file, or None / "none" (from scratch).  Band x epoch keys the model
        has not seen get the mean of its known embeddings and are trained; fine-tuning
        defaults to ``FINETUNE_DEFAULTS`` (lower learning rate, fewer epochs)
    select : the held-out score that picks the best epoch and stops early: "duplicates"
        (default: the mean square of the difference of two exposures' predictions minus that
        of their labels, at the same sky points of the held-out tiles, :mod:`.selection`;
        when fine-tuning, the starting weights are scored too and kept if no epoch beats
        them; "scaled-nll" where fewer than ``selection.MIN_PAIRS`` pairs exist), "scaled-nll"
        (the Gaussian NLL with sigma_net at its best overall scale), "residual" (sigma68 of
        ``(b - label) / label``) or "nll" (the Gaussian NLL); "duplicates-offset" adds twice
        the squared median offset of the predictions from the held-out labels, per band
    """
    from ... import __version__
    from ...config import load_config
    from ...io import catalog_for_image, check_output, read_catalog
    from ...nn.bkgnet import BKGnet, BKGnetArch, flops_per_stamp
    from ...nn.device import seed_everything
    from ...nn.modelfile import save_model
    from ...nn.trainer import TrainConfig

    t0 = time.perf_counter()
    cfg = config or load_config()
    output = Path(output)
    if output.suffix != ".pt":
        raise InputError(f"--output must end in .pt, got {output}")
    if labels not in ("pixels", "truth"):
        raise InputError(f"labels must be 'pixels' or 'truth', got {labels!r}")
    if labels == "truth" and not simulated:
        raise InputError("labels='truth' needs --simulated (real exposures have no noise-free "
                         "background)")
    inputs = [] if simulated else list(images or [])
    if catalog is not None and not hasattr(catalog, "colnames"):
        inputs.append(catalog)
    check_output(output, overwrite=overwrite or resume, inputs=inputs)
    if select not in SELECT:
        raise InputError(f"select must be one of {', '.join(SELECT)}, got {select!r}")
    section = dict(cfg.bkgnet)
    if stamps_per_image is None and "stamps_per_image" not in section and not simulated:
        stamps_per_image = _stamps_floor(images)
    s = BKGnetSettings.from_config(section, inject=inject, stamps_per_image=stamps_per_image)
    init_model, init_card = _initial_model(init, s, simulated=simulated, preset=preset,
                                           use_coords=use_coords)
    hp = {"epochs": 30, "batch_size": 128, "lr": 2e-3, "weight_decay": 1e-4, "patience": 6,
          "preset": "lean"}
    if init_model is not None:
        hp.update(FINETUNE_DEFAULTS, preset=init_card["arch"]["preset"])
    hp.update({k: section[k] for k in TRAIN_KEYS if k in section})
    for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("preset", preset)):
        if v is not None:
            hp[k] = v
    seed_everything(seed)
    keys: list[str] = list(init_card["inputs"]["keys"]) if init_model is not None else []
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    if init_model is not None:
        say(f"fine-tuning {init_card.get('path', init)} (--init none trains from scratch)")
    if simulated:
        say(f"simulating {n_exposures} exposures with the built-in simulator "
            f"([simulate] of {cfg.name})")
        exps, fieldcat = simulated_exposures(n_exposures, config=cfg.simulate, seed=seed)
        triples = [(im, xy, bg if labels == "truth" else None) for im, xy, bg, _ in exps]

        def again():  # the exposures once more, for the duplicates score
            return ((im, xy) for im, xy, _, _ in exps)
        cat_for_pool = fieldcat
        shapes = {exps[0][0].shape}
        data_summary = {"source": "built-in simulator", "config": cfg.name,
                        "n_exposures": int(n_exposures), "seed": int(seed)}
        total = len(triples)
    else:
        from ...io import expand_paths, iter_images

        if not images:
            raise InputError("give training exposures (IMAGE...) or --simulated")
        if catalog is None:
            raise InputError("--catalog is required to find empty positions")
        paths = expand_paths(images)
        cat_all = catalog if hasattr(catalog, "colnames") else read_catalog(catalog)
        read_kwargs.setdefault("keys", cfg.header)
        read_kwargs.setdefault("required", ("gain",))
        shapes = set()

        def gen():
            for im in iter_images(paths, quiet=True, **read_kwargs):
                c = catalog_for_image(cat_all, im)
                shapes.add(im.shape)
                yield im, (np.asarray(c["x"], float), np.asarray(c["y"], float)), None

        def again():  # read once more at every epoch, for the duplicates score
            for im in iter_images(paths, quiet=True, **read_kwargs):
                c = catalog_for_image(cat_all, im)
                yield im, (np.asarray(c["x"], float), np.asarray(c["y"], float))

        triples = gen()
        cat_for_pool = cat_all
        data_summary = {"source": "user exposures", "n_exposures": len(paths),
                        "images": [p.name for p in paths[:50]],
                        "catalog": str(getattr(catalog, "meta", {}).get("source", catalog))}
        total = len(paths)
    counts = [0, 0.0]  # catalogued sources on the exposures, their pixels (wing density)

    def counted(rows):
        for im, xy, bg in rows:
            ny, nx = im.shape
            x, y = (np.asarray(a, float) for a in xy)
            counts[0] += int(np.sum((x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)))
            counts[1] += float(nx * ny)
            yield im, xy, bg

    triples = counted(triples)
    ts = build_training_set(triples, s, keys, seed=seed, catalog=cat_for_pool, quiet=quiet,
                            total=total)
    # held out: sky tiles in every exposure (a split by exposure would keep the field's faint
    # sources on both sides: errors calibrated on it are too small for another field)
    is_train, is_val = split_by_sky(ts.sky, s.val_fraction, seed)
    train, val = ts.subset(is_train), ts.subset(is_val)
    if len(val) == 0 or len(train) == 0:
        log.warning("too small a sky area to hold part of it out: validating on the training "
                    "stamps (no held-out data)")
        train = val = ts
    say(f"{len(train)} training and {len(val)} validation stamps (held-out sky tiles) from "
        f"{len(np.unique(ts.exposure))} exposures; keys: {', '.join(keys)}")
    if init_model is not None:
        arch = BKGnetArch(**{**init_model.arch.__dict__, "n_keys": len(keys)})
        from ...nn.trainer import extend_key_embeddings  # (torch: only when fine-tuning)
        model = extend_key_embeddings(init_model, BKGnet(arch), len(init_card["inputs"]["keys"]))
        new = keys[len(init_card["inputs"]["keys"]):]
        if new:
            say(f"new band x epoch keys (embeddings start at the mean of the known ones): "
                f"{', '.join(new)}")
    else:
        arch = BKGnetArch.from_preset(hp["preset"], stamp_size=s.stamp_size,
                                      mask_size=s.mask_size, n_keys=len(keys),
                                      use_coords=use_coords)
        model = BKGnet(arch)
    select_used, scorer, n_pairs = select, None, 0
    if select in PAIR_SELECT:
        select_used, scorer, n_pairs = _duplicates_scorer(again, s, ts, is_val, keys, arch, seed,
                                                          select)
        if scorer is None:
            say(f"model selection: {n_pairs} pairs of exposures of one band at the same sky "
                f"points of the held-out tiles (fewer than {MIN_PAIRS}): scaled NLL instead")
        else:
            say(f"model selection: duplicates score on {n_pairs} pairs of exposures")
    tc = TrainConfig(epochs=int(hp["epochs"]), batch_size=int(hp["batch_size"]),
                     lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]),
                     patience=hp["patience"], scheduler="plateau",
                     scheduler_kwargs={"factor": 0.3, "patience": 2}, grad_clip=10.0,
                     seed=seed, device=device, threads=threads, quiet=quiet,
                     # a score that follows the truth may keep the model it started from
                     score_initial=init_model is not None and scorer is not None)
    trainer = _selecting_trainer(select_used, scorer)(model, _loss, tc,
                                                      checkpoint=output.with_suffix(".ckpt"))
    hist = trainer.fit(train.tensors(), _val_tensors(val, select_used), resume=resume)
    model = trainer.model.cpu().eval()
    metrics = validation_metrics(model, val)
    k = sigma_scale(model, val)
    err_cal, followed = None, None
    if labels == "pixels":  # honest errors: label noise measured, sigma_net scaled
        from ...simulate.trainingdata import galaxy_pool

        # the share of the faint sources' label light the network follows: injection of
        # faint galaxies (shapes of the catalogue's faint end) into the held-out stamps
        gal = galaxy_pool(cat_for_pool, np.random.default_rng(seed))
        fol = followed_fraction(model, val, gal, s, seed=seed)
        followed = fol["followed"]
        # the wings of catalogued neighbours beyond the empty radius: injected likewise
        nb = None
        pool = (neighbour_pool(cat_for_pool) if cat_for_pool is not None
                and "mag" in cat_for_pool.colnames else {"mag": []})
        if len(pool["mag"]) and counts[1] > 0:  # (no source with a magnitude: no wings)
            nb = neighbour_response(model, val, pool, s, seed=seed)
            nb["density"] = counts[0] / counts[1]
        b_val, s_val = predict_set(model, val)
        err_cal = fit_error_calibration(b_val, s_val, val.label, val.label_sigma,
                                        val.edge_distance, np.asarray(keys)[val.key.numpy()],
                                        ts.stencils, keys, followed=followed,
                                        neighbours=nb)
        err_cal["followed_injection"] = fol
        if scorer is not None:  # the sigma68 of the error, deconvolved from pairs of exposures
            err_cal["pairs"] = _pair_calibration(scorer, model, gal["mag"], seed=seed,
                                                 a_single=err_cal["a_all"])
        if nb is not None:
            err_cal["neighbour_injection"] = {k: nb[k] for k in ("followed", "err", "n", "area",
                                                                 "r_in", "r_out", "density")}
        say(f"faint-source light followed by the network: {followed:.2f} +- {fol['err']:.2f} "
            f"({fol['n']} injections); label-noise factor on eq. 3: "
            f"{err_cal['label_factor_all']:.2f}; error factor a = {err_cal['a_all']:.3f}")
    report = training_report(model, val, keys, followed=followed)
    say(format_report(report))
    overall = report["groups"].get("all", {})
    if not overall.get("ratio", 0.0) < 1.0:
        log.warning("the trained BKGnet does NOT beat the annulus (30-45 px clipped median) on "
                    "the held-out sky tiles (sigma68 ratio %.2f): more exposures, more "
                    "--stamps-per-image or --epochs, or keep the annulus",
                    overall.get("ratio", float("nan")))
    pw = overall.get("pull_sigma68")
    if pw is not None and not 0.8 <= pw <= 1.25:
        log.warning("pull width %.2f on held-out sky tiles (errors calibrated on the other "
                    "held-out tiles): the reported errors are not trustworthy", pw)
    metrics.update(best_epoch=hist.best_epoch + 1, epochs_run=len(hist.epochs),
                   best_val_nll=hist.best_val, train_seconds=round(time.perf_counter() - t0, 1))
    from ...nn.modelfile import model_reference
    card = {
        "kind": "bkgnet", "arch": arch.as_dict(), "preset": arch.preset,
        "description": description or "BKGnet background + error at each source",
        "inputs": {"keys": keys, "labels": labels, "n_label": float(np.pi * s.label_radius**2),
                   "label_radius": s.label_radius, "min_valid": s.min_valid,
                   "sigma_scale": k,
                   **({"error_calibration": err_cal} if err_cal is not None else {}),
                   "normalisation": "median and 1.4826 MAD of valid pixels (2x2 grid), "
                                    "5 asinh(v/5), invalid = 0, validity channel",
                   "coords": "x / (nx - 1) * 2 - 1, y / (ny - 1) * 2 - 1",
                   "image_shape": sorted(shapes)[0] if shapes else None,
                   "mag": "(mag - 21) / 2; learned default when absent"},
        "training": {**hp, "select": select_used, "select_asked": select,
                     "select_pairs": n_pairs, "select_scores": _score_log(scorer),
                     "seed": seed, "labels": labels, "inject": s.inject,
                     "use_coords": use_coords, "settings": asdict(s),
                     "flops_per_stamp": flops_per_stamp(model),
                     "history": [{k: round(v, 6) if isinstance(v, float) else v
                                  for k, v in e.items()} for e in hist.epochs]},
        "data": {**data_summary, "n_train": len(train), "n_val": len(val)},
        "metrics": metrics,
        "report": report,
        "init": (model_reference(init_card.get("path", init)) if init_model is not None else None),
        "training_command": command or "(API) skysub.background.bkgnet.train_bkgnet",
        "skysub_version": __version__,
    }
    save_model(output, model, card, overwrite=True)
    return card


def command_line(argv: list[str] | None = None) -> str:
    """The command line (``argv``, default the process's), for model cards."""
    return " ".join(shlex.quote(a) for a in ["skysub", *(sys.argv[1:] if argv is None
                                                         else argv)])
