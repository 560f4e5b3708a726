"""Photometric zero points from the user's own data: ``mag = zp - 2.5 log10(flux)``.

Where a catalogue magnitude must become a flux in image units (a magnitude prior, injected
sources with catalogue-like magnitudes), skysub takes the zero point, in this order, from

1. the user (``--zeropoint ZP``);
2. a header keyword (``MAGZPT``, ``MAGZERO``, ``PHOTZP``, ``MAGZP``, ``ZEROPT``; configurable);
3. a fit per exposure (:func:`fit_zeropoint`): the robust offset between the catalogue
   magnitudes and the curve-of-growth aperture fluxes of bright, isolated sources.

The result (:class:`ZeroPoint`) says which, with the fit's scatter and its number of sources,
and carries a warning when the fit is poor; callers print and record it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError

#: header keywords that hold a zero point, in the order they are tried
HEADER_KEYS = ("MAGZPT", "MAGZERO", "PHOTZP", "MAGZP", "ZEROPT")


@dataclass(frozen=True)
class ZeroPoint:
    """A zero point and where it came from.

    Attributes
    ----------
    value : float
        ``mag = value - 2.5 log10(flux / image unit)``.
    source : str
        ``"given"``, ``"header:KEY"`` or ``"fit"``.
    scatter : float
        Fit only: robust (1.4826 MAD) scatter of the per-source offsets [mag]; NaN otherwise.
    error : float
        Fit only: standard error of ``value`` [mag] (scatter / sqrt(n)); NaN otherwise.
    n : int
        Fit only: sources used.
    warning : str
        Empty, or why the value should not be trusted (few sources, large scatter).
    """

    value: float
    source: str
    scatter: float = float("nan")
    error: float = float("nan")
    n: int = 0
    warning: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flux(self, mag: Any) -> np.ndarray:
        """Fluxes in image units of catalogue magnitudes (NaN where mag is not finite)."""
        m = np.asarray(mag, float)
        with np.errstate(invalid="ignore", over="ignore"):
            return np.where(np.isfinite(m), 10.0 ** (-0.4 * (m - self.value)), np.nan)

    def describe(self) -> str:
        s = f"zero point {self.value:.3f} ({self.source}"
        if self.source == "fit":
            s += f", {self.n} sources, scatter {self.scatter:.3f} mag, error {self.error:.3f}"
        s += ")"
        return s + (f"; WARNING: {self.warning}" if self.warning else "")


def header_zeropoint(header: Any, keys: tuple[str, ...] = HEADER_KEYS) -> ZeroPoint | None:
    """The zero point a FITS header states (the first of ``keys`` present and finite), or
    None."""
    if header is None:
        return None
    for k in keys:
        if k in header:
            try:
                v = float(header[k])
            except (TypeError, ValueError):
                raise InputError(f"header keyword {k} = {header[k]!r} is not a number (a zero "
                                 "point is expected)") from None
            if np.isfinite(v):
                return ZeroPoint(v, f"header:{k}")
    return None


def fit_zeropoint(image: Any, catalog: Any, *, radius: float | None = None,
                  min_snr: float = 20.0, max_sources: int = 500, max_scatter: float = 0.15,
                  min_sources: int = 5, relax: bool = True) -> ZeroPoint:
    """Fit ``zp`` so that ``mag = zp - 2.5 log10(flux)`` for the catalogue's bright, isolated
    sources (:func:`_fit_zeropoint`).  With ``relax``, a frame too small or crowded for the
    strict criteria gets a second try with relaxed ones (an inner aperture of 4 px or 3 x the
    median r50, SNR >= 10, neighbours beyond the outer annulus + one inner radius, the flux
    growing < 10 % between the apertures); such a fit says so in its warning."""
    try:
        return _fit_zeropoint(image, catalog, radius=radius, min_snr=min_snr,
                              max_sources=max_sources, max_scatter=max_scatter,
                              min_sources=min_sources)
    except InputError:
        if not relax:
            raise
    if radius is None:  # compact sources in a crowded frame: a 4 px inner aperture at least
        radius = 4.0
        if catalog is not None and "r50" in getattr(catalog, "colnames", ()):
            r50 = np.asarray(np.ma.filled(np.ma.asarray(catalog["r50"], float), np.nan), float)
            if np.isfinite(r50).any():
                radius = max(radius, 3.0 * float(np.nanmedian(r50)))
    zp = _fit_zeropoint(image, catalog, radius=radius, min_snr=min(min_snr, 10.0),
                        max_sources=max_sources, max_scatter=max_scatter,
                        min_sources=min_sources, isolation=1.0, growth=0.10)
    why = "relaxed criteria (too few bright isolated sources for the strict ones)"
    return ZeroPoint(zp.value, zp.source, scatter=zp.scatter, error=zp.error, n=zp.n,
                     warning="; ".join(w for w in (why, zp.warning) if w))


def _fit_zeropoint(image: Any, catalog: Any, *, radius: float | None = None,
                   min_snr: float = 20.0, max_sources: int = 500, max_scatter: float = 0.15,
                   min_sources: int = 5, isolation: float = 2.0, growth: float = 0.03
                   ) -> ZeroPoint:
    """Fit ``zp`` so that ``mag = zp - 2.5 log10(flux)`` for the catalogue's bright, isolated
    sources.

    Parameters
    ----------
    image : Image or 2-D array
    catalog : Table with ``x, y, mag`` (and optionally ``r50``) for this image
    radius : float, optional
        Inner aperture radius [px] of the curve of growth (default: 8 px, or 3 x the median
        catalogue r50 if larger).  Fluxes are taken in an aperture 1.5x larger, and a source is
        used only when its flux grows by less than 3 % from the inner to the outer aperture (its
        light is in: the catalogue magnitudes are taken to be total).
    min_snr : float
        Smallest flux SNR of a source used.
    max_sources : int
        The brightest this many usable sources are used.
    max_scatter : float
        A robust scatter above this [mag] sets a warning (catalogue and image disagree, or
        the magnitudes are not total).
    min_sources : int
        Fewer usable sources raise InputError (no fit possible).

    Returns
    -------
    ZeroPoint (source ``"fit"``)
    """
    from scipy.spatial import cKDTree

    from ..background.annulus import AnnulusBackground
    from ..image import as_image
    from .aperture import AperturePhotometer

    img = as_image(image)
    if catalog is None or "mag" not in getattr(catalog, "colnames", ()):
        raise InputError("a zero-point fit needs catalogue magnitudes (column mag); give "
                         "--zeropoint ZP or a header keyword (" + ", ".join(HEADER_KEYS) + ")")
    x = np.asarray(catalog["x"], float)
    y = np.asarray(catalog["y"], float)
    mag = np.asarray(np.ma.filled(np.ma.asarray(catalog["mag"], float), np.nan), float)
    r0 = 8.0 if radius is None else float(radius)
    if radius is None and "r50" in catalog.colnames:
        r50 = np.asarray(np.ma.filled(np.ma.asarray(catalog["r50"], float), np.nan), float)
        if np.isfinite(r50).any():
            r0 = max(r0, 3.0 * float(np.nanmedian(r50)))
    r1 = 1.5 * r0
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(mag)
    if ok.sum() >= 2:  # isolated: no catalogued neighbour within the outer annulus
        pts = np.column_stack([x[ok], y[ok]])
        d, _ = cKDTree(pts).query(pts, k=2)
        iso = np.zeros(len(x), bool)
        iso[np.flatnonzero(ok)] = d[:, 1] > r1 + isolation * r0
        ok &= iso
    idx = np.flatnonzero(ok)
    if idx.size < min_sources:
        raise InputError(f"zero-point fit: only {idx.size} isolated catalogued sources with a "
                         f"magnitude on {img.name} (need {min_sources}); give --zeropoint ZP")
    bkg = AnnulusBackground(r1 + 3.0, r1 + 3.0 + max(10.0, r0), statistic="median")
    res = {}
    for r in (r0, r1):
        # the white-noise errors select the bright sources; the empty-aperture calibration
        # would take its empty positions away from these few isolated sources only
        phot = AperturePhotometer(r, background=bkg, error_calibration="none")
        res[r] = phot.measure(img, x[idx], y[idx])
    f0, f1 = np.asarray(res[r0].flux, float), np.asarray(res[r1].flux, float)
    e1 = np.asarray(res[r1].flux_err, float)
    flags = np.asarray(res[r1].flags) | np.asarray(res[r0].flags)
    with np.errstate(invalid="ignore", divide="ignore"):
        good = (flags == 0) & (f1 > 0) & (f1 / e1 >= min_snr) & (np.abs(f1 / f0 - 1) < growth)
    if good.sum() < min_sources:
        raise InputError(f"zero-point fit: only {int(good.sum())} bright (SNR >= {min_snr:g}), "
                         f"unflagged sources with converged aperture fluxes on {img.name} "
                         f"(need {min_sources}); give --zeropoint ZP")
    sel = np.flatnonzero(good)
    sel = sel[np.argsort(-f1[sel])][:max_sources]
    zp_i = mag[idx][sel] + 2.5 * np.log10(f1[sel])
    sig_all = 1.0857 * e1[sel] / f1[sel]  # each offset's photometric error [mag]
    keep = np.ones(zp_i.size, bool)
    for _ in range(5):  # 3-sigma clipped median of the offsets (sigma: scatter + own error)
        med = float(np.median(zp_i[keep]))
        mad = 1.4826 * float(np.median(np.abs(zp_i[keep] - med)))
        new = np.abs(zp_i - med) <= 3 * np.sqrt(max(mad, 1e-3) ** 2 + sig_all ** 2)
        if np.array_equal(new, keep):
            break
        keep = new
    n = int(keep.sum())
    med = float(np.median(zp_i[keep]))
    scatter = 1.4826 * float(np.median(np.abs(zp_i[keep] - med)))
    # inverse-variance weights: each offset's photometric error plus the intrinsic scatter
    # beyond it; the error is the larger of the weighted mean's and the robust scatter's, so a
    # few sources whose offsets agree by chance do not report less than their photon noise
    sig = sig_all[keep]
    s_int2 = max(scatter ** 2 - float(np.median(sig ** 2)), 0.0)
    w = 1.0 / (sig ** 2 + s_int2)
    value = float(np.sum(w * zp_i[keep]) / np.sum(w))
    error = max(float(np.sqrt(1.0 / np.sum(w))), 1.2533 * scatter / np.sqrt(n))
    warn = []
    if n < 10:
        warn.append(f"only {n} sources")
    if scatter > max_scatter:
        warn.append(f"scatter {scatter:.2f} mag > {max_scatter:g}: catalogue magnitudes and "
                    "image fluxes disagree (another band, or not total magnitudes?)")
    return ZeroPoint(value, "fit", scatter=scatter, error=error, n=n, warning="; ".join(warn))


def resolve_zeropoint(image: Any, catalog: Any = None, *, given: float | None = None,
                      header_keys: tuple[str, ...] = HEADER_KEYS, **fit_kwargs: Any
                      ) -> ZeroPoint:
    """The zero point of one exposure: ``given``, else the header's, else a fit (see the
    module docstring)."""
    if given is not None:
        v = float(given)
        if not np.isfinite(v):
            raise InputError(f"--zeropoint must be a finite number, got {given!r}")
        return ZeroPoint(v, "given")
    hz = header_zeropoint(getattr(image, "header", None), header_keys)
    if hz is not None:
        return hz
    return fit_zeropoint(image, catalog, **fit_kwargs)
