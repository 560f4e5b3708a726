"""BKGnet on a user's instrument: fine-tuning the shipped model with a new band key, unseen
keys at inference (warning, mean embedding), the label-noise calibration against a simulation
with known extra label noise, and the domain-randomised instruments."""

import logging

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from skysub.background.bkgnet import BKGnetBackground, BKGnetSettings, train_bkgnet
from skysub.background.bkgnet.calibration import (
    calibrated_errors,
    fit_error_calibration,
    label_noise,
)
from skysub.background.bkgnet.data import _sky_positions, label_stencils
from skysub.config import load_config
from skysub.errors import InputError
from skysub.image import Image, ImageMeta
from skysub.nn.modelfile import load_model
from skysub.nn.trainer import extend_key_embeddings
from skysub.simulate.trainingdata import circle_values


@pytest.fixture(scope="module")
def new_band_exposures(tmp_path_factory):
    """Three small exposures of a band the shipped model never saw, as FITS + catalogue."""
    from skysub.io import write_fits_product
    from skysub.simulate.randomised import HELDOUT, instrument_exposures, random_instrument

    inst = random_instrument(HELDOUT, seed=5, shape=(200, 256), n_epochs=1)
    inst["config"].bands = ["Xr"]
    inst["config"].sky = {"Xr": 300.0}
    exps, cat = instrument_exposures(inst, 3, seed=2)
    d = tmp_path_factory.mktemp("newband")
    paths = []
    for im, _, _, _ in exps:
        p = d / im.path.name
        write_fits_product(p, im.data.astype(np.float32), header=im.header, wcs=im.wcs)
        paths.append(str(p))
    cat["id", "ra", "dec", "mag", "r50", "sersic_n", "ba", "theta"].write(d / "cat.csv")
    return paths, d / "cat.csv", exps


def test_extend_keys_starts_new_embeddings_at_the_mean():
    old, card = load_model("bkgnet-paus")
    n_old = len(card["inputs"]["keys"])
    from skysub.nn.bkgnet import BKGnet, BKGnetArch

    bigger = BKGnet(BKGnetArch(**{**old.arch.__dict__, "n_keys": n_old + 2}))
    new = extend_key_embeddings(old, bigger, n_old)
    w_old, w_new = old.embed.weight.detach(), new.embed.weight.detach()
    torch.testing.assert_close(w_new[:n_old], w_old)
    for j in (n_old, n_old + 1):
        torch.testing.assert_close(w_new[j], w_old.mean(0))
    torch.testing.assert_close(new.head[0].weight, old.head[0].weight)


def test_finetune_shipped_model_with_a_new_band_key(new_band_exposures, tmp_path, capsys):
    paths, cat, exps = new_band_exposures
    out = tmp_path / "ft.pt"
    card = train_bkgnet(paths, str(cat), out, stamps_per_image=60, epochs=1, seed=0,
                        device="cpu", quiet=False)
    shipped = load_model("bkgnet-paus")[1]["inputs"]["keys"]
    assert card["init"] == "bkgnet-paus"  # a shipped init is named, not a local path
    assert card["inputs"]["keys"][:len(shipped)] == shipped
    assert card["inputs"]["keys"][len(shipped):] == ["Xr/e0"]
    assert card["training"]["lr"] == pytest.approx(5e-4)  # the fine-tuning default
    # so small a field holds out one edge tile: too few pairs of exposures for the
    # duplicates score, and the selection falls back to the scaled NLL
    from skysub.background.bkgnet.selection import MIN_PAIRS

    assert card["training"]["select_asked"] == "duplicates"
    assert card["training"]["select_pairs"] < MIN_PAIRS
    assert card["training"]["select"] == "scaled-nll"
    cal = card["inputs"]["error_calibration"]
    assert cal["scheme"] == "label-noise-stencils"
    assert len(cal["a"]) == 2 and all(a > 0 for a in cal["a"])
    assert cal["n_stencils"]["Xr/e0"] > 0 and cal["label_factor"]["Xr/e0"] >= 1.0
    rep = card["report"]["groups"]["all"]
    assert rep["n"] > 0 and rep["sigma68_bkgnet"] > 0 and rep["sigma68_annulus"] > 0
    assert "s68 annulus" in capsys.readouterr().err  # the report is printed
    est = BKGnetBackground(out, device="cpu")
    im, _, _, truth = exps[0]
    res = est.estimate(im, truth["x"], truth["y"], mag=truth["mag"])
    ok = np.isfinite(res.bkg)
    assert ok.mean() > 0.9 and np.all(res.bkg_err[ok] > 0)
    rel = (res.bkg[ok] - truth["bkg_true"][ok]) / truth["bkg_true"][ok]
    assert abs(np.median(rel)) < 0.05  # one epoch: close to the sky, not off by the scale
    # the known keys are still there (the PAUS bands keep their embeddings)
    im2 = Image(np.random.default_rng(0).normal(110, 10, (200, 200)), None,
                meta=ImageMeta(band="NB685", epoch="after", gain=1.0, rdnoise=5.0))
    assert np.isfinite(est.estimate(im2, [100.0], [100.0]).bkg[0])


def test_init_that_does_not_fit_is_a_clear_error(new_band_exposures, tmp_path):
    paths, cat, _ = new_band_exposures
    cfg = load_config()
    cfg.bkgnet.update(stamp_size=64)
    with pytest.raises(InputError, match="stamp_size 120"):
        train_bkgnet(paths, str(cat), tmp_path / "x.pt", config=cfg, init="bkgnet-paus",
                     epochs=1, quiet=True, device="cpu")


def test_unknown_key_warns_and_uses_the_mean_embedding(caplog):
    rng = np.random.default_rng(3)
    data = rng.normal(200.0, 14.0, (200, 200))
    im = Image(data, None, meta=ImageMeta(band="NEW", epoch="x", gain=1.0, rdnoise=5.0))
    with pytest.raises(InputError, match="unknown-key warn"):
        BKGnetBackground("bkgnet-paus", device="cpu").estimate(im, [100.0], [100.0])
    est = BKGnetBackground("bkgnet-paus", device="cpu", unknown_key="warn")
    with caplog.at_level(logging.WARNING, logger="skysub"):
        res = est.estimate(im, [100.0, 60.0], [100.0, 70.0])
    assert "not known" in caplog.text and "mean of the known embeddings" in caplog.text
    assert np.all(np.isfinite(res.bkg)) and np.all(np.abs(res.bkg / 200.0 - 1) < 0.02)
    w = est.net.embed.weight.detach()
    torch.testing.assert_close(w[-1], w[:-1].mean(0))
    with pytest.raises(InputError, match="unknown_key"):
        BKGnetBackground("bkgnet-paus", unknown_key="maybe")


def _image_with_extra_label_noise(seed=0, shape=(900, 900), sky=200.0, extra_px=6.0,
                                  ring=0.0):
    """Sky with Poisson + read noise, plus a correlated field (2 px Gaussian smoothing) that
    adds label noise eq. 3 does not know, optionally on a ring of ``ring`` x sky (30 px wide,
    radius 300 px: curvature on the scale of the label spacing); returns the image, the
    field and the noise-free sky."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.standard_normal(shape), 2.0)
    field *= extra_px / field.std()
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    r = np.hypot(xx - shape[1] / 2, yy - shape[0] / 2)
    smooth = sky * (1 + ring * np.exp(-0.5 * ((r - 300.0) / 30.0) ** 2))
    data = rng.poisson((smooth + field).clip(1)) + rng.normal(0, 5.0, shape)
    return Image(data.astype(float), None, meta=ImageMeta(gain=1.0, rdnoise=5.0)), field, smooth


def _stencils(im, seed, n=3000):
    st = label_stencils(im, None, BKGnetSettings(edge_width=150.0), np.random.default_rng(seed),
                        n)
    return {**st, "key": np.zeros(len(st["d"]), int)}


@pytest.mark.parametrize("ring", [0.0, 0.1])
def test_label_noise_recovers_known_extra_noise(ring):
    """The stencils measure a known extra label noise, also under a sky with curvature on the
    scale of their spacing (a ring 30 px wide, 10 % of the sky: a second difference along one
    direction would read it as label noise)."""
    im, field, _ = _image_with_extra_label_noise(ring=ring)
    st = _stencils(im, 1)
    assert len(st["d"]) > 1500
    # the truth: the scatter of the field's own circle means at random positions
    rng = np.random.default_rng(2)
    x, y = rng.uniform(20, 880, 4000), rng.uniform(20, 880, 4000)
    vals, _ = circle_values(field, x, y, 8.0)
    extra_true = float(np.nanmean(vals, axis=1).std())
    ln = label_noise(st, ["k"])
    eq3 = float(np.sqrt(np.median(st["eq3"] ** 2)))
    extra = eq3 * np.sqrt(ln["factor"]["k"] ** 2 - 1)
    assert extra_true > 0.6  # comparable to eq. 3 (~1 ADU): a real test
    np.testing.assert_allclose(extra, extra_true, rtol=0.15)
    assert ln["factor"]["k"] == ln["factor_all"]
    # without the extra field the measured extra noise is small against eq. 3
    im0, _, _ = _image_with_extra_label_noise(extra_px=0.0, ring=ring)
    st0 = _stencils(im0, 1)
    assert eq3 * np.sqrt(label_noise(st0, ["k"])["factor"]["k"] ** 2 - 1) < 0.35


def test_label_noise_per_key_and_pooled_for_sparse_keys():
    im_a, _, _ = _image_with_extra_label_noise(seed=1, extra_px=0.0)
    im_b, _, _ = _image_with_extra_label_noise(seed=2, extra_px=8.0)
    a, b = _stencils(im_a, 3), _stencils(im_b, 4)
    st = {k: np.concatenate([a[k], b[k]]) for k in a}
    st["key"] = np.r_[np.zeros(len(a["d"]), int), np.ones(len(b["d"]), int)]
    ln = label_noise(st, ["quiet", "noisy"])
    assert ln["factor"]["quiet"] < 1.1 < 1.3 < ln["factor"]["noisy"]
    sparse = {k: v[: len(a["d"]) + 50] for k, v in st.items()}  # 50 stencils of "noisy"
    ln2 = label_noise(sparse, ["quiet", "noisy"])
    assert ln2["factor"]["noisy"] == ln2["factor_all"]


@pytest.mark.parametrize("seen", [0.5, 0.0])
def test_error_calibration_against_the_smooth_sky_with_known_extra_label_noise(seen):
    """Predictions with a known error (0.6 x the label noise) that follow a share ``seen`` of
    the known extra label noise G (a network sees the wings of faint sources beyond its hidden
    centre), and a network sigma on another scale: the calibration, fitted against the pixel
    labels of one half of the positions, gives pulls of the other half against the noise-free
    sky of 1 when half of G is followed, and errors on the large side (never too small) when
    none is; ``a_if_unseen``, with all the measured label noise removed, is right then."""
    from skysub.nn.bkgnet import label_sigma
    from skysub.simulate.trainingdata import clipped_label
    from skysub.stats import sigma68

    im, field, smooth = _image_with_extra_label_noise(seed=4, ring=0.1, extra_px=8.0)
    rng = np.random.default_rng(5)
    x, y = rng.uniform(20, 880, 6000), rng.uniform(20, 880, 6000)
    vals, use = circle_values(im, x, y, 8.0)
    label, n_lab = clipped_label(vals, use, 3.0)
    eq3 = label_sigma(label, n_lab, 1.0, 5.0)
    truth = np.nanmean(circle_values(smooth, x, y, 8.0)[0], axis=1)
    g = np.nanmean(circle_values(field, x, y, 8.0)[0], axis=1)  # the known extra noise
    assert g.std() > 0.7 * eq3.mean()  # comparable to eq. 3: a real test
    sig_pred = 0.6 * np.hypot(eq3, g.std())
    b = truth + seen * g + rng.normal(0, sig_pred)
    sigma_net = 1.6 * np.hypot(sig_pred, eq3)
    edge = np.minimum.reduce([x, y, 899 - x, 899 - y])
    keys = np.full(len(x), "k")
    a, t = slice(0, 3000), slice(3000, None)
    cal = fit_error_calibration(b[a], sigma_net[a], label[a], eq3[a], edge[a], keys[a],
                                _stencils(im, 6), ["k"])
    assert cal["label_factor"]["k"] > 1.2  # the extra label noise is measured
    err, _ = calibrated_errors(b[t], sigma_net[t], eq3[t], edge[t], cal)
    pull = float(sigma68((b[t] - truth[t]) / err))
    if seen:
        assert 0.9 < pull < 1.1
    else:
        assert 0.4 < pull < 0.9  # conservative: errors too large, never too small
        unseen = float(sigma68((b[t] - truth[t]) / (cal["a_if_unseen"] * sigma_net[t])))
        assert 0.9 < unseen < 1.1
    assert 0 <= cal["a_if_unseen"] < cal["a_all"]


def test_old_error_calibrations_still_apply():
    """Cards written before the stencil calibration (per-level factors) keep working."""
    cal = {"edge_width": 150.0, "level_edges": [100.0], "k": [1.0, 2.0, 1.0, 1.0],
           "extra_rel": [0.0, 0.0, 0.0, 0.0]}
    err, s = calibrated_errors(np.array([50.0, 200.0]), np.array([1.0, 1.0]),
                               np.array([0.5, 0.5]), np.array([400.0, 400.0]), cal)
    np.testing.assert_allclose(s, [1.0, 2.0])
    np.testing.assert_allclose(err, np.sqrt([0.75, 3.75]))


def test_split_by_sky_holds_out_tiles_in_every_exposure_with_a_guard():
    from skysub.simulate.trainingdata import SKY_GUARD, sky_tiles, split_by_sky

    rng = np.random.default_rng(0)
    sky = rng.uniform(0, 1024, (20000, 2))
    is_train, is_val = split_by_sky(sky, 0.15, seed=3)
    assert not np.any(is_train & is_val)
    assert 0.08 < is_val.mean() < 0.25 and is_train.mean() > 0.6
    val_tiles = np.unique(sky_tiles(sky[is_val]))
    for dx, dy in ((SKY_GUARD, 0), (-SKY_GUARD, 0), (0, SKY_GUARD), (0, -SKY_GUARD)):
        moved = sky_tiles(sky[is_train] + [dx, dy])
        assert not np.isin(moved, val_tiles).any()  # training stamps keep clear of them
    again = split_by_sky(sky, 0.15, seed=3)
    assert np.array_equal(again[1], is_val)
    assert not np.array_equal(split_by_sky(sky, 0.15, seed=4)[1], is_val)


def test_sky_positions_follow_the_wcs_across_pointings():
    from skysub.simulate.ccd import CCDSimConfig, exposure_wcs

    cfg = CCDSimConfig(shape=(200, 300))
    w0, w1 = exposure_wcs(cfg, (0.0, 0.0)), exposure_wcs(cfg, (12.0, -7.0))
    ra, dec = w0.all_pix2world([50.0, 150.0], [60.0, 90.0], 0)
    x1, y1 = w1.all_world2pix(ra, dec, 0)  # the same sky positions on the second pointing
    im1 = Image(np.zeros((200, 300)), None, wcs=w1, meta=ImageMeta(gain=1.0))
    got = _sky_positions(im1, x1, y1, w0)
    np.testing.assert_allclose(got, [[50.0, 60.0], [150.0, 90.0]], atol=1e-6)
    im_nowcs = Image(np.zeros((200, 300)), None, meta=ImageMeta(gain=1.0))
    np.testing.assert_allclose(_sky_positions(im_nowcs, x1, y1, w0), np.column_stack([x1, y1]))


def test_randomised_instruments_are_reproducible_and_differ():
    from skysub.simulate.randomised import (
        HELDOUT,
        PRETRAIN,
        instrument_exposures,
        random_instrument,
    )

    a = random_instrument(HELDOUT, seed=1, shape=(128, 160))
    b = random_instrument(HELDOUT, seed=1, shape=(128, 160))
    assert a["config"].sky == b["config"].sky and a["patterns"] == b["patterns"]
    p = random_instrument(PRETRAIN, seed=1, shape=(128, 160))
    assert set(p["config"].bands).isdisjoint(a["config"].bands)
    e1, _ = instrument_exposures(a, 2, seed=3)
    e2, _ = instrument_exposures(b, 2, seed=3)
    np.testing.assert_array_equal(np.nan_to_num(e1[1][0].data), np.nan_to_num(e2[1][0].data))
    im, _, bg, truth = e1[0]
    assert im.meta.band in HELDOUT.bands and bg.shape == (128, 160)
    assert np.all(bg > 0) and len(truth) > 0
    assert np.array_equal(im.mask, ~np.isfinite(im.data) | im.mask)


def test_cli_unknown_key_warn_and_init_none(new_band_exposures, tmp_path, capsys):
    from astropy.table import Table

    from skysub.cli import main

    paths, cat, _ = new_band_exposures
    out = tmp_path / "b.csv"
    base = ["background", paths[0], "--catalog", str(cat), "--method", "bkgnet", "--quiet",
            "--device", "cpu", "--output", str(out)]
    assert main(base) == 2
    assert "--unknown-key warn" in capsys.readouterr().err
    assert main([*base, "--unknown-key", "warn"]) == 0
    t = Table.read(out, format="ascii.csv")
    on = (np.asarray(t["flags"]) & 16) == 0  # OFF_IMAGE: catalogue rows beyond this exposure
    assert on.sum() > 10 and np.isfinite(t["bkg"][on]).mean() > 0.9
    assert main(["train", "bkgnet", *paths, "--catalog", str(cat), "--output",
                 str(tmp_path / "s.pt"), "--init", "none", "--epochs", "1",
                 "--stamps-per-image", "40", "--quiet", "--device", "cpu",
                 "--select", "scaled-nll"]) == 0
    card = modelfile_card(tmp_path / "s.pt")
    assert card["init"] is None and card["inputs"]["keys"] == ["Xr/e0"]
    assert card["training"]["select"] == "scaled-nll"  # the previous default, on request


def modelfile_card(path):
    from skysub.nn.modelfile import read_card

    return read_card(path)
