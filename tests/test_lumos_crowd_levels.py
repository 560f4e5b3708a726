"""Lumos' injection calibration by crowding level (calibration.crowd_edges), on simulated
mixtures of known width: a crowded frame whose errors grow with the crowding."""

from __future__ import annotations

import numpy as np
import pytest

from skysub.photometry.lumos.calibration import (
    SNRCalibration,
    _calibrated,
    crowd_edges,
    fit_snr_calibration,
)
from skysub.photometry.lumos.mixtures import mixture_summary
from skysub.stats import sigma68


def _frame(n: int, rng):
    """Rows of a crowded frame: 25 % isolated (c < 0.05), 75 % crowded (c log-uniform
    0.05-5); the network's PDFs (one Gaussian of width ``s``) are too narrow by ``w(c) = 0.8 +
    0.5 log(1 + c)`` (0.82 at c = 0.05, 1.70 at c = 5): the truth is ``y``, the network's mean
    ``y + w(c) s eps``."""
    iso = rng.random(n) < 0.25
    c = np.where(iso, rng.uniform(0.0, 0.05, n), np.exp(rng.uniform(np.log(0.05), np.log(5), n)))
    snr = np.exp(rng.uniform(np.log(5.0), np.log(100.0), n))
    s = np.full(n, 1.0)
    y = snr * s
    w = 0.8 + 0.5 * np.log1p(c)
    m = y + w * s * rng.normal(size=n)
    a = np.column_stack([np.ones(n), np.zeros(n)])
    return a, np.column_stack([m, m]), np.column_stack([s, s]), y, c


def _pulls(cal, a, m, s, y, c, groups):
    a2, m2, s2 = _calibrated(a, m, s, cal, None, c)
    summ = mixture_summary(a2, m2, s2, lower=0.0)
    pull = (summ["flux_mode"] - y) / summ["flux_sigma68"]
    return [float(sigma68(pull[g])) for g in groups]


def test_crowding_levels_recover_a_width_that_grows_with_crowding():
    """1,200 calibration rows (the default injection target), 6,000 check rows, four seeded
    draws: the pull width per crowding group (isolated, terciles of the crowded) of the check
    rows, with one crowded calibration (the rule before levels) and with three levels."""
    kw = {"truncated": True, "n_bins": 6, "min_per_bin": 150, "score": "coverage"}
    p_old, p_new = [], []
    for seed in (1, 2, 3, 4):
        rng = np.random.default_rng(seed)
        fit_rows = _frame(1200, rng)
        check = _frame(6000, rng)
        c = check[-1]
        crowd = c > 0.05
        q = np.quantile(c[crowd], [1 / 3, 2 / 3])
        groups = [~crowd, crowd & (c <= q[0]), crowd & (c > q[0]) & (c <= q[1]), c > q[1]]
        old = fit_snr_calibration(*fit_rows[:4], c=fit_rows[4], crowd_levels=1, **kw)
        new = fit_snr_calibration(*fit_rows[:4], c=fit_rows[4], crowd_levels=3, **kw)
        p_old.append(_pulls(old, *check, groups))
        p_new.append(_pulls(new, *check, groups))
        depth, cal = 0, new  # the least crowded level and two or three above, each its own
        while cal.crowded is not None:
            depth, cal = depth + 1, cal.crowded
        assert depth >= 2  # 1,200 rows: 300 per level at least
    m_old, m_new = np.mean(p_old, axis=0), np.mean(p_new, axis=0)
    # one crowded calibration: too wide for the least crowded, too narrow for the most
    assert m_old[1] < 0.9 and m_old[3] > 1.2, p_old
    # three crowded levels: every group's pull width near 1, in the mean and in every draw
    assert np.all((m_new >= 0.92) & (m_new <= 1.08)), p_new
    assert np.all((np.asarray(p_new) >= 0.85) & (np.asarray(p_new) <= 1.2)), p_new


def test_crowd_edges_need_enough_rows_per_level():
    c = np.r_[np.full(400, 0.01), np.linspace(0.1, 2.0, 1000)]
    assert crowd_edges(c, min_rows=600) == ()  # 400 isolated rows: no split
    assert crowd_edges(c, min_rows=300, levels=1) == (0.05,)
    e = crowd_edges(c, min_rows=300, levels=3)
    assert len(e) == 3 and e[0] == 0.05 and 0.1 < e[1] < e[2] < 2.0
    assert len(crowd_edges(c, min_rows=400, levels=5)) == 2  # 1000 // 400 = 2 crowded levels
    # a crowded frame, 400 isolated rows of 600 needed: the least crowded level takes 200
    # crowded rows too, and the 800 above it make one more level
    e = crowd_edges(c, min_rows=600, levels=3)
    assert len(e) == 1 and np.sum(c <= e[0]) == 600
    assert crowd_edges(c, min_rows=600, levels=1) == ()  # the rule before levels: no split


def test_forced_edges_give_a_half_fit_the_structure_of_the_full_fit():
    rng = np.random.default_rng(5)
    a, m, s, y, c = _frame(1300, rng)
    kw = {"truncated": True, "n_bins": 6, "score": "coverage"}
    full = fit_snr_calibration(a, m, s, y, c=c, min_per_bin=150, crowd_levels=3, **kw)
    half = slice(0, 650)
    own = fit_snr_calibration(a[half], m[half], s[half], y[half], c=c[half], min_per_bin=150,
                              crowd_levels=3, **kw)
    forced = fit_snr_calibration(a[half], m[half], s[half], y[half], c=c[half], min_per_bin=150,
                                 crowd_levels=3, like=full, **kw)

    def shape(cal):
        out = []
        while cal is not None:
            out.append((len(cal.shift), cal.crowd_c if cal.crowded is not None else None))
            cal = cal.crowded
        return out

    assert shape(forced) == shape(full)
    assert shape(own) != shape(full)  # half the rows alone choose fewer levels


def test_level_chain_round_trips_through_the_card():
    rng = np.random.default_rng(7)
    a, m, s, y, c = _frame(1500, rng)
    cal = fit_snr_calibration(a, m, s, y, c=c, min_per_bin=150, crowd_levels=3,
                              score="coverage")
    back = SNRCalibration.from_dict(cal.as_dict())
    for u, v in zip(cal.apply(a, m, s, c), back.apply(a, m, s, c), strict=True):
        assert np.allclose(u, v, rtol=1e-4, atol=1e-6)
    # unknown crowding: the isolated level's calibration for every row
    iso_only = SNRCalibration(cal.asinh_snr, cal.log_scale, cal.shift)
    for u, v in zip(cal.apply(a, m, s, None), iso_only.apply(a, m, s), strict=True):
        assert np.allclose(u, v)
    assert cal.crowded is not None and cal.crowded.crowded is not None


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
