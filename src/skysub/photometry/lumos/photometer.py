"""Lumos as "just another photometer": :class:`LumosPhotometer` adapts a trained
:class:`skysub.nn.lumos.Lumos` to the photometer protocol (``measure(image, x, y, *, mask, mag,
neighbours, catalog) -> PhotometryResult``); see :mod:`skysub.photometry.lumos` for the notes.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from ... import flags as F
from ...background.base import BackgroundResult
from ...errors import InputError
from ...image import Image, as_image, image_method
from ...stamps import Stamps, WindowCutter, cutouts
from ..aperture import PhotometryResult, _flag, _inside, assemble, check_positions, source_shapes
from .calibration import (
    SNRCalibration,
    _calibrated,
    _prior_knee,
    crowding,
    instrument_key,
    nearest_distance,
)
from .data import _catalog_mag, _colnames, _neighbour_channel, _rows, _tensors
from .magnitudes import NOISE_MAG, exposure_zeropoint, noise_mag
from .mixtures import ESTIMATORS, SUMMARY_KEYS, mixture_summary, predict_mixtures
from .settings import DEFAULT_MODEL, _key_index

log = logging.getLogger("skysub")


#: stamps per forward pass on the fast CPU path: batches of 512 leave the cache and ran ~1.3x
#: slower per stamp on the project's CPU
FAST_BATCH = 128
#: sources per chunk of the fast path (model rendering, inputs, network), several chunks run
#: at once with several torch threads (:func:`skysub.nn.device.worker_map`)
FAST_CHUNK = 256


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
    fast : on CPU (default True): catalogue models through the compiled Sérsic kernel
        (``sersic_stamps(fast=True)``, ~1e-7 relative from the numpy path) and at most
        :data:`FAST_BATCH` stamps per forward pass; ``fast=False`` is the reference path.
        The outputs agree to float rounding (``tests/test_fast_inference.py``).
    zeropoint : models trained on the user's exposures (card ``inputs.mag_input = "noise"``,
        :mod:`.magnitudes`) turn the catalogue's ``mag`` into a flux with each exposure's zero
        point: this value, else a header keyword (``zeropoint_keys``; default MAGZPT, MAGZERO,
        PHOTZP, ...), else a fit of the catalogue magnitudes to aperture fluxes of bright
        isolated sources.  Each exposure's zero point is kept in :attr:`zeropoints` (image name
        -> :class:`skysub.photometry.zeropoint.ZeroPoint`).
    zeropoint_keys : header keywords tried for the zero point
    photometric_system : "AB" (default) or "ST": the catalogue magnitudes' system where the
        zero point comes from HST-style PHOTFLAM keywords (the last resort, after a fit)
    mag_offset : models trained on the built-in simulator only (``lumos-paus``): added to the
        catalogue's ``mag`` (the targets' prior and the neighbour channel) to put it in the
        band system the model assumes -- a galaxy of magnitude ``m`` gives ``exptime
        10^(-0.4 (m - zero_point)) / gain`` image units, ``zero_point`` in the card's
        ``inputs.simulation`` (23 for ``lumos-paus``).  Exposures of ``skysub simulate ccd``
        have zero point 25: use -2 there (:func:`skysub.simulate.galaxies.band_system_catalog`).

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
                 mag_offset: float = 0.0, zeropoint: float | None = None,
                 zeropoint_keys: tuple[str, ...] | None = None, fast: bool = True,
                 photometric_system: str = "AB") -> None:
        import torch

        from ...nn.device import configure_threads, resolve_device
        from ...nn.lumos import fuse_for_inference
        from ...nn.modelfile import load_model
        from ...simulate.galaxies import GalaxySimSettings, psf_for
        from ..aperture import check_psf

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
        #: the network reads the noise-relative magnitude (needs each exposure's zero point)
        self.noise_mags = inputs.get("mag_input") == NOISE_MAG
        if self.noise_mags and self.mag_offset:
            raise InputError("mag_offset (--mag-offset) applies to models trained on the "
                             "built-in simulator; this model takes each exposure's zero point "
                             "(--zeropoint, a header keyword, or fitted)")
        self.zeropoint = zeropoint
        self.zeropoint_keys = zeropoint_keys
        self.photometric_system = photometric_system
        self.zeropoints: dict[str, Any] = {}
        q = card.get("quality")
        if isinstance(q, dict) and q.get("ok") is False:
            log.warning("Lumos model %s failed its own validation when trained: %s",
                        card.get("path", "?"), "; ".join(q.get("reasons", [])))
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
        #: per-instrument with-magnitude calibrations (:mod:`.injection`), by
        #: :func:`.injection.instrument_key`; other frames get :attr:`sigma_scale`
        self.instrument_calibration: dict[str, SNRCalibration] = {
            k: SNRCalibration.from_dict(v)
            for k, v in (inputs.get("snr_calibration_instruments") or {}).items()
        } if self.use_mag else {}
        #: knee of the prior-free training density (normalised flux units): the data-only
        #: mode's posterior is divided by it (:func:`divide_training_prior`)
        self.prior_knee: float | None = None if self.use_mag else _prior_knee(self.settings)
        #: the posterior is truncated to flux >= 0 (eq. 10); the likelihood is not
        self.lower: float | None = 0.0 if self.use_mag else None
        self.batch_size = int(batch_size)
        self.fast = bool(fast) and self.device.type == "cpu"
        self.name = name
        self._torch = torch

    def __repr__(self) -> str:
        return (f"LumosPhotometer(model={self.card.get('description', '?')!r}, "
                f"estimator={self.estimator!r}, use_mag={self.use_mag})")

    def _models(self, x: np.ndarray, y: np.ndarray, catalog) -> np.ndarray:
        """Every source's unit-total model (n, model_size, model_size), float32, at its
        sub-pixel offset from its rounded pixel (the :func:`skysub.stamps.cutouts` layout)."""
        from ...nn.device import worker_map
        from ...simulate.galaxies import model_images
        from ...stamps import _round_half_up

        n = len(x)
        ok = np.isfinite(x) & np.isfinite(y)
        dx = np.where(ok, x - _round_half_up(np.where(ok, x, 0.0)), 0.0)
        dy = np.where(ok, y - _round_half_up(np.where(ok, y, 0.0)), 0.0)
        k = self.settings.model_size
        small = replace(self.settings, stamp_size=k)
        out = np.zeros((n, k, k), np.float32)
        shapes = source_shapes(catalog, n)
        step = FAST_CHUNK if self.fast else 1024  # batches that stay in cache

        def one(s0):
            ii = slice(s0, s0 + step)
            out[ii] = model_images(shapes.take(ii), self.psf, dx[ii], dy[ii], small,
                                   fast=self.fast)

        for _ in worker_map(one, range(0, n, step), enabled=self.fast):
            pass
        return out

    def neighbour_map(self, img: Image, x: np.ndarray, y: np.ndarray, catalog,
                      models: np.ndarray | None = None) -> np.ndarray:
        """The catalogue's expected image (every source's model times its reference flux,
        :func:`skysub.simulate.galaxies.neighbour_map`) for the neighbour channel."""
        from ...simulate.galaxies import neighbour_map

        return neighbour_map(img.shape, x, y, source_shapes(catalog, len(x)),
                             _catalog_mag(catalog, len(x)), self.psf, self.settings,
                             models=models)

    def inputs(self, img: Image, x: np.ndarray, y: np.ndarray, catalog, mag,
               nmap: np.ndarray | None = None, models: np.ndarray | None = None,
               cutter: WindowCutter | None = None,
               ncutter: WindowCutter | None = None) -> dict:
        """Network inputs for sources at (x, y) of ``img`` (all rows; a chunk at a time is up to
        the caller).  ``nmap``: :meth:`neighbour_map` of ALL the image's sources (networks with
        a neighbour channel); each target's own model is taken out of it here.  ``models``:
        the sources' models from :meth:`_models` (else rendered here).  ``cutter``: a
        :class:`skysub.stamps.WindowCutter` of ``img`` (float32, zero fill) to cut the stamps
        from -- the same pixels as :func:`skysub.stamps.cutouts`, ~5x faster; invalid pixels
        then hold 0 instead of NaN (the network input is the same); ``ncutter`` likewise for
        ``nmap`` (float64, zero fill)."""
        from ...simulate.galaxies import pad_center

        torch = self._torch
        n = len(x)
        S = self.settings.stamp_size
        if cutter is None:
            st = cutouts(img, x, y, S)
        else:
            d, v, x0, y0 = cutter(x, y)
            st = Stamps(d, v, x0, y0, x - (x0 + S // 2), y - (y0 + S // 2))
        small = self._models(x, y, catalog) if models is None else models
        models = pad_center(np.asarray(small, np.float64), S)
        nb = None
        if self.net.arch.neighbours:
            if nmap is None:
                nmap = self.neighbour_map(img, x, y, catalog, models=small)
            nb = _neighbour_channel(nmap, x, y, _catalog_mag(catalog, n), models,
                                    cutter=ncutter)
        return _tensors(st.data, st.valid, models, x, y, img.shape, mag,
                        _key_index(self.keys, img.meta.band, img.meta.epoch), torch,
                        neighbours=nb, joint=self.net.arch.neighbour_fit,
                        ratio=bool(getattr(self.net.arch, "neighbour_ratio", False)),
                        deblend=bool(getattr(self.net.arch, "data_deblend", False))
                        ) | {"stamps": st}

    @image_method
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
        mix = self._mixtures(img, x, y, mag, catalog)
        A, good, flags = mix["a"], mix["good"], mix["flags"]
        M, Sg = mix["m"] * mix["unit"][:, None], mix["s"] * mix["unit"][:, None]
        k = A.shape[1]
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

    def _mixtures(self, img: Image, x: np.ndarray, y: np.ndarray, mag, catalog, *,
                  calibrate: bool = True, rows: np.ndarray | None = None) -> dict:
        """Every source's mixture in the network's normalised flux units (``a, m, s``; times
        ``unit`` for image units), with the card's calibration unless ``calibrate`` is False
        (the raw network output the calibrations are fitted to), ``good`` (usable stamp),
        ``flags`` and ``crowding`` (NaN for networks without the feature).  ``rows``: only
        these sources are measured (every source still shows in the neighbour channel); the
        arrays then hold those rows only."""
        from ...nn.device import worker_map

        n = len(x)
        todo = np.arange(n) if rows is None else np.asarray(rows, int)
        cal = self.sigma_scale
        if self.instrument_calibration:
            cal = self.instrument_calibration.get(instrument_key(img), cal)
        cat_flux = None
        if self.noise_mags and mag is not None:  # the catalogue's flux in image units
            zp = exposure_zeropoint(img, _zp_table(catalog, x, y, mag), given=self.zeropoint,
                                    header_keys=self.zeropoint_keys,
                                    photometric_system=self.photometric_system)
            self.zeropoints[img.name] = zp
            cat_flux = zp.flux(mag)
        k = self.net.arch.n_components
        nt = len(todo)
        A, M, Sg = np.zeros((nt, k)), np.zeros((nt, k)), np.ones((nt, k))
        flags = F.zeros(nt)
        good = np.zeros(nt, bool)
        unit, C = np.ones(nt), np.full(nt, np.nan)
        # each source's nearest other source [px]: picks the near-neighbour calibration
        dist = nearest_distance(x, y, todo) if calibrate else None
        chunk = FAST_CHUNK if self.fast else max(self.batch_size, 1024)
        nmap = models = None
        if self.net.arch.neighbours:  # render every model once: map and model channel
            models = self._models(x, y, catalog)
            nmap = self.neighbour_map(img, x, y, catalog, models=models)

        S = self.settings.stamp_size
        cutter = WindowCutter(img, S) if self.fast else None
        ncutter = (WindowCutter(nmap, S, dtype=np.float64)
                   if self.fast and nmap is not None else None)

        def one(s0):  # bounded memory; every source is measured; chunks write disjoint rows
            ii = np.arange(s0, min(s0 + chunk, nt))
            src = todo[ii]
            sub_cat = None if catalog is None else _rows(catalog, src)
            t = self.inputs(img, x[src], y[src], sub_cat, None if mag is None else
                            np.asarray(mag, float)[src], nmap=nmap, cutter=cutter,
                            ncutter=ncutter,
                            models=None if models is None else models[src])
            if cat_flux is not None:  # the noise-relative magnitude (magnitudes.py)
                nm = noise_mag(cat_flux[src], t["unit"])
                t["mag"] = self._torch.from_numpy(np.nan_to_num(nm, nan=0.0).astype(np.float32))
                t["has_mag"] = self._torch.from_numpy(np.isfinite(nm).astype(np.float32))
            a, m, sg = predict_mixtures(self.net, t["x"], t["feats"], t["coords"], t["mag"],
                                        t["has_mag"], t["key"], batch_size=min(
                                            self.batch_size, FAST_BATCH) if self.fast
                                        else self.batch_size, device=self.device)
            crowd = crowding(t["feats"])
            if calibrate:
                a, m, sg = _calibrated(a, m, sg, cal, self.prior_knee, crowd, dist[ii])
            A[ii], M[ii], Sg[ii] = a, m, sg
            unit[ii] = t["unit"]
            if crowd is not None:
                C[ii] = crowd
            good[ii] = t["ok"]
            st = t["stamps"]
            inside = _inside(img.shape, st.x0, st.y0, st.size)
            c = st.size // 2
            core = np.zeros_like(inside)
            core[:, c - 5:c + 6, c - 5:c + 6] = True
            flags[ii] |= (_flag((~inside).any(axis=(1, 2)), F.EDGE)
                          | _flag((core & inside & ~st.valid).any(axis=(1, 2)), F.MASKED)
                          | _flag(~t["ok"], F.NO_DATA))

        for _ in worker_map(one, range(0, nt, chunk), enabled=self.fast):
            pass
        return {"a": A, "m": M, "s": Sg, "unit": unit, "good": good, "flags": flags,
                "crowding": C}


def _zp_table(catalog, x: np.ndarray, y: np.ndarray, mag: np.ndarray):
    """The catalogue rows of one exposure as the zero-point fit reads them (x, y, mag; r50
    and ``catalogued`` when present)."""
    from astropy.table import Table

    t = Table({"x": np.asarray(x, float), "y": np.asarray(y, float),
               "mag": np.asarray(mag, float)})
    if catalog is not None:
        for c in ("r50", "catalogued"):
            if c in _colnames(catalog):
                t[c] = np.asarray(catalog[c])
    return t
