"""Lumos' injection calibration by crowding level (calibration.crowd_edges), on simulated
mixtures of known width: a crowded frame whose errors grow with the crowding; and where the
calibration galaxies go (injection.draw_matched_positions): with the catalogue's own
nearest-neighbour distances, on a simulated crowded frame."""

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


# -- the calibration's positions on a simulated crowded frame ------------------------------------

SIGMA_EFF = 3.0  # px: the matched-filter overlap of two neighbours, exp(-d^2 / (4 SIGMA_EFF^2))


def _crowded_frame(seed: int = 3):
    """A simulated 420 x 420 CCD exposure (``skysub.simulate``) with about 550 catalogued
    sources, 60 % of them with a neighbour within 15 px: the image and its catalogue."""
    from skysub.simulate import CCDSimConfig, simulate_exposure, simulate_field

    cfg = CCDSimConfig(shape=(420, 420), n_galaxies=3000, n_stars=200, n_faint=0,
                       cosmic_rays=0, hot_pixels=0)
    im, truth, _ = simulate_exposure(cfg, simulate_field(cfg, seed=seed), band=cfg.bands[0],
                                     epoch=cfg.epochs[0], seed=seed + 1)
    return im, truth


def _crowding(x, y, f, cx, cy, cf):
    """``c``: the neighbours' flux in the target's matched filter over the target's own
    (Gaussian profiles of width SIGMA_EFF), from the catalogue ``cx, cy, cf``; the target
    itself (distance < 0.5 px) excluded."""
    d2 = (x[:, None] - cx[None]) ** 2 + (y[:, None] - cy[None]) ** 2
    k = np.where(d2 > 0.25, np.exp(-d2 / (4 * SIGMA_EFF ** 2)), 0.0)
    return (k * cf[None]).sum(1) / f


def _mock_network(f, c, unit, rng, d=None):
    """The network's PDFs (one Gaussian, normalised units) of targets of true flux ``f`` and
    crowding ``c``: too narrow by ``0.8 + 0.5 log(1 + c)`` and biased high by ``0.5 log(1 +
    c)`` widths (neighbour light the catalogue model does not take away), both saturating at
    ``c = 3`` (a neighbour three times the target's light in its filter: x 1.49 and + 0.69).
    With the nearest-neighbour distances ``d`` [px]: targets nearer than 15 px err 1.4 times
    wider and 0.6 widths higher on top, whatever their ``c`` (a neighbour whose catalogue flux,
    and so ``c``, is wrong)."""
    y = f / unit
    s = np.ones_like(y)
    g = np.log1p(np.minimum(c, 3.0))
    near = np.zeros(y.size) if d is None else (np.asarray(d, float) < 15.0).astype(float)
    m = y + s * (0.5 * g + 0.6 * near + (0.8 + 0.5 * g) * (1 + 0.4 * near)
                 * rng.normal(size=y.size))
    a = np.column_stack([np.ones_like(y), np.zeros_like(y)])
    return a, np.column_stack([m, m]), np.column_stack([s, s]), y


def _calibration_rows(im, truth, matched: bool, unit: float, n_rows: int, seed: int):
    """``n_rows`` injections (SNR 5-500 log-uniform in units of ``unit``) at the positions the
    injection calibration draws (``matched``: the catalogue's own nearest-neighbour distances;
    else 15 px from every source, the rule before), with their crowding."""
    from skysub.inject.core import InjectionSettings, draw_positions
    from skysub.photometry.lumos.injection import draw_matched_positions

    st = InjectionSettings(kind="galaxy", n_per_image=40, radius=8.0, min_separation=15.0)
    cx, cy, cf = (np.asarray(truth[k], float) for k in ("x", "y", "flux_true"))
    rows, r = [], 0
    while sum(len(v[0]) for v in rows) < n_rows and r < 200:
        rng = np.random.default_rng([seed, r])
        x, y = (draw_matched_positions if matched else draw_positions)(im, (cx, cy), 40, st,
                                                                      rng)
        f = unit * np.exp(rng.uniform(np.log(5.0), np.log(500.0), x.size))
        rows.append((f, _crowding(x, y, f, cx, cy, cf), np.hypot(*_nn_offsets(x, y, cx, cy))))
        r += 1
    f, c, d = (np.concatenate([v[i] for v in rows])[:n_rows] for i in range(3))
    return f, c, d


def _nn_offsets(x, y, cx, cy):
    from scipy.spatial import cKDTree

    _, j = cKDTree(np.column_stack([cx, cy])).query(np.column_stack([x, y]))
    return x - cx[j], y - cy[j]


def test_matched_positions_follow_the_catalogues_neighbour_distances():
    """On a simulated crowded frame the calibration positions' nearest catalogued source is as
    near as the catalogue sources' own nearest neighbours (two-sample KS), never nearer than
    the floor, reproducibly from the seed; the rule before put none within 15 px."""
    from scipy.spatial import cKDTree
    from scipy.stats import ks_2samp

    from skysub.inject.core import InjectionSettings, draw_positions
    from skysub.photometry.lumos.injection import (
        FAR_SHARE,
        PLACEMENT_FLOOR,
        draw_matched_positions,
    )

    im, truth = _crowded_frame()
    cx, cy = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    tree = cKDTree(np.column_stack([cx, cy]))
    own = np.maximum(tree.query(np.column_stack([cx, cy]), k=2)[0][:, 1], PLACEMENT_FLOOR)
    assert len(truth) > 200 and np.mean(own < 15) > 0.5  # a crowded frame
    st = InjectionSettings(kind="galaxy", n_per_image=40, radius=8.0, min_separation=15.0)
    xs, ys, old = [], [], []
    for r in range(12):  # far_share=0: the catalogue's distances alone
        x, y = draw_matched_positions(im, (cx, cy), 40, st, np.random.default_rng(r),
                                      far_share=0.0)
        assert x.size == 40
        xs.append(x)
        ys.append(y)
        old.append(tree.query(np.column_stack(draw_positions(im, (cx, cy), 40, st,
                                                             np.random.default_rng(r))))[0])
    x, y = np.concatenate(xs), np.concatenate(ys)
    d = tree.query(np.column_stack([x, y]))[0]
    assert d.min() >= PLACEMENT_FLOOR
    # the catalogue's pairs closer than the floor count at the floor, the positions fill its
    # first distance bin (5-5.8 px) evenly: compared above 6 px
    assert ks_2samp(np.maximum(d, 6.0), np.maximum(own, 6.0)).pvalue > 0.01, (
        np.percentile(d, [10, 50, 90]), np.percentile(own, [10, 50, 90]))
    assert abs(np.mean(d < 15) - np.mean(own < 15)) < 0.08
    assert np.concatenate(old).min() >= 15.0  # the rule before: no near neighbour
    # each kept position's nearest source is the catalogued one: injections keep apart
    for xr, yr in zip(xs, ys, strict=True):
        dr = tree.query(np.column_stack([xr, yr]))[0]
        pair = np.hypot(xr[:, None] - xr[None], yr[:, None] - yr[None]) + np.eye(xr.size) * 1e9
        assert np.all(pair.min(1) >= dr - 1e-9)
    again = draw_matched_positions(im, (cx, cy), 40, st, np.random.default_rng(0),
                                   far_share=0.0)
    assert np.array_equal(again[0], xs[0]) and np.array_equal(again[1], ys[0])
    # the default: FAR_SHARE of the drawn distances 15 px or more (the catalogue has 2 %
    # there); the positions kept apart keep fewer far ones (30 %, 0.25 x 1,200 = 2 x
    # MIN_PER_BIN injections at least), each side still with the catalogue's distances
    dd = np.concatenate([tree.query(np.column_stack(draw_matched_positions(
        im, (cx, cy), 40, st, np.random.default_rng(r))))[0] for r in range(12)])
    assert FAR_SHARE >= np.mean(dd >= 15) >= 0.25 > np.mean(own >= 15) + 0.2, np.mean(dd >= 15)
    for side in (lambda v: v < 15, lambda v: v >= 15):
        assert ks_2samp(np.maximum(dd[side(dd)], 6.0),
                        np.maximum(own[side(own)], 6.0)).pvalue > 0.01


def test_placement_with_the_catalogues_neighbours_calibrates_the_users_crowded_sources():
    """Known truth on a simulated crowded frame: the user's own catalogued sources, measured
    by a mock network whose PDFs grow too narrow and biased with their neighbours' light.  A
    calibration fitted on 1,200 injections 15 px from every source (the rule before) sees
    almost no crowding and leaves the crowded sources' pull widths far above 1; fitted on
    1,200 injections with the catalogue's own neighbour distances it has crowding levels, and
    every level's pull width is 0.9-1.1 in the mean of two simulated frames.  The tolerance:
    the sigma68 of n normal values is known to 0.96 / sqrt(n); a level's calibration is fitted
    on ~300 injections (+-0.055) and read on 150-350 sources (x 8 noise draws, which share a
    source's crowding: +-0.05-0.08), so one frame's level is known to about +-0.07 and is
    asserted within 0.85-1.15 (~2 sigma), the mean of the two frames (+-0.05) within 0.9-1.1;
    before, the most crowded level read 1.72-1.78."""
    from skysub.photometry.lumos.injection import MIN_PER_BIN, _edges

    kw = {"truncated": True, "n_bins": 6, "min_per_bin": MIN_PER_BIN, "score": "coverage",
          "crowd_levels": 3}
    news = []
    for seed in (3, 11):
        im, truth = _crowded_frame(seed)
        cx, cy, cf = (np.asarray(truth[k], float) for k in ("x", "y", "flux_true"))
        unit = float(np.median(cf)) / 30.0
        rng = np.random.default_rng(seed)
        cals = {}
        for name, matched in (("old", False), ("new", True)):
            f, c, d = _calibration_rows(im, truth, matched, unit, 1200, seed)
            a, m, s, y = _mock_network(f, c, unit, rng)
            cals[name] = fit_snr_calibration(a, m, s, y, c=c, **kw)
            if not matched:
                assert np.mean(c > 0.05) < 0.15 and d.min() >= 15.0
        edges = _edges(cals["new"])
        assert len(edges) >= 2, edges  # the near-neighbour regime has crowding levels now
        # the user's sources: every catalogued one within SNR 5-500, 8 noise draws each
        keep = (cf / unit >= 5) & (cf / unit <= 500)
        src = np.flatnonzero(keep)
        c_src = _crowding(cx[src], cy[src], cf[src], cx, cy, cf)
        reps = np.repeat(np.arange(src.size), 8)
        a, m, s, y = _mock_network(cf[src][reps], c_src[reps], unit, rng)
        c_rows = c_src[reps]
        bounds = (-np.inf, *edges, np.inf)
        groups = [(c_rows > lo) & (c_rows <= hi) for lo, hi in zip(bounds[:-1], bounds[1:],
                                                                   strict=True)]
        groups = [g for g in groups if g.sum() >= 600]
        assert len(groups) >= 2
        old = _pulls(cals["old"], a, m, s, y, c_rows, groups)
        new = _pulls(cals["new"], a, m, s, y, c_rows, groups)
        print(seed, "pull68 per level, before", np.round(old, 3), "after", np.round(new, 3),
              "levels", edges, "rows", [int(g.sum()) for g in groups])
        assert max(old) > 1.2, (old, new)  # the crowded sources' errors too small before
        assert all(0.85 <= p <= 1.15 for p in new), (old, new, edges)
        news.append(new[:4])
        # and the neighbour-light bias is taken out by the levels' shifts: the median error in
        # widths per level within 0.3 (each shift is fitted on ~150 rows per SNR bin, +-0.1,
        # and read on ~150-300 sources, +-0.1), where the most crowded sources read > 0.4 high
        # before (the mock's bias there: 0.69)
        bias = {}
        for name, cal in cals.items():
            a2, m2, s2 = _calibrated(a, m, s, cal, None, c_rows)
            med = mixture_summary(a2, m2, s2, lower=0.0)["flux_median"]
            bias[name] = [float(np.median((med[g] - y[g]) / s2[g, 0])) for g in groups]
        print(seed, "median error [widths] per level, before", np.round(bias["old"], 3),
              "after", np.round(bias["new"], 3))
        assert bias["old"][-1] > 0.4, bias
        assert all(abs(b) < 0.3 for b in bias["new"]), bias
    # the levels' pull widths, mean of the two frames: 0.9-1.1
    mean = np.mean([v + [np.nan] * (4 - len(v)) for v in news], axis=0)
    assert np.all((mean[np.isfinite(mean)] >= 0.9) & (mean[np.isfinite(mean)] <= 1.1)), news


def test_distance_split_calibrates_isolated_and_near_sources_apart():
    """Known truth on a simulated crowded frame where, at the same crowding ``c``, sources
    nearer than 15 px to a neighbour err wider and higher than isolated ones (the mock network
    with the distance term).  Calibrated on 1,200 ``"catalogue"`` injections (30 % of them at
    15 px or more, ``FAR_SHARE``) by crowding levels alone, the least crowded level mixes both
    kinds and fits neither; split by the nearest-neighbour distance first, the isolated
    sources (the benchmark's >= 15 px galaxies: empty positions, 1,200 rows) and the frame's
    own sources beside a neighbour (8 noise draws each) both read pull widths 0.9-1.1 in the
    mean of two seeded frames (0.85-1.15 in each: the isolated side's calibration is fitted on
    ~340 injections in 2 SNR bins, +-0.07, and read on ~1,200-1,400 isolated rows, +-0.03)
    and median errors within 0.15 widths; by crowding alone the isolated ones read pull
    widths 0.86 and 0.11-0.29 widths low, their level's width and shift pulled by the near
    injections' extra width and bias."""
    from skysub.inject.core import InjectionSettings, draw_positions
    from skysub.photometry.lumos.calibration import nearest_distance
    from skysub.photometry.lumos.injection import MIN_PER_BIN

    kw = {"truncated": True, "n_bins": 6, "min_per_bin": MIN_PER_BIN, "score": "coverage",
          "crowd_levels": 3}
    st = InjectionSettings(kind="galaxy", n_per_image=40, radius=8.0, min_separation=15.0)
    means = []
    for seed in (3, 11):
        im, truth = _crowded_frame(seed)
        cx, cy, cf = (np.asarray(truth[k], float) for k in ("x", "y", "flux_true"))
        unit = float(np.median(cf)) / 30.0
        rng = np.random.default_rng(seed + 100)
        f, c, d = _calibration_rows(im, truth, True, unit, 1200, seed)
        assert 300 <= np.sum(d >= 15) <= 0.45 * 1200  # the isolated side fills
        a, m, s, y = _mock_network(f, c, unit, rng, d)
        by_c = fit_snr_calibration(a, m, s, y, c=c, **kw)
        split = fit_snr_calibration(a, m, s, y, c=c, d=d, **kw)
        assert split.near is not None and by_c.near is None
        # the isolated sources: empty positions (15 px from every source), fresh seeds
        xs, ys = zip(*(draw_positions(im, (cx, cy), 40, st, np.random.default_rng([seed, 99, r]))
                       for r in range(120)), strict=True)
        xi, yi = np.concatenate(xs), np.concatenate(ys)
        fi = unit * np.exp(rng.uniform(np.log(5.0), np.log(500.0), xi.size))
        ci = _crowding(xi, yi, fi, cx, cy, cf)
        di = np.hypot(*_nn_offsets(xi, yi, cx, cy))
        # the user's own sources beside a neighbour, SNR 5-500
        dn = nearest_distance(cx, cy)
        src = np.flatnonzero((cf / unit >= 5) & (cf / unit <= 500) & (dn < 15))
        reps = np.repeat(src, 8)
        cn = _crowding(cx[src], cy[src], cf[src], cx, cy, cf)[np.repeat(np.arange(src.size), 8)]
        rows = [np.r_[fi, cf[reps]], np.r_[ci, cn], np.r_[di, dn[reps]]]
        a, m, s, y = _mock_network(*rows[:2], unit, rng, rows[2])
        groups = [rows[2] >= 15, rows[2] < 15]
        res = {}
        for name, cal in (("by c", by_c), ("split", split)):
            a2, m2, s2 = _calibrated(a, m, s, cal, None, rows[1], rows[2])
            summ = mixture_summary(a2, m2, s2, lower=0.0)
            pull = (summ["flux_mode"] - y) / summ["flux_sigma68"]
            err = (summ["flux_median"] - y) / s2[:, 0]
            res[name] = [(round(float(sigma68(pull[g])), 3), round(float(np.median(err[g])), 3))
                         for g in groups]
        print(seed, "(pull68, median error [widths]) isolated / near:", res,
              "rows", [int(g.sum()) for g in groups])
        # by crowding alone the isolated sources are calibrated on near ones: too wide and
        # biased low
        assert res["by c"][0][0] < 0.9 and res["by c"][0][1] < -0.08, res
        for p68, med in res["split"]:
            assert 0.85 <= p68 <= 1.15 and abs(med) < 0.15, res
        means.append([p for p, _ in res["split"]])
    assert np.all((np.mean(means, axis=0) >= 0.9) & (np.mean(means, axis=0) <= 1.1)), means


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
