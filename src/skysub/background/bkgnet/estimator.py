"""BKGnet as "just another background estimator": :class:`BKGnetBackground` adapts a trained
:class:`skysub.nn.bkgnet.BKGnet` to the estimator protocol of :mod:`skysub.background.base`
(image + positions in, background per pixel and its 1-sigma error out), and
:class:`BKGnetSettings` holds the stamp geometry and training-data settings (``[bkgnet]``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ... import flags as F
from ...errors import ConfigError, InputError
from ...image import Image, as_image, image_method
from ...simulate.trainingdata import key_name
from ...stamps import WindowCutter, check_positions
from ..base import BackgroundResult

log = logging.getLogger("skysub")


#: the shipped model trained on the built-in PAUS-like simulator
DEFAULT_MODEL = "bkgnet-paus"


@dataclass
class BKGnetSettings:
    """Stamp geometry and training-data settings (the ``[bkgnet]`` configuration section).

    Attributes
    ----------
    stamp_size : stamp side [px] (BKGnet: 120)
    mask_size : hidden central square [px] (BKGnet: 16)
    label_radius : label circle radius [px] (BKGnet: 8)
    empty_radius : a training position is empty when no catalogued source is closer [px]
    stamps_per_image : training positions drawn per exposure
    edge_fraction : extra share of positions drawn within ``edge_width`` px of an edge
    edge_width : [px]
    saturation : stamps with a pixel above this (image units) are skipped
    label_clip : robust sigmas beyond which pixels are clipped out of the label circle
    inject : inject a catalogue-like Sérsic galaxy at the centre of every training stamp
    zero_point : magnitude of 1 count per second (sets injected fluxes from catalogue mags)
    psf_fwhm : Moffat PSF FWHM [px] of the injected galaxies
    psf_beta : Moffat beta
    val_fraction : share of the sky (tiles of 128 px, in every exposure) kept for validation
    min_valid : fewest valid pixels (2x2-subsampled grid, centre excluded) a stamp needs
    """

    stamp_size: int = 120
    mask_size: int = 16
    label_radius: float = 8.0
    empty_radius: float = 12.0
    stamps_per_image: int = 600
    edge_fraction: float = 0.3
    edge_width: float = 150.0
    saturation: float = 60000.0
    label_clip: float = 3.0
    inject: bool = True
    zero_point: float = 25.0
    psf_fwhm: float = 3.5
    psf_beta: float = 3.0
    val_fraction: float = 0.15
    min_valid: int = 64

    @classmethod
    def from_config(cls, section: dict | None, **overrides: Any) -> BKGnetSettings:
        section = {**(section or {}), **{k: v for k, v in overrides.items() if v is not None}}
        names = {f.name for f in fields(cls)}
        train_keys = set(TRAIN_KEYS)
        unknown = sorted(set(section) - names - train_keys)
        if unknown:
            raise ConfigError(f"[bkgnet]: unknown setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(names | train_keys))}")
        s = cls(**{k: v for k, v in section.items() if k in names})
        if s.stamp_size < 16 or s.mask_size >= s.stamp_size or s.mask_size < 0:
            raise ConfigError(f"[bkgnet]: need 16 <= stamp_size and 0 <= mask_size < stamp_size,"
                              f" got {s.stamp_size}, {s.mask_size}")
        if 2 * s.label_radius > s.mask_size + 1e-9 and s.mask_size > 0:
            log.warning("[bkgnet]: the label circle (r = %.1f px) is larger than the hidden "
                        "centre (%d px): the net sees label pixels", s.label_radius, s.mask_size)
        return s


#: training hyper-parameters that may also appear in [bkgnet]
TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "patience", "preset")


# -- the estimator ------------------------------------------------------------------------------
def _n_inside(x0: np.ndarray, y0: np.ndarray, S: int, nx: int, ny: int) -> np.ndarray:
    """Stamp pixels that fall on the image."""
    wx = np.clip(np.minimum(x0 + S, nx) - np.maximum(x0, 0), 0, None)
    wy = np.clip(np.minimum(y0 + S, ny) - np.maximum(y0, 0), 0, None)
    return wx * wy


#: stamps per forward pass of the fast CPU path (one worker; half that with several, for
#: balance): the feature maps of larger batches leave the cache (and are fresh allocations
#: every pass), which made batches of 512 ~2x slower per stamp than 64-128 on the project's CPU
FAST_BATCH = 128


class BKGnetBackground:
    """Background under each source predicted by a trained BKGnet.

    Parameters
    ----------
    model : str or Path or (torch.nn.Module, dict)
        A shipped model name (``"bkgnet-paus"``), a model file, or a ``(model, card)`` pair.
    batch_size : stamps per forward pass (memory ~ batch_size x 0.2 MB)
    device : "auto" (GPU when present), "cpu", "cuda"
    threads : torch threads on CPU (None = all cores of this process)
    name : label in output tables
    unknown_key : "error" (default) or "warn": what to do with an image whose band x epoch
        the model never saw.  With "warn" the estimate is made with the MEAN of the known
        band x epoch embeddings and a warning says so -- usable, but fine-tune on a few
        exposures of that band (``skysub train bkgnet ... --init MODEL``) before trusting it.
    fast : on CPU, the compiled path (default True): stamps cut, normalised and folded for the
        network in one numba pass (:meth:`skysub.stamps.WindowCutter.folded_inputs`) and the
        trunk of :func:`skysub.nn.inference.fast_trunk`, at most :data:`FAST_BATCH` stamps per
        pass.  Same numbers as ``fast=False`` (the torch reference path) to float32 rounding;
        it falls back to the reference path where numba or the fused kernels are missing.

    Notes
    -----
    ``bkg`` is the network's background per pixel (image units); ``bkg_err`` is the error of
    that prediction: for models trained on pixel labels, BKGnet eq. 5,
    ``sqrt(sigma_net^2 - sigma_label^2)`` with ``sigma_label`` from eq. 3 for the label circle
    (floored at 0.3 sigma_net), because the network's sigma also covers the noise of the labels
    it was trained on; for models trained on noise-free simulator labels ``sigma_net`` itself.
    ``pixel_std`` is NaN (photometry then uses the eq. 10 Poisson + read-noise pixel variance).
    ``sigma_net`` is first multiplied by the card's ``sigma_scale``, the pull width the network
    had on its validation exposures (:func:`sigma_scale`); ``extra["sigma_net"]`` holds that
    calibrated network sigma.  Models trained on pixel labels by this version carry an
    ``error_calibration`` instead (:func:`skysub.background.bkgnet.calibration.
    fit_error_calibration`): the error of the prediction as ``a sigma_net``, ``a`` fitted on
    held-out sky tiles of the training exposures against their pixel labels with eq. 3
    removed; the label noise faint sources add, measured from label stencils, is recorded
    there (``extra["sigma_net"]`` is then the network's own sigma).

    Flags: OFF_IMAGE (values NaN) for centres off the image; EDGE when the stamp reaches beyond
    the image; MASKED when masked/NaN pixels fall in the stamp; NO_DATA (values NaN) with fewer
    than ``min_valid`` usable pixels.
    """

    def __init__(self, model: Any = DEFAULT_MODEL, *, batch_size: int = 512,
                 device: str = "auto", threads: int | None = None, name: str = "bkgnet",
                 unknown_key: str = "error", fast: bool = True) -> None:
        import torch

        from ...nn.bkgnet import fuse_for_inference
        from ...nn.device import configure_threads, resolve_device
        from ...nn.modelfile import load_model

        if int(batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size!r}")
        if unknown_key not in ("error", "warn"):
            raise InputError(f"unknown_key must be 'error' or 'warn', got {unknown_key!r}")
        self.unknown_key = unknown_key
        self._warned: set[str] = set()
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            configure_threads(threads)
        if isinstance(model, tuple):
            net, card = model
        else:
            net, card = load_model(model, kind="bkgnet")
        net = fuse_for_inference(net.eval()).to(self.device)
        if self.device.type == "cpu":
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        #: the fast CPU network (:func:`skysub.nn.inference.fast_trunk`), or None
        self.fast_net = None
        if fast and self.device.type == "cpu":
            from ...nn.inference import fast_trunk

            fnet = fast_trunk(net, 2)
            self.fast_net = fnet if getattr(fnet, "fast_inference", False) else None
        self.card = card
        self.inputs = card.get("inputs", {})
        self.keys: list[str] = list(self.inputs.get("keys", []))
        self.batch_size = int(batch_size)
        self.sigma_scale = float(self.inputs.get("sigma_scale", 1.0))
        self.name = name

    def __repr__(self) -> str:
        return (f"BKGnetBackground({Path(self.card.get('path', 'model')).stem!r}, "
                f"batch_size={self.batch_size}, device={str(self.device)!r})")

    @property
    def stamp_size(self) -> int:
        return int(self.card["arch"]["stamp_size"])

    def key_index(self, image: Image) -> int:
        """Index of the image's band x epoch in the model's vocabulary (clear error if absent)."""
        k = key_name(image.meta.band, image.meta.epoch)
        if k in self.keys:
            return self.keys.index(k)
        if len(self.keys) == 1 and self.keys[0] == key_name(None, None):
            return 0
        if self.unknown_key == "warn":
            if k not in self._warned:
                self._warned.add(k)
                log.warning("%s: band/epoch %r is not known to the BKGnet model %s (it knows: "
                            "%s); using the mean of the known embeddings. Fine-tune on a few "
                            "exposures of this band (skysub train bkgnet IMAGES --catalog CAT "
                            "--init MODEL) before trusting the errors", image.name, k,
                            self.card.get("path", ""), ", ".join(self.keys))
            return self._mean_key_index()
        raise InputError(f"{image.name}: band/epoch {k!r} is not known to the BKGnet model "
                         f"{self.card.get('path', '')}; it knows: {', '.join(self.keys)}. "
                         "Fine-tune the model on this band (skysub train bkgnet IMAGES "
                         "--catalog CAT --init MODEL), set --band/--epoch, or accept the "
                         "mean of the known embeddings with a warning (--unknown-key warn; "
                         "unknown_key='warn')")

    def _mean_key_index(self) -> int:
        """Index of an extra embedding row holding the mean of the known ones (added once)."""
        import torch

        emb = self.net.embed
        n = len(self.keys)
        if emb.num_embeddings == n:
            w = emb.weight.detach()
            new = torch.nn.Embedding(n + 1, w.shape[1]).to(w.device)
            with torch.no_grad():
                new.weight[:n] = w
                new.weight[n] = w.mean(0)
            self.net.embed = new
            if self.fast_net is not None:
                self.fast_net.embed = new
        return n

    def _predict(self, cut: WindowCutter, img: Image, x: np.ndarray, y: np.ndarray,
                 mag: np.ndarray | None, key: int, idx: np.ndarray, local) -> tuple:
        """One batch ``idx``: the network's background and sigma per pixel (float64 numpy),
        ``ok``, the stamp median ``loc``, the valid-pixel count and the stamp corners."""
        import torch

        from ...nn import bkgnet as nb

        mask_size = int(self.card["arch"]["mask_size"])
        min_valid = int(self.inputs.get("min_valid", 64))
        fnet = self.fast_net
        f = None
        if fnet is not None and fnet.trunk.s2d and fnet.trunk.cin == 2:
            f = cut.folded_inputs(x[idx], y[idx], mask_size, min_valid=min_valid,
                                  asinh_scale=nb.ASINH_SCALE, mad_k=nb.MAD_SIGMA,
                                  floor_rel=nb.SCALE_FLOOR_REL, floor_abs=nb.SCALE_FLOOR_ABS,
                                  out=getattr(local, "buf", None))
        with torch.inference_mode():
            if f is not None:  # folded, channels-last: the fast trunk takes it as it is
                local.buf = f["x"].base if f["x"].base is not None else f["x"]
                xin = torch.from_numpy(f["x"]).permute(0, 3, 1, 2)
                loc, scale = torch.from_numpy(f["loc"]), torch.from_numpy(f["scale"])
                ok, n_valid, x0, y0 = f["ok"], f["n_valid"], f["x0"], f["y0"]
            else:
                data, valid, x0, y0 = cut(x[idx], y[idx])
                xin, loc, scale, ok = nb.normalise_stamps(torch.from_numpy(data),
                                                          torch.from_numpy(valid), mask_size,
                                                          min_valid=min_valid)
                ok, n_valid = ok.numpy(), valid.reshape(len(idx), -1).sum(1)
                xin = xin.to(self.device)
                if self.device.type == "cpu":
                    xin = xin.contiguous(memory_format=torch.channels_last)
            ny, nx = img.shape
            cx = x[idx] / max(nx - 1, 1) * 2 - 1
            cy = y[idx] / max(ny - 1, 1) * 2 - 1
            coords = torch.from_numpy(np.column_stack([cx, cy]).astype(np.float32))
            m = mag[idx] if mag is not None else np.full(len(idx), np.nan)
            has = np.isfinite(m)
            dev = self.device
            mu, ls = (self.net if fnet is None else fnet)(
                xin, coords.to(dev), torch.from_numpy(np.where(has, m, 0).astype(np.float32)
                                                      ).to(dev),
                torch.from_numpy(has.astype(np.float32)).to(dev),
                torch.full((len(idx),), key, dtype=torch.long, device=dev))
            b, s = nb.denormalise(mu.cpu(), ls.cpu(), loc, scale)
        return b.numpy(), s.numpy(), ok, loc.numpy(), n_valid, x0, y0

    def _run(self, img: Image, x: np.ndarray, y: np.ndarray, mag, key: int,
             todo: np.ndarray):
        """``(idx, *self._predict(...))`` for every batch of the sources ``todo``, in order.
        The fast CPU path with several torch threads runs its batches on that many Python
        threads with one torch thread each (:func:`skysub.nn.device.worker_map`; the compiled
        kernel and the forward pass release the GIL)."""
        import threading

        import torch

        cut = WindowCutter(img, self.stamp_size)  # one padded copy per image
        threads = torch.get_num_threads() if self.fast_net is not None else 1
        bs = self.batch_size
        if self.fast_net is not None:
            bs = min(bs, FAST_BATCH if threads == 1 else FAST_BATCH // 2)
        chunks = [todo[s:s + bs] for s in range(0, len(todo), bs)]
        local = threading.local()

        def one(idx):
            return (idx, *self._predict(cut, img, x, y, mag, key, idx, local))

        from ...nn.device import worker_map

        yield from worker_map(one, chunks, enabled=self.fast_net is not None)

    @image_method
    def estimate(self, image: Image | np.ndarray, x, y, *, mask: np.ndarray | None = None,
                 mag: np.ndarray | None = None,
                 neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> BackgroundResult:
        """Background per pixel and its 1-sigma error under each (x, y); see the class notes."""
        from ...nn.bkgnet import label_sigma, predicted_sigma

        img = as_image(image, mask)
        x, y = check_positions(x, y)
        n = len(x)
        if mag is not None:
            mag = np.broadcast_to(np.asarray(mag, float), x.shape)
        bkg = np.full(n, np.nan)
        sig_net = np.full(n, np.nan)
        level = np.full(n, np.nan)  # stamp median outside the hidden centre
        n_pix = np.zeros(n, np.int64)
        flags = F.zeros(n)
        if n == 0:
            return BackgroundResult(bkg, bkg.copy(), bkg.copy(), n_pix, flags)
        key = self.key_index(img)
        ny, nx = img.shape
        S = self.stamp_size
        with np.errstate(invalid="ignore"):
            off = ~((x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5))
        flags[off] |= F.OFF_IMAGE
        todo = np.flatnonzero(~off)
        for idx, b, s, ok, loc, n_valid, x0, y0 in self._run(img, x, y, mag, key, todo):
            inside = (x0 >= 0) & (y0 >= 0) & (x0 + S <= nx) & (y0 + S <= ny)
            flags[idx[~inside]] |= F.EDGE
            n_in = _n_inside(x0, y0, S, nx, ny)
            flags[idx[n_valid < n_in]] |= F.MASKED
            bkg[idx] = np.where(ok, b, np.nan)
            sig_net[idx] = np.where(ok, s, np.nan)
            level[idx] = loc
            n_pix[idx] = n_valid
            flags[idx[~ok]] |= F.NO_DATA
        cal = self.inputs.get("error_calibration")
        pixel_labels = self.inputs.get("labels", "pixels") == "pixels"
        if pixel_labels:
            n_label = float(self.inputs.get("n_label", np.pi * 8.0**2))
            lsig = label_sigma(bkg, n_label, img.meta.gain, img.meta.rdnoise)
        if cal is not None and pixel_labels:
            # per level and edge/centre; the label's extra noise measured from the user's data
            from .errormodel import calibrated_errors

            edge_d = np.minimum.reduce([x, y, nx - 1 - x, ny - 1 - y])
            err, sig_net = calibrated_errors(bkg, sig_net, lsig, edge_d, cal, level=level)
        elif pixel_labels:
            sig_net = sig_net * self.sigma_scale
            err = predicted_sigma(sig_net, lsig)  # BKGnet eq. 5
        else:
            sig_net = sig_net * self.sigma_scale
            err = sig_net.copy()
        err[~np.isfinite(bkg)] = np.nan
        return BackgroundResult(bkg, err, np.full(n, np.nan), n_pix, flags,
                                extra={"sigma_net": sig_net})
