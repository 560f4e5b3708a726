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
from ..simulate.render import SourceShapes
from ..stamps import cutouts
from .aperture import (
    PhotometryResult,
    _flag,
    _inside,
    assemble,
    check_error_model,
    check_positions,
    check_psf,
    psf_sigma,
    render_models,
    run_background,
    source_shapes,
    with_calibration,
)
from .emptyaper import OFF, NoiseCalibration, calibrate, check_calibration
from .errors import pixel_variance, source_gain


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
    error_calibration : {"auto", "empty", "neighbours", "matched", "global", "level", "none"}
        ``"auto"`` (default) and ``"empty"``: calibrate the flux errors on the frame's empty
        positions, measured with the weights of faint and bright point sources and round
        exponentials (:data:`PROBES`; :mod:`skysub.photometry.emptyaper`; not in oracle
        mode), with a local factor that follows the noise over the frame; ``"neighbours"``: as
        ``"auto"`` with a factor for the distance to the nearest catalogued source too
        (opt-in); ``"matched"``: as ``"auto"`` with the empty positions weighted to the
        measured sources' distances to their nearest catalogued neighbour (opt-in);
        ``"global"``: the same without the local factor; ``"level"``: as ``"auto"``
        with the local factor a function of the local pixel-noise level (each background
        estimate's ``pixel_std``) first, of the position second (opt-in); ``"none"``: the
        white-noise error model only.  A frame without room for 50 empty positions is left
        uncalibrated: quietly with ``"auto"``, with a warning and the UNCALIBRATED flag with
        ``"empty"``.
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

    Shape uncertainty: when the catalogue gives 1-sigma errors of the shape parameters
    (columns ``r50_err`` [px], ``ba_err``, ``theta_err`` [degrees], ``sersic_n_err``), the
    weights are rebuilt with each parameter moved by ``-err`` and ``+err`` (kept in its valid
    range), their response to the catalogued profile gives ``dF/dp`` (:func:`shape_variance`)
    and ``(dF/dp err)^2`` of every parameter is added to the variance;
    ``extra["flux_err_shape"]`` is that part of the error (0 for rows without errors).
    """

    def __init__(self, psf=None, *, background=None, n_iter: int = 3, size: int = 31,
                 oracle: bool = False, error_model: str = "auto", max_bad_fraction: float = 0.1,
                 footprint: float = 1e-3, crowd_margin: float = 2.0, oversample: int = 10,
                 error_calibration: str = "auto", chunk_size: int = 1000,
                 name: str = "optimal") -> None:
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
        self.error_calibration = check_calibration(error_calibration)
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
            var_tot = (w * w * v).sum(ax)
            var_pix = (w * w * pv).sum(ax)  # the background's share of var_tot
            n_aper = w.sum(ax)
        return {"flux": flux, "var_tot": var_tot, "var_pix": var_pix, "n_aper": n_aper, "w": w}

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
        if self.oracle:
            return self._measure_oracle(img, x, y, model, bkg_true, neighbours)
        shapes = source_shapes(catalog, n)
        cal = OFF  # calibrated first: the estimator's last call is then the sources'
        if self.error_calibration != "none":
            cal = calibrate_optimal(self, img, (x, y) if neighbours is None else neighbours,
                                    target_xy=(x, y) if self.error_calibration == "matched"
                                    else None)
        bres = run_background(self.background, img, x, y, mag, neighbours)
        core = self._core(img, x, y, shapes, bres)
        b_err = np.asarray(bres.bkg_err, float)
        q = cal.factor(x, y, np.asarray(bres.pixel_std, float))  # 1 without one
        var = cal.variance(core["var_src"], core["var_pix"], core["n_aper"], b_err, q)
        var_shape = shape_variance(self, img, x, y, catalog, shapes, bres, core["flux"])
        extra = {"model_in_stamp": core["in_stamp"]}
        if var_shape is not None:
            var = var + np.nan_to_num(var_shape, nan=0.0)
            extra["flux_err_shape"] = np.sqrt(var_shape)
        with np.errstate(invalid="ignore"):
            flux_err = np.sqrt(var)
        crowd_r = np.sqrt(core["fp_area"] / np.pi) + self.crowd_margin
        res = assemble(img, x, y, core["flux"], flux_err, np.asarray(bres.bkg, float),
                       cal.bkg_err(b_err, core["n_aper"], q) if cal.calibrated else b_err,
                       core["n_aper"], bres,
                       core["flags"], crowd_radius=crowd_r, neighbours=neighbours, extra=extra)
        return with_calibration(res, cal, q)

    def _core(self, img: Image, x: np.ndarray, y: np.ndarray, shapes, bres,
              model: np.ndarray | None = None, reference: np.ndarray | None = None,
              contrast: float | None = None) -> dict:
        """Eq. 6 fluxes and error parts of the sources (non-oracle); ``model``: one unit-total
        profile (size, size) for all of them instead of rendering ``shapes`` (the empty-aperture
        probes, all at whole-pixel positions); ``reference`` (n, size, size): profiles whose
        response ``sum(w p_ref)`` to the weights is returned as ``"response"``; ``contrast``:
        weights fixed at the flux whose peak pixel is ``contrast`` x the pixel noise variance
        (the weights of a source that bright, for the probes) instead of iterated."""
        n = len(x)
        size = self.size
        pvar_all = pixel_variance(bres.bkg, bres.pixel_std, img.meta.gain, img.meta.rdnoise,
                                  self.error_model)
        gain = source_gain(img)  # the sources' shot noise (infinite: none)
        out = {k: np.full(n, np.nan) for k in ("flux", "var_src", "var_pix", "n_aper",
                                               "in_stamp")}
        out["fp_area"] = np.zeros(n)
        out["flags"] = F.zeros(n)
        for start in range(0, n, self.chunk_size):
            ii = np.arange(start, min(start + self.chunk_size, n))
            st = cutouts(img, x[ii], y[ii], size)
            inside = _inside(img.shape, st.x0, st.y0, size)
            sh = shapes.take(ii)
            ok = np.isfinite(st.dx) & np.isfinite(st.dy)
            p = np.zeros((len(ii), size, size))
            if model is not None:
                p[ok] = model
            elif ok.any():
                sub = type(sh)(sh.r50[ok], sh.n[ok], sh.ba[ok], sh.theta[ok], sh.is_point[ok])
                p[ok] = render_models(sub, self.psf, size, st.dx[ok], st.dy[ok],
                                      oversample=self.oversample)
            d = st.data - np.asarray(bres.bkg, float)[ii][:, None, None]
            pv = pvar_all[ii][:, None, None] + np.zeros_like(p)
            f0 = None
            if contrast is not None:
                f0 = (contrast * gain * pvar_all[ii] / np.maximum(p.max(axis=(1, 2)), 1e-300)
                      if np.isfinite(gain) else np.zeros(len(ii)))  # no shot noise: any f
            res = self._weighted(d, st.valid, p, pv, gain, f0)
            self._footprint(out, ii, p, st, inside, res)
            out["var_src"][ii] = res["var_tot"] - res["var_pix"]
            out["var_pix"][ii] = res["var_pix"]
            if reference is not None:
                out.setdefault("response", np.full(n, np.nan))
                with np.errstate(invalid="ignore"):
                    out["response"][ii] = (res["w"] * reference[ii]).sum(axis=(1, 2))
        return out

    def _render(self, img: Image, x: np.ndarray, y: np.ndarray, shapes) -> np.ndarray:
        """Unit-total models (n, size, size) of ``shapes`` at ``x, y`` (zero where unplaceable)."""
        st = cutouts(img, x, y, self.size)
        ok = np.isfinite(st.dx) & np.isfinite(st.dy)
        p = np.zeros((len(x), self.size, self.size))
        if ok.any():
            p[ok] = render_models(shapes.take(ok), self.psf, self.size, st.dx[ok], st.dy[ok],
                                  oversample=self.oversample)
        return p

    def _footprint(self, out: dict, ii, p, st, inside, res) -> None:
        """Footprint flags, the masked-light limit and the fluxes of one batch into ``out``."""
        pmax = p.max(axis=(1, 2), initial=0.0)
        foot = p >= self.footprint * pmax[:, None, None]
        foot &= pmax[:, None, None] > 0
        out["fp_area"][ii] = foot.sum(axis=(1, 2))
        out["in_stamp"][ii] = p.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            bad_light = (np.where(st.valid, 0.0, p).sum(axis=(1, 2)) / p.sum(axis=(1, 2)))
        nodata = ~(bad_light <= self.max_bad_fraction + 1e-12)
        out["flags"][ii] |= (_flag((foot & ~inside).any(axis=(1, 2)), F.EDGE)
                             | _flag((foot & inside & ~st.valid).any(axis=(1, 2)), F.MASKED)
                             | _flag(nodata, F.NO_DATA))
        out["flux"][ii] = np.where(nodata, np.nan, res["flux"])
        out["n_aper"][ii] = res["n_aper"]

    def _measure_oracle(self, img: Image, x, y, model, bkg_true, neighbours) -> PhotometryResult:
        """Oracle mode: the true model and sky in eq. 6 (no calibration)."""
        n = len(x)
        size = self.size
        gain, rn = img.meta.gain, img.meta.rdnoise
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
        out = {k: np.full(n, np.nan) for k in ("flux", "n_aper", "in_stamp", "var")}
        out["fp_area"] = np.zeros(n)
        out["flags"] = F.zeros(n)
        for start in range(0, n, self.chunk_size):
            ii = np.arange(start, min(start + self.chunk_size, n))
            st = cutouts(img, x[ii], y[ii], size)
            inside = _inside(img.shape, st.x0, st.y0, size)
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
            self._footprint(out, ii, p, st, inside, res)
            out["var"][ii] = res["var_tot"]
        with np.errstate(invalid="ignore"):
            flux_err = np.sqrt(out["var"])
        crowd_r = np.sqrt(out["fp_area"] / np.pi) + self.crowd_margin
        return assemble(img, x, y, out["flux"], flux_err, b_mean, np.zeros(n), out["n_aper"],
                        bres, out["flags"], crowd_radius=crowd_r, neighbours=neighbours,
                        extra={"model_in_stamp": out["in_stamp"]})


#: weights that probe the empty positions: (half-light radius of a round exponential in units
#: of the PSF's Gaussian sigma, 0 = point source; the source's peak pixel over the pixel noise
#: variance, 0 = the faint limit) -- faint and bright point sources, and galaxies
PROBES = ((0.0, 0.0), (0.0, 3.0), (0.0, 30.0), (0.0, 300.0), (1.0, 0.0), (2.0, 0.0),
          (2.0, 30.0))

#: catalogue error column of each shape parameter (see :class:`OptimalPhotometer`)
SHAPE_ERRORS = {"r50": "r50_err", "ba": "ba_err", "theta": "theta_err", "sersic_n": "sersic_n_err"}
_SHAPE_FIELD = {"r50": "r50", "ba": "ba", "theta": "theta", "sersic_n": "n"}
_SHAPE_RANGE = {"r50": (0.05, np.inf), "ba": (0.05, 1.0), "theta": (-np.inf, np.inf),
                "sersic_n": (0.3, 8.0)}


def _take_bkg(bres: BackgroundResult, idx) -> BackgroundResult:
    return BackgroundResult(*(np.asarray(getattr(bres, f))[idx]
                              for f in ("bkg", "bkg_err", "pixel_std", "n_pix", "flags")))


def calibrate_optimal(phot: OptimalPhotometer, img: Image, avoid_xy,
                      target_xy=None) -> NoiseCalibration:
    """Empty-aperture calibration of an optimal photometer on ``img``: the weights of
    :data:`PROBES` (point sources and round exponentials, faint and bright), its own background
    estimator; ``target_xy``: the sources it is applied to (the empty positions are weighted
    to their clearance, :func:`~skysub.photometry.emptyaper.clearance_weights`)."""
    sig = psf_sigma(phot.psf)
    radii = sorted({f * sig for f, _ in PROBES})

    def shapes(k: int, m: int) -> SourceShapes:
        r = radii[k]
        one = np.ones(m)
        return SourceShapes(np.full(m, r), one, one.copy(), np.zeros(m), np.full(m, r <= 0))

    # the probes sit at whole pixels: one profile per size, rendered once
    models = [render_models(shapes(k, 1), phot.psf, phot.size, np.zeros(1), np.zeros(1),
                            oversample=phot.oversample)[0] for k in range(len(radii))]
    # probes keep clear of sources by the largest probe's 1 %-of-peak radius + crowd_margin
    off = np.arange(phot.size) - phot.size // 2
    rr = np.hypot(*np.meshgrid(off, off, indexing="ij"))
    clear = float(rr[models[-1] >= 0.01 * models[-1].max()].max()) + phot.crowd_margin
    # on a crowded frame no closer than the point-source weights' own 1 %-of-peak radius
    min_clear = float(rr[models[0] >= 0.01 * models[0].max()].max()) + phot.crowd_margin
    cache: dict = {}

    def probe(k: int, xp: np.ndarray, yp: np.ndarray) -> dict:
        xp, yp = np.rint(xp), np.rint(yp)
        if "bres" not in cache:
            cache["bres"] = run_background(phot.background, img, xp, yp, None, avoid_xy)
        bres = cache["bres"]
        f, t = PROBES[k]
        j = radii.index(f * sig)
        c = phot._core(img, xp, yp, shapes(j, len(xp)), bres, model=models[j],
                       contrast=t if t > 0 else None)
        with np.errstate(invalid="ignore"):
            vw = c["var_pix"] + c["n_aper"] ** 2 * np.asarray(bres.bkg_err, float) ** 2
        return {"flux": c["flux"], "var_white": vw, "n_aper": c["n_aper"], "flags": c["flags"],
                "pixel_std": np.asarray(bres.pixel_std, float)}

    return calibrate(probe, len(PROBES), img.shape, img.mask, avoid_xy, clear,
                     name=f"{img.name}: {phot.name}",
                     required=phot.error_calibration == "empty", anchor=0,
                     local=phot.error_calibration != "global",
                     neighbours=phot.error_calibration == "neighbours",
                     image=img.data, min_clear=min_clear, target_xy=target_xy,
                     level=phot.error_calibration == "level")


def shape_variance(phot: OptimalPhotometer, img: Image, x: np.ndarray, y: np.ndarray, catalog,
                   shapes: SourceShapes, bres: BackgroundResult, flux: np.ndarray
                   ) -> np.ndarray | None:
    """Flux variance from the catalogue's shape errors (None when it gives none): per
    parameter ``(dF/dp err)^2``.  ``dF/dp`` is the change of the estimate when the weights are
    built for ``p -/+ err`` while the source has the catalogued shape: ``F (R+ - R-) / (p+ -
    p-)`` with ``R = sum(w_p p_0)`` the response of those weights to the catalogued profile
    ``p_0`` (noise-free, unlike a difference of two measurements of the noisy pixels)."""
    if catalog is None:
        return None
    names = list(catalog.colnames) if hasattr(catalog, "colnames") else list(catalog.keys())
    present = [k for k, c in SHAPE_ERRORS.items() if c in names]
    if not present:
        return None
    n = len(x)
    var = np.zeros(n)
    for key in present:
        err = np.ma.filled(np.ma.asarray(catalog[SHAPE_ERRORS[key]], dtype=float), np.nan)
        err = np.atleast_1d(np.asarray(err, float))
        if err.shape != (n,):
            raise InputError(f"catalogue column {SHAPE_ERRORS[key]!r} has {err.size} rows, "
                             f"expected {n} (one per source)")
        with np.errstate(invalid="ignore"):
            rows = np.flatnonzero(~shapes.is_point & np.isfinite(err) & (err > 0)
                                  & np.isfinite(flux))
        if rows.size == 0:
            continue
        sub = shapes.take(rows)
        p0 = phot._render(img, x[rows], y[rows], sub)
        val = np.asarray(getattr(sub, _SHAPE_FIELD[key]), float)
        lo, hi = _SHAPE_RANGE[key]
        resp = []
        moved = []
        for sign in (-1.0, 1.0):
            v = np.clip(val + sign * err[rows], lo, hi)
            moved.append(v)
            fields = {f: getattr(sub, f) for f in ("r50", "n", "ba", "theta", "is_point")}
            fields[_SHAPE_FIELD[key]] = v
            c = phot._core(img, x[rows], y[rows], SourceShapes(**fields), _take_bkg(bres, rows),
                           reference=p0)
            resp.append(c["response"])
        dp = moved[1] - moved[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.where(dp > 0, flux[rows] * (resp[1] - resp[0]) / dp * err[rows], 0.0)
        var[rows] += np.nan_to_num(d, nan=0.0) ** 2
    return var
