"""Scattered-light templates (BKGnet §2.3-2.4, eq. 1-2) and a template-corrected estimator.

Exposures taken in the same band and camera epoch share one scattered-light pattern whose
amplitude scales with the sky level.  For each such group (optionally also per night):

1. ``mu_j`` = median of the valid pixels in the central, unaffected region of image ``j``;
2. ratio map ``R_j = I_j / mu_j``; sources masked;
3. ``SLT(x, y) = median_j R_j(x, y)``                                              (eq. 1)

and an image is corrected with ``I~ = I - (SLT - 1) mu_BKG``                         (eq. 2)

where ``mu_BKG`` is the central median of that image.

:class:`TemplateCorrected` wraps any background estimator: it corrects the image with eq. 2,
runs the inner estimator on the corrected image and adds the scattered-light component back at
each source, so that ``bkg`` is the total background under the source in the ORIGINAL image.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import flags as F
from ..errors import InputError, MissingFileError, OutputExistsError
from ..image import Image, as_image, image_method
from ..progress import progress as _progress
from ..stamps import _round_half_up, annulus_offsets, check_positions, gather
from ..stats import mad_std
from .base import BackgroundResult

log = logging.getLogger("skysub")

Key = tuple[str, str, "str | None"]

#: float32 elements of one ratio-stack chunk (~64 MB): bounds the memory of the median
_CHUNK_ELEMENTS = 2**24

#: primary-header keywords of the build parameters (FITS keywords are <= 8 characters)
_PARAM_KEYWORDS = {
    "central_fraction": "CENTFRAC",
    "smooth": "SMOOTH",
    "source_threshold": "SRCTHRSH",
    "source_radius": "SRCRAD",
    "min_images": "MINIMGS",
    "per_night": "PERNIGHT",
    "grow": "GROW",
}


def central_region(shape: tuple[int, int], central_fraction: float) -> tuple[slice, slice]:
    """Row and column slices of the central ``central_fraction`` of each axis."""
    if not (0 < central_fraction <= 1):
        raise InputError(f"central_fraction must be in (0, 1], got {central_fraction!r}")
    out = []
    for n in shape:
        width = max(1, int(round(n * central_fraction)))
        start = (n - width) // 2
        out.append(slice(start, start + width))
    return out[0], out[1]


def central_level(image: Image, central_fraction: float = 0.5) -> tuple[float, float]:
    """``(mu_BKG, sigma)``: median and MAD-scaled scatter of the valid pixels of the central
    ``central_fraction`` of each axis (image units).  BKGnet §2.3 step ii."""
    rows, cols = central_region(image.shape, central_fraction)
    vals = image.data[rows, cols][~image.mask[rows, cols]]
    if vals.size == 0:
        raise InputError(f"{image.name}: no valid pixel in the central region "
                         f"(central_fraction={central_fraction}) to measure mu_BKG")
    mu = float(np.median(vals))
    sigma = float(mad_std(vals))
    if not (np.isfinite(mu) and mu > 0):
        raise InputError(f"{image.name}: central background level mu_BKG={mu!r} must be positive "
                         "to form the ratio map I / mu_BKG")
    return mu, sigma


def _key_str(key: Key) -> str:
    band, epoch, night = key
    return f"{band}/{epoch}" + (f"/{night}" if night is not None else "")


def _image_key(image: Image, per_night: bool, index: int | None = None) -> Key:
    meta = image.meta
    where = image.name if index is None else f"image {index} ({image.name})"
    missing = [k for k in ("band", "epoch") if getattr(meta, k) in (None, "")]
    if per_night and meta.night in (None, ""):
        missing.append("night")
    if missing:
        raise InputError(f"{where}: meta.{' and meta.'.join(missing)} not set; scattered-light "
                         "templates are per band x epoch" + (" x night" if per_night else "")
                         + " (set them in ImageMeta or in the FITS header)")
    return (str(meta.band), str(meta.epoch), str(meta.night) if per_night else None)


def _smooth_excess(slt: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised (mask-aware) Gaussian smoothing of ``SLT - 1``; invalid pixels are filled
    from their neighbours where any exist."""
    from scipy.ndimage import gaussian_filter

    w = valid.astype(np.float64)
    num = gaussian_filter(np.where(valid, slt - 1.0, 0.0), sigma, mode="nearest")
    den = gaussian_filter(w, sigma, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 1.0 + num / den
    return np.where(den > 1e-6, out, slt).astype(slt.dtype)


def _catalog_mask(shape: tuple[int, int], x, y, radius: float) -> np.ndarray:
    """True on pixels whose centre lies within ``radius`` px of any (x, y) (vectorised)."""
    mask = np.zeros(shape, bool)
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    if x.shape != y.shape:
        raise InputError(f"catalogue x and y differ in length: {x.shape} vs {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) == 0 or radius <= 0:
        return mask
    ny, nx = shape
    dx, dy = annulus_offsets(radius, 0.0)
    for start in range(0, len(x), 4096):  # bounded memory: 4096 sources x disk pixels
        xs, ys = x[start:start + 4096], y[start:start + 4096]
        xi, yi = _round_half_up(xs), _round_half_up(ys)
        xx = xi[:, None] + dx[None]
        yy = yi[:, None] + dy[None]
        hit = ((xx - xs[:, None]) ** 2 + (yy - ys[:, None]) ** 2 <= radius**2)
        hit &= (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
        mask[yy[hit], xx[hit]] = True
    return mask


def _median_of_ratios(images: list[Image], mus: list[float], masks: list[np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel nanmedian over images of ``I_j / mu_j`` where not masked, computed in row
    chunks of a float32 stack.  Returns (median (NaN where no valid ratio), number of valid
    ratios per pixel)."""
    n = len(images)
    ny, nx = images[0].shape
    rows = max(1, _CHUNK_ELEMENTS // max(1, n * nx))
    out = np.empty((ny, nx), np.float32)
    count = np.empty((ny, nx), np.int32)
    for r0 in range(0, ny, rows):
        r1 = min(ny, r0 + rows)
        stack = np.empty((n, r1 - r0, nx), np.float32)
        for j, (im, mu, m) in enumerate(zip(images, mus, masks, strict=True)):
            stack[j] = np.where(m[r0:r1], np.nan, im.data[r0:r1] / mu)
        count[r0:r1] = np.isfinite(stack).sum(axis=0)
        with warnings.catch_warnings():  # all-NaN pixels are handled by the caller
            warnings.simplefilter("ignore", RuntimeWarning)
            out[r0:r1] = np.nanmedian(stack, axis=0)
    return out, count


class ScatteredLightTemplates:
    """Scattered-light templates per (band, epoch[, night]) (BKGnet eq. 1) and the correction
    of eq. 2.

    Parameters
    ----------
    templates : dict
        ``(band, epoch, night)`` (night None unless built per night) -> 2-D template (ratio to
        the central sky; 1 where there is no scattered light).
    n_images : dict
        Same keys -> number of exposures that went into each template.
    central_fraction : float
        Fraction of each axis defining the central region where ``mu_BKG`` is measured; the
        correction must use the one the templates were built with.
    params : dict, optional
        Build parameters (kept in the FITS primary header).
    n_filled : dict, optional
        Same keys -> number of pixels without any valid ratio, set to 1.0.

    Notes
    -----
    Use :meth:`build` to make templates, :meth:`save` / :meth:`load` to keep them, and
    :meth:`correct` (or :class:`TemplateCorrected`) to apply them.  Templates are float32.
    """

    def __init__(self, templates: dict, n_images: dict, *, central_fraction: float = 0.5,
                 params: dict | None = None, n_filled: dict | None = None) -> None:
        self._templates: dict[Key, np.ndarray] = {}
        for key, arr in templates.items():
            k = self._norm_key(key)
            a = np.asarray(arr)
            if a.ndim != 2:
                raise InputError(f"template {_key_str(k)} must be 2-D, got shape {a.shape}")
            self._templates[k] = a
        self.n_images = {self._norm_key(k): int(v) for k, v in n_images.items()}
        missing = set(self._templates) - set(self.n_images)
        if missing:
            raise InputError(f"n_images lacks template key(s) {sorted(map(_key_str, missing))}")
        central_region((2, 2), central_fraction)  # validates
        self.central_fraction = float(central_fraction)
        self.params = dict(params or {})
        self.params["central_fraction"] = self.central_fraction
        self.n_filled = {self._norm_key(k): int(v) for k, v in (n_filled or {}).items()}

    # -- keys ---------------------------------------------------------------------------------
    @staticmethod
    def _norm_key(key) -> Key:
        key = tuple(key)
        if len(key) == 2:
            key = (*key, None)
        if len(key) != 3 or key[0] is None or key[1] is None:
            raise InputError(f"template key must be (band, epoch) or (band, epoch, night), "
                             f"got {key!r}")
        return (str(key[0]), str(key[1]), None if key[2] is None else str(key[2]))

    @property
    def keys(self) -> list[Key]:
        """Template keys ``(band, epoch, night)``, sorted; night is None unless per night."""
        return sorted(self._templates, key=lambda k: (k[0], k[1], k[2] or ""))

    def __contains__(self, key) -> bool:
        try:
            return self._lookup(*self._norm_key(key), strict=False) is not None
        except InputError:
            return False

    def __len__(self) -> int:
        return len(self._templates)

    def __repr__(self) -> str:
        return (f"ScatteredLightTemplates({len(self)} templates: "
                f"{', '.join(_key_str(k) for k in self.keys)})")

    def _lookup(self, band, epoch, night=None, *, strict: bool = True) -> Key | None:
        """The stored key for (band, epoch, night): the per-night template if there is one,
        else the all-nights template of (band, epoch)."""
        cands = []
        if night is not None:
            cands.append((str(band), str(epoch), str(night)))
        cands.append((str(band), str(epoch), None))
        for k in cands:
            if k in self._templates:
                return k
        if not strict:
            return None
        raise InputError(f"no scattered-light template for band={band!r}, epoch={epoch!r}"
                         + (f", night={night!r}" if night is not None else "")
                         + "; known keys (band/epoch[/night]): "
                         + (", ".join(_key_str(k) for k in self.keys) or "none"))

    def template(self, band: str, epoch: str, night: str | None = None) -> np.ndarray:
        """The template of (band, epoch[, night]) (InputError listing the known keys if none)."""
        return self._templates[self._lookup(band, epoch, night)]

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def build(cls, images: Sequence[Image], *, catalogs: Sequence | None = None,
              central_fraction: float = 0.5, source_threshold: float = 5.0,
              source_radius: float = 8.0, min_images: int = 3, per_night: bool = False,
              grow: int = 2, smooth: float = 3.0,
              progress: bool = False) -> ScatteredLightTemplates:
        """Build one template per (band, epoch[, night]) group of ``images`` (BKGnet eq. 1).

        Parameters
        ----------
        images : list of Image
            ``meta.band`` and ``meta.epoch`` (and ``meta.night`` if ``per_night``) must be set.
            All images of one group must have the same shape.
        catalogs : list of (x, y) arrays or None, optional
            One entry per image (0-based pixel positions); pixels within ``source_radius`` of a
            catalogued source are masked.
        central_fraction : float
            The central region is this fraction of each axis (0.5: the central quarter of the
            area); ``mu_BKG,j`` is the median of its valid pixels.
        source_threshold : float
            Pixels with ``R_j > SLT_0 + source_threshold * sigma_j / mu_j`` are masked as
            sources, ``sigma_j`` the MAD-scaled scatter of the central region and ``SLT_0`` the
            first-pass template (see Notes).  Masks are grown by ``grow`` pixels.
        source_radius : float
            Radius (px) of the masked circle around each catalogued source.
        min_images : int
            Fewer exposures in a group raise InputError.
        per_night : bool
            Group by night as well.
        grow : int
            Pixels by which the threshold mask is dilated (3x3 structuring element).
        smooth : float
            Gaussian sigma (px) with which ``SLT - 1`` is smoothed after the median (0 = off).
            The median of N ratio maps has a per-pixel noise ``~1.25 (sigma/mu) / sqrt(N)`` --
            10 % for 3 exposures of a 60 ADU sky -- while scattered light varies on tens of
            pixels; smoothing by 3 px cuts the noise ~10x and biases an exp(-d/L) edge profile
            by ``~ sigma^2 / (2 L^2)`` of its excess (2 % of it for L = 15 px).  The paper
            stacks hundreds of exposures and does not smooth.
        progress : bool
            Show a progress bar over the groups.

        Notes
        -----
        Departure from the paper (step iv masks "pixels above a given pixel ratio threshold"):
        the threshold is applied relative to a first-pass template ``SLT_0`` (the per-pixel
        median of the unmasked ratio maps) rather than to 1.  Otherwise scattered light brighter
        than ``source_threshold * sigma / mu`` (20 % edges on a sky with sigma / mu = 3 %) would
        itself be masked as a "source" in every exposure and never enter the template.  Sources
        land on different pixels in different exposures, so ``SLT_0`` is already robust to them.

        Pixels with no valid ratio in any exposure are set to 1.0 (no correction); their number
        is kept in ``n_filled`` and a warning names the group.

        Memory: the median is taken over row chunks of a float32 stack (~64 MB at a time); each
        image also needs a boolean mask (1 byte/pixel) while its group is built.  The input
        images themselves must be in memory (20 exposures of 4096 x 2048 float64 = 1.3 GB).
        """
        images = list(images)
        if not images:
            raise InputError("no images given to build scattered-light templates")
        for j, im in enumerate(images):
            if not isinstance(im, Image):
                raise InputError(f"image {j} is a {type(im).__name__}; build() needs "
                                 "skysub.image.Image objects with meta.band and meta.epoch set")
        if catalogs is not None and len(catalogs) != len(images):
            raise InputError(f"catalogs has {len(catalogs)} entries for {len(images)} images; "
                             "give one (x, y) pair (or None) per image")
        if not (np.isfinite(source_threshold) and source_threshold > 0):
            raise InputError(f"source_threshold must be positive, got {source_threshold!r}")
        if source_radius is not None and not (np.isfinite(source_radius) and source_radius >= 0):
            raise InputError(f"source_radius must be >= 0, got {source_radius!r}")
        if int(min_images) < 1:
            raise InputError(f"min_images must be >= 1, got {min_images!r}")
        if int(grow) < 0:
            raise InputError(f"grow must be >= 0, got {grow!r}")
        central_region((2, 2), central_fraction)

        groups: dict[Key, list[int]] = {}
        for j, im in enumerate(images):
            groups.setdefault(_image_key(im, per_night, j), []).append(j)
        for key, idx in groups.items():
            if len(idx) < min_images:
                raise InputError(f"scattered-light template {_key_str(key)}: {len(idx)} "
                                 f"image(s), at least min_images={min_images} needed")
            shapes = {images[j].shape for j in idx}
            if len(shapes) > 1:
                raise InputError(f"scattered-light template {_key_str(key)}: images differ in "
                                 f"shape {sorted(shapes)} ("
                                 + ", ".join(images[j].name for j in idx) + ")")

        from scipy.ndimage import binary_dilation

        templates, n_images, n_filled = {}, {}, {}
        for key, idx in _progress(groups.items(), desc="templates", quiet=not progress,
                                  total=len(groups), unit="template"):
            imgs = [images[j] for j in idx]
            shape = imgs[0].shape
            levels = [central_level(im, central_fraction) for im in imgs]
            mus = [mu for mu, _ in levels]
            base = []
            for j, im in zip(idx, imgs, strict=True):
                m = im.mask.copy()
                if catalogs is not None and catalogs[j] is not None and source_radius:
                    cx, cy = catalogs[j]
                    m |= _catalog_mask(shape, cx, cy, float(source_radius))
                base.append(m)
            slt0, _ = _median_of_ratios(imgs, mus, base)  # first pass
            masks = []
            for im, (mu, sig), m in zip(imgs, levels, base, strict=True):
                with np.errstate(invalid="ignore"):
                    src = im.data / mu > slt0 + source_threshold * sig / mu
                src &= ~m
                if grow and src.any():
                    src = binary_dilation(src, iterations=int(grow))
                masks.append(m | src)
            del slt0
            slt, count = _median_of_ratios(imgs, mus, masks)  # eq. 1
            empty = count == 0
            if smooth and smooth > 0:
                slt = _smooth_excess(slt, ~empty, float(smooth))
            slt[empty] = 1.0
            n_empty = int(empty.sum())
            if n_empty:
                warnings.warn(f"scattered-light template {_key_str(key)}: {n_empty} pixel(s) "
                              "have no valid ratio in any exposure (masked or sources "
                              "everywhere) and are set to 1.0 (no correction)", stacklevel=2)
            templates[key], n_images[key], n_filled[key] = slt, len(idx), n_empty
            log.info("template %s from %d images (%d pixels filled)", _key_str(key), len(idx),
                     n_empty)
        params = {"central_fraction": float(central_fraction),
                  "source_threshold": float(source_threshold),
                  "source_radius": float(source_radius or 0.0), "min_images": int(min_images),
                  "per_night": bool(per_night), "grow": int(grow), "smooth": float(smooth)}
        return cls(templates, n_images, central_fraction=central_fraction, params=params,
                   n_filled=n_filled)

    # -- applying -----------------------------------------------------------------------------
    def _template_for(self, image: Image) -> np.ndarray:
        meta = image.meta
        if meta.band in (None, "") or meta.epoch in (None, ""):
            raise InputError(f"{image.name}: meta.band and meta.epoch must be set to pick a "
                             "scattered-light template; known keys (band/epoch[/night]): "
                             + ", ".join(_key_str(k) for k in self.keys))
        tmpl = self.template(meta.band, meta.epoch, meta.night)
        if tmpl.shape != image.shape:
            raise InputError(f"{image.name}: image shape {image.shape} does not match the "
                             f"{meta.band}/{meta.epoch} template shape {tmpl.shape}")
        return tmpl

    @image_method
    def scattered_light(self, image: Image | np.ndarray, mask: np.ndarray | None = None
                        ) -> tuple[np.ndarray, float]:
        """``((SLT - 1) * mu_BKG, mu_BKG)``: the scattered-light map of this image (image
        units per pixel) and its central sky level."""
        img = as_image(image, mask)
        tmpl = self._template_for(img)
        mu, _ = central_level(img, self.central_fraction)
        return (tmpl.astype(np.float64) - 1.0) * mu, mu

    @image_method
    def correct(self, image: Image | np.ndarray, mask: np.ndarray | None = None) -> Image:
        """The image with its scattered light removed: ``I - (SLT - 1) mu_BKG`` (eq. 2).

        ``mu_BKG`` is the central median of THIS image.  The mask, header, WCS and metadata are
        kept.  Raises InputError for an image whose (band, epoch[, night]) has no template (the
        message lists the known keys) or whose shape differs from the template's.
        """
        img = as_image(image, mask)
        scattered, _ = self.scattered_light(img)
        return img.with_data(img.data - scattered)  # BKGnet eq. 2

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write a multi-extension FITS file: one image extension per template.

        EXTNAME ``SLT_<band>_<epoch>[_<night>]`` with header keys BAND, EPOCH, NIGHT (empty
        when the template covers all nights), NIMAGES and NFILLED; the build parameters go in
        the primary header.  The file is written to a temporary file in the same directory
        and renamed into place, so a failure never leaves a partial file.  Raises
        OutputExistsError if ``path`` exists and ``overwrite`` is False.
        """
        from astropy.io import fits

        path = Path(path)
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it")
        if not path.parent.exists():
            raise MissingFileError(f"output directory {path.parent} does not exist")
        primary = fits.PrimaryHDU()
        hdr = primary.header
        hdr["SKYSUB"] = ("SLT", "skysub scattered-light templates (BKGnet eq. 1)")
        hdr["NTEMPL"] = (len(self), "number of templates")
        for name, kw in _PARAM_KEYWORDS.items():
            if name in self.params:
                hdr[kw] = (self.params[name], f"build parameter {name}")
        hdus = [primary]
        for key in self.keys:
            band, epoch, night = key
            ext = fits.ImageHDU(np.asarray(self._templates[key]),
                                name="SLT_" + "_".join(s for s in key if s is not None))
            h = ext.header
            h["BAND"] = (band, "filter")
            h["EPOCH"] = (epoch, "camera epoch")
            h["NIGHT"] = ("" if night is None else night, "night ('' = all nights)")
            h["NIMAGES"] = (self.n_images[key], "exposures combined")
            h["NFILLED"] = (self.n_filled.get(key, 0), "pixels without valid ratio (set to 1)")
            hdus.append(ext)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            fits.HDUList(hdus).writeto(tmp, overwrite=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> ScatteredLightTemplates:
        """Read templates written by :meth:`save`.

        Raises MissingFileError if the file does not exist and InputError if it is not FITS or
        holds no ``SLT_*`` extension with BAND and EPOCH keywords.
        """
        from astropy.io import fits

        path = Path(path)
        if not path.exists():
            raise MissingFileError(f"scattered-light template file not found: {path}")
        try:
            hdul = fits.open(path, memmap=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path} is not a readable FITS file: {exc}") from None
        with hdul:
            templates, n_images, n_filled = {}, {}, {}
            for hdu in hdul[1:]:
                h = hdu.header
                if not str(h.get("EXTNAME", "")).upper().startswith("SLT_"):
                    continue
                if "BAND" not in h or "EPOCH" not in h or hdu.data is None:
                    raise InputError(f"{path}: extension {h.get('EXTNAME')} lacks BAND/EPOCH "
                                     "keywords or data")
                night = h.get("NIGHT", "")
                key = (str(h["BAND"]), str(h["EPOCH"]), str(night) if night != "" else None)
                templates[key] = np.array(hdu.data, dtype=hdu.data.dtype.newbyteorder("="))
                n_images[key] = int(h.get("NIMAGES", 0))
                n_filled[key] = int(h.get("NFILLED", 0))
            if not templates:
                raise InputError(f"{path} holds no scattered-light template (no SLT_* image "
                                 "extension); build one with ScatteredLightTemplates.build")
            ph = hdul[0].header
            params: dict[str, Any] = {}
            for name, kw in _PARAM_KEYWORDS.items():
                if kw in ph:
                    params[name] = ph[kw]
        return cls(templates, n_images, central_fraction=float(params.get("central_fraction",
                                                                          0.5)),
                   params=params, n_filled=n_filled)


class TemplateCorrected:
    """A background estimator run on the scattered-light-corrected image (BKGnet §2.4).

    Parameters
    ----------
    estimator : background estimator
        Anything with ``estimate(image, x, y, *, mask, mag, neighbours)`` (e.g. the PAUS annulus).
    templates : ScatteredLightTemplates or path to a template FITS file
    name : str, optional
        Label (default ``"<inner name>+slt"``).

    Notes
    -----
    ``estimate`` corrects the image with eq. 2, runs the inner estimator on it and returns

    - ``bkg`` = the TOTAL background per pixel under each source in the ORIGINAL image:
      inner estimate on the corrected image + the scattered-light component ``(SLT - 1) mu_BKG``
      averaged over the pixels within ``source_radius`` (8 px, the BKGnet label aperture) of
      the source (bilinear at the position when ``source_radius = 0``).  Photometry subtracts
      this from the original image.
    - ``extra["bkg_scattered"]`` = that scattered-light component alone (so the background of
      the corrected image is ``bkg - bkg_scattered``).
    - ``bkg_err``, ``pixel_std``, ``n_pix``, ``flags`` = the inner estimator's (on the corrected
      image).  The template's own error is neglected, as in the paper: the median of N ratio
      maps has a per-pixel error ~ ``1.25 sigma / (mu sqrt(N))``, and what matters is its
      average over the annulus, far below the inner estimate's error.
    """

    #: names of the two maps :meth:`background_map` returns (FITS EXTNAMEs for products)
    map_names = ("SCATTERED", "CORRECTED")

    def __init__(self, estimator: Any, templates: ScatteredLightTemplates | str | Path, *,
                 name: str | None = None, source_radius: float = 8.0) -> None:
        if not hasattr(estimator, "estimate"):
            raise InputError(f"TemplateCorrected needs a background estimator (an object with "
                             f"estimate()), got {estimator!r}")
        if not isinstance(templates, ScatteredLightTemplates):
            templates = ScatteredLightTemplates.load(templates)
        if not source_radius >= 0:
            raise InputError(f"source_radius must be >= 0, got {source_radius!r}")
        self.estimator = estimator
        self.templates = templates
        self.source_radius = float(source_radius)
        self.name = name or f"{getattr(estimator, 'name', 'background')}+slt"

    def __repr__(self) -> str:
        return f"TemplateCorrected({self.estimator!r}, {self.templates!r}, name={self.name!r})"

    @image_method
    def estimate(self, image: Image | np.ndarray, x, y, *, mask: np.ndarray | None = None,
                 mag: np.ndarray | None = None,
                 neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> BackgroundResult:
        """Total background under each source (see the class notes for what is returned)."""
        from scipy.ndimage import map_coordinates

        img = as_image(image, mask)
        x, y = check_positions(x, y)
        scattered, _ = self.templates.scattered_light(img)
        corrected = img.with_data(img.data - scattered)  # BKGnet eq. 2
        res = self.estimator.estimate(corrected, x, y, mag=mag, neighbours=neighbours)
        ny, nx = img.shape
        with np.errstate(invalid="ignore"):
            off = ~((x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5))
        if self.source_radius > 0:  # mean over the pixels within source_radius of the source
            dx, dy = annulus_offsets(self.source_radius, 0.0)
            xi, yi = _round_half_up(x), _round_half_up(y)
            vals, valid = gather(scattered, xi, yi, dx, dy)
            with np.errstate(invalid="ignore"):
                r = np.hypot(dx[None] - (x - xi)[:, None], dy[None] - (y - yi)[:, None])
                use = valid & (r <= self.source_radius)
                at_src = np.where(use, vals, 0.0).sum(1) / use.sum(1)
        else:
            coords = np.vstack([np.where(off, 0.0, y), np.where(off, 0.0, x)])
            at_src = map_coordinates(scattered, coords, order=1, mode="nearest")
        at_src[off] = np.nan
        flags = np.asarray(res.flags, np.int32) | np.where(off, F.OFF_IMAGE, 0).astype(np.int32)
        extra = dict(res.extra)
        extra["bkg_scattered"] = at_src
        return BackgroundResult(np.asarray(res.bkg, float) + at_src, res.bkg_err, res.pixel_std,
                                res.n_pix, flags, extra)

    @image_method
    def background_map(self, image: Image | np.ndarray, mask: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """``(scattered, corrected)``: the scattered-light map ``(SLT - 1) mu_BKG`` and the
        corrected image ``I - (SLT - 1) mu_BKG`` (float64, image units)."""
        img = as_image(image, mask)
        scattered, _ = self.templates.scattered_light(img)
        return scattered, img.data - scattered
