"""Vectorised cutouts with edge handling and validity masks.

Pixels outside the image or masked are returned as NaN with ``valid == False`` and never enter a
statistic: there is no zero padding anywhere in skysub.

Layout: a stamp of size ``N`` around position ``(x, y)`` is centred on the integer pixel
``(round(x), round(y))``.  Stamp pixel ``[i, j]`` is image pixel ``[y0 + i, x0 + j]`` with
``x0 = round(x) - N // 2`` (so for odd ``N`` the source pixel is exactly central and for even
``N`` it is at index ``N // 2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .image import Image, as_image


def _round_half_up(v: np.ndarray) -> np.ndarray:
    """Round to the nearest integer with .5 going up (numpy's banker's rounding is not stable
    across pixel boundaries).  NaN positions become a far-away sentinel that is never inside."""
    v = np.asarray(v, float)
    out = np.floor(v + 0.5)
    out[~np.isfinite(out)] = -(2**40)
    return out.astype(np.int64)


def check_positions(x, y) -> tuple[np.ndarray, np.ndarray]:
    """``x, y`` as 1-D float arrays of equal length (InputError otherwise)."""
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    if x.shape != y.shape or x.ndim != 1:
        raise InputError(f"x and y must be 1-D arrays of equal length, got {x.shape} and "
                         f"{y.shape}")
    return x, y


def gather(image: Image | np.ndarray, xi: np.ndarray, yi: np.ndarray, dx: np.ndarray,
           dy: np.ndarray, *, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Values at ``(xi + dx, yi + dy)`` for every source: the core of every stamp operation.

    Parameters
    ----------
    image : Image or 2-D array
    xi, yi : int arrays, shape (n,)
        Integer anchor pixel of each source.
    dx, dy : int arrays, shape (p,) or any shape broadcastable as trailing axes
        Pixel offsets relative to the anchor.
    mask : bool array, optional
        Extra bad-pixel mask (OR-ed with the image mask).

    Returns
    -------
    values : float64 array, shape (n, *dx.shape)
        NaN where invalid.
    valid : bool array, same shape
        False outside the image, at masked or non-finite pixels.
    """
    img = as_image(image, mask)
    ny, nx = img.shape
    xi = np.asarray(xi, np.int64)
    yi = np.asarray(yi, np.int64)
    dx = np.asarray(dx, np.int64)
    dy = np.asarray(dy, np.int64)
    extra = (1,) * dx.ndim
    xx = xi.reshape(-1, *extra) + dx[None]
    yy = yi.reshape(-1, *extra) + dy[None]
    inside = (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
    flat = np.where(inside, yy * nx + xx, 0)
    values = img.data.ravel()[flat]
    valid = inside & ~img.mask.ravel()[flat]
    values = np.where(valid, values, np.nan)
    return values, valid


@dataclass
class Stamps:
    """A stack of square cutouts.

    Attributes
    ----------
    data : float64 array (n, size, size); NaN where invalid
    valid : bool array (n, size, size)
    x0, y0 : int arrays (n,); image pixel of stamp pixel [0, 0]
    dx, dy : float arrays (n,); sub-pixel offset of the source from the stamp's anchor pixel
        (source at stamp coordinates ``(size // 2 + dx, size // 2 + dy)``)
    """

    data: np.ndarray
    valid: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    dx: np.ndarray
    dy: np.ndarray

    @property
    def size(self) -> int:
        return int(self.data.shape[-1])

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def valid_fraction(self) -> np.ndarray:
        """Fraction of valid pixels in each stamp."""
        return self.valid.reshape(len(self), -1).mean(axis=1)


def cutouts(image: Image | np.ndarray, x: np.ndarray, y: np.ndarray, size: int, *,
            mask: np.ndarray | None = None) -> Stamps:
    """Square ``size`` x ``size`` cutouts around many positions at once.

    Parameters
    ----------
    image : Image or 2-D array
    x, y : array-like, shape (n,)
        0-based pixel positions (column, row).  Positions off the image are allowed: their
        stamps are partly or wholly invalid.
    size : int
        Stamp side in pixels (>= 1).
    mask : bool array, optional
        Extra mask, True = bad.

    Returns
    -------
    Stamps
    """
    if int(size) != size or size < 1:
        raise InputError(f"stamp size must be a positive integer, got size={size!r}")
    size = int(size)
    x, y = check_positions(x, y)
    xi = _round_half_up(x)
    yi = _round_half_up(y)
    half = size // 2
    off = np.arange(size) - half
    dy, dx = np.meshgrid(off, off, indexing="ij")
    values, valid = gather(image, xi, yi, dx, dy, mask=mask)
    with np.errstate(invalid="ignore"):
        return Stamps(values, valid, xi - half, yi - half, x - xi, y - yi)


def annulus_offsets(r_out: float, r_in: float = 0.0, *, margin: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets (dx, dy) of every pixel whose centre may fall in a ring
    ``r_in <= r <= r_out`` around a source anywhere within the anchor pixel (``margin`` px of
    slack for the sub-pixel offset).  Used to gather only the pixels an annulus can touch."""
    R = int(np.ceil(r_out + margin))
    off = np.arange(-R, R + 1)
    dy, dx = np.meshgrid(off, off, indexing="ij")
    r = np.hypot(dx, dy)
    keep = (r <= r_out + margin) & (r >= max(r_in - margin, 0.0))
    return dx[keep], dy[keep]


class WindowCutter:
    """Fast square cutouts of one image for many batches of positions (learned estimators).

    The image and its validity are padded once by ``size`` pixels (invalid padding) and viewed
    as a (ny, nx, size, size) window array; a batch of stamps is then one fancy-index copy of
    that view -- ~10x faster than :func:`cutouts` for thousands of 120 px stamps, at the cost
    of one padded copy of the image (``dtype``, default float32) per image.

    Stamp layout is that of :func:`cutouts` (anchor ``round(x)``, source at index
    ``size // 2``); invalid pixels hold ``fill`` instead of NaN.
    """

    def __init__(self, image: Image | np.ndarray, size: int, *, mask: np.ndarray | None = None,
                 dtype=np.float32, fill: float = 0.0) -> None:
        if int(size) != size or size < 1:
            raise InputError(f"stamp size must be a positive integer, got size={size!r}")
        img = as_image(image, mask)
        self.size = int(size)
        self.pad = p = self.size
        ny, nx = img.shape
        self.shape = (ny, nx)
        data = np.full((ny + 2 * p, nx + 2 * p), fill, dtype=dtype)
        valid = np.zeros((ny + 2 * p, nx + 2 * p), bool)
        good = ~img.mask
        data[p:p + ny, p:p + nx] = np.where(good, img.data, fill)
        valid[p:p + ny, p:p + nx] = good
        win = np.lib.stride_tricks.sliding_window_view
        self._padded = (data, valid)
        self._data = win(data, (self.size, self.size))
        self._valid = win(valid, (self.size, self.size))

    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                               np.ndarray, np.ndarray]:
        """Stamps at (x, y): ``(data (n, S, S), valid (n, S, S), x0, y0)`` with ``x0, y0`` the
        image pixel of stamp pixel [0, 0].  Centres farther than ``size / 2`` off the image
        give all-invalid stamps."""
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        half = self.size // 2
        x0 = _round_half_up(x) - half
        y0 = _round_half_up(y) - half
        r, c = self._corners(x0, y0)
        return self._data[r, c], self._valid[r, c], x0, y0

    def _corners(self, x0: np.ndarray, y0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Padded-array row and column of stamp pixel [0, 0], clipped into the padded frame
        (a stamp entirely in the padding is entirely invalid)."""
        ny, nx = self.shape
        p = self.pad
        return np.clip(y0 + p, 0, ny + p), np.clip(x0 + p, 0, nx + p)

    def folded_inputs(self, x: np.ndarray, y: np.ndarray, mask_size: int, *, min_valid: int,
                      asinh_scale: float, mad_k: float, floor_rel: float, floor_abs: float,
                      out: np.ndarray | None = None) -> dict | None:
        """BKGnet's network input for stamps at (x, y) in one compiled pass (numba): the
        normalisation of :func:`skysub.nn.bkgnet.normalise_stamps` (its constants passed in)
        folded 2 x 2 into channels as :func:`skysub.nn.inference.space_to_depth` does, without
        the intermediate stamps.  Returns ``x`` (n, S/2 + 1, S/2 + 1, 8) float32 (a view of
        ``out`` when given), ``loc``, ``scale`` (float64), ``ok``, ``n_valid`` (valid stamp
        pixels, hidden centre included), ``x0``, ``y0``; None when numba is unavailable (the
        caller then takes the torch path).  Needs a float32 cutter with ``fill = 0``."""
        kernel = _fold_kernel()
        data, valid = self._padded
        if kernel is None or data.dtype != np.float32 or self.size % 2:
            return None
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        n = len(x)
        half = self.size // 2
        x0 = _round_half_up(x) - half
        y0 = _round_half_up(y) - half
        r, c = self._corners(x0, y0)
        h2 = half + 1
        if out is None or out.shape[0] < n or out.shape[1:] != (h2, h2, 8):
            out = np.empty((n, h2, h2, 8), np.float32)
        c0 = half - mask_size // 2
        loc = np.empty(n, np.float32)
        scale = np.empty(n, np.float32)
        ok = np.empty(n, bool)
        n_valid = np.empty(n, np.int64)
        buf = np.empty(((self.size + 1) // 2) ** 2, np.float32)
        kernel(data, valid, r.astype(np.int64), c.astype(np.int64), self.size, c0,
               c0 + mask_size, int(min_valid), float(asinh_scale), float(mad_k),
               float(floor_rel), float(floor_abs), out, loc, scale, ok, n_valid, buf)
        return {"x": out[:n], "loc": loc.astype(np.float64), "scale": scale.astype(np.float64),
                "ok": ok, "n_valid": n_valid, "x0": x0, "y0": y0}


def _fold_kernel():
    """The compiled :func:`skysub._numba_stamps.fold_stamps`, or None
    (:func:`skysub.kernels.optional_kernel`: no numba, or ``SKYSUB_KERNELS=numpy``)."""
    from .kernels import optional_kernel

    return optional_kernel("fold_stamps", _load_fold)


def _load_fold():
    from ._numba_stamps import fold_stamps

    _fold_smoke(fold_stamps)
    return fold_stamps


def _fold_smoke(kernel) -> None:
    """Compile (or load from cache) the kernel on a tiny stamp."""
    d = np.zeros((8, 8), np.float32)
    v = np.ones((8, 8), bool)
    out = np.empty((1, 3, 3, 8), np.float32)
    kernel(d, v, np.zeros(1, np.int64), np.zeros(1, np.int64), 4, 1, 3, 1, 5.0, 1.4826,
           1e-4, 1e-6, out, np.empty(1, np.float32), np.empty(1, np.float32),
           np.empty(1, bool), np.empty(1, np.int64), np.empty(4, np.float32))
