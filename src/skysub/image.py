"""In-memory image: pixel data, a boolean bad-pixel mask, header, WCS and metadata.

:class:`Image` is what every estimator and photometer receives.  Functions that accept an
image also accept what astronomers already hold and wrap it with :func:`as_image`, the one
adapter for image containers:

- a 2-D ``numpy.ndarray`` (any numeric dtype and byte order);
- a ``numpy.ma.MaskedArray`` (its mask is honoured);
- an astropy ``Quantity`` (its unit flows to every result);
- an astropy ``NDData`` / ``CCDData`` (data, mask, uncertainty as a per-pixel variance, unit,
  WCS and a FITS-header ``meta``).

Masks are OR-ed: the container's own mask, the ``mask=`` argument and the non-finite pixels.
Estimator and photometer methods are wrapped by :func:`image_method`, which applies the adapter,
turns ``SkyCoord`` positions into pixels with the container's WCS, and gives the results the
input's unit (as ``Quantity``) -- the one place where units are handled.

Conventions: 0-based pixels, ``(x, y) = (column, row)``, pixel centres at integers; mask True
means bad/ignored; non-finite data are always masked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class ImageMeta:
    """Per-exposure metadata.

    Attributes
    ----------
    band, epoch : str or None
        Filter name and camera epoch (e.g. "before"/"after" an intervention).
    exptime : float or None
        Exposure time in seconds (> 0 when given).
    gain : float
        e-/ADU; converts image units to electrons for Poisson terms.  For a frame in counts
        or electrons per second it is the exposure time times the detector gain
        (:func:`skysub.io.read_meta` works it out from ``BUNIT`` and ``EXPTIME``).
    rdnoise : float
        Read noise in electrons.
    night : str or None
        Optional night label (templates can be built per night).
    gain_known : bool
        False when a FITS header gave no gain (``gain`` is then the placeholder 1.0): the
        photometers and ``skysub inject`` leave the sources' own shot noise out (SExtractor's
        ``GAIN = 0`` convention) rather than assume 1 e- per image unit.
    """

    band: str | None = None
    epoch: str | None = None
    exptime: float | None = None
    gain: float = 1.0
    rdnoise: float = 0.0
    night: str | None = None
    gain_known: bool = True

    def __post_init__(self) -> None:
        if self.exptime is not None and not (np.isfinite(self.exptime) and self.exptime > 0):
            raise InputError(f"exposure time must be positive, got exptime={self.exptime!r}")
        if not (np.isfinite(self.gain) and self.gain > 0):
            raise InputError(f"gain must be positive (e-/ADU), got gain={self.gain!r}")
        if not (np.isfinite(self.rdnoise) and self.rdnoise >= 0):
            raise InputError(f"read noise must be >= 0 (e-), got rdnoise={self.rdnoise!r}")

    @property
    def source_gain(self) -> float:
        """The gain for the sources' own shot noise: ``gain``, or infinity (no shot noise)
        when the header gave none."""
        return self.gain if self.gain_known else float("inf")

    @property
    def key(self) -> tuple[str | None, str | None]:
        """The (band, epoch) pair used to select templates and embeddings."""
        return (self.band, self.epoch)


@dataclass
class Image:
    """A 2-D image with mask, header, WCS and metadata.

    Attributes
    ----------
    data : ndarray, float64, shape (ny, nx)
        Native byte order.  Masked pixels keep their value but never enter a statistic.
    mask : ndarray, bool, shape (ny, nx)
        True = bad.  Always covers non-finite ``data``.
    header : astropy.io.fits.Header or None
    wcs : astropy.wcs.WCS or None (None when the header has no celestial WCS)
    meta : ImageMeta
    path : Path or None
        File the image was read from (used to refuse overwriting inputs).
    unit : astropy.units.Unit or None
        Unit of ``data`` (from a ``Quantity`` or ``CCDData``); results then carry it.
    variance : ndarray, float64, shape (ny, nx), or None
        Per-pixel variance of ``data`` (from an NDData ``uncertainty``), in ``unit**2``;
        photometers that support it use it as the pixel noise of the flux errors.
    """

    data: np.ndarray
    mask: np.ndarray
    header: Any = None
    wcs: Any = None
    meta: ImageMeta = field(default_factory=ImageMeta)
    path: Path | None = None
    unit: Any = None
    variance: np.ndarray | None = None

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.ndim != 2:
            raise InputError(f"image data must be 2-D, got shape {data.shape}"
                             + (f" in {self.path}" if self.path else ""))
        data = data.astype(np.float64, copy=False)
        if not data.dtype.isnative:
            data = data.astype(data.dtype.newbyteorder("="))
        mask = np.zeros(data.shape, bool) if self.mask is None else np.asarray(self.mask, bool)
        if mask.shape != data.shape:
            raise InputError(f"mask shape {mask.shape} does not match image shape {data.shape}"
                             + (f" in {self.path}" if self.path else ""))
        self.data = data
        self.mask = mask | ~np.isfinite(data)
        if self.variance is not None:
            var = np.asarray(self.variance, dtype=np.float64)
            if var.shape != data.shape:
                raise InputError(f"uncertainty shape {var.shape} does not match image shape "
                                 f"{data.shape}" + (f" in {self.path}" if self.path else ""))
            if not var.dtype.isnative:
                var = var.astype(var.dtype.newbyteorder("="))
            with np.errstate(invalid="ignore"):
                self.mask = self.mask | ~(np.isfinite(var) & (var >= 0))
            self.variance = var

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """File name (or "<array>") used in output tables."""
        return self.path.name if self.path is not None else "<array>"

    def with_data(self, data: np.ndarray) -> Image:
        """A copy with new pixel values (same mask, header, WCS, metadata)."""
        return replace(self, data=np.asarray(data, float), mask=self.mask.copy())


def _sky_to_pixel(img: Image, coords: Any) -> tuple[np.ndarray, np.ndarray]:
    if img.wcs is None:
        raise InputError(f"positions given as SkyCoord need a WCS, but {img.name} has none "
                         "(pass an NDData/CCDData with wcs=, or x, y pixel positions)")
    x, y = img.wcs.world_to_pixel(coords)
    return np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))


def _is_skycoord(obj: Any) -> bool:
    return type(obj).__name__ == "SkyCoord" and hasattr(obj, "frame")


def with_unit(result: Any, unit: Any) -> Any:
    """``result`` with its image-unit quantities given ``unit`` (None: unchanged).

    Handles the protocol results (their ``UNIT_FIELDS``: ``bkg``, ``bkg_err``, ``flux``...),
    arrays (maps), tuples of those, and :class:`Image` (which carries its unit itself).
    """
    if unit is None or result is None:
        return result
    if isinstance(result, Image):
        return result if result.unit is not None else replace(result, unit=unit)
    if isinstance(result, tuple):
        return tuple(with_unit(r, unit) for r in result)
    names = getattr(type(result), "UNIT_FIELDS", None)
    if names is not None:
        return replace(result, **{k: np.asarray(getattr(result, k), float) * unit
                                  for k in names})
    if isinstance(result, np.ndarray) and result.dtype.kind == "f":
        return result * unit
    if isinstance(result, float | np.floating):
        return float(result) * unit
    return result


def image_method(func):
    """Decorate ``estimate``/``measure``/``background_map``-style methods (``self, image, ...``).

    The wrapped method receives an :class:`Image` (via :func:`as_image`, so every container is
    understood); when the first positional argument after the image is a ``SkyCoord`` (and
    ``y`` is omitted or None) the container's WCS converts it to pixel positions; the result
    gets the input's unit.  A ``mask=`` keyword is OR-ed into the image here (the method then
    receives the combined mask in the Image and no ``mask``).
    """

    @functools.wraps(func)
    def wrapper(self, image, *args, **kwargs):
        # a keyword mask (estimate/measure) is folded in here, so the image is adapted once
        img = as_image(image, kwargs.pop("mask", None))
        unit = img.unit
        if unit is not None:  # the method computes in bare numbers; the unit is put back below
            if img is image:  # the caller's own Image: never modified
                img = replace(img, unit=None)
            else:
                img.unit = None
        if args and _is_skycoord(args[0]):
            if len(args) > 1 and args[1] is not None:
                raise InputError("positions: give either a SkyCoord or x, y pixel arrays")
            args = (*_sky_to_pixel(img, args[0]), *args[2:])
        return with_unit(func(self, img, *args, **kwargs), unit)

    return wrapper


def _container_parts(image: Any) -> dict[str, Any] | None:
    """Data, mask, unit, variance, wcs and header of an astropy/numpy container (None: plain)."""
    parts: dict[str, Any] = {}
    if isinstance(image, np.ma.MaskedArray):
        return {"data": np.ma.getdata(image), "mask": np.ma.getmaskarray(image)}
    mod = type(image).__module__ or ""
    if not mod.startswith("astropy"):
        return None
    from astropy import units as u

    if isinstance(image, u.Quantity):
        parts = {"data": np.asarray(image.value), "unit": image.unit}
        m = getattr(image, "mask", None)  # astropy Masked quantities
        if m is not None:
            parts["data"] = np.asarray(getattr(image, "unmasked", image).value)
            parts["mask"] = np.asarray(m, bool)
        return parts
    from astropy.nddata import NDData

    if not isinstance(image, NDData):
        return None
    data = image.data
    unit = image.unit
    if isinstance(data, u.Quantity):  # pragma: no cover - NDData strips it; defensive
        unit, data = data.unit, data.value
    parts = {"data": np.asarray(data), "unit": unit,
             "mask": None if image.mask is None else np.asarray(image.mask, bool),
             "wcs": getattr(image, "wcs", None)}
    if image.uncertainty is not None:
        parts["variance"] = _variance(image, unit)
    meta = image.meta
    from astropy.io.fits import Header

    if isinstance(meta, dict) and isinstance(meta.get("header"), Header):
        meta = meta["header"]
    if isinstance(meta, Header):
        parts["header"] = meta
    if meta:  # band, epoch, exptime, gain... from the FILTER, EPOCH, ... keywords
        parts["meta"] = _meta_from_header(meta, f"{type(image).__name__} meta")
    return parts


#: gain keywords tried, in order, when the configured one is missing (detector gain, e-/DN)
GAIN_FALLBACKS = ("CCDGAIN", "ATODGAIN", "EGAIN")


def _is_rate(bunit: str) -> str | None:
    """'electrons' or 'counts' for a per-second unit (``ELECTRONS/S``, ``COUNTS/S``, ``cps``,
    ``e-/s``, ``DN/s``...), else None."""
    u = bunit.strip().lower().replace(" ", "")
    if u in ("cps", "counts/s", "count/s", "counts/sec", "dn/s", "dn/sec", "adu/s", "adu/sec"):
        return "counts"
    if u in ("e/s", "e-/s", "electrons/s", "electron/s", "electrons/sec", "e-/sec"):
        return "electrons"
    return None


def header_unit(header: Any) -> str | None:
    """The unit a header states for the pixel values: ``BUNIT``, else drizzle's output unit
    ``D001OUUN`` (None when neither holds a non-empty string)."""
    if header is None or not hasattr(header, "get"):
        return None
    return next((v for k in ("BUNIT", "D001OUUN")
                 if isinstance(v := header.get(k), str) and v.strip()), None)


def header_gain(header: Any, keyword: str | None, exptime: float | None
                ) -> tuple[float | None, str]:
    """The gain (e- per image unit) a header implies, and how it was found.

    The configured ``keyword`` first, then :data:`GAIN_FALLBACKS`.  A frame in electrons per
    second (``BUNIT``, else drizzle's ``D001OUUN``) has gain ``exptime``; one in counts per
    second, the detector gain times ``exptime``.  ``(None, why)`` when the header does not
    say.
    """
    def get(k):
        if header is None or not k or not hasattr(header, "get"):
            return None
        v = header.get(k, header.get(k.lower()) if isinstance(header, dict) else None)
        try:
            v = float(v)
        except (TypeError, ValueError):
            return None
        return v if np.isfinite(v) and v > 0 else None

    found, how = None, ""
    for k in (keyword, *GAIN_FALLBACKS):
        if k and (v := get(k)) is not None:
            found, how = v, k
            break
    bunit = header_unit(header)
    rate = _is_rate(bunit) if isinstance(bunit, str) else None
    if rate and not exptime:
        return None, f"BUNIT {bunit!r} per second and no exposure time"
    if rate:
        if rate == "electrons":
            return float(exptime), f"BUNIT {bunit!r} x EXPTIME"
        if found is not None:
            return found * float(exptime), f"{how} x EXPTIME (BUNIT {bunit!r})"
        return None, f"BUNIT {bunit!r} and no detector gain keyword"
    return found, how


def _meta_from_header(meta: Any, what: str) -> ImageMeta:
    """ImageMeta from a header or dict with the default keywords (:class:`HeaderKeys`)."""
    from .config import HeaderKeys
    from .errors import HeaderError

    keys = HeaderKeys()
    values: dict[str, Any] = {}
    for f in fields(ImageMeta):
        kw = getattr(keys, f.name, None)
        if not kw:
            continue
        v = meta.get(kw, meta.get(kw.lower())) if hasattr(meta, "get") else None
        if v is None or (isinstance(v, str) and not v.strip()):
            continue
        if f.name in ("exptime", "gain", "rdnoise"):
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise HeaderError(f"{what}: {kw} must be a number ({f.name}), got {v!r}"
                                  ) from None
        else:
            v = str(v).strip()
        values[f.name] = v
    if "gain" not in values:  # other keywords or a rate unit; else gain 1, as a bare array
        gain, _ = header_gain(meta, None, values.get("exptime"))
        if gain is not None:
            values["gain"] = gain
    try:
        return ImageMeta(**values)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None


def _variance(nd: Any, unit: Any) -> np.ndarray:
    """The NDData uncertainty as a variance array in ``unit**2``."""
    from astropy.nddata import VarianceUncertainty

    unc = nd.uncertainty
    try:
        var = unc.represent_as(VarianceUncertainty)
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"cannot use the image uncertainty ({type(unc).__name__}) as a "
                         f"variance: {exc}; give a StdDevUncertainty, VarianceUncertainty or "
                         "InverseVariance") from None
    arr = np.asarray(var.array, float)
    if var.unit is not None and unit is not None and var.unit != unit**2:
        try:
            arr = (arr * var.unit).to_value(unit**2)
        except Exception as exc:  # noqa: BLE001 - astropy raises UnitConversionError
            raise InputError(f"image uncertainty unit {var.unit} does not match the data unit "
                             f"{unit} ({exc})") from None
    return np.broadcast_to(arr, np.shape(nd.data)) if arr.ndim == 0 else arr


def as_image(image: Any, mask: np.ndarray | None = None,
             meta: ImageMeta | None = None) -> Image:
    """Wrap an image container (and optional mask) as an :class:`Image`; pass an Image through.

    Parameters
    ----------
    image : Image, ndarray, numpy masked array, astropy Quantity, NDData or CCDData
        2-D pixel data.  A masked array's or NDData's mask is honoured; a Quantity's or NDData's
        unit is kept in ``Image.unit``; an NDData uncertainty becomes ``Image.variance``; an
        NDData WCS becomes ``Image.wcs`` and a FITS-header ``meta`` ``Image.header``.
    mask : bool array, optional
        Extra bad pixels (True = bad), OR-ed with the container's mask and the non-finite pixels.
    meta : ImageMeta, optional

    Raises
    ------
    InputError
        Not 2-D, a mask of another shape, or an unusable uncertainty.
    """
    if isinstance(image, Image):
        if mask is None and meta is None:
            return image
        new_mask = image.mask if mask is None else image.mask | _mask_array(mask)
        return replace(image, mask=new_mask, meta=meta or image.meta)
    parts = _container_parts(image)
    if parts is None:
        return Image(data=np.asarray(image), mask=mask, meta=meta or ImageMeta())
    data = np.asarray(parts.pop("data"))
    own = parts.pop("mask", None)
    meta = meta or parts.pop("meta", None)
    parts.pop("meta", None)
    if own is not None and np.shape(own) != data.shape:
        if np.ndim(own) == 0:
            own = np.broadcast_to(np.asarray(own, bool), data.shape)
        else:
            raise InputError(f"container mask shape {np.shape(own)} does not match image shape "
                             f"{data.shape}")
    if mask is not None:
        extra = _mask_array(mask)
        if own is not None and extra.shape == data.shape:
            own = own | extra
        elif own is None:
            own = extra
        else:
            own = extra  # wrong shape: Image raises the clear error
    return Image(data=data, mask=own, meta=meta or ImageMeta(), **parts)


def _mask_array(mask: Any) -> np.ndarray:
    if isinstance(mask, np.ma.MaskedArray):
        mask = np.ma.getdata(mask)
    return np.asarray(mask, bool)
