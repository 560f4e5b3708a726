"""The inpainting U-Net as a background estimator (``--method inpaint``).

:class:`InpaintBackground` implements the protocol of :mod:`skysub.background.base`: for each
source it inpaints the hole (SNR-adaptive radius, every catalogued neighbour masked too) and
reports the mean predicted background per pixel within ``radius`` of the position (the
photometer's aperture: then ``sum(image) - bkg * area`` equals the aperture sum of
``image - prediction``, Madarász et al. §3.4).

Errors: ``pixel_std`` is the robust standard deviation of the annulus pixels (sigma_bg of
eq. 1).  ``bkg_err`` is the *calibrated* error of the inpainted mean when the model card holds
an ``error_calibration`` (:mod:`skysub.removal.calibration`: measured on held-out test fields
per hole radius and averaging radius, the truth's own pixel noise taken out), i.e.
``c(hole, radius) x pixel_std``; for a model without one it falls back to
``pixel_std / sqrt(n_annulus)``, the error an annulus mean of the same pixels would have
(flagged in ``extra["bkg_err_calibrated"] = False``).  Calibrate any model with
``skysub train inpaint --calibrate-only --output MODEL``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import flags as F
from ..background.base import BackgroundResult
from ..image import Image, as_image, image_method
from .apertures import _aperture_sums
from .core import DEFAULT_MODEL, remove_sources
from .masks import MaskTable, peak_snr


class InpaintBackground:
    """Background under each source from the inpainting U-Net.

    Parameters
    ----------
    model : shipped model name, model file or torch module (default ``inpaint-default``)
    radius : radius [px] of the region the background is averaged over (the photometer's
        aperture radius; default: each source's hole radius)
    masks : SNR -> hole-radius table (default: the model card's)
    psf_fwhm : PSF FWHM [px] (default: the model card's)
    device, batch_size : as :func:`skysub.removal.remove_sources`
    """

    name = "inpaint"

    def __init__(self, model: Any = DEFAULT_MODEL, *, radius: float | None = None,
                 masks: MaskTable | None = None, psf_fwhm: float | None = None,
                 device: str = "cpu", batch_size: int = 256) -> None:
        self.model = model
        self.radius = radius
        self.masks = masks
        self.psf_fwhm = psf_fwhm
        self.device = device
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return (f"InpaintBackground(model={self.model!r}, radius={self.radius!r}, "
                f"device={self.device!r})")

    @image_method
    def estimate(self, image: Image | np.ndarray, x, y, *, mask: np.ndarray | None = None,
                 mag: np.ndarray | None = None,
                 neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> BackgroundResult:
        """Background per pixel under each source (see the module doc for the errors)."""
        img = as_image(image, mask)
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        # neighbours are holes too: remove all catalogued sources, report the requested ones
        if neighbours is not None:
            xa = np.concatenate([x, np.asarray(neighbours[0], float)])
            ya = np.concatenate([y, np.asarray(neighbours[1], float)])
        else:
            xa, ya = x, y
        res = remove_sources(img, xa, ya, model=self.model, masks=self.masks,
                             psf_fwhm=self.psf_fwhm, radii=(1.0,), device=self.device,
                             batch_size=self.batch_size, keep_cutouts=True)
        n = len(x)
        pred = res.predictions[:n]
        hole_r = np.asarray(res.sources["mask_radius"], float)[:n]
        flags = np.asarray(res.sources["flags"], np.int32)[:n].copy()
        xi = np.floor(x + 0.5)
        yi = np.floor(y + 0.5)
        dx = np.where(np.isfinite(x), x - xi, 0.0)
        dy = np.where(np.isfinite(y), y - yi, 0.0)
        bkg = np.full(n, np.nan)
        n_pix = np.zeros(n, np.int64)
        radii = np.full(n, float(self.radius)) if self.radius else hole_r
        ok = np.isfinite(radii) & ((flags & F.NO_DATA) == 0)
        valid = np.isfinite(pred)
        for r in np.unique(radii[ok]):
            sel = ok & (radii == r)
            s, area, _ = _aperture_sums(pred[sel], valid[sel], float(r), dx[sel], dy[sel])
            bkg[sel] = s / area
            n_pix[sel] = np.round(area).astype(np.int64)
        card = res.extra.get("card") or {}
        table = self.masks or MaskTable.from_config(
            card.get("inputs", {}).get("masks"),
            psf_fwhm=self.psf_fwhm or card.get("inputs", {}).get("psf_fwhm", 3.5))
        st = peak_snr(img, x, y, table)
        pixel_std = st["sigma_bg"]
        cal = card.get("error_calibration")
        if cal:
            from .levels import error_scale

            bkg_err = error_scale(cal, hole_r, radii) * pixel_std
        else:
            ann_n = np.pi * (table.annulus_out ** 2 - table.annulus_in ** 2)
            bkg_err = pixel_std / np.sqrt(ann_n)
        flags |= np.where(~np.isfinite(bkg), F.NO_DATA, 0).astype(np.int32)
        return BackgroundResult(bkg=bkg, bkg_err=np.where(np.isfinite(bkg), bkg_err, np.nan),
                                pixel_std=pixel_std, n_pix=n_pix, flags=flags,
                                extra={"mask_radius": hole_r, "bkg_err_calibrated": bool(cal),
                                       "snr": np.asarray(res.sources["snr"], float)[:n]})
