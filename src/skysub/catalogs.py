"""Source catalogues as astronomers already have them, turned into skysub's columns.

skysub's own catalogue columns are ``id`` plus ``x, y`` (0-based pixels, pixel centres at
integers) or ``ra, dec`` (degrees).  :func:`normalise_catalog` also understands:

``sextractor``
    SExtractor's ASCII_HEAD (``image.cat``: ``#   1 NUMBER ...`` header lines) and FITS_LDAC
    (``LDAC_OBJECTS`` table) catalogues: ``NUMBER`` -> ``id``; ``X_IMAGE, Y_IMAGE`` (and the
    ``XWIN_IMAGE``/``XPEAK_IMAGE`` variants when those are the only ones) are **1-based** FITS
    pixels -> ``x = X_IMAGE - 1``, ``y = Y_IMAGE - 1``; ``ALPHA_J2000, DELTA_J2000`` -> ``ra,
    dec``.  ``THETA_IMAGE`` is already in degrees counter-clockwise from +x.  Shapes
    (``FLUX_RADIUS``, ``A_IMAGE``, ``B_IMAGE``, ``THETA_IMAGE``) are converted to skysub's by
    :func:`sextractor_shapes`, which needs the PSF (the optimal photometer calls it with its
    own when the catalogue has no ``r50``).
``photutils``
    ``SourceCatalog.to_table()``: ``label`` -> ``id``; ``x_centroid, y_centroid`` (photutils
    >= 3; ``xcentroid, ycentroid`` before) (0-based) ->
    ``x, y``; ``sky_centroid`` (SkyCoord) -> ``ra, dec``.
``sep``
    The record array of ``sep.extract`` (or any numpy structured array with ``x, y``; 0-based):
    ``id`` = row number when absent; sep's ``theta`` (radians) -> degrees.

The original columns are kept; ``table.meta["catalog_format"]`` names the format recognised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy.table import Table

from .errors import CatalogError

#: What :func:`normalise_catalog` understands (used in error messages and the docs).
FORMATS_UNDERSTOOD = (
    "skysub (id + x, y in 0-based pixels or ra, dec in degrees)",
    "SExtractor ASCII_HEAD / FITS_LDAC (NUMBER, X_IMAGE, Y_IMAGE [1-based], "
    "ALPHA_J2000, DELTA_J2000)",
    "photutils SourceCatalog.to_table() (label, x_centroid/xcentroid, y_centroid/ycentroid, "
    "sky_centroid)",
    "sep.extract record array (x, y)",
)

# SExtractor pixel-position pairs, preferred first (all 1-based FITS pixels)
_SEX_XY = (("x_image", "y_image"), ("xwin_image", "ywin_image"),
           ("x_image_dbl", "y_image_dbl"), ("xpeak_image", "ypeak_image"))
_SEX_RADEC = (("alpha_j2000", "delta_j2000"), ("xwin_world", "ywin_world"),
              ("x_world", "y_world"), ("alpha_sky", "delta_sky"))
# columns sep.extract returns that no other producer uses together
_SEP_SIGNATURE = {"cxx", "cyy", "cxy", "npix", "tnpix", "cflux", "cpeak"}


def _plain(col: Any) -> np.ndarray:
    """Float64 values of a column (Quantity -> value; masked -> NaN); text that is not a
    number is a CatalogError naming the column."""
    val = getattr(col, "value", col)
    try:
        arr = np.ma.filled(np.ma.asarray(val, dtype=np.float64), np.nan)
    except (TypeError, ValueError) as exc:
        name = getattr(col, "name", None) or "a position or shape column"
        raise CatalogError(f"catalogue column {name!r} must be numeric: {exc}") from None
    return np.asarray(arr, dtype=np.float64)


def as_table(obj: Any, source: str = "<table>") -> Table:
    """A Table of ``obj``: a Table/QTable (copied), a numpy structured array or a dict."""
    if isinstance(obj, Table):
        t = Table(obj, copy=True)  # QTable -> Table; SkyCoord columns stay mixins
        t.meta = dict(obj.meta)
        return t
    if isinstance(obj, np.ndarray) and obj.dtype.names:
        return Table(obj)
    if isinstance(obj, dict):
        return Table(obj)
    raise CatalogError(f"{source}: a catalogue must be a table (astropy Table, numpy record "
                       f"array, file path), got {type(obj).__name__}")


def detect_format(names: set[str]) -> str | None:
    """Which producer wrote columns ``names`` (lower-cased): skysub, sextractor, photutils, sep."""
    has_xy = "x" in names and "y" in names
    if _SEP_SIGNATURE <= names and has_xy:
        return "sep"
    if has_xy or ("ra" in names and "dec" in names):
        return "skysub"
    if any(a in names and b in names for a, b in _SEX_XY + _SEX_RADEC):
        return "sextractor"
    if ({"xcentroid", "ycentroid"} <= names or {"x_centroid", "y_centroid"} <= names
            or "sky_centroid" in names):
        return "photutils"
    return None


def normalise_catalog(table: Table, source: str, *, from_array: bool = False) -> Table:
    """Add skysub's ``id``, ``x, y`` / ``ra, dec`` columns to a catalogue of a known format.

    ``table`` must already have lower-case column names.  ``from_array``: the table came from a
    record array, where a missing ``id`` is the row number (sep gives none).  Modifies and
    returns ``table``.

    Raises
    ------
    CatalogError
        No known format (the message lists the columns found and the formats understood).
    """
    names = set(table.colnames)
    fmt = detect_format(names)
    if fmt == "sextractor":
        for a, b in _SEX_XY:
            if a in names and b in names:
                table["x"] = _plain(table[a]) - 1.0  # SExtractor pixels are 1-based (FITS)
                table["y"] = _plain(table[b]) - 1.0
                break
        for a, b in _SEX_RADEC:
            if a in names and b in names and "ra" not in names and "dec" not in names:
                table["ra"] = _plain(table[a])
                table["dec"] = _plain(table[b])
                break
        if "id" not in names and "number" in names:
            table["id"] = np.asarray(table["number"])
    elif fmt == "photutils":
        for a, b in (("x_centroid", "y_centroid"), ("xcentroid", "ycentroid")):
            if a in names and b in names:
                table["x"] = _plain(table[a])  # photutils is 0-based like skysub
                table["y"] = _plain(table[b])
                break
        if "sky_centroid" in names and "ra" not in names and "dec" not in names:
            sc = table["sky_centroid"]
            if hasattr(sc, "icrs"):  # a SkyCoord column (None entries without a WCS)
                table["ra"] = _plain(sc.icrs.ra.deg)
                table["dec"] = _plain(sc.icrs.dec.deg)
            table.remove_column("sky_centroid")  # a SkyCoord column does not write to CSV
        if "id" not in names and "label" in names:
            table["id"] = np.asarray(table["label"])
    elif fmt == "sep":
        if "theta" in names:
            table["theta"] = np.degrees(_plain(table["theta"]))  # sep: radians; skysub: degrees
        if "id" not in names:
            table["id"] = np.arange(len(table))
    elif fmt == "skysub" and "id" not in names and from_array:
        table["id"] = np.arange(len(table))
    names = set(table.colnames)
    has_pos = {"x", "y"} <= names or {"ra", "dec"} <= names
    if fmt is None or "id" not in names or not has_pos:
        found = ", ".join(table.colnames) or "none"
        raise CatalogError(f"{source}: a catalogue needs columns id and either x, y (pixels) or "
                           f"ra, dec (degrees); found: {found}.  Formats understood: "
                           + "; ".join(FORMATS_UNDERSTOOD))
    table.meta["catalog_format"] = fmt
    return table


def read_sextractor_file(path, fmt: str) -> Table:
    """Read a SExtractor catalogue file: FITS_LDAC (``LDAC_OBJECTS``) or ASCII_HEAD."""
    if fmt == "fits":
        from astropy.io import fits

        with fits.open(path, memmap=False) as hdul:
            names = [h.name for h in hdul]
            if "LDAC_OBJECTS" in names:
                return Table.read(hdul["LDAC_OBJECTS"])
            return Table.read(hdul)
    return Table.read(path, format="ascii.sextractor")


def sniff_format(path) -> str:
    """``"fits"`` if the file starts like FITS (FITS_LDAC ``.cat``), else ``"ascii"``."""
    with open(path, "rb") as fh:
        return "fits" if fh.read(6) == b"SIMPLE" else "ascii"


_HALF_LIGHT = 1.1774100225154747  # sqrt(2 ln 2): half-light radius / sigma of a Gaussian


def circle_factor(q) -> np.ndarray:
    """Radius of the circle holding half the light of an elliptical Gaussian of axis ratio
    ``q``, in units of its circularised half-light radius ``1.1774 sqrt(sigma_a sigma_b)``
    (1 for ``q = 1``, growing as the ellipse narrows); tabulated once by quadrature."""
    global _CIRCLE_TABLE
    if _CIRCLE_TABLE is None:
        from scipy.optimize import brentq

        phi = np.linspace(0.0, np.pi / 2, 2001)
        qs = np.linspace(0.05, 1.0, 96)
        rs = []
        for qq in qs:  # sigma_a = q^-1/2, sigma_b = q^1/2 (unit geometric mean)
            k = np.cos(phi) ** 2 * qq + np.sin(phi) ** 2 / qq

            def frac(r, k=k):
                return np.trapezoid((1 - np.exp(-0.5 * r * r * k)) / k, phi) * 2 / np.pi - 0.5

            rs.append(brentq(frac, 0.1, 50.0) / _HALF_LIGHT)
        _CIRCLE_TABLE = (qs, np.asarray(rs))
    return np.interp(np.asarray(q, float), *_CIRCLE_TABLE)


_CIRCLE_TABLE: tuple | None = None

#: SExtractor's shape columns (lower-cased) that :func:`sextractor_shapes` reads
SEXTRACTOR_SHAPE_COLUMNS = ("flux_radius", "a_image", "b_image", "theta_image")


def has_sextractor_shapes(table: Table) -> bool:
    """True when ``table`` has SExtractor's shape columns and no skysub ``r50``."""
    names = set(table.colnames)
    return "r50" not in names and set(SEXTRACTOR_SHAPE_COLUMNS) <= names


def sextractor_shapes(table: Table, psf_sigma: float = 0.0, *, sersic_n: float = 1.0,
                      point_fraction: float = 0.1) -> Table:
    """skysub's intrinsic shape columns from SExtractor's (or sep's) measured ones.

    skysub's conventions (those of the optimal and model-aperture photometers and the
    simulators): ``r50`` is the **semi-major axis** of the ellipse holding half of the
    *intrinsic* (before the PSF) light, in pixels -- its circularised radius is
    ``r50 * sqrt(ba)``; ``ba = b/a <= 1``; ``theta`` is the angle of the major axis in
    **degrees counter-clockwise from the +x (column) axis**, in [0, 180).

    SExtractor measures the PSF-convolved image: ``FLUX_RADIUS`` (with ``PHOT_FLUXFRAC =
    0.5``) is the radius of the *circle* holding half the light; ``A_IMAGE``, ``B_IMAGE`` are
    the rms sizes along the major and minor axes from the isophotal second moments;
    ``THETA_IMAGE`` is the major axis' angle in degrees counter-clockwise from +x, in
    [-90, 90] (the same origin and direction as skysub; only wrapped to [0, 180) here).  For a
    Gaussian PSF of ``psf_sigma`` px the PSF adds its second moments, so

    * the observed light is taken as an elliptical Gaussian of axis ratio ``q = B/A`` (the
      ratio of the isophotal moments; their sizes are truncated by the isophote, so only the
      ratio is used) whose circular half-light radius is ``FLUX_RADIUS``
      (:func:`circle_factor`): that gives its rms sizes ``S_a``, ``S_b`` along the axes;
    * the PSF is removed in quadrature, ``s_a^2 = S_a^2 - s^2``, ``s_b^2 = S_b^2 - s^2``, and
      ``ba = s_b / s_a``, ``r50 = 1.1774 s_a`` (a Gaussian's half-light radius);
    * sources whose ``FLUX_RADIUS`` exceeds the PSF's half-light radius ``1.1774 s`` by less
      than ``point_fraction`` (or narrower than the PSF along an axis) are point sources:
      ``r50`` = 0.

    ``sersic_n`` (which SExtractor's isophotal measurements do not give) is set to
    ``sersic_n`` unless the catalogue has a ``sersic_n`` column, or ``SPHEROID_SERSICN``
    (SExtractor's model fitting), which is used then.  These are moment-based
    approximations (exact for Gaussian profiles and PSFs; tested on a PSF-convolved
    exponential to ~10 % in ``r50``); give measured ``r50``, ``ba``, ``theta`` (and their
    errors ``r50_err``, ``ba_err``, ``theta_err``) when you have them.

    Returns a copy of ``table`` with ``r50, ba, theta, sersic_n`` added (existing ``ba`` /
    ``theta`` / ``sersic_n`` columns are kept).
    """
    names = set(table.colnames)
    missing = [c for c in SEXTRACTOR_SHAPE_COLUMNS if c not in names]
    if missing:
        raise CatalogError(f"{table.meta.get('source', '<table>')}: SExtractor shapes need "
                           f"columns {', '.join(c.upper() for c in SEXTRACTOR_SHAPE_COLUMNS)}; "
                           f"missing {', '.join(c.upper() for c in missing)}")
    s = float(psf_sigma)
    if not (np.isfinite(s) and s >= 0):
        raise CatalogError(f"psf_sigma must be >= 0 px, got {psf_sigma!r}")
    out = Table(table, copy=True)
    fr = _plain(table["flux_radius"])
    a = _plain(table["a_image"])
    b = _plain(table["b_image"])
    th = _plain(table["theta_image"])
    r_psf = _HALF_LIGHT * s  # a Gaussian's half-light radius
    with np.errstate(invalid="ignore", divide="ignore"):
        q_obs = np.clip(b / a, 0.05, 1.0)
        # Gaussian-equivalent rms sizes of the observed (convolved) light along the axes
        sig_geo = fr / circle_factor(q_obs) / _HALF_LIGHT
        sa2 = sig_geo**2 / q_obs - s * s
        sb2 = sig_geo**2 * q_obs - s * s
        point = ~(fr > r_psf * (1.0 + point_fraction)) | ~(sb2 > 0) | ~(sa2 > 0)
        ba = np.clip(np.sqrt(sb2 / sa2), 0.05, 1.0)
        r50 = np.where(point, 0.0, _HALF_LIGHT * np.sqrt(sa2))
    bad = ~np.isfinite(fr) | ~np.isfinite(a) | ~np.isfinite(b)
    out["r50"] = np.where(bad, np.nan, r50)
    if "ba" not in names:
        out["ba"] = np.where(point | bad, 1.0, ba)
    if "theta" not in names:
        out["theta"] = np.mod(th, 180.0)  # SExtractor: [-90, 90] CCW from +x; skysub: [0, 180)
    if "sersic_n" not in names:
        n = (_plain(table["spheroid_sersicn"]) if "spheroid_sersicn" in names
             else np.full(len(table), float(sersic_n)))
        out["sersic_n"] = np.where(np.isfinite(n) & (n > 0), n, float(sersic_n))
    out.meta["shapes_from"] = f"sextractor (psf_sigma = {s:g} px)"
    return out
