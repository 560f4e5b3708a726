"""A faster CPU forward pass for the ``strided`` conv trunks of BKGnet and Lumos, with the same
numbers as the reference modules up to float32 rounding (pure torch).

:func:`fast_trunk` turns a trained network (batch-norm already folded, :func:`skysub.nn.bkgnet.
fuse_for_inference`) into one whose ``trunk`` is a :class:`FastTrunk` and whose ``reduce`` reads
the trunk's output in channels-last order.  Three changes, none of which alters the arithmetic
beyond the order of float32 sums:

1. **Space-to-depth first layer.**  The first convolution (kernel 4, stride 2, padding 1) on
   2-4 input channels is the slowest layer per FLOP: oneDNN vectorises over input channels.  It
   equals a 2 x 2, stride-1 convolution without padding on the input padded by one pixel and
   folded 2 x 2 into 4x the channels (:func:`space_to_depth`): ``out[i] = sum_k w[k]
   x'[2i + k]`` with ``x'`` the padded input, split as ``k = 2a + r`` (``a``: which 2 x 2
   block, ``r``: where in it).  Callers that build the network input themselves (BKGnet's
   stamp kernel, :func:`skysub.stamps.WindowCutter.bkgnet_inputs`) write it folded directly.
2. **Fused convolution + bias + LeakyReLU** through oneDNN's post-op
   (``torch.ops.mkldnn._convolution_pointwise``, what ``torch.compile`` emits on CPU), which
   removes one pass over every feature map; without it, the eager convolution and an
   in-place LeakyReLU.
3. **No flatten copy.**  The trunk's channels-last output is flattened as it lies in memory
   (a view) and the first dense layer's columns are permuted once to that order.

The result is checked against the reference in ``tests/test_fast_inference.py`` (relative
1e-5); the benchmarks print both speeds (``python -m benchmarks.bench_bkgnet``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _fused_op():
    """``torch.ops.mkldnn._convolution_pointwise``, or None when this torch lacks it."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) -> (B, 4 C, S/2 + 1, S/2 + 1): zero-pad by 1 pixel, fold 2 x 2 blocks into
    channels (channel ``(2 r + c) C + ch`` holds pixel ``(2 i + r, 2 j + c)`` of channel
    ``ch`` of the padded input); channels-last result.  ``S`` must be even."""
    b, c, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1))
    h2, w2 = (h + 2) // 2, (w + 2) // 2
    y = xp.reshape(b, c, h2, 2, w2, 2).permute(0, 2, 4, 3, 5, 1)  # b, i, j, r, c, ch
    y = y.reshape(b, h2, w2, 4 * c)
    return y.permute(0, 3, 1, 2)  # channels-last strides


def _s2d_weight(w: torch.Tensor) -> torch.Tensor:
    """Weights (O, C, 4, 4) of the stride-2 conv -> (O, 4 C, 2, 2) of the folded one."""
    o, c = w.shape[:2]
    w6 = w.reshape(o, c, 2, 2, 2, 2)  # o, ch, a, r, b, cc  (ky = 2a + r, kx = 2b + cc)
    return w6.permute(0, 3, 5, 1, 2, 4).reshape(o, 4 * c, 2, 2).contiguous()


class FastTrunk(nn.Module):
    """The ``strided`` trunk (conv -> LeakyReLU blocks, batch-norm folded) for CPU inference;
    takes the usual (B, C, S, S) input or the already folded (B, 4 C, S/2 + 1, S/2 + 1) one
    and returns the features flattened in channels-last order (B, H W C_out)."""

    def __init__(self, trunk: nn.Sequential, stamp_size: int, *, fold: bool = True) -> None:
        super().__init__()
        convs, slopes = [], []
        mods = list(trunk)
        for i, m in enumerate(mods):
            if isinstance(m, nn.Conv2d):
                act = mods[i + 1] if i + 1 < len(mods) else None
                if not isinstance(act, nn.LeakyReLU) or m.groups != 1 or m.bias is None:
                    raise ValueError("FastTrunk needs conv (with folded bias) -> LeakyReLU "
                                     "blocks")
                convs.append(m)
                slopes.append(float(act.negative_slope))
            elif not isinstance(m, nn.LeakyReLU):
                raise ValueError(f"FastTrunk cannot run a {type(m).__name__} layer")
        first = convs[0]
        self.cin = int(first.in_channels)
        self.s2d = (fold and tuple(first.kernel_size) == (4, 4) and tuple(first.stride) == (2, 2)
                    and tuple(first.padding) == (1, 1) and stamp_size % 2 == 0)
        self.layers: list[tuple] = []
        ws, bs = [], []
        for j, m in enumerate(convs):
            w = m.weight.detach().clone()
            pad, stride = list(m.padding), list(m.stride)
            if j == 0 and self.s2d:
                w, pad, stride = _s2d_weight(w), [0, 0], [1, 1]
            ws.append(nn.Parameter(w.contiguous(memory_format=torch.channels_last),
                                   requires_grad=False))
            bs.append(nn.Parameter(m.bias.detach().clone(), requires_grad=False))
            self.layers.append((pad, stride, list(m.dilation), slopes[j]))
        self.weights = nn.ParameterList(ws)
        self.biases = nn.ParameterList(bs)
        self.fused = _fused_op()

    def _layer(self, x: torch.Tensor, j: int) -> torch.Tensor:
        pad, stride, dil, slope = self.layers[j]
        w, b = self.weights[j], self.biases[j]
        if self.fused is not None and x.device.type == "cpu" and x.dtype == torch.float32:
            try:
                return self.fused(x, w, b, pad, stride, dil, 1, "leaky_relu", [slope], "")
            except RuntimeError:  # an oneDNN build that refuses the post-op: eager below
                self.fused = None
        return F.leaky_relu(F.conv2d(x, w, b, stride, pad, dil), slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.s2d and x.shape[1] == self.cin:
            x = space_to_depth(x)
        x = x.contiguous(memory_format=torch.channels_last)
        for j in range(len(self.layers)):
            x = self._layer(x, j)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # a view: channels-last


def _permuted_reduce(reduce: nn.Sequential, c: int, h: int, w: int) -> nn.Sequential:
    """``reduce`` (Flatten, Linear, activation...) for features flattened as (h, w, c)."""
    mods = list(reduce)
    if not isinstance(mods[0], nn.Flatten) or not isinstance(mods[1], nn.Linear):
        raise ValueError("reduce must start with Flatten, Linear")
    lin = mods[1]
    new = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
    with torch.no_grad():
        wt = lin.weight.reshape(lin.out_features, c, h, w).permute(0, 2, 3, 1)
        new.weight.copy_(wt.reshape(lin.out_features, -1))
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return nn.Sequential(new, *mods[2:])


def fast_trunk(model: nn.Module, in_channels: int, *, fold: bool = True) -> nn.Module:
    """A copy of ``model`` (BKGnet or Lumos, ``strided`` block, batch-norm folded, eval mode)
    with :class:`FastTrunk` and the permuted first dense layer; ``model`` itself when its
    trunk is of another kind (``paper`` preset).  Same ``forward`` signature and outputs."""
    if getattr(model.arch, "block", None) != "strided":
        return model
    s = int(model.arch.stamp_size)
    with torch.no_grad():
        out = model.trunk(torch.zeros(1, in_channels, s, s))
    fast = copy.deepcopy(model).eval()
    fast.trunk = FastTrunk(model.trunk, s, fold=fold)
    fast.reduce = _permuted_reduce(model.reduce, *out.shape[1:])
    fast.fast_inference = True
    return fast


__all__ = ["FastTrunk", "fast_trunk", "space_to_depth"]
