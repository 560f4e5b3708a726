"""Smoke tests of the benchmarks at a tiny size: the result rows carry the expected numbers and
the agreement checks hold.  Timings are never asserted (they depend on the machine)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

# benchmarks/ is a top-level package of the repository, not part of the installed skysub
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (  # noqa: E402
    BenchResult,
    Check,
    bench_annulus,
    bench_mesh,
    bench_timeseries,
    best_of,
    format_table,
    machine_info,
    rel_diff,
    run_all,
    simulate_image,
)

TINY_MESH = ["--nx", "256", "--ny", "192", "--n-sources", "10", "--repeats", "1"]
TINY_ANNULUS = ["--nx", "300", "--ny", "200", "--n-sources", "30", "--repeats", "1"]


def _numeric(row: dict, key: str) -> float:
    v = row[key]
    assert isinstance(v, float | int) and not isinstance(v, bool), (key, v)
    return float(v)


def test_mesh_tiny(capsys):
    res = bench_mesh.main(TINY_MESH)
    assert isinstance(res, BenchResult)
    assert [r["method"] for r in res.rows] == [
        "sep.Background (+back, rms)", "skysub MeshBackground", "photutils Background2D"]
    for row in res.rows:
        assert _numeric(row, "time_s") > 0
        assert _numeric(row, "ratio_to_sep") > 0
        assert _numeric(row, "max_dback_rms") >= 0
        assert _numeric(row, "max_drms_rms") >= 0
    sep_row, sky_row, pu_row = res.rows
    assert sep_row["ratio_to_sep"] == 1.0 and sep_row["max_dback_rms"] == 0.0
    # skysub is sep underneath: identical maps
    assert sky_row["max_dback_rms"] == 0.0 and sky_row["max_drms_rms"] == 0.0
    # photutils uses another mode estimator and interpolation: close to sep, not equal
    assert 0 < pu_row["max_dback_rms"] < 2.0
    assert res.checks and res.checks_passed, [c.line() for c in res.checks]
    assert len(res.goals) == 1 and "1.2x" in res.goals[0].name
    out = capsys.readouterr().out
    assert "machine: nproc" in out and "photutils" in out and "sep" in out
    assert "skysub MeshBackground" in out and ("PASS" in out or "FAIL" in out)


def test_annulus_tiny(capsys):
    res = bench_annulus.main(TINY_ANNULUS)
    # photutils, skysub (numba), skysub (numpy fallback), SEP; circular + elliptical
    assert len(res.rows) == 8
    assert any("elliptical" in r["method"] for r in res.rows)
    for row in res.rows:
        assert _numeric(row, "time_s") > 0
        assert _numeric(row, "speedup") > 0
        assert _numeric(row, "vs_sep") > 0
    skysub_rows = [r for r in res.rows if r["method"].startswith("skysub")]
    assert len(skysub_rows) == 4
    for row in skysub_rows:  # same numbers as photutils
        assert row["max_rel_median"] <= 1e-12 and row["max_rel_std"] <= 1e-12
    sep_rows = [r for r in res.rows if r["method"].startswith("SEP")]
    assert len(sep_rows) == 2 and all(r["vs_sep"] == 1.0 for r in sep_rows)
    assert len(res.checks) == 2 and res.checks_passed, [c.line() for c in res.checks]
    names = [g.name for g in res.goals]
    assert any("10x faster" in n for n in names) and any("1e-12" in n for n in names)
    assert any("SEP" in n for n in names)
    assert "speed-up" in capsys.readouterr().out


def test_elliptical_photutils_angle_is_radians():
    """The benchmark hands photutils radians: with degrees the numbers would disagree."""
    image, x, y = simulate_image(200, 200, 20, seed=3)
    x, y = np.array([100.3]), np.array([99.6])
    med_sk, std_sk = bench_annulus._skysub(image, x, y, 0.6, 30.0)()
    med_pu, std_pu = bench_annulus._photutils(image, x, y, 0.6, 30.0)()
    assert rel_diff(med_sk, med_pu) <= 1e-12 and rel_diff(std_sk, std_pu) <= 1e-12
    # the classic mistake (degrees passed as radians) selects other pixels
    from astropy.stats import SigmaClip
    from photutils.aperture import ApertureStats, EllipticalAnnulus

    wrong = ApertureStats(image, EllipticalAnnulus((100.3, 99.6), 30, 45, 27, theta=30.0),
                          sigma_clip=SigmaClip(sigma=3.0, maxiters=10))
    right = ApertureStats(image, EllipticalAnnulus((100.3, 99.6), 30, 45, 27,
                                                   theta=np.deg2rad(30.0)),
                          sigma_clip=SigmaClip(sigma=3.0, maxiters=10))
    assert wrong.center_aper_area != right.center_aper_area or wrong.std != right.std


def test_run_all_quick_args(monkeypatch, capsys):
    """run_all forwards --quick/--repeats/--seed to both benchmarks and prints both tables."""
    seen = []

    def fake(name):
        def run_from_args(args):
            seen.append((name, args.quick, args.repeats, args.seed, getattr(args, "nx", None)))
            return BenchResult(title=f"{name} table", columns=[("method", "method", "")],
                               rows=[{"method": "m"}], checks=[Check("ok", True)])
        return run_from_args

    for bench in run_all.BENCHMARKS:  # every benchmark make bench runs, none for real
        monkeypatch.setattr(bench, "run_from_args", fake(bench.__name__.split("_", 1)[1]))
    assert run_all.main(["--quick", "--repeats", "2", "--seed", "5"]) == 0
    assert seen[:3] == [("mesh", True, 2, 5, 1024), ("annulus", True, 2, 5, 2048),
                        ("timeseries", True, 2, 5, None)]
    assert [s[0] for s in seen] == ["mesh", "annulus", "timeseries", "inject", "bkgnet",
                                     "bkgnet_transfer", "bkgnet_real", "lumos", "lumos_real",
                                     "removal", "removal_real", "batch", "cli"]
    assert all(s[1:4] == (True, 2, 5) for s in seen)
    out = capsys.readouterr().out
    assert "mesh table" in out and "annulus table" in out and "timeseries table" in out
    assert out.count("machine:") == 1


def test_run_all_exit_status_on_failed_check(monkeypatch, capsys):
    def failing(args):
        return BenchResult(title="t", columns=[("method", "method", "")],
                           checks=[Check("numbers agree", False)])

    for bench in run_all.BENCHMARKS:
        monkeypatch.setattr(bench, "run_from_args", failing)
    assert run_all.main(["--quick"]) == 1
    assert "[FAIL] numbers agree" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--nx", "0"], ["--n-sources", "-1"]])
def test_bad_arguments_exit_with_message(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_mesh.parse(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_run_all_rejects_bad_repeats(capsys):
    with pytest.raises(SystemExit):
        run_all.main(["--repeats", "0"])
    assert "--repeats must be >= 1" in capsys.readouterr().err


def test_simulated_image_truth_and_seed():
    a, xa, ya = simulate_image(400, 300, 50, seed=7)
    b, xb, yb = simulate_image(400, 300, 50, seed=7)
    c, _, _ = simulate_image(400, 300, 50, seed=8)
    assert a.shape == (300, 400) and a.dtype == np.float64 and a.flags.c_contiguous
    assert np.array_equal(a, b) and np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(a, c)
    # far from sources the sky is 1000 ADU at the centre, Poisson (sigma ~ sqrt(1000) = 31.6)
    flat, _, _ = simulate_image(400, 300, 0, gradient=(0.0, 0.0), seed=1)
    assert abs(flat.mean() - 1000.0) < 0.5  # 1.2e5 px: error of the mean 0.09
    assert abs(flat.std() - math.sqrt(1000.0)) < 0.5
    # the gradient spans 150 ADU in x and 80 ADU in y
    g, _, _ = simulate_image(400, 300, 0, seed=1)
    assert abs(g[:, -20:].mean() - g[:, :20].mean() - 150.0 * 380 / 399) < 2.0
    assert abs(g[-20:, :].mean() - g[:20, :].mean() - 80.0 * 280 / 299) < 2.0
    # sources add flux: with 30 sources of >= 2000 ADU the image holds more than the sky
    src, _, _ = simulate_image(400, 300, 30, gradient=(0.0, 0.0), seed=1)
    assert src.sum() - flat.sum() > 30 * 2000 * 0.5  # (edge sources lose part of their flux)


def test_helpers():
    calls = []
    t, r = best_of(lambda: calls.append(1) or len(calls), repeats=3, warmup=True)
    assert t >= 0 and r == 4 and len(calls) == 4
    with pytest.raises(ValueError, match="repeats"):
        best_of(lambda: None, repeats=0)
    assert rel_diff(np.array([1.0, 2.0]), np.array([1.0, 2.002])) == pytest.approx(0.001 / 1.001,
                                                                                     rel=1e-9)
    assert rel_diff(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 0.0
    assert rel_diff(np.array([np.nan, 1.0]), np.array([3.0, 1.0])) == math.inf
    rows = [{"method": "a", "t": 1.23456}, {"method": "long name", "t": float("nan")}]
    table = format_table([("method", "method", ""), ("t", "time [s]", ".3f")], rows)
    lines = table.splitlines()
    assert lines[0].startswith("method") and len({len(line) for line in lines[:2]}) == 1
    assert lines[2].endswith("1.235") and lines[3].endswith("-")
    info = machine_info()
    assert int(info["nproc"]) >= 1 and info["numpy"] == np.__version__


def test_timeseries_tiny(capsys):
    """12 frames x 3 cameras x 128 px: every number of the table against the simulated truth
    (loose: few frames), the checks pass, timings are only printed."""
    res = bench_timeseries.main(["--n-images", "12", "--binning", "16", "--processes", "1"])
    assert [r["method"] for r in res.rows] == ["aperture_annulus", "optimal_annulus"]
    for row in res.rows:
        assert _numeric(row, "time_s") > 0
        assert abs(_numeric(row, "bkg") - 100) < 1.0
        assert abs(_numeric(row, "bkg_err") - 10) < 1.0
        assert 0 < _numeric(row, "bkg_mean_err") < 1.5
        assert abs(_numeric(row, "flux_bias")) < 1.0 and abs(_numeric(row, "flux_worst")) < 2.0
        assert _numeric(row, "freq_err") >= 0
    assert res.checks_passed, [c.line() for c in res.checks]
    assert len(res.goals) == 5 and "60 s" in res.goals[0].name
    assert "reduce+phot [s]" in capsys.readouterr().out


@pytest.mark.slow
def test_lumos_bench_tiny(tmp_path, capsys):
    """bench_lumos end to end with an untrained lean model (numbers meaningless; the table and
    its goal lines must be produced)."""
    import torch
    from benchmarks import bench_lumos

    from skysub.nn.lumos import Lumos, LumosArch
    from skysub.nn.modelfile import save_model

    torch.manual_seed(0)
    net = Lumos(LumosArch.from_preset("lean", n_keys=6)).eval()
    path = save_model(tmp_path / "l.pt", net, {"kind": "lumos", "arch": net.arch.as_dict()})
    res = bench_lumos.main(["--model", str(path), "--n-objects", "40", "--n-blend", "1",
                            "--n-speed", "50", "--repeats", "1"])
    assert {r["method"] for r in res.rows} >= {"lumos", "aperture", "optimal"}
    assert any("sources/s" in g.name for g in res.goals)
    assert "Lumos vs baselines" in capsys.readouterr().out


def test_inject_bench_tiny():
    from benchmarks import bench_inject

    res = bench_inject.main(["--n", "15", "--realisations", "1", "--methods",
                             "aperture+annulus,optimal+annulus"])
    assert {r["frame"] for r in res.rows} == set(bench_inject.real_frames())
    allrows = [r for r in res.rows if r["snr"] == "all"]
    # two methods, each without, with the frame's single empty-aperture fit (" gcal") and with
    # the default local calibration (" cal")
    assert len(allrows) == 6 * len(bench_inject.real_frames())
    for suffix in (" cal", " gcal"):
        assert sum(r["method"].endswith(suffix) for r in allrows) == 2 * len(
            bench_inject.real_frames())
    assert any("empty-aperture" in g.name for g in res.goals)
    for r in allrows:
        assert r["n"] >= 5 and math.isfinite(_numeric(r, "sigma68"))
        assert abs(r["bias"]) < 0.2  # the injected light comes back (truth known exactly)
        # a bootstrap standard error (15 heavy-tailed pulls: up to ~ the width itself)
        assert 0 < _numeric(r, "pull_se") < _numeric(r, "pull_sigma68")


def test_inject_bench_clearance_tiny():
    """--clearance: the distances obey the placement rules (empty positions at least the
    calibration's clearance from every source and the border, injected stars 15 px)."""
    from benchmarks import bench_inject

    res = bench_inject.main(["--clearance", "--n", "10", "--realisations", "1", "--frames",
                             "optical-300x440"])
    rows = {(r["population"], r["to"]): r for r in res.rows}
    assert rows[("injected stars", "nearest source")]["p5"] >= 15.0
    assert rows[("empty positions, aperture", "nearest source")]["p5"] >= 9.5 - 1e-9
    assert rows[("empty positions, aperture", "border")]["p5"] >= 9.5 - 1e-9
    assert rows[("empty positions, optimal", "nearest source")]["n"] > 100
    assert rows[("catalogued sources", "nearest source")]["p5"] < 9.5  # closer than any probe


def test_zeropoint_bench_one_frame(capsys):
    """One simulated deep frame: the old fits fail, the masked one lands near the truth."""
    from benchmarks import bench_zeropoint

    res = bench_zeropoint.main(["--frames", "1", "--seed", "101"])
    (row,) = res.rows
    assert row["old"] == "error" and row["source"] == "masked"
    assert abs(_numeric(row, "pull")) < 3 and _numeric(row, "n") >= 5
    assert "zp - true" in capsys.readouterr().out
