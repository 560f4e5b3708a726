"""Source catalogues as astronomers already have them, turned into skysub's columns.

skysub's own catalogue columns are ``id`` plus ``x, y`` (0-based pixels, pixel centres at
integers) or ``ra, dec`` (degrees).  :func:`normalise_catalog` also understands:

``sextractor``
    SExtractor's ASCII_HEAD (``image.cat``: ``#   1 NUMBER ...`` header lines) and FITS_LDAC
    (``LDAC_OBJECTS`` table) catalogues: ``NUMBER`` -> ``id``; ``X_IMAGE, Y_IMAGE`` (and the
    ``XWIN_IMAGE``/``XPEAK_IMAGE`` variants when those are the only ones) are **1-based** FITS
    pixels -> ``x = X_IMAGE - 1``, ``y = Y_IMAGE - 1``; ``ALPHA_J2000, DELTA_J2000`` -> ``ra,
    dec``.  ``THETA_IMAGE`` is already in degrees counter-clockwise from +x.
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
    """Float64 values of a column (Quantity -> value; masked -> NaN)."""
    val = getattr(col, "value", col)
    arr = np.ma.filled(np.ma.asarray(val, dtype=np.float64), np.nan)
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
