"""Local background from a sigma-clipped circular or elliptical annulus (PAUS, opticam).

The estimator gathers, for all sources at once, only the pixels an annulus can touch, keeps the
ones whose centres fall inside each source's (sub-pixel positioned) annulus, sorts each source's
values once and sigma-clips all rows together (:func:`skysub.stats.clipped_stats_sorted`).  The
gather and the clipping run in compiled kernels (:mod:`skysub.kernels`, numba) or, without
numba, in the numpy fallback kept here (same values, counts and flags).  Pixel membership
follows photutils' ``method="center"``: a pixel belongs to the annulus when its centre does, so
the numbers equal ``photutils.aperture.ApertureStats`` with the same ``SigmaClip`` (tested to
1e-12 relative on masked data with NaNs and edges)."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import numpy as np

from .. import flags as F
from .. import kernels
from ..errors import InputError
from ..image import Image, as_image, image_method
from ..stamps import _round_half_up, annulus_offsets, check_positions
from ..stats import (
    STATISTICS,
    biweight_of_run,
    clipped_stats_sorted,
    estimate_error,
    mode_fell_back,
)
from .base import BackgroundResult


def crowding(x: np.ndarray, y: np.ndarray, radius: float,
             neighbours: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Number of other catalogued sources within ``radius`` px of each source.

    ``neighbours`` are all catalogued positions (defaults to the sources themselves); a
    neighbour closer than 0.5 px is taken to be the source itself.
    """
    from ..neighbours import count_within

    nx_, ny_ = (x, y) if neighbours is None else (np.asarray(neighbours[0], float),
                                                   np.asarray(neighbours[1], float))
    ok = queryable(nx_, ny_)
    if ok.sum() == 0 or len(x) == 0:
        return np.zeros(len(x), int)
    out = np.zeros(len(x), int)
    # non-finite or absurd positions (off any image) have no neighbours; squaring them would
    # overflow
    q = queryable(x, y)
    if q.any():
        qx, qy, nx_, ny_ = x[q], y[q], nx_[ok], ny_[ok]
        out[q] = (count_within(qx, qy, nx_, ny_, radius)
                  - count_within(qx, qy, nx_, ny_, 0.5))
    return out


def queryable(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Positions a neighbour search can take: finite and within 1e100 px of the origin."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & np.isfinite(y) & (np.abs(x) < 1e100) & (np.abs(y) < 1e100)


def off_image(shape: tuple[int, int], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True where the source centre lies outside the image (or is not finite)."""
    ny, nx = shape
    with np.errstate(invalid="ignore"):
        inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    return ~inside


class AnnulusBackground:
    """Sigma-clipped statistic of the pixels in a circular or elliptical annulus.

    Parameters
    ----------
    r_in, r_out : float
        Inner and outer semi-major axes in pixels (PAUS: 30 and 45).
    ba : float
        Axis ratio b/a of the elliptical annulus (1 = circular).  Both ellipses share it.
    theta : float
        Orientation of the semi-major axis in DEGREES, counter-clockwise from +x.
    statistic : {"median", "mean", "mode", "biweight"}
        Location of the clipped pixels.  ``mode`` is SExtractor's 2.5 median - 1.5 mean.
    sigma : float or None
        Clipping threshold (around the median, in stds); None disables clipping.
    maxiters : int or None
        Clipping iterations (None: until convergence).
    min_pixels : int
        Fewer kept pixels than this gives NaN and the NO_DATA flag.
    chunk_size : int
        Sources processed together (bounds memory to ~chunk_size x annulus area x 40 bytes).

    Notes
    -----
    ``bkg_err`` is the 1-sigma error of the estimate itself: ``std / sqrt(n)`` for the mean,
    ``sqrt(pi / 2) std / sqrt(n)`` for the median (BKGnet eq. 9), ``2.137 std / sqrt(n)`` for
    the SExtractor mode (see :func:`skysub.stats.estimate_error`), with ``n`` the
    number of pixels kept after clipping; ``pixel_std`` is the clipped pixel scatter.
    """

    def __init__(self, r_in: float = 30.0, r_out: float = 45.0, *, ba: float = 1.0,
                 theta: float = 0.0, statistic: str = "median", sigma: float | None = 3.0,
                 maxiters: int | None = 10, min_pixels: int = 10, chunk_size: int = 2000,
                 name: str = "annulus") -> None:
        if not (np.isfinite(r_in) and np.isfinite(r_out) and 0 <= r_in < r_out):
            raise InputError(f"annulus radii must satisfy 0 <= r_in < r_out, got r_in={r_in}, "
                             f"r_out={r_out}")
        if not (0 < ba <= 1):
            raise InputError(f"annulus axis ratio ba must be in (0, 1], got ba={ba}")
        if statistic not in STATISTICS:
            raise InputError(f"unknown statistic={statistic!r}; expected one of {STATISTICS}")
        if sigma is not None and not sigma > 0:
            raise InputError(f"sigma must be positive or None, got sigma={sigma}")
        self.r_in = float(r_in)
        self.r_out = float(r_out)
        self.ba = float(ba)
        self.theta = float(theta)
        self.statistic = statistic
        self.sigma = sigma
        self.maxiters = maxiters
        self.min_pixels = int(min_pixels)
        self.chunk_size = int(chunk_size)
        self.name = name
        dx, dy = annulus_offsets(self.r_out, self.r_in * self.ba)
        # Offsets whose pixel is in the annulus whatever the source's sub-pixel position
        # (|shift| <= sqrt(1/2); the elliptical radius changes by at most |shift| / ba) come
        # first; only the others ("boundary" pixels, ~1/5) need a radius test per source.
        r0 = self._elliptical_radius(dx.astype(float), dy.astype(float))
        m = np.sqrt(0.5) / self.ba + 1e-9
        # offsets that no sub-pixel position can bring into the (elliptical) ring are dropped:
        # annulus_offsets gives a circular ring, most of which an elongated ellipse never uses
        possible = (r0 >= self.r_in - m - 1e-6) & (r0 < self.r_out + m + 1e-6)
        dx, dy, r0 = dx[possible], dy[possible], r0[possible]
        certain = (r0 >= self.r_in + m) & (r0 < self.r_out - m)
        order = np.argsort(~certain, kind="stable")
        self._dx, self._dy = dx[order], dy[order]
        self._n_certain = int(certain.sum())
        self._extent = (int(np.abs(dx).max()), int(np.abs(dy).max()))

    def __repr__(self) -> str:
        return (f"AnnulusBackground(r_in={self.r_in}, r_out={self.r_out}, ba={self.ba}, "
                f"theta={self.theta}, statistic={self.statistic!r}, sigma={self.sigma}, "
                f"maxiters={self.maxiters})")

    @classmethod
    def from_psf(cls, semimajor_sigma: float, semiminor_sigma: float, orientation: float, *,
                 r_in_scale: float = 5.0, r_out_scale: float = 7.5, statistic: str = "mean",
                 **kwargs) -> AnnulusBackground:
        """opticam's default annulus: axes = PSF sigmas x ``r_in_scale`` / ``r_out_scale``,
        rotated by the PSF ``orientation`` in DEGREES (sigma-clipped mean by default)."""
        if not (semimajor_sigma > 0 and semiminor_sigma > 0):
            raise InputError("PSF sigmas must be positive, got semimajor_sigma="
                             f"{semimajor_sigma}, semiminor_sigma={semiminor_sigma}")
        a, b = max(semimajor_sigma, semiminor_sigma), min(semimajor_sigma, semiminor_sigma)
        return cls(r_in_scale * a, r_out_scale * a, ba=b / a, theta=orientation,
                   statistic=statistic, **kwargs)

    @classmethod
    def from_config(cls, section: dict) -> AnnulusBackground:
        """Build from a TOML ``[annulus]`` section (keys are this class's parameters)."""
        try:
            return cls(**section)
        except TypeError as exc:
            raise InputError(f"[annulus] configuration: {exc}") from None

    # -- geometry -----------------------------------------------------------------------------
    def _elliptical_radius(self, ddx: np.ndarray, ddy: np.ndarray) -> np.ndarray:
        t = np.deg2rad(self.theta)  # public API in degrees; numpy wants radians
        c, s = np.cos(t), np.sin(t)
        u = ddx * c + ddy * s
        v = -ddx * s + ddy * c
        return np.sqrt(u * u + (v / self.ba) ** 2)

    def _off(self, nx: int) -> np.ndarray:
        """Flat-index offsets of the annulus pixels in an image ``nx`` pixels wide."""
        if getattr(self, "_off_nx", None) != nx:
            self._off_cache = self._dy.astype(np.int64) * nx + self._dx
            self._off_nx = nx
        return self._off_cache

    def _radius2_shifted(self, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
        """Squared elliptical radius of every boundary offset for sources shifted by (fx, fy)
        from their anchor pixel, (n, n_boundary): the quadratic form expanded so that the
        per-source work is two products and three sums (q0 - gx fx - gy fy + c)."""
        nc = self._n_certain
        dx, dy = self._dx[nc:].astype(float), self._dy[nc:].astype(float)
        if getattr(self, "_quad", None) is None:
            t = np.deg2rad(self.theta)
            c, s = np.cos(t), np.sin(t)
            ib2 = 1.0 / self.ba**2
            A = c * c + s * s * ib2  # q = A ddx^2 + B ddx ddy + C ddy^2
            B = 2 * c * s * (1 - ib2)
            C = s * s + c * c * ib2
            q0 = A * dx * dx + B * dx * dy + C * dy * dy
            self._quad = (A, B, C, q0, 2 * A * dx + B * dy, B * dx + 2 * C * dy)
        A, B, C, q0, gx, gy = self._quad
        const = A * fx * fx + B * fx * fy + C * fy * fy
        q = q0[None] - gx[None] * fx[:, None]
        q -= gy[None] * fy[:, None]
        q += const[:, None]
        return q

    def _radius2(self, ddx: np.ndarray, ddy: np.ndarray) -> np.ndarray:
        """Squared elliptical radius (no square root on the hot path)."""
        if self.ba == 1.0:
            return ddx * ddx + ddy * ddy
        t = np.deg2rad(self.theta)  # public API in degrees; numpy wants radians
        c, s = np.cos(t), np.sin(t)
        u = ddx * c + ddy * s
        v = (-ddx * s + ddy * c) / self.ba
        return u * u + v * v

    def annulus_mask(self, shape: tuple[int, int], x: float, y: float) -> np.ndarray:
        """Boolean image, True on the pixels of the annulus around one source (for plots)."""
        yy, xx = np.indices(shape)
        r = self._elliptical_radius(xx - x, yy - y)
        return (r >= self.r_in) & (r < self.r_out)

    # -- estimation ---------------------------------------------------------------------------
    @image_method
    def estimate(self, image: Image | np.ndarray, x, y, *, mask: np.ndarray | None = None,
                 mag: np.ndarray | None = None,
                 neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> BackgroundResult:
        """Background under each source (see :class:`.base.BackgroundEstimator`)."""
        img = as_image(image, mask)
        x, y = check_positions(x, y)
        n = len(x)
        out = {k: np.full(n, np.nan) for k in ("bkg", "bkg_err", "pixel_std")}
        n_pix = np.zeros(n, np.int64)
        flags = F.zeros(n)
        ny, nx = img.shape
        # Sorting dominates: sort float32 when that is exact (integer or float32 data, as most
        # FITS images are), float64 otherwise -- the numbers are the same either way.
        flat = img.data.ravel()
        # one engine for the whole call (all chunks), chosen by its size: sources x pixels
        work = n * len(self._dx)
        kern = kernels.compiled(work) if n else None
        if n and kern is None:  # (the compiled gather sorts only the members: float64 is as fast)
            f32 = flat.astype(np.float32)
            if np.array_equal(f32, flat, equal_nan=True):
                flat = f32
        bad_flat = img.mask.ravel()
        any_bad = bool(bad_flat.any())
        for start in range(0, n, self.chunk_size):
            sl = slice(start, min(start + self.chunk_size, n))
            xs, ys = x[sl], y[sl]
            xi, yi = _round_half_up(xs), _round_half_up(ys)
            f = flags[sl]
            if kern is not None:
                s, n_valid = self._gather_compiled(kern, flat, bad_flat, any_bad, img.shape,
                                                   xs, ys, xi, yi, f)
            else:
                s, n_valid = self._gather_numpy(flat, bad_flat, any_bad, img.shape, xs, ys,
                                                xi, yi, f)
            cs, lo, hi = clipped_stats_sorted(s, n_valid, sigma=self.sigma,
                                              maxiters=self.maxiters, work=work)
            if self.statistic == "biweight":
                loc = biweight_of_run(s, lo, hi)
            else:
                loc = cs.location(self.statistic)
            fb = mode_fell_back(cs.mean, cs.median, cs.std) if self.statistic == "mode" else None
            err = estimate_error(cs.std, cs.n, self.statistic, fallback=fb)
            bad = cs.n < self.min_pixels
            f |= np.where(bad, F.NO_DATA, 0).astype(np.int32)
            f |= np.where(~bad & (cs.n < 0.5 * cs.n_valid), F.CLIPPED, 0).astype(np.int32)
            out["bkg"][sl] = np.where(bad, np.nan, loc)
            out["bkg_err"][sl] = np.where(bad, np.nan, err)
            out["pixel_std"][sl] = np.where(bad, np.nan, cs.std)
            n_pix[sl] = cs.n
            flags[sl] = f
        flags |= np.where(off_image(img.shape, x, y), F.OFF_IMAGE, 0).astype(np.int32)
        flags |= np.where(crowding(x, y, self.r_out, neighbours) > 0, F.CROWDED, 0
                          ).astype(np.int32)
        return BackgroundResult(out["bkg"], out["bkg_err"], out["pixel_std"], n_pix, flags)

    def _quad_coefficients(self):
        if getattr(self, "_quad", None) is None:
            self._radius2_shifted(np.zeros(1), np.zeros(1))  # builds self._quad
        return self._quad

    def _gather_compiled(self, kern, flat, bad_flat, any_bad, shape, xs, ys, xi, yi, f):
        """Sorted annulus values of each source (valid ones first, NaN after) and their count,
        gathered by the compiled kernel; EDGE / MASKED OR-ed into ``f``."""
        ny, nx = shape
        A, B, C, q0, gx, gy = self._quad_coefficients()
        m = len(xs)
        values = np.empty((m, len(self._dx)), flat.dtype)
        n_valid = np.empty(m, np.int64)
        fl = np.empty(m, np.int32)
        kern["gather_annulus"](flat, bad_flat, any_bad, ny, nx, xs, ys, xi.astype(np.int64),
                               yi.astype(np.int64), self._dx.astype(np.int64),
                               self._dy.astype(np.int64), self._n_certain, q0, gx, gy,
                               float(A), float(B), float(C), self.r_in**2, self.r_out**2,
                               *self._extent, F.EDGE, F.MASKED, values, n_valid, fl)
        f |= fl
        width = int(n_valid.max()) if m else 0
        return np.sort(values[:, :max(width, 1)], axis=1), n_valid

    def _gather_numpy(self, flat, bad_flat, any_bad, shape, xs, ys, xi, yi, f):
        """The numpy fallback of :meth:`_gather_compiled` (same values, counts and flags)."""
        ny, nx = shape
        r2_in, r2_out = self.r_in**2, self.r_out**2
        nc = self._n_certain
        ex, ey = self._extent
        idx = (yi * nx + xi)[:, None] + self._off(nx)[None]
        # rows whose offsets all fall on the image need no per-pixel bounds check
        partial = np.flatnonzero(~((xi - ex >= 0) & (xi + ex < nx) & (yi - ey >= 0)
                                   & (yi + ey < ny)))
        inside = None
        if len(partial):
            xx = xi[partial, None] + self._dx[None]
            yy = yi[partial, None] + self._dy[None]
            inside = (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
            idx[partial] = np.where(inside, yy * nx + xx, 0)
        values = flat[idx]
        badpix = bad_flat[idx] if any_bad else None
        with np.errstate(invalid="ignore"):
            q = self._radius2_shifted(xs - xi, ys - yi)
        member = np.ones(idx.shape, bool)
        member[:, nc:] = (q >= r2_in) & (q < r2_out)
        if inside is not None:
            mp = member[partial]
            f[partial] |= np.where((mp & ~inside).any(axis=1), F.EDGE, 0).astype(np.int32)
            member[partial] = mp & inside
        if badpix is not None:
            f |= np.where((member & badpix).any(axis=1), F.MASKED, 0).astype(np.int32)
            member &= ~badpix
        values[~member] = np.nan
        s = np.sort(values, axis=1)  # NaN sort to the end
        return s, np.isfinite(s).sum(axis=1)


class CallableBackground:
    """Adapter: an opticam-style function as a skysub background estimator.

    The function is called once per source as
    ``func(data, position, semimajor_axis, semiminor_axis, orientation)`` (plus ``error=`` when its
    signature names an ``error`` parameter), with masked pixels set to NaN in ``data``,
    ``position = (x, y)`` and ``orientation`` in DEGREES (as opticam documents it: if your function
    hands it to photutils, convert with ``np.deg2rad`` -- the published example does not).  It
    returns ``(background_per_pixel, background_error_per_pixel)``.

    Parameters
    ----------
    func : callable
    semimajor_axis, semiminor_axis : float
        PSF sigmas in pixels (passed through).
    orientation : float
        PSF orientation in degrees (passed through).
    error : 2-D array, optional
        Per-pixel error image passed as ``error=`` when the function accepts it.
    returns : {"pixel", "estimate"}
        Whether the function's second value is the per-pixel scatter (opticam's convention) or
        already the error of the background estimate.
    n_pixels : float, optional
        Pixels the function's annulus uses; with ``returns="pixel"`` it converts the pixel
        scatter into the estimate error ``scatter / sqrt(n_pixels)``.  Without it the estimate
        error is unknown and ``bkg_err`` is NaN (a warning says so) -- never a guess.
    """

    def __init__(self, func: Callable, semimajor_axis: float, semiminor_axis: float,
                 orientation: float = 0.0, *, error: np.ndarray | None = None,
                 returns: str = "pixel", n_pixels: float | None = None,
                 name: str | None = None) -> None:
        if not callable(func):
            raise InputError(f"background estimator must be callable, got {type(func).__name__}")
        if returns not in ("pixel", "estimate"):
            raise InputError(f"returns must be 'pixel' or 'estimate', got {returns!r}")
        self.func = func
        self.semimajor_axis = float(semimajor_axis)
        self.semiminor_axis = float(semiminor_axis)
        self.orientation = float(orientation)
        self.error = error
        self.returns = returns
        self.n_pixels = n_pixels
        self.name = name or getattr(func, "__name__", "callable")
        try:
            self._wants_error = "error" in inspect.signature(func).parameters
        except (TypeError, ValueError):
            self._wants_error = False

    @image_method
    def estimate(self, image: Image | np.ndarray, x, y, *, mask: np.ndarray | None = None,
                 mag: np.ndarray | None = None,
                 neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> BackgroundResult:
        img = as_image(image, mask)
        x, y = check_positions(x, y)
        data = np.where(img.mask, np.nan, img.data)
        n = len(x)
        bkg = np.full(n, np.nan)
        err = np.full(n, np.nan)
        flags = F.zeros(n)
        offi = off_image(img.shape, x, y)
        for i in range(n):  # user callables are per source by contract
            if offi[i]:
                continue
            kw = {"error": self.error} if self._wants_error else {}
            try:
                b, e = self.func(data, (x[i], y[i]), self.semimajor_axis, self.semiminor_axis,
                                 self.orientation, **kw)
            except Exception as exc:  # a user function failing on one source flags that row
                warnings.warn(f"background function {self.name} failed for source {i} at "
                              f"({x[i]:.1f}, {y[i]:.1f}): {exc}", stacklevel=2)
                continue
            bkg[i], err[i] = float(b), float(e)
        if self.returns == "estimate":
            bkg_err, pixel_std = err, np.full(n, np.nan)
        else:
            pixel_std = err
            if self.n_pixels:
                bkg_err = err / np.sqrt(self.n_pixels)
            else:
                warnings.warn(f"background function {self.name} returns a per-pixel scatter and "
                              "n_pixels was not given: bkg_err is NaN", stacklevel=2)
                bkg_err = np.full(n, np.nan)
        bad = ~np.isfinite(bkg)
        flags |= np.where(bad, F.NO_DATA, 0).astype(np.int32)
        flags |= np.where(offi, F.OFF_IMAGE, 0).astype(np.int32)
        return BackgroundResult(bkg, bkg_err, pixel_std, np.zeros(n, np.int64), flags)


def as_estimator(obj, **kwargs):
    """Return ``obj`` if it is an estimator (has ``estimate``); wrap a plain callable in
    :class:`CallableBackground` (``kwargs`` give the PSF axes and orientation)."""
    if hasattr(obj, "estimate"):
        return obj
    if callable(obj):
        return CallableBackground(obj, **kwargs)
    raise InputError(f"not a background estimator: {obj!r}; expected an object with an "
                     "estimate() method or an opticam-style callable")
