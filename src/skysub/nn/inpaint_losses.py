"""Losses of the inpainting U-Net (Madarász et al. eq. 2-7), pure torch.

``L = 2 L_valid + 6 L_hole + 120 (L_style,out + L_style,comp) + 0.4 L_SSIM + L_source``
(eq. 7), with every weight configurable (:class:`InpaintLossWeights`).

Style features.  The paper takes Gram matrices of ImageNet VGG-16 features; no pretrained
weights can be downloaded here, and VGG's filters were learnt on photographs, not on dust
maps.  skysub uses :class:`RandomFeatures` instead: a fixed, seeded, untrained stack of
multi-scale convolutions (3 stages, 16 channels each, ReLU, average-pool by 2 between stages).
Ustyuzhaninov et al. (2017, "What does it take to generate natural textures?", ICLR) showed
that Gram matrices of *random* multi-scale filters capture texture about as well as VGG's for
texture synthesis -- and texture (noise and small-scale structure) is what the style loss is
for here.  The extractor is rebuilt from its seed, needs no file, and is never saved with the
model.

Source loss.  Eq. 6, ``|| (I_orig - I_gt) - (I_orig - I_pred) ||_1``, is algebraically
``|| I_pred - I_gt ||_1`` over the whole cutout (``I_orig`` cancels); it is implemented as
written (mean over pixels).  skysub adds an optional *flux* term (weight 0 by default, set in
the training configuration): the absolute error of the summed hole, ``|sum_hole(I_pred -
I_gt)| / N_pix``, which is exactly the aperture-flux error of the removed source and so
targets the photometric bias directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class InpaintLossWeights:
    """Weights of eq. 7 (Madarász et al.) plus skysub's optional flux term."""

    valid: float = 2.0
    hole: float = 6.0
    style: float = 120.0
    ssim: float = 0.4
    source: float = 1.0
    flux: float = 0.0

    @classmethod
    def from_dict(cls, d: dict | None) -> InpaintLossWeights:
        from ..config import check_keys

        d = dict(d or {})
        check_keys(d, asdict(cls()), "the loss weights ([removal.train.loss])")
        return cls(**{k: float(v) for k, v in d.items()})


class RandomFeatures(nn.Module):
    """Fixed random multi-scale convolutional features for the style loss (see module doc).

    Weights are drawn from ``seed`` with a local generator (the global RNG is untouched) and
    frozen; they are buffers, not parameters, and never enter a model file.
    """

    def __init__(self, stages: int = 3, channels: int = 16, seed: int = 1234) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        cin = 1
        self.n = int(stages)
        for i in range(self.n):
            k = 3 if i else 5
            w = torch.randn(channels, cin, k, k, generator=g)
            w /= w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # unit-norm filters
            self.register_buffer(f"w{i}", w, persistent=False)
            cin = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        h = x
        for i in range(self.n):
            w = getattr(self, f"w{i}")
            h = F.relu(F.conv2d(h, w, padding=w.shape[-1] // 2))
            feats.append(h)
            if i < self.n - 1:
                h = F.avg_pool2d(h, 2)
        return feats


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix normalised by C * H * W (K_p of eq. 3): (N, C, C)."""
    n, c, h, w = f.shape
    v = f.reshape(n, c, h * w)
    return v @ v.transpose(1, 2) / (c * h * w)


def style_loss(features: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over stages of mean |Gram(a) - Gram(b)| (eq. 3, 1/C_p^2 by the mean)."""
    total = a.new_zeros(())
    for fa, fb in zip(features(a), features(b), strict=True):
        total = total + (gram(fa) - gram(fb)).abs().mean()
    return total


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, k1: float = 0.01,
         k2: float = 0.03, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004, eq. 5 of the paper) of (N, 1, H, W) images.

    Local statistics in an 11 x 11 Gaussian window (sigma 1.5, as Kornia's default), valid
    region only (no padding); ``c1 = (k1 L)^2``, ``c2 = (k2 L)^2`` with ``L = data_range``.
    """
    g = torch.arange(window, device=x.device, dtype=x.dtype) - (window - 1) / 2
    g = torch.exp(-0.5 * (g / sigma) ** 2)
    g = g / g.sum()
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    # the Gaussian window is separable: two 1-D passes over the five maps at once (unfold +
    # matmul is ~4x faster on CPU than a single-channel 11 x 11 conv2d, same numbers)
    n = x.shape[0]
    z = torch.cat([x, y, x * x, y * y, x * y])
    z = z.unfold(2, window, 1).matmul(g).unfold(3, window, 1).matmul(g)
    mx, my, exx, eyy, exy = z.split(n)
    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


class InpaintLoss(nn.Module):
    """Eq. 7 of Madarász et al. on normalised cutouts.

    ``forward(pred, target, mask, image)`` with (N, 1, H, W) tensors: the network output,
    the source-free truth, the mask (1 = valid) and the input with the sources; returns the
    total loss, and :meth:`terms` returns every term (for logging).
    """

    def __init__(self, weights: InpaintLossWeights | dict | None = None, *,
                 feature_seed: int = 1234, style_samples: int | None = None) -> None:
        super().__init__()
        #: compute the style term on the first ``style_samples`` cutouts of each batch only
        #: (batches are shuffled, so an unbiased estimate of the batch mean at a fraction of
        #: the cost: the random-feature convolutions dominate a training step on CPU)
        self.style_samples = style_samples
        if not isinstance(weights, InpaintLossWeights):
            weights = InpaintLossWeights.from_dict(weights)
        self.weights = weights
        self.features = RandomFeatures(seed=feature_seed)

    def terms(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
              image: torch.Tensor) -> dict[str, torch.Tensor]:
        w = self.weights
        hole = 1.0 - mask
        zero = pred.new_zeros(())
        t: dict[str, torch.Tensor] = {}
        t["valid"] = (mask * (pred - target)).abs().mean()  # eq. 2, / (C H W)
        t["hole"] = (hole * (pred - target)).abs().mean()
        if w.style:
            k = self.style_samples
            if k is not None and 0 < k < pred.shape[0]:
                pred_s, target_s, mask_s = pred[:k], target[:k], mask[:k]
            else:
                pred_s, target_s, mask_s = pred, target, mask
            comp = mask_s * target_s + (1.0 - mask_s) * pred_s
            # = style_loss(pred, target) + style_loss(comp, target), with the target's
            # features computed once (no gradient) and pred / comp in one batched pass
            n = pred_s.shape[0]
            with torch.no_grad():
                g_t = [gram(f) for f in self.features(target_s)]
            total = pred.new_zeros(())
            for f, gt in zip(self.features(torch.cat([pred_s, comp])), g_t, strict=True):
                g = gram(f)
                total = total + (g[:n] - gt).abs().mean() + (g[n:] - gt).abs().mean()
            t["style"] = total
        else:
            t["style"] = zero
        t["ssim"] = 1.0 - ssim(target, pred) if w.ssim else zero  # eq. 4
        t["source"] = ((image - target) - (image - pred)).abs().mean()  # eq. 6
        if w.flux:
            n_pix = pred.shape[-1] * pred.shape[-2]
            t["flux"] = ((hole * (pred - target)).sum(dim=(1, 2, 3)).abs() / n_pix).mean()
        else:
            t["flux"] = zero
        return t

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                image: torch.Tensor) -> torch.Tensor:
        t = self.terms(pred, target, mask, image)
        w = self.weights
        return (w.valid * t["valid"] + w.hole * t["hole"] + w.style * t["style"]
                + w.ssim * t["ssim"] + w.source * t["source"] + w.flux * t["flux"])
