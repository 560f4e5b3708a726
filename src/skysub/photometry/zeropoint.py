"""Photometric zero points from the user's own data: ``mag = zp - 2.5 log10(flux)``.

Where a catalogue magnitude must become a flux in image units (a magnitude prior, injected
sources with catalogue-like magnitudes), skysub takes the zero point, in this order, from

1. the user (``--zeropoint ZP``);
2. a header keyword (``MAGZPT``, ``MAGZERO``, ``PHOTZP``, ``MAGZP``, ``ZEROPT``; configurable);
3. a fit per exposure (:func:`fit_zeropoint`): the robust offset between the catalogue
   magnitudes and the curve-of-growth aperture fluxes of bright, isolated sources -- strict
   criteria, else relaxed ones, else (deep or crowded frames) every catalogued source with its
   catalogued neighbours masked (:mod:`.zeropoint_crowded`);
4. HST-style photometric keywords (:func:`photflam_zeropoint`: ``PHOTFLAM`` with ``PHOTPLAM``
   for AB, ``PHOTZPT`` for ST; rate or total units from ``BUNIT``), in the system the caller
   names (default AB), with a warning naming it.

The fit comes before PHOTFLAM because it ties the catalogue's own magnitudes (whatever their
band and system) to the image; PHOTFLAM needs the system assumed.  Where both exist and the
fit differs from PHOTFLAM's AB and ST zero points by more than 0.3 mag, the fit warns.

The result (:class:`ZeroPoint`) says which, with the fit's scatter and its number of sources,
and carries a warning when the fit is poor or not strict; callers print and record it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError

#: header keywords that hold a zero point, in the order they are tried
HEADER_KEYS = ("MAGZPT", "MAGZERO", "PHOTZP", "MAGZP", "ZEROPT")
#: largest flux growth between the apertures of the neighbour-masked fit (third attempt)
MASKED_GROWTH = 0.05
#: systematic error [mag] added in quadrature to the neighbour-masked fit's error: on
#: simulated deep fields (tests/test_zeropoint.py::_deep_field, seeds 0-19) its offsets ran
#: +0.016 mag high on average (scatter 0.013 between frames; the same with 3000 uncatalogued
#: faint sources per 512 x 1024 px), ~1 sigma of its own statistical error (most likely the
#: light of neighbours beyond their discs; not established)
MASKED_SYSTEMATIC = 0.02
#: photometric systems of a PHOTFLAM-derived zero point (the catalogue magnitudes' system)
PHOT_SYSTEMS = ("AB", "ST")
#: STmag zero point of PHOTFLAM (erg/cm^2/s/A) when the header has no PHOTZPT
ST_ZEROPOINT = -21.10
#: fit and PHOTFLAM zero points further apart than this [mag] in both systems warn
PHOTFLAM_TOLERANCE = 0.3
#: pixel units that are totals (not per second): a PHOTFLAM zero point takes the exposure time
_TOTAL_UNITS = ("counts", "count", "dn", "adu", "electrons", "electron", "e-", "e")


@dataclass(frozen=True)
class ZeroPoint:
    """A zero point and where it came from.

    Attributes
    ----------
    value : float
        ``mag = value - 2.5 log10(flux / image unit)``.
    source : str
        ``"given"``, ``"header:KEY"``, ``"fit"`` or ``"header:PHOTFLAM (AB)"`` / ``(ST)``.
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


def _column(catalog: Any, name: str) -> np.ndarray:
    """The catalogue column ``name`` as floats, masked entries NaN."""
    return np.asarray(np.ma.filled(np.ma.asarray(catalog[name], float), np.nan), float)


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
                  min_sources: int = 5, relax: bool = True, masked: bool = True
                  ) -> ZeroPoint:
    """Fit ``zp`` so that ``mag = zp - 2.5 log10(flux)`` for the catalogue's bright, isolated
    sources (:func:`_fit_zeropoint`).  With ``relax``, a frame too small or crowded for the
    strict criteria gets a second try with relaxed ones (an inner aperture of 4 px or 3 x the
    median r50, SNR >= 10, neighbours beyond the outer annulus + one inner radius, the flux
    growing < 10 % between the apertures); such a fit says so in its warning.  With
    ``masked`` too, a frame where both fail (deep or crowded: too few isolated sources) gets a
    third: every catalogued source measured in the strict apertures with its catalogued
    neighbours masked and mirrored (:mod:`.zeropoint_crowded`; SNR >= 10, the flux growing
    < 5 % between the apertures, a systematic ``MASKED_SYSTEMATIC`` added to the error); its
    warning says so.  Unlike the first two, a neighbour-masked fit whose sources scatter by
    more than ``max_scatter`` is not used (InputError): it is the last fit tried."""
    try:
        return _fit_zeropoint(image, catalog, radius=radius, min_snr=min_snr,
                              max_sources=max_sources, max_scatter=max_scatter,
                              min_sources=min_sources)
    except InputError:
        if not relax:
            raise
    r_strict = radius
    if radius is None:  # compact sources in a crowded frame: a 4 px inner aperture at least
        radius = 4.0
        if catalog is not None and "r50" in getattr(catalog, "colnames", ()):
            r50 = _column(catalog, "r50")
            if np.isfinite(r50).any():
                radius = max(radius, 3.0 * float(np.nanmedian(r50)))
    try:
        zp = _fit_zeropoint(image, catalog, radius=radius, min_snr=min(min_snr, 10.0),
                            max_sources=max_sources, max_scatter=max_scatter,
                            min_sources=min_sources, isolation=1.0, growth=0.10)
        why = "relaxed criteria (too few bright isolated sources for the strict ones)"
    except InputError as exc_relaxed:
        if not masked:
            raise
        try:  # deep or crowded: every catalogued source, its neighbours masked
            zp = _fit_zeropoint(image, catalog, radius=r_strict, min_snr=min(min_snr, 10.0),
                                max_sources=max_sources, max_scatter=max_scatter,
                                min_sources=min_sources, growth=MASKED_GROWTH, masked=True)
            if zp.scatter > max_scatter:  # the last resort of the fits must be a good one
                raise InputError(f"zero-point fit: the {zp.n} sources of the neighbour-masked "
                                 f"fit on {getattr(image, 'name', 'image')} scatter by "
                                 f"{zp.scatter:.2f} mag (> {max_scatter:g}): not used; give "
                                 "--zeropoint ZP")
        except InputError as exc:
            raise InputError(f"{exc} (strict and relaxed isolation: {exc_relaxed})") from None
        zp = ZeroPoint(zp.value, zp.source, scatter=zp.scatter,
                       error=float(np.hypot(zp.error, MASKED_SYSTEMATIC)), n=zp.n,
                       warning=zp.warning)
        why = (f"neighbour-masked fit (too few isolated sources: {zp.n} used with their "
               "catalogued neighbours masked and mirrored, SNR >= "
               f"{min(min_snr, 10.0):g}, flux growing < {100 * MASKED_GROWTH:g} % between "
               "the apertures)")
    return ZeroPoint(zp.value, zp.source, scatter=zp.scatter, error=zp.error, n=zp.n,
                     warning="; ".join(w for w in (why, zp.warning) if w))


def _fit_zeropoint(image: Any, catalog: Any, *, radius: float | None = None,
                   min_snr: float = 20.0, max_sources: int = 500, max_scatter: float = 0.15,
                   min_sources: int = 5, isolation: float = 2.0, growth: float = 0.03,
                   masked: bool = False) -> ZeroPoint:
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
    isolation : float
        A source is isolated when no catalogued neighbour lies within the outer annulus
        radius + ``isolation`` x the inner aperture radius.
    growth : float
        Largest relative flux growth from the inner to the outer aperture.
    masked : bool
        Measure every catalogued source with its catalogued neighbours masked and mirrored
        (:mod:`.zeropoint_crowded`; the brightest ``4 max_sources`` by catalogue magnitude)
        instead of the isolated ones only.

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
    mag = _column(catalog, "mag")
    r0 = 8.0 if radius is None else float(radius)
    if radius is None and "r50" in catalog.colnames:
        r50 = _column(catalog, "r50")
        if np.isfinite(r50).any():
            r0 = max(r0, 3.0 * float(np.nanmedian(r50)))
    r1 = 1.5 * r0
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(mag)
    if masked:
        return _fit_masked(img, catalog, x, y, mag, ok, r0, r1, min_snr=min_snr,
                           max_sources=max_sources, max_scatter=max_scatter,
                           min_sources=min_sources, growth=growth)
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
    return _combine(mag[idx][sel], f1[sel], e1[sel], max_scatter)


def _fit_masked(img: Any, catalog: Any, x: np.ndarray, y: np.ndarray, mag: np.ndarray,
                ok: np.ndarray, r0: float, r1: float, *, min_snr: float, max_sources: int,
                max_scatter: float, min_sources: int, growth: float) -> ZeroPoint:
    """:func:`_fit_zeropoint` of every catalogued source (the brightest ``4 max_sources``),
    its neighbours masked (:func:`.zeropoint_crowded.masked_fluxes`)."""
    from .zeropoint_crowded import masked_fluxes

    idx = np.flatnonzero(ok)
    if idx.size < min_sources:
        raise InputError(f"zero-point fit: only {idx.size} catalogued sources with a "
                         f"magnitude on {img.name} (need {min_sources}); give --zeropoint ZP")
    r50 = (_column(catalog, "r50") if "r50" in catalog.colnames else np.full(len(x), np.nan))[idx]
    if not np.isfinite(r50).any():  # no sizes: a disc of a quarter of the inner aperture
        r50 = np.full(idx.size, r0 / 4.0)
    r50 = np.where(np.isfinite(r50), r50, np.nanmedian(r50))
    targets = np.argsort(mag[idx], kind="stable")[:4 * max_sources]
    b_in = r1 + 3.0
    m = masked_fluxes(img, x[idx], y[idx], mag[idx], r50, targets, r0, r1, b_in,
                      b_in + max(10.0, r0))
    f0, f1, e1 = m["f0"], m["f1"], m["e1"]
    with np.errstate(invalid="ignore", divide="ignore"):
        good = m["usable"] & (f1 > 0) & (f1 / e1 >= min_snr) & (np.abs(f1 / f0 - 1) < growth)
    if good.sum() < min_sources:
        raise InputError(f"zero-point fit: only {int(good.sum())} bright (SNR >= {min_snr:g}) "
                         f"sources with converged aperture fluxes on {img.name} even with "
                         f"their neighbours masked (need {min_sources}); give --zeropoint ZP")
    sel = np.flatnonzero(good)
    sel = sel[np.argsort(-f1[sel])][:max_sources]
    return _combine(mag[idx][targets][sel], f1[sel], e1[sel], max_scatter)


def _combine(mag: np.ndarray, f1: np.ndarray, e1: np.ndarray, max_scatter: float
             ) -> ZeroPoint:
    """The zero point of sources of catalogue magnitude ``mag`` and measured flux ``f1`` +-
    ``e1`` (all usable): a 3-sigma clipped, inverse-variance weighted mean of the offsets."""
    zp_i = mag + 2.5 * np.log10(f1)
    sig_all = 1.0857 * e1 / f1  # each offset's photometric error [mag]
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


def photflam_zeropoint(header: Any, system: str = "AB", *, exptime: float | None = None
                       ) -> tuple[ZeroPoint | None, str]:
    """The zero point of HST-style photometric keywords, and why not when there is none.

    ``PHOTFLAM`` (erg cm^-2 s^-1 A^-1 per unit of the image per second, as HST's pipelines
    write it) gives, for a frame in a rate unit (``BUNIT``, else ``D001OUUN``: counts/s,
    electrons/s, cps; :func:`skysub.image.header_unit`),

    * STmag: ``zp = PHOTZPT - 2.5 log10(PHOTFLAM)`` (``PHOTZPT`` default -21.10);
    * ABmag: ``zp = -2.5 log10(PHOTFLAM) - 5 log10(PHOTPLAM) - 2.408`` (``PHOTPLAM``, the
      pivot wavelength [A], required).

    A frame in counts or electrons (not per second) adds ``2.5 log10(exptime)`` (``exptime``,
    else the header's ``EXPTIME``).  Without a unit the header does not say which: None.

    Returns ``(ZeroPoint with source "header:PHOTFLAM (AB)" or "(ST)", "")`` or
    ``(None, why)``.
    """
    from ..image import _is_rate, header_unit

    if system not in PHOT_SYSTEMS:
        raise InputError(f"photometric system must be one of {', '.join(PHOT_SYSTEMS)}, got "
                         f"{system!r}")
    if header is None or not hasattr(header, "get") or header.get("PHOTFLAM") is None:
        return None, "no PHOTFLAM keyword"

    def number(key, default=None):
        v = header.get(key, default)
        if v is None:
            return None
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise InputError(f"header keyword {key} = {v!r} is not a number") from None
        return v if np.isfinite(v) else None

    flam = number("PHOTFLAM")
    if flam is None or flam <= 0:
        return None, f"PHOTFLAM = {header.get('PHOTFLAM')!r} is not positive"
    if system == "AB":
        plam = number("PHOTPLAM")
        if plam is None or plam <= 0:
            return None, "PHOTFLAM without a positive PHOTPLAM (pivot wavelength) for AB"
        zp = -2.5 * np.log10(flam) - 5.0 * np.log10(plam) - 2.408
    else:
        zpt = number("PHOTZPT", ST_ZEROPOINT)
        zp = -2.5 * np.log10(flam) + (ST_ZEROPOINT if zpt is None else zpt)
    unit = header_unit(header)
    how = f"BUNIT {unit!r}"
    if unit is None:
        return None, "PHOTFLAM but no BUNIT/D001OUUN: per second or total counts?"
    if not _is_rate(unit):
        if unit.strip().lower() not in _TOTAL_UNITS:
            return None, f"PHOTFLAM with BUNIT {unit!r}, neither a rate nor counts"
        t = exptime if exptime is not None else number("EXPTIME")
        if t is None or t <= 0:
            return None, f"PHOTFLAM with BUNIT {unit!r} (not per second) and no EXPTIME"
        zp += 2.5 * np.log10(t)
        how += f" x EXPTIME {t:g} s"
    return ZeroPoint(float(zp), f"header:PHOTFLAM ({system})",
                     warning=f"from PHOTFLAM ({how}), assuming {system} catalogue "
                             "magnitudes"), ""


def _photflam_check(zp: ZeroPoint, header: Any, exptime: float | None) -> ZeroPoint:
    """``zp`` (a fit) with a warning when the header's PHOTFLAM zero points, AB and ST, both
    differ from it by more than :data:`PHOTFLAM_TOLERANCE`."""
    alt = {}
    for system in PHOT_SYSTEMS:
        try:
            z, _ = photflam_zeropoint(header, system, exptime=exptime)
        except InputError:
            z = None
        if z is not None:
            alt[system] = z.value
    if not alt or min(abs(v - zp.value) for v in alt.values()) <= PHOTFLAM_TOLERANCE:
        return zp
    say = ", ".join(f"{k} {v:.3f}" for k, v in alt.items())
    w = (f"the fit disagrees with the header's PHOTFLAM zero point ({say}) by more than "
         f"{PHOTFLAM_TOLERANCE:g} mag: catalogue magnitudes of another band or system?")
    return ZeroPoint(zp.value, zp.source, scatter=zp.scatter, error=zp.error, n=zp.n,
                     warning="; ".join(x for x in (zp.warning, w) if x))


def resolve_zeropoint(image: Any, catalog: Any = None, *, given: float | None = None,
                      header_keys: tuple[str, ...] = HEADER_KEYS, photometric_system: str = "AB",
                      **fit_kwargs: Any) -> ZeroPoint:
    """The zero point of one exposure: ``given``, else the header's (``header_keys``), else a
    fit (strict, relaxed, neighbour-masked: :func:`fit_zeropoint`), else HST-style PHOTFLAM
    keywords in ``photometric_system`` (AB or ST; :func:`photflam_zeropoint`), with a warning
    naming the system.  A fit that PHOTFLAM contradicts in both systems warns."""
    if given is not None:
        v = float(given)
        if not np.isfinite(v):
            raise InputError(f"--zeropoint must be a finite number, got {given!r}")
        return ZeroPoint(v, "given")
    if photometric_system not in PHOT_SYSTEMS:
        raise InputError(f"photometric system must be one of {', '.join(PHOT_SYSTEMS)}, got "
                         f"{photometric_system!r}")
    header = getattr(image, "header", None)
    hz = header_zeropoint(header, header_keys)
    if hz is not None:
        return hz
    meta = getattr(image, "meta", None)
    exptime = getattr(meta, "exptime", None)
    try:
        zp = fit_zeropoint(image, catalog, **fit_kwargs)
    except InputError as exc:
        pz, why = photflam_zeropoint(header, photometric_system, exptime=exptime)
        if pz is None:
            if header is not None and hasattr(header, "get") and "PHOTFLAM" in header:
                raise InputError(f"{exc}; header PHOTFLAM unusable: {why}") from None
            raise
        return ZeroPoint(pz.value, pz.source,
                         warning=f"{pz.warning} (no fit: {exc})")
    return _photflam_check(zp, header, exptime)
