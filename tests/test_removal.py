"""End-to-end compact-source removal with the shipped model on small simulated maps (CPU),
the InpaintBackground estimator, the CLI (remove / train inpaint / evaluate removal) and the
bad inputs."""

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from skysub.cli import main
from skysub.errors import InputError, MissingFileError
from skysub.nn.modelfile import models_dir, read_card
from skysub.removal import InpaintBackground, remove_sources
from skysub.simulate.extended import FieldConfig, simulate_extended

SHIPPED = models_dir() / "inpaint-default.pt"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def sim():
    cfg = FieldConfig(shape=(160, 192), level=20.0, sigma_ln=0.4, slope=3.0, n_filaments=1,
                      noise=1.0)
    return simulate_extended(cfg, n_sources=14, flux=3000.0, margin=20, seed=11)


def test_shipped_model_is_small_with_a_card():
    assert SHIPPED.is_file()
    assert SHIPPED.stat().st_size < 10e6
    card = read_card("inpaint-default")
    assert card["kind"] == "inpaint" and card["arch"]["size"] == 96
    assert card["training_command"].startswith("skysub train inpaint")
    assert card["inputs"]["masks"]["radii"]


def test_end_to_end_removal_recovers_fluxes(sim):
    """14 sources of 3000 (peak SNR ~200) on log-normal clouds (level 20, sigma_ln 0.4) with
    noise 1, shipped model.  Stated tolerance: the median of measured / injected within 5 %,
    every source within 25 % (the annulus method scatters by as much here: IQR ~0.1); the
    inpainted pixels closer to the truth than a flat fill at the hole pixels' mean, and the
    sources' light gone."""
    res = remove_sources(sim.image, catalog=sim.catalog, radii=(6.0, 8.0), psf=sim.psf)
    t = res.table
    assert len(t) == 2 * 14 and set(t["radius"]) == {6.0, 8.0}
    r6 = np.asarray(t["flux"])[np.asarray(t["radius"]) == 6.0] / 3000.0
    assert abs(np.median(r6) - 1) < 0.05
    assert np.all(np.abs(r6 - 1) < 0.25)
    ann = np.asarray(t["flux_annulus"])[np.asarray(t["radius"]) == 6.0] / 3000.0
    assert np.all(np.isfinite(ann))
    h = res.holes
    err = (res.image - sim.truth)[h]
    assert np.sqrt(np.mean(err ** 2)) < np.std(sim.truth[h])
    assert np.std(err) < 0.2 * np.std((sim.image - sim.truth)[h])
    # outside the holes and their feathered rims only the modelled PSF wings are taken out,
    # and without wing passes nothing changes
    from scipy.ndimage import binary_dilation

    far = ~binary_dilation(h, iterations=5)
    wm = res.extra["wing_model"]
    assert np.allclose(res.image[far], (sim.image - wm)[far])
    assert wm.sum() == pytest.approx(float(np.sum(r6 * 3000.0)), rel=0.1)
    assert np.all(res.sources["mask_radius"] > 0)
    res0 = remove_sources(sim.image, catalog=sim.catalog, radii=(6.0,), psf=sim.psf, wings=0,
                          texture=False)
    assert np.array_equal(res0.image[far], sim.image[far])


def test_edges_nan_coverage_and_off_image(sim):
    img = sim.image.copy()
    img[:, :12] = np.nan  # no coverage
    x = np.array([3.0, 100.0, 2.0, -50.0])
    y = np.array([80.0, 1.0, 2.0, 10.0])
    res = remove_sources(img, x, y, radii=(4.0,))
    assert np.all(np.isnan(res.image[:, :12]))  # coverage gaps stay gaps
    assert np.isfinite(res.image[:, 12:]).all()
    flags = np.asarray(res.sources["flags"])
    assert flags[3] & 16 and flags[3] & 8  # OFF_IMAGE, NO_DATA
    assert flags[1] & 1  # EDGE
    assert np.isnan(res.table["flux"][3])


def test_empty_catalogue_and_bad_inputs(sim):
    res = remove_sources(sim.image, np.zeros(0), np.zeros(0))
    assert len(res.table) == 0 and np.array_equal(res.image, sim.image)
    with pytest.raises(InputError, match="radii"):
        remove_sources(sim.image, [10.0], [10.0], radii=(0.0,))
    with pytest.raises(InputError, match="x and y"):
        remove_sources(sim.image, [1.0, 2.0], [1.0])
    with pytest.raises(MissingFileError, match="shipped models"):
        remove_sources(sim.image, [10.0], [10.0], model="no-such-model")


def test_inpaint_background_estimator(sim):
    est = InpaintBackground(radius=6.0)
    x, y = np.asarray(sim.catalog["x"]), np.asarray(sim.catalog["y"])
    r = est.estimate(sim.image, x, y)
    assert len(r) == len(x) and np.isfinite(r.bkg).all() and np.isfinite(r.bkg_err).all()
    yy, xx = np.indices(sim.truth.shape)
    true = np.array([sim.truth[(xx - a) ** 2 + (yy - b) ** 2 <= 36].mean()
                     for a, b in zip(x, y, strict=True)])
    # closer to the true mean background in r = 6 px than the classical annulus (12-22 px)
    from skysub.background.annulus import AnnulusBackground

    ann = AnnulusBackground(12, 22, statistic="mean").estimate(sim.image, x, y)
    assert np.median(np.abs(r.bkg - true)) < np.median(np.abs(ann.bkg - true))
    assert np.median(np.abs(r.bkg - true)) < 2.5 * sim.field.noise
    from skysub.workflows import make_background

    assert make_background("inpaint").name == "inpaint"


def _write_inputs(tmp_path, sim):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [96.0, 80.0]
    w.wcs.cdelt = [-1.6 / 3600, 1.6 / 3600]
    hdr = w.to_header()
    hdr["OBJECT"] = "sim-field"
    hdr["BUNIT"] = "mJy/pixel"
    path = tmp_path / "map.fits"
    fits.PrimaryHDU(sim.image.astype(">f4"), header=hdr).writeto(path)  # big-endian on purpose
    cat = tmp_path / "cat.csv"
    ra, dec = w.all_pix2world(sim.catalog["x"], sim.catalog["y"], 0)
    Table({"id": sim.catalog["id"], "ra": ra, "dec": dec}).write(cat)
    return path, cat, w


def test_cli_remove(tmp_path, sim, capsys):
    path, cat, w = _write_inputs(tmp_path, sim)
    out, csv = tmp_path / "clean.fits", tmp_path / "phot.csv"
    args = ["remove", str(path), "--catalog", str(cat), "--output-image", str(out),
            "--output-catalog", str(csv), "--radii", "4,6", "--quiet"]
    assert main(args) == 0
    with fits.open(out) as h:
        assert h[0].header["OBJECT"] == "sim-field" and h[0].header["BUNIT"] == "mJy/pixel"
        assert WCS(h[0].header).wcs.crval[0] == pytest.approx(150.0)
        assert h["REMOVED"].data.shape == sim.image.shape and h["HOLES"].data.sum() > 0
        clean = h[0].data
    assert np.nanstd(clean - sim.truth) < np.nanstd(sim.image - sim.truth)
    t = Table.read(csv)
    assert len(t) == 2 * len(sim.catalog)
    for col in ("id", "radius", "flux", "flux_annulus", "aper_corr", "snr", "mask_radius",
                "flags"):
        assert col in t.colnames
    # refuses to overwrite; never writes over an input
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    bad = ["remove", str(path), "--catalog", str(cat), "--output-image", str(path),
           "--output-catalog", str(tmp_path / "x.csv"), "--overwrite", "--quiet"]
    assert main(bad) == 2
    assert "inputs" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    # without --quiet and without --psf, the user is told the PSF is taken to be Gaussian
    loud = [a for a in args if a != "--quiet"]
    assert main([*loud, "--overwrite"]) == 0
    assert "no --psf" in capsys.readouterr().out


def test_cli_remove_bad_catalogue(tmp_path, sim, capsys):
    path, _, _ = _write_inputs(tmp_path, sim)
    cat = tmp_path / "bad.csv"
    Table({"name": ["a"], "flux": [1.0]}).write(cat)
    rc = main(["remove", str(path), "--catalog", str(cat), "--output-image",
               str(tmp_path / "o.fits"), "--output-catalog", str(tmp_path / "o.csv")])
    assert rc == 2 and "id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["remove", str(path), "--catalog", str(cat), "--output-image", "o.fits",
              "--output-catalog", "o.csv", "--radii", "4,-1"])


def test_cli_help_has_examples(capsys):
    for cmd in (["remove", "--help"], ["train", "inpaint", "--help"],
                ["evaluate", "removal", "--help"]):
        with pytest.raises(SystemExit):
            main(cmd)
        assert "example" in capsys.readouterr().out


TINY_TOML = """
base = "inpaint-generic"
name = "tiny"
[removal.train]
size = 64
n_train = 1
n_val = 1
field_size = 160
realisations = 1
max_cutouts = 48
epochs = 2
batch_size = 16
"""


def test_cli_train_resume_and_evaluate(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    model = tmp_path / "tiny.pt"
    base = ["train", "inpaint", "--config", str(cfg), "--output", str(model), "--quiet",
            "--threads", "1", "--device", "cpu"]
    assert main([*base, "--epochs", "1"]) == 0
    card = read_card(model)
    assert card["training"]["epochs_run"] == 1 and card["arch"]["size"] == 64
    assert "--epochs 1" in card["training_command"]
    assert (tmp_path / "tiny.json").is_file() and (tmp_path / "tiny.ckpt").is_file()
    assert main(base) == 2  # exists
    assert "exists" in capsys.readouterr().err
    assert main([*base, "--resume"]) == 0  # continues to the configured 2 epochs
    assert read_card(model)["training"]["epochs_run"] == 2
    out = tmp_path / "eval"
    ev = ["evaluate", "removal", "--model", str(model), "--output", str(out), "--n-fields", "1",
          "--field-size", "128", "--quiet", "--config", str(cfg)]
    assert main(ev) == 0
    for name in ("flux_ratio.csv", "flux_ratio.png", "power_spectra.csv", "power_spectra.png",
                 "pixel_stats.csv", "summary.txt"):
        assert (out / name).is_file(), name
    stats = Table.read(out / "pixel_stats.csv")
    assert {"original_mean", "predicted_mean", "original_skewness", "predicted_iqr",
            "floor_reldiff_std"} <= set(stats.colnames)
    assert np.all(np.asarray(stats["floor_reldiff_mean"]) >= 0)
    assert "goals:" in (out / "summary.txt").read_text()
    assert main(ev) == 2  # refuses to overwrite
    # --tta averages symmetries: the same fields, other predictions
    assert main([*ev, "--overwrite", "--tta", "2"]) == 0
    assert "2 symmetries per cutout" in (out / "summary.txt").read_text()
    assert not np.allclose(np.asarray(Table.read(out / "pixel_stats.csv")["predicted_std"]),
                           np.asarray(stats["predicted_std"]))
    np.testing.assert_allclose(Table.read(out / "pixel_stats.csv")["original_std"],
                               stats["original_std"])
    # --position-error: the removal is given moved positions (the truth stays)
    rows = Table.read(out / "flux_ratio.csv")
    assert main([*ev, "--overwrite", "--position-error", "0.5"]) == 0
    moved = Table.read(out / "flux_ratio.csv")
    assert "positions off by 0.5 px" in (out / "summary.txt").read_text()
    dx = np.asarray(moved["x"]) - np.asarray(rows["x"])
    assert 0.2 < np.std(dx) < 1.0
    np.testing.assert_array_equal(moved["flux_true"], rows["flux_true"])
    # the configuration's [removal] settings are the ones evaluated (as skysub remove runs them)
    cfg0 = tmp_path / "nowings.toml"
    cfg0.write_text(TINY_TOML + "[removal]\nwings = 0\ntexture = \"none\"\n")
    out0 = tmp_path / "eval0"
    assert main([*ev[:-1], str(cfg0), "--output", str(out0)]) == 0
    st0 = Table.read(out0 / "pixel_stats.csv")
    assert not np.allclose(np.asarray(st0["predicted_std"]), np.asarray(stats["predicted_std"]))


def test_removal_options_follow_remove_sources_defaults():
    """An empty [removal] section evaluates with remove_sources' own defaults; set keys win;
    bad values name the section."""
    import inspect

    from skysub.removal.evaluation import removal_options

    sig = inspect.signature(remove_sources).parameters
    opts = removal_options({})
    for key in ("feather", "anchor", "wings", "batch_size"):
        assert opts[key] == sig[key].default, key
    assert opts["texture"] in ("residual", True) and sig["texture"].default in ("residual", True)
    assert removal_options({"wings": 2, "texture": "none"})["wings"] == 2
    for bad in ("many", 2.5, -1):
        with pytest.raises(InputError, match="wings"):
            removal_options({"wings": bad})
    with pytest.raises(InputError, match="removal"):
        removal_options({"feather": "wide"})


def test_training_and_removal_mask_tables(tmp_path, sim):
    """[removal.train.masks] cuts the training holes; --calibrate-only measures the error
    calibration with the removal table [removal.masks] and records it in the card
    (``inference_masks``), and remove_sources uses it when no table is given."""
    from skysub.removal.masks import MaskTable

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML + "n_test = 8\n[removal.masks]\n"
                   "thresholds = [4.0, 8.0, 13.0, 140.0, 300.0]\n"
                   "radii = [1.2, 1.3, 1.4, 1.5, 1.6, 1.7]"
                   "\n[removal.train.masks]\nradii = [1.45, 1.7, 2.0, 2.6, 3.15, 3.45]\n")
    model = tmp_path / "tiny.pt"
    base = ["train", "inpaint", "--config", str(cfg), "--output", str(model), "--quiet",
            "--threads", "1", "--device", "cpu"]
    assert main([*base, "--epochs", "1"]) == 0
    card = read_card(model)
    assert card["inputs"]["masks"]["radii"] == pytest.approx(
        [3.5 * r for r in (1.45, 1.7, 2.0, 2.6, 3.15, 3.45)])
    assert "inference_masks" not in card["inputs"]
    assert main([*base, "--calibrate-only"]) == 0
    card = read_card(model)
    removal = MaskTable.from_config(card["inputs"]["inference_masks"])
    assert list(removal.radii) == pytest.approx([3.5 * r for r in (1.2, 1.3, 1.4, 1.5, 1.6, 1.7)])
    assert card["error_calibration"]["n_cutouts"] > 0
    assert sum(card["error_calibration"]["level_n"]) >= card["error_calibration"]["n_cutouts"]
    # measured with the configuration's removal settings (inpaint-generic: 2 wing passes), and
    # the card says which
    assert card["error_calibration"]["removal_options"] == {"wings": 2, "anchor": 8.0}
    from skysub.nn.modelfile import load_model
    from skysub.removal.calibration import measure_fields

    net, _ = load_model(model, kind="inpaint")
    m0 = measure_fields(net, [sim], MaskTable.from_config(card["inputs"]["inference_masks"]),
                        options={"wings": 0})
    m1 = measure_fields(net, [sim], MaskTable.from_config(card["inputs"]["inference_masks"]),
                        options={"wings": 1})
    assert m0["err"].shape == m1["err"].shape and not np.allclose(m0["err"], m1["err"])
    x, y = np.asarray(sim.catalog["x"]), np.asarray(sim.catalog["y"])
    trained = MaskTable.from_config(card["inputs"]["masks"])
    default = remove_sources(sim.image, x, y, model=model, device="cpu").table
    explicit = remove_sources(sim.image, x, y, model=model, device="cpu", masks=removal).table
    other = remove_sources(sim.image, x, y, model=model, device="cpu", masks=trained).table
    assert np.array_equal(default["mask_radius"], explicit["mask_radius"])
    assert (np.asarray(other["mask_radius"]) > np.asarray(default["mask_radius"])).any()


def test_cli_train_init_fine_tunes_a_model(tmp_path, capsys):
    """--init starts from a saved model's weights (checked with a vanishing learning rate: the
    convolution weights stay the initial model's, not a fresh random draw) and the card says so;
    a model of another architecture is refused before any data are simulated."""
    import torch

    from skysub.nn.modelfile import load_model

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    base = ["train", "inpaint", "--config", str(cfg), "--quiet", "--threads", "1",
            "--device", "cpu", "--epochs", "1"]
    assert main([*base, "--output", str(first)]) == 0
    assert main([*base, "--output", str(second), "--init", str(first), "--lr", "1e-12"]) == 0
    a, _ = load_model(first)
    b, card = load_model(second)
    assert card["init"]["model"] == str(first)
    assert card["init"]["training_command"] == read_card(first)["training_command"]
    wa = {k: v for k, v in a.state_dict().items() if k.endswith("weight") and v.ndim == 4}
    wb = b.state_dict()
    assert len(wa) > 5
    for k, v in wa.items():
        assert torch.allclose(v, wb[k], atol=1e-8), k
    # without --init the same run starts from other (random) weights
    third = tmp_path / "third.pt"
    assert main([*base, "--output", str(third), "--lr", "1e-12"]) == 0
    c, _ = load_model(third)
    assert max(float((v - c.state_dict()[k]).abs().max()) for k, v in wa.items()) > 1e-3
    capsys.readouterr()
    big = tmp_path / "big.toml"
    big.write_text(TINY_TOML.replace("size = 64", "size = 96"))
    assert main(["train", "inpaint", "--config", str(big), "--quiet", "--output",
                 str(tmp_path / "x.pt"), "--init", str(first)]) == 2
    err = capsys.readouterr().err
    assert "init" in err and "first.pt" in err and "size" in err


def test_tta_undoes_every_symmetry():
    """Test-time augmentation maps each prediction back: a network that copies its input
    (and one that paints a fixed ramp) shows whether the inverse transforms are right."""
    import torch

    from skysub.errors import InputError
    from skysub.removal.core import predict_cutouts

    class Copy(torch.nn.Module):
        def forward(self, x, m):
            return x

    class Ramp(torch.nn.Module):
        def forward(self, x, m):
            s = x.shape[-1]
            r = torch.arange(s, dtype=x.dtype).view(1, 1, 1, s) / (s - 1)
            return r.expand_as(x).contiguous()

    rng = np.random.default_rng(0)
    data = rng.uniform(1, 5, (3, 16, 16))
    valid = np.ones(data.shape, bool)
    valid[:, 5:8, 9:12] = False
    lo = np.where(valid, data, np.inf).reshape(3, -1).min(1)[:, None, None]
    for tta in (1, 2, 4, 8):
        got = predict_cutouts(Copy(), data, valid, tta=tta)
        np.testing.assert_allclose(got, np.where(valid, data, lo), rtol=1e-5)
    # a ramp along x: its average over {identity, anti-transpose, 180 deg, transpose} is the
    # mean of a ramp along x, one along y and their reverses
    hi = np.where(valid, data, -np.inf).reshape(3, -1).max(1)[:, None, None]
    g = np.arange(16) / 15.0
    want = (g[None, :] + (1 - g)[:, None] + (1 - g)[None, :] + g[:, None]) / 4
    got = predict_cutouts(Ramp(), data, valid, tta=4)
    np.testing.assert_allclose((got - lo) / (hi - lo), np.broadcast_to(want, got.shape),
                               atol=1e-5)
    with pytest.raises(InputError, match="tta"):
        predict_cutouts(Copy(), data, valid, tta=3)


def test_error_calibration_recovers_a_known_scale():
    from skysub.removal.calibration import error_scale, fit_calibration

    rng = np.random.default_rng(5)
    n = 4000
    hole = rng.choice([5.0, 7.0, 12.0], n)
    sigma_bg = rng.uniform(1.0, 3.0, n)
    noise = 0.5 * sigma_bg
    area = np.array([np.pi * r * r for r in (2.0, 6.0)])
    c_true = np.where(hole > 10, 0.4, 0.15)  # larger holes: larger errors
    err = np.stack([c_true * sigma_bg * rng.standard_normal(n)
                    + noise / np.sqrt(a) * rng.standard_normal(n) for a in area], axis=1)
    cal = fit_calibration({"err": err, "area": area, "hole": hole, "sigma_bg": sigma_bg,
                           "noise": noise}, avg_radii=(2.0, 6.0))
    got = error_scale(cal, np.array([5.0, 7.0, 12.0, 12.0]), np.array([6.0, 6.0, 6.0, 2.5]))
    np.testing.assert_allclose(got, [0.15, 0.15, 0.4, 0.4], rtol=0.08)
    with pytest.raises(ValueError, match="cutouts"):
        fit_calibration({"err": err[:5], "area": area, "hole": hole[:5],
                         "sigma_bg": sigma_bg[:5], "noise": noise[:5]}, avg_radii=(2.0, 6.0))


def test_level_bias_is_recovered_per_snr_bin():
    """A bias that depends on the source's SNR (not its hole) is measured per SNR bin, with a
    standard error that counts the fields' shared offsets; old cards bin by hole radius."""
    from skysub.removal.calibration import (
        LEVEL_SNR_EDGES,
        describe_level,
        fit_level_bias,
        level_offset,
    )

    rng = np.random.default_rng(11)
    n = 12000
    snr = 10 ** rng.uniform(0.3, 2.8, n)  # 2-630
    hole = np.where(snr < 13, 6.0, 7.0)  # faint and bright share hole radii
    sim = rng.integers(0, 40, n)
    field_offset = rng.normal(0.0, 0.06, 40)
    true_bias = np.where(snr < 10, -0.08, 0.02)
    e = true_bias + field_offset[sim] + 0.2 * rng.standard_normal(n)
    m = {"err": np.repeat(e[:, None], 2, axis=1), "hole": hole, "snr": snr,
         "sigma_bg": np.ones(n), "sim": sim}
    bias, se = fit_level_bias(m, avg_radii=(4.0, 6.0))
    edges = np.asarray(LEVEL_SNR_EDGES)
    centres = np.sqrt(np.maximum(edges[:-1], 1.0) * edges[1:])
    want = np.where(centres < 10, -0.08, 0.02)
    counts = np.histogram(snr, edges)[0]
    filled = counts >= 300
    np.testing.assert_allclose(np.array(bias)[filled], want[filled], atol=0.04)
    # the bootstrap over fields sees their shared offsets: sqrt(iid^2 + 0.06^2 / 40 fields)
    iid = 1.2533 * 0.2 / np.sqrt(counts[1])
    np.testing.assert_allclose(se[1], np.hypot(iid, 0.06 / np.sqrt(40)), rtol=0.25)
    assert se[1] > 1.15 * iid
    cal = {"level_snr_edges": list(LEVEL_SNR_EDGES), "level_bias": bias}
    got = level_offset(cal, np.array([6.0, 7.0]), np.array([5.0, 200.0]))
    np.testing.assert_allclose(got, [bias[1], bias[8]])
    with pytest.raises(ValueError, match="snr"):
        level_offset(cal, np.array([6.0]))
    cal |= {"level_bias_se": se, "level_n": counts.tolist()}
    table = describe_level(cal).splitlines()
    assert len(table) == 1 + len(bias)
    assert table[2].split()[1:4] == ["4-6", "n", str(counts[1])]
    assert float(table[2].split()[4]) == pytest.approx(bias[1], abs=1e-4)
    old = {"hole_edges": [0.0, 6.5, 30.0], "level_bias": [0.1, 0.2]}  # a pre-0.1 card
    assert "no SNR-binned" in describe_level(old)
    np.testing.assert_allclose(level_offset(old, np.array([6.0, 7.0])), [0.1, 0.2])
    assert not level_offset(None, np.array([6.0])).any()


def test_shipped_model_errors_are_calibrated():
    """Pulls of InpaintBackground on fields the calibration never saw have unit width."""
    from skysub.metrics import _sigma68
    from skysub.simulate.extended import random_field_config

    card = read_card("inpaint-default")
    assert card["error_calibration"]["n_cutouts"] >= 300
    est = InpaintBackground(radius=6.0)
    pulls = []
    rng = np.random.default_rng(2024)
    for k in range(4):
        cfg = random_field_config(np.random.default_rng(900 + k), (256, 256))
        s = simulate_extended(cfg, n_sources=40, margin=10, seed=int(rng.integers(1e6)))
        x, y = np.asarray(s.catalog["x"]), np.asarray(s.catalog["y"])
        r = est.estimate(s.image, x, y)
        assert r.extra["bkg_err_calibrated"]
        yy, xx = np.indices(s.truth.shape)
        true = np.array([s.truth[(xx - a) ** 2 + (yy - b) ** 2 <= 36].mean()
                         for a, b in zip(x, y, strict=True)])
        # the truth holds pixel noise: its mean over the disc is the photometer's noise term
        err = np.hypot(r.bkg_err, cfg.noise / np.sqrt(np.pi * 36))
        pulls.append((r.bkg - true) / err)
    p = np.concatenate(pulls)
    p = p[np.isfinite(p)]
    assert len(p) > 120
    assert 0.7 < _sigma68(p) < 1.4


def test_source_fluxes_exact_with_part_of_the_aperture_lost():
    """A point source 1.5 px from a stamp edge (pixels beyond it invalid) on a known background:
    the flux counts the lost part through the PSF, not the lost area."""
    from skysub.removal.core import source_fluxes
    from skysub.simulate.extended import inject_sources, make_psf

    psf = make_psf("airy", 3.5, size=31)
    data = inject_sources(np.full((41, 41), 5.0), psf, np.array([20.3]), np.array([19.6]),
                          np.array([1000.0]))[None]
    valid = np.ones_like(data, bool)
    valid[:, :, :18] = False  # the aperture (r = 6) around x = 20.3 loses x <= 17
    f, ee, bad = source_fluxes(data, valid, psf, 6.0, np.array([0.3]), np.array([-0.4]),
                               np.array([5.0]))
    assert 0.15 < bad[0] < 0.3 and 0.8 < ee[0] < 1.0
    assert f[0] == pytest.approx(1000.0, rel=1e-3)
    # scaling the sum by the lost area instead is off by tens of per cent
    from skysub.removal.core import _aperture_sums

    s, _, _ = _aperture_sums(data - 5.0, valid, 6.0, np.array([0.3]), np.array([-0.4]))
    assert abs(s[0] / ee[0] / 1000.0 - 1) > 0.1


def test_texture_restores_the_pixel_scatter_of_the_holes(sim):
    """The network predicts the expected background, smoother than the sky: with texture the
    filled holes' small-scale scatter is within 15 % of the truth's there (both kinds), the
    residual texture also restores the scatter about the fill at all scales (within 20 %), the
    photometry is unchanged and the map is reproducible from the seed."""
    class MeanFill(torch.nn.Module):  # the smoothest possible "network": the valid mean
        size = 96

        def forward(self, x, m):
            mean = (x * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True)
            return mean.expand_as(x)

    kw = {"catalog": sim.catalog, "radii": (6.0,), "psf": sim.psf, "model": MeanFill()}
    plain = remove_sources(sim.image, texture=False, **kw)
    h = plain.holes

    def rough(a):  # small-scale scatter: pixel differences inside the holes
        d = np.diff(a, axis=1)[h[:, 1:] & h[:, :-1]]
        return np.std(d)

    def spread(a):  # scatter about the flat fill, every scale
        return np.std(a[h] - plain.image[h])

    assert rough(plain.image) < 0.3 * rough(sim.truth)
    # 14 holes, one donor each: the figures are averaged over 4 seeds
    stats = {}
    for kind in ("residual", "highpass"):
        runs = [remove_sources(sim.image, texture=kind, seed=k, **kw) for k in range(4)]
        for t in runs:
            assert np.array_equal(np.asarray(plain.table["flux"]), np.asarray(t.table["flux"]))
        stats[kind] = (np.mean([rough(t.image) for t in runs]),
                       np.mean([spread(t.image) for t in runs]))
    for kind in stats:
        assert stats[kind][0] == pytest.approx(rough(sim.truth), rel=0.15)
    # the residual texture restores the scatter at every scale, the high-pass one the small
    # scales only
    assert stats["residual"][1] == pytest.approx(spread(sim.truth), rel=0.2)
    assert stats["highpass"][1] < 0.6 * spread(sim.truth)
    tex = remove_sources(sim.image, texture=True, seed=3, **kw)
    again = remove_sources(sim.image, texture=True, seed=3, **kw)
    assert np.array_equal(again.image, tex.image)
    with pytest.raises(InputError, match="texture"):
        remove_sources(sim.image, texture="smooth", **kw)


def test_crowded_group_is_removed_by_rereading_the_map(sim):
    """63 sources of 3,000-40,000 on a 14 px lattice: holes of up to 12 px cover most of the
    central cutouts (< 10 % valid, NO_DATA in a single pass).  Re-reading the map with the
    measurable sources removed inpaints them too: every source measured within 10 % (median
    within 2 %), no flag NO_DATA, and the filled holes closer to the truth than its own
    scatter there (a source left in place is off by ~2,000)."""
    from skysub.simulate.extended import inject_sources

    gx, gy = np.meshgrid(np.arange(40, 160, 14.0), np.arange(35, 130, 14.0))
    x, y = gx.ravel() + 0.3, gy.ravel() - 0.2
    rng = np.random.default_rng(2)
    flux = rng.uniform(3000, 40000, len(x))
    img = inject_sources(sim.truth + rng.normal(0, 1, sim.truth.shape), sim.psf, x, y, flux)
    res = remove_sources(img, x, y, radii=(6.0,), psf=sim.psf)
    assert not np.any(np.asarray(res.sources["flags"]) & 8)
    r = np.asarray(res.table["flux"]) / flux
    assert np.all(np.abs(r - 1) < 0.1) and abs(np.median(r) - 1) < 0.02
    h = res.holes
    assert np.sqrt(np.mean((res.image - sim.truth)[h] ** 2)) < np.std(sim.truth[h])
    assert np.nanmax(np.abs(res.image - sim.truth)) < 100


def test_sampling_floor_of_white_noise_is_the_standard_error():
    """White noise N(100, 10) with 2,000 hole pixels: the masked-pixel mean of the holes moved
    elsewhere differs from the holes' own by sigma sqrt(2 / N) (two independent means), so the
    median |relative difference| is 0.674 x 0.1 x sqrt(2 / 2000) = 0.00213; a map whose right
    half is brighter has a much larger floor for holes that sit on one side."""
    from skysub.removal.evaluation import sampling_floor

    rng = np.random.default_rng(5)
    holes = np.zeros((400, 400), bool)
    holes[:40, :50] = True  # 2,000 pixels
    floors = [sampling_floor(rng.normal(100.0, 10.0, holes.shape), holes,
                             np.random.default_rng(s), n_moves=8)["mean"] for s in range(60)]
    assert np.median(floors) == pytest.approx(0.674 * 0.1 * np.sqrt(2 / 2000), rel=0.25)
    truth = rng.normal(100.0, 10.0, holes.shape)
    stepped = truth + np.where(np.arange(400) >= 200, 50.0, 0.0)[None, :]
    f = sampling_floor(stepped, holes, np.random.default_rng(0), n_moves=16)
    assert f["mean"] > 0.1  # half the moves land on the brighter half: +50 % there


def test_perturbed_inputs_move_positions_and_widen_the_psf():
    """--position-error moves every position by N(0, e) per axis (the sample std of 4,000
    offsets is e within 5 %); --psf-blur convolves the PSF with a Gaussian of s, so a Gaussian
    PSF of sigma0 gets the second moment sigma0^2 + s^2; the simulation itself is untouched."""
    from skysub.removal.evaluation import perturbed_inputs

    cfg = FieldConfig(shape=(256, 256), level=20.0, sigma_ln=0.4, slope=3.0, noise=1.0)
    s = simulate_extended(cfg, n_sources=4000, flux=100.0, seed=3, psf="gaussian",
                          psf_fwhm=3.5)
    x0 = np.array(s.catalog["x"])
    cat, psf = perturbed_inputs(s, position_error=0.3, seed=1)
    assert psf is s.psf and np.array_equal(cat["id"], s.catalog["id"])
    assert np.std(np.asarray(cat["x"]) - x0) == pytest.approx(0.3, rel=0.05)
    assert np.std(np.asarray(cat["y"]) - np.asarray(s.catalog["y"])) == pytest.approx(0.3,
                                                                                     rel=0.05)
    assert np.array_equal(s.catalog["x"], x0)

    def sigma2(p):
        yy, xx = np.indices(p.shape)
        cx, cy = (p * xx).sum(), (p * yy).sum()
        return float((p * ((xx - cx) ** 2 + (yy - cy) ** 2)).sum() / 2)

    cat2, wide = perturbed_inputs(s, psf_blur=0.5)
    assert cat2 is s.catalog and wide.sum() == pytest.approx(1.0)
    assert sigma2(wide) == pytest.approx(sigma2(s.psf) + 0.25, rel=0.01)
    with pytest.raises(InputError, match="psf_blur"):
        perturbed_inputs(s, psf_blur=-1.0)


def test_wing_passes_default_to_the_cards(sim):
    """Without ``wings`` the removal runs as many wing passes as the model's calibration was
    measured with (the shipped card: 2), so its level correction fits; 1 is another result."""
    card = read_card(SHIPPED)
    n = card["error_calibration"]["removal_options"]["wings"]
    assert n == 2
    x, y = np.asarray(sim.catalog["x"]), np.asarray(sim.catalog["y"])
    kw = dict(psf=sim.psf, texture=False, device="cpu")
    default = remove_sources(sim.image, x, y, **kw)
    explicit = remove_sources(sim.image, x, y, wings=n, **kw)
    one = remove_sources(sim.image, x, y, wings=1, **kw)
    np.testing.assert_array_equal(default.image, explicit.image)
    assert not np.allclose(default.image, one.image)
