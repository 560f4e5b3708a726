"""The partial-convolution U-Net of Madarász et al. (Table 4), pure torch.

Encoder: ``2 n_down + 1`` PCDown blocks (partial conv -> BatchNorm -> ReLU): a k3 s1 p1 block,
then ``n_down`` pairs (k4 s2 p1 downsampling, k3 s1 p1 feature extraction) with the last block
replaced by a ``k = size / 2**n_down``, s1, p0 partial convolution that squeezes the map to
1 x 1.  Decoder: as many PCUp blocks (transposed partial conv -> BatchNorm -> LeakyReLU 0.2;
neither BatchNorm nor activation on the last), the first undoing the squeeze and then
alternating k4 s2 p1 (upsampling) and k3 s1 p1 (refinement); decoder block ``j`` takes the
output of block ``j - 1`` concatenated with that of encoder block ``n - j + 1``.

Presets (``arch["preset"]``):

- ``paper`` -- Table 4 exactly for 96 x 96 inputs: channels 32, 64, 64, 128, 128, 256, 256,
  512, 512, 512, 512 (~35 M parameters, ~4.2 GFLOP per cutout; ~15 cutouts/s on 2 CPU cores).
- ``default`` -- the same topology with 6-48 channels (6, 12, 12, 24, 24, 32, 32, 48, 48, 48,
  48), ~0.39 M parameters: fast enough for whole-map removal on a laptop (see
  ``benchmarks/bench_removal.py``) and small enough to ship in the package.

Input ``x`` (N, 1, S, S) normalised image with holes (any value: it is multiplied by the
mask), ``mask`` (N, 1, S, S) 1 = valid, 0 = hole.  Output (N, 1, S, S) the normalised image
with the holes filled (the background without the sources).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .layers import PartialConv2d, PartialConvTranspose2d

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"channels": [32, 64, 64, 128, 128, 256, 256, 512, 512, 512, 512],
              "n_down": 5},
    "default": {"channels": [6, 12, 12, 24, 24, 32, 32, 48, 48, 48, 48], "n_down": 5},
}


class PCDown(nn.Module):
    """Partial conv -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int, s: int, p: int) -> None:
        super().__init__()
        self.conv = PartialConv2d(cin, cout, k, stride=s, padding=p, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, m = self.conv(x, m)
        return self.act(self.bn(x)), m


class PCUp(nn.Module):
    """Transposed partial conv -> BatchNorm -> LeakyReLU(0.2) (plain conv on the last block)."""

    def __init__(self, cin: int, cout: int, k: int, s: int, p: int, *, last: bool = False
                 ) -> None:
        super().__init__()
        self.conv = PartialConvTranspose2d(cin, cout, k, stride=s, padding=p, bias=last)
        self.bn = nn.Identity() if last else nn.BatchNorm2d(cout)
        self.act = nn.Identity() if last else nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, m = self.conv(x, m)
        return self.act(self.bn(x)), m


class PConvUNet(nn.Module):
    """Partial-convolution U-Net (Madarász et al. 2025, Table 4 and Fig. 7).

    Parameters
    ----------
    channels : list of int, length ``2 n_down + 1``
        Output channels of the encoder blocks; the decoder mirrors them.
    n_down : int
        Number of k4 s2 downsampling blocks.
    size : int
        Side of the square input (64, 96 or 128 ...: a multiple of ``2**n_down``).
    in_channels : int
        Image channels (1).
    """

    def __init__(self, channels: list[int], n_down: int = 5, size: int = 96,
                 in_channels: int = 1) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if n_down < 1 or len(channels) != 2 * n_down + 1:
            raise InputError(f"U-Net: channels must list 2 * n_down + 1 = {2 * n_down + 1} "
                             f"values, got {len(channels)}")
        if size % (2 ** n_down) or size // (2 ** n_down) < 1:
            raise InputError(f"U-Net: input size {size} must be a multiple of 2**n_down = "
                             f"{2 ** n_down}")
        self.size = int(size)
        self.channels = channels
        self.n_down = int(n_down)
        last_k = size // (2 ** n_down)  # Table 4: 3 for 96 x 96 inputs
        n = len(channels)
        enc = []
        cin = in_channels
        for i, c in enumerate(channels, start=1):
            if i == 1:
                k, s, p = 3, 1, 1
            elif i == n:
                k, s, p = last_k, 1, 0
            elif i % 2 == 0:
                k, s, p = 4, 2, 1
            else:
                k, s, p = 3, 1, 1
            enc.append(PCDown(cin, c, k, s, p))
            cin = c
        self.encoder = nn.ModuleList(enc)
        dec = []
        for j in range(1, n + 1):
            if j == 1:
                dec.append(PCUp(channels[-1], channels[-2], last_k, 1, 0))
                continue
            skip = channels[n - j]  # encoder block n - j + 1 (1-based)
            cin = dec[-1].conv.out_channels + skip
            cout = in_channels if j == n else channels[n - j - 1]
            if j % 2 == 0:
                k, s, p = 4, 2, 1
            else:
                k, s, p = 3, 1, 1
            dec.append(PCUp(cin, cout, k, s, p, last=(j == n)))
        self.decoder = nn.ModuleList(dec)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            raise InputError(f"U-Net built for {self.size} x {self.size} inputs, got "
                             f"{tuple(x.shape[-2:])}")
        feats, masks = [], []
        h, m = x, mask
        for block in self.encoder:
            h, m = block(h, m)
            feats.append(h)
            masks.append(m)
        n = len(self.encoder)
        h, m = self.decoder[0](feats[-1], masks[-1])
        for j in range(2, n + 1):
            e, em = feats[n - j], masks[n - j]
            h = torch.cat([h, e], dim=1)
            m = torch.maximum(m, em)  # one shared mask: valid where either half is valid
            h, m = self.decoder[j - 1](h, m)
        return h


def arch_for(preset: str = "default", size: int = 96, **overrides: Any) -> dict[str, Any]:
    """The ``arch`` dict of a preset (``default`` or ``paper``) at input ``size``."""
    if preset not in PRESETS:
        raise InputError(f"unknown U-Net preset {preset!r}; expected one of "
                         f"{', '.join(PRESETS)}")
    arch = {"preset": preset, "size": int(size), **PRESETS[preset]}
    arch["channels"] = list(arch["channels"])
    arch.update(overrides)
    return arch


def build_from_arch(arch: dict) -> PConvUNet:
    """Build the network from a model card's ``arch`` (the registry entry of kind inpaint)."""
    arch = dict(arch)
    preset = arch.pop("preset", None)
    base = dict(PRESETS.get(preset, {})) if preset else {}
    base.update(arch)
    if "channels" not in base:
        raise InputError(f"U-Net arch needs channels or a known preset, got {arch}")
    return PConvUNet(channels=base["channels"], n_down=int(base.get("n_down", 5)),
                     size=int(base.get("size", 96)), in_channels=int(base.get("in_channels", 1)))
