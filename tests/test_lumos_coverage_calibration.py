"""The per-SNR calibration's two scores against simulations of known truth: mixtures whose
true errors are Gaussian of a known width, and errors with heavy tails (a few outliers, as
the injections into real frames have), where the likelihood fit widens the core."""

import numpy as np
import pytest

from skysub.errors import InputError
from skysub.photometry.lumos import fit_snr_calibration
from skysub.photometry.lumos.calibration import _calibrated
from skysub.stats import sigma68


def _mixtures(n, rng):
    m0 = np.exp(rng.uniform(np.log(20.0), np.log(500.0), n))  # PDF centres (flux units)
    s0 = np.sqrt(m0 + 25.0)  # PDF widths: photon + sky noise
    a = np.tile([0.6, 0.4], (n, 1))
    m = np.column_stack([m0, m0])
    s = np.column_stack([s0, s0 * 1.000001])
    return a, m, s, m0, s0


def _pull68(cal, a, m, s, y):
    from skysub.photometry.lumos.mixtures import mixture_summary

    a2, m2, s2 = _calibrated(a, m, s, cal, None)
    summ = mixture_summary(a2, m2, s2, lower=None)
    return float(sigma68((summ["flux_median"] - y) / summ["flux_sigma68"]))


def test_coverage_recovers_a_known_gaussian_width():
    rng = np.random.default_rng(1)
    a, m, s, m0, s0 = _mixtures(1500, rng)
    y = m0 + 1.3 * s0 * rng.normal(size=m0.size)  # truths 1.3x wider than the PDFs
    for score in ("log", "coverage"):
        cal = fit_snr_calibration(a, m, s, y, truncated=False, n_bins=2, min_per_bin=300,
                                  score=score)
        assert np.allclose(np.exp(cal.log_scale), 1.3, atol=0.1), (score, cal)
        assert 0.93 < _pull68(cal, a, m, s, y) < 1.07


def test_coverage_keeps_the_core_honest_with_outliers():
    rng = np.random.default_rng(2)
    a, m, s, m0, s0 = _mixtures(2000, rng)
    out = rng.random(m0.size) < 0.1  # 10 % outliers with 4x the width
    y = m0 + s0 * rng.normal(size=m0.size) * np.where(out, 4.0, 1.0)
    log = fit_snr_calibration(a, m, s, y, truncated=False, n_bins=2, min_per_bin=300)
    cov = fit_snr_calibration(a, m, s, y, truncated=False, n_bins=2, min_per_bin=300,
                              score="coverage")
    assert _pull68(log, a, m, s, y) < 0.85  # the likelihood widens the core for the tails
    assert 0.92 < _pull68(cov, a, m, s, y) < 1.08


def test_unknown_score_is_an_error():
    rng = np.random.default_rng(3)
    a, m, s, m0, s0 = _mixtures(50, rng)
    with pytest.raises(InputError, match="score"):
        fit_snr_calibration(a, m, s, m0, truncated=False, score="crps")


def test_quality_judges_the_kept_calibration():
    """A model whose PDF widths come from injections is judged (PIT) on the injection check
    half under those widths: the validation stamps' miscalibrated widths, which the card no
    longer uses, do not fail it, and a bad check half does."""
    from skysub.photometry.lumos.training import model_quality

    metrics = {"bright": {"bias_mode": 0.004}, "sigma68_mode_all": 0.08, "pit_ks_pvalue": 0.0}
    assert not model_quality(metrics)["ok"]
    good = model_quality(metrics, check={"pit_ks_pvalue": 0.4})
    assert good["ok"] and not good["reasons"]
    bad = model_quality(metrics, check={"pit_ks_pvalue": 1e-5})
    assert not bad["ok"] and "injection check half" in bad["reasons"][0]



def test_shrinkage_towards_global_fit_is_nearer_a_known_width_on_small_bins():
    """Known width error 1.3 at every SNR, 6 bins of 60 rows each: the per-bin coverage fit
    is noisy; shrunk towards the global fit its widths sit nearer 1.3 (mean over 4 draws), and
    on a large check sample its pull width is nearer 1 than the per-bin fit's."""
    kw = {"truncated": False, "n_bins": 6, "min_per_bin": 50, "score": "coverage"}
    err, dev = np.zeros(2), np.zeros(2)
    for seed in range(1, 5):
        rng = np.random.default_rng(seed)
        a, m, s, m0, s0 = _mixtures(3360, rng)
        y = m0 + 1.3 * s0 * rng.normal(size=m0.size)
        fit, chk = slice(0, 360), slice(360, None)
        for k, sn in enumerate((0.0, 300.0)):
            cal = fit_snr_calibration(a[fit], m[fit], s[fit], y[fit], shrink_n=sn, **kw)
            assert len(cal.log_scale) == 6
            err[k] += np.mean(np.abs(np.exp(cal.log_scale) - 1.3)) / 4
            dev[k] += abs(_pull68(cal, a[chk], m[chk], s[chk], y[chk]) - 1.0) / 4
    assert err[1] < 0.6 * err[0], err
    assert err[1] < 0.05, err
    assert dev[1] < dev[0] and dev[1] < 0.05, dev
    with pytest.raises(InputError, match="shrink_n"):
        fit_snr_calibration(a, m, s, y, shrink_n=-1.0)
