"""Artificial sources of known flux added to real images (injection–recovery tests).

This is how astronomers test photometry on their own frames: PSF stars or PSF-convolved Sérsic
galaxies of known flux are placed at empty positions (away from catalogued sources, masked
pixels, the edges and each other) or on purpose near catalogued sources, any method is run on
the result, and its measurements are compared with the truth.  Two truths are recorded for
every injected source (see MEASURING.md):

* the **injected flux** ``flux_true`` (total) and ``flux_true_aper`` (the light of the noise-free
  model inside the scoring aperture, with the aperture photometer's exact pixel weights);
* the **photometric background truth** ``bkg_true``: the mean of the frame's *own* pixels inside
  the aperture *before* the injection, with its sampling ``floor`` (pixel scatter in the aperture
  over sqrt(N)).  Subtracting exactly ``bkg_true`` recovers ``flux_true_aper`` exactly.

Nothing here knows any estimator: :mod:`skysub.inject.recovery` runs the methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from astropy.table import Table

from ..errors import InputError
from ..image import Image, as_image

KINDS = ("star", "galaxy")

#: catalogue shape-measurement scatter applied with ``shape_scatter=True``: 10 % in r50, 0.05
#: in b/a, 10 degrees in the angle, 0.3 in the Sérsic index (a typical detection pipeline).
SHAPE_SCATTER = {"r50": 0.10, "ba": 0.05, "theta": 10.0, "sersic_n": 0.3}
#: the catalogue's shape-error columns (1 sigma; r50_err in px, theta_err in degrees)
SHAPE_ERROR_COLUMNS = ("r50_err", "ba_err", "theta_err", "sersic_n_err")


@dataclass(frozen=True)
class InjectionSettings:
    """What to inject and where.

    Attributes
    ----------
    kind : {"star", "galaxy"}
        PSF point sources, or PSF-convolved Sérsic profiles.
    n_per_image : int
        Sources asked for per image and realisation (fewer when the frame has no room: the
        truth table says how many were placed).
    snr : (float, float)
        Range of the background-limited aperture SNR, drawn log-uniformly:
        ``snr = flux_true / (sky_sigma * sqrt(pi * radius**2))``.
    radius : float
        Scoring aperture radius [px] (SNR, ``bkg_true``, ``flux_true_aper``).
    psf_fwhm : float
        FWHM [px] of the PSF when no ``psf`` array is given.
    psf_kind : {"gaussian", "moffat"}
        Profile of that PSF (Moffat with beta = 3 has wings).
    min_separation : float
        Smallest distance [px] of an injected source from every catalogued source and from
        every other injected one (so that one never falls inside another's annulus).
    edge_margin : float
        Smallest distance [px] from the image border.
    clear_radius : float or None
        No masked pixel within this distance [px] (default ``radius + 2``).
    near : (float, float) or None
        Place each source at a distance in this range from a random catalogued source instead
        (a blending test); ``min_separation`` then applies between injected sources only.
    r50, sersic_n, ba : (float, float)
        Galaxy ranges: half-light radius [px] (log-uniform), Sérsic index and axis ratio
        (uniform); the angle is uniform in [0, 180) degrees.
    poisson : bool
        Add the injected light's own shot noise (through the image's gain).
    zeropoint : float or None
        ``mag = zeropoint - 2.5 log10(flux_true)`` for the catalogue rows of injected sources;
        None: the frame's own (:func:`skysub.photometry.zeropoint.resolve_zeropoint`: header
        keyword, else a fit to the catalogue's magnitudes), else 25.
    shape_scatter : bool
        Give the photometers catalogue shapes with measurement scatter (:data:`SHAPE_SCATTER`)
        instead of the exact ones (the truth keeps the exact ones), with their 1-sigma errors
        in the catalogue's :data:`SHAPE_ERROR_COLUMNS` (which the optimal photometer
        propagates into its flux errors).
    """

    kind: str = "star"
    n_per_image: int = 100
    snr: tuple[float, float] = (5.0, 500.0)
    radius: float = 8.0
    psf_fwhm: float = 3.0
    psf_kind: str = "gaussian"
    min_separation: float = 50.0
    edge_margin: float = 12.0
    clear_radius: float | None = None
    near: tuple[float, float] | None = None
    r50: tuple[float, float] = (1.0, 4.0)
    sersic_n: tuple[float, float] = (0.8, 4.0)
    ba: tuple[float, float] = (0.4, 1.0)
    poisson: bool = True
    zeropoint: float | None = None
    shape_scatter: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"injection kind must be one of {KINDS}, got {self.kind!r}")
        if int(self.n_per_image) < 1:
            raise InputError(f"n_per_image must be >= 1, got {self.n_per_image!r}")
        lo, hi = (float(v) for v in self.snr)
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
            raise InputError(f"snr range must be 0 < low <= high, got {self.snr!r}")
        for name in ("radius", "psf_fwhm"):
            v = float(getattr(self, name))
            if not (np.isfinite(v) and v > 0):
                raise InputError(f"{name} must be positive, got {v!r}")
        if self.psf_kind not in ("gaussian", "moffat"):
            raise InputError(f"psf_kind must be 'gaussian' or 'moffat', got {self.psf_kind!r}")
        for name in ("min_separation", "edge_margin"):
            v = float(getattr(self, name))
            if not (np.isfinite(v) and v >= 0):
                raise InputError(f"{name} must be >= 0, got {v!r}")
        if self.near is not None:
            a, b = (float(v) for v in self.near)
            if not (0 <= a <= b):
                raise InputError(f"near range must be 0 <= low <= high, got {self.near!r}")
        for name, (a, b), lo_ok in (("r50", self.r50, 0.0), ("sersic_n", self.sersic_n, 0.1),
                                    ("ba", self.ba, 0.0)):
            if not (float(a) > lo_ok - 1e-12 and float(a) <= float(b)):
                raise InputError(f"{name} range must be increasing and > {lo_ok}, got {(a, b)}")


def sky_sigma(image: Image) -> float:
    """Per-pixel sky noise of a frame: the median of a SExtractor-style mesh RMS map
    (3-sigma-clipped standard deviation in 32 px boxes, 3 x 3 median filter).

    Unlike neighbouring-pixel differences this keeps the full per-pixel noise of frames whose
    noise is correlated (resampled mosaics, smoothed plates); sources are clipped.
    """
    from ..background.mesh import MeshBackground

    ny, nx = image.shape
    box = int(max(8, min(32, ny // 4, nx // 4)))
    if (~image.mask).sum() < 100 or min(ny, nx) < 16:
        raise InputError(f"{image.name}: too few unmasked pixels ({(~image.mask).sum()}) to "
                         "measure the sky noise; injection needs frames of at least 16 x 16 px")
    _, rms = MeshBackground(box_size=box, filter_size=3).background_map(image)
    rms = np.asarray(rms, float)[~image.mask]
    rms = rms[np.isfinite(rms) & (rms > 0)]
    sig = float(np.median(rms)) if rms.size else float("nan")
    if not (np.isfinite(sig) and sig > 0):
        raise InputError(f"{image.name}: the sky noise measures {sig!r} (a constant or "
                         "quantised frame?); injection needs a noisy sky")
    return sig


def frame_zeropoint(image: Image, catalog: Table | None):
    """The frame's zero point for injected magnitudes: its header's, else a fit to the
    catalogue's magnitudes, else 25 (source ``"default"``; nothing in the catalogue to tie to)."""
    from ..photometry.zeropoint import ZeroPoint, header_zeropoint, resolve_zeropoint

    if catalog is not None and "mag" in catalog.colnames:
        try:
            return resolve_zeropoint(image, catalog)
        except InputError as exc:
            return ZeroPoint(25.0, "default", warning=str(exc))
    return header_zeropoint(image.header) or ZeroPoint(25.0, "default")


def make_psf(settings: InjectionSettings, psf: np.ndarray | None = None) -> np.ndarray:
    """The unit-sum PSF used for injection (the given array, normalised, or the configured
    Gaussian / Moffat)."""
    from ..simulate.psf import gaussian_psf, moffat_psf

    if psf is not None:
        p = np.asarray(psf, float)
        if p.ndim != 2 or p.shape[0] % 2 == 0 or p.shape[1] % 2 == 0 or p.shape[0] != p.shape[1]:
            raise InputError(f"injection PSF must be a square 2-D array of odd size, got shape "
                             f"{p.shape}")
        s = p.sum()
        if not (np.isfinite(s) and s > 0):
            raise InputError("injection PSF must have a positive finite sum")
        return p / s
    fwhm = float(settings.psf_fwhm)
    size = int(2 * np.ceil(4 * fwhm) + 1)
    if settings.psf_kind == "moffat":
        return moffat_psf(size, fwhm, 3.0)
    return gaussian_psf(size, fwhm)


def _distance_to_mask(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        return np.full(mask.shape, np.inf)
    return distance_transform_edt(~mask)


def draw_positions(image: Image, cat_xy: tuple[np.ndarray, np.ndarray], n: int,
                   settings: InjectionSettings, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` positions that satisfy the settings' separation, edge and mask rules.

    Candidates are drawn uniformly (or around catalogued sources with ``near``) and accepted
    in turn, so the result is reproducible from ``rng``; fewer than ``n`` come back when the
    frame has no more room.
    """
    from scipy.spatial import cKDTree

    ny, nx = image.shape
    m = float(settings.edge_margin)
    if nx - 1 - 2 * m <= 0 or ny - 1 - 2 * m <= 0:
        return np.zeros(0), np.zeros(0)
    cx, cy = (np.asarray(v, float) for v in cat_xy)
    fin = np.isfinite(cx) & np.isfinite(cy)
    cx, cy = cx[fin], cy[fin]
    n_cand = max(50 * n, 2000)
    if settings.near is not None:
        if cx.size == 0:
            raise InputError("near= placement needs catalogued sources on the image")
        k = rng.integers(0, cx.size, n_cand)
        r = rng.uniform(settings.near[0], settings.near[1], n_cand)
        phi = rng.uniform(0, 2 * np.pi, n_cand)
        x = cx[k] + r * np.cos(phi)
        y = cy[k] + r * np.sin(phi)
    else:
        x = rng.uniform(m, nx - 1 - m, n_cand)
        y = rng.uniform(m, ny - 1 - m, n_cand)
    ok = (x >= m) & (x <= nx - 1 - m) & (y >= m) & (y <= ny - 1 - m)
    clear = settings.clear_radius if settings.clear_radius is not None else settings.radius + 2
    dist = _distance_to_mask(image.mask)
    xi = np.clip(np.rint(x).astype(int), 0, nx - 1)
    yi = np.clip(np.rint(y).astype(int), 0, ny - 1)
    ok &= dist[yi, xi] > clear
    sep = float(settings.min_separation)
    if settings.near is None and cx.size and sep > 0:
        d, _ = cKDTree(np.column_stack([cx, cy])).query(np.column_stack([x, y]))
        ok &= d >= sep
    x, y = x[ok], y[ok]
    keep: list[int] = []
    taken = np.zeros((0, 2))
    for i in range(x.size):  # greedy, in draw order (reproducible); n is small
        if taken.shape[0] and sep > 0:
            if np.min(np.hypot(taken[:, 0] - x[i], taken[:, 1] - y[i])) < sep:
                continue
        keep.append(i)
        taken = np.vstack([taken, [x[i], y[i]]])
        if len(keep) == n:
            break
    keep_a = np.asarray(keep, int)
    return x[keep_a], y[keep_a]


def _stamp_size(settings: InjectionSettings, psf: np.ndarray, r50: np.ndarray) -> int:
    half = psf.shape[0] // 2
    if settings.kind == "galaxy" and r50.size:
        half = max(half, int(np.ceil(6 * float(np.max(r50)))) + half // 2)
    half = max(half, int(np.ceil(settings.radius)) + 3)
    return 2 * min(half, 64) + 1


def render(settings: InjectionSettings, psf: np.ndarray, flux: np.ndarray, dx: np.ndarray,
           dy: np.ndarray, shapes: dict[str, np.ndarray]) -> np.ndarray:
    """Noise-free stamps (m, s, s) of the sources, centred at ``s // 2 + (dx, dy)``."""
    from ..photometry.aperture import shift_psf
    from ..simulate.profiles import sersic_stamps

    size = _stamp_size(settings, psf, shapes.get("r50", np.zeros(0)))
    if flux.size == 0:
        return np.zeros((0, size, size))
    if settings.kind == "star":
        return shift_psf(psf, size, dx, dy) * flux[:, None, None]
    return sersic_stamps(size, flux, shapes["r50"], shapes["sersic_n"], ba=shapes["ba"],
                         theta=shapes["theta"], dx=dx, dy=dy, psf=psf)


def add_stamps(canvas: np.ndarray, stamps: np.ndarray, xi: np.ndarray, yi: np.ndarray) -> None:
    """Add stamps (m, s, s) centred on integer pixels ``(xi, yi)`` into ``canvas`` in place,
    clipped at the borders."""
    ny, nx = canvas.shape
    h = stamps.shape[-1] // 2
    for k in range(stamps.shape[0]):
        x0, y0 = int(xi[k]) - h, int(yi[k]) - h
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + 2 * h + 1, nx), min(y0 + 2 * h + 1, ny)
        if xa >= xb or ya >= yb:
            continue
        canvas[ya:yb, xa:xb] += stamps[k, ya - y0:yb - y0, xa - x0:xb - x0]


class _ZeroBackground:
    """A background of exactly zero: lets the aperture photometer sum pixels as they are."""

    name = "zero"

    def estimate(self, image, x, y, *, mask=None, mag=None, neighbours=None):
        from ..background.base import BackgroundResult

        n = np.asarray(x).shape[0]
        z = np.zeros(n)
        return BackgroundResult(bkg=z, bkg_err=z.copy(), pixel_std=np.full(n, np.nan),
                                n_pix=np.zeros(n, int), flags=np.zeros(n, np.int32))


def aperture_sums(image: Image, x: np.ndarray, y: np.ndarray, radius: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Exact-overlap aperture sums (and areas) of the image's pixels as they are (the aperture
    photometer's weights, no background)."""
    from ..photometry.aperture import AperturePhotometer

    phot = AperturePhotometer(radius, background=_ZeroBackground(), max_bad_fraction=0.999,
                              error_calibration="none")
    res = phot.measure(image, x, y)
    return np.asarray(res.flux, float), np.asarray(res.n_aper, float)


def _pixel_std_in_aperture(image: Image, x: np.ndarray, y: np.ndarray, radius: float
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Std and count of the unmasked pixels whose centres lie within ``radius``."""
    R = int(np.ceil(radius)) + 1
    off = np.arange(-R, R + 1)
    dy, dx = np.meshgrid(off, off, indexing="ij")
    dx, dy = dx.ravel(), dy.ravel()
    xi = np.rint(x).astype(int)
    yi = np.rint(y).astype(int)
    px = xi[:, None] + dx[None, :]
    py = yi[:, None] + dy[None, :]
    ny, nx = image.shape
    inside = (np.hypot(px - x[:, None], py - y[:, None]) <= radius)
    inside &= (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    pxc, pyc = np.clip(px, 0, nx - 1), np.clip(py, 0, ny - 1)
    inside &= ~image.mask[pyc, pxc]
    vals = np.where(inside, image.data[pyc, pxc], np.nan)
    n = inside.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.nanstd(vals, axis=1, ddof=1) if vals.shape[1] > 1 else np.full(len(x), np.nan)
    return np.where(n > 1, std, np.nan), n


@dataclass
class Injection:
    """One injected copy of an image.

    Attributes
    ----------
    image : Image
        The frame with the sources added (mask, header, WCS and metadata of the original).
    truth : astropy.table.Table
        One row per injected source: ``id, x, y, flux_true, flux_true_aper, snr, bkg_true,
        floor, sky_sigma, mag`` (and ``r50, sersic_n, ba, theta`` for galaxies), ``image``,
        ``realisation``.
    catalog : astropy.table.Table
        The rows the methods see for the injected sources (``id, x, y, mag`` and, for galaxies,
        the catalogue shapes, with measurement scatter when asked for).
    """

    image: Image
    truth: Table
    catalog: Table


def inject_sources(image: Image | np.ndarray, catalog: Table | None,
                   settings: InjectionSettings | None = None, *, psf: np.ndarray | None = None,
                   seed: int = 0, realisation: int = 0, id_start: int | None = None,
                   noise: float | None = None) -> Injection:
    """Add artificial sources of known flux to a copy of ``image``.

    Parameters
    ----------
    image : Image or 2-D array
        The real frame (never modified).
    catalog : Table or None
        Its catalogued sources (columns ``x, y``, as :func:`skysub.io.catalog_for_image`
        gives): injected sources keep ``settings.min_separation`` from them.
    settings : InjectionSettings
    psf : 2-D array, optional
        The frame's PSF (default: the settings' Gaussian/Moffat of ``psf_fwhm``).
    seed, realisation : int
        The random state is ``(seed, realisation)``: the same pair gives the same injection.
    id_start : int, optional
        First id of the injected sources (default: above the catalogue's largest integer id,
        or 1,000,000,000).
    noise : float, optional
        The frame's sky noise per pixel, if already measured (default: :func:`sky_sigma`).

    Returns
    -------
    Injection
    """
    settings = settings or InjectionSettings()
    img = as_image(image)
    if settings.zeropoint is None:
        settings = replace(settings, zeropoint=frame_zeropoint(img, catalog).value)
    rng = np.random.default_rng([int(seed), int(realisation), 0x1A7EC7])
    cat_xy = ((np.asarray(catalog["x"], float), np.asarray(catalog["y"], float))
              if catalog is not None and len(catalog) else (np.zeros(0), np.zeros(0)))
    x, y = draw_positions(img, cat_xy, int(settings.n_per_image), settings, rng)
    m = x.size
    sigma = sky_sigma(img) if noise is None else float(noise)
    r = float(settings.radius)
    lo, hi = settings.snr
    snr = np.exp(rng.uniform(np.log(lo), np.log(hi), m))
    flux = snr * sigma * np.sqrt(np.pi * r * r)
    shapes: dict[str, np.ndarray] = {}
    if settings.kind == "galaxy":
        shapes["r50"] = np.exp(rng.uniform(np.log(settings.r50[0]), np.log(settings.r50[1]), m))
        shapes["sersic_n"] = rng.uniform(*settings.sersic_n, m)
        shapes["ba"] = rng.uniform(*settings.ba, m)
        shapes["theta"] = rng.uniform(0.0, 180.0, m)
    p = make_psf(settings, psf)
    xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
    stamps = render(settings, p, flux, x - xi, y - yi, shapes)
    model = np.zeros(img.shape)
    add_stamps(model, stamps, xi, yi)
    noisy = model
    if settings.poisson:
        gain = img.meta.source_gain  # no gain in the header: no shot noise (as measured)
        noisy = model + rng.normal(0.0, 1.0, model.shape) * np.sqrt(np.clip(model, 0, None)
                                                                    / gain)
    data = img.data + noisy
    new = replace(img, data=data, mask=img.mask.copy())
    # truths (MEASURING.md): injected light in the aperture; the frame's own pixels there
    flux_aper, area = aperture_sums(img.with_data(model), x, y, r)
    own_sum, _ = aperture_sums(img, x, y, r)
    std, npx = _pixel_std_in_aperture(img, x, y, r)
    if id_start is None:
        ids = np.asarray(catalog["id"]) if catalog is not None and len(catalog) else np.zeros(0)
        try:
            id_start = int(np.max(ids.astype(np.int64))) + 1 if ids.size else 1_000_000_000
        except (TypeError, ValueError):
            id_start = 1_000_000_000
        id_start = max(id_start, 1_000_000_000)
    ids = id_start + realisation * 100_000 + np.arange(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = settings.zeropoint - 2.5 * np.log10(flux)
    truth = Table()
    truth["image"] = np.full(m, img.name, dtype=object).astype(str)
    truth["realisation"] = np.full(m, int(realisation))
    truth["id"] = ids.astype(np.int64)
    truth["x"] = x
    truth["y"] = y
    truth["flux_true"] = flux
    truth["flux_true_aper"] = flux_aper
    truth["snr"] = snr
    truth["bkg_true"] = own_sum / area
    truth["floor"] = std / np.sqrt(np.maximum(npx, 1))
    truth["sky_sigma"] = np.full(m, sigma)
    truth["mag"] = mag
    for k, v in shapes.items():
        truth[k] = v
    truth.meta["kind"] = settings.kind
    truth.meta["radius"] = r
    truth.meta["zeropoint"] = float(settings.zeropoint)
    cat = Table()
    cat["id"] = truth["id"]
    cat["x"] = x
    cat["y"] = y
    cat["mag"] = mag
    if shapes:
        cs = {k: v.copy() for k, v in shapes.items()}
        if settings.shape_scatter:
            s = SHAPE_SCATTER
            cs["r50"] = cs["r50"] * np.exp(rng.normal(0, s["r50"], m))
            cs["ba"] = np.clip(cs["ba"] + rng.normal(0, s["ba"], m), 0.05, 1.0)
            cs["theta"] = (cs["theta"] + rng.normal(0, s["theta"], m)) % 180.0
            cs["sersic_n"] = np.clip(cs["sersic_n"] + rng.normal(0, s["sersic_n"], m), 0.3, 8.0)
            # the catalogue states its errors, as a detection pipeline's would
            cs["r50_err"] = s["r50"] * cs["r50"]
            cs["ba_err"] = np.full(m, s["ba"])
            cs["theta_err"] = np.full(m, s["theta"])
            cs["sersic_n_err"] = np.full(m, s["sersic_n"])
        for k, v in cs.items():
            cat[k] = v
    return Injection(image=new, truth=truth, catalog=cat)


def merged_catalog(original: Table | None, injected: Table) -> Table:
    """The catalogue the methods see: the frame's own rows (``id, x, y`` and any ``mag, r50,
    sersic_n, ba, theta`` and shape errors ``r50_err, ba_err, theta_err, sersic_n_err``)
    followed by the injected rows; a column only one side has is NaN
    (point source / no magnitude) on the other."""
    cols = ["id", "x", "y", "mag", "r50", "sersic_n", "ba", "theta", *SHAPE_ERROR_COLUMNS]
    n0 = 0 if original is None else len(original)
    out = Table()
    have = [c for c in cols if (original is not None and c in original.colnames)
            or c in injected.colnames]
    for c in have:
        parts = []
        for t, n in ((original, n0), (injected, len(injected))):
            if t is not None and c in t.colnames:
                v = np.asarray(np.ma.filled(np.ma.asarray(t[c]), np.nan)
                               if c != "id" else t[c])
            else:
                v = np.full(n, np.nan)
            parts.append(v)
        if c == "id":
            out[c] = np.concatenate([np.asarray(p).astype(str) if any(
                np.asarray(q).dtype.kind in "US" for q in parts) else np.asarray(p)
                for p in parts])
        else:
            out[c] = np.concatenate([np.asarray(p, float) for p in parts])
    if "r50" not in out.colnames:  # no shapes anywhere: all point sources (PSF models)
        out["r50"] = np.full(len(out), np.nan)
    gal = np.isfinite(out["r50"]) & (out["r50"] > 0)
    if "sersic_n" not in out.colnames:
        out["sersic_n"] = np.where(gal, 1.0, np.nan)
    else:
        out["sersic_n"] = np.where(gal & ~np.isfinite(out["sersic_n"]), 1.0, out["sersic_n"])
    return out


def describe(settings: InjectionSettings) -> dict[str, Any]:
    """The settings as plain data (for tables' metadata and reports)."""
    from dataclasses import asdict

    d = asdict(settings)
    d.pop("extra", None)
    return d
