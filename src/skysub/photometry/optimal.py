"""Optimal linear weights (Lumos §3.3, eq. 6): the best unbiased linear flux estimator for a
known profile and background.

For a model ``m = F p`` (``p`` the unit-total PSF-convolved profile) and per-pixel noise
variance ``v_x``, the weights maximising the SNR of ``F_hat = sum_x w_x (d_x - b_x)`` under
``sum_x w_x p_x = 1`` (unbiasedness) are

.. math::  w_x = \\frac{p_x / v_x}{\\sum_i p_i^2 / v_i},

which with ``v = m + b`` (electrons, Poisson only) is exactly Lumos eq. 6,
``w_x = (sum_i m_i / sum_i m_i^2/(m_i + b_i)) / (1 + b_x/m_x)``.  Here ``v`` is in ADU^2:
``v_x = max(F p_x, 0) / g + pixel_var`` with ``pixel_var`` from
:func:`skysub.photometry.errors.pixel_variance` (``"model"``: ``(b g + RN^2) / g^2``, so read
noise is included and eq. 6 is recovered for ``RN = 0``).
"""

from __future__ import annotations

import numpy as np

from .. import flags as F
from ..background.base import BackgroundResult
from ..errors import InputError
from ..image import Image, as_image, image_method
from ..stamps import cutouts
from .aperture import (
    PhotometryResult,
    _flag,
    _inside,
    assemble,
    check_error_model,
    check_positions,
    check_psf,
    render_models,
    run_background,
    source_shapes,
)
from .errors import pixel_variance


class OptimalPhotometer:
    """Optimally weighted pixel sum (Lumos eq. 6) with iterated model flux.

    Parameters
    ----------
    psf : 2-D array or None
        PSF image centred at ``size // 2`` (normalised to unit sum here).  Only optional with
        ``oracle=True``.
    background : background estimator
        Gives ``b`` and its error (not used with ``oracle=True``).
    n_iter : int
        Weight iterations after the start (>= 0).
    size : int
        Stamp side in pixels over which the weighted sum runs (odd recommended).
    oracle : bool
        Benchmark mode: :meth:`measure` takes the TRUE model (``model=``) and background
        (``bkg_true=``) and uses them in eq. 6 directly -- the bound on linear estimators.
    error_model : {"auto", "measured", "model"}
        Per-pixel background noise (:func:`skysub.photometry.errors.pixel_variance`).
    max_bad_fraction : float
        Largest fraction of the in-stamp model light that may fall on masked / off-image pixels
        (more gives NaN and NO_DATA; less: those pixels get zero weight and the others are
        re-normalised, which keeps the estimate unbiased for a correct model).
    footprint : float
        Pixels with ``p >= footprint * max(p)`` form the source footprint used for the EDGE and
        MASKED flags (the weights themselves extend over the whole stamp).
    crowd_margin : float
        A catalogued neighbour within ``sqrt(N_footprint / pi) + crowd_margin`` px (the radius
        of a disc with the footprint's area, plus the margin) flags CROWDED.
    oversample : int
        Oversampling used to render Sérsic models.
    chunk_size : int
        Sources per batch.
    name : str

    Notes
    -----
    Start: the faint-limit weights ``w ∝ p`` (eq. 6 with ``m << b``: the matched filter, always
    defined and unbiased), instead of a separate aperture measurement -- it is the first step of
    the same iteration and has a lower variance.  Each iteration re-evaluates ``v`` with the
    current (non-negative) flux.  The error is ``sum_x w_x^2 v_x + (sum_x w_x)^2 bkg_err^2``
    (pixel noise plus the fully correlated error of the subtracted background);
    ``n_aper = sum_x w_x`` is the multiplier of the background (for faint sources the
    noise-equivalent area ``1 / sum p^2``).  The profile is normalised to unit TOTAL flux, so the
    estimate is of the total flux even when the stamp truncates the model (as long as the model
    is right).  In oracle mode the profile is the given model normalised over the stamp, so the
    estimate is of the model's in-stamp flux ``sum(model)``.  ``extra["model_in_stamp"]`` is the
    fraction of the model's total light inside the stamp (raise ``size`` if it is well below 1:
    the estimate stays unbiased but loses precision).
    """

    def __init__(self, psf=None, *, background=None, n_iter: int = 3, size: int = 31,
                 oracle: bool = False, error_model: str = "auto", max_bad_fraction: float = 0.1,
                 footprint: float = 1e-3, crowd_margin: float = 2.0, oversample: int = 10,
                 chunk_size: int = 1000, name: str = "optimal") -> None:
        if int(n_iter) != n_iter or n_iter < 0:
            raise InputError(f"n_iter must be a non-negative integer, got n_iter={n_iter!r}")
        if int(size) != size or size < 3:
            raise InputError(f"stamp size must be an integer >= 3, got size={size!r}")
        if not 0 <= max_bad_fraction < 1:
            raise InputError(f"max_bad_fraction must be in [0, 1), got {max_bad_fraction!r}")
        if not oracle:
            if psf is None:
                raise InputError("OptimalPhotometer needs a psf (2-D array) unless oracle=True")
            if background is None or not hasattr(background, "estimate"):
                raise InputError("OptimalPhotometer needs a background estimator (an object "
                                 f"with estimate()) unless oracle=True, got {background!r}")
        self.psf = None if psf is None else check_psf(psf)
        self.background = background
        self.n_iter = int(n_iter)
        self.size = int(size)
        self.oracle = bool(oracle)
        self.error_model = check_error_model(error_model)
        self.max_bad_fraction = float(max_bad_fraction)
        self.footprint = float(footprint)
        self.crowd_margin = float(crowd_margin)
        self.oversample = int(oversample)
        self.chunk_size = int(chunk_size)
        self.name = name

    def __repr__(self) -> str:
        return (f"OptimalPhotometer(psf=<{'None' if self.psf is None else self.psf.shape}>, "
                f"background={self.background!r}, n_iter={self.n_iter}, size={self.size}, "
                f"oracle={self.oracle})")

    # -- core -------------------------------------------------------------------------------
    def _weighted(self, d: np.ndarray, valid: np.ndarray, p: np.ndarray, pv: np.ndarray,
                  gain: float, flux0: np.ndarray | None) -> dict[str, np.ndarray]:
        """Eq. 6 on one batch.

        ``d`` background-subtracted stamps (NaN invalid), ``valid`` their validity, ``p``
        unit-total profiles, ``pv`` background noise variance (m, K, K) in ADU^2, ``flux0`` the
        flux at which to evaluate the weights once (oracle) or None to iterate from the
        faint-limit start.
        """
        ax = (1, 2)
        dz = np.where(valid, d, 0.0)
        pz = np.where(valid, p, 0.0)

        def weights(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            v = np.maximum(f[:, None, None] * p, 0.0) / gain + pv  # ADU^2 per pixel
            q = pz / v
            return q / (q * pz).sum(ax)[:, None, None], v  # sum_valid w p = 1: unbiased

        with np.errstate(invalid="ignore", divide="ignore"):
            if flux0 is not None:
                w, v = weights(np.asarray(flux0, float))
                flux = (w * dz).sum(ax)
            else:
                w, v = weights(np.zeros(len(p)))  # faint limit: w ∝ p / pixel_var
                flux = (w * dz).sum(ax)
                for _ in range(self.n_iter):
                    w, v = weights(flux)
                    flux = (w * dz).sum(ax)
            var_pix = (w * w * v).sum(ax)
            n_aper = w.sum(ax)
        return {"flux": flux, "var_pix": var_pix, "n_aper": n_aper}

    @image_method
    def measure(self, image: Image | np.ndarray, x, y, *, mask: np.ndarray | None = None,
                mag: np.ndarray | None = None,
                neighbours: tuple[np.ndarray, np.ndarray] | None = None, catalog=None,
                model: np.ndarray | None = None, bkg_true: np.ndarray | None = None
                ) -> PhotometryResult:
        """Optimally weighted fluxes.

        Parameters
        ----------
        image : Image or 2-D array (ADU); gain and read noise from ``image.meta``.
        x, y : arrays (n,), 0-based pixel positions.
        mask, mag, neighbours : as :meth:`AperturePhotometer.measure`.
        catalog : table or dict, optional
            ``r50`` (px), ``sersic_n``, optional ``ba``, ``theta`` (degrees) per source;
            missing / non-positive ``r50`` (or no catalogue) = point source (the PSF).
        model : array (n, size, size), oracle mode only
            True model of each source in ADU, in the :mod:`skysub.stamps` layout (stamp pixel
            ``[i, j]`` = image pixel ``[round(y) - size//2 + i, round(x) - size//2 + j]``).
        bkg_true : array (n,) or (n, size, size), oracle mode only
            True background per pixel, ADU.

        Returns
        -------
        PhotometryResult
        """
        img = as_image(image, mask)
        x, y = check_positions(x, y)
        n = len(x)
        size = self.size
        gain, rn = img.meta.gain, img.meta.rdnoise
        if self.oracle:
            if model is None or bkg_true is None:
                raise InputError("oracle=True: measure() needs model= (n, size, size) and "
                                 "bkg_true= ((n,) or (n, size, size)), the true model and sky")
            model = np.asarray(model, float)
            if model.shape != (n, size, size):
                raise InputError(f"model must have shape {(n, size, size)}, got {model.shape}")
            bkg_true = np.asarray(bkg_true, float)
            if bkg_true.shape not in ((n,), (n, size, size)):
                raise InputError(f"bkg_true must have shape {(n,)} or {(n, size, size)}, got "
                                 f"{bkg_true.shape}")
            b_mean = bkg_true if bkg_true.ndim == 1 else bkg_true.mean(axis=(1, 2))
            bres = BackgroundResult(b_mean, np.zeros(n), np.full(n, np.nan),
                                    np.zeros(n, np.int64), F.zeros(n))
        else:
            shapes = source_shapes(catalog, n)
            bres = run_background(self.background, img, x, y, mag, neighbours)
            pvar_all = pixel_variance(bres.bkg, bres.pixel_std, gain, rn, self.error_model)
        flux = np.full(n, np.nan)
        var = np.full(n, np.nan)
        n_aper = np.full(n, np.nan)
        fp_area = np.zeros(n)
        in_stamp = np.full(n, np.nan)
        flags = F.zeros(n)
        for start in range(0, n, self.chunk_size):
            ii = np.arange(start, min(start + self.chunk_size, n))
            st = cutouts(img, x[ii], y[ii], size)
            inside = _inside(img.shape, st.x0, st.y0, size)
            if self.oracle:
                mdl = model[ii]
                tot = mdl.sum(axis=(1, 2))
                with np.errstate(invalid="ignore", divide="ignore"):
                    p = mdl / tot[:, None, None]
                bt = bkg_true[ii] if bkg_true.ndim == 3 else bkg_true[ii][:, None, None]
                d = st.data - bt
                # Lumos eq. 6 in ADU^2: (m g + b g + RN^2) / g^2; the model term enters through
                # flux0 = the true in-stamp flux, one weight evaluation, no iteration
                pv = (np.maximum(bt, 0.0) * gain + rn**2) / gain**2 + 0.0 * p
                res = self._weighted(d, st.valid, p, pv, gain, tot)
                b_err = np.zeros(len(ii))
            else:
                sh = shapes.take(ii)
                ok = np.isfinite(st.dx) & np.isfinite(st.dy)
                p = np.zeros((len(ii), size, size))
                if ok.any():
                    sub = type(sh)(sh.r50[ok], sh.n[ok], sh.ba[ok], sh.theta[ok], sh.is_point[ok])
                    p[ok] = render_models(sub, self.psf, size, st.dx[ok], st.dy[ok],
                                          oversample=self.oversample)
                d = st.data - np.asarray(bres.bkg, float)[ii][:, None, None]
                pv = pvar_all[ii][:, None, None] + np.zeros_like(p)
                res = self._weighted(d, st.valid, p, pv, gain, None)
                b_err = np.asarray(bres.bkg_err, float)[ii]
            # validity of the light: footprint flags and the masked-light limit
            pmax = p.max(axis=(1, 2), initial=0.0)
            foot = p >= self.footprint * pmax[:, None, None]
            foot &= pmax[:, None, None] > 0
            fp_area[ii] = foot.sum(axis=(1, 2))
            in_stamp[ii] = p.sum(axis=(1, 2))
            with np.errstate(invalid="ignore", divide="ignore"):
                bad_light = (np.where(st.valid, 0.0, p).sum(axis=(1, 2))
                             / p.sum(axis=(1, 2)))
            nodata = ~(bad_light <= self.max_bad_fraction + 1e-12)
            flags[ii] |= (_flag((foot & ~inside).any(axis=(1, 2)), F.EDGE)
                          | _flag((foot & inside & ~st.valid).any(axis=(1, 2)), F.MASKED)
                          | _flag(nodata, F.NO_DATA))
            flux[ii] = np.where(nodata, np.nan, res["flux"])
            with np.errstate(invalid="ignore"):
                var[ii] = res["var_pix"] + res["n_aper"] ** 2 * b_err**2
            n_aper[ii] = res["n_aper"]
        with np.errstate(invalid="ignore"):
            flux_err = np.sqrt(var)
        crowd_r = np.sqrt(fp_area / np.pi) + self.crowd_margin
        return assemble(img, x, y, flux, flux_err, np.asarray(bres.bkg, float),
                        np.asarray(bres.bkg_err, float), n_aper, bres, flags,
                        crowd_radius=crowd_r, neighbours=neighbours,
                        extra={"model_in_stamp": in_stamp})
