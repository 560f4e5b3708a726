"""The shared network machinery: device choice, the trainer (fit, best checkpoint, early stop,
exact resume) and model files (save/load round trip, clear errors)."""

import json

import pytest
import torch

from skysub.errors import InputError, MissingFileError, OutputExistsError
from skysub.nn import modelfile
from skysub.nn.device import resolve_device, seed_everything
from skysub.nn.trainer import TrainConfig, Trainer


def _line_data(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 2 - 1
    y = 3.0 * x + 1.0 + 0.01 * torch.randn(n, 1, generator=g)
    return {"x": x, "y": y}


def _mse(model, batch):
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_trainer_fits_a_line():
    seed_everything(0)
    model = torch.nn.Linear(1, 1)
    cfg = TrainConfig(epochs=60, lr=0.05, batch_size=64, quiet=True, device="cpu")
    hist = Trainer(model, _mse, cfg).fit(_line_data(), _line_data(seed=1))
    assert float(model.weight.detach()) == pytest.approx(3.0, abs=0.02)
    assert float(model.bias.detach()) == pytest.approx(1.0, abs=0.02)
    assert hist.val_loss[-1] < 1e-3 < hist.val_loss[0]


def test_best_checkpoint_and_early_stopping():
    """A validation set the model cannot fit: the best epoch is kept, training stops early."""
    seed_everything(0)
    model = torch.nn.Linear(1, 1)
    train = _line_data()
    val = {"x": train["x"], "y": -train["y"]}  # the better the fit, the worse the validation
    cfg = TrainConfig(epochs=50, lr=0.05, batch_size=64, patience=3, quiet=True, device="cpu")
    tr = Trainer(model, _mse, cfg)
    hist = tr.fit(train, val)
    assert hist.stopped_early and len(hist.epochs) < 50
    assert hist.best_epoch == min(range(len(hist.val_loss)), key=hist.val_loss.__getitem__)
    # the model holds the best-validation weights, not the last ones
    assert tr.evaluate(val) == pytest.approx(hist.best_val, rel=1e-6)


def test_resume_gives_the_same_weights(tmp_path):
    """Interrupted after 4 epochs and resumed to 8 == 8 epochs in one go."""
    data, val = _line_data(), _line_data(seed=1)

    def run(epochs, ckpt, resume=False, init=None):
        seed_everything(0)
        m = torch.nn.Linear(1, 1)
        cfg = TrainConfig(epochs=epochs, lr=0.01, batch_size=32, quiet=True, patience=None,
                          device="cpu", seed=3)
        tr = Trainer(m, _mse, cfg, checkpoint=ckpt)
        tr.fit(data, val, resume=resume)
        return m, tr

    full, _ = run(8, tmp_path / "a.ckpt")
    run(4, tmp_path / "b.ckpt")
    resumed, tr = run(8, tmp_path / "b.ckpt", resume=True)
    assert len(tr.history.epochs) == 8
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(InputError, match="does not exist"):
        run(8, tmp_path / "missing.ckpt", resume=True)


def test_trainer_rejects_bad_settings_and_data():
    with pytest.raises(InputError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(InputError, match="lr"):
        TrainConfig(lr=-1.0)
    tr = Trainer(torch.nn.Linear(1, 1), _mse, TrainConfig(quiet=True, device="cpu"))
    with pytest.raises(InputError, match="different lengths"):
        tr.fit({"x": torch.zeros(3, 1), "y": torch.zeros(4, 1)})


def test_nan_loss_is_reported():
    data = {"x": torch.full((8, 1), float("nan")), "y": torch.zeros(8, 1)}
    tr = Trainer(torch.nn.Linear(1, 1), _mse, TrainConfig(quiet=True, device="cpu", epochs=1))
    with pytest.raises(FloatingPointError, match="NaN"):
        tr.fit(data)


class _Tiny(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = torch.nn.Linear(2, width)


def test_model_file_round_trip_and_errors(tmp_path):
    modelfile.register_kind("tiny", lambda arch: _Tiny(**arch))
    m = _Tiny(4)
    path = modelfile.save_model(tmp_path / "m.pt", m, {"kind": "tiny", "arch": {"width": 4},
                                                       "metrics": {"loss": 0.5}})
    card = json.loads(modelfile.card_path(path).read_text())
    assert card["kind"] == "tiny" and card["n_parameters"] == 12 and card["skysub_version"]
    m2, card2 = modelfile.load_model(path, kind="tiny")
    assert torch.equal(m2.lin.weight, m.lin.weight) and card2["metrics"]["loss"] == 0.5
    with pytest.raises(OutputExistsError):
        modelfile.save_model(path, m, {"kind": "tiny", "arch": {"width": 4}})
    with pytest.raises(InputError, match="not a 'bkgnet' model"):
        modelfile.load_model(path, kind="bkgnet")
    # weights that do not fit the architecture in the card
    modelfile.save_model(tmp_path / "bad.pt", _Tiny(5), {"kind": "tiny", "arch": {"width": 4}})
    with pytest.raises(InputError, match="do not fit"):
        modelfile.load_model(tmp_path / "bad.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a skysub model"):
        modelfile.load_model(junk)
    with pytest.raises(MissingFileError, match="shipped models"):
        modelfile.resolve_model("no-such-model")


def test_nan_loss_once_is_recovered_with_a_lower_learning_rate(capsys):
    """A loss that is NaN once: the epoch is rerun from its starting state with lr / 10, the
    fit goes on and still learns the line."""
    x = torch.linspace(-1, 1, 64)[:, None]
    data = {"x": x, "y": 3 * x + 1}
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += model.training  # training steps only
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        return loss * float("nan") if calls["n"] == 5 else loss

    tr = Trainer(torch.nn.Linear(1, 1), flaky,
                 TrainConfig(quiet=True, device="cpu", epochs=300, lr=0.5, batch_size=16,
                             patience=None))
    hist = tr.fit(data, data)
    assert len(hist.epochs) == 300
    assert hist.epochs[-1]["lr"] == pytest.approx(0.05)
    assert float(tr.model.bias.detach()) == pytest.approx(1.0, abs=0.02)
    assert float(tr.model.weight.detach()) == pytest.approx(3.0, abs=0.05)


def test_nan_loss_every_time_gives_a_training_error():
    from skysub.errors import SkysubError

    data = {"x": torch.full((8, 1), float("nan")), "y": torch.zeros(8, 1)}
    tr = Trainer(torch.nn.Linear(1, 1), _mse,
                 TrainConfig(quiet=True, device="cpu", epochs=2, max_recoveries=2))
    with pytest.raises(SkysubError, match="diverged.*2 restarts"):
        tr.fit(data)


@pytest.mark.parametrize("score_initial", [False, True])
def test_score_initial_keeps_a_starting_model_no_epoch_beats(score_initial):
    """Fine-tuning an exact model on biased labels (y + 0.5) worsens it on unbiased validation
    data: with ``score_initial`` the starting weights are kept (best_epoch -1), without it the
    best epoch is still a worse, drifted model."""
    seed_everything(0)
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.bias.fill_(1.0)
    train = _line_data()
    train = {"x": train["x"], "y": train["y"] + 0.5}
    val = _line_data(seed=1)
    cfg = TrainConfig(epochs=5, lr=0.05, batch_size=64, patience=3, quiet=True, device="cpu",
                      score_initial=score_initial)
    hist = Trainer(model, _mse, cfg).fit(train, val)
    bias = float(model.bias.detach())
    if score_initial:
        assert hist.best_epoch == -1 and bias == pytest.approx(1.0, abs=1e-6)
        assert hist.best_val < min(hist.val_loss)
    else:
        assert hist.best_epoch >= 0 and bias > 1.2
