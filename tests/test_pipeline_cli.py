"""``skysub timeseries``: the tutorial's workflow end to end from the command line."""

import json

import numpy as np
import pytest
from astropy.table import Table

from skysub.cli import main

CUSTOM = '''
from astropy.stats import SigmaClip
from photutils.aperture import ApertureStats, EllipticalAnnulus
import numpy as np


def custom_local_background(data, position, semimajor_axis, semiminor_axis, orientation):
    annulus = EllipticalAnnulus(position, a_in=5 * semimajor_axis, a_out=7.5 * semimajor_axis,
                                b_in=5 * semiminor_axis, b_out=7.5 * semiminor_axis,
                                theta=np.deg2rad(orientation))  # opticam gives degrees
    stats = ApertureStats(data, annulus, sigma_clip=SigmaClip(sigma=3.5, maxiters=10))
    return stats.median, stats.mad_std
'''


@pytest.mark.parametrize("what", ["simulate", "reduce", "photometry", "periodogram"])
def test_help_has_examples(what, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["timeseries", what, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"skysub timeseries {what}" in out and "--quiet" in out


def test_tutorial_workflow_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "custom_local_background.py").write_text(CUSTOM)
    data, red = str(tmp_path / "data"), str(tmp_path / "reduced")
    assert main(["timeseries", "simulate", "--output", data, "--n-images", "40",
                 "--cameras", "g,r", "--binning", "16", "--n-stars", "4", "--seed", "2",
                 "--phase-lags", "0,1.571"]) == 0
    out = capsys.readouterr().out
    assert "variability frequency: 0.135 Hz" in out and "r-band: 1.571 radians" in out
    truth = json.loads((tmp_path / "data" / "truth.json").read_text())
    # refuses to overwrite without --overwrite, with a clear message and exit status 2
    assert main(["timeseries", "simulate", "--output", data, "--n-images", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    common = [data, "--output", red, "--processes", "1", "--quiet"]
    assert main(["timeseries", "reduce", *common]) == 0
    psf = json.loads((tmp_path / "reduced" / "cat" / "psf_params.json").read_text())
    assert set(psf) == {"g", "r"} and abs(psf["g"]["semimajor_sigma"] - 1.4) < 0.1
    assert main(["timeseries", "photometry", *common, "-p", "aperture,optimal"]) == 0
    assert main(["timeseries", "photometry", *common, "-p", "optimal", "--background",
                 "custom_local_background:custom_local_background"]) == 0
    lcdir = tmp_path / "reduced" / "lcs"
    assert {p.name for p in lcdir.iterdir()} == {
        "aperture_annulus", "optimal_annulus", "optimal_custom_local_background"}
    lc = Table.read(lcdir / "optimal_custom_local_background" / "g_source_2.csv",
                    format="ascii.csv")
    assert abs(np.mean(lc["bkg"]) - 100) < 1 and abs(np.mean(lc["bkg_err"]) - 10) < 1
    vi = truth["variable_index"]
    capsys.readouterr()
    assert main(["timeseries", "periodogram", *common[:-1], "-p", "optimal_annulus", "--near",
                 str(truth["x"][vi]), str(truth["y"][vi])]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "peak frequency" in ln]
    assert len(lines) == 2
    for ln in lines:
        f = float(ln.split("peak frequency")[1].split()[0])
        assert abs(f / 0.135 - 1) < 0.01, ln


def test_cli_bad_inputs(tmp_path, capsys):
    assert main(["timeseries", "reduce", str(tmp_path / "missing"), "-o",
                 str(tmp_path / "o")]) == 2
    assert "data directory not found" in capsys.readouterr().err
    assert main(["timeseries", "simulate", "-o", str(tmp_path / "s"), "--cameras", "g,r",
                 "--phase-lags", "0"]) == 2
    assert "--phase-lags gives 1 values for 2 cameras" in capsys.readouterr().err
    assert main(["timeseries", "simulate", "-o", str(tmp_path / "s"), "--psf-sigma", "1",
                 "2"]) == 2
    assert "semimajor, semiminor" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    assert main(["timeseries", "photometry", str(tmp_path / "d"), "-o", str(tmp_path / "o"),
                 "--background", "nosuchmodule:f"]) == 2
    assert "cannot import module 'nosuchmodule'" in capsys.readouterr().err
