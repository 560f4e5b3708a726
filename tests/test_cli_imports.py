"""A CLI that starts at once: classical commands and --help/--version import neither torch nor
dask (nor numba for small jobs); the learned methods import them when chosen."""

import json
import subprocess
import sys

import numpy as np
from astropy.io import fits
from astropy.table import Table

HEAVY = ("torch", "dask", "numba")

PROBE = """
import json, sys
from skysub.cli import main
try:
    rc = main({argv!r})
except SystemExit as exc:
    rc = exc.code
print(json.dumps({{"rc": rc, "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def _run(argv, cwd, heavy=HEAVY):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=heavy)], cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_version_and_help_import_nothing_heavy(tmp_path):
    assert _run(["--version"], tmp_path)["loaded"] == []
    assert _run(["background", "--help"], tmp_path)["loaded"] == []
    assert _run(["train", "bkgnet", "--help"], tmp_path)["loaded"] == []


def test_classical_commands_import_neither_torch_nor_dask(tmp_path):
    rng = np.random.default_rng(0)
    fits.PrimaryHDU(100.0 + rng.normal(0, 3, (80, 90))).writeto(tmp_path / "a.fits")
    Table({"id": [1, 2], "x": [30.0, 60.0], "y": [40.0, 40.0]}).write(tmp_path / "c.csv")
    res = _run(["background", "a.fits", "--catalog", "c.csv", "--method", "annulus",
                "--output", "b.csv", "--quiet"], tmp_path)
    assert res == {"rc": 0, "loaded": []}
    res = _run(["photometry", "a.fits", "--catalog", "c.csv", "--photometer", "aperture",
                "--output", "p.csv", "--quiet"], tmp_path)
    assert res == {"rc": 0, "loaded": []}
    assert len(Table.read(tmp_path / "p.csv")) == 2


def test_learned_methods_import_torch_when_chosen(tmp_path):
    rng = np.random.default_rng(1)
    hdr = fits.Header({"FILTER": "NB455", "EPOCH": "before", "EXPTIME": 90.0, "GAIN": 1.0,
                       "RDNOISE": 5.0})
    fits.PrimaryHDU(100.0 + rng.normal(0, 3, (200, 200)), header=hdr).writeto(tmp_path / "a.fits")
    Table({"id": [1], "x": [100.0], "y": [100.0]}).write(tmp_path / "c.csv")
    res = _run(["background", "a.fits", "--catalog", "c.csv", "--method", "bkgnet", "--output",
                "b.csv", "--quiet"], tmp_path)
    assert "torch" in res["loaded"]


def test_annulus_batch_start_up_skips_what_it_does_not_use(tmp_path):
    """The per-process start-up is the serial part of every batch run: a preset's validation
    reads signatures without importing the simulator, and the crowding search needs no
    scipy.spatial (a grid count, tests/test_neighbours.py)."""
    rng = np.random.default_rng(2)
    fits.PrimaryHDU(100.0 + rng.normal(0, 3, (120, 130))).writeto(tmp_path / "a.fits")
    Table({"id": [1, 2], "x": [40.0, 80.0], "y": [50.0, 60.0]}).write(tmp_path / "c.csv")
    unused = ("skysub.simulate", "scipy.spatial", "torch", "numba")
    res = _run(["batch", "a.fits", "--catalog", "c.csv", "--config", "paus", "--method",
                "annulus", "--output", "out", "--workers", "1", "--quiet"], tmp_path, unused)
    assert res == {"rc": 0, "loaded": []}
    assert (tmp_path / "out").is_dir()
