"""`skysub train lumos --init`: fine-tuning starts from the pre-trained model's weights (new
band x epoch keys at the mean of the known embeddings), `--init none` and `--simulated` train
from scratch, an init that does not fit the settings gives a note (auto) or a one-line error,
and the card records the init."""

import json

import numpy as np
import pytest
import torch
from astropy.io import fits

from skysub.cli import main
from skysub.nn.modelfile import load_model
from skysub.photometry.lumos.training import FINETUNE_DEFAULTS

TINY = ('base = "generic"\n[lumos]\nstamps_per_image = 60\nbatch_size = 32\n'
        'calibration_injections = 0\n')


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    out = tmp_path_factory.mktemp("initframes")
    assert main(["simulate", "ccd", "--output", str(out / "sim"), "--n-exposures", "4",
                 "--size", "256", "192", "--seed", "5", "--quiet", "--config", "paus"]) == 0
    paths = sorted((out / "sim" / "images").glob("*.fits"))
    for i, p in enumerate(paths):
        with fits.open(p, mode="update") as h:
            h[0].header["MAGZPT"] = 30.0
            if i == 0:  # a band the shipped model never saw
                h[0].header["FILTER"] = "r"
    cfg = out / "tiny.toml"
    cfg.write_text(TINY + "epochs = 1\n")
    return paths, out / "sim" / "catalog.csv", cfg


def _train(capsys, frames, output, *extra, cfg=None):
    paths, catalog, tiny = frames
    rc = main(["train", "lumos", *map(str, paths), "--catalog", str(catalog), "--output",
               str(output), "--config", str(cfg or tiny), "--seed", "1", "--threads", "1",
               "--allow-poor", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    card = json.loads(output.with_suffix(".json").read_text()) if rc == 0 else None
    return rc, err, card


def test_fine_tuning_starts_from_the_shipped_weights(frames, capsys, tmp_path):
    """With a vanishing learning rate the written weights are the init's; the unseen key's
    embedding is the mean of the known ones; the card records the init."""
    rc, err, card = _train(capsys, frames, tmp_path / "ft.pt", "--lr", "1e-12")
    assert rc == 0, err
    assert "fine-tuning" in err and "r/after" in err
    assert card["init"] == "lumos-paus"  # a shipped init is named, not a local path
    init, init_card = load_model("lumos-paus", kind="lumos")
    net, _ = load_model(tmp_path / "ft.pt", kind="lumos")
    n_old = len(init_card["inputs"]["keys"])
    assert card["inputs"]["keys"][:n_old] == init_card["inputs"]["keys"]
    assert "r/after" in card["inputs"]["keys"][n_old:]
    assert card["arch"] == {**init_card["arch"], "n_keys": len(card["inputs"]["keys"])}
    new, old = dict(net.named_parameters()), dict(init.named_parameters())
    for name, p in old.items():
        q = new[name].detach()
        if name == "embed.weight":
            torch.testing.assert_close(q[:n_old], p.detach(), atol=1e-6, rtol=0)
            want = p.detach().mean(0).expand(len(q) - n_old, -1)
            torch.testing.assert_close(q[n_old:], want, atol=1e-6, rtol=0)
        else:
            torch.testing.assert_close(q, p.detach(), atol=1e-6, rtol=0, msg=name)
    # the fine-tuning schedule, the section's epochs kept
    assert card["training"]["settings"]["lr"] == 1e-12
    assert card["training"]["settings"]["epochs"] == 1


def test_fine_tuning_validates_far_better_after_one_epoch_than_scratch(frames, capsys,
                                                                       tmp_path):
    """One epoch at the default learning rates: the fine-tuned model's validation loss is far
    below the from-scratch one (which is the old behaviour: init None, the generic preset's
    own architecture and schedule)."""
    rc, err, ft = _train(capsys, frames, tmp_path / "ft.pt")
    assert rc == 0, err
    rc, err, sc = _train(capsys, frames, tmp_path / "sc.pt", "--init", "none")
    assert rc == 0, err
    assert "fine-tuning" not in err
    assert sc["init"] is None and "init_note" not in sc
    assert ft["training"]["settings"]["lr"] == FINETUNE_DEFAULTS["lr"]
    assert sc["training"]["settings"]["lr"] == 1e-3
    assert sc["arch"]["neighbour_fit"] is True and sc["arch"]["n_keys"] == 4
    v_ft = ft["training"]["history"][0]["val_loss"]
    v_sc = sc["training"]["history"][0]["val_loss"]
    assert np.isfinite(v_ft) and v_ft < 0.5 * v_sc, (v_ft, v_sc)


def test_an_init_that_does_not_fit_gives_a_note_or_an_error(frames, capsys, tmp_path):
    cfg = tmp_path / "joint.toml"
    cfg.write_text(TINY + "epochs = 1\nneighbour_fit = true\n")
    rc, err, _ = _train(capsys, frames, tmp_path / "x.pt", "--init", "lumos-paus", cfg=cfg)
    assert rc == 2
    line = [ln for ln in err.splitlines() if "error" in ln]
    assert len(line) == 1 and "neighbour_fit False (settings: True)" in line[0], err
    assert not (tmp_path / "x.pt").exists()
    rc, err, card = _train(capsys, frames, tmp_path / "a.pt", cfg=cfg)  # auto
    assert rc == 0, err
    assert "note: not fine-tuning lumos-paus" in err and "neighbour_fit" in err
    assert card["init"] is None and "neighbour_fit" in card["init_note"]
    assert card["arch"]["neighbour_fit"] is True


def test_a_missing_init_file_is_one_line(frames, capsys, tmp_path):
    rc, err, _ = _train(capsys, frames, tmp_path / "x.pt", "--init", str(tmp_path / "no.pt"))
    assert rc == 2
    assert "no.pt" in err and len([ln for ln in err.splitlines() if "error" in ln]) == 1


def test_simulated_training_stays_from_scratch(tmp_path, capsys):
    cfg = tmp_path / "sim.toml"
    cfg.write_text('base = "paus"\n[lumos]\nstamps_per_image = 60\nbatch_size = 32\n'
                   'epochs = 1\n')
    rc = main(["train", "lumos", "--simulated", "--config", str(cfg), "--n-exposures", "3",
               "--output", str(tmp_path / "s.pt"), "--threads", "1", "--allow-poor"])
    err = capsys.readouterr().err
    assert rc == 0, err
    card = json.loads((tmp_path / "s.json").read_text())
    assert card["init"] is None and "fine-tuning" not in err
    assert card["training"]["settings"]["lr"] == 1e-3
