"""The partial-convolution U-Net: shapes, gradient flow, the paper preset, a tiny overfit,
model files without mask kernels, and the eq. 7 losses."""

import pytest
import torch

from skysub.errors import InputError
from skysub.nn.inpaint_losses import InpaintLoss, InpaintLossWeights, RandomFeatures, ssim
from skysub.nn.modelfile import load_model, save_model
from skysub.nn.unet import PConvUNet, arch_for, build_from_arch
from skysub.removal.core import normalise


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: the 2-core CI machine is shared; OpenMP spinning on busy cores
    makes small convolutions 10-50x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _holes(n, s, r=8):
    m = torch.ones(n, 1, s, s)
    c = s // 2
    m[..., c - r:c + r, c - r:c + r] = 0
    return m


@pytest.mark.parametrize("size", [64, 96, 128])
def test_shapes_and_gradient_flow(size):
    torch.manual_seed(0)
    net = build_from_arch(arch_for("default", size))
    x = torch.rand(2, 1, size, size)
    out = net(x, _holes(2, size))
    assert out.shape == (2, 1, size, size)
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert sum(int(p.grad.abs().sum() > 0) for p in net.parameters()) >= len(
        list(net.parameters())) - 2


def test_paper_preset_builds_with_35M_parameters():
    net = build_from_arch(arch_for("paper", 96))
    n = sum(p.numel() for p in net.parameters())
    assert 34e6 < n < 36e6
    assert len(net.encoder) == 11 and len(net.decoder) == 11
    # Table 4: PCDown2 k4 s2, PCDown11 k3 p0; PCUp2 in 1024; PCUp11 in 64 -> 1
    assert net.encoder[1].conv.kernel_size == (4, 4) and net.encoder[1].conv.stride == (2, 2)
    assert net.encoder[10].conv.kernel_size == (3, 3) and net.encoder[10].conv.padding == (0, 0)
    assert net.decoder[1].conv.in_channels == 1024 and net.decoder[1].conv.out_channels == 512
    assert net.decoder[10].conv.in_channels == 64 and net.decoder[10].conv.out_channels == 1
    assert isinstance(net.decoder[10].bn, torch.nn.Identity)
    assert isinstance(net.decoder[3].act, torch.nn.LeakyReLU)
    assert net.decoder[3].act.negative_slope == 0.2


def test_default_is_much_smaller():
    n = sum(p.numel() for p in build_from_arch(arch_for("default")).parameters())
    assert n < 1e6


def test_bad_architectures():
    with pytest.raises(InputError, match="multiple of"):
        PConvUNet([8] * 11, size=100)
    with pytest.raises(InputError, match="2 \\* n_down"):
        PConvUNet([8] * 10)
    with pytest.raises(InputError, match="preset"):
        arch_for("huge")
    net = build_from_arch(arch_for("default", 64))
    with pytest.raises(InputError, match="64 x 64"):
        net(torch.zeros(1, 1, 96, 96), torch.ones(1, 1, 96, 96))


def test_tiny_overfit_loss_falls():
    torch.manual_seed(0)
    net = build_from_arch(arch_for("default", 64))
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    target = (0.3 + 0.2 * torch.sin(xx / 9) * torch.cos(yy / 7))[None, None].repeat(4, 1, 1, 1)
    target = target + 0.02 * torch.randn_like(target)
    src = torch.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / 8)[None, None]
    image = target + src
    mask = _holes(4, 64, 6)
    crit = InpaintLoss()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    x, m, (t, full), _, _ = normalise(image, mask, target, image)
    losses = []
    for _ in range(40):
        loss = crit(net(x, m), t, m, full)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_save_load_round_trip_without_mask_kernels(tmp_path):
    torch.manual_seed(3)
    arch = arch_for("default", 64)
    net = build_from_arch(arch).eval()
    keys = list(net.state_dict())
    assert not any(k.endswith("ones") for k in keys)
    path = save_model(tmp_path / "m.pt", net, {"kind": "inpaint", "arch": arch})
    blob = torch.load(path, weights_only=True)
    assert not any("ones" in k for k in blob["state_dict"])
    net2, card = load_model(path, kind="inpaint")
    x = torch.rand(2, 1, 64, 64)
    m = _holes(2, 64)
    with torch.no_grad():
        assert torch.equal(net(x, m), net2(x, m))
    assert card["arch"]["channels"] == arch["channels"]


def test_ssim_identity_and_constants():
    x = torch.rand(2, 1, 32, 32)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    # constant images: SSIM = (2 a b + c1) / (a^2 + b^2 + c1) with c1 = (0.01)^2
    a, b = 0.2, 0.6
    c1 = 0.01 ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    got = ssim(torch.full((1, 1, 20, 20), a), torch.full((1, 1, 20, 20), b))
    assert float(got) == pytest.approx(expected, rel=1e-4)


def test_loss_terms_and_weights():
    torch.manual_seed(0)
    t = torch.rand(2, 1, 32, 32)
    m = _holes(2, 32, 4)
    crit = InpaintLoss()
    terms = crit.terms(t, t, m, t + 1)
    for k in ("valid", "hole", "style", "source", "flux"):
        assert float(terms[k]) == pytest.approx(0.0, abs=1e-6), k
    assert float(terms["ssim"]) == pytest.approx(0.0, abs=1e-5)
    pred = t + 0.1
    terms = crit.terms(pred, t, m, t)
    hole_frac = float((1 - m).mean())
    assert float(terms["hole"]) == pytest.approx(0.1 * hole_frac, rel=1e-5)
    assert float(terms["valid"]) == pytest.approx(0.1 * (1 - hole_frac), rel=1e-5)
    assert float(terms["source"]) == pytest.approx(0.1, rel=1e-5)  # eq. 6 = L1(pred - gt)
    w = InpaintLossWeights()
    assert (w.valid, w.hole, w.style, w.ssim, w.source) == (2, 6, 120, 0.4, 1)  # eq. 7
    with pytest.raises(InputError, match="unknown key.*loss weights"):
        InpaintLossWeights.from_dict({"perceptual": 1.0})


def test_random_features_are_fixed_and_not_saved():
    a, b = RandomFeatures(seed=5), RandomFeatures(seed=5)
    x = torch.rand(1, 1, 32, 32)
    assert all(torch.equal(p, q) for p, q in zip(a(x), b(x), strict=True))
    assert len(a.state_dict()) == 0 and len(list(a.parameters())) == 0


def test_normalise_valid_pixels_only():
    img = torch.tensor([[[[1.0, 3.0], [1000.0, float("nan")]]]])
    m = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    x, mm, (t,), lo, sc = normalise(img, m, img)
    assert float(lo) == 1.0 and float(sc) == 2.0
    assert torch.equal(x, torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]]))
    assert float(t[0, 0, 1, 0]) == pytest.approx(499.5)


def test_ssim_separable_equals_2d_window():
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 40, 40, generator=g, dtype=torch.float64)
    y = x + 0.2 * torch.rand(3, 1, 40, 40, generator=g, dtype=torch.float64)
    k = torch.arange(11, dtype=torch.float64) - 5
    k = torch.exp(-0.5 * (k / 1.5) ** 2)
    w = (k[:, None] * k[None]) / k.sum() ** 2
    w = w[None, None]
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx, syy = F.conv2d(x * x, w) - mx * mx, F.conv2d(y * y, w) - my * my
    sxy = F.conv2d(x * y, w) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ref = (((2 * mx * my + c1) * (2 * sxy + c2))
           / ((mx * mx + my * my + c1) * (sxx + syy + c2))).mean()
    assert float(ssim(x, y)) == pytest.approx(float(ref), rel=1e-12)
    assert float(ref) < 0.99  # a real difference, not the trivial case


def test_style_subsample_is_the_style_of_those_samples():
    g = torch.Generator().manual_seed(1)
    pred, tgt = torch.rand(6, 1, 32, 32, generator=g), torch.rand(6, 1, 32, 32, generator=g)
    mask = (torch.rand(6, 1, 32, 32, generator=g) > 0.2).float()
    full = InpaintLoss({}, style_samples=None)
    sub = InpaintLoss({}, style_samples=2)
    got = sub.terms(pred, tgt, mask, tgt)["style"]
    want = full.terms(pred[:2], tgt[:2], mask[:2], tgt[:2])["style"]
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert float(got) != pytest.approx(float(full.terms(pred, tgt, mask, tgt)["style"]),
                                       rel=1e-3)
