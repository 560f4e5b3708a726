"""Time-series photometers with a pluggable local background (opticam's ``local_background_
estimator``), built per camera from that camera's PSF parameters.

A pipeline photometer is a recipe: :meth:`build` turns a camera's PSF dictionary
(``semimajor_sigma``, ``semiminor_sigma`` [px], ``orientation`` [DEGREES CCW from +x]) into a
ready skysub photometer (:class:`skysub.photometry.AperturePhotometer` or
:class:`skysub.photometry.OptimalPhotometer`) with its background estimator:

- ``None`` -> :class:`PSFAnnulus` (opticam's default: sigma-clipped mean in an elliptical annulus
  of 5 and 7.5 PSF sigmas, rotated by the PSF orientation);
- an object with ``for_psf(psf)`` (like :class:`PSFAnnulus`) -> its estimator for this camera;
- any skysub estimator (has ``estimate``: :class:`~skysub.background.annulus.AnnulusBackground`,
  :class:`~skysub.background.mesh.MeshBackground`, BKGnet...) -> used as it is;
- an opticam-style callable ``f(data, position, semimajor_axis, semiminor_axis, orientation)``
  -> :class:`~skysub.background.annulus.CallableBackground` (orientation handed over in DEGREES,
  as opticam documents; convert with ``np.deg2rad`` before photutils).

Everything here pickles (the recipes are sent to worker processes), so a callable must be
importable: defined in a module, not in a notebook cell or ``__main__`` of an interactive session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..background.annulus import AnnulusBackground, CallableBackground
from ..background.base import BackgroundResult
from ..errors import InputError
from ..photometry import AperturePhotometer, OptimalPhotometer, PhotometryResult
from ..photometry.aperture import shift_psf
from ..simulate.psf import elliptical_gaussian_psf
from .catalog import check_psf_params

#: opticam's default annulus scales (in PSF sigmas)
R_IN_SCALE, R_OUT_SCALE = 5.0, 7.5


class PSFAnnulus:
    """opticam's ``DefaultLocalBackground``: an annulus scaled by each camera's PSF.

    Parameters
    ----------
    r_in_scale, r_out_scale : float
        Inner / outer semi-major axes in units of the PSF semimajor sigma (the semi-minor axes
        follow the PSF axis ratio); opticam: 5 and 7.5.
    statistic : {"mean", "median", "mode", "biweight"}
        opticam: the sigma-clipped mean.
    sigma, maxiters : clipping (opticam: astropy's default 3 sigma).
    """

    def __init__(self, r_in_scale: float = R_IN_SCALE, r_out_scale: float = R_OUT_SCALE, *,
                 statistic: str = "mean", sigma: float | None = 3.0,
                 maxiters: int | None = 10) -> None:
        if not 0 <= r_in_scale < r_out_scale:
            raise InputError(f"need 0 <= r_in_scale < r_out_scale, got {r_in_scale}, "
                             f"{r_out_scale}")
        self.r_in_scale = float(r_in_scale)
        self.r_out_scale = float(r_out_scale)
        self.statistic = statistic
        self.sigma = sigma
        self.maxiters = maxiters
        self.name = "annulus"

    def __repr__(self) -> str:
        return (f"PSFAnnulus(r_in_scale={self.r_in_scale}, r_out_scale={self.r_out_scale}, "
                f"statistic={self.statistic!r}, sigma={self.sigma})")

    def for_psf(self, psf: dict) -> AnnulusBackground:
        psf = check_psf_params(psf)
        return AnnulusBackground.from_psf(
            psf["semimajor_sigma"], psf["semiminor_sigma"], psf["orientation"],
            r_in_scale=self.r_in_scale, r_out_scale=self.r_out_scale, statistic=self.statistic,
            sigma=self.sigma, maxiters=self.maxiters, name="annulus")


def annulus_pixels(psf: dict, r_in_scale: float = R_IN_SCALE,
                   r_out_scale: float = R_OUT_SCALE) -> float:
    """Area [px] of the PSF-scaled elliptical annulus: ``pi (r_out^2 - r_in^2) a b``."""
    return float(np.pi * (r_out_scale**2 - r_in_scale**2) * psf["semimajor_sigma"]
                 * psf["semiminor_sigma"])


def local_background(estimator: Any, psf: dict, *, callable_pixels: float | str | None
                     = "opticam") -> Any:
    """The background estimator of one camera (see the module docstring).

    ``callable_pixels`` (callables only): pixels the callable's annulus holds, used to turn the
    per-pixel scatter it returns into the error of the background level
    (``scatter / sqrt(n)``).  ``"opticam"``: the area of opticam's default 5-7.5 sigma annulus
    (:func:`annulus_pixels`) -- an ASSUMPTION about the user's function, stated in the light
    curves' ``columns.json``; a number; or None (error of the level unknown: NaN).
    """
    psf = check_psf_params(psf)
    if estimator is None:
        return PSFAnnulus().for_psf(psf)
    if hasattr(estimator, "for_psf"):
        return estimator.for_psf(psf)
    if hasattr(estimator, "estimate"):
        return estimator
    if callable(estimator):
        n = annulus_pixels(psf) if callable_pixels == "opticam" else callable_pixels
        return CallableBackground(estimator, psf["semimajor_sigma"], psf["semiminor_sigma"],
                                  psf["orientation"], returns="pixel", n_pixels=n)
    raise InputError(f"local_background_estimator must be None, an estimator (with estimate() "
                     f"or for_psf()) or an opticam-style callable; got {estimator!r}")


def estimator_name(estimator: Any) -> str:
    if estimator is None:
        return "annulus"
    name = getattr(estimator, "name", None) or getattr(estimator, "__name__", None)
    return str(name or type(estimator).__name__).replace("/", "_").replace(" ", "_")


class RecordingBackground:
    """Wraps an estimator and keeps its last :class:`BackgroundResult` (for the pixel scatter
    column of the light curves, which :class:`PhotometryResult` does not carry)."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        self.name = getattr(estimator, "name", "background")
        self.last: BackgroundResult | None = None

    def estimate(self, image, x, y, **kwargs) -> BackgroundResult:
        self.last = self.estimator.estimate(image, x, y, **kwargs)
        return self.last


class _Recipe:
    kind = "photometer"

    def __init__(self, local_background_estimator: Any = None, *, forced: bool = True,
                 error_model: str = "auto", callable_pixels: float | str | None = "opticam",
                 name: str | None = None) -> None:
        if not (local_background_estimator is None or callable(local_background_estimator)
                or hasattr(local_background_estimator, "estimate")
                or hasattr(local_background_estimator, "for_psf")):
            raise InputError("local_background_estimator must be None, an estimator or an "
                             f"opticam-style callable; got {local_background_estimator!r}")
        self.local_background_estimator = local_background_estimator
        self.forced = bool(forced)
        self.error_model = error_model
        self.callable_pixels = callable_pixels
        self.name = name or f"{self.kind}_{estimator_name(local_background_estimator)}"
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise InputError(f"photometer name {self.name!r} cannot be a folder name")

    def background(self, psf: dict) -> RecordingBackground:
        return RecordingBackground(local_background(self.local_background_estimator, psf,
                                                    callable_pixels=self.callable_pixels))

    def describe(self) -> dict:
        est = self.local_background_estimator
        out = {"photometer": type(self).__name__, "name": self.name, "forced": self.forced,
               "local_background_estimator": repr(est) if est is not None else repr(PSFAnnulus())}
        if callable(est) and not hasattr(est, "estimate") and not hasattr(est, "for_psf"):
            out["callable_pixels"] = (
                "area of opticam's default 5-7.5 sigma PSF annulus (assumed)"
                if self.callable_pixels == "opticam" else self.callable_pixels)
        return out


class ApertureExtraction(_Recipe):
    """Elliptical aperture following the PSF (axes ``aperture_scale`` x the PSF sigmas, rotated
    by its orientation), with a local background and an optional aperture correction.

    Parameters
    ----------
    local_background_estimator : see the module docstring (None = :class:`PSFAnnulus`).
    aperture_scale : float
        Semi-major axis of the aperture in PSF semimajor sigmas (4: 99.97 % of a Gaussian).
    aperture_correction : bool
        Divide by the fraction of the PSF model (the camera's fitted elliptical Gaussian,
        pixel-integrated, at each source's sub-pixel position) inside the aperture, so that
        ``flux`` is the total flux.
    forced : bool
        True: photometry at the catalogue positions carried by the frame's transform; False:
        re-centred on each frame (windowed centroid).
    error_model, name : as :class:`skysub.photometry.AperturePhotometer`; the default name is
        ``aperture_<estimator name>``.
    """

    kind = "aperture"

    def __init__(self, local_background_estimator: Any = None, *, aperture_scale: float = 4.0,
                 aperture_correction: bool = True, **kwargs) -> None:
        if not aperture_scale > 0:
            raise InputError(f"aperture_scale must be positive, got {aperture_scale!r}")
        self.aperture_scale = float(aperture_scale)
        self.aperture_correction = bool(aperture_correction)
        super().__init__(local_background_estimator, **kwargs)

    def build(self, psf: dict) -> CorrectedAperture:
        psf = check_psf_params(psf)
        a, b = psf["semimajor_sigma"], psf["semiminor_sigma"]
        phot = AperturePhotometer(self.aperture_scale * a, background=self.background(psf),
                                  ba=b / a, theta=psf["orientation"],
                                  error_model=self.error_model, name=self.name,
                                  error_calibration="none")  # flux_err as docs/timeseries.md
        model = None
        if self.aperture_correction:
            model = elliptical_gaussian_psf(2 * int(np.ceil(6 * a)) + 1, a, b,
                                            psf["orientation"])
        return CorrectedAperture(phot, model)


class CorrectedAperture:
    """An :class:`AperturePhotometer` whose fluxes are divided by the enclosed fraction of a
    unit-sum PSF model (None: no correction).  ``extra["enclosed_fraction"]`` holds it."""

    def __init__(self, photometer: AperturePhotometer, psf_model: np.ndarray | None) -> None:
        self.photometer = photometer
        self.psf_model = psf_model
        self.name = photometer.name
        self.background = photometer.background

    def enclosed_fraction(self, x, y) -> np.ndarray:
        """Fraction of the PSF model's light inside the aperture at each position."""
        w, x0, _ = self.photometer.weights(x, y)
        k = w.shape[-1]
        xi = np.floor(np.asarray(x, float) + 0.5)
        yi = np.floor(np.asarray(y, float) + 0.5)
        p = shift_psf(self.psf_model, k, np.asarray(x, float) - xi, np.asarray(y, float) - yi)
        return (w * p).sum(axis=(1, 2))

    def measure(self, image, x, y, **kwargs) -> PhotometryResult:
        res = self.photometer.measure(image, x, y, **kwargs)
        if self.psf_model is None:
            return res
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        ok = np.isfinite(x) & np.isfinite(y)
        frac = np.full(len(x), np.nan)
        if ok.any():
            frac[ok] = self.enclosed_fraction(x[ok], y[ok])
        with np.errstate(invalid="ignore", divide="ignore"):
            res.flux = res.flux / frac
            res.flux_err = res.flux_err / frac
        res.extra["enclosed_fraction"] = frac
        return res


class OptimalExtraction(_Recipe):
    """Optimal extraction (Naylor 1998) with the camera's PSF model.

    Weights ``W_i = (P_i / V_i) / sum_j (P_j^2 / V_j)`` with ``P`` the PSF model normalised to
    UNIT SUM over the plane (a pixel-integrated elliptical Gaussian with the camera's fitted
    sigmas and orientation, Fourier-shifted to each source's sub-pixel position) and ``V_i`` the
    pixel variance (background scatter + the star's own Poisson term at the current flux
    estimate, iterated): ``sum_i W_i (D_i - B)`` is then an unbiased estimate of the TOTAL flux
    (Naylor 1998, eq. 9-10; the same estimator as Lumos eq. 6, implemented by
    :class:`skysub.photometry.OptimalPhotometer`).

    Parameters
    ----------
    local_background_estimator : see the module docstring.
    stamp_scale : float
        The weighted sum runs over a square of side ``2 ceil(stamp_scale * semimajor_sigma) + 1``.
    n_iter : int
        Re-evaluations of the variance with the current flux.
    forced, error_model, name : as :class:`ApertureExtraction` (default name
        ``optimal_<estimator name>``).
    """

    kind = "optimal"

    def __init__(self, local_background_estimator: Any = None, *, stamp_scale: float = 6.0,
                 n_iter: int = 3, **kwargs) -> None:
        if not stamp_scale >= 2:
            raise InputError(f"stamp_scale must be >= 2 PSF sigmas, got {stamp_scale!r}")
        self.stamp_scale = float(stamp_scale)
        self.n_iter = int(n_iter)
        super().__init__(local_background_estimator, **kwargs)

    def build(self, psf: dict) -> OptimalPhotometer:
        psf = check_psf_params(psf)
        a, b = psf["semimajor_sigma"], psf["semiminor_sigma"]
        size = 2 * int(np.ceil(self.stamp_scale * a)) + 1
        model = elliptical_gaussian_psf(2 * int(np.ceil(7 * a)) + 1, a, b, psf["orientation"])
        return OptimalPhotometer(model, background=self.background(psf), n_iter=self.n_iter,
                                 size=size, error_model=self.error_model, name=self.name,
                                 error_calibration="none")  # flux_err as docs/timeseries.md


PIPELINE_PHOTOMETERS: dict[str, Callable[..., _Recipe]] = {
    "aperture": ApertureExtraction, "optimal": OptimalExtraction}


def pipeline_photometer(kind: str, **kwargs) -> _Recipe:
    """``"aperture"`` or ``"optimal"`` recipe by name."""
    try:
        cls = PIPELINE_PHOTOMETERS[kind]
    except KeyError:
        raise InputError(f"unknown photometer {kind!r}; expected one of "
                         f"{sorted(PIPELINE_PHOTOMETERS)}") from None
    return cls(**kwargs)
