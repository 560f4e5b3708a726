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

from ...errors import InputError
from ...simulate.trainingdata import simulated_exposures, split_by_exposure
from .calibration import sigma_scale
from .data import build_training_set
from .estimator import TRAIN_KEYS, BKGnetSettings
from .evaluation import validation_metrics

log = logging.getLogger("skysub")


def _loss(model, batch):
    from ...nn.bkgnet import gaussian_nll

    mu, ls = model(batch["x"].float(), batch["coords"], batch["mag"], batch["has_mag"],
                   batch["key"])
    return gaussian_nll(mu, ls, batch["y"])


def train_bkgnet(images: Sequence[str | Path] | None, catalog: Any, output: str | Path, *,
                 config: Any = None, epochs: int | None = None, seed: int = 0,
                 device: str = "auto", preset: str | None = None, simulated: bool = False,
                 n_exposures: int = 48, labels: str = "pixels", use_coords: bool = True,
                 inject: bool | None = None, resume: bool = False, overwrite: bool = False,
                 quiet: bool = False, batch_size: int | None = None, lr: float | None = None,
                 stamps_per_image: int | None = None, threads: int | None = None,
                 command: str | None = None, description: str = "", **read_kwargs: Any
                 ) -> dict:
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
    """
    from ... import __version__
    from ...config import load_config
    from ...io import catalog_for_image, check_output, read_catalog
    from ...nn.bkgnet import BKGnet, BKGnetArch, flops_per_stamp
    from ...nn.device import seed_everything
    from ...nn.modelfile import save_model
    from ...nn.trainer import TrainConfig, Trainer

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
    section = dict(cfg.bkgnet)
    s = BKGnetSettings.from_config(section, inject=inject, stamps_per_image=stamps_per_image)
    hp = {"epochs": 30, "batch_size": 128, "lr": 2e-3, "weight_decay": 1e-4, "patience": 6,
          "preset": "lean"}
    hp.update({k: section[k] for k in TRAIN_KEYS if k in section})
    for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("preset", preset)):
        if v is not None:
            hp[k] = v
    seed_everything(seed)
    keys: list[str] = []
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    if simulated:
        say(f"simulating {n_exposures} exposures with the built-in simulator "
            f"([simulate] of {cfg.name})")
        exps, fieldcat = simulated_exposures(n_exposures, config=cfg.simulate, seed=seed)
        triples = [(im, xy, bg if labels == "truth" else None) for im, xy, bg, _ in exps]
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

        triples = gen()
        cat_for_pool = cat_all
        data_summary = {"source": "user exposures", "n_exposures": len(paths),
                        "images": [p.name for p in paths[:50]],
                        "catalog": str(getattr(catalog, "meta", {}).get("source", catalog))}
        total = len(paths)
    ts = build_training_set(triples, s, keys, seed=seed, catalog=cat_for_pool, quiet=quiet,
                            total=total)
    is_val = split_by_exposure(ts.exposure, s.val_fraction, seed)
    train, val = ts.subset(~is_val), ts.subset(is_val)
    if len(val) == 0:
        log.warning("only one exposure: validating on the training stamps (no held-out data)")
        val = train
    say(f"{len(train)} training and {len(val)} validation stamps from "
        f"{len(np.unique(ts.exposure))} exposures; keys: {', '.join(keys)}")
    arch = BKGnetArch.from_preset(hp["preset"], stamp_size=s.stamp_size, mask_size=s.mask_size,
                                  n_keys=len(keys), use_coords=use_coords)
    model = BKGnet(arch)
    tc = TrainConfig(epochs=int(hp["epochs"]), batch_size=int(hp["batch_size"]),
                     lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]),
                     patience=hp["patience"], scheduler="plateau",
                     scheduler_kwargs={"factor": 0.3, "patience": 2}, grad_clip=10.0,
                     seed=seed, device=device, threads=threads, quiet=quiet)
    trainer = Trainer(model, _loss, tc, checkpoint=output.with_suffix(".ckpt"))
    hist = trainer.fit(train.tensors(), val.tensors(), resume=resume)
    model = trainer.model.cpu().eval()
    metrics = validation_metrics(model, val)
    k = sigma_scale(model, val)
    metrics.update(best_epoch=hist.best_epoch + 1, epochs_run=len(hist.epochs),
                   best_val_nll=hist.best_val, train_seconds=round(time.perf_counter() - t0, 1))
    card = {
        "kind": "bkgnet", "arch": arch.as_dict(), "preset": arch.preset,
        "description": description or "BKGnet background + error at each source",
        "inputs": {"keys": keys, "labels": labels, "n_label": float(np.pi * s.label_radius**2),
                   "label_radius": s.label_radius, "min_valid": s.min_valid,
                   "sigma_scale": k,
                   "normalisation": "median and 1.4826 MAD of valid pixels (2x2 grid), "
                                    "5 asinh(v/5), invalid = 0, validity channel",
                   "coords": "x / (nx - 1) * 2 - 1, y / (ny - 1) * 2 - 1",
                   "image_shape": sorted(shapes)[0] if shapes else None,
                   "mag": "(mag - 21) / 2; learned default when absent"},
        "training": {**hp, "seed": seed, "labels": labels, "inject": s.inject,
                     "use_coords": use_coords, "settings": asdict(s),
                     "flops_per_stamp": flops_per_stamp(model),
                     "history": [{k: round(v, 6) if isinstance(v, float) else v
                                  for k, v in e.items()} for e in hist.epochs]},
        "data": {**data_summary, "n_train": len(train), "n_val": len(val)},
        "metrics": metrics,
        "training_command": command or "(API) skysub.background.bkgnet.train_bkgnet",
        "skysub_version": __version__,
    }
    save_model(output, model, card, overwrite=True)
    return card


def command_line(argv: list[str] | None = None) -> str:
    """The command line (``argv``, default the process's), for model cards."""
    return " ".join(shlex.quote(a) for a in ["skysub", *(sys.argv[1:] if argv is None
                                                         else argv)])
