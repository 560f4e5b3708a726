"""No file skysub reads may run code: checkpoints and model files load with
``torch.load(weights_only=True)``; a crafted file is refused with a clear error and its payload
never runs.  Also: nothing in the package unpickles."""

import os
import re
from pathlib import Path

import pytest
import torch

import skysub
from skysub.errors import InputError
from skysub.nn import modelfile
from skysub.nn.trainer import TrainConfig, Trainer


class _Payload:
    """Unpickling this object runs ``touch <sentinel>`` (what an attacker would ship)."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _mse(model, batch):
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g)
    return {"x": x, "y": 2 * x}


@pytest.mark.parametrize("scheduler", [None, "plateau", "step"])
def test_real_checkpoints_load_with_weights_only(tmp_path, scheduler):
    """What the trainer writes (model, optimiser, scheduler, history, config) is all plain data."""
    ckpt = tmp_path / "m.ckpt"
    cfg = TrainConfig(epochs=2, batch_size=16, quiet=True, device="cpu", scheduler=scheduler,
                      patience=None)
    Trainer(torch.nn.Linear(1, 1), _mse, cfg, checkpoint=ckpt).fit(_data(), _data(seed=1))
    state = torch.load(ckpt, weights_only=True)  # raises if anything else were inside
    assert state["next_epoch"] == 2 and len(state["history"]["epochs"]) == 2
    cfg4 = TrainConfig(epochs=4, batch_size=16, quiet=True, device="cpu", scheduler=scheduler,
                       patience=None)
    tr = Trainer(torch.nn.Linear(1, 1), _mse, cfg4, checkpoint=ckpt)
    hist = tr.fit(_data(), _data(seed=1), resume=True)
    assert [e["epoch"] for e in hist.epochs] == [1, 2, 3, 4]


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    ckpt = tmp_path / "evil.ckpt"
    model = torch.nn.Linear(1, 1)
    torch.save({"model": model.state_dict(), "optimizer": _Payload(sentinel)}, ckpt)
    tr = Trainer(model, _mse, TrainConfig(epochs=1, quiet=True, device="cpu"), checkpoint=ckpt)
    with pytest.raises(InputError, match=r"refusing to read checkpoint .*evil\.ckpt.*run code"):
        tr.fit(_data(), resume=True)
    assert not sentinel.exists()


def test_checkpoint_that_is_not_a_dict_is_refused(tmp_path):
    ckpt = tmp_path / "list.ckpt"
    torch.save([1, 2, 3], ckpt)
    tr = Trainer(torch.nn.Linear(1, 1), _mse, TrainConfig(epochs=1, quiet=True, device="cpu"),
                 checkpoint=ckpt)
    with pytest.raises(InputError, match="not a skysub checkpoint"):
        tr.fit(_data(), resume=True)


def test_crafted_model_file_is_refused_and_runs_nothing(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "evil.pt"
    torch.save({"format": "skysub-model", "format_version": 1, "card": {"kind": "bkgnet"},
                "state_dict": _Payload(sentinel)}, path)
    with pytest.raises(InputError, match=r"refusing to read model file .*evil\.pt.*could run code"):
        modelfile.load_model(path)
    with pytest.raises(InputError, match="refusing to read"):
        modelfile.read_card(path)
    assert not sentinel.exists()


def test_nothing_in_the_package_unpickles():
    root = Path(skysub.__file__).parent
    bad = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|pickle\.Unpickler|"
                     r"dill\.|cloudpickle\.loads?\(|np\.load\([^)]*allow_pickle\s*=\s*True")
    offenders = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert offenders == []
