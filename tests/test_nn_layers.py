"""Partial convolutions (Liu et al. 2018): equal to ordinary convolutions with an all-valid
mask, exact renormalisation on analytic masked cases, mask update, no mask kernels saved."""

import pytest
import torch
import torch.nn.functional as F

from skysub.nn.layers import PartialConv2d, PartialConvTranspose2d


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: the 2-core CI machine is shared; OpenMP spinning on busy cores
    makes small convolutions 10-50x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _interior(m):
    inner = torch.zeros_like(m, dtype=torch.bool)
    inner[..., 1:-1, 1:-1] = True
    return inner


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (4, 2, 1), (3, 1, 0), (5, 2, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_partial_conv_all_valid_equals_conv(k, s, p, bias):
    torch.manual_seed(0)
    pc = PartialConv2d(3, 5, k, stride=s, padding=p, bias=bias)
    conv = torch.nn.Conv2d(3, 5, k, stride=s, padding=p, bias=bias)
    conv.load_state_dict(pc.state_dict())
    x = torch.randn(2, 3, 17, 16)
    out, m = pc(x, torch.ones(2, 1, 17, 16))
    assert torch.allclose(out, conv(x), atol=1e-6)
    assert torch.all(m == 1)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (4, 2, 1), (3, 1, 0)])
def test_partial_conv_transpose_all_valid_equals_conv_transpose(k, s, p):
    torch.manual_seed(1)
    pc = PartialConvTranspose2d(4, 2, k, stride=s, padding=p)
    conv = torch.nn.ConvTranspose2d(4, 2, k, stride=s, padding=p)
    conv.load_state_dict(pc.state_dict())
    x = torch.randn(2, 4, 6, 7)
    out, m = pc(x, torch.ones(2, 1, 6, 7))
    assert torch.allclose(out, conv(x), atol=1e-6)
    assert torch.all(m == 1)


def test_renormalisation_constant_input_analytic():
    """A constant field c under a box kernel of ones: every window with >= 1 valid pixel gives
    sum(W) * c = 9 c after renormalisation (9/n_valid x n_valid c); empty windows give 0."""
    c = 2.5
    pc = PartialConv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        pc.weight.fill_(1.0)
    x = torch.full((1, 1, 12, 12), c)
    x[..., 3:9, 3:9] = 1e6  # hole content must not matter
    mask = torch.ones(1, 1, 12, 12)
    mask[..., 3:9, 3:9] = 0
    out, m = pc(x, mask)
    # the hole shrinks by one pixel on each side
    expected_mask = torch.ones(1, 1, 12, 12)
    expected_mask[..., 4:8, 4:8] = 0
    assert torch.equal(m, expected_mask)
    inner = (m > 0) & _interior(m)  # at the map border the window holds fewer taps
    assert torch.allclose(out[inner], torch.full_like(out[inner], 9 * c))
    assert torch.all(out[m == 0] == 0)
    # a pixel touching the hole: 3 of 9 taps invalid -> raw = 6 c, ratio 9 / 6
    raw = F.conv2d(x * mask, torch.ones(1, 1, 3, 3), padding=1)
    assert float(raw[0, 0, 4, 2]) == pytest.approx(6 * c)
    assert float(out[0, 0, 4, 2]) == pytest.approx(9 * c)


def test_bias_is_added_after_renormalisation():
    pc = PartialConv2d(1, 1, 3, padding=1, bias=True)
    with torch.no_grad():
        pc.weight.fill_(1.0)
        pc.bias.fill_(0.5)
    x = torch.ones(1, 1, 8, 8)
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 0
    out, m = pc(x, mask)
    inner = (m > 0) & _interior(m)
    assert torch.allclose(out[inner], torch.full_like(out[inner], 9.0 + 0.5))


def test_pad_as_hole_liu_convention():
    """Liu et al. count the zero padding as hole: at a corner 4 of 9 taps are on the image."""
    pc = PartialConv2d(1, 1, 3, padding=1, bias=False, pad_as_hole=True)
    with torch.no_grad():
        pc.weight.fill_(1.0)
    with torch.no_grad():
        out, _ = pc(torch.ones(1, 1, 5, 5), torch.ones(1, 1, 5, 5))
    assert float(out[0, 0, 0, 0]) == pytest.approx(9.0)  # 4 * 9 / 4
    plain = PartialConv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        plain.weight.fill_(1.0)
    with torch.no_grad():
        out2, _ = plain(torch.ones(1, 1, 5, 5), torch.ones(1, 1, 5, 5))
    assert float(out2[0, 0, 0, 0]) == pytest.approx(4.0)  # ordinary zero padding


def test_transpose_renormalisation_constant():
    pc = PartialConvTranspose2d(1, 1, 4, stride=2, padding=1, bias=False)
    with torch.no_grad():
        pc.weight.fill_(1.0)
    x = torch.full((1, 1, 6, 6), 3.0)
    mask = torch.ones(1, 1, 6, 6)
    mask[..., 2:4, 2:4] = 0
    out, m = pc(x, mask)
    full, _ = pc(x, torch.ones_like(mask))
    # wherever any tap is valid the renormalised output equals the all-valid output
    assert torch.allclose(out[m > 0], full[m > 0])
    assert (m == 0).sum() > 0 and torch.all(out[m == 0] == 0)


def test_no_mask_kernels_in_state_dict():
    pc = PartialConv2d(2, 3, 3, padding=1)
    pt = PartialConvTranspose2d(2, 3, 4, stride=2, padding=1)
    for layer in (pc, pt):
        assert set(layer.state_dict()) == {"weight", "bias"}


def test_gradients_flow_only_through_valid_pixels():
    pc = PartialConv2d(1, 1, 3, padding=1)
    x = torch.randn(1, 1, 9, 9, requires_grad=True)
    mask = torch.ones(1, 1, 9, 9)
    mask[..., 4, 4] = 0
    out, _ = pc(x, mask)
    out.sum().backward()
    assert x.grad[0, 0, 4, 4] == 0 and torch.count_nonzero(x.grad) == 80
