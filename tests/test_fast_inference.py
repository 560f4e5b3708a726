"""The fast CPU inference paths give the reference path's numbers: the compiled BKGnet input
kernel (cut + normalise + space-to-depth fold), the fused trunk (nn/inference.py), the compiled
Sérsic kernel behind Lumos' models, and BKGnet / Lumos end to end on a small simulated frame
(shipped models, fast=True against fast=False, 1e-5 relative)."""

import numpy as np
import pytest
import torch

from skysub.nn import bkgnet as nb
from skysub.nn.bkgnet import BKGnet, BKGnetArch, fuse_for_inference, normalise_stamps
from skysub.nn.inference import FastTrunk, fast_trunk, space_to_depth
from skysub.nn.lumos import Lumos, LumosArch
from skysub.stamps import WindowCutter


@pytest.fixture(scope="module")
def frame():
    """One PAUS-like simulated exposure (a band the shipped models know), a masked block, and
    its catalogued sources plus positions at the edges, in the mask and off the image."""
    from skysub.background.bkgnet import simulated_exposures
    from skysub.config import load_config

    torch.set_num_threads(1)
    cfg = load_config("paus")
    (im, _, _, truth), = simulated_exposures(1, config=cfg.simulate, seed=7)[0][:1]
    im.mask[200:260, 300:380] = True
    x = np.concatenate([np.asarray(truth["x"], float)[:150],
                        [0.3, 1023.2, 340.0, 512.0, -30.0, -400.0, 5.0]])
    y = np.concatenate([np.asarray(truth["y"], float)[:150],
                        [0.2, 511.4, 230.0, -40.0, 100.0, 30.0, 600.0]])
    mag = np.concatenate([np.asarray(truth["mag"], float)[:150], np.full(7, np.nan)])
    return im, x, y, mag


def _random_bn(net):
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net


def test_space_to_depth_conv_is_the_strided_conv():
    """A 4 x 4 stride-2 padding-1 conv equals the 2 x 2 conv of the folded input."""
    from skysub.nn.inference import _s2d_weight

    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 12, 12, generator=g)
    w = torch.randn(5, 2, 4, 4, generator=g)
    ref = torch.nn.functional.conv2d(x, w, stride=2, padding=1)
    out = torch.nn.functional.conv2d(space_to_depth(x), _s2d_weight(w))
    assert out.shape == ref.shape == (3, 5, 6, 6)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    # the fold itself: channel (2 r + c) C + ch holds padded pixel (2 i + r, 2 j + c)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    f = space_to_depth(x)
    assert torch.equal(f[:, (2 * 1 + 0) * 2 + 1, 3, 4], xp[:, 1, 7, 8])


@pytest.mark.parametrize("kind, cin", [("bkgnet", 2), ("lumos3", 3), ("lumos4", 4)])
@pytest.mark.parametrize("fused", [True, False])
def test_fast_trunk_matches_the_reference(kind, cin, fused):
    torch.manual_seed(0)
    if kind == "bkgnet":
        net = BKGnet(BKGnetArch.from_preset("lean", n_keys=3))
        args = (torch.zeros(6, 2), torch.full((6,), 21.0), torch.ones(6),
                torch.tensor([0, 1, 2, 0, 1, 2]))
        s = 120
    else:
        net = Lumos(LumosArch.from_preset("lean", n_keys=2, neighbours=cin == 4))
        args = (torch.randn(6, net.N_FEATS), torch.zeros(6, 2), torch.full((6,), 21.0),
                torch.ones(6), torch.tensor([0, 1, 0, 1, 0, 1]))
        s = 60
    net = fuse_for_inference(_random_bn(net).eval())
    fast = fast_trunk(net, cin)
    assert isinstance(fast.trunk, FastTrunk) and fast.trunk.s2d
    if not fused:
        fast.trunk.fused = None  # the eager fallback
    x = torch.randn(6, cin, s, s)
    with torch.inference_mode():
        ref = net(x, *args)
        out = fast(x, *args)
        folded = fast(space_to_depth(x), *args)
    for r, o, f in zip(ref, out, folded, strict=True):
        scale = r.abs().max()
        assert torch.allclose(o, r, rtol=1e-5, atol=1e-5 * scale)
        assert torch.allclose(f, r, rtol=1e-5, atol=1e-5 * scale)
    # the reference network is untouched
    assert isinstance(net.trunk, torch.nn.Sequential)


def test_fast_trunk_leaves_other_presets_alone():
    net = BKGnet(BKGnetArch.from_preset("paper", n_keys=1)).eval()
    assert fast_trunk(net, 2) is net


def test_folded_inputs_equal_normalise_then_fold(frame):
    im, x, y, _ = frame
    cut = WindowCutter(im, 120)
    f = cut.folded_inputs(x, y, 16, min_valid=64, asinh_scale=nb.ASINH_SCALE,
                          mad_k=nb.MAD_SIGMA, floor_rel=nb.SCALE_FLOOR_REL,
                          floor_abs=nb.SCALE_FLOOR_ABS)
    if f is None:
        pytest.skip("numba unavailable")
    d, v, x0, y0 = cut(x, y)
    xin, loc, scale, ok = normalise_stamps(torch.from_numpy(d), torch.from_numpy(v), 16)
    ok = ok.numpy()
    assert np.array_equal(f["ok"], ok) and (~ok).sum() >= 1  # the far off-image stamp
    assert np.array_equal(f["x0"], x0) and np.array_equal(f["y0"], y0)
    assert np.array_equal(f["n_valid"], v.reshape(len(x), -1).sum(1))
    # the medians are the same float32 numbers
    assert np.array_equal(f["loc"][ok], loc.numpy()[ok])
    assert np.array_equal(f["scale"][ok], scale.numpy()[ok])
    ref = space_to_depth(xin).permute(0, 2, 3, 1).numpy()
    assert f["x"].shape == ref.shape
    got = f["x"][ok]
    want = ref[ok]
    assert np.array_equal(got[..., 1::2], want[..., 1::2])  # validity channels exactly
    assert np.allclose(got, want, rtol=3e-7, atol=1e-6)


def test_bkgnet_fast_path_equals_reference(frame):
    from skysub.background.bkgnet import BKGnetBackground

    im, x, y, mag = frame
    ref = BKGnetBackground("bkgnet-paus", device="cpu", threads=1, fast=False)
    fast = BKGnetBackground("bkgnet-paus", device="cpu", threads=1, batch_size=40)
    assert fast.fast_net is not None and ref.fast_net is None
    a = ref.estimate(im, x, y, mag=mag)
    b = fast.estimate(im, x, y, mag=mag)
    assert np.array_equal(a.flags, b.flags) and np.array_equal(a.n_pix, b.n_pix)
    assert np.array_equal(np.isnan(a.bkg), np.isnan(b.bkg))
    assert np.isfinite(a.bkg).sum() >= 150  # edge and masked stamps are measured
    good = np.isfinite(a.bkg)
    np.testing.assert_allclose(b.bkg[good], a.bkg[good], rtol=1e-5)
    np.testing.assert_allclose(b.bkg_err[good], a.bkg_err[good], rtol=1e-5)
    # two workers (one torch thread each) give the same numbers as one
    torch.set_num_threads(2)
    try:
        c = fast.estimate(im, x, y, mag=mag)
    finally:
        torch.set_num_threads(1)
    assert torch.get_num_threads() == 1
    assert np.array_equal(c.bkg, b.bkg, equal_nan=True) and np.array_equal(c.flags, b.flags)


def test_sersic_kernel_equals_numpy():
    from skysub.simulate.profiles import sersic_stamps

    rng = np.random.default_rng(2)
    m = 40
    kw = {"ba": rng.uniform(0.3, 1, m), "theta": rng.uniform(0, 180, m),
          "dx": rng.uniform(-0.5, 0.5, m), "dy": rng.uniform(-0.5, 0.5, m), "oversample": 3}
    r50, n = rng.uniform(0.5, 6, m), rng.uniform(0.5, 6, m)
    ref = sersic_stamps(31, np.ones(m), r50, n, **kw)
    fast = sersic_stamps(31, np.ones(m), r50, n, fast=True, **kw)
    peak = ref.max(axis=(1, 2), keepdims=True)
    assert np.all(np.abs(fast - ref) <= 1e-6 * peak)
    np.testing.assert_allclose(fast.sum((1, 2)), ref.sum((1, 2)), rtol=1e-6)


def test_lumos_fast_path_equals_reference(frame):
    from skysub.photometry.lumos import LumosPhotometer

    im, x, y, _ = frame
    rng = np.random.default_rng(3)
    n = len(x)
    cat = {"r50": rng.uniform(1, 5, n), "sersic_n": rng.uniform(0.5, 4, n),
           "ba": rng.uniform(0.3, 1, n), "theta": rng.uniform(0, 180, n),
           "mag": rng.uniform(19, 23, n)}
    cat["r50"][:10] = 0.0  # point sources
    ref = LumosPhotometer("lumos-paus", device="cpu", threads=1, fast=False)
    fast = LumosPhotometer("lumos-paus", device="cpu", threads=1)
    a = ref.measure(im, x, y, catalog=cat)
    b = fast.measure(im, x, y, catalog=cat)
    assert np.array_equal(a.flags, b.flags)
    assert np.array_equal(np.isnan(a.flux), np.isnan(b.flux))
    good = np.isfinite(a.flux)
    assert good.sum() >= 150
    np.testing.assert_allclose(b.flux[good], a.flux[good], rtol=1e-5)
    np.testing.assert_allclose(b.flux_err[good], a.flux_err[good], rtol=1e-5)


@pytest.mark.parametrize("lower", [0.0, None])
def test_bisection_cdf_is_mixture_cdf_bitwise(lower):
    """mixture_summary's bisection CDF (checks and truncation masses done once) gives the
    same bits as skysub.metrics.mixture_cdf at every step, NaN rows included."""
    from skysub.metrics import mixture_cdf
    from skysub.photometry.lumos.mixtures import _bisection_cdf

    rng = np.random.default_rng(4)
    n, k = 300, 5
    a = rng.uniform(0.01, 1, (n, k))
    a /= a.sum(1, keepdims=True)
    m = rng.normal(20, 30, (n, k))
    s = rng.uniform(0.5, 20, (n, k))
    m[3] = np.nan
    cdf = _bisection_cdf(a, m, s, lower)
    for x in (rng.normal(20, 40, n), np.full(n, -5.0), np.where(rng.random(n) < 0.1, np.nan,
                                                                  rng.normal(0, 50, n))):
        assert np.array_equal(cdf(x), mixture_cdf(a, m, s, x, lower=lower), equal_nan=True)
