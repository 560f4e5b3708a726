"""benchmarks.bench_bkgnet_real: the user's path on one frame (``skysub train bkgnet FRAME
--catalog CAT``) against a simulation with known background, and the per-bin goal logic."""

import numpy as np
import pytest
from astropy.table import Table
from benchmarks import bench_bkgnet_real as B


@pytest.mark.slow
def test_finetune_on_one_small_frame_recovers_its_known_background(tmp_path):
    """One 300 x 300 frame of an instrument the shipped model never saw (domain-randomised
    ``heldout`` family, a band key new to it), its catalogue with positions only (as sep
    gives): fine-tuning on that frame alone through the CLI gives the noise-free background
    under its sources at least as well as the annulus the injection benchmark uses."""
    from skysub.background.annulus import AnnulusBackground
    from skysub.background.bkgnet import BKGnetBackground
    from skysub.config import load_config
    from skysub.io import read_image, write_fits_product
    from skysub.nn.modelfile import read_card
    from skysub.simulate.randomised import HELDOUT, instrument_exposures, random_instrument
    from skysub.stats import sigma68

    inst = random_instrument(HELDOUT, seed=5, shape=(300, 300), n_epochs=1)
    inst["config"].bands = ["Xr"]
    inst["config"].sky = {"Xr": 300.0}
    (exp,), _ = instrument_exposures(inst, 1, seed=3)
    im, _, _, truth = exp
    path = tmp_path / "frame.fits"
    write_fits_product(path, im.data.astype(np.float32), header=im.header)
    cat = Table({"id": np.arange(len(truth)), "x": truth["x"], "y": truth["y"]})
    model, _, argv = B.finetune(path, 0, cat, tmp_path / "ft", seed=101, epochs=4,
                                stamps_per_image=400)
    assert "--gain" not in argv  # the frame's GAIN keyword is used
    assert "Xr/e0" in read_card(model)["inputs"]["keys"]
    img = read_image(path)
    x, y = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    tb = np.asarray(truth["bkg_true"], float)
    a = load_config().annulus
    ann = AnnulusBackground(a["r_in"], a["r_out"]).estimate(img, x, y).bkg
    ft = BKGnetBackground(str(model), device="cpu").estimate(img, x, y).bkg
    s = {k: sigma68((v - tb)[np.isfinite(v)] / tb[np.isfinite(v)])
         for k, v in (("ann", ann), ("ft", ft))}
    assert np.isfinite(ft).mean() > 0.9
    assert s["ft"] <= s["ann"], s


def _summ(s68, p68):
    return {"all": {"n": 10, "sigma68": s68, "pull_sigma68": p68},
            "0-10": {"n": 5, "sigma68": s68, "pull_sigma68": p68}}


def test_compare_picks_the_best_classical_method_per_bin_and_checks_the_goal():
    summ = {"ann": _summ(0.10, 2.0), "mesh": _summ(0.20, 1.1), "paus": _summ(0.3, 1.0),
            "ft": _summ(0.09, 1.5)}
    rows = B.compare(summ, "f", "auto")
    assert [r["snr"] for r in rows] == ["all", "0-10"]
    r = rows[0]
    assert r["errors"] == "calibrated" and r["best"] == "annulus"  # smaller sigma68, not pull
    assert r["s68_ok"] == "yes" and r["pull_ok"] == "yes"  # 0.09 <= 0.10; |0.5| < |1.0|
    summ["ft"] = _summ(0.11, 0.4)  # worse sigma68, pull 0.6 from 1 against the annulus' 1.0
    r = B.compare(summ, "f", "none")[0]
    assert r["errors"] == "white" and r["s68_ok"] == "NO" and r["pull_ok"] == "yes"
    summ["ft"] = _summ(0.05, 3.5)
    assert B.compare(summ, "f", "none")[0]["pull_ok"] == "NO"


def test_parse_quick_and_unknown_frame():
    a = B.parse(["--quick"])
    assert a.frames == ["optical-300x440"] and a.realisations == 1 and a.epochs == 3
    assert B.parse([]).frames == list(B.FRAMES)
    with pytest.raises(SystemExit, match="nosuch"):
        B.frames(["nosuch"])


def test_few_exposures_draw_at_least_the_minimum_of_training_positions(tmp_path):
    """One small frame at the default 600 positions gave too few training stamps; fewer
    than 4 exposures draw at least MIN_TOTAL_STAMPS positions in all, unless told."""
    from skysub.background.bkgnet import training as T

    paths = []
    for k in range(5):
        p = tmp_path / f"e{k}.fits"
        p.write_bytes(b"")
        paths.append(str(p))
    assert T.MIN_TOTAL_STAMPS == 2400
    assert T._stamps_floor(paths[:1]) == 2400
    assert T._stamps_floor(paths[:3]) == 800
    assert T._stamps_floor(paths[:4]) is None and T._stamps_floor(paths) is None
    assert T._stamps_floor([str(tmp_path / "missing.fits")]) is None  # error comes later
