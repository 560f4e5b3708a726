"""In-memory image: pixel data, a boolean bad-pixel mask, header, WCS and metadata.

:class:`Image` is what every estimator and photometer receives.  Functions that accept an
image also accept a bare 2-D array (plus an optional mask) and wrap it with :func:`as_image`.

Conventions: 0-based pixels, ``(x, y) = (column, row)``, pixel centres at integers; mask True
means bad/ignored; non-finite data are always masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
        e-/ADU; converts image units to electrons for Poisson terms.
    rdnoise : float
        Read noise in electrons.
    night : str or None
        Optional night label (templates can be built per night).
    """

    band: str | None = None
    epoch: str | None = None
    exptime: float | None = None
    gain: float = 1.0
    rdnoise: float = 0.0
    night: str | None = None

    def __post_init__(self) -> None:
        if self.exptime is not None and not (np.isfinite(self.exptime) and self.exptime > 0):
            raise InputError(f"exposure time must be positive, got exptime={self.exptime!r}")
        if not (np.isfinite(self.gain) and self.gain > 0):
            raise InputError(f"gain must be positive (e-/ADU), got gain={self.gain!r}")
        if not (np.isfinite(self.rdnoise) and self.rdnoise >= 0):
            raise InputError(f"read noise must be >= 0 (e-), got rdnoise={self.rdnoise!r}")

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
    """

    data: np.ndarray
    mask: np.ndarray
    header: Any = None
    wcs: Any = None
    meta: ImageMeta = field(default_factory=ImageMeta)
    path: Path | None = None

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


def as_image(image: Image | np.ndarray, mask: np.ndarray | None = None,
             meta: ImageMeta | None = None) -> Image:
    """Wrap a bare array (and optional mask) as an :class:`Image`; pass an Image through.

    A mask given alongside an :class:`Image` is OR-ed into the image's own mask.
    """
    if isinstance(image, Image):
        if mask is None and meta is None:
            return image
        new_mask = image.mask if mask is None else image.mask | np.asarray(mask, bool)
        return replace(image, mask=new_mask, meta=meta or image.meta)
    return Image(data=np.asarray(image), mask=mask, meta=meta or ImageMeta())
