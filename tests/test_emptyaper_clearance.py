"""Clearance-matched empty-aperture calibration (``error_calibration="matched"``,
skysub.photometry.emptyaper.clearance_weights) and the weighted statistics it uses, against
cases whose truth is known: an analytic noise that falls with the distance to the nearest
catalogued source, white noise, and simulated frames whose catalogued stars' wings reach into
the annuli of the positions around them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.stats import biweight_scale
from scipy.spatial import cKDTree

from skysub.background.annulus import AnnulusBackground
from skysub.errors import InputError
from skysub.image import Image
from skysub.photometry import AperturePhotometer, OptimalPhotometer
from skysub.photometry.emptyaper import CALIBRATIONS, calibrate, clearance_weights
from skysub.simulate.psf import gaussian_psf
from skysub.stats import bootstrap_se, sigma68, weighted_biweight_scale, weighted_median

sys.path.insert(0, str(Path(__file__).parent))


def test_weighted_statistics_reduce_to_the_unweighted_ones():
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 8, 101, 1000):
        v = rng.standard_t(4, n)
        assert weighted_median(v, np.ones(n)) == pytest.approx(np.median(v), abs=1e-12)
        assert weighted_biweight_scale(v) == pytest.approx(biweight_scale(v, c=9.0), abs=1e-12)
    # integer weights are repeated values; a zero weight drops the value
    v = rng.normal(size=300) * np.r_[np.ones(150), 3 * np.ones(150)]
    w = np.r_[np.full(150, 2.0), np.ones(150)]
    assert weighted_biweight_scale(v, w) == pytest.approx(
        biweight_scale(np.r_[v[:150], v[:150], v[150:]], c=9.0), rel=1e-10)
    w0 = np.r_[np.ones(150), np.zeros(150)]
    assert weighted_biweight_scale(v, w0) == pytest.approx(biweight_scale(v[:150], c=9.0),
                                                           rel=1e-10)
    with pytest.raises(InputError, match="weights"):
        weighted_biweight_scale(v, -w)


def test_bootstrap_se_of_sigma68_matches_its_sampling_theory():
    """For n Gaussian values the standard error of sigma68 is 0.964 sigma / sqrt(n) (the
    asymptotic variance of the 16th and 84th percentiles and their covariance); the
    bootstrap agrees, and so does the spread over independent samples."""
    n = 400
    rng = np.random.default_rng(11)
    se = [bootstrap_se(rng.normal(0, 2.0, n), sigma68, seed=s) for s in range(8)]
    theory = 0.964 * 2.0 / np.sqrt(n)
    assert np.mean(se) == pytest.approx(theory, rel=0.2)
    spread = np.std([sigma68(rng.normal(0, 2.0, n)) for _ in range(300)])
    assert spread == pytest.approx(theory, rel=0.2)
    assert np.isnan(bootstrap_se([1.0], sigma68))


def test_bootstrap_se_is_reproducible():
    v = np.random.default_rng(0).normal(size=200)
    assert bootstrap_se(v, sigma68, seed=4) == bootstrap_se(v, sigma68, seed=4)
    assert bootstrap_se(v, sigma68, seed=4) != bootstrap_se(v, sigma68, seed=5)


# -- an analytic case: the noise of a position falls with its distance d to the nearest
# catalogued source, s^2(d) = 1 + 8 exp(-(d - 9.5) / 3), and the white-noise model predicts 1

SHAPE = (400, 400)


def _s2(d):
    return 1.0 + 8.0 * np.exp(-(np.asarray(d, float) - 9.5) / 3.0)


def _catalogue(seed=0):
    """A 6 x 6 grid (60 px) of catalogued sources: 18 isolated ones (nearest neighbour ~ 55-60
    px) first, then 18 close pairs (12 px apart) on the other grid points."""
    rng = np.random.default_rng([seed, 7])
    g = np.arange(40.0, 380.0, 60.0)
    gx, gy = (v.ravel() + rng.uniform(-2, 2, v.size) for v in np.meshgrid(g, g))
    order = rng.permutation(gx.size)
    iso, pair = order[:18], order[18:]
    phi = rng.uniform(0, np.pi, pair.size)
    x = np.r_[gx[iso], gx[pair] - 6 * np.cos(phi), gx[pair] + 6 * np.cos(phi)]
    y = np.r_[gy[iso], gy[pair] - 6 * np.sin(phi), gy[pair] + 6 * np.sin(phi)]
    return x, y


def _calibrate(avoid, target, seed):
    tree = cKDTree(np.c_[avoid])
    rng = np.random.default_rng([seed, 99])

    def probe(k, x, y):
        d, _ = tree.query(np.c_[x, y])
        return {"flux": rng.normal(0.0, np.sqrt(_s2(d))), "var_white": np.ones(x.size),
                "n_aper": np.full(x.size, 20.0), "flags": np.zeros(x.size, np.int32)}

    return calibrate(probe, 1, SHAPE, np.zeros(SHAPE, bool), avoid, 9.5, seed=seed,
                     local=False, target_xy=target)


def _truth(avoid, target):
    """The biweight variance of the fluxes at the target sources had they no light: the
    mixture of their s^2(d), sampled exactly (200 draws per source)."""
    t = cKDTree(np.c_[avoid])
    d, _ = t.query(np.c_[target], k=2)
    d = np.where(d[:, 0] > 0.5, d[:, 0], d[:, 1])
    rng = np.random.default_rng(1)
    v = rng.normal(0.0, 1.0, (200, d.size)) * np.sqrt(_s2(d))
    return biweight_scale(v.ravel(), c=9.0) ** 2


@pytest.mark.parametrize("who", ["isolated", "pairs"])
def test_matched_calibration_follows_the_measured_sources_clearance(who):
    """The calibrated variance factor alpha against the known spread at the sources: with the
    weights it matches the sources, isolated (d ~ 55-60 px: truth ~ 1) or in close pairs
    (d = 12 px: truth ~ 4.5); the unweighted empty positions (the old rule) give their own
    mixture whatever the sources, wrong for both."""
    ratio_new, ratio_old = [], []
    for seed in range(3):
        ax, ay = _catalogue(seed)
        sel = np.arange(18) if who == "isolated" else np.arange(18, 54)
        target = (ax[sel], ay[sel])
        truth = _truth((ax, ay), target)
        new = _calibrate((ax, ay), target, seed)
        old = _calibrate((ax, ay), None, seed)
        assert new.match is not None and old.match is None
        assert new.as_dict()["clearance_match"]["n_sources"] == sel.size
        ratio_new.append(new.alpha / truth)
        ratio_old.append(old.alpha / truth)
    # (about 150 effective positions: each alpha carries ~ 12 % of sampling noise)
    assert abs(np.mean(ratio_new) - 1) < 0.1 and all(abs(r - 1) < 0.3 for r in ratio_new), \
        ratio_new
    assert all(abs(r - 1) > 0.35 for r in ratio_old), ratio_old


def test_weights_give_the_empty_positions_the_sources_distances():
    """Nearest-neighbour matching: weighted, the empty positions stand where the sources
    stand -- the pairs' members (12 px from their neighbour) by positions 9.5-15 px from a
    source, the isolated sources (55-60 px) by the farthest positions -- but for the
    pseudo-sources' share; with two sources the pseudo-sources keep most positions in use."""
    ax, ay = _catalogue(0)
    rng = np.random.default_rng(2)
    x, y = rng.uniform(10, 390, 900), rng.uniform(10, 390, 900)
    de = cKDTree(np.c_[ax, ay]).query(np.c_[x, y])[0]
    x, y, de = x[de > 9.5], y[de > 9.5], de[de > 9.5]
    for sel, near, lo, hi in ((np.arange(18, 54), de < 15.0, 11.0, 13.5),
                              (np.arange(18), de > 30.0, 30.0, np.inf)):
        w, rec = clearance_weights(x, y, (ax[sel], ay[sel]), (ax, ay))
        assert w.shape == x.shape and np.all(w > 0) and w.mean() == pytest.approx(1.0)
        assert rec["n_sources"] == sel.size and rec["k"] == round(x.size / 8)
        assert near.mean() < 0.3  # unweighted: a minority of the positions
        assert np.sum(w[near]) / np.sum(w) > 0.8
        assert lo < weighted_median(de, w) < hi
    w2, rec2 = clearance_weights(x, y, (ax[:2], ay[:2]), (ax, ay))
    assert rec2["n_eff"] > 0.3 * x.size
    assert clearance_weights(x, y, (ax, ay), ([], []))[0] is None
    assert clearance_weights(x[:50], y[:50], (ax, ay), (ax, ay))[0] is None


@pytest.mark.parametrize("which", [0, 1])
def test_matched_on_white_noise_gives_unit_factors(which):
    """White noise, a flat sky and 40 catalogued positions: the matched calibration keeps
    alpha ~ 1 and sigma_s ~ 0 (as the default does) and the errors within a few per cent of
    the white-noise ones."""
    rng = np.random.default_rng(8)
    x, y = rng.uniform(20, 380, 40), rng.uniform(20, 380, 40)
    alphas, ratios, sig_s = [], [], []
    for seed in range(4):
        r0 = np.random.default_rng(seed)
        img = Image(data=200.0 + r0.normal(0.0, 4.0, (400, 400)), mask=None)
        bg = AnnulusBackground(10, 20)
        phots = {c: (AperturePhotometer(5.0, background=bg, error_calibration=c),
                     OptimalPhotometer(gaussian_psf(19, 3.0), background=bg,
                                       error_calibration=c))[which]
                 for c in ("matched", "none")}
        r = phots["matched"].measure(img, x, y)
        c = r.meta["error_calibration"]
        assert c["status"] == "calibrated" and c["clearance_match"]["n_sources"] == 40
        alphas.append(c["alpha"])
        sig_s.append(c["sigma_s"])
        ratios.append(np.asarray(r.flux_err) / np.asarray(phots["none"].measure(img, x,
                                                                                 y).flux_err))
    # the bounds of tests/test_emptyaper.py's white-noise test (the default: 0.92-1.16 here)
    assert 0.95 < np.mean(alphas) < 1.1 and all(0.88 < a < 1.16 for a in alphas), alphas
    assert np.mean(sig_s) < 0.08, sig_s  # against the annulus' own error ~ 0.16
    assert 0.95 < np.median(np.concatenate(ratios)) < 1.08


def test_default_is_not_matched():
    """``matched`` is opt-in: the default calibration weights nothing and records no match."""
    assert "matched" in CALIBRATIONS and CALIBRATIONS[0] == "auto"
    rng = np.random.default_rng(4)
    img = Image(data=200.0 + rng.normal(0.0, 4.0, (300, 300)), mask=None)
    x, y = rng.uniform(20, 280, 30), rng.uniform(20, 280, 30)
    r = AperturePhotometer(5.0, background=AnnulusBackground(10, 20)).measure(img, x, y)
    c = r.meta["error_calibration"]
    assert c["status"] == "calibrated" and c["clearance_match"] is None
    r2 = AperturePhotometer(5.0, background=AnnulusBackground(10, 20),
                            error_calibration="matched").measure(img, x, y)
    assert r2.meta["error_calibration"]["clearance_match"]["n_sources"] == 30


def test_isolated_faint_stars_get_honest_errors_with_matched_weights():
    """The simulated frames of tests/test_emptyaper_neighbours.py (white noise, 40 catalogued
    bright Moffat stars whose wings reach the annuli around them), faint stars injected 20 px
    from every source: the default calibration gives them errors too large (pull sigma68 <
    0.87, asserted there: 0.80); weighted to the measured sources' distances (here nearly all
    of them 20 px or more from their nearest neighbour) they are honest (0.94 / 0.95)."""
    import test_emptyaper_neighbours as T

    inj, null = T._faint_pulls(20.0, mode="matched")
    assert inj.size > 150
    assert 0.9 <= sigma68(inj) <= 1.1, sigma68(inj)
    assert 0.9 <= sigma68(null) <= 1.1, sigma68(null)
