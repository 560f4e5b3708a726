"""BKGnet: network shapes and maths, normalisation from valid pixels only, labels (eq. 3),
sigma_pred (eq. 5), save/load, the estimator's flags, and a small train -> predict run on CPU."""

import numpy as np
import pytest
import torch

from skysub import flags as F
from skysub.background.bkgnet import (
    BKGnetBackground,
    BKGnetSettings,
    circle_values,
    clipped_label,
    key_name,
    train_bkgnet,
)
from skysub.config import load_config
from skysub.errors import ConfigError, InputError
from skysub.image import Image, ImageMeta
from skysub.nn import modelfile
from skysub.nn.bkgnet import (
    BKGnet,
    BKGnetArch,
    flops_per_stamp,
    fuse_for_inference,
    gaussian_nll,
    label_sigma,
    n_parameters,
    normalise_stamps,
    predicted_sigma,
)


def _inputs(b=4, s=120, n_keys=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 2, s, s, generator=g)
    x[:, 1] = 1.0
    return (x, torch.rand(b, 2, generator=g) * 2 - 1, torch.full((b,), 21.0),
            torch.tensor([1.0, 0.0] * (b // 2)), torch.arange(b) % n_keys)


@pytest.mark.parametrize("preset", ["lean", "paper"])
def test_shapes_and_size(preset):
    net = BKGnet(BKGnetArch.from_preset(preset, n_keys=3))
    mu, ls = net(*_inputs())
    assert mu.shape == (4,) and ls.shape == (4,)
    if preset == "paper":  # the published layout: ~6 M parameters, ~1.4 GFLOP per stamp
        assert 5.5e6 < n_parameters(net) < 7e6
        assert 1.2e9 < flops_per_stamp(net) < 1.6e9
    else:  # the lean default: < 1 M parameters, < 30 MFLOP per stamp
        assert n_parameters(net) < 1e6 and flops_per_stamp(net) < 3e7


def test_other_stamp_size():
    net = BKGnet(BKGnetArch.from_preset("lean", stamp_size=64, mask_size=8))
    mu, _ = net(*_inputs(s=64, n_keys=1))
    assert mu.shape == (4,)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = BKGnet(BKGnetArch.from_preset("lean", n_keys=3))
    x, c, m, hm, k = _inputs()
    mu, ls = net(x, c, m, hm, k)
    gaussian_nll(mu, ls, torch.zeros(4)).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
    # every used embedding row and the learned default magnitude get a gradient
    assert net.default_mag.grad.abs().item() > 0
    assert net.trunk[0].weight.grad.abs().sum().item() > 0


def test_tiny_overfit():
    torch.manual_seed(0)
    net = BKGnet(BKGnetArch.from_preset("lean", n_keys=3, stamp_size=48, mask_size=8))
    x, c, m, hm, k = _inputs(b=16, s=48)
    y = torch.linspace(-1, 1, 16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(80):
        mu, ls = net(x, c, m, hm, k)
        loss = gaussian_nll(mu, ls, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # the NLL falls by > 2 (sigma shrinks ~e-fold); heteroscedastic NLL is spiky, so take the
    # best of the last 10 steps
    assert min(losses[-10:]) < losses[0] - 2.0
    net.eval()
    mu, _ = net(x, c, m, hm, k)
    assert torch.sqrt(((mu - y) ** 2).mean()).item() < 0.3


def test_fused_batchnorm_is_exact():
    torch.manual_seed(1)
    net = BKGnet(BKGnetArch.from_preset("lean", n_keys=3))
    net.train()
    for _ in range(3):  # give the BN layers non-trivial running statistics
        net(*_inputs(b=8, seed=_))
    net.eval()
    inp = _inputs(seed=7)
    with torch.no_grad():
        a = net(*inp)
        fuse_for_inference(net)
        b = net(*inp)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.trunk)
    assert torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1], b[1], atol=1e-4)


def test_normalisation_uses_valid_pixels_only():
    rng = np.random.default_rng(0)
    st = rng.normal(100.0, 10.0, (2, 40, 40)).astype(np.float32)
    valid = np.ones_like(st, bool)
    valid[0, :, :15] = False  # off the image: padding values must not matter
    st[0, :, :15] = 0.0
    st[1, 20, 20] = 1e6  # a hot pixel in the hidden centre must not matter
    x, loc, scale, ok = normalise_stamps(torch.from_numpy(st), torch.from_numpy(valid), 8)
    sub = np.where(valid[0, ::2, ::2], st[0, ::2, ::2], np.nan)
    sub[16 // 2:24 // 2, 16 // 2:24 // 2] = np.nan  # hidden centre (rows/cols 16..23)
    def lower_median(v):  # torch's median: the lower of the two middle values
        v = np.sort(v[np.isfinite(v)])
        return v[(len(v) - 1) // 2]

    med = lower_median(sub)
    assert loc[0].item() == pytest.approx(med, abs=1e-3)
    assert scale[0].item() == pytest.approx(1.4826 * lower_median(np.abs(sub - med)), rel=1e-4)
    assert 8.0 < scale[1].item() < 12.0 and ok.all()
    assert torch.all(x[0, 0, :, :15] == 0) and torch.all(x[0, 1, :, :15] == 0)
    assert torch.all(x[:, :, 16:24, 16:24] == 0)  # centre hidden in both channels
    # too few valid pixels -> not ok
    _, _, _, ok2 = normalise_stamps(torch.from_numpy(st), torch.zeros(2, 40, 40, dtype=bool), 8)
    assert not ok2.any()


def test_label_is_clipped_mean_and_eq3_error():
    rng = np.random.default_rng(2)
    img = rng.normal(200.0, 5.0, (50, 50))
    clean = img.copy()
    img[25, 26] += 5000.0  # a cosmic ray inside the circle
    vals, use = circle_values(img, np.array([25.3]), np.array([24.8]), 8.0)
    label, n = clipped_label(vals, use, 3.0)
    cvals, cuse = circle_values(clean, np.array([25.3]), np.array([24.8]), 8.0)
    assert 190 <= use.sum() <= 210  # pi 8^2 = 201 pixel centres
    assert abs(label[0] - np.nanmean(cvals)) < 1.0  # the cosmic ray is clipped away
    assert n[0] < use.sum()
    # eq. 3 for the mean of N pixels: (b g + RN^2) / (g^2 N)
    assert label_sigma(100.0, 201, 2.0, 4.0) == pytest.approx(np.sqrt((200 + 16) / (4 * 201)))
    # eq. 5 and its floor
    assert predicted_sigma(5.0, 3.0) == pytest.approx(4.0)
    assert predicted_sigma(1.0, 2.0) == pytest.approx(0.3)


def test_settings_reject_unknown_keys():
    with pytest.raises(ConfigError, match="unknown setting"):
        BKGnetSettings.from_config({"stamp_sise": 100})
    with pytest.raises(ConfigError, match="mask_size"):
        BKGnetSettings.from_config({"stamp_size": 64, "mask_size": 64})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A BKGnet trained for 3 epochs on 6 small simulated exposures (truth labels)."""
    cfg = load_config("paus")
    cfg.simulate.update(shape=[256, 320], bands=["NB685"], n_galaxies=900, n_stars=30,
                        n_faint=600)
    cfg.bkgnet.update(stamps_per_image=200, stamp_size=64, mask_size=16, epochs=4,
                      batch_size=64, lr=3e-3)
    out = tmp_path_factory.mktemp("bk") / "tiny.pt"
    card = train_bkgnet(None, None, out, config=cfg, simulated=True, n_exposures=6,
                        labels="truth", seed=3, quiet=True, device="cpu")
    return out, card, cfg


def test_train_then_predict(tiny_model):
    from skysub.background.bkgnet import simulated_exposures

    path, card, cfg = tiny_model
    assert card["inputs"]["keys"] == ["NB685/before", "NB685/after"]
    assert card["data"]["n_train"] > 500 and card["metrics"]["n_stamps"] > 0
    assert modelfile.card_path(path).is_file()
    est = BKGnetBackground(path, device="cpu", batch_size=100)  # > 1 batch of sources
    (im, _, _, truth), = simulated_exposures(1, config=cfg.simulate, seed=99)[0][:1]
    x, y = np.asarray(truth["x"]), np.asarray(truth["y"])
    assert len(x) > 100  # more sources than one batch of 100
    res = est.estimate(im, x, y, mag=np.asarray(truth["mag"]))
    ok = np.isfinite(res.bkg)
    assert ok.mean() > 0.95 and np.all(res.bkg_err[ok] > 0)
    rel = (res.bkg[ok] - truth["bkg_true"][ok]) / truth["bkg_true"][ok]
    # 4 epochs on 6 small exposures: within a few per cent of a ~110 ADU sky (a broken
    # de-normalisation would be off by the stamp scale, ~10 %, or by the sky itself)
    assert abs(np.median(rel)) < 0.03 and np.percentile(np.abs(rel), 84) < 0.05
    # sources whose stamp reaches beyond the image are flagged EDGE and still estimated
    edge = (res.flags & F.EDGE) > 0
    assert edge.any() and np.isfinite(res.bkg[edge]).mean() > 0.9


def test_estimator_flags_and_errors(tiny_model):
    path, card, _ = tiny_model
    est = BKGnetBackground(path, device="cpu")
    rng = np.random.default_rng(0)
    data = rng.normal(110.0, 10.0, (200, 200))
    data[150:, 150:] = np.nan
    im = Image(data, None, meta=ImageMeta(band="NB685", epoch="after", gain=1.0, rdnoise=5.0))
    res = est.estimate(im, [100.0, -5.0, 185.0, 2.0], [100.0, 50.0, 185.0, 3.0])
    assert np.isfinite(res.bkg[0]) and res.flags[0] == 0
    assert res.flags[1] & F.OFF_IMAGE and np.isnan(res.bkg[1])
    assert res.flags[2] & F.MASKED
    assert res.flags[3] & F.EDGE and np.isfinite(res.bkg[3])
    im_bad = Image(data, None, meta=ImageMeta(band="NB999", epoch="after"))
    with pytest.raises(InputError, match="NB685/after"):  # the message lists known keys
        est.estimate(im_bad, [100.0], [100.0])
    # an all-NaN neighbourhood -> NO_DATA, NaN, not a number
    data2 = np.full((200, 200), np.nan)
    data2[:, :5] = 100.0
    im2 = Image(data2, None, meta=ImageMeta(band="NB685", epoch="after"))
    r2 = est.estimate(im2, [100.0], [100.0])
    assert r2.flags[0] & F.NO_DATA and np.isnan(r2.bkg[0]) and np.isnan(r2.bkg_err[0])
    with pytest.raises(InputError, match="not a 'bkgnet' model"):
        modelfile.register_kind("tiny2", lambda a: torch.nn.Linear(1, 1))
        p2 = path.with_name("other.pt")
        modelfile.save_model(p2, torch.nn.Linear(1, 1), {"kind": "tiny2", "arch": {}})
        BKGnetBackground(p2)
    assert key_name(None, "after") == "-/after"


def test_cli_models_background_and_evaluate(tiny_model, tmp_path, capsys):
    """models show / background --method bkgnet / evaluate background, end to end."""
    from astropy.table import Table

    from skysub.background.bkgnet import simulated_exposures
    from skysub.cli import main
    from skysub.io import write_fits_product

    path, card, cfg = tiny_model
    assert main(["models", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "bkgnet model" in out and "NB685/before" in out
    (im, _, _, truth), = simulated_exposures(1, config=cfg.simulate, seed=5)[0][:1]
    img = tmp_path / "exp.fits"
    write_fits_product(img, im.data, header=im.header, wcs=im.wcs)
    cat = tmp_path / "cat.csv"
    Table({"id": truth["id"], "x": truth["x"], "y": truth["y"], "mag": truth["mag"]}).write(cat)
    truth["image"] = "exp.fits"
    truth.write(tmp_path / "truth.csv")
    bk = tmp_path / "bkg.csv"
    assert main(["background", str(img), "--catalog", str(cat), "--method", "bkgnet",
                 "--model", str(path), "--output", str(bk), "--quiet", "--device", "cpu"]) == 0
    t = Table.read(bk, format="ascii.csv")
    assert t.colnames[:7] == ["image", "id", "x", "y", "bkg", "bkg_err", "flags"]
    assert len(t) == len(truth) and np.isfinite(t["bkg"]).mean() > 0.95
    # never over an existing output without --overwrite
    assert main(["background", str(img), "--catalog", str(cat), "--method", "bkgnet",
                 "--model", str(path), "--output", str(bk), "--quiet"]) == 2
    assert main(["evaluate", "background", str(bk), "--truth", str(tmp_path / "truth.csv"),
                 "--output-dir", str(tmp_path / "eval"), "--label", "bkgnet"]) == 0
    out = capsys.readouterr().out
    assert "sigma68_rel" in out and "bkgnet" in out
    for png in ("relative_error_vs_position.png", "pulls.png"):
        assert (tmp_path / "eval" / png).stat().st_size > 1000
    # an unknown model name is a clear error, not a traceback
    assert main(["background", str(img), "--catalog", str(cat), "--method", "bkgnet",
                 "--model", "no-such-model", "--output", str(tmp_path / "x.csv")]) == 2
    assert "shipped models" in capsys.readouterr().err


def test_evaluate_background_numbers(tmp_path):
    """sigma68 and pull width of synthetic predictions with known scatter and errors."""
    from astropy.table import Table

    from skysub.evaluate import evaluate_background

    rng = np.random.default_rng(4)
    n = 4000
    true = rng.uniform(50, 150, n)
    truth = Table({"image": ["a.fits"] * n, "id": np.arange(n), "bkg_true": true,
                   "edge_distance": rng.uniform(0, 400, n),
                   "band": rng.choice(["g", "r"], n), "x": rng.uniform(0, 500, n),
                   "y": rng.uniform(0, 500, n)})
    good = Table({"image": truth["image"], "id": truth["id"],
                  "bkg": true * (1 + 0.01 * rng.standard_normal(n)), "bkg_err": 0.01 * true})
    bad = Table({"image": truth["image"], "id": truth["id"],
                 "bkg": true * (1 + 0.02 * rng.standard_normal(n)), "bkg_err": 0.01 * true})
    t = evaluate_background({"good": good, "bad": bad}, truth, output_dir=tmp_path)
    row = {(r["method"], r["group"]): r for r in t}
    assert abs(row[("good", "all")]["sigma68_rel"] - 0.01) < 0.0008
    assert abs(row[("good", "all")]["pull_sigma68"] - 1.0) < 0.06
    assert abs(row[("bad", "all")]["pull_sigma68"] - 2.0) < 0.12
    assert {"edge", "centre", "band:g", "band:r"} <= {g for m, g in row if m == "good"}
    assert (tmp_path / "sigma68_per_band.png").is_file()
    with pytest.raises(Exception, match="bkg_err"):
        evaluate_background({"x": Table({"image": ["a"], "id": [1], "bkg": [1.0]})}, truth)


def test_sigma_scale_calibrates_errors(tiny_model):
    """The card's validation pull width scales sigma_net (truth-label model: bkg_err = k sigma)."""
    path, card, _ = tiny_model
    k = card["inputs"]["sigma_scale"]
    assert 0.3 < k < 3.0
    est = BKGnetBackground(path, device="cpu")
    assert est.sigma_scale == pytest.approx(k)
    rng = np.random.default_rng(1)
    im = Image(rng.normal(110.0, 10.0, (150, 150)), None,
               meta=ImageMeta(band="NB685", epoch="before", gain=1.0, rdnoise=5.0))
    a = est.estimate(im, [75.0, 40.0], [75.0, 60.0])
    est.sigma_scale = 2 * k
    b = est.estimate(im, [75.0, 40.0], [75.0, 60.0])
    np.testing.assert_allclose(b.bkg, a.bkg)
    np.testing.assert_allclose(b.bkg_err, 2 * a.bkg_err, rtol=1e-12)
