"""Partial convolutions (Liu et al. 2018), the building block of the inpainting U-Net.

A partial convolution sees only the valid pixels of its input::

    out = W^T (X * M) * r + b     where the window holds at least one valid pixel
    out = 0                       where it holds none
    M'  = 1 where the window held at least one valid pixel, else 0

with ``r = n_window / n_valid``: ``n_valid`` the number of valid input taps under the window
and ``n_window`` the number of taps an all-valid input would give there.  Liu et al. use the
full window size ``k * k`` for ``n_window``, which makes the zero padding at the border count as
a hole (``pad_as_hole=True``); by default skysub counts only the taps that fall on the input,
so that **with an all-valid mask a partial convolution is exactly the ordinary convolution**
(zero padding included) -- the border of a cutout is not a hole, masked pixels are.

The mask has one channel shared by every feature channel (``multi_channel=False`` in Liu et
al.'s code): sources are holes in the sky, not in a particular feature.

The all-ones kernels that count valid taps are non-persistent buffers, rebuilt on
construction: they are never written to model files (the published checkpoints of Madarász et
al. store them, one reason they weigh ~280 MB).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PartialConv2d", "PartialConvTranspose2d"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _PartialMixin:
    """Shared renormalisation: ``raw`` is the convolution of the masked input (with bias)."""

    pad_as_hole: bool
    bias: torch.Tensor | None

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 bias: bool = True, *, pad_as_hole: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,  # type: ignore
                         padding=padding, bias=bias)
        self.pad_as_hole = bool(pad_as_hole)
        # all-ones kernel counting valid taps: a non-persistent buffer, never saved
        self.register_buffer("ones", torch.ones(1, 1, *_pair(kernel_size)),  # type: ignore
                             persistent=False)

    def _count(self, m: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _renormalise(self, raw: torch.Tensor, mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            n_valid = self._count(mask)
            if self.pad_as_hole:
                n_window = float(self.ones.numel())
            else:
                n_window = self._count(torch.ones_like(mask[:1]))
            new_mask = (n_valid > 0.5).to(raw.dtype)
            ratio = n_window / n_valid.clamp(min=1.0) * new_mask
        if self.bias is not None:
            b = self.bias.view(1, -1, 1, 1)
            out = ((raw - b) * ratio + b) * new_mask
        else:
            out = raw * ratio
        return out, new_mask


class PartialConv2d(_PartialMixin, nn.Conv2d):
    """2-D partial convolution (Liu et al. 2018, eq. 1-2).

    Parameters
    ----------
    As :class:`torch.nn.Conv2d` (no groups or dilation), plus
    pad_as_hole : bool
        Count the zero padding as holes (Liu et al.); default False, so that an all-valid
        mask reproduces :class:`torch.nn.Conv2d` exactly.

    ``forward(x, mask)`` takes ``x`` (N, C, H, W) and ``mask`` (N, 1, H, W) with 1 = valid,
    0 = hole, and returns ``(out, new_mask)``.
    """

    def _count(self, m: torch.Tensor) -> torch.Tensor:
        return F.conv2d(m, self.ones, stride=self.stride, padding=self.padding)

    def forward(self, x: torch.Tensor, mask: torch.Tensor  # type: ignore[override]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        raw = super().forward(x * mask)
        return self._renormalise(raw, mask)


class PartialConvTranspose2d(_PartialMixin, nn.ConvTranspose2d):
    """Transposed partial convolution (the upsampling layer of Madarász et al. §3.2).

    The valid-tap count is the transposed convolution of the mask with an all-ones kernel;
    ``n_window`` is the same count for an all-valid input (it varies with the output pixel
    for stride > 1), so an all-valid mask reproduces :class:`torch.nn.ConvTranspose2d`
    exactly.  ``pad_as_hole=True`` uses the constant ``k * k / stride**2`` instead.
    """

    def _count(self, m: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(m, self.ones, stride=self.stride, padding=self.padding)

    def _renormalise(self, raw, mask):  # type: ignore[override]
        if not self.pad_as_hole:
            return super()._renormalise(raw, mask)
        with torch.no_grad():
            n_valid = self._count(mask)
            new_mask = (n_valid > 0.5).to(raw.dtype)
            # each output pixel of a transposed conv receives (k / s)^2 taps in the interior
            taps = (self.kernel_size[0] / self.stride[0]) * (self.kernel_size[1] / self.stride[1])
            ratio = taps / n_valid.clamp(min=1.0) * new_mask
        b = self.bias.view(1, -1, 1, 1) if self.bias is not None else 0.0
        return ((raw - b) * ratio + b) * new_mask, new_mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor  # type: ignore[override]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        raw = F.conv_transpose2d(x * mask, self.weight, self.bias, stride=self.stride,
                                 padding=self.padding)
        return self._renormalise(raw, mask)
