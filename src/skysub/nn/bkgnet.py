"""BKGnet: a CNN that predicts the background under a source and its 1-sigma error
(Cabayol-Garcia et al. 2019, §3).  Pure torch: stamps in, numbers out.

Inputs (one row per source)
---------------------------
- a square stamp centred on the source whose central ``mask_size`` x ``mask_size`` pixels are
  hidden (BKGnet hides 16 x 16 so that the net never sees the r = 8 px label circle);
- the stamp's CCD position, normalised to [-1, 1] by the image size;
- the source magnitude (optional: absent magnitudes are replaced by a learned default);
- the band x epoch index, through an embedding of ``embed_dim`` (10) numbers.

Normalisation (:func:`normalise_stamps`, the SAME function in training and inference)
------------------------------------------------------------------------------------
Each stamp is shifted and scaled by a location and scale computed from its VALID pixels only
(pixels off the image, masked, NaN and the central mask never enter; the published code lets
padded zeros in).  skysub departs from the paper's mean and std here: it uses the median and
the MAD-based sigma of the valid pixels (on a 2x2-subsampled grid, for speed; torch's median is
the lower of the two middle values), because a single
bright star in the stamp inflates the std tenfold and would squeeze the sky into a sliver of the
input range.  Pixel values are then compressed above ~5 sigma by ``5 asinh(v / 5)`` (linear
below), invalid pixels are set to 0 and a second input channel carries the validity mask, so
that the net can tell "no data" from "sky at the median".

Outputs: ``mu`` and ``log_sigma`` in normalised units; the background per pixel is
``loc + scale * mu`` and its error ``scale * exp(log_sigma)`` (:func:`denormalise`).  Training
minimises the Gaussian negative log-likelihood (BKGnet eq. 4) of the normalised label, which
equals the likelihood in image units up to a constant per stamp: training and inference use one
convention (the published training and inference code disagree).

Presets
-------
``lean`` (default): four strided conv -> batch-norm -> LeakyReLU blocks (16-32-48-64 channels,
120 -> 60 -> 30 -> 15 -> 8 px), ~22 MFLOP per 120 px stamp, batch-norm folded into the convolutions
at inference (:func:`fuse_for_inference`).  ``paper``: the published layout as far as the paper
describes it -- five conv -> max-pool -> batch-norm blocks and a wide dense head (~6 M
parameters, ~1.4 GFLOP per stamp).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .blocks import PresetArch, arch_kwargs, conv_trunk

#: compression of bright pixels: linear below ~ASINH_SCALE sigma, logarithmic above
ASINH_SCALE = 5.0
#: log sigma outputs are clamped to this range (normalised units) for numerical safety
LOG_SIGMA_RANGE = (-9.0, 5.0)
#: magnitude input: (mag - MAG_ZERO) / MAG_SCALE
MAG_ZERO, MAG_SCALE = 21.0, 2.0
#: stamp scale = MAD_SIGMA x the MAD of the valid pixels, at least SCALE_FLOOR_REL x |location|
#: and SCALE_FLOOR_ABS (:func:`normalise_stamps`)
MAD_SIGMA, SCALE_FLOOR_REL, SCALE_FLOOR_ABS = 1.4826, 1e-4, 1e-6

PRESETS = {
    "lean": {"block": "strided", "channels": [16, 32, 48, 64], "kernels": [4, 3, 3, 3],
             "hidden": [96, 64]},
    "paper": {"block": "pooled", "channels": [64, 128, 256, 256, 256], "kernels": [3] * 5,
              "hidden": [1600, 500]},
}


@dataclass
class BKGnetArch(PresetArch):
    """Hyper-parameters of a BKGnet (stored in the model card's ``arch``)."""

    PRESETS: ClassVar[dict] = PRESETS
    NAME: ClassVar[str] = "BKGnet"

    stamp_size: int = 120
    mask_size: int = 16
    n_keys: int = 1
    embed_dim: int = 10
    preset: str = "lean"
    block: str = "strided"
    channels: tuple[int, ...] = (16, 32, 48, 64)
    kernels: tuple[int, ...] = (4, 3, 3, 3)
    hidden: tuple[int, ...] = (96, 64)
    use_coords: bool = True
    use_mag: bool = True


class BKGnet(nn.Module):
    """The network.  ``forward(x, coords, mag, has_mag, key) -> (mu, log_sigma)``.

    Parameters of ``forward``
    -------------------------
    x : (B, 2, S, S) float -- normalised stamp and validity channel (:func:`normalise_stamps`)
    coords : (B, 2) float -- CCD (x, y) scaled to [-1, 1]
    mag : (B,) float -- magnitude (any value where ``has_mag`` is 0)
    has_mag : (B,) float -- 1 where the magnitude is known
    key : (B,) long -- band x epoch index in [0, n_keys)
    """

    def __init__(self, arch: BKGnetArch) -> None:
        super().__init__()
        self.arch = arch
        self.trunk = conv_trunk(arch.block, arch.channels, arch.kernels, 2)
        with torch.no_grad():
            n_feat = self.trunk(torch.zeros(1, 2, arch.stamp_size, arch.stamp_size)).numel()
        h0, *rest = arch.hidden
        self.reduce = nn.Sequential(nn.Flatten(), nn.Linear(n_feat, h0), nn.LeakyReLU(0.1))
        self.embed = nn.Embedding(max(int(arch.n_keys), 1), arch.embed_dim)
        self.default_mag = nn.Parameter(torch.zeros(1))
        n_extra = arch.embed_dim + (2 if arch.use_coords else 0) + (2 if arch.use_mag else 0)
        head: list[nn.Module] = []
        cin = h0 + n_extra
        for h in rest:
            head += [nn.Linear(cin, h), nn.LeakyReLU(0.1)]
            cin = h
        head.append(nn.Linear(cin, 2))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor, coords: torch.Tensor, mag: torch.Tensor,
                has_mag: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.reduce(self.trunk(x))
        extra = [f, self.embed(key)]
        if self.arch.use_coords:
            extra.append(coords)
        if self.arch.use_mag:
            m = torch.where(has_mag > 0, (mag - MAG_ZERO) / MAG_SCALE, self.default_mag)
            extra += [m[:, None], has_mag[:, None]]
        out = self.head(torch.cat(extra, dim=1))
        mu = out[:, 0]
        log_sigma = out[:, 1].clamp(*LOG_SIGMA_RANGE)
        return mu, log_sigma


def build_from_arch(arch: dict) -> BKGnet:
    """Rebuild a BKGnet from a model card's ``arch`` (the registry entry of kind "bkgnet")."""
    return BKGnet(BKGnetArch(**arch_kwargs(BKGnetArch, arch)))


def central_slice(size: int, mask_size: int) -> slice:
    """Stamp rows/columns hidden from the net: ``mask_size`` pixels centred on ``size // 2``."""
    c0 = size // 2 - mask_size // 2
    return slice(c0, c0 + mask_size)


def normalise_stamps(stamps: torch.Tensor, valid: torch.Tensor, mask_size: int, *,
                     min_valid: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]:
    """Per-stamp normalisation from valid pixels only (see the module notes).

    Parameters
    ----------
    stamps : (B, S, S) float tensor (any value where invalid)
    valid : (B, S, S) bool tensor
    mask_size : side of the hidden central square
    min_valid : stamps with fewer valid (unhidden) pixels on the 2x2-subsampled grid are
        reported in ``ok`` as False

    Returns
    -------
    x : (B, 2, S, S) float32 -- compressed normalised pixels (0 where invalid) and validity
    loc, scale : (B,) float64 -- ``pixel = loc + scale * normalised``
    ok : (B,) bool -- enough valid pixels
    """
    stamps = stamps.to(torch.float32)
    valid = valid.clone()
    cs = central_slice(stamps.shape[-1], mask_size)
    valid[:, cs, cs] = False
    sub = torch.where(valid[:, ::2, ::2], stamps[:, ::2, ::2], torch.nan).flatten(1)
    ok = (~torch.isnan(sub)).sum(1) >= min_valid
    loc = torch.nanmedian(sub, dim=1).values
    mad = torch.nanmedian((sub - loc[:, None]).abs(), dim=1).values
    scale = MAD_SIGMA * mad
    floor = torch.clamp(SCALE_FLOOR_REL * loc.abs(), min=SCALE_FLOOR_ABS)
    scale = torch.where(torch.isfinite(scale) & (scale > floor), scale, torch.maximum(floor, scale
                        .nan_to_num(0.0)))
    loc = loc.nan_to_num(0.0)
    v = (stamps - loc[:, None, None]) / scale[:, None, None]
    v = ASINH_SCALE * torch.asinh(v / ASINH_SCALE)
    v = torch.where(valid, v, torch.zeros((), dtype=v.dtype))
    x = torch.stack([v, valid.to(v.dtype)], dim=1)
    return x, loc.double(), scale.double(), ok


def denormalise(mu: torch.Tensor, log_sigma: torch.Tensor, loc: torch.Tensor,
                scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Background and network sigma in image units."""
    return loc + scale * mu.double(), scale * torch.exp(log_sigma.double())


def gaussian_nll(mu: torch.Tensor, log_sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BKGnet eq. 4, ``(mu - y)^2 / sigma^2 + 2 log sigma``, averaged over the batch."""
    return (((mu - y) * torch.exp(-log_sigma)) ** 2 + 2.0 * log_sigma).mean()


def fuse_for_inference(model: BKGnet) -> BKGnet:
    """Fold each BatchNorm that follows a convolution into it (strided preset), in place.

    Exact in eval mode: ``BN(conv(x)) = conv'(x)`` with ``w' = w g / s``,
    ``b' = beta + (b - mean) g / s`` (``s = sqrt(var + eps)``).  Saves a pass over every feature
    map.  Models whose BN follows a pooling layer (``paper``) are returned unchanged.
    """
    model.eval()
    if model.arch.block != "strided":
        return model
    new: list[nn.Module] = []
    mods = list(model.trunk)
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1],
                                                                         nn.BatchNorm2d):
            bn = mods[i + 1]
            s = torch.sqrt(bn.running_var + bn.eps)
            g = bn.weight / s
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                             padding=m.padding, bias=True)
            with torch.no_grad():
                conv.weight.copy_(m.weight * g[:, None, None, None])
                b0 = m.bias if m.bias is not None else torch.zeros_like(bn.running_mean)
                conv.bias.copy_(bn.bias + (b0 - bn.running_mean) * g)
            new.append(conv)
            i += 2
        else:
            new.append(m)
            i += 1
    model.trunk = nn.Sequential(*new)
    return model


def flops_per_stamp(model: BKGnet) -> float:
    """Multiply-adds x 2 of one forward pass (convolutions and dense layers)."""
    total = 0.0
    s = model.arch.stamp_size
    x = torch.zeros(1, 2, s, s)
    for m in model.trunk:
        y = m(x)
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            total += 2.0 * y.numel() * m.in_channels * k
        x = y
    for m in list(model.reduce) + list(model.head):
        if isinstance(m, nn.Linear):
            total += 2.0 * m.in_features * m.out_features
    return total


def n_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def label_sigma(bkg, n_pix, gain, rdnoise):
    """BKGnet eq. 3 for the mean of ``n_pix`` pixels, in image units (ADU):
    ``sigma_label^2 = (b g + RN^2) / (g^2 N_a)`` (Poisson background plus read noise).  The
    paper's printed form ``N_a b / t`` is for the sum of pixels in e-/s; for the MEAN per pixel
    in counts it is this."""
    import numpy as np

    b = np.maximum(np.asarray(bkg, float), 0.0)
    return np.sqrt((b * gain + rdnoise**2) / (gain**2 * np.maximum(n_pix, 1)))


def predicted_sigma(sigma_net, sigma_label):
    """BKGnet eq. 5, ``sigma_pred = sqrt(sigma_net^2 - sigma_label^2)``, floored at 30 % of
    ``sigma_net`` where the network's sigma is not larger than the label's (the difference of
    two noisy numbers; the floor keeps pulls finite and is reported in the docs)."""
    import numpy as np

    s2 = np.asarray(sigma_net, float) ** 2 - np.asarray(sigma_label, float) ** 2
    floor = (0.3 * np.asarray(sigma_net, float)) ** 2
    return np.sqrt(np.maximum(s2, floor))


__all__ = ["BKGnet", "BKGnetArch", "PRESETS", "build_from_arch", "normalise_stamps",
           "denormalise", "gaussian_nll", "fuse_for_inference", "flops_per_stamp",
           "n_parameters", "label_sigma", "predicted_sigma", "central_slice"]
