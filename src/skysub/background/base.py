"""The background-estimator protocol shared by every method.

An estimator takes an image (array + mask, or :class:`skysub.image.Image`) and source positions
and returns a :class:`BackgroundResult`: per-source background per pixel, the 1-sigma error of
that estimate, the per-pixel scatter, the number of pixels used and quality flags.  Estimators
that model the whole image also implement ``background_map``.

Anything with an ``estimate`` method of this signature is an estimator (BKGnet included); a
plain opticam-style callable is adapted by :class:`CallableBackground` (see
:func:`as_estimator`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from ..image import Image


@dataclass
class BackgroundResult:
    """Per-source background estimates (all arrays of shape (n,), image units per pixel).

    Attributes
    ----------
    bkg : background level per pixel under each source.
    bkg_err : 1-sigma error of ``bkg`` itself (not the pixel scatter).
    pixel_std : per-pixel scatter of the background (sigma_b of BKGnet eq. 9); NaN if unknown.
    n_pix : number of pixels the estimate used (0 if not applicable).
    flags : int32 bit flags, see :mod:`skysub.flags`.
    """

    bkg: np.ndarray
    bkg_err: np.ndarray
    pixel_std: np.ndarray
    n_pix: np.ndarray
    flags: np.ndarray
    extra: dict = field(default_factory=dict)

    #: Fields in image units: they become ``Quantity`` when the input image had a unit.
    UNIT_FIELDS: ClassVar[tuple[str, ...]] = ("bkg", "bkg_err", "pixel_std")

    def __len__(self) -> int:
        return int(np.asarray(self.bkg).shape[0])

    def as_table(self):
        """The result as an astropy Table with columns bkg, bkg_err, pixel_std, n_pix, flags."""
        from astropy.table import Table

        t = Table({"bkg": self.bkg, "bkg_err": self.bkg_err, "pixel_std": self.pixel_std,
                   "n_pix": self.n_pix, "flags": self.flags})
        for k, v in self.extra.items():
            t[k] = v
        return t


@runtime_checkable
class BackgroundEstimator(Protocol):
    """Protocol: ``estimate(image, x, y, *, mask=None, mag=None, neighbours=None)``.

    Parameters of ``estimate``
    --------------------------
    image : Image or 2-D array
    x, y : arrays (n,), 0-based pixel positions
    mask : optional extra bad-pixel mask (True = bad)
    mag : optional per-source magnitudes (used by learned estimators)
    neighbours : optional ``(x_all, y_all)`` of every catalogued source, used to flag crowding
        (defaults to the sources themselves)
    """

    name: str

    def estimate(self, image: Image | np.ndarray, x: np.ndarray, y: np.ndarray, *,
                 mask: np.ndarray | None = None, mag: np.ndarray | None = None,
                 neighbours: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> BackgroundResult: ...
