"""Lumos as "just another photometer": flux PDFs (5-Gaussian mixtures) from a trained network,
and its training on Teahupoo-like simulations (plus unsupervised transfer learning on pairs).

:class:`LumosPhotometer` follows the photometer protocol (``measure(image, x, y, *, mask, mag,
neighbours, catalog) -> PhotometryResult``).  ``flux``/``flux_err`` are the point estimates
chosen by ``estimator`` (default: the PDF's median and sigma68 -- with calibrated PDFs half the
true fluxes lie below the median, so its median relative error, the paper's bias, vanishes;
the paper's choice, the mode, sits below the median of a right-skewed faint-source PDF);
``extra`` holds the mixture (a1..a5, f1..f5, s1..s5, image units) and every summary
(:func:`mixture_summary`: mean and std (eq. 15-16), mode, median, sigma68, sigma95, eta (eq. 22)).
``bkg`` is NaN: Lumos learns the background internally and never reports it.

The PDF is the network's mixture with every component truncated to flux >= 0 (eq. 10's
density; for bright sources the truncation is negligible and eq. 8 and 10 agree).  Mean and
std are eq. 15-16 evaluated with the truncated components' moments (the untruncated eq. 15-16
are the limit mu >> sigma).

:func:`train_lumos` trains one (``skysub train lumos``); :func:`fine_tune_pairs` is the
transfer-learning step (eq. 11-12) that updates only the last dense layer.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import flags as F
from ..background.base import BackgroundResult
from ..errors import ConfigError, InputError
from ..image import Image, as_image
from ..stamps import cutouts
from .aperture import PhotometryResult, _flag, _inside, assemble, check_positions, source_shapes

log = logging.getLogger("skysub")

DEFAULT_MODEL = "lumos-paus"
ESTIMATORS = ("mode", "mean", "median")
SUMMARY_KEYS = ("flux_mean", "flux_std", "flux_mode", "flux_median", "flux_sigma68",
                "flux_sigma95", "eta")


# -- the data-only likelihood ----------------------------------------------------------------------

def divide_training_prior(alpha, mu, sigma, knee: float
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The likelihood from a posterior learned under the prior-free training density.

    The no-magnitude mode is trained on fluxes drawn with density ``p(f) ~ 1 / (max(f, 0) +
    knee)`` (:func:`skysub.simulate.galaxies.locally_flat_flux`), so what the network learns
    is the posterior ``L(f) p(f) / Z``: tilted towards faint fluxes by ``p``.  The likelihood
    is that posterior times ``w(f) = max(f, 0) + knee``.  A Gaussian component times ``w`` is
    not Gaussian; each component is replaced by the Gaussian with the same zeroth, first and
    second moments (exact, closed form with z = mu / sigma):

        E[w]     = knee + mu Phi(z) + sigma phi(z)
        E[X w]   = knee mu + (mu^2 + sigma^2) Phi(z) + mu sigma phi(z)
        E[X^2 w] = knee (mu^2 + sigma^2) + (mu^3 + 3 mu sigma^2) Phi(z)
                   + sigma (mu^2 + 2 sigma^2) phi(z)

    and the weights become ``alpha E[w]`` (renormalised).  All in the network's normalised
    flux units (``knee`` too).  Returns ``(alpha, mu, sigma)``.
    """
    from scipy.special import ndtr

    a = np.asarray(alpha, float)
    m = np.asarray(mu, float)
    s = np.asarray(sigma, float)
    k = float(knee)
    z = m / s
    Phi, phi = ndtr(z), np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    m2 = m * m + s * s
    e0 = k + m * Phi + s * phi
    e1 = k * m + m2 * Phi + m * s * phi
    e2 = k * m2 + (m ** 3 + 3 * m * s * s) * Phi + s * (m * m + 2 * s * s) * phi
    new_m = e1 / e0
    new_s = np.sqrt(np.maximum(e2 / e0 - new_m ** 2, 1e-12 * s * s))
    w = a * e0
    return w / w.sum(-1, keepdims=True), new_m, new_s


# -- point estimates ------------------------------------------------------------------------------

def _comp_pdf(f: np.ndarray, a: np.ndarray, m: np.ndarray, s: np.ndarray, z: np.ndarray
              ) -> np.ndarray:
    """Truncated-mixture density at points f (n, p) for parameters (n, k); z = mass on [0, inf)."""
    u = (f[:, :, None] - m[:, None, :]) / s[:, None, :]
    d = (a / (s * z))[:, None, :] * np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi)
    return np.where(f >= 0, d.sum(-1), 0.0)


def mixture_summary(alpha, mu, sigma, *, lower: float | None = 0.0, n_iter: int = 60
                    ) -> dict[str, np.ndarray]:
    """Point estimates of Gaussian-mixture PDFs, vectorised over objects.

    Parameters
    ----------
    alpha, mu, sigma : (n, k) weights (normalised here), means, widths
    lower : truncate every component to [lower, inf) (Lumos eq. 10: 0); None = no truncation
    n_iter : bisection steps for the quantiles

    Returns
    -------
    dict of (n,) arrays: ``flux_mean`` (eq. 15), ``flux_std`` (sqrt of eq. 16), ``flux_mode``
    (highest density), ``flux_median``, ``flux_sigma68`` = (q84 - q16) / 2 (eq. 14),
    ``flux_sigma95`` = (q97.5 - q2.5) / 2, ``eta`` = sigma95 / sigma68 - 1 (eq. 22).
    """
    from scipy.special import ndtr

    from ..metrics import mixture_cdf

    a = np.atleast_2d(np.asarray(alpha, float))
    m = np.atleast_2d(np.asarray(mu, float))
    s = np.atleast_2d(np.asarray(sigma, float))
    a = a / a.sum(1, keepdims=True)
    n = len(a)
    lo_t = -np.inf if lower is None else float(lower)
    # component moments (truncated normal on [lower, inf) when lower is given)
    if lower is None:
        cm, cv, z = m, s * s, np.ones_like(m)
    else:
        al = (lo_t - m) / s
        z = np.clip(ndtr(-al), 1e-300, None)
        lam = np.exp(-0.5 * al * al) / np.sqrt(2 * np.pi) / z
        cm = m + s * lam
        cv = s * s * np.clip(1 + al * lam - lam * lam, 0.0, None)
    mean = (a * cm).sum(1)  # eq. 15
    var = (a * (cv + (cm - mean[:, None]) ** 2)).sum(1)  # eq. 16
    # quantiles by vectorised bisection on the mixture CDF (skysub.metrics.mixture_cdf)
    qs = np.array([0.025, 0.16, 0.5, 0.84, 0.975])
    lo = np.min(m - 10 * s, axis=1)
    if lower is not None:
        lo = np.maximum(lo, lo_t)
    hi = np.max(m + 10 * s, axis=1)
    L = np.repeat(lo[None], len(qs), 0).ravel()
    H = np.repeat(hi[None], len(qs), 0).ravel()
    target = np.repeat(qs, n)
    A, M, S = (np.tile(v, (len(qs), 1)) for v in (a, m, s))
    for _ in range(n_iter):
        mid = 0.5 * (L + H)
        c = mixture_cdf(A, M, S, mid, lower=lower)
        below = c < target
        L = np.where(below, mid, L)
        H = np.where(below, H, mid)
    q = (0.5 * (L + H)).reshape(len(qs), n)
    # mode: coarse grid plus the component means, then a fine grid around the best point
    grid = np.linspace(0, 1, 256)[None] * (hi - lo)[:, None] + lo[:, None]
    cand = np.concatenate([grid, np.clip(m, lo[:, None], None)], axis=1)
    best = cand[np.arange(n), np.argmax(_comp_pdf(cand, a, m, s, z), axis=1)]
    step = (hi - lo) / 255
    fine = best[:, None] + np.linspace(-2, 2, 129)[None] * step[:, None]
    if lower is not None:
        fine = np.maximum(fine, lo_t)
    mode = fine[np.arange(n), np.argmax(_comp_pdf(fine, a, m, s, z), axis=1)]
    s68 = 0.5 * (q[3] - q[1])
    s95 = 0.5 * (q[4] - q[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        eta = s95 / s68 - 1.0  # eq. 22
    return {"flux_mean": mean, "flux_std": np.sqrt(var), "flux_mode": mode, "flux_median": q[2],
            "flux_sigma68": s68, "flux_sigma95": s95, "eta": eta}


# -- settings ------------------------------------------------------------------------------------

@dataclass
class LumosSettings:
    """The ``[lumos]`` configuration section besides the simulation settings
    (:class:`skysub.simulate.galaxies.GalaxySimSettings`).

    Attributes
    ----------
    faint_mag : eq. 10 (truncated) loss for mag >= faint_mag, eq. 8 below (paper: 20.5)
    estimator : point estimate reported as ``flux``: "median" (+ sigma68 as flux_err; unbiased
        in the median for calibrated PDFs), "mode" (+ sigma68; the paper's) or "mean" (+ std)
    stamps_per_image, n_exposures, epochs, batch_size, lr, preset, val_fraction : training
    pair_weight : weight of the pair-overlap loss in eq. 12 (paper: 1)
    finetune_epochs, finetune_lr : transfer-learning schedule (paper: 100 epochs, 1e-5, /10
        every 50; shortened for CPU budgets: halved once)
    max_pairs : at most this many pairs with ``pairs="auto"`` (paper: 20,000)
    neighbours : give the network the catalogued neighbours' models as a fourth channel
        (skysub's addition; blends)
    neighbour_fit : with ``neighbours``, fit them jointly with the target in its reference flux
        (True), or keep the target-only reference flux and give the head the neighbours' light
        in its matched filter (False; see :class:`skysub.nn.lumos.LumosArch`)
    neighbour_ratio : with ``neighbours`` and not ``neighbour_fit``: deblend the reference flux
        by the catalogue's flux ratio when the target's magnitude is known
        (:class:`skysub.nn.lumos.LumosArch`)
    data_deblend : with ``neighbour_ratio``: the data-only mode deblends by the joint fit's
        neighbour amplitude (magnitude-free; :class:`skysub.nn.lumos.LumosArch`)
    calibration_bins : the validation calibration's SNR bins (:class:`SNRCalibration`: a shift
        and a width factor per bin); 0 = one width factor for all (temperature scaling)
    prior_free_weight_cap : importance weights of the prior-free stamps (:func:`make_loss`)
        capped here; 1 = unweighted
    """

    faint_mag: float = 20.5
    estimator: str = "median"
    stamps_per_image: int = 400
    n_exposures: int = 48
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    preset: str = "lean"
    val_fraction: float = 0.15
    pair_weight: float = 1.0
    finetune_epochs: int = 10
    finetune_lr: float = 1e-4
    max_pairs: int = 5000
    neighbours: bool = True
    neighbour_fit: bool = True
    neighbour_ratio: bool = False
    data_deblend: bool = False
    prior_free_weight_cap: float = 1.0
    calibration_bins: int = 6

    @classmethod
    def from_config(cls, section: dict | None, **overrides: Any) -> LumosSettings:
        from ..simulate.galaxies import GalaxySimSettings

        section = {**(section or {}), **{k: v for k, v in overrides.items() if v is not None}}
        names = {f.name for f in fields(cls)}
        sim_names = {f.name for f in fields(GalaxySimSettings)}
        unknown = sorted(set(section) - names - sim_names)
        if unknown:
            raise ConfigError(f"[lumos]: unknown setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(names | sim_names))}")
        s = cls(**{k: v for k, v in section.items() if k in names})
        if not isinstance(s.calibration_bins, int) or s.calibration_bins < 0:
            raise ConfigError(f"[lumos]: calibration_bins must be an integer >= 0, got "
                              f"{s.calibration_bins!r}")
        if s.neighbour_ratio and (not s.neighbours or s.neighbour_fit):
            raise ConfigError("[lumos]: neighbour_ratio = true needs neighbours = true and "
                              "neighbour_fit = false")
        if s.data_deblend and not s.neighbour_ratio:
            raise ConfigError("[lumos]: data_deblend = true needs neighbour_ratio = true")
        if s.estimator not in ESTIMATORS:
            raise ConfigError(f"[lumos]: estimator must be one of {ESTIMATORS}, got "
                              f"{s.estimator!r}")
        return s


# -- the photometer -------------------------------------------------------------------------------

def _key_index(keys: list[str], band: Any, epoch: Any) -> int:
    from ..background.bkgnet import key_name

    k = key_name(band, epoch)
    if k in keys:
        return keys.index(k)
    same_band = [i for i, kk in enumerate(keys) if kk.split("/")[0] == str(band)]
    if same_band:
        log.warning("band x epoch %s unknown to the Lumos model; using %s", k, keys[same_band[0]])
        return same_band[0]
    if len(keys) > 1:
        log.warning("band x epoch %s unknown to the Lumos model (knows %s); using %s", k,
                    ", ".join(keys), keys[0])
    return 0


def predict_mixtures(net, x, feats, coords, mag, has_mag, key, *, batch_size: int = 512,
                     device=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the network over all rows in batches (EVERY row is returned, whatever the batch
    size); mixtures in normalised units as numpy arrays."""
    import torch

    dev = device or next(net.parameters()).device
    outs: list[tuple] = []
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            sl = slice(s, s + batch_size)
            a, m, sg = net(x[sl].float().to(dev), feats[sl].to(dev), coords[sl].to(dev),
                           mag[sl].to(dev), has_mag[sl].to(dev), key[sl].to(dev))
            outs.append((a.double().cpu().numpy(), m.double().cpu().numpy(),
                         sg.double().cpu().numpy()))
    if not outs:
        k = net.arch.n_components
        return np.zeros((0, k)), np.zeros((0, k)), np.zeros((0, k))
    return tuple(np.concatenate([o[i] for o in outs]) for i in range(3))  # type: ignore


class LumosPhotometer:
    """Flux PDFs from a trained Lumos network (see the module notes).

    Parameters
    ----------
    model : str or Path or (torch.nn.Module, dict)
        Shipped model name (``"lumos-paus"``), model file, or ``(network, card)``.
    psf : 2-D array, optional
        PSF of the exposures (default: the Moffat PSF the model was trained with, from its card).
    estimator : "median", "mode" or "mean" (default: the card's, else "mode")
    use_mag : give the network the catalogue's reference magnitude (default).  The magnitude
        is a PRIOR shared by every exposure of an object: it sharpens single-exposure PDFs, but
        it correlates the errors of repeated measurements (their duplicates-test width is
        below 1 by construction) and a product of such PDFs counts it once per exposure.
        ``use_mag=False`` gives the data-only PDFs (the likelihood: the network was shown
        these stamps with fluxes drawn from a density flat on the scale of the noise, see
        ``prior_free_fraction``): use them for duplicates tests and PDF coadds.
    batch_size : stamps per forward pass
    device : "auto" (GPU when present), "cpu", "cuda"
    threads : torch threads on CPU
    name : label in output tables
    mag_offset : added to the catalogue's ``mag`` (the targets' prior and the neighbour
        channel) to put it in the band system the model assumes -- a galaxy of magnitude ``m``
        gives ``exptime 10^(-0.4 (m - zero_point)) / gain`` image units, ``zero_point`` in the
        card's ``inputs.simulation`` (23 for ``lumos-paus``).  Exposures of ``skysub simulate
        ccd`` have zero point 25: use -2 there
        (:func:`skysub.simulate.galaxies.band_system_catalog`).

    Notes
    -----
    Catalogue columns used: ``r50`` (px), ``sersic_n``, ``ba``, ``theta`` (deg) for the model
    image (missing / non-positive r50 = point source) and ``mag`` (reference magnitude; absent =
    the network's learned default).  Sources near or beyond the edges are measured from the
    valid part of their cutout (EDGE flag); NO_DATA when too few valid pixels remain.
    """

    #: per-source columns that :func:`skysub.workflows.measure_photometry` copies to tables
    extra_columns = (*(f"a{i}" for i in range(1, 6)), *(f"f{i}" for i in range(1, 6)),
                     *(f"s{i}" for i in range(1, 6)), *SUMMARY_KEYS, "likelihood")

    def __init__(self, model: Any = DEFAULT_MODEL, *, psf=None, estimator: str | None = None,
                 use_mag: bool = True, batch_size: int = 512, device: str = "auto",
                 threads: int | None = None, name: str = "lumos",
                 mag_offset: float = 0.0) -> None:
        import torch

        from ..nn.device import configure_threads, resolve_device
        from ..nn.lumos import fuse_for_inference
        from ..nn.modelfile import load_model
        from ..simulate.galaxies import GalaxySimSettings, psf_for
        from .aperture import check_psf

        if int(batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size!r}")
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            configure_threads(threads)
        net, card = model if isinstance(model, tuple) else load_model(model, kind="lumos")
        self.net = fuse_for_inference(net.eval()).to(self.device)
        self.card = card
        inputs = card.get("inputs", {})
        self.keys: list[str] = list(inputs.get("keys", []))
        self.settings = GalaxySimSettings.from_config(inputs.get("simulation", {}))
        self.psf = psf_for(self.settings) if psf is None else check_psf(psf)
        est = estimator or inputs.get("estimator", "mode")
        if est not in ESTIMATORS:
            raise InputError(f"estimator must be one of {ESTIMATORS}, got {est!r}")
        self.estimator = est
        self.use_mag = bool(use_mag)
        try:
            self.mag_offset = float(mag_offset)
        except (TypeError, ValueError):
            self.mag_offset = np.nan
        if not np.isfinite(self.mag_offset):
            raise InputError(f"mag_offset must be a finite number of magnitudes, got "
                             f"{mag_offset!r}")
        if not self.use_mag and not self.settings.prior_free_fraction:
            raise InputError("use_mag=False (--no-mag) needs a Lumos model trained with "
                             "prior_free_fraction > 0; this one always saw the reference "
                             "magnitude")
        mode = "mag" if self.use_mag else "no_mag"
        scale = inputs.get("sigma_scale", {})
        #: the validation calibration: per-SNR (:class:`SNRCalibration`) when the card has one,
        #: else the single width factor
        self.sigma_scale: float | SNRCalibration = float(scale.get(mode, 1.0))
        snr_cal = inputs.get("snr_calibration", {}).get(mode)
        if snr_cal:
            self.sigma_scale = SNRCalibration.from_dict(snr_cal)
        #: knee of the prior-free training density (normalised flux units): the data-only
        #: mode's posterior is divided by it (:func:`divide_training_prior`)
        self.prior_knee: float | None = None if self.use_mag else _prior_knee(self.settings)
        #: the posterior is truncated to flux >= 0 (eq. 10); the likelihood is not
        self.lower: float | None = 0.0 if self.use_mag else None
        self.batch_size = int(batch_size)
        self.name = name
        self._torch = torch

    def __repr__(self) -> str:
        return (f"LumosPhotometer(model={self.card.get('description', '?')!r}, "
                f"estimator={self.estimator!r}, use_mag={self.use_mag})")

    def _models(self, x: np.ndarray, y: np.ndarray, catalog) -> np.ndarray:
        """Every source's unit-total model (n, model_size, model_size), float32, at its
        sub-pixel offset from its rounded pixel (the :func:`skysub.stamps.cutouts` layout)."""
        from ..simulate.galaxies import model_images
        from ..stamps import _round_half_up

        n = len(x)
        ok = np.isfinite(x) & np.isfinite(y)
        dx = np.where(ok, x - _round_half_up(np.where(ok, x, 0.0)), 0.0)
        dy = np.where(ok, y - _round_half_up(np.where(ok, y, 0.0)), 0.0)
        k = self.settings.model_size
        small = replace(self.settings, stamp_size=k)
        out = np.zeros((n, k, k), np.float32)
        shapes = source_shapes(catalog, n)
        for s0 in range(0, n, 1024):  # batches that stay in cache (faster than 4096)
            ii = slice(s0, s0 + 1024)
            out[ii] = model_images(shapes.take(ii), self.psf, dx[ii], dy[ii], small)
        return out

    def neighbour_map(self, img: Image, x: np.ndarray, y: np.ndarray, catalog,
                      models: np.ndarray | None = None) -> np.ndarray:
        """The catalogue's expected image (every source's model times its reference flux,
        :func:`skysub.simulate.galaxies.neighbour_map`) for the neighbour channel."""
        from ..simulate.galaxies import neighbour_map

        return neighbour_map(img.shape, x, y, source_shapes(catalog, len(x)),
                             _catalog_mag(catalog, len(x)), self.psf, self.settings,
                             models=models)

    def inputs(self, img: Image, x: np.ndarray, y: np.ndarray, catalog, mag,
               nmap: np.ndarray | None = None, models: np.ndarray | None = None) -> dict:
        """Network inputs for sources at (x, y) of ``img`` (all rows; a chunk at a time is up to
        the caller).  ``nmap``: :meth:`neighbour_map` of ALL the image's sources (networks with
        a neighbour channel); each target's own model is taken out of it here.  ``models``:
        the sources' models from :meth:`_models` (else rendered here)."""
        from ..simulate.galaxies import pad_center

        torch = self._torch
        n = len(x)
        S = self.settings.stamp_size
        st = cutouts(img, x, y, S)
        small = self._models(x, y, catalog) if models is None else models
        models = pad_center(np.asarray(small, np.float64), S)
        nb = None
        if self.net.arch.neighbours:
            if nmap is None:
                nmap = self.neighbour_map(img, x, y, catalog, models=small)
            nb = _neighbour_channel(nmap, x, y, _catalog_mag(catalog, n), models)
        return _tensors(st.data, st.valid, models, x, y, img.shape, mag,
                        _key_index(self.keys, img.meta.band, img.meta.epoch), torch,
                        neighbours=nb, joint=self.net.arch.neighbour_fit,
                        ratio=bool(getattr(self.net.arch, "neighbour_ratio", False)),
                        deblend=bool(getattr(self.net.arch, "data_deblend", False))
                        ) | {"stamps": st}

    def measure(self, image: Image | np.ndarray, x, y, *, mask: np.ndarray | None = None,
                mag: np.ndarray | None = None,
                neighbours: tuple[np.ndarray, np.ndarray] | None = None,
                catalog=None) -> PhotometryResult:
        """Flux PDF and point estimates of every source (see the class docstring)."""
        img = as_image(image, mask)
        x, y = check_positions(x, y)
        n = len(x)
        if self.mag_offset:  # the catalogue in the model's band system
            if mag is not None:
                mag = np.asarray(mag, float) + self.mag_offset
            if catalog is not None and "mag" in _colnames(catalog):
                catalog = catalog.copy()
                catalog["mag"] = np.asarray(catalog["mag"], float) + self.mag_offset
        if not self.use_mag:
            mag = None
        elif mag is None and catalog is not None and "mag" in _colnames(catalog):
            mag = np.asarray(catalog["mag"], float)
        k = self.net.arch.n_components
        A, M, Sg = np.zeros((n, k)), np.zeros((n, k)), np.ones((n, k))
        flags = F.zeros(n)
        good = np.zeros(n, bool)
        chunk = max(self.batch_size, 1024)
        nmap = models = None
        if self.net.arch.neighbours:  # render every model once: map and model channel
            models = self._models(x, y, catalog)
            nmap = self.neighbour_map(img, x, y, catalog, models=models)
        for s0 in range(0, n, chunk):  # bounded memory; every source is measured
            ii = np.arange(s0, min(s0 + chunk, n))
            sub_cat = None if catalog is None else _rows(catalog, ii)
            t = self.inputs(img, x[ii], y[ii], sub_cat, None if mag is None else
                            np.asarray(mag, float)[ii], nmap=nmap,
                            models=None if models is None else models[ii])
            a, m, sg = predict_mixtures(self.net, t["x"], t["feats"], t["coords"], t["mag"],
                                        t["has_mag"], t["key"], batch_size=self.batch_size,
                                        device=self.device)
            a, m, sg = _calibrated(a, m, sg, self.sigma_scale, self.prior_knee,
                                   crowding(t["feats"]))
            unit = t["unit"]
            A[ii], M[ii], Sg[ii] = a, m * unit[:, None], sg * unit[:, None]
            good[ii] = t["ok"]
            st = t["stamps"]
            inside = _inside(img.shape, st.x0, st.y0, st.size)
            c = st.size // 2
            core = np.zeros_like(inside)
            core[:, c - 5:c + 6, c - 5:c + 6] = True
            flags[ii] |= (_flag((~inside).any(axis=(1, 2)), F.EDGE)
                          | _flag((core & inside & ~st.valid).any(axis=(1, 2)), F.MASKED)
                          | _flag(~t["ok"], F.NO_DATA))
        summ = mixture_summary(A, M, Sg, lower=self.lower)
        flux = {"mode": summ["flux_mode"], "mean": summ["flux_mean"],
                "median": summ["flux_median"]}[self.estimator]
        err = summ["flux_std"] if self.estimator == "mean" else summ["flux_sigma68"]
        flux = np.where(good, flux, np.nan)
        err = np.where(good, err, np.nan)
        nan = np.full(n, np.nan)
        bres = BackgroundResult(nan, nan, nan, np.zeros(n, np.int64), F.zeros(n))
        extra: dict[str, np.ndarray] = {}
        for i in range(k):
            extra[f"a{i + 1}"] = A[:, i]
            extra[f"f{i + 1}"] = M[:, i]
            extra[f"s{i + 1}"] = Sg[:, i]
        extra.update(summ)
        extra["likelihood"] = np.full(n, not self.use_mag)  # coadds multiply likelihoods
        return assemble(img, x, y, flux, err, nan, nan, nan, bres, flags,
                        crowd_radius=8.0, neighbours=neighbours, extra=extra)


#: crowding above which a target gets the crowded calibration (:class:`SNRCalibration`)
CROWD_C = 0.05


def _prior_knee(settings) -> float:
    """The prior-free training density's knee in the network's normalised flux units
    (``prior_free_knee`` pixel sigmas; one unit is ``FLUX_UNIT`` pixel sigmas)."""
    from ..nn.lumos import FLUX_UNIT

    return float(settings.prior_free_knee) / FLUX_UNIT


@dataclass(frozen=True)
class SNRCalibration:
    """Validation recalibration of the network's mixtures as a function of their SNR: every
    component mean moves by ``shift`` times the mixture's standard deviation and every width is
    multiplied by ``exp(log_scale)``, both interpolated linearly in ``asinh(mean / std)`` of the
    network's mixture between the calibration bins' centres ``asinh_snr`` (constant beyond).

    The single width factor (temperature scaling) cannot correct a location error, and the
    network's errors differ with SNR: the neighbour-ratio model measured bright isolated
    galaxies a little low and faint ones a little high.  Fitted by
    :func:`fit_snr_calibration` (maximum likelihood per bin).

    ``crowded``: a second calibration for crowded targets -- those whose neighbours put more
    than ``crowd_c`` of the target's own flux into its matched filter (the head feature ``c``:
    from the catalogue's flux ratio with the magnitude, from the joint fit's neighbour amplitude
    in the data-only mode) -- whose errors differ from isolated ones' (one calibration for both
    improved the isolated PIT and spoiled the crowded one, in both modes)."""

    asinh_snr: tuple[float, ...]
    log_scale: tuple[float, ...]
    shift: tuple[float, ...]
    crowded: SNRCalibration | None = None
    crowd_c: float = CROWD_C

    @classmethod
    def from_dict(cls, d: dict) -> SNRCalibration:
        try:
            out = cls(*(tuple(float(v) for v in d[k]) for k in ("asinh_snr", "log_scale",
                                                                 "shift")),
                      crowded=cls.from_dict(d["crowded"]) if d.get("crowded") else None,
                      crowd_c=float(d.get("crowd_c", CROWD_C)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"model card: malformed snr_calibration {d!r} ({exc})") from None
        if not (len(out.asinh_snr) == len(out.log_scale) == len(out.shift) >= 1) or \
                np.any(np.diff(out.asinh_snr) <= 0):
            raise InputError(f"model card: malformed snr_calibration {d!r}")
        return out

    def as_dict(self) -> dict:
        out: dict[str, Any] = {k: [round(float(v), 5) for v in getattr(self, k)]
                               for k in ("asinh_snr", "log_scale", "shift")}
        if self.crowded is not None:
            out |= {"crowded": self.crowded.as_dict(), "crowd_c": self.crowd_c}
        return out

    def apply(self, a, m, s, c=None):
        """Calibrated ``(a, m, s)``; ``c`` (n,): the crowding feature, None = unknown."""
        a, m, s = (np.asarray(v, float) for v in (a, m, s))
        if self.crowded is not None and c is not None:
            crowd = np.asarray(c, float) > self.crowd_c
            if crowd.any():
                a0, m0, s0 = self.crowded.apply(a[crowd], m[crowd], s[crowd])
                a1, m1, s1 = self.apply(a[~crowd], m[~crowd], s[~crowd])
                out = [np.empty_like(a), np.empty_like(m), np.empty_like(s)]
                for o, x0, x1 in zip(out, (a0, m0, s0), (a1, m1, s1), strict=True):
                    o[crowd], o[~crowd] = x0, x1
                return tuple(out)
        z, sd = _mixture_snr(a, m, s)
        ls = np.interp(z, self.asinh_snr, self.log_scale)
        d = np.interp(z, self.asinh_snr, self.shift)
        return a, m + (d * sd)[:, None], s * np.exp(ls)[:, None]


def _mixture_snr(a, m, s) -> tuple[np.ndarray, np.ndarray]:
    """``asinh(mean / std)`` and the standard deviation of each row's mixture (the binning
    variable of :class:`SNRCalibration`)."""
    mean = (a * m).sum(1)
    sd = np.sqrt(np.clip((a * (s ** 2 + m ** 2)).sum(1) - mean ** 2, 1e-30, None))
    return np.arcsinh(mean / sd), sd


def _mixture_nll(a, m, s, y, truncated: bool) -> float:
    """Mean negative log-likelihood of ``y`` (n, 1) under the mixtures (eq. 10's truncated
    density, or eq. 8's), up to the constant log sqrt(2 pi)."""
    from scipy.special import log_ndtr, logsumexp

    lp = np.log(np.clip(a, 1e-30, None)) - 0.5 * ((y - m) / s) ** 2 - np.log(s)
    if truncated:
        lp = lp - log_ndtr(m / s)
    return float(-logsumexp(lp, axis=1).mean())


def crowding(feats) -> np.ndarray | None:
    """The crowding ``c`` of each row of network features (the ``neighbour_ratio`` feature
    ``log(1 + c)``), None for networks without it."""
    f = np.asarray(feats, float)
    return np.expm1(f[:, 5]) if f.ndim == 2 and f.shape[1] >= 6 else None


def _calibrated(a, m, s, sigma_scale: float | SNRCalibration, prior_knee: float | None,
                c=None):
    """Normalised network mixtures with the validation calibration (``sigma_scale``: a width
    factor or an :class:`SNRCalibration`, calibrated on the posterior the network learned;
    ``c`` the rows' :func:`crowding`), then -- for the data-only mode -- divided by the
    prior-free training density (:func:`divide_training_prior`)."""
    if isinstance(sigma_scale, SNRCalibration):
        a, m, s = sigma_scale.apply(a, m, s, c)
    else:
        s = s * sigma_scale
    if prior_knee is not None:
        a, m, s = divide_training_prior(a, m, s, prior_knee)
    return a, m, s


def _colnames(catalog) -> list[str]:
    return list(getattr(catalog, "colnames", None) or catalog.keys())


def _catalog_mag(catalog, n: int) -> np.ndarray:
    """The catalogue's reference magnitudes (NaN where absent): the neighbour-channel weights,
    used in both Lumos modes (they describe the neighbours, not the target's prior)."""
    names = getattr(catalog, "colnames", None) or (list(catalog) if catalog is not None else [])
    if "mag" not in names:
        return np.full(n, np.nan)
    return np.ma.filled(np.ma.asarray(catalog["mag"], dtype=float), np.nan).astype(float)


def _rows(catalog, ii: np.ndarray):
    if hasattr(catalog, "colnames"):
        return catalog[ii]
    return {k: np.asarray(v)[ii] for k, v in catalog.items()}


def _tensors(data, valid, models, x, y, shape, mag, key, torch, neighbours=None,
             joint: bool = True, ratio: bool = False, ratio_mag=None,
             deblend: bool = False, nomag: bool = False) -> dict:
    """Network tensors from cutouts (NaN invalid), model images, the neighbour channel (or
    None) and per-source metadata.  ``ratio``: the catalogue flux-ratio deblend
    (``LumosArch.neighbour_ratio``) with the targets' magnitudes ``ratio_mag`` (default
    ``mag``; NaN or None = unknown: no deblend, or with ``deblend`` the joint fit's,
    ``LumosArch.data_deblend``).  ``nomag``: also ``feats_nomag``, every row's features with
    its magnitude unknown (the data-only mode's inputs; same pass)."""
    from ..nn.lumos import stamp_features
    from ..simulate.galaxies import reference_flux

    n = len(x)
    d = torch.from_numpy(np.nan_to_num(np.asarray(data, np.float32)))
    v = torch.from_numpy(np.asarray(valid, bool))
    nb = None if neighbours is None else torch.from_numpy(np.asarray(neighbours, np.float32))
    mg = np.full(n, np.nan) if mag is None else np.asarray(mag, float)
    ref = None
    if ratio:
        rm = mg if ratio_mag is None else np.asarray(ratio_mag, float)
        ref = torch.from_numpy(reference_flux(rm, unknown=np.nan))
    both = nomag and ref is not None and nb is not None and not joint  # else they are equal
    xin, feats, unit, ok, *rest = stamp_features(
        d, v, torch.from_numpy(np.asarray(models, np.float32)), nb, joint=joint, ref_flux=ref,
        data_deblend=deblend, also_unknown=both)
    ny, nx = shape
    coords = np.column_stack([np.asarray(x, float) / max(nx - 1, 1) * 2 - 1,
                              np.asarray(y, float) / max(ny - 1, 1) * 2 - 1])
    return {"x": xin.to(torch.float16), "feats": feats,
            "coords": torch.from_numpy(np.nan_to_num(coords).astype(np.float32)),
            "mag": torch.from_numpy(np.nan_to_num(mg, nan=0.0).astype(np.float32)),
            "has_mag": torch.from_numpy(np.isfinite(mg).astype(np.float32)),
            "key": torch.from_numpy(np.broadcast_to(np.asarray(key, np.int64), (n,)).copy()),
            "unit": unit.numpy(), "ok": ok.numpy()} | (
                {"feats_nomag": rest[0] if both else feats} if nomag else {})


# -- training -------------------------------------------------------------------------------------

def training_tensors(sim: dict, keys: list[str], *, chunk: int = 2048,
                     neighbours: bool = False, joint: bool = True, ratio: bool = False,
                     hidden_mag: np.ndarray | None = None, deblend: bool = False) -> dict:
    """Tensors for :class:`skysub.nn.trainer.Trainer` from :func:`simulate_galaxy_stamps` output
    (``keys`` is extended with new band x epoch entries), with the neighbour channel when
    ``neighbours`` (and the flux-ratio deblend when ``ratio``, except for rows in
    ``hidden_mag``: stamps shown without their magnitude, which get the joint fit's deblend
    with ``deblend``).  Adds ``y`` (normalised true flux),
    ``unit`` and ``ok``, and with ``ratio`` ``feats_nomag``: every row's features as the
    data-only mode computes them (the magnitude hidden), for its validation metrics."""
    import torch

    from ..background.bkgnet import key_name

    kidx = []
    for b, e in zip(sim["band"], sim["epoch"], strict=True):
        k = key_name(b, e)
        if k not in keys:
            keys.append(k)
        kidx.append(keys.index(k))
    kidx = np.asarray(kidx)
    n = len(kidx)
    out: dict = {}
    unit, ok = np.empty(n), np.empty(n, bool)
    for s in range(0, n, chunk):  # written into preallocated tensors: no second copy
        sl = slice(s, s + chunk)
        st = sim["stamps"][sl]
        rm = sim["mag"][sl] if hidden_mag is None else \
            np.where(np.asarray(hidden_mag, bool)[sl], np.nan, sim["mag"][sl])
        t = _tensors(st, np.isfinite(st), sim["models"][sl], np.zeros(len(st)),
                     np.zeros(len(st)), (1, 1), sim["mag"][sl], kidx[sl], torch,
                     neighbours=sim["neighbours"][sl] if neighbours else None, joint=joint,
                     ratio=ratio, ratio_mag=rm, deblend=deblend, nomag=ratio)
        # CCD coordinates from each cutout's own exposure size
        cx = sim["x"][sl] / np.maximum(sim["nx"][sl] - 1, 1) * 2 - 1
        cy = sim["y"][sl] / np.maximum(sim["ny"][sl] - 1, 1) * 2 - 1
        t["coords"] = torch.from_numpy(np.column_stack([cx, cy]).astype(np.float32))
        for k in ("x", "feats", "coords", "mag", "has_mag", "key", "feats_nomag"):
            if k not in t:
                continue
            if k not in out:
                out[k] = torch.empty((n, *t[k].shape[1:]), dtype=t[k].dtype)
            out[k][sl] = t[k]
        unit[sl], ok[sl] = t["unit"], t["ok"]
    out["y"] = torch.from_numpy((sim["flux_true"] / unit).astype(np.float32))
    out["unit"] = unit
    out["ok"] = ok
    return out


TENSOR_KEYS = ("x", "feats", "coords", "mag", "has_mag", "key", "y")


def make_loss(faint_mag: float, knee: float = 0.0, weight_cap: float = 1.0):
    """``loss(model, batch)`` for the Trainer: eq. 8 (bright) / eq. 10 (faint).

    Prior-free rows (``has_mag`` 0) get the importance weight ``min((|y| + knee) / knee,
    weight_cap)`` (``knee`` in normalised flux units): their fluxes were drawn with density
    ``~ 1 / (|f| + knee)``, and the weight makes the effective training prior flat up to
    ``weight_cap`` knees, so the data-only mode learns the likelihood without a pull towards
    faint fluxes; they are normalised to a mean of 1 over the batch's prior-free rows.
    ``weight_cap`` 1 = unweighted."""
    import torch

    from ..nn.lumos import lumos_loss

    def loss(model, batch):
        a, m, s = model(batch["x"].float(), batch["feats"], batch["coords"], batch["mag"],
                        batch["has_mag"], batch["key"])
        mag = torch_where_mag(batch)
        free = batch["has_mag"] <= 0
        w = None
        if weight_cap > 1 and knee > 0 and bool(free.any()):
            raw = ((batch["y"].abs() + knee) / knee).clamp(max=weight_cap)
            # normalised over the prior-free rows: they keep their share of the batch (the
            # with-magnitude mode is not starved)
            w = torch.where(free, raw / raw[free].mean(), torch.ones_like(raw))
        return lumos_loss(a, m, s, batch["y"], mag, faint_mag=faint_mag, likelihood=free,
                          weight=w)

    return loss


def torch_where_mag(batch):
    import torch

    return torch.where(batch["has_mag"] > 0, batch["mag"], torch.full_like(batch["mag"], 99.0))


def _subset(t: dict, sel: np.ndarray) -> dict:
    import torch

    idx = torch.from_numpy(np.flatnonzero(sel))
    return {k: t[k][idx] for k in (*TENSOR_KEYS, "feats_nomag") if k in t}


def calibrate_widths(model, t: dict, *, truncated: bool = True,
                     prior_knee: float | None = None) -> float:
    """Validation calibration of the PDF widths (as BKGnet's ``sigma_scale``): the factor ``c``
    on every component width that minimises the mixture negative log-likelihood (eq. 10's
    truncated density, or eq. 8's with ``truncated=False``) of the true fluxes of tensors ``t``
    -- temperature scaling, which keeps the means and weights.  With ``prior_knee`` the scaled
    mixture is divided by the prior-free training density first (:func:`_calibrated`): the
    likelihood itself is fitted to the true fluxes.  The shipped calibration does not do that
    for the data-only mode -- true fluxes drawn from a prior are not a proper score for a
    likelihood -- but fits the posterior before the division (:func:`_calibrate_modes`).
    Returns ``c`` (> 1: the network's PDFs were too narrow)."""
    return fit_width_factor(*_predict(model, t), np.asarray(t["y"], float), truncated=truncated,
                            prior_knee=prior_knee)


def _predict(model, t: dict):
    model.eval()
    return predict_mixtures(model, t["x"], t["feats"], t["coords"], t["mag"], t["has_mag"],
                            t["key"])


def fit_width_factor(a, m, s, y, *, truncated: bool = True,
                     prior_knee: float | None = None) -> float:
    """:func:`calibrate_widths` on given mixtures ``a, m, s`` and true values ``y``."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, float)[:, None]
    if truncated:
        y = np.clip(y, 0.0, None)

    def nll(logc: float) -> float:
        return _mixture_nll(*_calibrated(a, m, s, float(np.exp(logc)), prior_knee), y,
                            truncated)

    r = minimize_scalar(nll, bounds=(np.log(0.2), np.log(5.0)), method="bounded",
                        options={"xatol": 1e-4})
    return float(np.exp(r.x))


def fit_snr_calibration(a, m, s, y, *, truncated: bool = True, prior_knee: float | None = None,
                        n_bins: int = 6, min_per_bin: int = 300, c=None,
                        crowd_c: float = CROWD_C) -> SNRCalibration:
    """Fit an :class:`SNRCalibration` to mixtures ``a, m, s`` (n, K) and true normalised
    fluxes ``y`` (n,): the stamps are split into ``n_bins`` equal-count bins of the mixture's
    ``asinh(mean / std)``, and in each the shift and log width factor that minimise the
    negative log-likelihood of the true fluxes (eq. 10's truncated density, or eq. 8's with
    ``truncated=False``; with ``prior_knee`` after the prior division, as users get the
    data-only mode).  Fewer bins when there are fewer than ``min_per_bin`` stamps per bin.
    With the rows' crowding ``c`` (:func:`crowding`), crowded rows (``c > crowd_c``) get their
    own calibration (half the bins) when both groups hold ``2 min_per_bin`` rows."""
    if c is not None:
        crowd = np.asarray(c, float) > crowd_c
        if min(crowd.sum(), (~crowd).sum()) >= 2 * min_per_bin:
            kw = {"truncated": truncated, "prior_knee": prior_knee, "min_per_bin": min_per_bin}
            iso = fit_snr_calibration(a[~crowd], m[~crowd], s[~crowd], np.asarray(y)[~crowd],
                                      n_bins=n_bins, **kw)
            cr = fit_snr_calibration(a[crowd], m[crowd], s[crowd], np.asarray(y)[crowd],
                                     n_bins=max(n_bins // 2, 1), **kw)
            return replace(iso, crowded=cr, crowd_c=float(crowd_c))
    from scipy.optimize import minimize

    a, m, s = (np.asarray(v, float) for v in (a, m, s))
    y = np.asarray(y, float)[:, None]
    if truncated:
        y = np.clip(y, 0.0, None)
    z, sd = _mixture_snr(a, m, s)
    nb = int(max(1, min(n_bins, len(z) // max(min_per_bin, 1))))
    edges = np.quantile(z, np.linspace(0, 1, nb + 1))
    idx = np.clip(np.searchsorted(edges, z, side="right") - 1, 0, nb - 1)
    centres, log_scale, shift = [], [], []
    for b in range(nb):
        sel = idx == b
        ab, mb, sb, yb, sdb = a[sel], m[sel], s[sel], y[sel], sd[sel, None]

        def nll(p, ab=ab, mb=mb, sb=sb, yb=yb, sdb=sdb):
            a_, m_, s_ = ab, mb + p[1] * sdb, sb * np.exp(p[0])
            if prior_knee is not None:
                a_, m_, s_ = divide_training_prior(a_, m_, s_, prior_knee)
            return _mixture_nll(a_, m_, s_, yb, truncated)

        r = minimize(nll, np.zeros(2), method="Nelder-Mead",
                     options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 400})
        centres.append(float(np.median(z[sel])))
        log_scale.append(float(np.clip(r.x[0], np.log(0.2), np.log(5.0))))
        shift.append(float(np.clip(r.x[1], -2.0, 2.0)))
    order = np.argsort(centres)
    cz = np.asarray(centres)[order]
    cz = cz + np.arange(len(cz)) * 1e-9  # strictly increasing for np.interp
    return SNRCalibration(tuple(cz), tuple(np.asarray(log_scale)[order]),
                          tuple(np.asarray(shift)[order]))


def evaluate_mixtures(model, t: dict, flux_true: np.ndarray, mag: np.ndarray, *,
                      sigma_scale: float | SNRCalibration = 1.0, lower: float | None = 0.0,
                      prior_knee: float | None = None) -> dict:
    """Validation metrics of a model on tensors ``t``: bias and sigma68 of the relative error of
    mode and mean, PIT KS p-value, per magnitude range; widths times ``sigma_scale``, components
    truncated at ``lower`` (None: the likelihood mode), divided by the prior-free training
    density of knee ``prior_knee`` (the likelihood mode; None: not)."""
    from ..metrics import bias, pit_gaussian_mixture, pit_uniformity, scatter

    model.eval()
    a, m, s = predict_mixtures(model, t["x"], t["feats"], t["coords"], t["mag"], t["has_mag"],
                               t["key"])
    a, m, s = _calibrated(a, m, s, sigma_scale, prior_knee, crowding(t["feats"]))
    unit = np.asarray(t["unit"])[:, None]
    summ = mixture_summary(a, m * unit, s * unit, lower=lower)
    pit = pit_gaussian_mixture(a, m * unit, s * unit, flux_true, lower=lower)
    out = {"n": int(len(flux_true)), "pit_ks_pvalue": pit_uniformity(pit).pvalue}
    for name, sel in (("all", np.ones(len(mag), bool)), ("i_lt_21", mag < 21),
                      ("i_gt_21", mag >= 21)):
        if sel.sum() < 5:
            continue
        for est in ("mode", "mean"):
            f = summ[f"flux_{est}"][sel]
            out[f"bias_{est}_{name}"] = bias(f, flux_true[sel])
            out[f"sigma68_{est}_{name}"] = scatter(f, flux_true[sel])
    return {k: (round(float(v), 5) if isinstance(v, float) else v) for k, v in out.items()}


class _LastLayerOnly:
    """Adapter for the Trainer: trains ``net.last`` only, keeping every BatchNorm in eval mode
    (frozen running statistics), as Lumos' transfer learning requires."""

    def __new__(cls, net):
        import torch

        class Tuner(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.net = inner

            def train(self, mode: bool = True):
                super().train(mode)
                self.net.eval()
                self.net.last.train(mode)
                return self

            def forward(self, *a):
                return self.net(*a)

        return Tuner(net)


def fine_tune_pairs(net, pairs: dict, sims: dict, *, faint_mag: float = 20.5,
                    pair_weight: float = 1.0, epochs: int = 10, lr: float = 1e-4,
                    batch_size: int = 128, seed: int = 0, device: str = "auto",
                    threads: int | None = None, quiet: bool = True):
    """Unsupervised transfer learning (Lumos eq. 11-12): fine-tune only the last dense layer on
    pairs of observations of the same objects (pair-overlap loss) plus the supervised loss on
    simulations, weighted equally (``pair_weight`` = 1).

    ``pairs``: tensors of the first and second observation (keys of :data:`TENSOR_KEYS` minus
    ``y`` suffixed ``_1`` / ``_2``) and ``ratio`` = unit_2 / unit_1 (both observations must be
    in the same calibrated flux units); ``sims``: supervised tensors (``TENSOR_KEYS``).
    Simulations are resampled to the number of pairs.  Returns the Trainer history.
    """
    import torch

    from ..nn.lumos import lumos_loss, pair_overlap_nll
    from ..nn.trainer import TrainConfig, Trainer

    n = len(pairs["ratio"])
    if n == 0:
        raise InputError("no pairs of observations to fine-tune on")
    g = np.random.default_rng(seed)
    pick = torch.from_numpy(g.integers(0, len(sims["y"]), n))
    data = {f"s_{k}": sims[k][pick] for k in TENSOR_KEYS}
    data.update({k: v for k, v in pairs.items()})
    tuner = _LastLayerOnly(net)
    sup_loss_mag = torch_where_mag

    def loss(model, b):
        def run(p):
            return model(b[f"{p}x"].float(), b[f"{p}feats"], b[f"{p}coords"], b[f"{p}mag"],
                         b[f"{p}has_mag"], b[f"{p}key"])

        a, m, s = run("s_")
        sup = lumos_loss(a, m, s, b["s_y"], sup_loss_mag({"mag": b["s_mag"],
                                                          "has_mag": b["s_has_mag"]}),
                         faint_mag=faint_mag, likelihood=b["s_has_mag"] <= 0)
        a1, m1, s1 = run("x1_")
        a2, m2, s2 = run("x2_")
        r = b["ratio"][:, None]
        return sup + pair_weight * pair_overlap_nll(a1, m1, s1, a2, m2 * r, s2 * r)

    tc = TrainConfig(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), seed=seed,
                     device=device, threads=threads, quiet=quiet, patience=None,
                     scheduler="step", scheduler_kwargs={"step_size": max(1, epochs // 2),
                                                         "gamma": 0.1})
    trainer = Trainer(tuner, loss, tc, parameters=net.last.parameters())
    hist = trainer.fit(data)
    net.eval()
    return hist


def pair_tensors(first: dict, second: dict) -> dict:
    """Pair tensors for :func:`fine_tune_pairs` from two :func:`_tensors`-style dicts."""
    import torch

    out = {}
    for p, t in (("x1_", first), ("x2_", second)):
        for k in ("x", "feats", "coords", "mag", "has_mag", "key"):
            out[p + k] = t[k]
    out["ratio"] = torch.from_numpy((np.asarray(second["unit"]) / np.asarray(first["unit"]))
                                    .astype(np.float32))
    return out


def find_pairs(table, *, max_pairs: int = 20000, seed: int = 0):
    """Pairs of observations of the same object in the same band from a table with columns
    ``id``, ``image`` and ``band`` (e.g. simulator truth, or photometry tables with a band
    column): consecutive observations of each (id, band) are paired.  Returns a Table with
    ``id, band, image_1, image_2``."""
    from astropy.table import Table

    for c in ("id", "image", "band"):
        if c not in table.colnames:
            raise InputError(f"pairs table needs column {c!r} (has {table.colnames})")
    ids = np.asarray(table["id"])
    bands = np.asarray(table["band"]).astype(str)
    imgs = np.asarray(table["image"]).astype(str)
    order = np.lexsort((imgs, ids, bands))
    ids, bands, imgs = ids[order], bands[order], imgs[order]
    same = (ids[1:] == ids[:-1]) & (bands[1:] == bands[:-1]) & (imgs[1:] != imgs[:-1])
    i = np.flatnonzero(same)
    if len(i) > max_pairs:
        i = np.sort(np.random.default_rng(seed).choice(i, max_pairs, replace=False))
    return Table({"id": ids[i], "band": bands[i], "image_1": imgs[i], "image_2": imgs[i + 1]})


def _neighbour_channel(nmap: np.ndarray, x: np.ndarray, y: np.ndarray, mag: np.ndarray,
                       models: np.ndarray) -> np.ndarray:
    """The neighbour channel: the catalogue's expected image ``nmap`` cut out around each
    source, minus the source's own model (``models``, unit total, stamp-sized) times its
    reference flux from ``mag``.  Sources without a position get zeros."""
    from ..simulate.galaxies import reference_flux

    ok = np.isfinite(x) & np.isfinite(y)
    S = models.shape[-1]
    near = np.nan_to_num(cutouts(nmap, np.where(ok, x, -1e9), np.where(ok, y, -1e9), S).data)
    return near - reference_flux(mag)[:, None, None] * models


def pairs_from_exposures(images: list[Image], catalogs: list, pairs, settings,
                         keys: list[str], psf: np.ndarray,
                         neighbour_catalogs: list | None = None, joint: bool = True,
                         ratio: bool = False, deblend: bool = False) -> dict:
    """Network tensors of both observations of each pair.  ``images``: exposures (with names);
    ``catalogs``: per exposure, its catalogue rows with ``x, y`` and shape columns; ``pairs``:
    Table ``id, image_1, image_2``; ``neighbour_catalogs``: per exposure, every catalogued
    source (the neighbour channel; None for networks without one)."""
    import torch

    from ..simulate.galaxies import model_images, neighbour_map

    by_name = {im.name: (im, c) for im, c in zip(images, catalogs, strict=True)}
    nmaps: dict[str, np.ndarray] = {}
    if neighbour_catalogs is not None:
        for im, nc in zip(images, neighbour_catalogs, strict=True):
            nmaps[im.name] = neighbour_map(im.shape, np.asarray(nc["x"], float),
                                           np.asarray(nc["y"], float),
                                           source_shapes(nc, len(nc)),
                                           _catalog_mag(nc, len(nc)), psf, settings)
    firsts, seconds = [], []
    for col, acc in (("image_1", firsts), ("image_2", seconds)):
        for name in np.unique(np.asarray(pairs[col]).astype(str)):
            if name not in by_name:
                raise InputError(f"pairs table names image {name!r}, which is not among the "
                                 "training exposures")
            rows = np.flatnonzero(np.asarray(pairs[col]).astype(str) == name)
            im, cat = by_name[name]
            cid = np.asarray(cat["id"])
            pos = {v: i for i, v in enumerate(cid)}
            ci = np.array([pos.get(v, -1) for v in np.asarray(pairs["id"])[rows]])
            if (ci < 0).any():
                raise InputError(f"pairs table: id {np.asarray(pairs['id'])[rows][ci < 0][0]} "
                                 f"is not in the catalogue rows of {name}")
            c = cat[ci]
            x, y = np.asarray(c["x"], float), np.asarray(c["y"], float)
            st = cutouts(im, x, y, settings.stamp_size)
            shapes = source_shapes(c, len(c))
            models = model_images(shapes, psf, np.nan_to_num(st.dx), np.nan_to_num(st.dy),
                                  settings)
            mag = np.asarray(c["mag"], float) if "mag" in c.colnames else None
            from ..background.bkgnet import key_name

            k = key_name(im.meta.band, im.meta.epoch)
            if k not in keys:
                keys.append(k)
            nb = None
            if nmaps:
                nb = _neighbour_channel(nmaps[name], x, y, _catalog_mag(c, len(c)), models)
            t = _tensors(st.data, st.valid, models, x, y, im.shape, mag, keys.index(k), torch,
                         neighbours=nb, joint=joint, ratio=ratio, deblend=deblend)
            t["rows"] = rows
            acc.append(t)

    def gather(parts):
        rows = np.concatenate([p["rows"] for p in parts])
        inv = np.argsort(rows)
        out = {k: torch.cat([p[k] for p in parts])[torch.from_numpy(inv)]
               for k in ("x", "feats", "coords", "mag", "has_mag", "key")}
        out["unit"] = np.concatenate([p["unit"] for p in parts])[inv]
        out["ok"] = np.concatenate([p["ok"] for p in parts])[inv]
        return out

    a, b = gather(firsts), gather(seconds)
    keep = torch.from_numpy(a["ok"] & b["ok"])
    pt = pair_tensors(a, b)
    return {k: v[keep] for k, v in pt.items()}


def _stamp_data(images, catalog, cfg, ls: LumosSettings, gs, net_keys: list[str], *,
                simulated: bool, seed: int, quiet: bool, say, **read_kwargs: Any) -> dict:
    """Teahupoo-like stamps and their network tensors (training, and ``--calibrate-only``):
    from ``ls.n_exposures`` exposures of the built-in simulator (``simulated``) or from the
    user's ``images`` + ``catalog``; ``net_keys`` (band x epoch) is extended.  Returns a dict with
    ``sim`` (per-stamp truths; the pixel arrays freed), ``tensors``, ``free`` (prior-free
    stamps, shown without their magnitude), ``ims``, ``cats``, ``nbcats`` and ``summary``."""
    import torch

    from ..background.bkgnet import _galaxy_pool, simulated_exposures
    from ..io import catalog_for_image, read_catalog
    from ..simulate.galaxies import band_system_catalog, simulate_galaxy_stamps

    rng = np.random.default_rng(seed)
    if simulated:
        say(f"simulating {ls.n_exposures} exposures with the built-in simulator "
            f"([simulate] of {cfg.name})")
        exps, fieldcat = simulated_exposures(ls.n_exposures, config=cfg.simulate, seed=seed)
        pool = _galaxy_pool(fieldcat, rng)
        ims = [e[0] for e in exps]
        cats = []
        # the simulator's own sources in the injected galaxies' band system
        bandcat = band_system_catalog(fieldcat, cfg.simulate, gs)
        for im, _xy, _bg, _truth in exps:
            c = bandcat.copy()
            cx, cy = im.wcs.all_world2pix(np.asarray(c["ra"]), np.asarray(c["dec"]), 0)
            c["x"], c["y"] = cx, cy
            cats.append(c)
        pairs_xy = [(np.asarray(c["x"]), np.asarray(c["y"])) for c in cats]
        data_summary = {"source": "built-in simulator", "config": cfg.name,
                        "n_exposures": int(ls.n_exposures), "seed": int(seed)}
    else:
        from ..workflows import expand_paths, iter_images

        if not images:
            raise InputError("give training exposures (IMAGE...) or --simulated")
        if catalog is None:
            raise InputError("--catalog is required (empty positions, galaxy shapes)")
        paths = expand_paths(images)
        cat_all = catalog if hasattr(catalog, "colnames") else read_catalog(catalog)
        read_kwargs.setdefault("keys", cfg.header)
        read_kwargs.setdefault("required", ("gain",))
        ims = list(iter_images(paths, quiet=quiet, **read_kwargs))
        cats = [catalog_for_image(cat_all, im) for im in ims]
        pairs_xy = [(np.asarray(c["x"], float), np.asarray(c["y"], float)) for c in cats]
        pool = _galaxy_pool(cat_all, rng)
        data_summary = {"source": "user exposures", "n_exposures": len(paths),
                        "images": [p.name for p in paths[:50]]}
    # the neighbour channel shows what a user's catalogue holds: its catalogued sources
    nbcats = [c[np.asarray(c["catalogued"], bool)] if "catalogued" in c.colnames else c
              for c in cats]
    items = list(zip(ims, pairs_xy, nbcats, strict=True)) if ls.neighbours else \
        list(zip(ims, pairs_xy, strict=True))
    sim = simulate_galaxy_stamps(items, ls.stamps_per_image, gs,
                                 galaxies=pool, seed=seed + 1, quiet=quiet,
                                 neighbour_channel=ls.neighbours)
    # one network, two modes (LumosPhotometer use_mag): stamps whose flux was drawn from the
    # locally flat density are shown without their magnitude (it says nothing about them)
    free = np.asarray(sim["prior_free"], bool)
    t = training_tensors(sim, net_keys, neighbours=ls.neighbours, joint=ls.neighbour_fit,
                         ratio=ls.neighbour_ratio, hidden_mag=free, deblend=ls.data_deblend)
    for k in ("stamps", "models", "neighbours"):  # the tensors hold them now (GBs)
        sim.pop(k, None)
    t["has_mag"][torch.from_numpy(free)] = 0.0
    return {"sim": sim, "tensors": t, "free": free, "ims": ims, "cats": cats,
            "nbcats": nbcats, "summary": data_summary}


def train_lumos(images, catalog, output: str | Path, *, config: Any = None,
                simulated: bool = False, n_exposures: int | None = None,
                stamps_per_image: int | None = None, epochs: int | None = None,
                batch_size: int | None = None, lr: float | None = None,
                preset: str | None = None, pairs: Any = None, seed: int = 0,
                device: str = "auto", threads: int | None = None, resume: bool = False,
                overwrite: bool = False, quiet: bool = False, command: str | None = None,
                description: str = "", **read_kwargs: Any) -> dict:
    """Train Lumos on Teahupoo-like simulations and write it (weights + card); return the card.

    Parameters
    ----------
    images : FITS exposures whose empty positions give the background cutouts (ignored with
        ``simulated``)
    catalog : catalogue (positions to avoid; joint galaxy shapes and magnitudes to draw from)
    output : model file (.pt); checkpoint ``<output>.ckpt``
    config : SurveyConfig (``[lumos]``; ``[simulate]`` with ``simulated``)
    simulated : background cutouts from ``n_exposures`` exposures of the built-in simulator
    pairs : None, "auto" (pairs of the same catalogued object in two exposures of the same
        band among the training exposures) or a table / path with ``id, image_1, image_2``:
        fine-tune the last layer on them (eq. 11-12) after the supervised training
    """
    import torch

    from .. import __version__
    from ..background.bkgnet import split_by_exposure
    from ..config import load_config
    from ..io import check_output, read_catalog
    from ..nn.device import seed_everything
    from ..nn.lumos import Lumos, LumosArch, flops_per_stamp
    from ..nn.modelfile import save_model
    from ..nn.trainer import TrainConfig, Trainer
    from ..simulate.galaxies import GalaxySimSettings, psf_for

    t0 = time.perf_counter()
    cfg = config or load_config()
    output = Path(output)
    if output.suffix != ".pt":
        raise InputError(f"--output must end in .pt, got {output}")
    inputs = [] if simulated else list(images or [])
    if catalog is not None and not hasattr(catalog, "colnames"):
        inputs.append(catalog)
    check_output(output, overwrite=overwrite or resume, inputs=inputs)
    section = dict(getattr(cfg, "lumos", {}) or {})
    ls = LumosSettings.from_config(section, epochs=epochs, batch_size=batch_size, lr=lr,
                                   preset=preset, stamps_per_image=stamps_per_image,
                                   n_exposures=n_exposures)
    gs = GalaxySimSettings.from_config(section)
    seed_everything(seed)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    keys: list[str] = []
    data = _stamp_data(images, catalog, cfg, ls, gs, net_keys=keys, simulated=simulated, seed=seed,
                       quiet=quiet, say=say, **read_kwargs)
    sim, t, free = data["sim"], data["tensors"], data["free"]
    ims, cats, nbcats, data_summary = data["ims"], data["cats"], data["nbcats"], data["summary"]
    ok = t["ok"]
    is_val = split_by_exposure(sim["exposure"], ls.val_fraction, seed)
    tr, va = ok & ~is_val, ok & is_val
    if va.sum() == 0:
        va = tr
    say(f"{tr.sum()} training and {va.sum()} validation stamps; keys: {', '.join(keys)}")
    arch = LumosArch.from_preset(ls.preset, stamp_size=gs.stamp_size, n_keys=len(keys),
                                 neighbours=ls.neighbours, compress_feats=True,
                                 neighbour_fit=ls.neighbour_fit,
                                 neighbour_ratio=ls.neighbour_ratio,
                                 data_deblend=ls.data_deblend)
    model = Lumos(arch)
    tc = TrainConfig(epochs=int(ls.epochs), batch_size=int(ls.batch_size), lr=float(ls.lr),
                     weight_decay=1e-4, patience=6, scheduler="plateau",
                     scheduler_kwargs={"factor": 0.3, "patience": 2}, grad_clip=10.0,
                     seed=seed, device=device, threads=threads, quiet=quiet)
    from ..nn.lumos import FLUX_UNIT

    loss = make_loss(ls.faint_mag, knee=gs.prior_free_knee / FLUX_UNIT,
                     weight_cap=ls.prior_free_weight_cap)
    trainer = Trainer(model, loss, tc, checkpoint=output.with_suffix(".ckpt"))
    hist = trainer.fit(_subset(t, tr), _subset(t, va), resume=resume)
    model = trainer.model.cpu().eval()
    # validation: the catalogue-like stamps (with and without their magnitude) and the
    # prior-free ones (the no-magnitude mode's calibration set)
    va_cat, va_free = va & ~free, va & free
    if va_cat.sum() == 0:
        va_cat = va
    vt = {**_subset(t, va_cat), "unit": t["unit"][va_cat]}
    ftrue, vmag = sim["flux_true"][va_cat], sim["mag"][va_cat]
    metrics = evaluate_mixtures(model, vt, ftrue, vmag)
    finetune = None
    if pairs is not None:
        if isinstance(pairs, str) and pairs == "auto":
            from astropy.table import Table, vstack

            rows = [Table({"id": np.asarray(c["id"]), "image": [im.name] * len(c),
                           "band": [str(im.meta.band)] * len(c)})
                    for im, c in zip(ims, cats, strict=True)]
            ptab = find_pairs(vstack(rows), seed=seed, max_pairs=ls.max_pairs)
            # keep galaxies on the CCD in both exposures
        else:
            ptab = pairs if hasattr(pairs, "colnames") else read_catalog(pairs)
        onccd = [c[np.asarray(c["on_image"], bool)] if "on_image" in c.colnames else
                 c[(np.asarray(c["x"]) > 0) & (np.asarray(c["x"]) < im.shape[1] - 1)
                   & (np.asarray(c["y"]) > 0) & (np.asarray(c["y"]) < im.shape[0] - 1)]
                 for im, c in zip(ims, cats, strict=True)]
        if "kind" in onccd[0].colnames:
            onccd = [c[np.asarray(c["kind"]) == "galaxy"] for c in onccd]
        names = {im.name: set(np.asarray(c["id"]).tolist()) for im, c in zip(ims, onccd,
                                                                            strict=True)}
        keep = np.array([r["id"] in names.get(str(r["image_1"]), ()) and
                         r["id"] in names.get(str(r["image_2"]), ()) for r in ptab], bool)
        ptab = ptab[keep]
        say(f"fine-tuning the last layer on {len(ptab)} pairs (eq. 11-12)")
        pt = pairs_from_exposures(ims, onccd, ptab, gs, keys, psf_for(gs),
                                  nbcats if ls.neighbours else None, joint=ls.neighbour_fit,
                                  ratio=ls.neighbour_ratio, deblend=ls.data_deblend)
        if len(keys) > arch.n_keys:
            raise InputError(f"pairs come from band x epoch combinations unseen in training: "
                             f"{keys[arch.n_keys:]}")
        fh = fine_tune_pairs(model, pt, _subset(t, tr), faint_mag=ls.faint_mag,
                             pair_weight=ls.pair_weight, epochs=ls.finetune_epochs,
                             lr=ls.finetune_lr, batch_size=ls.batch_size, seed=seed,
                             device=device, threads=threads, quiet=quiet)
        model = model.cpu().eval()
        metrics_ft = evaluate_mixtures(model, vt, ftrue, vmag)
        finetune = {"n_pairs": int(len(pt["ratio"])), "epochs": ls.finetune_epochs,
                    "lr": ls.finetune_lr, "final_loss": fh.train_loss[-1] if fh.epochs else None,
                    "metrics_before": metrics, "metrics_after": metrics_ft}
    # temperature scaling of the widths on the validation exposures, per mode
    sigma_scale, snr_cal, metrics, no_mag = _calibrate_modes(model, t, vt, va_free, ftrue, vmag,
                                                            gs, bins=ls.calibration_bins)
    metrics["uncalibrated"] = evaluate_mixtures(model, vt, ftrue, vmag)
    if no_mag is not None:
        metrics["no_mag"] = no_mag
    say("validation width calibration (sigma_scale): "
        + ", ".join(f"{k} {v:.3f}" for k, v in sigma_scale.items()))
    metrics.update(best_epoch=hist.best_epoch + 1, epochs_run=len(hist.epochs),
                   best_val_nll=hist.best_val, train_seconds=round(time.perf_counter() - t0, 1))
    card = {
        "kind": "lumos", "arch": arch.as_dict(), "preset": arch.preset,
        "description": description or "Lumos flux PDF (5-Gaussian mixture) per source",
        "inputs": {"keys": keys, "simulation": gs.as_dict(), "estimator": ls.estimator,
                   "sigma_scale": {k: round(v, 5) for k, v in sigma_scale.items()},
                   "snr_calibration": {k: v.as_dict() for k, v in snr_cal.items()},
                   "normalisation": "cutout: median and 1.4826 MAD of valid pixels (2x2 grid), "
                                    "5 asinh(v/5), invalid = 0, validity channel; model: "
                                    "unit-total PSF-convolved Sersic / its peak; flux unit: "
                                    "pixel sigma x 10",
                   "coords": "x / (nx - 1) * 2 - 1, y / (ny - 1) * 2 - 1",
                   "mag": "(mag - 21) / 2; learned default when absent"},
        "training": {"settings": {f.name: getattr(ls, f.name) for f in fields(ls)},
                     "seed": seed, "flops_per_stamp": flops_per_stamp(model),
                     "history": [{k: round(v, 6) if isinstance(v, float) else v
                                  for k, v in e.items()} for e in hist.epochs],
                     "finetune": finetune},
        "data": {**data_summary, "n_train": int(tr.sum()), "n_val": int(va.sum())},
        "metrics": metrics,
        "training_command": command or "(API) skysub.photometry.lumos.train_lumos",
        "skysub_version": __version__,
    }
    save_model(output, model, card, overwrite=True)
    del torch
    return card


def _calibrate_modes(model, t: dict, vt: dict, free_sel: np.ndarray, ftrue: np.ndarray,
                     vmag: np.ndarray, gs, *, min_free: int = 1, bins: int = 6
                     ) -> tuple[dict, dict, dict, dict | None]:
    """Validation calibration of both modes (training and ``--calibrate-only``): the
    with-magnitude mode on the catalogue-like tensors ``vt`` (true fluxes ``ftrue``, magnitudes
    ``vmag``), the data-only mode on the prior-free rows ``free_sel`` of ``t`` (at least
    ``min_free``) as the posterior the network learned there (the photometer divides the
    training density out after the calibration).  Returns the single width factors
    (``sigma_scale``), each mode's per-SNR calibration in ``bins`` bins (:class:`SNRCalibration`;
    none when ``bins`` is 0) and the calibrated metrics of each mode on ``vt`` (data-only: None
    without prior-free rows), measured with the calibration the photometer applies."""
    scale, snr = {}, {}

    def fit(mode: str, t_: dict, truncated: bool) -> None:
        """One prediction pass serves both fits of ``mode``: the single width factor and, with
        ``bins``, the per-SNR calibration (crowded rows apart)."""
        a, m, s = _predict(model, t_)
        y = np.asarray(t_["y"], float)
        scale[mode] = fit_width_factor(a, m, s, y, truncated=truncated)
        if bins:
            snr[mode] = fit_snr_calibration(a, m, s, y, truncated=truncated, n_bins=bins,
                                            c=crowding(t_["feats"]))

    fit("mag", vt, truncated=True)
    m_mag = evaluate_mixtures(model, vt, ftrue, vmag, sigma_scale=snr.get("mag", scale["mag"]))
    if int(np.sum(free_sel)) < max(min_free, 1):
        return scale, snr, m_mag, None
    knee = _prior_knee(gs)
    free = _subset(t, free_sel)
    # the data-only mode is calibrated as the network's POSTERIOR on the prior-free stamps,
    # whose true fluxes follow the training density that the posterior assumes, and divided by
    # that density afterwards (as the photometer does).  Fitting the likelihood itself to the
    # true fluxes is not a proper score: the truths come from a prior, and the fit pulls the
    # likelihood towards it (docs/lumos.md)
    fit("no_mag", free, truncated=False)
    # the data-only mode on the same stamps, with the inputs it computes without the magnitude
    vt0 = {**vt, "has_mag": vt["has_mag"] * 0, "feats": vt.get("feats_nomag", vt["feats"])}
    m_nomag = evaluate_mixtures(model, vt0, ftrue, vmag, lower=None, prior_knee=knee,
                                sigma_scale=snr.get("no_mag", scale["no_mag"]))
    return scale, snr, m_mag, m_nomag


def recalibrate_lumos(model_path: str | Path, images=None, catalog=None, *, config: Any = None,
                      simulated: bool = False, n_exposures: int | None = None,
                      stamps_per_image: int | None = None, seed: int = 1,
                      quiet: bool = False, command: str | None = None,
                      **read_kwargs: Any) -> dict:
    """Re-measure a trained model's width calibration (``sigma_scale`` of both modes) on a
    fresh calibration set and rewrite its card; the weights are unchanged
    (``skysub train lumos --calibrate-only``).

    The stamps are simulated exactly as in training, with the card's simulation settings, from
    ``n_exposures`` simulator exposures (``simulated``; seed ``seed``: use one that neither
    training nor the benchmark used) or from the user's ``images`` + ``catalog``.  Every stamp
    is a calibration stamp: the catalogue-like ones calibrate the posterior mode, the
    prior-free ones the data-only likelihood (after the prior division, as users get it).
    The card records the data, the command and the calibrated metrics under ``calibration``.
    """
    from ..config import load_config
    from ..nn.modelfile import load_model, save_model
    from ..simulate.galaxies import GalaxySimSettings

    cfg = config or load_config()
    net, card = load_model(model_path, kind="lumos")
    card.pop("path", None)
    card.pop("file_size_bytes", None)
    inputs = card.setdefault("inputs", {})
    gs = GalaxySimSettings.from_config(inputs.get("simulation", {}))
    ls = LumosSettings.from_config(dict(getattr(cfg, "lumos", {}) or {}),
                                   stamps_per_image=stamps_per_image, n_exposures=n_exposures)
    ls = replace(ls, neighbours=bool(net.arch.neighbours),
                 neighbour_fit=bool(net.arch.neighbour_fit),
                 neighbour_ratio=bool(getattr(net.arch, "neighbour_ratio", False)),
                 data_deblend=bool(getattr(net.arch, "data_deblend", False)))
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    keys = list(inputs.get("keys", []))
    n_keys = len(keys)
    data = _stamp_data(images, catalog, cfg, ls, gs, net_keys=keys, simulated=simulated, seed=seed,
                       quiet=quiet, say=say, **read_kwargs)
    if len(keys) > n_keys:
        raise InputError(f"calibration exposures come from band x epoch combinations the model "
                         f"was not trained on: {keys[n_keys:]}")
    sim, t, free = data["sim"], data["tensors"], data["free"]
    ok = np.asarray(t["ok"], bool)
    cat_sel, free_sel = ok & ~free, ok & free
    if cat_sel.sum() < 100:
        raise InputError(f"only {int(cat_sel.sum())} usable calibration stamps: raise "
                         "--n-exposures or --stamps-per-image")
    vt = {**_subset(t, cat_sel), "unit": t["unit"][cat_sel]}
    ftrue, vmag = sim["flux_true"][cat_sel], sim["mag"][cat_sel]
    scale, snr_cal, m_mag, m_nomag = _calibrate_modes(net, t, vt, free_sel, ftrue, vmag, gs,
                                                      min_free=100, bins=ls.calibration_bins)
    metrics = {"mag": m_mag} | ({} if m_nomag is None else {"no_mag": m_nomag})
    # the with-magnitude PIT of stamps with and without an injected neighbour: a network that
    # cannot tell them apart errs in opposite directions on the two (docs/lumos.md)
    blended = np.isfinite(np.asarray(sim["blend_r"], float))[cat_sel]
    for name, sel in (("isolated", ~blended), ("blended", blended)):
        if sel.sum() >= 100:
            sub = _subset(vt, sel) | {"unit": vt["unit"][sel]}
            m_mag[f"pit_ks_pvalue_{name}"] = evaluate_mixtures(
                net, sub, ftrue[sel], vmag[sel],
                sigma_scale=snr_cal.get("mag", scale["mag"]))["pit_ks_pvalue"]
    say("width calibration (sigma_scale): "
        + ", ".join(f"{k} {inputs.get('sigma_scale', {}).get(k, float('nan')):.4f} -> {v:.4f}"
                    for k, v in scale.items()))
    inputs["sigma_scale"] = {k: round(v, 5) for k, v in scale.items()}
    inputs["snr_calibration"] = {k: v.as_dict() for k, v in snr_cal.items()}
    card["calibration"] = {
        "data": {**data["summary"], "stamps_per_image": int(ls.stamps_per_image),
                 "n_catalogue_like": int(cat_sel.sum()), "n_prior_free": int(free_sel.sum())},
        "sigma_scale": inputs["sigma_scale"], "snr_calibration": inputs["snr_calibration"],
        "metrics": metrics,
        "command": command or "(API) skysub.photometry.lumos.recalibrate_lumos",
    }
    save_model(model_path, net, card, overwrite=True)
    return card


__all__ = ["LumosPhotometer", "LumosSettings", "mixture_summary", "train_lumos",
           "fine_tune_pairs", "calibrate_widths", "find_pairs", "predict_mixtures",
           "training_tensors", "evaluate_mixtures", "pair_tensors", "divide_training_prior",
           "recalibrate_lumos"]
