"""BKGnet's model selection against the truth: every epoch of one fine-tuning, scored.

The shipped ``bkgnet-paus`` is fine-tuned on ``--n-band`` exposures of one band of an
instrument of the ``heldout`` family, as ``benchmarks.bench_bkgnet_transfer``'s second table
(``skysub train bkgnet``), with early stopping off so that every epoch runs.  The starting
weights and those after every epoch are kept and scored by what a user can compute on the
training exposures' held-out sky tiles -- the scaled NLL of the held-out stamps (the previous
default), sigma68 of ``(b - label) / label`` on them, and the duplicates score
(``skysub.background.bkgnet.selection``: faint sources cancel in the difference of two
exposures' labels) -- and by the truth: sigma68 of the relative error against the simulator's
noise-free background at the catalogued sources of ``--n-test`` exposures of another field.
Table: one row per epoch (0 = the starting weights); notes: the rank correlation of each score
with the truth and the epoch each would pick.  The training's own trajectory (learning-rate
plateaus) follows ``--select``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from skysub.background.bkgnet.training import SELECT

from . import BenchResult, run_and_print

SCORES = [("val_snll", "scaled NLL (held-out stamps)"),
          ("val_resid", "sigma68(b - label) (held-out stamps)"),
          ("dup", "duplicates score")]
COLUMNS = [("state", "epoch", "d"), ("truth", "truth s68", ".5f"),
           ("val_snll", "scaled NLL", ".4f"), ("val_resid", "s68(b-label)", ".5f"),
           ("dup", "duplicates x1e6", ".3f")]


def _capture(training) -> dict:
    """Patch ``training`` to keep the training set and the weights at the start and after
    every epoch (returns the dict they go to); early stopping off."""
    cap: dict = {"states": []}
    training.FINETUNE_DEFAULTS["patience"] = 10_000
    build = training.build_training_set
    selecting = training._selecting_trainer

    def keep(model):
        cap["states"].append(copy.deepcopy({k: v.detach().cpu()
                                            for k, v in model.state_dict().items()}))

    def build_and_keep(*a, **kw):
        cap["ts"] = build(*a, **kw)
        return cap["ts"]

    def trainer(select, scorer=None):
        cls = selecting(select, scorer)

        class Keeping(cls):
            def __init__(self, model, *a, **kw):
                keep(model)
                super().__init__(model, *a, **kw)

            def evaluate(self, data):
                if self.config.score_initial and not cap.get("initial_scored"):
                    cap["initial_scored"] = True  # the starting weights: kept at __init__
                else:
                    keep(self.model)
                return super().evaluate(data)

        return Keeping

    training.build_training_set = build_and_keep
    training._selecting_trainer = trainer
    cap["restore"] = lambda: (setattr(training, "build_training_set", build),
                              setattr(training, "_selecting_trainer", selecting))
    return cap


def run(*, instrument_seed: int = 53, test_field: int = 3, seed: int = 1, n_band: int = 4,
        n_test: int = 8, epochs: int = 12, stamps_per_image: int | None = None,
        select: str | None = None, threads: int | None = 1) -> BenchResult:
    from scipy.stats import spearmanr

    from skysub.background.bkgnet import BKGnetBackground
    from skysub.background.bkgnet import training as T
    from skysub.background.bkgnet.calibration import predict_set
    from skysub.background.bkgnet.estimator import BKGnetSettings
    from skysub.background.bkgnet.selection import duplicate_positions, duplicates_score
    from skysub.nn.modelfile import load_model
    from skysub.simulate.randomised import HELDOUT, instrument_exposures, random_instrument
    from skysub.simulate.trainingdata import sky_tiles, split_by_sky
    from skysub.stats import sigma68

    from .bench_bkgnet_transfer import _train

    if test_field in (1, 4):
        raise ValueError(f"test_field {test_field} is a training field (1, 4)")
    inst = random_instrument(HELDOUT, seed=instrument_seed, shape=(512, 1024))
    cfg = inst["config"]
    band = cfg.bands[1]
    one = {**inst, "config": dataclasses.replace(cfg, bands=[band], sky={band: cfg.sky[band]})}
    train, cat = instrument_exposures(one, n_band, seed=(instrument_seed, 4))
    test, _ = instrument_exposures(one, n_test, seed=(instrument_seed, test_field))
    cap = _capture(T)
    tmp = Path(tempfile.mkdtemp(prefix="bench_bkgnet_selection_"))
    try:
        model, secs, _ = _train(tmp, train, cat, seed=seed, stamps_per_image=stamps_per_image,
                                epochs=epochs, threads=threads, select=select)
        net0, card = load_model(model, kind="bkgnet")
    finally:
        cap["restore"]()
    card = copy.deepcopy(card)
    card["inputs"].pop("error_calibration", None)
    card["inputs"]["sigma_scale"] = 1.0
    ts = cap["ts"]
    s = BKGnetSettings()
    _, is_val = split_by_sky(ts.sky, s.val_fraction, seed)
    val = ts.subset(is_val)
    # the training set's exposure order: the files' sorted names
    exps = sorted(train, key=lambda t: t[0].path.name)
    pos = duplicate_positions(((im, xy) for im, xy, _, _ in exps), s,
                              np.unique(sky_tiles(ts.sky[is_val])), seed=seed)
    rows = []
    for i, st in enumerate(cap["states"]):
        net = copy.deepcopy(net0)
        net.load_state_dict(st)
        est = BKGnetBackground((copy.deepcopy(net), card), device="cpu", threads=threads)
        rel = []
        for im, _, _, truth in test:
            r = est.estimate(im, np.asarray(truth["x"]), np.asarray(truth["y"]),
                             mag=np.asarray(truth["mag"]))
            t = np.asarray(truth["bkg_true"])
            ok = np.isfinite(r.bkg) & np.isfinite(t)
            rel.append((r.bkg[ok] - t[ok]) / t[ok])
        b, sg = predict_set(net.eval(), val)
        ok = np.isfinite(b) & np.isfinite(sg) & (sg > 0)
        z2 = ((b[ok] - val.label[ok]) / sg[ok]) ** 2
        bd = np.full(len(pos.x), np.nan)
        for j, (im, _, _, _) in enumerate(exps):
            sel = np.flatnonzero(pos.exposure == j)
            if len(sel):
                bd[sel] = est.estimate(im, pos.x[sel], pos.y[sel]).bkg
        rows.append({"state": i, "truth": float(sigma68(np.concatenate(rel))),
                     "val_snll": float(np.mean(2 * np.log(sg[ok])) + np.log(np.mean(z2)) + 1),
                     "val_resid": float(sigma68((b[ok] - val.label[ok]) / val.label[ok])),
                     "dup": 1e6 * duplicates_score(bd, pos.label, pos.i1, pos.i2, pos.level)})
    shutil.rmtree(tmp, ignore_errors=True)
    truth = np.array([r["truth"] for r in rows])
    res = BenchResult(
        title=(f"BKGnet model selection vs the truth: bkgnet-paus fine-tuned on {n_band} "
               f"exposures of band {band} of instrument {instrument_seed} ({HELDOUT.name} "
               f"family), every epoch; truth on {n_test} exposures of field "
               f"({instrument_seed}, {test_field}); training seed {seed}"),
        columns=COLUMNS, rows=rows)
    res.notes.append(f"truth: best epoch {int(np.argmin(truth))} (sigma68 {truth.min():.5f}); "
                     f"training {secs:.0f} s, {len(val)} held-out stamps, {pos.n_pairs} pairs")
    for key, name in SCORES:
        v = np.array([r[key] for r in rows])
        pick = int(np.argmin(v))
        res.notes.append(f"{name}: Spearman rho with the truth {spearmanr(v, truth).statistic:+.2f}"
                         f", picks epoch {pick} ({truth[pick] / truth.min():.2f}x the best "
                         "truth sigma68)")
    return res


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="150 training positions per exposure, 6 epochs, 3 test exposures")
    p.add_argument("--instrument-seed", type=int, default=53,
                   help="instrument of the heldout family (53, the development one)")
    p.add_argument("--test-field", type=int, default=3,
                   help="test field seed (instrument seed, TEST_FIELD) (3); not 1 or 4")
    p.add_argument("--seed", type=int, default=1, help="training seed (1)")
    p.add_argument("--n-band", type=int, default=4, help="training exposures of the band (4)")
    p.add_argument("--n-test", type=int, default=None, help="test exposures (8; quick 3)")
    p.add_argument("--epochs", type=int, default=None, help="epochs, all run (12; quick 6)")
    p.add_argument("--stamps-per-image", type=int, default=None,
                   help="training positions per exposure (default: the training's; quick 150)")
    p.add_argument("--select", default=None,
                   choices=SELECT,
                   help="selection that drives the training's plateaus (default: the "
                        "training's, duplicates)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--repeats", type=int, default=1, help="ignored (one run)")
    a = p.parse_args(argv)
    a.n_test = a.n_test or (3 if a.quick else 8)
    a.epochs = a.epochs or (6 if a.quick else 12)
    if a.quick:
        a.stamps_per_image = a.stamps_per_image or 150
    return a


def run_from_args(a: argparse.Namespace) -> BenchResult:
    return run(instrument_seed=a.instrument_seed, test_field=a.test_field, seed=a.seed,
               n_band=a.n_band, n_test=a.n_test, epochs=a.epochs,
               stamps_per_image=a.stamps_per_image, select=a.select, threads=a.threads)


def main(argv=None) -> BenchResult:
    """Command line: parse ``argv``, run, print the table; returns the result."""
    return run_and_print(parse, run_from_args, argv)


if __name__ == "__main__":
    main()
    sys.exit(0)
