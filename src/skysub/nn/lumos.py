"""Lumos: a CNN + mixture density network that predicts a galaxy's background-subtracted flux
as a PDF, a mixture of 5 Gaussians (Cabayol et al. 2021, §4).  Pure torch: tensors in, tensors out.

Inputs (one row per source)
---------------------------
- ``x`` (B, 3 or 4, S, S): the cutout normalised by :func:`skysub.nn.bkgnet.normalise_stamps`
  (median and MAD-sigma of its valid pixels, ``5 asinh(v/5)``, 0 where invalid), its validity
  channel, the PSF-convolved model profile drawn from the catalogue shape, scaled to a peak of
  1, and (``arch.neighbours``, skysub's addition) the catalogued neighbours' models weighted by
  their reference fluxes;
- ``feats`` (B, 3 or 4): summary features computed from the same images by
  :func:`stamp_features` -- the matched-filter flux ``f_ref`` of the (uncompressed) normalised
  cutout against the model (jointly fitted with the neighbour image when there is one),
  expressed as an SNR, and ``log s_ref`` (its noise in normalised units) -- plus the model's
  log peak (and the target-only matched-filter SNR);
- ``coords`` (B, 2): CCD x, y scaled to [-1, 1]; ``mag``/``has_mag`` (B,): the reference
  (i-band) magnitude; ``key`` (B,): band x epoch index through an embedding of 10 numbers.

Outputs: mixture weights ``alpha`` (softmax), means ``mu`` and widths ``sigma`` of 5 components
in NORMALISED flux units (flux / (scale * FLUX_UNIT), ``scale`` the cutout's pixel-noise sigma).

Departures from the paper (documented in docs/lumos.md)
------------------------------------------------------
- The component means are parametrised as ``mu_k = f_ref + s_ref * r_k`` and widths as
  ``sigma_k = s_ref * exp(l_k)``: the network outputs corrections in units of the expected noise,
  which keeps the head well scaled from i = 18 to 23 (the paper's MDN outputs raw values and
  needs ~20 GPU hours and 500,000 stamps; we have minutes on 2 CPU cores).  ``f_ref`` and
  ``s_ref`` are deterministic functions of the two input images, so nothing outside the paper's
  inputs is used.
- ``lean`` preset (default): 4 strided conv -> BN -> LeakyReLU blocks and a small dense head
  (~5 MFLOP per stamp).  ``paper``: 5 conv -> max-pool -> BN blocks and the 5000:1000:100:15 MDN
  (the published layout as far as the paper describes it, ~0.4 GFLOP per stamp).

Losses (all return the batch mean; the derivations are in docs/lumos.md)
-----------------------------------------------------------------------
- :func:`mdn_nll` -- eq. 8 written as the negative log of the mixture density,
  ``-log sum_k alpha_k N(y; mu_k, sigma_k)`` (the paper prints the sum outside the logarithm);
- :func:`mdn_nll_truncated` -- eq. 10: every component truncated to [0, inf) and renormalised,
  ``-log sum_k alpha_k N(y; mu_k, sigma_k) / Phi(mu_k / sigma_k)`` with
  ``Phi(z) = (1 + erf(z / sqrt 2)) / 2``.  The truncation term uses the COMPONENT mean ``mu_k``
  (the published code puts the label inside the erf and drops the 1/2);
- :func:`pair_overlap_nll` -- eq. 11: ``-log int_0^inf p1(f) p2(f) df`` for two truncated
  mixtures, with the closed form of the overlap of two Gaussians on [0, inf);
- :func:`lumos_loss` -- eq. 8 for ``mag < faint_mag`` (paper: 20.5), eq. 10 for fainter ones;
  eq. 8 for the data-only mode's rows (the likelihood, which may extend below zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .bkgnet import MAG_SCALE, MAG_ZERO, normalise_stamps
from .blocks import PresetArch, arch_kwargs, conv_trunk

#: normalised flux unit: flux_norm = flux / (pixel sigma * FLUX_UNIT)
FLUX_UNIT = 10.0
#: log-width corrections are clamped to this range
LOG_SIGMA_RANGE = (-7.0, 5.0)
N_COMPONENTS = 5
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

PRESETS = {
    "lean": {"block": "strided", "channels": [16, 32, 48, 64], "kernels": [4, 3, 3, 3],
             "hidden": [128, 64]},
    "paper": {"block": "pooled", "channels": [64, 128, 256, 256, 256], "kernels": [3] * 5,
              "hidden": [5000, 1000, 100]},
}


@dataclass
class LumosArch(PresetArch):
    """Hyper-parameters of a Lumos network (stored in the model card's ``arch``)."""

    PRESETS: ClassVar[dict] = PRESETS
    NAME: ClassVar[str] = "Lumos"

    stamp_size: int = 60
    n_keys: int = 1
    embed_dim: int = 10
    n_components: int = N_COMPONENTS
    preset: str = "lean"
    block: str = "strided"
    channels: tuple[int, ...] = (16, 32, 48, 64)
    kernels: tuple[int, ...] = (4, 3, 3, 3)
    hidden: tuple[int, ...] = (128, 64)
    use_coords: bool = True
    use_mag: bool = True
    neighbours: bool = False
    #: feed the SNR features to the dense head as asinh(snr / 10) (bright sources' SNRs of
    #: hundreds destabilised training); the reference flux still uses the raw SNR
    compress_feats: bool = False
    #: with ``neighbours``: fit the neighbour image jointly with the target in the reference
    #: flux (True), or keep the target-only matched filter and give the head the neighbours'
    #: light in that filter as a feature (False; the joint fit is ill-conditioned for close
    #: pairs and over-subtracted them)
    neighbour_fit: bool = True
    #: with ``neighbours`` and not ``neighbour_fit``: when the target's magnitude is known,
    #: deblend its matched-filter flux by the catalogue's flux ratio, ``f_ref = f_one / (1 + c)``
    #: with ``c`` the neighbours' catalogue light in the target's filter over the target's own
    #: catalogue flux, and give the head ``log(1 + c)`` (an i = 20 neighbour 5 px from an
    #: i = 22 target was under-subtracted by 13 % without it)
    neighbour_ratio: bool = False
    #: with ``neighbour_ratio``: where the target's magnitude is unknown (the data-only mode)
    #: deblend the matched filter by the neighbours' amplitude in a joint fit of the target and
    #: the neighbour image -- a magnitude-free deblend: ``f_ref = f_one - a_q+ sum p q / sum p^2``
    #: and ``c`` = that light over ``max(f_ref, s_ref)`` (without it the data-only mode has
    #: ``c = 0``: no deblend at all)
    data_deblend: bool = False


class Lumos(nn.Module):
    """The network.  ``forward(x, feats, coords, mag, has_mag, key) -> (alpha, mu, sigma)``.

    All outputs are (B, K) in normalised flux units; ``alpha`` sums to 1 per row.  The last
    dense layer (``self.last``) is what unsupervised transfer learning fine-tunes.
    """

    def __init__(self, arch: LumosArch) -> None:
        super().__init__()
        self.arch = arch
        self.in_channels = 4 if arch.neighbours else 3
        self.N_FEATS = ((4 if arch.neighbour_fit else 5 + bool(arch.neighbour_ratio))
                        if arch.neighbours else 3)
        self.trunk = conv_trunk(arch.block, arch.channels, arch.kernels, self.in_channels,
                                ceil_mode=True)
        with torch.no_grad():
            n_feat = self.trunk(torch.zeros(1, self.in_channels, arch.stamp_size,
                                            arch.stamp_size)).numel()
        h0, *rest = arch.hidden
        self.reduce = nn.Sequential(nn.Flatten(), nn.Linear(n_feat, h0), nn.LeakyReLU(0.1))
        self.embed = nn.Embedding(max(int(arch.n_keys), 1), arch.embed_dim)
        self.default_mag = nn.Parameter(torch.zeros(1))
        n_extra = arch.embed_dim + self.N_FEATS + (2 if arch.use_coords else 0) + \
            (2 if arch.use_mag else 0)
        head: list[nn.Module] = []
        cin = h0 + n_extra
        for h in rest:
            head += [nn.Linear(cin, h), nn.LeakyReLU(0.1)]
            cin = h
        self.head = nn.Sequential(*head)
        self.last = nn.Linear(cin, 3 * arch.n_components)
        with torch.no_grad():  # start near "the matched filter, +-1 sigma"
            self.last.weight.mul_(0.1)
            self.last.bias.zero_()
            k = arch.n_components
            self.last.bias[k:2 * k] = torch.linspace(-1.0, 1.0, k)

    def forward(self, x: torch.Tensor, feats: torch.Tensor, coords: torch.Tensor,
                mag: torch.Tensor, has_mag: torch.Tensor, key: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.reduce(self.trunk(x))
        snr, log_s = feats[:, 0], feats[:, 1]
        if self.arch.compress_feats:
            head_feats = torch.cat([torch.asinh(feats[:, :1] / 10.0), feats[:, 1:3],
                                    torch.asinh(feats[:, 3:5] / 10.0), feats[:, 5:]], dim=1)
        else:
            head_feats = feats
        extra = [f, self.embed(key), head_feats]
        if self.arch.use_coords:
            extra.append(coords)
        if self.arch.use_mag:
            m = torch.where(has_mag > 0, (mag - MAG_ZERO) / MAG_SCALE, self.default_mag)
            extra += [m[:, None], has_mag[:, None]]
        h = self.head(torch.cat(extra, dim=1))
        out = self.last(h)
        k = self.arch.n_components
        alpha = torch.softmax(out[:, :k], dim=1)
        s_ref = torch.exp(log_s)[:, None]
        f_ref = (snr * torch.exp(log_s))[:, None]
        mu = f_ref + s_ref * out[:, k:2 * k]
        sigma = s_ref * torch.exp(out[:, 2 * k:].clamp(*LOG_SIGMA_RANGE))
        return alpha, mu, sigma


def build_from_arch(arch: dict) -> Lumos:
    """Rebuild a Lumos network from a model card's ``arch`` (registry kind "lumos")."""
    return Lumos(LumosArch(**arch_kwargs(LumosArch, arch)))


# -- inputs ---------------------------------------------------------------------------------------

def stamp_features(cutouts: torch.Tensor, valid: torch.Tensor, models: torch.Tensor,
                   neighbours: torch.Tensor | None = None, joint: bool = True,
                   ref_flux: torch.Tensor | None = None, data_deblend: bool = False,
                   also_unknown: bool = False) -> tuple[torch.Tensor, ...]:
    """Network inputs from cutouts and unit-total model images (the SAME function in training
    and inference).

    Parameters
    ----------
    cutouts : (B, S, S) float, image units (any value where invalid)
    valid : (B, S, S) bool
    models : (B, S, S) float, PSF-convolved model of unit total flux centred like the source
    neighbours : (B, S, S) float, optional -- the catalogued neighbours' models times their
        reference fluxes (:func:`skysub.simulate.galaxies.neighbour_map`); adds a channel and
        (``joint``) makes the reference flux a joint fit of the target and the neighbours
    joint : with ``neighbours``: the joint fit (True), or the target-only matched filter plus
        the features ``sum p q / sum p^2`` -- the neighbours' catalogue light that filter picks
        up, in reference-flux units -- and the joint fit's SNR (False)
    ref_flux : (B,) float, optional (only without ``joint``) -- the target's catalogue
        reference flux (:func:`skysub.simulate.galaxies.reference_flux`, the neighbour image's
        units), NaN where unknown: the catalogue flux-ratio deblend (``LumosArch.neighbour_ratio``)
    data_deblend : with ``ref_flux``: where it is NaN, deblend by the joint fit instead
        (``LumosArch.data_deblend``)
    also_unknown : with ``ref_flux``, also return (fifth) the features every row would get with
        its ``ref_flux`` unknown -- the data-only mode's inputs -- from the same pass

    Returns
    -------
    x : (B, C, S, S) float32 -- normalised cutout, validity, model / its peak (and
        ``asinh(neighbours / model peak)``)
    feats : (B, F) float32 -- reference SNR ``f_ref / s_ref``, ``log s_ref``, log model peak
        (and the target-only matched-filter SNR, or without ``joint`` the neighbours' light in
        the matched filter and the joint fit's SNR, and with ``ref_flux`` ``log(1 + c)``)
    unit : (B,) float64 -- image units per normalised flux unit (``scale * FLUX_UNIT``)
    ok : (B,) bool -- enough valid pixels

    ``f_ref`` is the matched-filter flux (optimal weights in the faint limit:
    ``sum p v / sum p^2``, variance ``1 / sum p^2``); with ``neighbours`` it is the target's
    amplitude in a joint linear fit of the target model ``p`` and the neighbour image ``q``
    (free amplitude), whose variance is the (1, 1) element of the inverse normal matrix.
    With ``ref_flux`` (and without ``joint``) it is the matched filter deblended by the
    catalogue's flux ratio: ``f_one / (1 + c)``, ``c = (sum p q / sum p^2) / ref_flux`` the
    neighbours' share of the filter relative to the target (0 where ``ref_flux`` is unknown;
    the noise unit ``s_ref`` stays the matched filter's).  It assumes the neighbours have the
    target's colour; the head learns the colour scatter's consequences.  With ``data_deblend``
    the rows of unknown ``ref_flux`` subtract the neighbours' light as the joint fit measures it
    (amplitude ``a_q`` of the neighbour image, clipped at 0): ``f_ref = f_one - a_q pq / pp``
    (the joint fit's target amplitude when ``a_q > 0``) and ``c`` = that light over
    ``max(f_ref, s_ref)``; no magnitude enters.
    """
    xin, loc, scale, ok = normalise_stamps(cutouts, valid, 0)
    zero = torch.zeros((), dtype=torch.float64)
    v = torch.where(valid, (cutouts.double() - loc[:, None, None]) / scale[:, None, None], zero)
    p = torch.where(valid, models.double(), zero)
    pp = (p * p).sum((1, 2)).clamp_min(1e-12)
    pv = (p * v).sum((1, 2))
    f_one, s_one = pv / pp / FLUX_UNIT, 1.0 / torch.sqrt(pp) / FLUX_UNIT
    peak = models.double().amax((1, 2)).clamp_min(1e-12)
    mimg = (models.double() / peak[:, None, None]).float()
    chans = [xin, mimg[:, None]]
    if neighbours is None:
        f_ref, s_ref = f_one, s_one
        extra: list[torch.Tensor] = []
    else:
        q = torch.where(valid, neighbours.double(), zero)
        qq, pq, qv = (q * q).sum((1, 2)), (p * q).sum((1, 2)), (q * v).sum((1, 2))
        qq = qq + 1e-6 * pp  # a vanishing neighbour image leaves the single fit
        det = pp * qq - pq * pq
        f_joint = (qq * pv - pq * qv) / det / FLUX_UNIT
        s_joint = torch.sqrt(qq / det) / FLUX_UNIT
        chans.append(torch.asinh(neighbours.double() / peak[:, None, None]).float()[:, None])
        if joint:
            f_ref, s_ref = f_joint, s_joint
            extra = [f_one / s_one]
        else:  # the single fit stays the reference; the joint fit is a hint the head may use
            f_ref, s_ref = f_one, s_one
            extra = [pq / pp, f_joint / s_joint]
            if ref_flux is not None:
                if data_deblend:  # magnitude unknown: the neighbours' amplitude from the pixels
                    light = ((pp * qv - pq * pv) / det).clamp_min(0.0) * pq / pp / FLUX_UNIT
                    f_d = f_one - light
                    c_d = light / torch.maximum(f_d, s_one)
                else:
                    f_d, c_d = f_one, torch.zeros_like(f_one)

                def deblended(ref):  # (f_ref, log(1 + c)) for catalogue fluxes ref (NaN unknown)
                    c = (pq / pp) / ref.double()
                    known = torch.isfinite(c)
                    c = c.clamp_min(0.0)
                    return (torch.where(known, f_one / (1.0 + c), f_d),
                            torch.log1p(torch.where(known, c, c_d)))

                f_ref, lc = deblended(ref_flux)
                extra.append(lc)
    x = torch.cat(chans, dim=1)

    def stack(f_ref, extra):
        return torch.stack([f_ref / s_ref, torch.log(s_ref), torch.log(peak), *extra],
                           dim=1).float()

    feats = stack(f_ref, extra)
    if not also_unknown:
        return x, feats, scale * FLUX_UNIT, ok
    if ref_flux is None or neighbours is None or joint:
        raise ValueError("also_unknown needs ref_flux, neighbours and joint=False")
    f_u, lc_u = deblended(torch.full_like(f_one, float("nan")))
    return x, feats, scale * FLUX_UNIT, ok, stack(f_u, [*extra[:-1], lc_u])


# -- losses ---------------------------------------------------------------------------------------

def _log_normal(y: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((y - mu) / sigma) ** 2 - torch.log(sigma) - LOG_SQRT_2PI


def log_trunc_norm(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``log Phi(mu / sigma)``: the mass of N(mu, sigma) on [0, inf) (stable for mu << 0)."""
    return torch.special.log_ndtr(mu / sigma)


def mixture_log_pdf(y: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                    *, truncated: bool = False) -> torch.Tensor:
    """log of ``sum_k alpha_k N(y; mu_k, sigma_k)`` (per row), each component truncated to
    [0, inf) and renormalised when ``truncated`` (-inf for y < 0 then)."""
    lp = torch.log(alpha.clamp_min(1e-30)) + _log_normal(y[:, None], mu, sigma)
    if truncated:
        lp = lp - log_trunc_norm(mu, sigma)
    out = torch.logsumexp(lp, dim=1)
    if truncated:
        out = torch.where(y >= 0, out, torch.full_like(out, -math.inf))
    return out


def mdn_nll(alpha, mu, sigma, y) -> torch.Tensor:
    """Lumos eq. 8: mixture negative log-likelihood, batch mean."""
    return -mixture_log_pdf(y, alpha, mu, sigma).mean()


def mdn_nll_truncated(alpha, mu, sigma, y) -> torch.Tensor:
    """Lumos eq. 10: mixture of Gaussians each truncated to flux in [0, inf), batch mean.
    Labels must be >= 0."""
    return -mixture_log_pdf(y.clamp_min(0.0), alpha, mu, sigma, truncated=True).mean()


def lumos_loss(alpha, mu, sigma, y, mag, *, faint_mag: float = 20.5,
               likelihood: torch.Tensor | None = None,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 8 for ``mag < faint_mag``, eq. 10 for the rest (NaN magnitudes count as faint).
    Rows flagged ``likelihood`` (the data-only mode's prior-free stamps, whose labels may be
    negative) always take eq. 8: their PDF is the likelihood, not truncated at zero.
    ``weight``: per-row weights of the mean (importance weights), default 1."""
    bright = mag < faint_mag
    if likelihood is not None:
        bright = bright | likelihood
    lp8 = mixture_log_pdf(y, alpha, mu, sigma)
    lp10 = mixture_log_pdf(y.clamp_min(0.0), alpha, mu, sigma, truncated=True)
    lp = torch.where(bright, lp8, lp10)
    if weight is None:
        return -lp.mean()
    return -(weight * lp).sum() / weight.sum()


def pair_log_overlap(a1, m1, s1, a2, m2, s2) -> torch.Tensor:
    """``log int_0^inf p1(f) p2(f) df`` for two mixtures of truncated Gaussians (per row).

    For components i, j: ``int_0^inf N(f; m_i, s_i) N(f; m_j, s_j) df
    = N(m_i - m_j; 0, sqrt(s_i^2 + s_j^2)) Phi(c_ij)``, with
    ``c_ij = (m_i / s_i^2 + m_j / s_j^2) / sqrt(1 / s_i^2 + 1 / s_j^2)`` (the product is a
    Gaussian of precision ``1/s_i^2 + 1/s_j^2``); each component is renormalised by
    ``Phi(m / s)`` (Lumos eq. 11, with the sqrt(2) of the erf and the 1/2 of Phi written out).
    """
    mi, mj = m1[:, :, None], m2[:, None, :]
    si, sj = s1[:, :, None], s2[:, None, :]
    v = si * si + sj * sj
    lg = -0.5 * (mi - mj) ** 2 / v - 0.5 * torch.log(v) - LOG_SQRT_2PI
    c = (mi / si**2 + mj / sj**2) / torch.sqrt(1.0 / si**2 + 1.0 / sj**2)
    lt = torch.special.log_ndtr(c) - log_trunc_norm(mi, si) - log_trunc_norm(mj, sj)
    la = torch.log(a1.clamp_min(1e-30))[:, :, None] + torch.log(a2.clamp_min(1e-30))[:, None, :]
    return torch.logsumexp((la + lg + lt).flatten(1), dim=1)


def pair_overlap_nll(a1, m1, s1, a2, m2, s2) -> torch.Tensor:
    """Lumos eq. 11 (unsupervised transfer learning): batch mean of ``-log overlap``."""
    return -pair_log_overlap(a1, m1, s1, a2, m2, s2).mean()


# -- inference helpers ----------------------------------------------------------------------------

def fuse_for_inference(model: Lumos) -> Lumos:
    """Fold BatchNorm into the preceding strided convolutions (lean preset), in place; eval mode.
    Reuses :func:`skysub.nn.bkgnet.fuse_for_inference` (it only looks at ``model.trunk`` and
    ``model.arch.block``)."""
    from .bkgnet import fuse_for_inference as _fuse

    return _fuse(model)  # type: ignore[arg-type]


def flops_per_stamp(model: Lumos) -> float:
    """Multiply-adds x 2 of one forward pass (convolutions and dense layers)."""
    total = 0.0
    s = model.arch.stamp_size
    x = torch.zeros(1, model.in_channels, s, s)
    was = model.training
    model.eval()
    with torch.no_grad():
        for m in model.trunk:
            y = m(x)
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1]
                total += 2.0 * y.numel() * m.in_channels * k
            x = y
    model.train(was)
    for m in [*model.reduce, *model.head, model.last]:
        if isinstance(m, nn.Linear):
            total += 2.0 * m.in_features * m.out_features
    return total


__all__ = ["Lumos", "LumosArch", "PRESETS", "build_from_arch", "stamp_features", "mdn_nll",
           "mdn_nll_truncated", "lumos_loss", "pair_log_overlap", "pair_overlap_nll",
           "mixture_log_pdf", "log_trunc_norm", "fuse_for_inference", "flops_per_stamp",
           "FLUX_UNIT"]
