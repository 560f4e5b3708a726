"""Smoke test of benchmarks/bench_batch.py at a tiny size: the table's numbers are consistent
and the 1- and 2-worker runs give identical results.  Timings are never asserted."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_batch  # noqa: E402


def test_bench_batch_tiny(capsys):
    res = bench_batch.main(["--quick", "--n-exposures", "3", "--nx", "256", "--ny", "128",
                            "--no-networks", "--whole", "2", "--whole-size", "128"])
    # the whole command, as a user runs it: one row per worker count, its own time report
    assert [(r["exposures"], r["workers"]) for r in res.whole_rows] == [(2, 1), (2, 2)]
    for row in res.whole_rows:
        assert row["seconds"] > row["compute"] > 0 and row["startup"] > 0
        assert row["read"] > 0 and row["write"] > 0 and 0 < row["cpu_share"]
    assert res.whole_rows[0]["speedup"] == 1.0
    assert [r["workers"] for r in res.rows] == [1, 2]
    for row in res.rows:
        assert row["exposures"] == 3 and row["rows"] > 0
        assert row["seconds"] > 0 and row["exp_per_s"] > 0 and row["speedup"] > 0
        assert 0 < row["peak_rss_mb"] < 2000
    assert res.rows[0]["rows"] == res.rows[1]["rows"] and res.rows[0]["speedup"] == 1.0
    assert res.checks_passed, [c.line() for c in res.checks]  # identical results
    assert len(res.goals) == 1 and "1.8x" in res.goals[0].name
    out = capsys.readouterr().out
    assert "exposures/s" in out and "load average" in out and "Whole command" in out


def test_network_speed_rows(tmp_path):
    path = bench_batch.random_bkgnet(tmp_path / "lean.pt", "lean", stamp_size=48, mask_size=16)
    rows = bench_batch.network_speed(path, "bkgnet-lean", [8], [1], repeats=1)
    assert len(rows) == 1
    r = rows[0]
    assert r["batch"] == 8 and r["threads"] == 1 and r["params"] > 1000
    assert r["fwd"] > 0 and r["e2e"] > 0
