"""Lumos network, losses and point estimates against numerical integration and sampling."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from skysub.nn.lumos import (
    Lumos,
    LumosArch,
    build_from_arch,
    flops_per_stamp,
    fuse_for_inference,
    lumos_loss,
    mdn_nll,
    mdn_nll_truncated,
    mixture_log_pdf,
    pair_log_overlap,
)
from skysub.photometry.coadd import product_of_mixtures
from skysub.photometry.lumos import mixture_summary

A = np.array([[0.5, 0.2, 0.1, 0.15, 0.05]])
M = np.array([[1.0, -0.5, 3.0, 0.2, 6.0]])
S = np.array([[0.8, 1.0, 0.5, 2.0, 1.5]])


def t(a):
    return torch.tensor(a, dtype=torch.float64)


def test_truncated_pdf_integrates_to_one():
    """Eq. 10: each component renormalised over [0, inf) -> the density integrates to 1 there
    (scipy.integrate), and equals the hand-written truncated-normal mixture."""
    def pdf(f):
        return math.exp(float(mixture_log_pdf(t([f]), t(A), t(M), t(S), truncated=True)[0]))

    total, _ = integrate.quad(pdf, 0, np.inf, limit=200)
    assert total == pytest.approx(1.0, abs=1e-7)
    # against scipy's truncnorm
    f = 0.7
    ref = sum(A[0, i] * stats.truncnorm.pdf(f, -M[0, i] / S[0, i], np.inf, M[0, i], S[0, i])
              for i in range(5))
    assert pdf(f) == pytest.approx(ref, rel=1e-10)
    assert float(mixture_log_pdf(t([-0.1]), t(A), t(M), t(S), truncated=True)[0]) == -math.inf


def test_untruncated_nll_matches_scipy():
    y = np.array([0.3, 2.0])
    a, m, s = np.repeat(A, 2, 0), np.repeat(M, 2, 0), np.repeat(S, 2, 0)
    ref = -np.mean([np.log(sum(a[j, i] * stats.norm.pdf(y[j], m[j, i], s[j, i])
                               for i in range(5))) for j in range(2)])
    assert float(mdn_nll(t(a), t(m), t(s), t(y))) == pytest.approx(ref, rel=1e-12)
    # the mixed loss: eq. 8 for the bright row, eq. 10 for the faint one
    mag = t([19.0, 22.0])
    mixed = float(lumos_loss(t(a), t(m), t(s), t(y), mag, faint_mag=20.5))
    l8 = float(mixture_log_pdf(t(y), t(a), t(m), t(s))[0])
    l10 = float(mixture_log_pdf(t(y), t(a), t(m), t(s), truncated=True)[1])
    assert mixed == pytest.approx(-(l8 + l10) / 2, rel=1e-12)
    assert float(mdn_nll_truncated(t(a), t(m), t(s), t(y))) == pytest.approx(
        -float(mixture_log_pdf(t(y), t(a), t(m), t(s), truncated=True).mean()), rel=1e-12)


def test_pair_overlap_against_integration():
    """Eq. 11: closed-form log int_0^inf p1 p2 df against scipy.integrate."""
    a2 = np.array([[0.3, 0.3, 0.2, 0.1, 0.1]])
    m2 = np.array([[0.5, 2.0, -1.0, 4.0, 1.0]])
    s2 = np.array([[0.6, 1.2, 0.9, 0.7, 3.0]])

    def p(f, a, m, s):
        return math.exp(float(mixture_log_pdf(t([f]), t(a), t(m), t(s), truncated=True)[0]))

    num, _ = integrate.quad(lambda f: p(f, A, M, S) * p(f, a2, m2, s2), 0, np.inf, limit=200)
    got = float(pair_log_overlap(t(A), t(M), t(S), t(a2), t(m2), t(s2))[0])
    assert got == pytest.approx(math.log(num), abs=1e-7)


def test_point_estimates_against_samples():
    """mean, std, mode, median, sigma68, sigma95, eta of a truncated mixture vs 2e6 samples."""
    rng = np.random.default_rng(1)
    n = 2_000_000
    comp = rng.choice(5, n, p=A[0])
    lo = -M[0] / S[0]
    x = stats.truncnorm.rvs(lo[comp], np.inf, loc=M[0][comp], scale=S[0][comp],
                            random_state=rng)
    r = mixture_summary(A, M, S, lower=0.0)
    q = np.percentile(x, [2.5, 16, 50, 84, 97.5])
    assert r["flux_mean"][0] == pytest.approx(x.mean(), abs=3e-3)
    assert r["flux_std"][0] == pytest.approx(x.std(), abs=3e-3)
    assert r["flux_median"][0] == pytest.approx(q[2], abs=5e-3)
    assert r["flux_sigma68"][0] == pytest.approx((q[3] - q[1]) / 2, abs=5e-3)
    assert r["flux_sigma95"][0] == pytest.approx((q[4] - q[0]) / 2, abs=1e-2)
    assert r["eta"][0] == pytest.approx((q[4] - q[0]) / (q[3] - q[1]) - 1, abs=1e-2)
    fg = np.linspace(0, 8, 80001)  # mode: the density's argmax (scipy truncnorm) ...
    dens = sum(A[0, i] * stats.truncnorm.pdf(fg, lo[i], np.inf, M[0, i], S[0, i])
               for i in range(5))
    assert r["flux_mode"][0] == pytest.approx(fg[np.argmax(dens)], abs=2e-3)
    h, e = np.histogram(x, bins=np.linspace(0, 8, 81))  # ... and where the samples pile up
    assert abs(r["flux_mode"][0] - 0.5 * (e[:-1] + e[1:])[np.argmax(h)]) <= 0.1
    # untruncated: eq. 15-16 exactly
    u = mixture_summary(A, M, S, lower=None)
    mean = (A * M).sum()
    assert u["flux_mean"][0] == pytest.approx(mean, rel=1e-12)
    assert u["flux_std"][0] ** 2 == pytest.approx((A * (S**2 + (M - mean) ** 2)).sum(), rel=1e-12)
    # a single Gaussian: sigma68 = sigma, eta = 1.96 - 1
    g = mixture_summary([[1.0]], [[10.0]], [[2.0]], lower=None)
    assert g["flux_sigma68"][0] == pytest.approx(2.0 * stats.norm.ppf(0.84), rel=1e-6)
    assert g["flux_mode"][0] == pytest.approx(10.0, abs=1e-3)
    assert g["eta"][0] == pytest.approx(stats.norm.ppf(0.975) / stats.norm.ppf(0.84) - 1, 1e-5)


def test_product_of_gaussians_is_analytic():
    """Coadd of PDFs: the product of N(3, 1) and N(5, 2) is N(3.4, sqrt(0.8))."""
    res = product_of_mixtures([np.array([[1.0]]), np.array([[1.0]])],
                              [np.array([[3.0]]), np.array([[5.0]])],
                              [np.array([[1.0]]), np.array([[2.0]])], lower=None, n_grid=4001)
    assert res["flux_mean"][0] == pytest.approx(3.4, abs=2e-3)
    assert res["flux_std"][0] == pytest.approx(math.sqrt(0.8), abs=2e-3)
    assert res["flux_mode"][0] == pytest.approx(3.4, abs=5e-3)


def _batch(n=8, s=60, keys=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, s, s, generator=g), torch.randn(n, 3, generator=g) * 0.5,
            torch.rand(n, 2, generator=g) * 2 - 1, 20 + 2 * torch.rand(n, generator=g),
            torch.ones(n), torch.randint(0, keys, (n,), generator=g))


@pytest.mark.parametrize("preset", ["lean", "paper"])
def test_shapes_and_gradient_flow(preset):
    arch = LumosArch.from_preset(preset, n_keys=3)
    net = Lumos(arch)
    a, m, s = net(*_batch(4))
    assert a.shape == m.shape == s.shape == (4, 5)
    assert torch.allclose(a.sum(1), torch.ones(4), atol=1e-6) and (s > 0).all()
    loss = mdn_nll_truncated(a, m, s, torch.rand(4) * 3)
    loss.backward()
    for name, p in net.named_parameters():
        if name == "default_mag":
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if preset == "lean":
        assert flops_per_stamp(net) < 2e7


def test_tiny_overfit_and_save_load(tmp_path):
    from skysub.nn.modelfile import load_model, save_model

    torch.manual_seed(0)
    net = Lumos(LumosArch.from_preset("lean", n_keys=3))
    b = _batch(16)
    y = torch.rand(16) * 4 + 0.5
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        a, m, s = net(*b)
        loss = mdn_nll(a, m, s, y)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first - 1.0
    net.eval()
    save_model(tmp_path / "m.pt", net, {"kind": "lumos", "arch": net.arch.as_dict()})
    net2, card = load_model(tmp_path / "m.pt", kind="lumos")
    with torch.no_grad():
        out1, out2 = net(*b), net2(*b)
        fused = build_from_arch(card["arch"])
        fused.load_state_dict(net.state_dict())
        out3 = fuse_for_inference(fused)(*b)
    for u, v, w in zip(out1, out2, out3, strict=True):
        assert torch.allclose(u, v) and torch.allclose(u, w, atol=1e-4, rtol=1e-4)


def test_weighted_loss_is_the_weighted_mean_of_row_nlls():
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(6, 5, generator=g), 1)
    m = torch.randn(6, 5, generator=g) * 3
    s = torch.rand(6, 5, generator=g) + 0.5
    y = torch.randn(6, generator=g) * 2
    mag = torch.full((6,), 19.0)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0, 4.0])
    rows = torch.stack([mdn_nll(a[i:i + 1], m[i:i + 1], s[i:i + 1], y[i:i + 1])
                        for i in range(6)])
    got = lumos_loss(a, m, s, y, mag, weight=w)
    assert float(got) == pytest.approx(float((w * rows).sum() / w.sum()), rel=1e-6)


def test_divide_training_prior_moments_match_numerical_integration():
    """Each component N(mu, sigma) x (max(f, 0) + knee) is replaced by the Gaussian with its
    exact zeroth to second moments (checked by quadrature), weights renormalised."""
    from skysub.photometry.lumos import divide_training_prior

    rng = np.random.default_rng(0)
    a, m, s, k = rng.random((4, 5)), rng.normal(1, 3, (4, 5)), rng.uniform(0.3, 3, (4, 5)), 3.0
    A, M, S = divide_training_prior(a, m, s, k)
    f = np.linspace(-60, 80, 200001)
    g = (a[..., None] * np.exp(-0.5 * ((f - m[..., None]) / s[..., None]) ** 2)
         / (s[..., None] * np.sqrt(2 * np.pi)) * (np.maximum(f, 0) + k))
    e0, e1, e2 = (np.trapezoid(g * f ** p, f, axis=-1) for p in range(3))
    assert np.allclose(A, e0 / e0.sum(-1, keepdims=True), atol=1e-8)
    assert np.allclose(M, e1 / e0, atol=1e-7)
    assert np.allclose(S, np.sqrt(e2 / e0 - (e1 / e0) ** 2), atol=1e-7)


@pytest.mark.parametrize("f_hat", [-2.0, 1.0, 4.0, 20.0])
def test_divide_training_prior_recovers_the_likelihood(f_hat):
    """A posterior under p(f) ~ 1 / (max(f, 0) + knee), written as a fine mixture of narrow
    components, divided by that prior is the likelihood N(f_hat, 1.5): its mean and width come
    back (the posterior's mean sits 0.05-0.4 low of f_hat)."""
    from skysub.photometry.lumos import divide_training_prior, mixture_summary

    knee, sd = 3.0, 1.5
    grid = np.linspace(f_hat - 10 * sd, f_hat + 10 * sd, 801)
    post = np.exp(-0.5 * ((grid - f_hat) / sd) ** 2) / (np.maximum(grid, 0) + knee)
    a, m, s = post[None], grid[None], np.full((1, len(grid)), 0.01)
    before = mixture_summary(a, m, s, lower=None)
    A, M, S = divide_training_prior(a, m, s, knee)
    after = mixture_summary(A, M, S, lower=None)
    assert before["flux_mean"][0] < f_hat - 0.03 * sd
    assert after["flux_mean"][0] == pytest.approx(f_hat, abs=2e-3)
    assert after["flux_std"][0] == pytest.approx(sd, rel=2e-3)


def test_stamp_features_neighbour_feature_without_the_joint_fit():
    """``joint=False``: the reference flux is the target-only matched filter whatever the
    neighbour image, a fourth channel is added, and the extra features are the neighbours'
    light in that filter, sum p q / sum p^2 (0 for an isolated source, c for q = c p), and the
    joint fit's SNR."""
    from skysub.nn.lumos import stamp_features

    rng = np.random.default_rng(1)
    g = np.arange(31) - 15.0
    p = np.exp(-0.5 * (g[None, :] ** 2 + g[:, None] ** 2) / 4.0)
    p = torch.from_numpy(np.broadcast_to(p / p.sum(), (3, 31, 31)).copy())
    data = torch.from_numpy(rng.normal(0.0, 1.0, (3, 31, 31)) + 50.0 * p.numpy())
    valid = torch.ones(3, 31, 31, dtype=torch.bool)
    q = torch.stack([torch.zeros(31, 31), 2.5 * p[1], torch.roll(p[2], 6, dims=1)])
    x0, f0, u0, _ = stamp_features(data, valid, p)
    x1, f1, u1, _ = stamp_features(data, valid, p, q, joint=False)
    assert x0.shape[1] == 3 and x1.shape[1] == 4
    assert torch.allclose(f1[:, :3], f0) and torch.allclose(u1, u0) and f1.shape[1] == 5
    want = (p * q).sum((1, 2)) / (p * p).sum((1, 2))
    assert f1[0, 3] == 0 and float(f1[1, 3]) == pytest.approx(2.5, rel=1e-5)
    assert float(f1[2, 3]) == pytest.approx(float(want[2]), rel=1e-5) and 0 < want[2] < 1
    # the joint fit changes the reference flux when a neighbour overlaps; without ``joint``
    # its SNR is the fifth feature
    _, fj, _, _ = stamp_features(data, valid, p, q, joint=True)
    assert not torch.allclose(fj[2, :2], f0[2, :2])
    assert float(f1[2, 4]) == pytest.approx(float(fj[2, 0]), rel=1e-5)


def _blob(x0: float) -> np.ndarray:
    """A unit-total Gaussian (sigma 2.5 px) on a 41 x 41 grid, ``x0`` px right of the centre."""
    g = np.arange(41) - 20.0
    yy, xx = np.meshgrid(g, g, indexing="ij")
    b = np.exp(-0.5 * ((xx - x0) ** 2 + yy ** 2) / 2.5 ** 2)
    return b / b.sum()


def test_stamp_features_flux_ratio_deblend_recovers_the_target():
    """``ref_flux`` (LumosArch.neighbour_ratio): a target of catalogue flux 0.4 blended with a
    neighbour of catalogue flux 2.5 whose light overlaps the target's filter; both in the same
    units per catalogue flux (equal colours, noise-free).  f_one / (1 + c) is the target's own
    flux, where the matched filter alone is inflated by the neighbour; unknown magnitudes (NaN)
    leave the matched filter, and the extra feature is log(1 + c)."""
    from skysub.nn.lumos import stamp_features

    p = torch.from_numpy(np.stack([_blob(0.0)] * 2))
    unit_per_ref = 1000.0  # image units per catalogue reference-flux unit
    rng = np.random.default_rng(3)
    sky = rng.normal(0.0, 1.0, (2, 41, 41))
    sky[:, 12:29, 12:29] = 0.0  # noise only far from the pair: a noise-free core
    q = torch.from_numpy(np.stack([2.5 * _blob(5.0)] * 2))
    data = torch.from_numpy(sky + unit_per_ref * (0.4 * p.numpy() + q.numpy()))
    valid = torch.ones(2, 41, 41, dtype=torch.bool)
    ref = torch.tensor([0.4, np.nan], dtype=torch.float64)
    _, f, unit, _ = stamp_features(data, valid, p, q, joint=False, ref_flux=ref)
    _, f0, _, _ = stamp_features(data, valid, p, q, joint=False)
    assert f.shape[1] == 6
    s_ref = torch.exp(f[:, 1].double())
    flux = (f[:, 0].double() * s_ref * unit).numpy()  # image units
    one = (f0[:, 0].double() * torch.exp(f0[:, 1].double()) * unit).numpy()
    true = 0.4 * unit_per_ref
    assert one[0] > 1.3 * true  # the neighbour inflates the matched filter
    assert flux[0] == pytest.approx(true, rel=0.02)
    c = float(((p * q).sum((1, 2)) / (p * p).sum((1, 2)))[0]) / 0.4
    assert float(f[0, 5]) == pytest.approx(np.log1p(c), rel=1e-5)
    assert float(f[1, 5]) == 0.0 and flux[1] == pytest.approx(one[1], rel=1e-6)


def test_stamp_features_data_deblend_needs_no_magnitude():
    """``data_deblend`` (LumosArch.data_deblend): the same blend as above, now with the target's
    magnitude unknown and the neighbour twice as bright in the exposure as its catalogue flux
    says (a colour): the joint fit's neighbour amplitude takes its light out of the matched
    filter, so the reference is the target's flux; ``c`` is that light over the reference.  A
    known magnitude keeps the catalogue ratio, and a stamp without a neighbour is untouched."""
    from skysub.nn.lumos import stamp_features

    p = torch.from_numpy(np.stack([_blob(0.0)] * 3))
    q = torch.from_numpy(np.stack([2.5 * _blob(5.0), 2.5 * _blob(5.0), 0.0 * _blob(5.0)]))
    colour = 2.0  # the neighbour is twice as bright as its catalogue flux says
    data = torch.from_numpy(1000.0 * (0.4 * p.numpy() + colour * q.numpy()))  # noise-free
    valid = torch.ones(3, 41, 41, dtype=torch.bool)
    ref = torch.tensor([np.nan, 0.4, np.nan], dtype=torch.float64)
    _, f, unit, _ = stamp_features(data, valid, p, q, joint=False, ref_flux=ref,
                                   data_deblend=True)
    _, f_cat, _, _ = stamp_features(data, valid, p, q, joint=False, ref_flux=ref)
    flux = (f[:, 0].double() * torch.exp(f[:, 1].double()) * unit).numpy()
    flux_cat = (f_cat[:, 0].double() * torch.exp(f_cat[:, 1].double()) * unit).numpy()
    assert flux[0] == pytest.approx(400.0, rel=1e-4)  # magnitude-free, colour and all
    assert flux_cat[0] > 1.5 * 400.0  # without it: the matched filter, neighbour included
    pq_pp = float(((p * q).sum((1, 2)) / (p * p).sum((1, 2)))[0])
    light = colour * pq_pp * 1000.0
    assert float(f[0, 5]) == pytest.approx(np.log1p(light / flux[0]), rel=1e-4)
    # a known magnitude: the catalogue ratio, which assumes equal colours (reads high here)
    assert float(f[1, 0]) == float(f_cat[1, 0]) and flux[1] > 1.3 * 400.0
    # no neighbour: the matched filter, c = 0
    assert float(f[2, 5]) == 0.0 and float(f[2, 0]) == pytest.approx(float(f_cat[2, 0]))


def test_band_system_catalog_matches_injected_fluxes():
    """The simulator's own sources, their magnitudes put in the injected galaxies' band system,
    have the fluxes that system gives: a catalogued galaxy of band-system magnitude m is as
    bright as an injected galaxy of magnitude m (same colour)."""
    from skysub.background.bkgnet import simulated_exposures
    from skysub.simulate.galaxies import GalaxySimSettings, band_flux, band_system_catalog

    sim = {"shape": [128, 256], "n_galaxies": 800, "n_stars": 0, "n_faint": 0}
    exps, fieldcat = simulated_exposures(1, config=sim, seed=2)
    gs = GalaxySimSettings(zero_point=23.0)
    bandcat = band_system_catalog(fieldcat, sim, gs)
    assert np.allclose(np.asarray(bandcat["mag"]) - np.asarray(fieldcat["mag"]), -2.0)
    image, _xy, _bg, truth = exps[0]
    band = image.meta.band
    row = {int(i): k for k, i in enumerate(np.asarray(bandcat["id"]))}
    on = [k for k, i in enumerate(np.asarray(truth["id"])) if int(i) in row]
    k = np.array([row[int(i)] for i in np.asarray(truth["id"])[on]])
    f = band_flux(np.asarray(bandcat["mag"])[k], np.asarray(bandcat[f"dmag_{band}"])[k],
                  image.meta.exptime, image.meta.gain, gs)
    below = f < gs.flux_range[1] * image.meta.exptime / image.meta.gain  # band_flux clips there
    assert below.sum() > 20
    assert np.allclose(f[below], np.asarray(truth["flux_true"])[on][below], rtol=1e-9)


def test_snr_calibration_corrects_an_snr_dependent_location_and_width():
    """Mixtures that are too narrow by 1.5x and whose truth lies +0.4 sd above them at low SNR
    and -0.4 sd below at high SNR: the per-SNR calibration recovers both (shift and width per
    bin), the PIT becomes flat, and a single width factor cannot fix the location."""
    from scipy import stats

    from skysub.metrics import pit_gaussian_mixture, pit_uniformity
    from skysub.photometry.lumos import SNRCalibration, _calibrated, fit_snr_calibration

    rng = np.random.default_rng(0)
    n = 12000
    snr = np.exp(rng.uniform(np.log(1.0), np.log(200.0), n))
    sd = np.ones(n)
    mu = snr * sd
    shift_true = np.where(snr < 14, 0.4, -0.4)
    y = mu + shift_true * sd + 1.5 * sd * rng.standard_normal(n)
    a = np.tile([0.5, 0.5], (n, 1))
    m = np.column_stack([mu, mu])
    s = np.column_stack([sd, sd])
    cal = fit_snr_calibration(a, m, s, y, truncated=False, n_bins=6)
    assert len(cal.shift) == 6
    assert np.allclose(np.exp(cal.log_scale), 1.5, rtol=0.06)
    lo, hi = np.asarray(cal.shift)[:2], np.asarray(cal.shift)[-2:]
    assert np.allclose(lo, 0.4, atol=0.1) and np.allclose(hi, -0.4, atol=0.1)
    a2, m2, s2 = _calibrated(a, m, s, cal, None)
    pit = pit_gaussian_mixture(a2, m2, s2, y, lower=None)
    assert pit_uniformity(pit).pvalue > 0.01
    # round trip through the card
    assert SNRCalibration.from_dict(cal.as_dict()).shift == pytest.approx(cal.shift, abs=1e-5)
    # the single width factor leaves the location errors: PIT of the low-SNR half is off
    pit1 = pit_gaussian_mixture(a, m, s * 1.5, y, lower=None)
    assert stats.kstest(pit1[snr < 14], "uniform").pvalue < 1e-6


def test_snr_calibration_calibrates_crowded_targets_apart():
    """Isolated rows too narrow by 1.5x, crowded rows (c > 0.05) biased +0.5 sd and too wide
    by 1/0.8: with the crowding given, each group gets its own calibration and both PITs are
    flat; without it one compromise leaves the crowded PIT off."""
    from skysub.metrics import pit_gaussian_mixture, pit_uniformity
    from skysub.photometry.lumos import SNRCalibration, _calibrated, fit_snr_calibration

    rng = np.random.default_rng(1)
    n = 12000
    mu = np.exp(rng.uniform(0.0, np.log(100.0), n))
    crowd = rng.random(n) < 0.4
    c = np.where(crowd, rng.uniform(0.1, 3.0, n), rng.uniform(0.0, 0.04, n))
    y = np.where(crowd, mu + 0.5 + 0.8 * rng.standard_normal(n), mu + 1.5 * rng.standard_normal(n))
    a, m, s = np.ones((n, 1)), mu[:, None], np.ones((n, 1))
    cal = fit_snr_calibration(a, m, s, y, truncated=False, n_bins=4, c=c)
    assert cal.crowded is not None and len(cal.crowded.shift) == 2
    assert np.allclose(cal.crowded.shift, 0.5, atol=0.1)
    assert np.allclose(np.exp(cal.crowded.log_scale), 0.8, rtol=0.08)
    assert np.allclose(np.exp(cal.log_scale), 1.5, rtol=0.06)
    back = SNRCalibration.from_dict(cal.as_dict())
    a2, m2, s2 = _calibrated(a, m, s, back, None, c)
    pit = pit_gaussian_mixture(a2, m2, s2, y, lower=None)
    for sel in (crowd, ~crowd):
        assert pit_uniformity(pit[sel]).pvalue > 0.01
    one = fit_snr_calibration(a, m, s, y, truncated=False, n_bins=4)
    a3, m3, s3 = _calibrated(a, m, s, one, None)
    assert pit_uniformity(pit_gaussian_mixture(a3, m3, s3, y, lower=None)[crowd]).pvalue < 1e-4


def test_calibration_and_ratio_settings_are_checked():
    """A malformed per-SNR calibration in a card and inconsistent [lumos] settings are clear
    errors naming what is wrong."""
    from skysub.errors import ConfigError, InputError
    from skysub.photometry.lumos import LumosSettings, SNRCalibration

    with pytest.raises(InputError, match="snr_calibration"):
        SNRCalibration.from_dict({"asinh_snr": [1.0, 2.0], "log_scale": [0.0], "shift": [0, 0]})
    with pytest.raises(InputError, match="snr_calibration"):
        SNRCalibration.from_dict({"asinh_snr": [2.0, 1.0], "log_scale": [0, 0], "shift": [0, 0]})
    with pytest.raises(InputError, match="snr_calibration"):
        SNRCalibration.from_dict({"log_scale": [0.0], "shift": [0.0]})
    with pytest.raises(ConfigError, match="neighbour_ratio"):
        LumosSettings.from_config({"neighbours": True, "neighbour_fit": True,
                                   "neighbour_ratio": True})
    with pytest.raises(ConfigError, match="calibration_bins"):
        LumosSettings.from_config({"calibration_bins": -1})
    with pytest.raises(ConfigError, match="data_deblend"):
        LumosSettings.from_config({"neighbours": True, "neighbour_fit": False,
                                   "data_deblend": True})
