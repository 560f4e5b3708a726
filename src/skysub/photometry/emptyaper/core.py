"""The empty-aperture calibration itself: the empty positions, the fit of the factors
per frame and :func:`calibrate`, which ties them to the local factors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ... import flags as F
from ...errors import InputError
from .level import NoiseLevelFactor, level_and_position
from .local import LOCAL_MIN, LocalFactor, robust_sigma
from .matched import clearance_weights
from .neighbour import NeighbourFactor, position_and_neighbour

log = logging.getLogger("skysub")

#: ``error_calibration`` values of the photometers: ``"auto"`` empty-aperture calibration
#: (with its local factor) where the frame has room for it (else, quietly, none), ``"empty"``
#: the same but a frame without room is warned about and flagged UNCALIBRATED,
#: ``"neighbours"`` as ``"auto"`` with the neighbour factor too (opt-in: right on simulated
#: frames, not better on the real test frames, docs/photometry.md), ``"matched"`` as
#: ``"auto"`` with the empty positions weighted to the measured sources' clearance
#: (:func:`clearance_weights`; opt-in, docs/photometry.md), ``"global"`` as ``"auto"`` with
#: one factor for the whole frame (no local factor), ``"level"`` as ``"auto"`` with the local
#: factor a function of the local pixel-noise level first (:class:`~.level.NoiseLevelFactor`),
#: then of the position, ``"none"`` no calibration
CALIBRATIONS = ("auto", "empty", "neighbours", "matched", "global", "level", "none")

#: flags of a probe that make it unusable (its weights were not all on good pixels, or it
#: would be flagged CROWDED as a source)
_BAD_PROBE = F.EDGE | F.MASKED | F.NO_DATA | F.OFF_IMAGE | F.CROWDED


def check_calibration(value: str) -> str:
    if value not in CALIBRATIONS:
        raise InputError(f"unknown error_calibration={value!r}; expected one of {CALIBRATIONS}")
    return value


@dataclass
class NoiseCalibration:
    """Fitted empty-aperture factors of one frame and photometer.

    Attributes
    ----------
    status : {"calibrated", "uncalibrated", "skipped", "off"}
        ``"uncalibrated"``: calibration was asked for (``"empty"``) but the frame had too few
        empty positions (then ``alpha = 1``, ``sigma_s = 0``); ``"skipped"``: the same with
        ``"auto"``; ``"off"``: ``error_calibration="none"``.
    alpha : float
        Factor on the white-noise variance terms (1 = white noise).
    sigma_s : float
        Background-structure error per pixel at ``n_ref``, ADU, added in quadrature to
        ``bkg_err``.
    gamma : float
        Growth of the structure variance with the aperture, ``N_a^gamma`` (1 ... 2).
    n_ref : float
        The photometer's own ``n_aper`` (``N_0``).
    n_probe : int
        Empty positions used (per probe size).
    sizes : list of dict
        Per probe size: ``n``, ``n_aper`` (median), ``observed`` (biweight scale of the
        empty-position fluxes), ``predicted`` (white-noise prediction, sqrt of the median
        ``W``) and ``fitted``.
    message : str
    match : dict or None
        The clearance weights' record (:func:`clearance_weights`), None where every empty
        position counted the same.
    """

    status: str
    alpha: float = 1.0
    sigma_s: float = 0.0
    n_probe: int = 0
    gamma: float = 2.0
    n_ref: float = 1.0
    sizes: list = field(default_factory=list)
    message: str = ""
    local: LocalFactor | None = None
    clearance: float = float("nan")
    neighbour: NeighbourFactor | None = None
    match: dict | None = None
    level: NoiseLevelFactor | None = None

    @property
    def calibrated(self) -> bool:
        return self.status == "calibrated"

    def factor(self, x, y, level=None) -> np.ndarray:
        """The local variance factor ``q`` at ``x, y``: the neighbour factor
        (:class:`NeighbourFactor`, by the distance to the nearest catalogued source) or the
        noise-level factor (:class:`~.level.NoiseLevelFactor`, by ``level``: each source's
        local pixel-noise level, its background ``pixel_std``) times the position factor
        (:class:`LocalFactor`); 1 without them."""
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        q = np.ones(x.shape)
        if not self.calibrated:
            return q
        if self.level is not None:
            if level is None:
                raise ValueError("this calibration has a noise-level factor: pass each "
                                 "source's local pixel-noise level (level=pixel_std)")
            q = q * self.level(np.broadcast_to(np.asarray(level, float), x.shape))
        if self.local is not None:
            q = q * self.local(x, y)
        if self.neighbour is not None:
            q = q * self.neighbour(x, y)
        return q

    def variance(self, var_src, var_pix, n_aper, bkg_err, q=None) -> np.ndarray:
        """Calibrated flux variance from its parts: source Poisson ``var_src``, white pixel
        noise ``var_pix`` (``N_noise sigma_pix^2``), ``n_aper`` and the estimator's
        ``bkg_err``; ``q``: the local factor (:meth:`factor`) on everything but ``var_src``."""
        q = 1.0 if q is None else np.asarray(q, float)
        with np.errstate(invalid="ignore"):
            return (np.asarray(var_src, float) + q * self.alpha * np.asarray(var_pix, float)
                    + np.asarray(n_aper, float) ** 2 * self.bkg_err(bkg_err, n_aper, q) ** 2)

    def bkg_err(self, bkg_err, n_aper, q=None) -> np.ndarray:
        """The honest background error for apertures of ``n_aper`` px:
        ``sqrt(q (alpha bkg_err^2 + sigma_s^2 (n_aper / n_ref)^(gamma - 2)))``."""
        q = 1.0 if q is None else np.asarray(q, float)
        with np.errstate(invalid="ignore", divide="ignore"):
            grow = (np.asarray(n_aper, float) / self.n_ref) ** (self.gamma - 2.0)
            return np.sqrt(q * (self.alpha * np.asarray(bkg_err, float) ** 2
                                + self.sigma_s**2 * grow))

    def as_dict(self) -> dict:
        return {"status": self.status, "alpha": float(self.alpha),
                "sigma_s": float(self.sigma_s), "gamma": float(self.gamma),
                "n_ref": float(self.n_ref), "n_probe": int(self.n_probe),
                "clearance": float(self.clearance),
                "clearance_match": None if self.match is None else dict(self.match),
                "sizes": [dict(s) for s in self.sizes], "message": self.message,
                "local": None if self.local is None else self.local.as_dict(),
                "neighbour": None if self.neighbour is None else self.neighbour.as_dict(),
                "level": None if self.level is None else self.level.as_dict()}

    def columns(self, n: int, q=None) -> dict[str, np.ndarray]:
        """Per-source columns recording the factors: ``err_alpha``, ``err_sigma_s`` (one per
        frame) and ``err_local`` (``sqrt(q)``, the local factor on the error)."""
        q = np.ones(n) if q is None else np.broadcast_to(np.asarray(q, float), (n,))
        return {"err_alpha": np.full(n, float(self.alpha)),
                "err_sigma_s": np.full(n, float(self.sigma_s)),
                "err_local": np.sqrt(q)}


#: scale the neighbours' distances by their brightness (False: the plain distance; for comparisons)
NEIGHBOUR_BRIGHTNESS = True

OFF = NoiseCalibration("off")

#: factors on the probes' clearance tried in turn on a crowded frame (see :func:`calibrate`)
CLEAR_STEPS = (1.0, 0.8, 0.65, 0.5)


def empty_positions(shape: tuple[int, int], mask: np.ndarray, avoid_xy: tuple, clear: float,
                    n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` random positions at least ``clear`` px from every position in ``avoid_xy``,
    from every masked pixel and from the border, and ``clear`` px from each other (so that no
    two probes share pixels of their apertures)."""
    from scipy.ndimage import distance_transform_edt
    from scipy.spatial import cKDTree

    ny, nx = shape
    m = float(clear)
    if nx - 1 - 2 * m <= 0 or ny - 1 - 2 * m <= 0:
        return np.zeros(0), np.zeros(0)
    n_cand = max(30 * n, 3000)
    x = rng.uniform(m, nx - 1 - m, n_cand)
    y = rng.uniform(m, ny - 1 - m, n_cand)
    ok = np.ones(n_cand, bool)
    if mask.any():
        dist = distance_transform_edt(~mask)
        ok &= dist[np.rint(y).astype(int), np.rint(x).astype(int)] > m
    ax, ay = (np.asarray(v, float).ravel() for v in avoid_xy)
    fin = np.isfinite(ax) & np.isfinite(ay)
    if fin.any():
        d, _ = cKDTree(np.c_[ax[fin], ay[fin]]).query(np.c_[x, y])
        ok &= d >= m
    x, y = x[ok], y[ok]
    if x.size == 0:
        return x, y
    # greedy in draw order (reproducible from rng): a candidate is kept when no kept one is
    # within ``clear``; kept points are binned in cells of side ``clear``, so each candidate
    # looks at the 3 x 3 cells around it only
    cell = max(m, 1e-9)
    cells: dict[tuple[int, int], list[int]] = {}
    kept: list[int] = []
    for i in range(x.size):
        cx_, cy_ = int(x[i] // cell), int(y[i] // cell)
        near = False
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in cells.get((cx_ + dx, cy_ + dy), ()):
                    if (x[j] - x[i]) ** 2 + (y[j] - y[i]) ** 2 <= m * m:
                        near = True
                        break
                if near:
                    break
            if near:
                break
        if near:
            continue
        kept.append(i)
        cells.setdefault((cx_, cy_), []).append(i)
        if len(kept) == n:
            break
    k = np.asarray(kept, int)
    return x[k], y[k]


#: exponents ``gamma`` tried by :func:`fit_factors`
GAMMAS = np.linspace(1.0, 2.0, 21)


def fit_factors(groups: list[dict], n_ref: float | None = None) -> tuple[float, float, float]:
    """``(alpha, sigma_s, gamma)`` from per-size ``observed`` (robust spread of the fluxes),
    ``W`` (median white-noise variance) and ``n_aper`` (median): non-negative least squares of
    ``observed^2 = alpha W + sigma_s^2 n_ref^2 (n_aper / n_ref)^gamma`` in relative residuals
    (each size divided by its ``observed^2``), for each ``gamma`` of :data:`GAMMAS`, keeping
    the largest ``gamma`` whose fit is as good as the best one within the spreads' sampling
    noise.  Sizes that cannot separate the terms give
    ``sigma_s = 0``; ``n_ref`` defaults to the first size's ``n_aper``."""
    from scipy.optimize import nnls

    v = np.array([g["observed"] ** 2 for g in groups])
    w = np.array([g["W"] for g in groups])
    na = np.array([g["n_aper"] for g in groups])
    n0 = float(na[0] if n_ref is None else n_ref)
    ratio = na**2 / w
    if len(groups) < 2 or ratio.max() <= 1.5 * ratio.min():
        return float(np.mean(v / w)), 0.0, 2.0  # one size: a factor only
    fits = []
    for gam in GAMMAS[::-1]:  # from 2 down
        q = n0**2 * (na / n0) ** gam
        (alpha, s2), res = nnls(np.c_[w / v, q / v], np.ones_like(v))  # relative residuals
        fits.append((res**2, alpha, s2, gam))
    # the largest gamma that fits within the noise of the spreads (the relative variance of a
    # biweight variance from n Gaussian values is ~ 4 / (1.74 n)): gamma < 2 only when the
    # data ask for it (on white noise every gamma fits and 2 is kept)
    tol = sum(4.0 / (1.74 * max(float(g.get("n_eff", g.get("n", 1000))), 1.0))
              for g in groups)
    best = min(f[0] for f in fits)
    _, alpha, s2, gam = next(f for f in fits if f[0] <= best + tol)
    return float(alpha), float(np.sqrt(max(s2, 0.0))), float(gam)


def calibrate(probe: Callable[[int, np.ndarray, np.ndarray], dict], n_sizes: int,
              shape: tuple[int, int], mask: np.ndarray, avoid_xy: tuple, clear: float, *,
              n_probe: int = 1000, min_probe: int = 50, seed: int = 0,
              name: str = "photometer", required: bool = True,
              anchor: int | None = None, local: bool = True,
              min_clear: float | None = None, neighbours: bool = False,
              image: np.ndarray | None = None,
              target_xy: tuple | None = None, level: bool = False) -> NoiseCalibration:
    """Empty-aperture calibration.

    Parameters
    ----------
    probe : callable ``(k, x, y) -> dict``
        The photometer measuring the frame at positions ``x, y`` with probe size ``k`` (0 ..
        ``n_sizes - 1``), returning arrays ``flux`` (net flux), ``var_white`` (``W``),
        ``n_aper``, ``flags`` and (for ``level``) ``pixel_std``, the local pixel-noise level
        of each position's background estimate.
    n_sizes : int
    shape, mask : the frame's shape and bad-pixel mask (True = bad)
    avoid_xy : (x, y) of every catalogued source
    clear : float
        Probes keep this distance [px] from sources, masked pixels, the border and each other.
    min_clear : float, optional
        Where fewer than ``max(2 min_probe, LOCAL_MIN)`` positions fit at ``clear`` (a
        crowded or small frame), ``clear`` is lowered by the factors :data:`CLEAR_STEPS`, but
        not below ``min_clear`` (the footprint of the photometer's own size); default
        ``clear`` (never lowered).
    n_probe, min_probe : int
        Positions drawn; fewer usable than ``min_probe`` for a size (or fluxes without
        spread: a noise-free frame) drops that size, and no size left gives
        ``status="uncalibrated"`` and a warning (``"skipped"`` when not ``required``).
    seed : int
        Random state of the positions (the same frame gives the same calibration).
    anchor : int, optional
        The probe size of the photometer's own aperture / weights: the fitted model is scaled
        (``alpha`` and ``sigma_s^2`` alike) to match that size's observed spread exactly, the
        other sizes setting the split between the two terms and the trend with size.
    required : bool
        Too few empty positions: True gives a warning and ``status="uncalibrated"`` (the
        photometers then flag UNCALIBRATED); False (``error_calibration="auto"``) a log line
        and ``status="skipped"``.
    local : bool
        Also fit how the noise varies over the frame (:class:`LocalFactor`, from the anchor
        size's positions; at least :data:`LOCAL_MIN` of them).
    neighbours : bool
        With ``local``, also fit how the noise varies with the distance to the nearest
        catalogued source (:class:`NeighbourFactor`); see :func:`position_and_neighbour`.
    image : 2-D array, optional
        The frame's data: the neighbours' brightness (:func:`neighbour_peaks`) then scales
        their distances; without it the plain distance.
    target_xy : (x, y), optional
        The sources it will be applied to: the empty positions are weighted to their
        distances to the nearest catalogued source (:func:`clearance_weights`; not with
        ``neighbours``).  Without it every position counts the same.
    level : bool
        With ``local`` (not with ``neighbours``), fit the local factor as a function of the
        local pixel-noise level first and of the position on what it leaves
        (:func:`~.level.level_and_position`)."""
    from ...stats import weighted_median

    rng = np.random.default_rng([int(seed), 0xE4A7])
    floor = float(clear if min_clear is None else min(min_clear, clear))
    for f in CLEAR_STEPS:  # a crowded frame: closer to the sources, as its sources are
        c = max(float(clear) * f, floor)
        x, y = empty_positions(shape, np.asarray(mask, bool), avoid_xy, c, int(n_probe), rng)
        if x.size >= max(2 * min_probe, LOCAL_MIN) or c <= floor:
            break
    clear = c
    w_all, match = (None, None)
    if target_xy is not None and not neighbours and x.size:
        w_all, match = clearance_weights(x, y, target_xy, avoid_xy)
    groups = []
    for k in range(int(n_sizes)):
        r = probe(k, x, y) if x.size else {"flux": np.zeros(0), "var_white": np.zeros(0),
                                            "n_aper": np.zeros(0),
                                            "flags": np.zeros(0, np.int32)}
        f = np.asarray(r["flux"], float)
        wv = np.asarray(r["var_white"], float)
        na = np.asarray(r["n_aper"], float)
        ok = (np.isfinite(f) & np.isfinite(wv) & (wv > 0) & np.isfinite(na)
              & ((np.asarray(r["flags"]) & _BAD_PROBE) == 0))
        ww = None if w_all is None or not w_all[ok].sum() > 0 else w_all[ok]
        ps = np.asarray(r.get("pixel_std", np.full(f.shape, np.nan)), float)
        if ok.sum() < min_probe:
            continue
        spread = robust_sigma(f[ok], ww)
        if not (np.isfinite(spread) and spread > 0):  # a noise-free or quantised frame
            continue
        med = (np.median if ww is None else (lambda v, ww=ww: weighted_median(v, ww)))
        groups.append({"k": k, "n": int(ok.sum()), "n_aper": float(med(na[ok])),
                       "n_eff": float(ok.sum() if ww is None else ww.sum()**2 / np.sum(ww**2)),
                       "observed": spread, "W": float(med(wv[ok])),
                       "each": (x[ok], y[ok], f[ok], wv[ok], na[ok], ww, ps[ok])})
    if not groups:
        msg = (f"{name}: only {x.size} empty positions at {clear:.1f} px from sources, masks "
               f"and edges (fewer than {min_probe} usable): flux errors are NOT empty-aperture "
               "calibrated" + (" (flag UNCALIBRATED)" if required else ""))
        if required:
            log.warning(msg)
            return NoiseCalibration("uncalibrated", n_probe=int(x.size), message=msg)
        log.info(msg)
        return NoiseCalibration("skipped", n_probe=int(x.size), message=msg)
    anch = [g for g in groups if g["k"] == anchor]
    n0 = anch[0]["n_aper"] if anch else groups[0]["n_aper"]
    alpha, s, gam = fit_factors(groups, n0)

    def model(g: dict) -> float:
        return alpha * g["W"] + s**2 * n0**2 * (g["n_aper"] / n0) ** gam

    if anch and model(anch[0]) > 0:  # exact where most sources are measured: their own size
        scale = anch[0]["observed"] ** 2 / model(anch[0])
        alpha, s = alpha * scale, s * np.sqrt(scale)
    sizes = [{"k": g["k"], "n": g["n"], "n_aper": g["n_aper"], "observed": g["observed"],
              "predicted": float(np.sqrt(g["W"])), "fitted": float(np.sqrt(model(g)))}
             for g in groups]
    lf = nb = lev = None
    if local:  # each anchor position's flux in units of its own calibrated error
        px, py, pf, pw, pn, pww, pps = (anch[0] if anch else groups[0])["each"]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = pf / np.sqrt(alpha * pw + s**2 * n0**2 * (pn / n0) ** gam)
    if local and level and not neighbours:
        lf, lev = level_and_position(px, py, pps, z, rng,
                                     np.random.default_rng([int(seed), 0x1E7E]), w=pww)
    elif local:
        lf, nb = position_and_neighbour(px, py, z, avoid_xy, rng, neighbours,
                                        np.random.default_rng([int(seed), 0x23AB]),
                                        image if NEIGHBOUR_BRIGHTNESS else None, mask,
                                        w=pww)
    msg = (f"{name}: alpha = {alpha:.3f}, sigma_s = {s:.4g} ADU/px, gamma = {gam:.2f} from "
           f"{x.size} empty positions ({clear:.1f} px clear), {len(groups)} sizes")
    if match is not None:
        msg += (f"; weighted to the distances of {match['n_sources']} sources "
                f"(effective {match['n_eff']:.0f} positions)")
    if lf is not None:
        d = lf.as_dict()
        msg += (f"; local factor (k = {lf.k}, shrink {lf.shrink:.2f}): 5-95 % "
                f"{d['q_percentiles'][0]:.2f}-{d['q_percentiles'][2]:.2f}")
    if lev is not None:
        d = lev.as_dict()
        msg += (f"; noise-level factor (shrink {lev.curve.shrink:.2f}): "
                f"{d['q_at_level_percentiles'][0]:.2f} at {d['level_percentiles'][0]:.3g} to "
                f"{d['q_at_level_percentiles'][4]:.2f} at {d['level_percentiles'][4]:.3g} ADU")
    if nb is not None:
        d = nb.as_dict()
        msg += (f"; neighbour factor (shrink {nb.curve.shrink:.2f}): "
                f"{d['q_at_distance_percentiles'][0]:.2f} at {d['distance_percentiles'][0]:.1f} px"
                f" to {d['q_at_distance_percentiles'][4]:.2f} at "
                f"{d['distance_percentiles'][4]:.1f} px")
    return NoiseCalibration("calibrated", alpha, s, int(x.size), gamma=gam, n_ref=float(n0),
                            sizes=sizes, message=msg, local=lf, clearance=float(clear),
                            neighbour=nb, match=match, level=lev)
