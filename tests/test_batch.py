"""skysub batch: equality with the serial workflows path, resume, failure isolation, outputs,
scheduler options.  Tiny images (200 x 300 px) and 4 exposures; most runs use the in-process
("threads") Dask cluster, which runs the same client/worker code as a process cluster; one test
uses worker processes, one a scheduler address."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from skysub import batch
from skysub.cli import main
from skysub.config import load_config
from skysub.errors import InputError, MissingFileError, OutputExistsError
from skysub.flags import OFF_IMAGE
from skysub.simulate.ccd import CCDSimConfig, simulate_survey
from skysub.workflows import (
    build_templates,
    make_background,
    make_photometer,
    measure_background,
    measure_photometry,
)

N_EXP = 4


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """4 small PAUS-like exposures of one band and epoch (so templates can be built too)."""
    root = tmp_path_factory.mktemp("survey")
    cfg = load_config("paus")
    sec = dict(cfg.simulate)
    sec.update(shape=[200, 300], bands=["NB685"], epochs=["before"], n_galaxies=60, n_stars=5,
               n_faint=60)
    simulate_survey(root, CCDSimConfig(**sec), n_exposures=N_EXP, seed=5, progress=False)
    images = sorted(str(p) for p in (root / "images").glob("*.fits"))
    assert len(images) == N_EXP
    return root, images, str(root / "catalog.csv")


def _sorted(t: Table) -> Table:
    t = Table(t, copy=True)
    t.sort(["image", "id"])
    return t


def assert_tables_equal(a: Table, b: Table) -> None:
    """Same columns, same rows, same values (NaN == NaN), after sorting by image and id."""
    a, b = _sorted(a), _sorted(b)
    assert a.colnames == b.colnames
    assert len(a) == len(b) > 0
    for c in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[c]), np.asarray(b[c]), err_msg=c)


def _run(survey, out, **kw):
    _, images, cat = survey
    kw.setdefault("scheduler", "threads")
    kw.setdefault("workers", 2)
    kw.setdefault("config", "paus")
    return batch.run(images, cat, out, quiet=True, **kw)


# -- equality with the serial path -------------------------------------------------------------
@pytest.mark.parametrize("method", ["annulus", "mesh", "templates"])
def test_background_equals_serial(survey, tmp_path, method):
    root, images, cat = survey
    cfg = load_config("paus")
    kw = {}
    if method == "templates":
        slt = build_templates(images, cat, config=cfg, quiet=True)
        kw["templates"] = tmp_path / "slt.fits"
        slt.save(kw["templates"])
    res = _run(survey, tmp_path / "out", method=method, **kw)
    assert (res.n_done, res.n_failed, res.n_skipped) == (N_EXP, 0, 0)
    serial = measure_background(images, cat, make_background(method, config=cfg, **kw),
                                quiet=True)
    got = batch.read_results(tmp_path / "out")
    assert res.n_rows == len(serial) == len(got)
    assert_tables_equal(got, serial)
    # one partition per exposure, named by exposure
    names = sorted(p.stem for p in (tmp_path / "out" / "parquet").glob("*.parquet"))
    assert names == sorted(Path(p).stem for p in images)


def test_photometry_on_worker_processes_equals_serial(survey, tmp_path):
    """A real local cluster (2 processes): same rows as the serial photometry, the estimator
    built once per worker process, not once per exposure."""
    root, images, cat = survey
    res = _run(survey, tmp_path / "out", method="mesh", photometer="aperture",
               scheduler=None, workers=2, formats=("parquet", "csv"))
    assert res.ok and res.n_done == N_EXP and res.workers == 2
    cfg = load_config("paus")
    phot = make_photometer("aperture", background=make_background("mesh", config=cfg),
                           config=cfg)
    serial = measure_photometry(images, cat, phot, quiet=True)
    assert {"flux", "flux_err", "bkg", "bkg_err", "flags"} <= set(serial.colnames)
    assert_tables_equal(batch.read_results(tmp_path / "out"), serial)
    # CSV partitions hold the same values as Parquet (CSV floats round-trip exactly)
    assert_tables_equal(batch.read_results(tmp_path / "out", format="csv"), serial)
    workers = {r["worker"] for r in res.records}
    assert 1 <= len(workers) <= 2
    assert all(r["builds"] == 1 for r in res.records)  # one build per worker process
    assert all(0 < r["peak_rss_mb"] < 2000 for r in res.records)
    assert all(0 < r["cpu_seconds"] and 0 < r["seconds"] for r in res.records)


def test_bkgnet_equals_serial_and_loads_model_once(survey, tmp_path):
    from skysub.background.bkgnet import train_bkgnet
    from skysub.nn.device import configure_threads

    root, images, cat = survey
    cfg = load_config("paus")
    cfg.simulate.update(shape=[200, 300], bands=["NB685"], epochs=["before"], n_galaxies=60,
                        n_stars=5, n_faint=60)
    cfg.bkgnet.update(stamps_per_image=60, stamp_size=48, mask_size=16, epochs=1,
                      batch_size=64, lr=3e-3)
    model = tmp_path / "tiny.pt"
    train_bkgnet(None, None, model, config=cfg, simulated=True, n_exposures=2,
                 labels="truth", seed=3, quiet=True, device="cpu")
    before = batch.BUILD_COUNT
    res = _run(survey, tmp_path / "out", method="bkgnet", model=str(model), device="cpu",
               batch_size=7, workers=1, validate=False)
    assert res.ok and res.n_done == N_EXP
    assert batch.BUILD_COUNT == before + 1  # in-process worker: one model load for 4 exposures
    est = make_background("bkgnet", config=load_config("paus"), model=model, device="cpu",
                          batch_size=7)
    # bit-for-bit equality needs the same torch thread count as the workers (float32 sums
    # are split differently across threads: ~1e-9 relative differences otherwise)
    configure_threads(1)
    serial = measure_background(images, cat, est, quiet=True)
    got = batch.read_results(tmp_path / "out")
    on = (np.asarray(got["flags"]) & OFF_IMAGE) == 0
    assert on.sum() > 10 and np.isfinite(np.asarray(got["bkg"], float)[on]).mean() > 0.9
    assert_tables_equal(got, serial)


def test_catalog_as_table(survey, tmp_path):
    root, images, cat = survey
    table = Table.read(cat, format="ascii.csv")
    res = batch.run(images, table, tmp_path / "out", scheduler="threads", workers=1,
                    quiet=True, config="paus")
    assert res.ok and res.n_done == N_EXP
    serial = measure_background(images, cat, make_background("annulus",
                                                              config=load_config("paus")))
    assert_tables_equal(batch.read_results(tmp_path / "out"), serial)


# -- resume ---------------------------------------------------------------------------------
def test_interrupted_run_resumes_without_recomputing(survey, tmp_path):
    out = tmp_path / "out"
    first = _run(survey, out, max_exposures=2)
    assert (first.n_done, first.n_pending, first.n_skipped) == (2, 2, 0)
    parts = sorted((out / "parquet").glob("*.parquet"))
    assert len(parts) == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in parts}
    second = _run(survey, out)
    assert (second.n_done, second.n_skipped, second.n_pending, second.n_failed) == (2, 2, 0, 0)
    # the finished exposures were not recomputed (same files, untouched) ...
    assert {p.name: p.stat().st_mtime_ns for p in parts} == stamps
    assert {r["exposure"] for r in second.records}.isdisjoint(p.stem for p in parts)
    # ... and the result equals an uninterrupted run, value for value and byte for byte
    full = _run(survey, tmp_path / "full")
    assert full.n_done == N_EXP
    assert_tables_equal(batch.read_results(out), batch.read_results(tmp_path / "full"))
    for p in (tmp_path / "full" / "parquet").glob("*.parquet"):
        assert (out / "parquet" / p.name).read_bytes() == p.read_bytes()
    third = _run(survey, out)  # nothing left
    assert (third.n_done, third.n_skipped) == (0, N_EXP) and "nothing to do" in third.summary()
    # a manifest written before a setting existed (here mag_offset) resumes at its default
    man = json.loads((out / batch.MANIFEST).read_text())
    del man["mag_offset"]
    (out / batch.MANIFEST).write_text(json.dumps(man))
    assert _run(survey, out).n_skipped == N_EXP


def test_different_settings_refused_overwrite_recomputes(survey, tmp_path):
    out = tmp_path / "out"
    _run(survey, out, max_exposures=1)
    with pytest.raises(OutputExistsError, match="method: 'annulus' there, 'mesh' now"):
        _run(survey, out, method="mesh")
    res = _run(survey, out, method="mesh", overwrite=True)
    assert (res.n_done, res.n_skipped) == (N_EXP, 0)
    assert json.loads((out / batch.MANIFEST).read_text())["method"] == "mesh"
    # speed-only settings may change on resume
    res = _run(survey, out, method="mesh", batch_size=64, workers=1)
    assert res.n_skipped == N_EXP
    # an input file whose content changed under the same name is a different run too
    cfg = tmp_path / "my.toml"
    cfg.write_text('base = "paus"\n[mesh]\nbox_size = 64\n')
    _run(survey, tmp_path / "o2", method="mesh", config=str(cfg), max_exposures=1)
    cfg.write_text('base = "paus"\n[mesh]\nbox_size = 32\n')
    with pytest.raises(OutputExistsError, match="the content of config changed"):
        _run(survey, tmp_path / "o2", method="mesh", config=str(cfg))
    with pytest.raises(InputError, match="--workers"):
        _run(survey, tmp_path / "o3", workers=0)


# -- failure isolation ------------------------------------------------------------------------
def test_corrupt_exposure_is_recorded_and_retried(survey, tmp_path):
    root, images, cat = survey
    src = tmp_path / "images"
    src.mkdir()
    for p in images:
        shutil.copy(p, src)
    bad = src / "ZZ_corrupt.fits"
    bad.write_bytes(b"SIMPLE  =  this is not a FITS file" * 10)
    out = tmp_path / "out"
    res = batch.run([str(src / "*.fits")], cat, out, scheduler="threads", workers=2,
                    quiet=True, config="paus")
    assert (res.n_done, res.n_failed) == (N_EXP, 1) and not res.ok
    assert len(list((out / "parquet").glob("*.parquet"))) == N_EXP
    fails = json.loads((out / batch.FAILURES).read_text())
    assert len(fails) == 1
    f = fails[0]
    assert f["exposure"] == "ZZ_corrupt" and f["path"] == str(bad.resolve())
    assert f["status"] == "failed" and f["error_type"] and "ZZ_corrupt.fits" in f["message"]
    assert "Traceback" in f["traceback"]
    assert "failed" in res.summary() and "ZZ_corrupt" in res.summary()
    # fix the file: the rerun retries only the failed exposure
    shutil.copy(images[0], bad)
    again = batch.run([str(src / "*.fits")], cat, out, scheduler="threads", workers=2,
                      quiet=True, config="paus")
    assert (again.n_done, again.n_skipped, again.n_failed) == (1, N_EXP, 0)
    assert json.loads((out / batch.FAILURES).read_text()) == []


# -- command line ---------------------------------------------------------------------------
def test_cli_end_to_end_and_exit_codes(survey, tmp_path, capsys):
    root, images, cat = survey
    out = tmp_path / "out"
    argv = ["batch", str(root / "images" / "*.fits"), "--catalog", cat, "--config", "paus",
            "--method", "annulus", "--output", str(out), "--scheduler", "threads",
            "--format", "both"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"{N_EXP} exposures done" in text and "0 failed" in text
    assert len(list((out / "csv").glob("*.csv"))) == N_EXP
    assert main(argv + ["--quiet"]) == 0  # resume: all skipped, silent
    assert capsys.readouterr().out == ""
    assert main(argv[:-4] + ["--method", "nope", "--output", str(tmp_path / "o2")]) == 2
    assert "unknown background method 'nope'" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "none*.fits"), "--catalog", cat, "--output",
                 str(tmp_path / "o3")]) == 2
    assert "no file matches" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --workers and --scheduler exclude each other
        main(argv + ["--workers", "2"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["batch", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--scheduler tcp://" in text and "--overwrite" in text


# -- scheduler option -------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    (None, ("local", None)),
    ("local", ("local", None)),
    ("threads", ("threads", None)),
    ("dask", ("dask", None)),
    ("tcp://head:8786", ("address", "tcp://head:8786")),
    ("tls://10.0.0.1:8786", ("address", "tls://10.0.0.1:8786")),
    ("head-node:8786", ("address", "tcp://head-node:8786")),
])
def test_parse_scheduler(value, expected):
    assert batch.parse_scheduler(value) == expected


@pytest.mark.parametrize("value", ["head", "ftp://x:1", "head:99999", "tcp://", "x:port"])
def test_parse_scheduler_rejects(value):
    with pytest.raises(InputError, match="--scheduler"):
        batch.parse_scheduler(value)


def test_parse_scheduler_file(tmp_path):
    with pytest.raises(InputError, match="scheduler file not found"):
        batch.parse_scheduler(str(tmp_path / "sched.json"))
    f = tmp_path / "sched.json"
    f.write_text("{}")
    assert batch.parse_scheduler(str(f)) == ("file", str(f.resolve()))


def test_runs_on_a_scheduler_address(survey, tmp_path):
    """--scheduler tcp://...: the client connects to a running scheduler (here an in-process
    cluster standing in for `dask scheduler` + `dask worker`)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        res = _run(survey, tmp_path / "out", scheduler=cluster.scheduler_address,
                   workers=None)
    assert res.ok and res.n_done == N_EXP and res.workers == 1


# -- bad inputs ------------------------------------------------------------------------------
def test_bad_inputs(survey, tmp_path):
    root, images, cat = survey
    with pytest.raises(MissingFileError, match="catalog"):
        batch.run(images, tmp_path / "nope.csv", tmp_path / "o", scheduler="threads")
    with pytest.raises(InputError, match="formats"):
        batch.run(images, cat, tmp_path / "o", formats=("hdf5",), scheduler="threads")
    other = tmp_path / "b"
    other.mkdir()
    shutil.copy(images[0], other)
    with pytest.raises(InputError, match="share the name"):
        batch.run([images[0], str(other / Path(images[0]).name)], cat, tmp_path / "o",
                  scheduler="threads")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        batch.run(images, cat, tmp_path / "file", scheduler="threads")
    assert batch.exposure_name("/a/b/NB685_before_001.fits.gz") == "NB685_before_001"


def test_default_batch_size_per_device():
    assert batch.make_spec("bkgnet", device="cpu").default_batch_size() == batch.CPU_BATCH_SIZE
    assert batch.make_spec("bkgnet", device="cuda").default_batch_size() == batch.GPU_BATCH_SIZE
    assert batch.make_spec("annulus").default_batch_size() == batch.CPU_BATCH_SIZE
    assert batch.make_spec("bkgnet", batch_size=32).batch_size == 32
    # the CLI leaves it to the device unless --batch-size is given
    from skysub.cli import build_parser

    args = build_parser().parse_args(["batch", "a.fits", "-c", "c.csv", "-o", "out"])
    assert args.batch_size is None
    args = build_parser().parse_args(["batch", "a.fits", "-c", "c.csv", "-o", "o",
                                      "--batch-size", "64"])
    assert args.batch_size == 64


def test_worker_cache_rebuilds_when_an_input_file_changes(tmp_path):
    """A long-lived worker keeps the estimator across runs, but not across a changed file."""
    cfg = tmp_path / "my.toml"
    cfg.write_text('base = "paus"\n')
    spec = batch.make_spec("annulus", config=cfg)
    n0 = batch.BUILD_COUNT
    a, _ = batch._cached_tool(spec)
    b, _ = batch._cached_tool(spec)
    assert a is b and batch.BUILD_COUNT == n0 + 1
    cfg.write_text('base = "paus"\n[annulus]\nr_in = 20.0\nr_out = 35.0\n')
    c, _ = batch._cached_tool(spec)
    assert batch.BUILD_COUNT == n0 + 2 and c.r_in == 20.0


def test_lumos_photometer_equals_serial(survey, tmp_path):
    """A photometer with its own background (Lumos, once merged): no --method estimator is
    built, --model goes to the photometer; rows equal `skysub photometry --photometer lumos`."""
    pytest.importorskip("skysub.photometry.lumos")
    from skysub.nn.device import configure_threads

    root, images, cat = survey
    # the simulator's catalogue in the shipped model's band system (--mag-offset -2)
    res = _run(survey, tmp_path / "out", photometer="lumos", device="cpu", workers=1,
               mag_offset=-2.0)
    assert res.ok and res.n_done == N_EXP
    assert json.loads((tmp_path / "out" / batch.MANIFEST).read_text())["mag_offset"] == -2.0
    phot = make_photometer("lumos", background=None, config=load_config("paus"), device="cpu",
                           batch_size=batch.CPU_BATCH_SIZE, mag_offset=-2.0)
    configure_threads(1)  # the workers' torch threads (bit-for-bit float32 sums)
    serial = measure_photometry(images, cat, phot, quiet=True)
    assert_tables_equal(batch.read_results(tmp_path / "out"), serial)


# -- the local pool (default): groups of exposures, workers started once ----------------------
def test_groups_of_exposures():
    assert [len(g) for g in batch._groups(list(range(8)), 2)] == [2, 2, 2, 2]
    assert [len(g) for g in batch._groups(list(range(32)), 2)] == [8, 8, 8, 8]
    assert [len(g) for g in batch._groups(list(range(5)), 2)] == [2, 2, 1]
    assert [len(g) for g in batch._groups(list(range(200)), 1)] == [16] * 12 + [8]
    assert sum(batch._groups(list(range(7)), 3), []) == list(range(7))  # order kept


@pytest.mark.parametrize("workers", [1, 2])
def test_local_pool_equals_serial_and_reports_time(survey, tmp_path, workers, caplog):
    """The default executor: one worker in this process, or a pool of processes; same rows as
    the serial path, a corrupt exposure inside a group fails alone, time accounted for."""
    import logging

    root, images, cat = survey
    src = tmp_path / "images"
    src.mkdir()
    for p in images:
        shutil.copy(p, src)
    (src / "AA_corrupt.fits").write_bytes(b"SIMPLE  =  not a FITS file" * 10)
    with caplog.at_level(logging.INFO, logger="skysub"):
        res = batch.run([str(src / "*.fits")], cat, tmp_path / "out", workers=workers,
                        quiet=True, config="paus")
    assert (res.n_done, res.n_failed) == (N_EXP, 1)
    # (spawn here: the test session has imported torch, which must not be forked)
    assert res.executor == ("in-process" if workers == 1 else "processes (spawn)")
    assert res.workers == workers and res.tasks == len(batch._groups([0] * (N_EXP + 1),
                                                                     workers))
    [bad] = res.failures
    assert bad["exposure"] == "AA_corrupt" and "AA_corrupt.fits" in bad["message"]
    serial = measure_background(images, cat, make_background("annulus",
                                                             config=load_config("paus")),
                                quiet=True)
    assert_tables_equal(batch.read_results(tmp_path / "out"), serial)
    done = [r for r in res.records if r["status"] == "done"]
    assert all(r["read_seconds"] > 0 and r["compute_seconds"] > 0 and r["write_seconds"] > 0
               and r["seconds"] >= r["compute_seconds"] for r in done)
    t = res.timing()
    assert t["compute"] == pytest.approx(sum(r["compute_seconds"] for r in done))
    assert 0 < t["startup"] < t["total"] and 0 < t["exposures_wall"] <= t["total"]
    summary = json.loads((tmp_path / "out" / batch.SUMMARY).read_text())
    assert summary["timing"]["compute"] == pytest.approx(t["compute"])
    report = res.timing_report()
    assert "start-up" in report and "compute" in report and "shutdown" in report
    # what `skysub --verbose batch` prints (the last line, time since start, moves on)
    assert "\n".join(report.splitlines()[:4]) in caplog.text


def test_explicit_memory_limit_runs_on_dask(survey, tmp_path, monkeypatch):
    """The local pool cannot enforce a memory limit: an explicit one goes to Dask."""
    seen = {}
    real = batch._dask_client

    def fake_client(scheduler, workers, memory_limit, quiet):
        seen.update(scheduler=scheduler, memory_limit=memory_limit)
        return real("threads", 1, None, True)

    monkeypatch.setattr(batch, "_dask_client", fake_client)
    res = _run(survey, tmp_path / "out", scheduler=None, workers=1, memory_limit="2GB")
    assert res.ok and res.executor == "dask" and seen == {"scheduler": "dask",
                                                          "memory_limit": "2GB"}
