"""Lumos end to end on CPU: simulation -> train (+ pairs) -> LumosPhotometer -> coadd, and CLI."""

import numpy as np
import pytest
import torch
from astropy.table import Table

from skysub.config import load_config
from skysub.photometry.coadd import coadd_tables, inverse_variance_mean
from skysub.photometry.lumos import LumosPhotometer, find_pairs, train_lumos
from skysub.simulate.galaxies import GalaxySimSettings, add_galaxies


def _tiny_config(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text('base = "paus"\n[simulate]\nshape = [192, 256]\nn_galaxies = 150\n'
                 'n_faint = 100\n[lumos]\nstamps_per_image = 60\nepochs = 2\nbatch_size = 32\n'
                 'finetune_epochs = 1\nmax_pairs = 64\n')
    return load_config(p)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("lumos")
    cfg = _tiny_config(tmp)
    card = train_lumos(None, None, tmp / "tiny.pt", config=cfg, simulated=True, n_exposures=12,
                       pairs="auto", quiet=True, seed=3)
    return tmp / "tiny.pt", card, cfg


def test_simulated_galaxies_have_the_true_flux():
    """Galaxies (with photon noise) on a zero background: on average the stamp holds flux_true
    (to the light beyond the 60 px stamp); the model input is unit-total and centred like the
    galaxy."""
    s = GalaxySimSettings(colour_scatter=0.0)
    rng = np.random.default_rng(0)
    gal = {"mag": np.array([19.0]), "r50": np.array([2.0]), "sersic_n": np.array([1.0]),
           "ba": np.array([0.6]), "theta": np.array([30.0])}
    d = add_galaxies(np.zeros((200, 60, 60)), gal, exptime=100.0, gain=1.0, settings=s, rng=rng)
    expected = 100.0 * 10 ** (-0.4 * (19.0 - s.zero_point))
    assert np.allclose(d["flux_true"], expected)
    assert d["stamps"].sum((1, 2)).mean() == pytest.approx(expected, rel=4e-3)
    assert d["models"].sum((1, 2)) == pytest.approx(np.ones(200), abs=2e-3)
    yy, xx = np.indices((60, 60))
    cx = (d["models"] * xx).sum((1, 2))
    assert np.allclose(cx, 30 + d["dx"], atol=0.02)


def test_train_predict_all_sources_and_edges(trained):
    path, card, cfg = trained
    assert card["kind"] == "lumos" and card["training"]["finetune"]["n_pairs"] > 0
    assert card["metrics"]["n"] > 10
    from skysub.background.bkgnet import simulated_exposures

    exps, fieldcat = simulated_exposures(1, config=cfg.simulate, seed=99)
    image = exps[0][0]
    ny, nx = image.shape
    rng = np.random.default_rng(1)
    n = 70  # more sources than one batch (batch_size=16)
    x = np.r_[rng.uniform(0, nx - 1, n - 4), 0.0, 2.0, nx - 1.0, 40.0]
    y = np.r_[rng.uniform(0, ny - 1, n - 4), 50.0, 1.0, ny - 2.0, ny + 30.0]
    cat = Table({"r50": np.full(n, 2.0), "sersic_n": np.ones(n), "ba": np.full(n, 0.8),
                 "theta": np.zeros(n), "mag": np.full(n, 21.0)})
    phot = LumosPhotometer(path, batch_size=16)
    r = phot.measure(image, x, y, catalog=cat)
    assert len(r) == n and r.flux.shape == (n,)
    assert np.isfinite(r.flux[:n - 1]).all()  # every on-image source, edges included
    assert (r.flags[n - 4:n - 1] & 1).all()  # EDGE
    assert (r.flags[-1] & 16) and np.isnan(r.flux[-1])  # off image
    a = np.column_stack([r.extra[f"a{i}"] for i in range(1, 6)])
    assert np.allclose(a[:n - 1].sum(1), 1.0, atol=1e-6)
    # point estimates are those of the returned mixture; same result with another batch size
    r2 = LumosPhotometer(path, batch_size=64).measure(image, x, y, catalog=cat)
    assert np.allclose(r.flux[:-1], r2.flux[:-1], rtol=1e-4)
    assert np.allclose(r.flux, r.extra["flux_median"], equal_nan=True)  # the preset's estimator


def test_find_pairs_and_coadd_tables():
    t = Table({"id": [1, 1, 1, 2, 2, 3], "image": ["a", "b", "c", "a", "b", "a"],
               "band": ["r", "r", "r", "r", "g", "r"]})
    p = find_pairs(t)
    assert sorted(zip(p["image_1"], p["image_2"], strict=True)) == [("a", "b"), ("b", "c")]
    assert inverse_variance_mean([1.0, 3.0], [1.0, 1.0]) == pytest.approx((2.0, 1 / np.sqrt(2)))
    # two single-Gaussian "mixtures" of one object: the PDF product is analytic
    rows = Table({"id": [7, 7], "band": ["r", "r"], "flux": [30.0, 50.0],
                  "flux_err": [10.0, 20.0]})
    for i in range(1, 6):
        rows[f"a{i}"] = [1.0 if i == 1 else 0.0] * 2
        rows[f"f{i}"] = [30.0, 50.0]
        rows[f"s{i}"] = [10.0, 20.0]
    out = coadd_tables([rows])
    assert len(out) == 1 and out["n_obs"][0] == 2
    assert out["flux_ivw"][0] == pytest.approx(34.0)
    assert out["flux_pdf_mean"][0] == pytest.approx(34.0, abs=0.05)
    assert out["flux_pdf_std"][0] == pytest.approx(np.sqrt(80.0), abs=0.05)


def test_cli_lumos_photometry_and_coadd(trained, tmp_path):
    from skysub.cli import main

    path, _card, _cfg = trained
    sim = tmp_path / "sim"
    assert main(["simulate", "ccd", "-o", str(sim), "--n-exposures", "2", "--size", "256", "192",
                 "-q"]) == 0
    outs = []
    for k, img in enumerate(sorted((sim / "images").glob("*.fits"))):
        o = tmp_path / f"phot{k}.csv"
        assert main(["photometry", str(img), "-c", str(sim / "catalog.csv"), "-p", "lumos",
                     "--model", str(path), "-o", str(o), "-q"]) == 0
        outs.append(str(o))
    t = Table.read(outs[0])
    assert {"flux", "flux_err", "a1", "f5", "s3", "flux_sigma68", "eta", "band"} <= set(
        t.colnames)
    assert main(["coadd", *outs, "-o", str(tmp_path / "co.csv"), "-q"]) == 0
    assert main(["coadd", *outs, "-o", str(tmp_path / "co.csv"), "-q"]) == 2  # no overwrite
    co = Table.read(tmp_path / "co.csv")
    assert len(co) > 0 and "flux_pdf_mode" in co.colnames


def test_injected_neighbours_carry_their_flux():
    """blend_fraction = 1: every stamp holds the target plus a neighbour at blend_radius, whose
    light is on the stamp (zero background); blend_fraction = 0: none."""
    s = GalaxySimSettings(colour_scatter=0.0, blend_fraction=1.0, blend_radius=(6.0, 8.0))
    rng = np.random.default_rng(2)
    gal = {"mag": np.array([19.0]), "r50": np.array([1.5]), "sersic_n": np.array([1.0]),
           "ba": np.array([0.8]), "theta": np.array([0.0])}
    d = add_galaxies(np.zeros((100, 60, 60)), gal, exptime=100.0, gain=1.0, settings=s, rng=rng)
    assert np.all((d["blend_r"] >= 6.0) & (d["blend_r"] <= 8.0))
    total = d["flux_true"] + d["blend_flux"]
    assert d["stamps"].sum((1, 2)).mean() == pytest.approx(total.mean(), rel=5e-3)
    # the neighbour's light is off centre: the light-weighted centroid moves towards it
    yy, xx = np.indices((60, 60))
    r = np.hypot((d["stamps"] * xx).sum((1, 2)) / d["stamps"].sum((1, 2)) - 30,
                 (d["stamps"] * yy).sum((1, 2)) / d["stamps"].sum((1, 2)) - 30)
    expected = d["blend_r"] * d["blend_flux"] / total
    assert np.median(np.abs(r - expected)) < 0.3
    d0 = add_galaxies(np.zeros((5, 60, 60)), gal, exptime=100.0, gain=1.0,
                      settings=GalaxySimSettings(), rng=rng)
    assert np.isnan(d0["blend_r"]).all() and np.isnan(d0["blend_flux"]).all()


def test_calibrate_widths_recovers_a_known_scale():
    """A 'network' whose Gaussian widths are half the true scatter: temperature scaling finds 2."""
    from skysub.photometry.lumos import calibrate_widths

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, feats, coords, mag, has_mag, key):
            b = len(x)
            a = torch.tensor([[1.0, 0, 0, 0, 0]]).repeat(b, 1)
            return a, feats[:, :1].repeat(1, 5), torch.full((b, 5), 2.5)

    rng = np.random.default_rng(0)
    n = 20000
    mu = rng.uniform(50, 100, n)
    y = mu + rng.normal(0, 5.0, n)  # true scatter 5, the network says 2.5
    t = {"x": torch.zeros(n, 1), "feats": torch.from_numpy(mu[:, None]).float(),
         "coords": torch.zeros(n, 2), "mag": torch.zeros(n), "has_mag": torch.ones(n),
         "key": torch.zeros(n, dtype=torch.long), "y": torch.from_numpy(y).float()}
    assert calibrate_widths(Fixed(), t) == pytest.approx(2.0, rel=0.02)


def test_data_only_mode(trained):
    """use_mag=False ignores the catalogue magnitude; a model trained without prior-free stamps
    refuses it."""
    from skysub.background.bkgnet import simulated_exposures
    from skysub.errors import InputError
    from skysub.nn.modelfile import load_model

    path, card, cfg = trained
    assert card["inputs"]["simulation"]["prior_free_fraction"] > 0
    assert set(card["inputs"]["sigma_scale"]) == {"mag", "no_mag"}
    exps, _ = simulated_exposures(1, config=cfg.simulate, seed=98)
    image = exps[0][0]
    x, y = np.array([60.0, 120.0, 180.0]), np.array([50.0, 100.0, 140.0])
    cat = Table({"r50": np.full(3, 2.0), "sersic_n": np.ones(3), "ba": np.full(3, 0.8),
                 "theta": np.zeros(3), "mag": np.array([19.0, 21.0, 22.0])})
    nomag = LumosPhotometer(path, use_mag=False)
    # the data-only mode has its own per-SNR calibration (fitted to the posterior on the
    # prior-free stamps) and the photometer applies it
    from skysub.photometry.lumos import SNRCalibration

    assert isinstance(nomag.sigma_scale, SNRCalibration)
    assert nomag.sigma_scale.as_dict() == card["inputs"]["snr_calibration"]["no_mag"]
    assert nomag.sigma_scale.as_dict() != card["inputs"]["snr_calibration"]["mag"]
    r1 = nomag.measure(image, x, y, catalog=cat)
    cat["mag"] = [23.0, 18.0, 20.0]
    r2 = nomag.measure(image, x, y, catalog=cat)
    assert np.array_equal(r1.flux, r2.flux)
    withmag = LumosPhotometer(path).measure(image, x, y, catalog=cat)
    assert not np.allclose(withmag.flux, r2.flux)
    net, card0 = load_model(path, kind="lumos")
    card0["inputs"]["simulation"]["prior_free_fraction"] = 0.0
    with pytest.raises(InputError, match="prior_free_fraction"):
        LumosPhotometer((net, card0), use_mag=False)


def test_blending_test_fills_every_radius(trained):
    """Every R gets its targets (the earlier version ran out of positions at large R)."""
    from skysub.evaluate import blending_test
    from skysub.simulate.galaxies import psf_for

    path, card, cfg = trained
    s = GalaxySimSettings.from_config(card["inputs"]["simulation"])
    lum = {"lumos": LumosPhotometer(path)}
    t = blending_test(lum, cfg, s, psf_for(s), radii=(0, 10, 20), n_per_r=6,
                      methods=("lumos", "aperture"))
    assert len(t) == 6 and (t["n"] >= 6).all() and np.isfinite(t["bias"]).all()


def test_cli_evaluate_photometry(trained, tmp_path):
    """skysub evaluate photometry: tables for every method (both Lumos modes), PIT, blending,
    the plot; the baselines' scatter against truth is finite and the duplicates are paired."""
    from skysub.cli import main

    path, _card, _cfg = trained
    out = tmp_path / "ev"
    assert main(["evaluate", "photometry", "--model", str(path), "--n-objects", "60",
                 "--n-blend", "3", "-o", str(out), "-q"]) == 0
    s = Table.read(out / "evaluate_photometry_summary.csv")
    assert {"lumos", "lumos_nomag", "aperture", "optimal", "optimal_oracle",
            "profile_fit"} == set(s["method"])
    assert (s["n"] >= 100).all() and np.isfinite(s["sigma68_D"]).all()
    # the aperture flux of a faint galaxy is noisy but not absurd
    ap = s[s["method"] == "aperture"][0]
    assert 0.05 < ap["sigma68_all"] < 3.0
    pit = Table.read(out / "evaluate_photometry_pit.csv")
    assert {"lumos", "lumos_nomag"} <= set(pit.colnames)
    assert pit["lumos"].sum() == s[s["method"] == "lumos"]["n"][0]
    # the per-magnitude PIT covers the same objects, bin by bin
    pm = Table.read(out / "evaluate_photometry_pit_by_mag.csv")
    lum = pm[pm["method"] == "lumos"]
    assert 0 < lum["n"].sum() <= pit["lumos"].sum() and len(lum) >= 2
    assert ((lum["median_pit"] > 0) & (lum["median_pit"] < 1)).all()
    assert (out / "evaluate_photometry.png").stat().st_size > 10000
    assert main(["evaluate", "photometry", "--model", str(path), "--n-objects", "0",
                 "-o", str(tmp_path / "x"), "-q"]) == 2


def test_locally_flat_flux_density_and_prior_free_stamps():
    """Samples follow p(f) ~ 1 / (max(f, 0) + k) on [-2k, hi]; prior-free stamps' fluxes do not
    depend on the magnitude (negative ones included), the others are the magnitude's."""
    from scipy import stats

    from skysub.simulate.galaxies import locally_flat_flux

    rng = np.random.default_rng(4)
    k, hi = 50.0, 1e4
    f = locally_flat_flux(rng, np.full(40000, k), hi)
    assert f.min() >= -2 * k and f.max() <= hi
    z = 2.0 + np.log((hi + k) / k)

    def cdf(v):
        v = np.asarray(v, float)
        return np.where(v < 0, (v + 2 * k) / k, 2.0 + np.log((np.maximum(v, 0) + k) / k)) / z

    assert stats.kstest(f, cdf).pvalue > 0.01
    s = GalaxySimSettings(colour_scatter=0.0, prior_free_fraction=0.5)
    gal = {"mag": np.array([20.0, 20.0]), "r50": np.array([2.0, 2.0]),
           "sersic_n": np.array([1.0, 1.0]), "ba": np.array([0.8, 0.8]),
           "theta": np.array([0.0, 0.0])}
    bg = rng.normal(0.0, 10.0, (400, 60, 60))
    d = add_galaxies(bg, gal, exptime=100.0, gain=1.0, settings=s, rng=rng)
    free = d["prior_free"]
    assert 0.4 < free.mean() < 0.6
    nominal = 100.0 * 10 ** (-0.4 * (20.0 - s.zero_point))
    assert np.allclose(d["flux_true"][~free], nominal)
    # knee = 30 x the cutouts' pixel noise (10); the brightest flux is the catalogue's
    ff, kk = d["flux_true"][free], 300.0
    assert ff.max() <= nominal * (1 + 1e-9) and ff.min() >= -2 * kk * 1.1
    p_neg = 2.0 / (2.0 + np.log((nominal + kk) / kk))
    assert (ff < 0).mean() == pytest.approx(p_neg, abs=0.08)
    # a negative galaxy is subtracted: the stamp sums to the (negative) flux on average
    neg = free & (d["flux_true"] < -100)
    excess = (d["stamps"][neg] - bg[neg]).sum((1, 2))
    assert np.allclose(excess, d["flux_true"][neg], rtol=0.02)


def test_coadd_of_likelihoods_applies_the_positivity_prior_once():
    """Data-only (likelihood) mixtures N(-5, 10) and N(5, 10): the product N(0, 10/sqrt 2) cut
    at 0 once is a half-normal (mean 10/sqrt(pi)); mixed likelihood/posterior tables are
    refused."""
    from skysub.errors import InputError

    rows = Table({"id": [7, 7], "band": ["r", "r"], "flux": [-5.0, 5.0],
                  "flux_err": [10.0, 10.0], "likelihood": [True, True]})
    for i in range(1, 6):
        rows[f"a{i}"] = [1.0 if i == 1 else 0.0] * 2
        rows[f"f{i}"] = [-5.0, 5.0]
        rows[f"s{i}"] = [10.0, 10.0]
    out = coadd_tables([rows])
    assert out["flux_pdf_mean"][0] == pytest.approx(10 / np.sqrt(np.pi), rel=0.01)
    assert out["flux_pdf_mode"][0] == pytest.approx(0.0, abs=0.05)
    rows["likelihood"] = [True, False]
    with pytest.raises(InputError, match="mix"):
        coadd_tables([rows])


def test_cli_calibrate_only_rewrites_the_widths_not_the_weights(trained, tmp_path):
    """``skysub train lumos --calibrate-only`` on fresh simulated stamps: a card whose widths
    were spoiled (x4) gets them back near the training run's own validation values; the
    weights are untouched and the card records the calibration's data and command."""
    import json
    import shutil

    from skysub.cli import main
    from skysub.nn.modelfile import load_model

    path, card, _cfg = trained
    model = tmp_path / "m.pt"
    shutil.copy(path, model)
    shutil.copy(path.with_suffix(".json"), model.with_suffix(".json"))
    c = json.loads(model.with_suffix(".json").read_text())
    good = dict(c["inputs"]["sigma_scale"])
    c["inputs"]["sigma_scale"] = {k: 4 * v for k, v in good.items()}
    model.with_suffix(".json").write_text(json.dumps(c))
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('base = "paus"\n[simulate]\nshape = [192, 256]\nn_galaxies = 150\n'
                   'n_faint = 100\n')
    assert main(["train", "lumos", "--calibrate-only", "--simulated", "--config", str(cfg),
                 "--n-exposures", "6", "--stamps-per-image", "150", "--seed", "11",
                 "--output", str(model), "-q"]) == 0
    net0, _ = load_model(path, kind="lumos")
    net1, c1 = load_model(model, kind="lumos")
    for (k0, v0), (k1, v1) in zip(net0.state_dict().items(), net1.state_dict().items(),
                                  strict=True):
        assert k0 == k1 and torch.equal(v0, v1)
    new = c1["inputs"]["sigma_scale"]
    assert set(new) == {"mag", "no_mag"}
    for k in new:
        assert new[k] == pytest.approx(good[k], rel=0.35)
    cal = c1["calibration"]
    assert "--calibrate-only" in cal["command"] and cal["data"]["seed"] == 11
    assert cal["data"]["n_catalogue_like"] + cal["data"]["n_prior_free"] > 500


def test_shipped_model_measures_the_simulators_own_galaxies(tmp_path):
    """`skysub simulate ccd` then `skysub photometry -p lumos --mag-offset -2` with the shipped
    model: the simulator's catalogued galaxies (zero point 25; the model's band system has 23)
    come back unbiased in both modes.  Without the offset the magnitude prior reads every
    galaxy 2 mag too faint (``python -m benchmarks.bench_lumos`` prints both)."""
    from skysub.cli import main

    sim = tmp_path / "sim"
    assert main(["simulate", "ccd", "--config", "paus", "-o", str(sim), "--n-exposures", "1",
                 "--seed", "11", "-q"]) == 0
    img = sorted((sim / "images").glob("*.fits"))[0]
    truth = Table.read(sim / "truth.csv")
    truth = truth[(truth["kind"] == "galaxy") & (truth["edge_distance"] > 30)]
    for extra in ([], ["--no-mag"]):
        out = tmp_path / f"phot{len(extra)}.csv"
        assert main(["photometry", str(img), "-c", str(sim / "catalog.csv"), "-p", "lumos",
                     "--mag-offset", "-2", *extra, "-o", str(out), "-q"]) == 0
        t = Table.read(out)
        f = dict(zip(np.asarray(t["id"]).tolist(), np.asarray(t["flux"], float), strict=True))
        got = np.array([f.get(i, np.nan) for i in np.asarray(truth["id"]).tolist()])
        err = got / np.asarray(truth["flux_true"], float) - 1.0
        assert len(err) > 100
        assert abs(np.nanmedian(err)) < 0.04, (extra, np.nanmedian(err))
    with pytest.raises(SystemExit):
        main(["photometry", str(img), "-c", str(sim / "catalog.csv"), "-p", "lumos",
              "--mag-offset", "two", "-o", str(tmp_path / "x.csv"), "-q"])
    from skysub.errors import InputError

    for bad in ("two", np.nan):
        with pytest.raises(InputError, match="mag_offset"):
            LumosPhotometer(mag_offset=bad)


def test_validation_features_without_the_magnitude_are_the_data_only_inputs():
    """training_tensors' ``feats_nomag`` (the data-only mode's validation inputs) are the rows'
    features with the magnitude hidden -- what a data-only row gets -- and, for stamps with an
    injected neighbour, they differ from the with-magnitude features (the joint-fit deblend
    instead of the catalogue ratio)."""
    from skysub.background.bkgnet import _galaxy_pool, simulated_exposures
    from skysub.photometry.lumos import training_tensors
    from skysub.simulate.galaxies import simulate_galaxy_stamps

    sim_cfg = {"shape": [192, 256], "n_galaxies": 150, "n_faint": 50}
    exps, fieldcat = simulated_exposures(1, config=sim_cfg, seed=4)
    image, cat_xy, _bg, _t = exps[0]
    gs = GalaxySimSettings(blend_fraction=0.5, prior_free_fraction=0.0)
    sim = simulate_galaxy_stamps([(image, cat_xy)], 40, gs, seed=5,
                                 galaxies=_galaxy_pool(fieldcat, np.random.default_rng(0)))
    kw = {"neighbours": True, "joint": False, "ratio": True, "deblend": True}
    t = training_tensors(sim, [], **kw)
    hidden = training_tensors(sim, [], hidden_mag=np.ones(len(sim["mag"]), bool), **kw)
    assert torch.equal(t["feats_nomag"], hidden["feats"])
    blended = np.isfinite(sim["blend_r"])
    assert blended.sum() >= 5 and (~blended).sum() >= 5
    diff = (t["feats_nomag"] != t["feats"]).any(1).numpy()
    assert diff[blended].all()
