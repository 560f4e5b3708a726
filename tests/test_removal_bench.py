"""Smoke test of benchmarks/bench_removal.py at a tiny size (timings never asserted)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_removal  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    old = torch.get_num_threads()
    monkeypatch.setenv("SKYSUB_THREADS", "1")
    yield
    torch.set_num_threads(old)


def test_bench_removal_tiny(capsys):
    res = bench_removal.main(["--quick", "--repeats", "1", "--n-fields", "1",
                              "--field-size", "128"])
    speeds = [r for r in res.rows if r["row"].startswith("speed")]
    assert {r["row"].split(",")[0] for r in speeds} == {"speed: default preset",
                                                        "speed: paper preset"}
    assert all(r["cutouts_s"] > 0 for r in speeds)
    flux_rows = [r for r in res.rows if r["row"].startswith("flux ")]
    assert len(flux_rows) == 9
    bright = [r for r in flux_rows if r["row"] == "flux 40000"][0]
    assert 0.8 < bright["model_median"] < 1.2 and 0.8 < bright["annulus_median"] < 1.2
    assert res.checks_passed
    assert any("cutouts/s" in g.name for g in res.goals)
    out = capsys.readouterr().out
    assert "model median" in out and "power-spectrum" in out


def test_bench_removal_bad_args(capsys):
    with pytest.raises(SystemExit):
        bench_removal.parse(["--n-fields", "0"])
    assert "--n-fields" in capsys.readouterr().err
