"""Source detection (sep = SExtractor), stacked reference frames and PSF parameters.

Angles: sep reports ``theta`` in RADIANS; everything this module returns is in DEGREES
counter-clockwise from +x (``theta_deg`` columns, ``orientation`` of the PSF), converted here
once.  PSF parameters follow opticam's dictionary: ``semimajor_sigma``, ``semiminor_sigma`` [px]
and ``orientation`` [deg, in (-90, 90]].
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..errors import InputError
from ..simulate.timeseries import elliptical_gaussian_stamps
from ..stamps import cutouts
from .align import Transform

PSF_KEYS = ("semimajor_sigma", "semiminor_sigma", "orientation")


def _native(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(data, dtype=np.float64))


def sky_background(data: np.ndarray, mask: np.ndarray | None = None, *, box: int = 64):
    """``sep.Background`` of a frame (SExtractor mesh; masked pixels ignored)."""
    import sep

    d = _native(data)
    m = None if mask is None else np.ascontiguousarray(mask, dtype=bool)
    if m is not None:
        d = np.where(m, 0.0, d)
    return sep.Background(d, mask=m, bw=box, bh=box)


def detect_sources(data: np.ndarray, mask: np.ndarray | None = None, *, threshold: float = 5.0,
                   minarea: int = 5, max_sources: int | None = None, box: int = 64
                   ) -> tuple[Table, dict[str, float]]:
    """Sources of one frame, brightest first, with windowed (XWIN-like) centroids.

    Parameters
    ----------
    data : 2-D array
    mask : bool array, optional (True = bad)
    threshold : float
        Detection threshold in units of the global background RMS.
    minarea : int
        Minimum connected pixels above threshold.
    max_sources : int, optional
        Keep only the brightest ones.
    box : int
        Background mesh size [px].

    Returns
    -------
    table : astropy Table
        ``x, y`` (0-based px, windowed centroids), ``flux`` (isophotal, background subtracted),
        ``peak``, ``a, b`` (isophotal sigmas, px), ``theta_deg`` (DEGREES CCW from +x),
        ``npix``, ``flag`` (sep's).
    sky : dict
        ``background`` (median of the mesh map) and ``rms`` (median of the rms map).
    """
    import sep

    if threshold <= 0:
        raise InputError(f"detection threshold must be positive (in RMS units), got {threshold}")
    d = _native(data)
    m = None if mask is None else np.ascontiguousarray(mask, dtype=bool)
    bkg = sky_background(d, m, box=box)
    sub = d - bkg.back()
    if m is not None:
        sub[m] = 0.0
    rms = float(bkg.globalrms)
    try:
        obj = sep.extract(sub, threshold, err=rms, mask=m, minarea=minarea)
    except Exception as exc:  # sep signals buffer overflows etc. with plain Exceptions
        raise InputError(f"source detection failed ({exc}); raise the threshold") from None
    order = np.argsort(-obj["flux"])
    obj = obj[order]
    if max_sources is not None:
        obj = obj[:max_sources]
    x, y = obj["x"].astype(float), obj["y"].astype(float)
    if len(obj):
        sig = np.full(len(obj), max(float(np.median(np.sqrt(obj["a"] * obj["b"]))), 0.8))
        xw, yw, wflag = sep.winpos(sub, x, y, sig, mask=m)
        good = (wflag == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x, yw - y) < 2)
        x, y = np.where(good, xw, x), np.where(good, yw, y)
    t = Table({"x": x, "y": y, "flux": obj["flux"].astype(float),
               "peak": obj["peak"].astype(float), "a": obj["a"].astype(float),
               "b": obj["b"].astype(float),
               "theta_deg": np.degrees(obj["theta"].astype(float)),  # sep: radians
               "npix": obj["npix"].astype(int), "flag": obj["flag"].astype(int)})
    sky = {"background": float(np.median(bkg.back())), "rms": float(np.median(bkg.rms()))}
    return t, sky


def warp_to_reference(data: np.ndarray, transform: Transform, shape: tuple[int, int]
                      ) -> np.ndarray:
    """Resample a frame onto the reference pixel grid (bilinear; NaN outside the frame).

    ``transform`` maps reference to frame coordinates, which is exactly what
    ``scipy.ndimage.affine_transform`` wants (output -> input), once (x, y) is turned into
    (row, column).
    """
    from scipy.ndimage import affine_transform

    swap = np.array([[0, 1], [1, 0]])
    m = swap @ np.asarray(transform.matrix) @ swap
    off = np.asarray(transform.offset)[::-1]
    return affine_transform(_native(data), m, offset=off, output_shape=shape, order=1,
                            cval=np.nan)


def stack_frames(frames: list[np.ndarray], transforms: list[Transform]) -> np.ndarray:
    """Mean of the frames resampled onto the reference grid (NaN where no frame covers)."""
    if not frames:
        raise InputError("no frames to stack")
    shape = frames[0].shape
    total = np.zeros(shape)
    count = np.zeros(shape)
    for f, t in zip(frames, transforms, strict=True):
        w = warp_to_reference(f, t, shape)
        ok = np.isfinite(w)
        total[ok] += w[ok]
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def canonical_orientation(theta_deg):
    """Angle of an axis (defined modulo 180 degrees) mapped into (-90, 90]."""
    t = np.mod(np.asarray(theta_deg, float) + 90.0, 180.0) - 90.0
    return np.where(t == -90.0, 90.0, t)


def fit_elliptical_gaussian(stamp: np.ndarray, guess_sigma: float = 1.5, *,
                            oversample: int = 3) -> dict[str, float]:
    """Least-squares fit of a pixel-integrated elliptical Gaussian plus a constant.

    ``stamp`` is a square, odd-sized cutout (NaN = invalid) with the star near its centre.
    Returns ``flux, dx, dy`` (offset from the centre pixel), ``semimajor_sigma``,
    ``semiminor_sigma``, ``orientation`` (DEGREES CCW from +x, in (-90, 90]), ``background``
    and ``success``.  Pixels are weighted by ``1 / sqrt(max(stamp, 1))`` (Poisson counts).
    """
    from scipy.optimize import least_squares

    size = stamp.shape[0]
    ok = np.isfinite(stamp)
    w = 1.0 / np.sqrt(np.maximum(np.where(ok, stamp, 1.0), 1.0))
    b0 = float(np.nanmedian(np.r_[stamp[0], stamp[-1], stamp[:, 0], stamp[:, -1]]))
    f0 = max(float(np.nansum(stamp - b0)), 1.0)

    def model(p):
        f, dx, dy, lsa, lsb, th, b = p
        return elliptical_gaussian_stamps(size, f, dx, dy, np.exp(lsa), np.exp(lsb),
                                          np.degrees(th), oversample=oversample)[0] + b

    def resid(p):
        return np.where(ok, (model(p) - np.where(ok, stamp, 0.0)) * w, 0.0).ravel()

    best = None
    for th0 in (0.0, np.pi / 4, -np.pi / 4):  # start from three angles: avoids a saddle at 0
        p0 = [f0, 0.0, 0.0, np.log(guess_sigma * 1.1), np.log(guess_sigma * 0.9), th0, b0]
        r = least_squares(resid, p0, method="lm", max_nfev=400)
        if best is None or r.cost < best.cost:
            best = r
    f, dx, dy, lsa, lsb, th, b = best.x
    sa, sb, theta = np.exp(lsa), np.exp(lsb), np.degrees(th)
    if sb > sa:  # canonical: first sigma is the major one
        sa, sb, theta = sb, sa, theta + 90.0
    return {"flux": float(f), "dx": float(dx), "dy": float(dy), "semimajor_sigma": float(sa),
            "semiminor_sigma": float(sb), "orientation": float(canonical_orientation(theta)),
            "background": float(b), "success": bool(best.success)}


def psf_params(data: np.ndarray, x, y, *, mask: np.ndarray | None = None, max_stars: int = 8,
               isolation: float = 12.0, guess_sigma: float = 1.5) -> dict[str, float]:
    """PSF parameters of a frame from the brightest isolated stars at ``(x, y)``.

    Each star is fitted with :func:`fit_elliptical_gaussian` on a stamp of ``2 ceil(5 sigma)
    + 1`` px; the result is the median sigma over stars and the axial mean of the orientation
    (mean of ``2 theta``, halved).  ``x, y`` must be brightest first.  Stars with another
    source closer than ``isolation`` px, or too close to the edge for a full stamp, are skipped.

    Returns
    -------
    dict
        ``semimajor_sigma``, ``semiminor_sigma`` [px], ``orientation`` [DEGREES CCW from +x,
        in (-90, 90]], ``n_stars``.

    Raises
    ------
    InputError
        No star could be fitted.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ny, nx = np.shape(data)
    half = int(np.ceil(5 * max(guess_sigma, 1.0)))
    size = 2 * half + 1
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    iso = d.min(axis=1, initial=np.inf) >= isolation
    inside = (x >= half) & (x < nx - 1 - half) & (y >= half) & (y < ny - 1 - half)
    pick = np.flatnonzero(iso & inside)[:max_stars]
    if len(pick) == 0:
        raise InputError(f"no isolated star (no neighbour within {isolation} px, {half} px "
                         "from the edges) to measure the PSF on")
    st = cutouts(data, x[pick], y[pick], size, mask=mask)
    fits = [fit_elliptical_gaussian(s, guess_sigma) for s in st.data]
    fits = [f for f in fits if f["success"] and 0.3 < f["semiminor_sigma"]
            and f["semimajor_sigma"] < half]
    if not fits:
        raise InputError("the PSF fit failed for every isolated star")
    sa = float(np.median([f["semimajor_sigma"] for f in fits]))
    sb = float(np.median([f["semiminor_sigma"] for f in fits]))
    two = np.radians(2 * np.array([f["orientation"] for f in fits]))
    theta = float(np.degrees(np.arctan2(np.sin(two).mean(), np.cos(two).mean())) / 2)
    return {"semimajor_sigma": sa, "semiminor_sigma": sb,
            "orientation": float(canonical_orientation(theta)), "n_stars": len(fits)}


def check_psf_params(psf: dict, where: str = "psf_params") -> dict[str, float]:
    """Validate an opticam-style PSF dictionary; return it with float values."""
    try:
        out = {k: float(psf[k]) for k in PSF_KEYS}
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where} must map {', '.join(PSF_KEYS)} to numbers (sigmas in px, "
                         f"orientation in degrees); got {psf!r}") from None
    if not (out["semimajor_sigma"] > 0 and out["semiminor_sigma"] > 0):
        raise InputError(f"{where}: PSF sigmas must be positive, got {out}")
    if out["semiminor_sigma"] > out["semimajor_sigma"]:
        raise InputError(f"{where}: semiminor_sigma exceeds semimajor_sigma: {out}")
    return out
