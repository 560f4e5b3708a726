"""Aperture photometry: fixed elliptical apertures with exact pixel overlaps (BKGnet eq. 8-10),
and Lumos' model-scaled aperture holding 62.5 % of the PSF-convolved model light (Lumos eq. 4).

Also home of :class:`PhotometryResult` (what every photometer returns).  The model rendering the
model-based photometers use (:func:`render_models`, :class:`SourceShapes`) lives in
:mod:`skysub.simulate.render`, below both simulators and photometers, and is importable from here.

Conventions: 0-based pixels, ``(x, y) = (column, row)``, pixel centres at integers; masks True =
bad; angles in DEGREES counter-clockwise from +x (converted to radians explicitly before they
reach photutils or numpy).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .. import flags as F
from ..background.annulus import crowding, off_image, queryable
from ..background.base import BackgroundResult
from ..errors import InputError
from ..image import Image, as_image, image_method
from ..simulate.render import SourceShapes, render_models, source_shapes
from ..simulate.render import shift_psf as shift_psf  # importable from here, as before
from ..stamps import _round_half_up, check_positions, cutouts, gather
from .emptyaper import OFF, NoiseCalibration, calibrate, check_calibration
from .errors import ERROR_MODES, pixel_variance, source_gain

APERTURE_METHODS = ("exact", "subpixel", "center")


@dataclass
class PhotometryResult:
    """Per-source photometry (all arrays of shape (n,), image units).

    Attributes
    ----------
    flux : total background-subtracted flux, ADU (NaN with :data:`skysub.flags.NO_DATA`).
    flux_err : 1-sigma error of ``flux``, ADU.
    bkg : background per pixel that was subtracted, ADU.
    bkg_err : 1-sigma error of ``bkg`` itself, ADU.
    n_aper : pixel area the background was multiplied by (``F = S - n_aper * bkg``); the
        exact (fractional) aperture area for aperture photometers, ``sum(w)`` for weighted sums.
    flags : int32 bit flags: OR of the background estimator's flags and the photometer's
        own (EDGE, MASKED, CROWDED, NO_DATA, OFF_IMAGE).
    extra : further per-source columns (e.g. ``bkg_flags``, aperture scale, enclosed fraction).
    meta : per-call information, e.g. ``error_calibration`` (the empty-aperture factors,
        :meth:`skysub.photometry.emptyaper.NoiseCalibration.as_dict`).
    """

    flux: np.ndarray
    flux_err: np.ndarray
    bkg: np.ndarray
    bkg_err: np.ndarray
    n_aper: np.ndarray
    flags: np.ndarray
    extra: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    #: Fields in image units: they become ``Quantity`` when the input image had a unit.
    UNIT_FIELDS: ClassVar[tuple[str, ...]] = ("flux", "flux_err", "bkg", "bkg_err")

    def __len__(self) -> int:
        return int(np.asarray(self.flux).shape[0])

    def as_table(self):
        """The result as an astropy Table (flux, flux_err, bkg, bkg_err, n_aper, flags, extras)."""
        from astropy.table import Table

        t = Table({"flux": self.flux, "flux_err": self.flux_err, "bkg": self.bkg,
                   "bkg_err": self.bkg_err, "n_aper": self.n_aper, "flags": self.flags})
        for k, v in self.extra.items():
            t[k] = v
        t.meta.update(self.meta)
        return t


# -- shared helpers ---------------------------------------------------------------------------

def run_background(background, img: Image, x: np.ndarray, y: np.ndarray, mag, neighbours
                   ) -> BackgroundResult:
    """Call ``background.estimate`` and check that it returned one row per source."""
    if background is None or not hasattr(background, "estimate"):
        raise InputError(f"background must be an estimator with an estimate() method "
                         f"(e.g. skysub.background.annulus.AnnulusBackground), got {background!r}")
    res = background.estimate(img, x, y, mag=mag, neighbours=neighbours)
    for name in ("bkg", "bkg_err", "pixel_std", "flags"):
        if np.shape(getattr(res, name)) != x.shape:
            raise InputError(f"background estimator {getattr(background, 'name', background)!r} "
                             f"returned {name} of shape {np.shape(getattr(res, name))}, "
                             f"expected {x.shape}")
    return res


def check_error_model(error_model: str) -> str:
    if error_model not in ERROR_MODES:
        raise InputError(f"unknown error_model={error_model!r}; expected one of {ERROR_MODES}")
    return error_model


def _flag(cond: np.ndarray, bit: int) -> np.ndarray:
    return np.where(cond, bit, 0).astype(np.int32)


def check_psf(psf) -> np.ndarray:
    """A PSF image as a float array normalised to unit sum (InputError if unusable)."""
    p = np.asarray(psf, float)
    if (p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] % 2 == 0
            or not np.isfinite(p).all() or p.sum() <= 0):
        raise InputError("psf must be a finite, square 2-D array of odd size with positive sum, "
                         f"centred at size // 2; got shape {p.shape}")
    return p / p.sum()


def psf_sigma(psf: np.ndarray) -> float:
    """Gaussian-equivalent sigma (px) of a PSF from its second moments (for stamp sizing)."""
    n = psf.shape[0]
    off = np.arange(n) - n // 2
    yy, xx = np.meshgrid(off, off, indexing="ij")
    w = np.clip(psf, 0, None)
    return float(np.sqrt((w * (xx**2 + yy**2)).sum() / w.sum() / 2.0))


def elliptical_radius(ddx: np.ndarray, ddy: np.ndarray, ba, theta_deg) -> np.ndarray:
    """Elliptical radius (semi-major-axis units) of offsets ``(ddx, ddy)`` for an ellipse of
    axis ratio ``ba`` whose major axis points ``theta_deg`` DEGREES CCW from +x."""
    t = np.deg2rad(theta_deg)  # public API in degrees; numpy wants radians
    c, s = np.cos(t), np.sin(t)
    u = ddx * c + ddy * s
    v = -ddx * s + ddy * c
    return np.sqrt(u * u + (v / ba) ** 2)


def overlap_weights(fx: np.ndarray, fy: np.ndarray, a: float, ba: float, theta_deg: float,
                    half: int, method: str = "exact", subpixels: int = 5) -> np.ndarray:
    """Pixel-overlap fractions of one elliptical aperture at many sub-pixel positions.

    Parameters
    ----------
    fx, fy : arrays (n,)
        Offsets of each source from its anchor pixel ``round(x), round(y)`` (in [-0.5, 0.5)).
    a, ba, theta_deg : float
        Semi-major axis (px), axis ratio, angle in DEGREES CCW from +x.
    half : int
        The grid covers anchor offsets ``-half .. half`` (a ``2 half + 1`` square).
    method : {"exact", "subpixel", "center"}
        As photutils: exact geometric overlap, ``subpixels``-sampled, or pixel centre inside.

    Returns
    -------
    ndarray (n, 2 half + 1, 2 half + 1): overlap fraction of each pixel (row = y, column = x).

    Notes
    -----
    The fractions come from photutils' own overlap routines (``photutils.geometry``, the
    machinery behind ``CircularAperture.to_mask``), called once per position on a fixed grid:
    photutils has no batched call, so this is a loop over sources in compiled code (~10-70 us
    per source); everything downstream is vectorised.
    """
    from photutils.geometry import circular_overlap_grid, elliptical_overlap_grid

    if method not in APERTURE_METHODS:
        raise InputError(f"unknown aperture method={method!r}; expected one of {APERTURE_METHODS}")
    use_exact = 1 if method == "exact" else 0
    sub = 1 if method == "center" else int(subpixels)
    k = 2 * half + 1
    out = np.zeros((len(fx), k, k))
    t_rad = float(np.deg2rad(theta_deg))  # photutils wants radians, CCW from +x
    circular = ba == 1.0
    b = a * ba
    ok = np.isfinite(fx) & np.isfinite(fy)
    for i in np.flatnonzero(ok):  # compiled photutils call per position (see Notes)
        xmin, xmax = -half - 0.5 - fx[i], half + 0.5 - fx[i]
        ymin, ymax = -half - 0.5 - fy[i], half + 0.5 - fy[i]
        if circular:
            out[i] = circular_overlap_grid(xmin, xmax, ymin, ymax, k, k, a, use_exact, sub)
        else:
            out[i] = elliptical_overlap_grid(xmin, xmax, ymin, ymax, k, k, a, b, t_rad,
                                             use_exact, sub)
    return out


def weighted_sums(values: np.ndarray, valid: np.ndarray, inside: np.ndarray, w: np.ndarray,
                  max_bad_fraction: float, variances: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
    """Sums of aperture weights ``w`` (n, ...) over stamps of ``values``.

    Returns the valid-area-scaled sum ``S``, the full area ``A = sum(w)``, the noise-equivalent
    pixel count of the scaled sum, EDGE / MASKED / NO_DATA conditions and, when per-pixel
    ``variances`` (stamps like ``values``) are given, the variance of ``S`` they imply
    (``noise_var``; NaN without them).
    """
    axes = tuple(range(1, w.ndim))
    wv = np.where(valid, w, 0.0)
    area = w.sum(axis=axes)
    area_valid = wv.sum(axis=axes)
    s_valid = (wv * np.where(valid, values, 0.0)).sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = area / area_valid
        bad_frac = 1.0 - area_valid / area
        nodata = ~(area_valid > 0) | (bad_frac > max_bad_fraction + 1e-12)
        s = np.where(nodata, np.nan, s_valid * scale)
        n_noise = np.where(nodata, np.nan, scale**2 * (wv**2).sum(axis=axes))
        if variances is None:
            noise_var = np.full(s.shape, np.nan)
        else:
            vv = np.where(valid, variances, 0.0)
            noise_var = np.where(nodata, np.nan, scale**2 * (wv**2 * vv).sum(axis=axes))
    touched = w > 0
    edge = (touched & ~inside).any(axis=axes)
    masked = (touched & inside & ~valid).any(axis=axes)
    return {"S": s, "area": area, "n_noise": n_noise, "edge": edge, "masked": masked,
            "nodata": nodata, "bad_frac": bad_frac, "noise_var": noise_var}


def _variance_image(img: Image) -> Image | None:
    """The image's per-pixel variance as an Image (same mask), or None without one."""
    if img.variance is None:
        return None
    return Image(img.variance, img.mask)


def _inside(shape: tuple[int, int], x0: np.ndarray, y0: np.ndarray, size: int) -> np.ndarray:
    ny, nx = shape
    off = np.arange(size)
    xx = x0[:, None, None] + off[None, None, :]
    yy = y0[:, None, None] + off[None, :, None]
    return (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)


# -- fixed aperture ---------------------------------------------------------------------------

class AperturePhotometer:
    """Fixed circular or elliptical aperture with exact pixel overlaps (BKGnet eq. 8).

    Parameters
    ----------
    radius : float
        Semi-major axis in pixels (the radius for a circle).
    background : background estimator
        Anything with ``estimate(image, x, y, *, mask, mag, neighbours) -> BackgroundResult``.
    ba : float
        Axis ratio b/a in (0, 1].
    theta : float
        Orientation of the semi-major axis, DEGREES counter-clockwise from +x.
    method : {"exact", "subpixel", "center"}
        Pixel-overlap weights, as photutils (``"exact"``: geometric overlap fraction).
    error_model : {"auto", "measured", "model"}
        Per-pixel noise for the flux error (:func:`skysub.photometry.errors.pixel_variance`):
        ``"measured"`` -- the estimator's pixel scatter (BKGnet eq. 9); ``"model"`` -- Poisson
        background + read noise (BKGnet eq. 10); ``"auto"`` -- measured where available.
    max_bad_fraction : float
        Largest fraction of the aperture area that may be masked or off the image.
    crowd_margin : float
        A catalogued neighbour within ``radius + crowd_margin`` px flags CROWDED.
    error_calibration : {"auto", "empty", "neighbours", "matched", "global", "level", "none"}
        ``"auto"`` (default) and ``"empty"``: calibrate the flux errors on the frame's empty
        positions, measured with apertures of 0.5, 1 and 1.5 x ``radius``, with a local
        factor that follows the noise over the frame (:mod:`skysub.photometry.emptyaper`);
        ``"neighbours"``: as ``"auto"`` with a factor for the distance to the nearest
        catalogued source too (opt-in); ``"matched"``: as ``"auto"`` with the empty
        positions weighted to the measured sources' distances to their nearest catalogued
        neighbour (opt-in); ``"global"``: the same without the local factor;
        ``"level"``: as ``"auto"`` with the local factor a function of the local
        pixel-noise level (each background estimate's ``pixel_std``) first, of the position
        second (opt-in); ``"none"``: the white-noise error model only.
        A frame without room for 50 empty positions is left uncalibrated: quietly with
        ``"auto"``, with a warning and the UNCALIBRATED flag with ``"empty"``.
    chunk_size : int
        Sources processed together (bounds memory).
    name : str

    Notes
    -----
    ``F = S - N_a b`` with ``S = sum_pix w_pix d_pix`` over the exact overlap fractions ``w``
    and ``N_a = sum w`` (= pi a^2 ba).  Masked pixels (mask, NaN) and pixels off the image are
    never silently replaced: the source is flagged MASKED and/or EDGE; if they cover more than
    ``max_bad_fraction`` of the aperture area the flux is NaN (NO_DATA); otherwise the sum over
    the valid area is scaled by ``N_a / N_valid`` -- which assumes the missing pixels hold the
    aperture's mean surface brightness, unbiased on flat sky but not for a concentrated source
    with its core masked, hence the flag and the limit.  The error is
    :func:`~skysub.photometry.errors.flux_variance` with the noise pixel count
    ``(N_a / N_valid)^2 sum_valid w^2``.
    """

    def __init__(self, radius: float = 8.0, *, background, ba: float = 1.0, theta: float = 0.0,
                 method: str = "exact", error_model: str = "auto",
                 max_bad_fraction: float = 0.1, crowd_margin: float = 2.0,
                 error_calibration: str = "auto", chunk_size: int = 2000,
                 name: str = "aperture") -> None:
        if not (np.isfinite(radius) and radius > 0):
            raise InputError(f"aperture radius must be positive, got radius={radius!r}")
        if not (np.isfinite(ba) and 0 < ba <= 1):
            raise InputError(f"aperture axis ratio ba must be in (0, 1], got ba={ba!r}")
        if not np.isfinite(theta):
            raise InputError(f"aperture angle theta (degrees) must be finite, got {theta!r}")
        if method not in APERTURE_METHODS:
            raise InputError(f"unknown aperture method={method!r}; expected one of "
                             f"{APERTURE_METHODS}")
        if not 0 <= max_bad_fraction < 1:
            raise InputError(f"max_bad_fraction must be in [0, 1), got {max_bad_fraction!r}")
        self.radius = float(radius)
        self.background = background
        self.ba = float(ba)
        self.theta = float(theta)
        self.method = method
        self.error_model = check_error_model(error_model)
        self.max_bad_fraction = float(max_bad_fraction)
        self.crowd_margin = float(crowd_margin)
        self.error_calibration = check_calibration(error_calibration)
        self.chunk_size = int(chunk_size)
        self.name = name
        self._half = int(np.ceil(self.radius + 1.0))

    def __repr__(self) -> str:
        return (f"AperturePhotometer(radius={self.radius}, background={self.background!r}, "
                f"ba={self.ba}, theta={self.theta}, method={self.method!r})")

    @property
    def area(self) -> float:
        """Analytic aperture area ``pi a^2 ba`` in pixels."""
        return float(np.pi * self.radius**2 * self.ba)

    def weights(self, x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Overlap weights of the aperture around each position.

        Returns
        -------
        w : (n, K, K) overlap fractions; x0, y0 : (n,) image pixel of weight pixel [0, 0].
        """
        x, y = check_positions(x, y)
        xi, yi = _round_half_up(x), _round_half_up(y)
        with np.errstate(invalid="ignore"):
            w = overlap_weights(x - xi, y - yi, self.radius, self.ba, self.theta, self._half,
                                self.method)
        return w, xi - self._half, yi - self._half

    @image_method
    def measure(self, image: Image | np.ndarray, x, y, *, mask: np.ndarray | None = None,
                mag: np.ndarray | None = None,
                neighbours: tuple[np.ndarray, np.ndarray] | None = None,
                catalog=None) -> PhotometryResult:
        """Aperture fluxes of the sources at ``(x, y)``.

        Parameters
        ----------
        image : Image or 2-D array (ADU); gain and read noise from ``image.meta``.
        x, y : arrays (n,), 0-based pixel positions.
        mask : optional extra bad-pixel mask (True = bad).
        mag : optional magnitudes, passed to the background estimator.
        neighbours : optional ``(x_all, y_all)`` of every catalogued source (crowding flag);
            defaults to the sources themselves.
        catalog : ignored (accepted for a uniform photometer signature).

        Returns
        -------
        PhotometryResult
        """
        img = as_image(image, mask)
        x, y = check_positions(x, y)
        cal = OFF  # calibrated first: the estimator's last call is then the sources'
        if self.error_calibration != "none":
            cal = calibrate_aperture(self, img, (x, y) if neighbours is None else neighbours,
                                     target_xy=(x, y) if self.error_calibration == "matched"
                                     else None)
        bres = run_background(self.background, img, x, y, mag, neighbours)
        S, area, n_noise, flags, noise_var = self._sums(img, x, y)
        return finish(img, x, y, S, area, n_noise, bres, flags, self.error_model,
                      crowd_radius=self.radius + self.crowd_margin, neighbours=neighbours,
                      noise_var=noise_var, calibration=cal)

    def _sums(self, img: Image, x: np.ndarray, y: np.ndarray):
        """Aperture sums ``S``, areas, noise pixel counts, flags and (with a variance map)
        the variance of ``S`` at ``x, y``."""
        n = len(x)
        half = self._half
        off = np.arange(-half, half + 1)
        ody, odx = np.meshgrid(off, off, indexing="ij")
        S = np.full(n, np.nan)
        area = np.full(n, self.area)
        n_noise = np.full(n, np.nan)
        noise_var = np.full(n, np.nan)
        vimg = _variance_image(img)
        flags = F.zeros(n)
        for start in range(0, n, self.chunk_size):
            sl = slice(start, min(start + self.chunk_size, n))
            w, x0, y0 = self.weights(x[sl], y[sl])
            values, valid = gather(img, x0 + half, y0 + half, odx, ody)
            variances = None if vimg is None else gather(vimg, x0 + half, y0 + half, odx,
                                                         ody)[0]
            inside = _inside(img.shape, x0, y0, 2 * half + 1)
            r = weighted_sums(values, valid, inside, w, self.max_bad_fraction, variances)
            noise_var[sl] = r["noise_var"]
            S[sl] = r["S"]
            # sum of the weights actually applied (= pi a^2 ba for "exact"; the sampled
            # methods differ by up to ~1 %, and the background must match what was summed)
            area[sl] = np.where(r["area"] > 0, r["area"], self.area)
            n_noise[sl] = r["n_noise"]
            flags[sl] |= (_flag(r["edge"], F.EDGE) | _flag(r["masked"], F.MASKED)
                          | _flag(r["nodata"], F.NO_DATA))
        return S, area, n_noise, flags, None if vimg is None else noise_var

    def with_radius(self, radius: float) -> AperturePhotometer:
        """The same photometer with another aperture radius (no error calibration)."""
        out = copy.copy(self)
        out.radius = float(radius)
        out._half = int(np.ceil(out.radius + 1.0))
        out.error_calibration = "none"
        return out


#: aperture radii, in units of the photometer's, of the empty-aperture probes
PROBE_RADII = (0.5, 1.0, 1.5)


def calibrate_aperture(phot: AperturePhotometer, img: Image, avoid_xy,
                       target_xy=None) -> NoiseCalibration:
    """Empty-aperture calibration of an aperture photometer on ``img`` (apertures of
    :data:`PROBE_RADII` x its radius, its own background estimator); ``target_xy``: the
    sources it is applied to (the empty positions are weighted to their clearance,
    :func:`~skysub.photometry.emptyaper.clearance_weights`)."""
    variants = [phot.with_radius(f * phot.radius) for f in PROBE_RADII]
    clear = max(v.radius for v in variants) + phot.crowd_margin
    cache: dict = {}

    def probe(k: int, xp: np.ndarray, yp: np.ndarray) -> dict:
        if "bres" not in cache:
            cache["bres"] = run_background(phot.background, img, xp, yp, None, avoid_xy)
        bres = cache["bres"]
        S, area, n_noise, flags, noise_var = variants[k]._sums(img, xp, yp)
        return {**white_parts(img, S, area, n_noise, bres, flags, phot.error_model, noise_var),
                "pixel_std": np.asarray(bres.pixel_std, float)}

    return calibrate(probe, len(variants), img.shape, img.mask, avoid_xy, clear,
                     name=f"{img.name}: {phot.name}",
                     required=phot.error_calibration == "empty", anchor=PROBE_RADII.index(1.0),
                     local=phot.error_calibration != "global",
                     neighbours=phot.error_calibration == "neighbours",
                     image=img.data,
                     min_clear=phot.radius + phot.crowd_margin, target_xy=target_xy,
                     level=phot.error_calibration == "level")


def white_parts(img: Image, S, area, n_noise, bres: BackgroundResult, flags, error_model: str,
                noise_var=None) -> dict:
    """Net flux and the parts of its variance: source Poisson ``var_src``, white pixel noise
    ``var_pix``, background ``n_aper^2 bkg_err^2`` and their non-source sum ``var_white``."""
    bkg = np.asarray(bres.bkg, float)
    bkg_err = np.asarray(bres.bkg_err, float)
    flux = S - area * bkg  # BKGnet eq. 8
    with np.errstate(invalid="ignore"):
        if noise_var is not None:  # the map holds source and pixel noise (see finish)
            var_src, var_pix = np.zeros_like(flux), np.asarray(noise_var, float)
        else:
            pvar = pixel_variance(bkg, bres.pixel_std, img.meta.gain, img.meta.rdnoise,
                                  error_model)
            var_src = np.maximum(flux, 0.0) / source_gain(img)
            var_pix = np.asarray(n_noise, float) * pvar
        var_white = var_pix + area**2 * bkg_err**2
    return {"flux": flux, "var_src": var_src, "var_pix": var_pix, "var_white": var_white,
            "n_aper": area, "bkg_err": bkg_err, "flags": flags}


def finish(img: Image, x: np.ndarray, y: np.ndarray, S: np.ndarray, area: np.ndarray,
           n_noise: np.ndarray, bres: BackgroundResult, flags: np.ndarray, error_model: str, *,
           crowd_radius: float | np.ndarray, neighbours, scale: np.ndarray | None = None,
           extra: dict | None = None, noise_var: np.ndarray | None = None,
           calibration: NoiseCalibration = OFF) -> PhotometryResult:
    """Subtract the background (BKGnet eq. 8), attach errors and flags.

    ``scale`` (e.g. 1 / enclosed fraction) multiplies the net aperture flux and its error.
    ``noise_var``: the variance of the aperture sum from the image's own per-pixel variance
    (an NDData uncertainty, :attr:`Image.variance`); it then replaces the source Poisson and
    pixel-noise terms of the error model (an uncertainty map holds both), as photutils'
    ``aperture_photometry(error=...)`` does; the background-error term stays.
    ``calibration``: empty-aperture factors (:mod:`skysub.photometry.emptyaper`); the reported
    ``bkg_err`` is then the calibrated one.
    """
    parts = white_parts(img, S, area, n_noise, bres, flags, error_model, noise_var)
    flux_ap = parts["flux"]
    q = calibration.factor(x, y, np.asarray(bres.pixel_std, float))  # 1 without one
    var = calibration.variance(parts["var_src"], parts["var_pix"], area, parts["bkg_err"], q)
    bkg_err = parts["bkg_err"]
    if calibration.calibrated:
        bkg_err = calibration.bkg_err(bkg_err, area, q)
    sc = np.ones_like(flux_ap) if scale is None else np.asarray(scale, float)
    flux = flux_ap * sc
    with np.errstate(invalid="ignore"):
        flux_err = np.sqrt(var) * sc
    res = assemble(img, x, y, flux, flux_err, np.asarray(bres.bkg, float), bkg_err, area, bres,
                   flags, crowd_radius=crowd_radius, neighbours=neighbours, extra=extra)
    return with_calibration(res, calibration, q)


def with_calibration(res: PhotometryResult, cal: NoiseCalibration,
                     q: np.ndarray | None = None) -> PhotometryResult:
    """Record the calibration in ``res`` (columns, ``meta``, UNCALIBRATED flag); ``q``: the
    local factor of each source."""
    if cal.status in ("off", "skipped"):
        if cal.status == "skipped":
            res.meta["error_calibration"] = cal.as_dict()
        return res
    res.extra.update(cal.columns(len(res), q))
    res.meta["error_calibration"] = cal.as_dict()
    if cal.status == "uncalibrated":
        res.flags = np.asarray(res.flags, np.int32) | np.int32(F.UNCALIBRATED)
    return res


def assemble(img: Image, x, y, flux, flux_err, bkg, bkg_err, n_aper, bres: BackgroundResult,
             flags, *, crowd_radius, neighbours, extra=None) -> PhotometryResult:
    """Combine the photometer's flags with the estimator's; NaN flux where NO_DATA."""
    bflags = np.asarray(bres.flags, np.int32)
    flags = np.asarray(flags, np.int32) | bflags
    offi = off_image(img.shape, x, y)
    flags |= _flag(offi, F.OFF_IMAGE | F.EDGE)
    r_crowd = float(np.max(crowd_radius)) if np.size(crowd_radius) else 0.0
    if np.ndim(crowd_radius) == 0:
        flags |= _flag(crowding(x, y, r_crowd, neighbours) > 0, F.CROWDED)
    else:
        flags |= _flag(_crowded_varying(x, y, np.asarray(crowd_radius, float), neighbours),
                       F.CROWDED)
    bad = ~np.isfinite(flux) | ~np.isfinite(flux_err) | offi | ((flags & F.NO_DATA) > 0)
    flags |= _flag(bad, F.NO_DATA)
    flux = np.where(bad, np.nan, flux)
    flux_err = np.where(bad, np.nan, flux_err)
    ex = {"bkg_flags": bflags}
    ex.update(extra or {})
    return PhotometryResult(flux, flux_err, bkg, bkg_err, np.asarray(n_aper, float), flags, ex)


def _crowded_varying(x, y, radius: np.ndarray, neighbours) -> np.ndarray:
    """CROWDED with a per-source radius: any other catalogued source within ``radius[i]``."""
    from scipy.spatial import cKDTree

    nx_, ny_ = (x, y) if neighbours is None else (np.asarray(neighbours[0], float),
                                                   np.asarray(neighbours[1], float))
    ok = queryable(nx_, ny_)
    if ok.sum() == 0 or len(x) == 0:
        return np.zeros(len(x), bool)
    tree = cKDTree(np.c_[nx_[ok], ny_[ok]])
    out = np.zeros(len(x), bool)
    q = queryable(x, y)  # non-finite or absurd positions have no neighbours
    if q.any():
        pts = np.c_[x[q], y[q]]
        rad = np.nan_to_num(radius[q], nan=0.0, posinf=0.0, neginf=0.0)
        within = np.asarray(tree.query_ball_point(pts, r=rad, return_length=True))
        itself = np.asarray(tree.query_ball_point(pts, r=0.5, return_length=True))
        out[q] = (within - itself) > 0
    return out


# -- Lumos model-scaled aperture --------------------------------------------------------------

def _stamp_half(shapes: SourceShapes, sig_psf: float) -> np.ndarray:
    """Stamp half-size per source: 4 x the (Gaussian-equivalent) convolved half-light radius,
    plus slack; the 62.5 % aperture lies well inside it."""
    r_conv = np.sqrt(shapes.r50**2 + (1.1774 * sig_psf) ** 2)  # PSF HWHM ~ its r50
    return np.ceil(4.0 * r_conv / np.sqrt(shapes.ba) + 2.0).astype(int)


def size_buckets(halves: np.ndarray) -> np.ndarray:
    """Round stamp half-sizes up to a few values (8, 12, 16, 24, 32, 48, ...) so that sources
    are processed in a handful of same-size batches, never one by one."""
    halves = np.asarray(halves, int)
    top = max(int(halves.max(initial=8)), 8)
    cands = [8]
    while cands[-1] < top:
        c = cands[-1]
        cands.append(c * 3 // 2 if (c & (c - 1)) == 0 else c * 4 // 3)
    cands = np.asarray(cands)
    return cands[np.searchsorted(cands, halves)]


class ModelAperturePhotometer:
    """Lumos §3.2 / eq. 4: elliptical aperture holding ``fraction`` of the model light.

    Per source the PSF-convolved model is drawn from the catalogue (``r50`` semi-major
    half-light radius in px, ``sersic_n``, ``ba``, ``theta`` in degrees; rows with missing or
    non-positive ``r50`` are point sources: the PSF), the scale of the elliptical aperture with
    the model's axis ratio and angle is found at which it holds ``fraction`` of the model's
    total light, the data are summed in it, the background (``N_a b``) subtracted, and the
    result divided by the enclosed fraction.

    Parameters
    ----------
    psf : 2-D array
        PSF image (normalised to unit sum here), centred at ``size // 2``.
    background : background estimator
        PAUS: ``AnnulusBackground(30, 45)``.
    fraction : float
        Model light the aperture holds (Lumos: 0.625).
    oversample : int
        Oversampling used to render the Sérsic models.
    subpixels : int
        Each pixel is split into ``subpixels``^2 sub-pixels for the aperture weights.
    error_model, max_bad_fraction, crowd_margin : as :class:`AperturePhotometer`.
    chunk_size : int
        Sources per batch (memory ~ chunk_size x stamp area x subpixels^2 x 8 bytes x ~4).
    name : str

    Notes
    -----
    Vectorised: models are rendered in batches (sources grouped by stamp size), the enclosed
    light as a function of elliptical radius comes from histogramming sub-pixel radii weighted by
    the model light on a fine radius grid (step 1/(4 subpixels) px), the aperture scale is
    interpolated where it crosses ``fraction``, and the pixel weights are the fraction of each
    pixel's sub-pixels inside the ellipse (sub-pixel sampled, not exact: the same weights are
    applied to the model and to the data, so the enclosed fraction they report is self-
    consistent).  The flux is divided by the enclosed fraction actually reached by those
    weights (``extra["enclosed_fraction"]``, equal to ``fraction`` to within ~1e-3) rather than
    by the nominal ``fraction``.  ``extra["aper_a"]`` is the semi-major axis of the aperture.
    """

    def __init__(self, psf, *, background, fraction: float = 0.625, oversample: int = 5,
                 subpixels: int = 5, error_model: str = "auto", max_bad_fraction: float = 0.1,
                 crowd_margin: float = 2.0, chunk_size: int = 64,
                 name: str = "model_aperture") -> None:
        if not 0 < fraction < 1:
            raise InputError(f"enclosed light fraction must be in (0, 1), got fraction={fraction}")
        if int(oversample) != oversample or oversample < 1:
            raise InputError(f"oversample must be a positive integer, got {oversample!r}")
        if int(subpixels) != subpixels or subpixels < 1:
            raise InputError(f"subpixels must be a positive integer, got {subpixels!r}")
        if not 0 <= max_bad_fraction < 1:
            raise InputError(f"max_bad_fraction must be in [0, 1), got {max_bad_fraction!r}")
        self.psf = check_psf(psf)
        self.background = background
        self.fraction = float(fraction)
        self.oversample = int(oversample)
        self.subpixels = int(subpixels)
        self.error_model = check_error_model(error_model)
        self.max_bad_fraction = float(max_bad_fraction)
        self.crowd_margin = float(crowd_margin)
        self.chunk_size = int(chunk_size)
        self.name = name
        self._sig_psf = psf_sigma(self.psf)

    def __repr__(self) -> str:
        return (f"ModelAperturePhotometer(psf=<{self.psf.shape[0]}x{self.psf.shape[1]}>, "
                f"background={self.background!r}, fraction={self.fraction})")

    def aperture_weights(self, models: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                         ba: np.ndarray, theta: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weights of the ``fraction`` aperture for unit-total models (m, K, K).

        Returns
        -------
        w : (m, K, K) sub-pixel-sampled overlap of each pixel with the aperture
        a : (m,) semi-major axis of the aperture, px
        enclosed : (m,) model light inside, ``sum(w * model)``
        """
        m, k, _ = models.shape
        s = self.subpixels
        half = k // 2
        sub = (np.arange(s) + 0.5) / s - 0.5
        # sub-pixel coordinates relative to the anchor pixel, shape (K*s,)
        coord = (np.arange(k)[:, None] - half + sub[None, :]).ravel()
        ddx = coord[None, None, :] - dx[:, None, None]  # (m, 1, K*s)
        ddy = coord[None, :, None] - dy[:, None, None]  # (m, K*s, 1)
        r = elliptical_radius(ddx, ddy, ba[:, None, None], theta[:, None, None])  # (m,Ks,Ks)
        # light of each sub-pixel: its pixel's model value / s^2
        mass = np.repeat(np.repeat(models, s, axis=1), s, axis=2) / s**2
        step = 1.0 / (4 * s)
        nbin = int(np.ceil(r.max(initial=0.0) / step)) + 2 if m else 2
        idx = np.minimum((r / step).astype(np.int64), nbin - 1)
        rows = np.arange(m)[:, None, None]
        hist = np.bincount((rows * nbin + idx).ravel(), weights=mass.ravel(),
                           minlength=m * nbin).reshape(m, nbin)
        cum = np.cumsum(hist, axis=1)  # light within radius (j + 1) * step
        j = np.argmax(cum >= self.fraction, axis=1)
        reached = cum[np.arange(m), -1] >= self.fraction
        prev = np.where(j > 0, cum[np.arange(m), np.maximum(j - 1, 0)], 0.0)
        here = cum[np.arange(m), j]
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.clip((self.fraction - prev) / (here - prev), 0.0, 1.0)
        a = np.where(reached, (j + t) * step, np.nan)
        inside = r <= a[:, None, None]
        w = inside.reshape(m, k, s, k, s).mean(axis=(2, 4))
        enclosed = np.where(reached, (w * models).sum(axis=(1, 2)), np.nan)
        return w, a, enclosed

    @image_method
    def measure(self, image: Image | np.ndarray, x, y, *, mask: np.ndarray | None = None,
                mag: np.ndarray | None = None,
                neighbours: tuple[np.ndarray, np.ndarray] | None = None,
                catalog=None) -> PhotometryResult:
        """Total fluxes from the model-scaled aperture (see the class docstring).

        ``catalog``: table or dict with columns ``r50``, ``sersic_n``, optional ``ba``,
        ``theta`` (one row per source; None = all point sources).  Other parameters as
        :meth:`AperturePhotometer.measure`.
        """
        img = as_image(image, mask)
        x, y = check_positions(x, y)
        n = len(x)
        shapes = source_shapes(catalog, n)
        bres = run_background(self.background, img, x, y, mag, neighbours)
        xi, yi = _round_half_up(x), _round_half_up(y)
        with np.errstate(invalid="ignore"):
            dx, dy = x - xi, y - yi
        S = np.full(n, np.nan)
        area = np.full(n, np.nan)
        n_noise = np.full(n, np.nan)
        noise_var = np.full(n, np.nan)
        vimg = _variance_image(img)
        a_ap = np.full(n, np.nan)
        enclosed = np.full(n, np.nan)
        flags = F.zeros(n)
        halves = _stamp_half(shapes, self._sig_psf)
        bucket = size_buckets(halves)
        ok = np.isfinite(dx) & np.isfinite(dy) & ~off_image(img.shape, x, y)
        for half in np.unique(bucket[ok]):
            sel = np.flatnonzero(ok & (bucket == half))
            size = 2 * int(half) + 1
            step = max(1, int(self.chunk_size * (33 / size) ** 2))
            for start in range(0, len(sel), step):
                ii = sel[start:start + step]
                sh = shapes.take(ii)
                models = render_models(sh, self.psf, size, dx[ii], dy[ii],
                                       oversample=self.oversample)
                w, a, enc = self.aperture_weights(models, dx[ii], dy[ii], sh.ba, sh.theta)
                st = cutouts(img, x[ii], y[ii], size)
                variances = None if vimg is None else cutouts(vimg, x[ii], y[ii], size).data
                inside = _inside(img.shape, st.x0, st.y0, size)
                r = weighted_sums(st.data, st.valid, inside, w, self.max_bad_fraction,
                                  variances)
                noise_var[ii] = r["noise_var"]
                S[ii] = r["S"]
                area[ii] = r["area"]
                n_noise[ii] = r["n_noise"]
                a_ap[ii] = a
                enclosed[ii] = enc
                flags[ii] |= (_flag(r["edge"], F.EDGE) | _flag(r["masked"], F.MASKED)
                              | _flag(r["nodata"] | ~np.isfinite(enc), F.NO_DATA))
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = 1.0 / enclosed  # Lumos: total flux = aperture flux / 0.625
        return finish(img, x, y, S, area, n_noise, bres, flags, self.error_model,
                      crowd_radius=np.nan_to_num(a_ap, nan=0.0) + self.crowd_margin,
                      neighbours=neighbours, scale=scale,
                      extra={"aper_a": a_ap, "enclosed_fraction": enclosed},
                      noise_var=None if vimg is None else noise_var)
