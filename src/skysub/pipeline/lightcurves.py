"""Light-curve files, relative light curves and the Lomb-Scargle periodogram.

Light-curve file ``lcs/<photometer>/<camera>_source_<n>.csv`` (one row per aligned frame, in
time order; ``n`` is the catalogue id, 1 = brightest):

=============== =================================================================================
column          meaning
=============== =================================================================================
BMJD            mid-exposure time: barycentric MJD (TDB) when the target position and the site
                are known, else MJD (UTC) -- ``columns.json`` says which
flux            total background-subtracted flux [counts]
flux_err        1-sigma error of ``flux``: source Poisson noise + pixel noise in the aperture /
                weights + the error of the subtracted background level (``n_aper^2
                bkg_mean_err^2``)
bkg             local background per pixel [counts]
bkg_err         per-pixel background uncertainty: ``sqrt(bkg_pixel_std^2 + bkg_mean_err^2)``
                -- what opticam reports (its ``bkg_err`` ~ sqrt(100) = 10 on the tutorial's
                data) plus the uncertainty of the mean, which it omits
bkg_pixel_std   clipped per-pixel scatter of the background pixels (opticam's ``bkg_err``)
bkg_mean_err    1-sigma error of the background LEVEL ``bkg`` itself (``std / sqrt(n)`` for the
                clipped mean); this is the term that enters ``flux_err``
x, y            frame pixel position measured at (0-based)
flags           skysub bit flags (:mod:`skysub.flags`)
frame           file name
=============== =================================================================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table

from ..errors import CatalogError, InputError, MissingFileError

LC_COLUMNS = ("BMJD", "flux", "flux_err", "bkg", "bkg_err", "bkg_pixel_std", "bkg_mean_err",
              "x", "y", "flags", "frame")
REL_COLUMNS = ("BMJD", "rel_flux", "rel_flux_err")


def lc_name(camera: str, source: int) -> str:
    return f"{camera}_source_{int(source)}.csv"


def read_light_curve(path: str | Path) -> Table:
    """A light-curve CSV (columns checked, rows with non-finite flux kept)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"light curve not found: {path} (run the photometry first)")
    t = Table.read(path, format="ascii.csv")
    missing = [c for c in ("BMJD", "flux", "flux_err") if c not in t.colnames]
    if missing:
        raise CatalogError(f"{path}: light curve lacks column(s) {', '.join(missing)}; has "
                           f"{', '.join(t.colnames)}")
    return t


def relative_light_curve(target: Table, comparisons: list[Table], *,
                         normalise: bool = True) -> Table:
    """Differential photometry: ``target / sum(comparisons)`` frame by frame.

    Frames are matched on ``frame`` (file name) when present, else on BMJD.  The error
    propagates the target's and the comparisons' ``flux_err`` (independent).  With
    ``normalise`` the curve is divided by its median (and so are the errors).

    Returns
    -------
    Table with ``BMJD, rel_flux, rel_flux_err`` (frames where any flux is non-finite dropped).
    """
    if not comparisons:
        raise InputError("relative photometry needs at least one comparison star")
    key = "frame" if all("frame" in t.colnames for t in [target, *comparisons]) else "BMJD"
    keys = [np.asarray(t[key]).astype(str) for t in [target, *comparisons]]
    common = set(keys[0])
    for k in keys[1:]:
        common &= set(k)
    rows = [np.array([np.flatnonzero(k == v)[0] for v in keys[0] if v in common], int)
            for k in keys]
    ft = np.asarray(target["flux"], float)[rows[0]]
    et = np.asarray(target["flux_err"], float)[rows[0]]
    fc = sum(np.asarray(c["flux"], float)[r] for c, r in zip(comparisons, rows[1:], strict=True))
    vc = sum(np.asarray(c["flux_err"], float)[r] ** 2
             for c, r in zip(comparisons, rows[1:], strict=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = ft / fc
        err = np.abs(rel) * np.sqrt((et / ft) ** 2 + vc / fc**2)
    ok = np.isfinite(rel) & np.isfinite(err)
    t = np.asarray(target["BMJD"], float)[rows[0]]
    rel, err, t = rel[ok], err[ok], t[ok]
    if normalise and len(rel):
        med = np.median(rel)
        rel, err = rel / med, err / abs(med)
    return Table({"BMJD": t, "rel_flux": rel, "rel_flux_err": err})


class PeriodogramResult:
    """Lomb-Scargle periodogram of a light curve.

    Attributes
    ----------
    frequency : array, Hz
    power : array (standard normalisation, 0..1)
    peak_frequency : float, Hz (refined by a parabola through the highest grid point and its
        neighbours)
    false_alarm_probability : float (astropy's Baluev estimate for the peak)
    """

    def __init__(self, frequency, power, peak_frequency, false_alarm_probability):
        self.frequency = frequency
        self.power = power
        self.peak_frequency = float(peak_frequency)
        self.false_alarm_probability = float(false_alarm_probability)

    def __repr__(self) -> str:
        return (f"PeriodogramResult(peak_frequency={self.peak_frequency:.6g} Hz, "
                f"false_alarm_probability={self.false_alarm_probability:.3g})")

    def as_table(self) -> Table:
        return Table({"frequency": self.frequency, "power": self.power})


def periodogram(bmjd, flux, flux_err=None, *, min_frequency: float | None = None,
                max_frequency: float | None = None, samples_per_peak: int = 50
                ) -> PeriodogramResult:
    """Lomb-Scargle periodogram (astropy) of a light curve sampled at ``bmjd`` [days].

    Frequencies in Hz (times converted to seconds).  Default grid: from ``1 / baseline`` to the
    Nyquist frequency of the median cadence, ``samples_per_peak`` points per peak width.
    """
    from astropy.timeseries import LombScargle

    t = np.asarray(bmjd, float)
    y = np.asarray(flux, float)
    dy = None if flux_err is None else np.asarray(flux_err, float)
    ok = np.isfinite(t) & np.isfinite(y) & (np.ones_like(y, bool) if dy is None
                                            else np.isfinite(dy) & (dy > 0))
    if ok.sum() < 5:
        raise InputError(f"a periodogram needs at least 5 finite points, got {int(ok.sum())}")
    ts = (t[ok] - t[ok].min()) * 86400.0
    ls = LombScargle(ts, y[ok], None if dy is None else dy[ok])
    base = ts.max() - ts.min()
    cadence = float(np.median(np.diff(np.sort(ts))))
    if not (base > 0 and cadence > 0):
        raise InputError("the light curve's times do not increase")
    fmin = min_frequency if min_frequency is not None else 1.0 / base
    fmax = max_frequency if max_frequency is not None else 0.5 / cadence
    if not 0 < fmin < fmax:
        raise InputError(f"need 0 < min_frequency < max_frequency, got {fmin}, {fmax} Hz")
    df = 1.0 / (base * samples_per_peak)
    freq = np.arange(fmin, fmax + df / 2, df)
    power = ls.power(freq)
    i = int(np.argmax(power))
    peak = freq[i]
    if 0 < i < len(freq) - 1:  # parabola through three points around the maximum
        a, b, c = power[i - 1], power[i], power[i + 1]
        den = a - 2 * b + c
        if den < 0:
            peak = freq[i] + 0.5 * df * (a - c) / den
    fap = float(ls.false_alarm_probability(power[i], minimum_frequency=fmin,
                                           maximum_frequency=fmax))
    return PeriodogramResult(freq, power, peak, fap)
