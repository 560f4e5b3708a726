"""Issue 18: the flux level calibrated on the flux ratio of injected sources (a case with a
known bias), the out-of-domain check of ``skysub remove``, and the real-map injection-recovery
of the removal on a small real image (the Parkes radio continuum map astropy ships)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.table import Table

from skysub.cli import main
from skysub.nn.modelfile import models_dir, read_card
from skysub.removal import remove_sources
from skysub.removal.calibration import calibrate, fit_flux_scale
from skysub.removal.domain import check_domain, domain_of, map_statistics, psf_fwhm_of
from skysub.simulate.extended import FieldConfig, make_psf, simulate_extended

SHIPPED = models_dir() / "inpaint-default.pt"


def _radio_map() -> Path:
    import astropy

    p = Path(astropy.__file__).parent / "modeling" / "tests" / "data" / "1904-66_AZP.fits"
    if not p.is_file():  # pragma: no cover - astropy ships it
        pytest.skip("astropy's test map 1904-66_AZP.fits is not installed")
    return p


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_fit_flux_scale_recovers_known_ratios_per_snr_bin():
    rng = np.random.default_rng(0)
    snr = np.exp(rng.uniform(np.log(5), np.log(2000), 6000))
    true = np.where(snr < 20, 0.94, np.where(snr < 100, 1.03, 1.0))
    ratio = true * (1 + 0.05 * rng.standard_normal(snr.size))
    ratio[:30] = np.nan  # lost sources are ignored
    edges = (0.0, 20.0, 100.0, 1e9)
    scale, se, n = fit_flux_scale(ratio, snr, snr_edges=edges, min_per_bin=50)
    assert np.allclose(scale, [0.94, 1.03, 1.0], atol=0.004)
    assert all(0 < s < 0.004 for s in se) and sum(n) == 6000 - 30
    # an empty bin takes its neighbour's value; no filled bin at all: no correction
    scale, _, _ = fit_flux_scale(ratio[snr < 100], snr[snr < 100], snr_edges=edges,
                                 min_per_bin=50)
    assert scale[2] == scale[1]
    assert fit_flux_scale(ratio[:10], snr[:10], snr_edges=edges)[0] == [1.0, 1.0, 1.0]


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped model missing")
def test_flux_calibration_on_injected_sources_removes_a_known_bias(tmp_path):
    """Sources 10 % brighter than their catalogue says (an error of the flux scale, as a wrong
    aperture correction makes it): the calibration on them finds 1.10 per SNR bin, and a model
    whose card holds it measures new sources of the same kind at their catalogued flux."""
    from skysub.nn.modelfile import load_model, save_model
    from skysub.removal.masks import MaskTable

    net, card = load_model("inpaint-default", kind="inpaint")

    def field(seed):
        s = simulate_extended(FieldConfig(shape=(256, 256), level=20.0, sigma_ln=0.4,
                                          noise=1.0), n_sources=40, flux=2500.0, margin=14,
                              seed=seed)
        s.catalog["flux"] = np.asarray(s.catalog["flux"], float) / 1.10
        return s

    masks = MaskTable.from_config(card["inputs"]["inference_masks"])
    cal = calibrate(net, [field(1), field(2)], masks, options={"wings": 1},
                    min_per_flux_bin=20)
    filled = [s for s, k in zip(cal["flux_scale"], cal["flux_n"], strict=True) if k >= 20]
    assert filled and all(abs(s - 1.10) < 0.03 for s in filled), cal["flux_scale"]
    card = {k: v for k, v in card.items() if k not in ("path", "file_size_bytes")}
    card["error_calibration"] = cal
    save_model(tmp_path / "biased.pt", net, card)
    test = field(3)
    new = remove_sources(test.image, catalog=test.catalog, model=tmp_path / "biased.pt",
                         radii=(6.0,), wings=1, texture="none")
    old = remove_sources(test.image, catalog=test.catalog, model=net, radii=(6.0,), wings=1,
                         texture="none")
    truth = np.asarray(test.catalog["flux"], float)
    assert abs(np.nanmedian(np.asarray(old.table["flux"]) / truth) - 1.10) < 0.03
    assert abs(np.nanmedian(np.asarray(new.table["flux"]) / truth) - 1.0) < 0.02


def test_domain_check_warns_outside_the_training_range_only():
    from skysub.simulate.extended import random_field_config

    sims = []
    for i in range(4):
        cfg = random_field_config(np.random.default_rng(i), (256, 256))
        sims.append(simulate_extended(cfg, n_sources=30, psf="gaussian", seed=i))
    beams = [psf_fwhm_of(make_psf("gaussian", 3.5))]
    dom = domain_of(sims, beams)
    assert abs(dom["beam_fwhm_px"][0] - 3.5) < 0.1
    # another field of the same generator, with the training beam: inside
    inside = simulate_extended(random_field_config(np.random.default_rng(1), (256, 256)),
                               n_sources=30, seed=9)
    # (its emission: skysub remove measures a map after removing its sources)
    assert check_domain(map_statistics(inside.truth, beam_fwhm_px=3.5), dom) == []
    # white noise with 6 px beams: the noise, the spectrum's slope and the beam are all off
    noise = np.random.default_rng(5).normal(0.0, 1.0, (256, 256))
    problems = check_domain(map_statistics(noise, beam_fwhm_px=6.0), dom)
    assert len(problems) == 3
    assert any("power-spectrum slope" in p for p in problems)
    assert any("beam FWHM" in p and "6" in p for p in problems)
    # a card without a domain checks nothing
    assert check_domain(map_statistics(noise, beam_fwhm_px=6.0), None) == []


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped model missing")
def test_skysub_remove_warns_for_a_map_outside_the_shipped_models_domain(tmp_path, capsys):
    from astropy.io import fits

    assert "domain" in read_card("inpaint-default"), "the shipped card records its domain"
    sim = simulate_extended(FieldConfig(shape=(192, 192), level=20.0, sigma_ln=0.6, slope=3.0,
                                        n_filaments=2, noise=1.0), n_sources=6, flux=2000.0,
                            margin=20, seed=4)
    rng = np.random.default_rng(2)
    for name, data in (("inside", sim.image), ("noise", rng.normal(0, 1, (192, 192)))):
        fits.PrimaryHDU(data).writeto(tmp_path / f"{name}.fits")
    Table({"id": [1, 2], "x": [60.0, 120.0], "y": [70.0, 110.0]}).write(tmp_path / "c.csv")
    for name in ("inside", "noise"):
        assert main(["remove", str(tmp_path / f"{name}.fits"), "--catalog",
                     str(tmp_path / "c.csv"), "--output-image", str(tmp_path / f"{name}_o.fits"),
                     "--output-catalog", str(tmp_path / f"{name}_o.csv"), "--quiet",
                     "--no-texture"]) == 0
        err = capsys.readouterr().err
        if name == "inside":
            assert "training domain" not in err
        else:
            assert "outside the training domain of inpaint-default" in err
            assert "power-spectrum slope" in err and "--init inpaint-default" in err


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped model missing")
def test_removal_injection_recovery_on_a_real_radio_map():
    """Beams injected at empty places of a real map (Parkes continuum, NaN outside the
    coverage) come back at their injected flux; the truths are the map's own pixels."""
    from skysub.io import read_image
    from skysub.removal.domain import header_beam_px
    from skysub.removal.realmaps import (
        evaluate_maps,
        find_compact_sources,
        flux_summary,
        hole_summary,
        map_injections,
    )
    from skysub.simulate.psf import gaussian_psf

    img = read_image(_radio_map())
    fwhm = header_beam_px(img.header, img.wcs)
    assert abs(fwhm - 3.6) < 0.01  # BMAJ 0.24 deg at 0.0667 deg / px
    own = find_compact_sources(np.where(img.mask, np.nan, img.data), fwhm, mask=img.mask)
    assert 10 < len(own) < 150
    inj = map_injections(img, own, gaussian_psf(29, fwhm), n=30, realisations=1, seed=3,
                         separation=15.0)
    t = inj[0].extra["truth_table"]
    assert len(t) >= 15
    # the injected copy differs from the map only by the beams, and only where they are
    diff = np.nan_to_num(inj[0].image - inj[0].truth)
    assert abs(diff.sum() - np.sum(t["flux_true"])) < 0.02 * np.sum(t["flux_true"])
    assert np.isnan(inj[0].image).sum() == np.isnan(img.data).sum() > 1000
    res = evaluate_maps(inj, options={"wings": 2, "texture": "none"})
    rows = res["rows"]
    assert len(rows) == 4 * len(t) and np.all(np.isin(rows["id"], t["id"]))
    bright = rows[(np.asarray(rows["radius"]) == 6.0) & (np.asarray(rows["snr"]) > 20)
                  & ((np.asarray(rows["flags"]) & (2 | 8 | 16)) == 0)]
    assert len(bright) >= 8
    assert abs(np.median(bright["ratio"]) - 1) < 0.05
    assert np.all(np.abs(np.asarray(bright["ratio"]) - 1) < 0.3)
    summ = flux_summary(rows)
    assert sum(summ["n"]) <= len(t) and np.all(np.isfinite(summ["model_median"]))
    holes = hole_summary(res["stats"], res["spectra"])
    assert res["stats"]["n_pixels"][0] > 300
    assert 0 <= holes["spectrum"]["below_floor"] <= 1 and holes["std"]["floor_median"] > 0


TINY_MAPS_TOML = """
base = "inpaint-generic"
name = "tiny-maps"
[removal.train]
n_train = 2
n_val = 1
n_test = 2
realisations = 1
max_cutouts = 48
epochs = 1
batch_size = 16
psf = ["gaussian"]
map_sources = 40
"""


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped model missing")
def test_train_inpaint_maps_draws_training_data_from_a_small_real_image(tmp_path):
    """`skysub train inpaint --maps` on one real map (a crop of the Parkes continuum map with
    its NaN coverage): the map is cut into training / validation / test bands, its own sources
    are found and removed before beams are injected, the model trains for one epoch, and its
    calibration and domain are measured on beams injected into the test band; then
    `--calibrate-only --init` writes that model, recalibrated, to a new file."""
    from astropy.io import fits

    from skysub.removal.training import InpaintTrainConfig, split_parts

    data = fits.getdata(_radio_map()).astype(float)
    col = np.vstack([data, data[::-1], data])
    big = np.hstack([col, col[:, ::-1]])  # 576 x 384 px: three bands of >= 150 px
    fits.PrimaryHDU(big).writeto(tmp_path / "map.fits")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_MAPS_TOML)
    parts = split_parts(InpaintTrainConfig(size=96, maps=[str(tmp_path / "map.fits")],
                                           psf_fwhm=3.6))
    shapes = {k: [im.shape for im, _ in v] for k, v in parts.items()}
    assert shapes == {"train": [(276, 384)], "val": [(150, 384)], "test": [(150, 384)]}
    n_own = sum(len(c) for v in parts.values() for _, c in v)
    assert n_own > 20  # the map's own compact sources, found (no catalogue given)
    model = tmp_path / "mine.pt"
    assert main(["train", "inpaint", "--config", str(cfg), "--maps", str(tmp_path / "map.fits"),
                 "--psf-fwhm", "3.6", "--output", str(model), "--quiet", "--threads", "1",
                 "--device", "cpu", "--init", "inpaint-default", "--lr", "1e-4"]) == 0
    card = read_card(model)
    assert card["data"]["user_maps"] == [str(tmp_path / "map.fits")]
    assert card["training"]["epochs_run"] == 1 and card["data"]["n_train_cutouts"] > 0
    assert card["init"]["model"] == "inpaint-default"
    cal = card["error_calibration"]
    assert cal["fields"]["split"] == "user maps, injected beams"
    assert sum(cal["flux_n"]) > 0 and len(cal["flux_scale"]) == len(cal["flux_snr_edges"]) - 1
    assert card["domain"]["beam_fwhm_px"][0] == pytest.approx(3.6, abs=0.15)
    # the shipped weights, calibrated on this map, into a new file (the shipped one untouched)
    before = SHIPPED.stat().st_mtime
    cal_model = tmp_path / "shipped-on-my-map.pt"
    assert main(["train", "inpaint", "--config", str(cfg), "--maps", str(tmp_path / "map.fits"),
                 "--psf-fwhm", "3.6", "--output", str(cal_model), "--quiet", "--threads", "1",
                 "--init", "inpaint-default", "--calibrate-only"]) == 0
    c2 = read_card(cal_model)
    assert c2["calibrated_from"] == "inpaint-default" and SHIPPED.stat().st_mtime == before
    assert c2["error_calibration"]["fields"]["maps"] == ["map.fits"]
    assert main(["train", "inpaint", "--config", str(cfg), "--maps", str(tmp_path / "map.fits"),
                 "--output", str(cal_model), "--quiet", "--init", "inpaint-default",
                 "--calibrate-only"]) == 2  # exists: never replaced without --overwrite


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped model missing")
def test_cli_evaluate_removal_on_a_users_map(tmp_path, capsys):
    import shutil

    from astropy.table import Table as T

    shutil.copy(_radio_map(), tmp_path / "radio.fits")
    out = tmp_path / "eval"
    assert main(["evaluate", "removal", "--maps", str(tmp_path / "radio.fits"), "--output",
                 str(out), "--n", "15", "--realisations", "1", "--quiet"]) == 0
    for name in ("flux_ratio.csv", "flux_summary.csv", "pixel_stats.csv", "power_spectra.csv",
                 "summary.txt"):
        assert (out / name).is_file(), name
    rows = T.read(out / "flux_ratio.csv")
    assert len(rows) >= 4 * 8 and set(np.unique(rows["radius"])) == {4.0, 6.0, 8.0, 10.0}
    bright = rows[(rows["radius"] == 6.0) & (rows["snr"] > 30)]
    assert len(bright) >= 3 and abs(np.median(bright["ratio"]) - 1) < 0.1
    assert "removed / injected flux per peak-SNR bin" in (out / "summary.txt").read_text()
    # outputs are never replaced without --overwrite
    assert main(["evaluate", "removal", "--maps", str(tmp_path / "radio.fits"), "--output",
                 str(out), "--n", "15", "--realisations", "1", "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err


def test_train_inpaint_maps_fine_tunes_the_shipped_model_by_default(tmp_path, monkeypatch):
    """With --maps the user path starts from inpaint-default at lr 0.001; --from-scratch and
    an explicit --init / --lr are kept."""
    import skysub.removal.training as training

    seen = []
    monkeypatch.setattr(training, "train_inpaint",
                        lambda output, *, config, **kw: seen.append(config) or {
                            "training": {"epochs_run": 0, "seconds": 0, "best_epoch": 0},
                            "metrics": {"best_val_loss": 0.0}})
    m = str(_radio_map())
    base = ["train", "inpaint", "--maps", m, "--output", str(tmp_path / "a.pt"), "--quiet"]
    assert main(base) == 0
    assert seen[-1].init == "inpaint-default" and seen[-1].lr == 0.001
    assert seen[-1].maps == [m]
    assert main([*base, "--from-scratch"]) == 0
    assert seen[-1].init is None and seen[-1].lr == 0.004  # inpaint-generic's
    assert main([*base, "--init", "x.pt", "--lr", "0.002"]) == 0
    assert seen[-1].init == "x.pt" and seen[-1].lr == 0.002
    assert main(["train", "inpaint", "--output", str(tmp_path / "b.pt"), "--quiet"]) == 0
    assert seen[-1].init is None and seen[-1].maps == []  # simulated fields: from scratch
