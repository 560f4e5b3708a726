"""FITS images and source catalogues in, FITS products and tables out.

Reading
    :func:`read_image` returns a :class:`skysub.image.Image`: float64 pixels in native byte
    order (whatever the file's BITPIX, byte order or BZERO/BSCALE), a boolean mask (True = bad;
    non-finite pixels and nonzero pixels of an optional mask extension or file), the header,
    the celestial WCS (or None) and the exposure metadata (:class:`skysub.image.ImageMeta`)
    from header keywords named by a :class:`skysub.config.HeaderKeys`, with per-call overrides.

    :func:`read_catalog` reads a CSV/ECSV/FITS catalogue (column names lower-cased; ``id`` and
    ``x, y`` in 0-based pixels or ``ra, dec`` in degrees) and :func:`catalog_for_image` selects
    and positions its rows on one image.  :func:`expand_paths` expands shell globs of image
    paths and :func:`iter_images` reads them one at a time.

Writing
    :func:`write_fits_product` (maps: primary HDU + named extensions, header and WCS kept) and
    :func:`write_table` (CSV/ECSV/FITS by extension) write atomically -- to a temporary file in
    the destination folder, then :func:`os.replace` -- so an interrupted run never leaves a
    half-written product, and they refuse to replace an input or (without ``overwrite``) an
    existing file.  :func:`check_output` applies the same rules up front.

Pixel convention: 0-based, ``(x, y) = (column, row)``, pixel centres at integers, so a pixel
centre ``(x, y)`` lies on the image when ``-0.5 <= x < nx - 0.5`` and ``-0.5 <= y < ny - 0.5``.
FITS/WCS pixel coordinates are 1-based; the conversion is done with ``origin=0`` in astropy.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import secrets
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import MaskedColumn, Table
from astropy.wcs import WCS, FITSFixedWarning

from .config import HeaderKeys
from .errors import (
    CatalogError,
    HeaderError,
    InputError,
    MissingFileError,
    OutputExistsError,
)
from .image import Image, ImageMeta, header_gain

log = logging.getLogger("skysub")

PathLike = str | os.PathLike

#: ImageMeta fields that can be read from the header or overridden.
META_FIELDS = ("band", "epoch", "exptime", "gain", "rdnoise", "night")
_META_FLOAT = ("exptime", "gain", "rdnoise")
_META_DEFAULTS: dict[str, Any] = {"band": None, "epoch": None, "exptime": None, "gain": 1.0,
                                  "rdnoise": 0.0, "night": None}

#: Catalogue columns that must be numeric when present (x, y px; ra, dec, theta deg).
CATALOG_NUMERIC = ("x", "y", "ra", "dec", "mag", "r50", "sersic_n", "ba", "theta")

#: File extensions of tables, and the astropy format used for each.
TABLE_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits",
                 ".fts": "fits"}

# Cards that describe the layout of an HDU (rewritten by astropy) or the scaling of stored
# integers (our data are already physical floats); never copied into a product.
_STRUCTURAL = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|XTENSION|EXTNAME|EXTVER|EXTLEVEL|INHERIT|"
    r"BZERO|BSCALE|BLANK|CHECKSUM|DATASUM|"
    # tile-compression cards (astropy normally hides them, but never copy them by accident)
    r"ZIMAGE|ZSIMPLE|ZTENSION|ZBITPIX|ZNAXIS\d*|ZTILE\d+|ZCMPTYPE|ZNAME\d+|ZVAL\d+|ZEXTEND|"
    r"ZBLOCKED|ZPCOUNT|ZGCOUNT|ZQUANTIZ|ZDITHER0|ZHECKSUM|ZDATASUM|ZBLANK|ZSCALE|ZZERO)$")
# Cards of a WCS (FITS WCS papers I-III and SIP); dropped before a new WCS is written so that
# e.g. an old CD matrix does not coexist with the new PC matrix.  EPOCH is deliberately absent:
# skysub uses it for the camera epoch.
_WCS_CARD = re.compile(
    r"^(WCSAXES[A-Z]?|CTYPE\d+[A-Z]?|CRPIX\d+[A-Z]?|CRVAL\d+[A-Z]?|CDELT\d+[A-Z]?|"
    r"CUNIT\d+[A-Z]?|CROTA\d+|CD\d+_\d+[A-Z]?|PC\d+_\d+[A-Z]?|PV\d+_\d+[A-Z]?|PS\d+_\d+[A-Z]?|"
    r"CNAME\d+[A-Z]?|CRDER\d+[A-Z]?|CSYER\d+[A-Z]?|WCSNAME[A-Z]?|LONPOLE[A-Z]?|LATPOLE[A-Z]?|"
    r"RADESYS[A-Z]?|RADECSYS|EQUINOX[A-Z]?|MJDREF[A-Z]?|DATEREF|"
    r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_DMAX|B_DMAX|A_\d+_\d+|B_\d+_\d+|AP_\d+_\d+|"
    r"BP_\d+_\d+)$")


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def _is_2d_image(hdu: Any) -> bool:
    if not getattr(hdu, "is_image", False):
        return False
    h = hdu.header
    return h.get("NAXIS") == 2 and all(int(h.get(f"NAXIS{i}", 0)) > 0 for i in (1, 2))


def _describe_hdus(hdul: fits.HDUList) -> str:
    parts = []
    for i, h in enumerate(hdul):
        if getattr(h, "is_image", False) and h.header.get("NAXIS", 0) > 0:
            shape = "x".join(str(h.header.get(f"NAXIS{k}", 0))
                             for k in range(1, h.header["NAXIS"] + 1))
            what = f"{h.header['NAXIS']}-D image {shape}"
        elif getattr(h, "is_image", False):
            what = "no data"
        else:
            what = "table"
        parts.append(f"{i} ({h.name or 'no EXTNAME'}, {what})")
    return "; ".join(parts)


def _find_extname(hdul: fits.HDUList, name: str) -> int | None:
    for i, h in enumerate(hdul):
        if h.name and h.name.upper() == name.strip().upper():
            return i
    return None


def _select_hdu(hdul: fits.HDUList, hdu: int | str | None, path: Path) -> int:
    """Index of the image HDU to read (see :func:`read_image`)."""
    if hdu is None:
        for i, h in enumerate(hdul):
            if _is_2d_image(h):
                return i
        raise InputError(f"{path}: no HDU holds a 2-D image; HDUs: {_describe_hdus(hdul)}")
    if isinstance(hdu, str):
        idx = _find_extname(hdul, hdu)
        if idx is None and hdu.strip().isdigit():
            idx = int(hdu)
        if idx is None:
            raise InputError(f"{path}: no HDU named {hdu!r}; HDUs: {_describe_hdus(hdul)}")
    elif isinstance(hdu, (int, np.integer)) and not isinstance(hdu, bool):
        idx = int(hdu)
    else:
        raise InputError(f"hdu must be None, an HDU number or an EXTNAME, got {hdu!r}")
    if not 0 <= idx < len(hdul):
        raise InputError(f"{path}: HDU {idx} does not exist (the file has {len(hdul)} HDUs, "
                         f"0-{len(hdul) - 1}): {_describe_hdus(hdul)}")
    if not _is_2d_image(hdul[idx]):
        raise InputError(f"{path}: HDU {hdu!r} does not hold a 2-D image; "
                         f"HDUs: {_describe_hdus(hdul)}")
    return idx


def _open_fits(path: Path, what: str) -> fits.HDUList:
    if not path.exists():
        raise MissingFileError(f"{what} not found: {path}")
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory, expected a FITS file")
    try:
        # memmap=False: the file is closed right after reading, and BZERO/BSCALE scaling
        # needs a copy anyway
        return fits.open(path, memmap=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read as FITS ({exc})") from None


def _float_data(hdu: Any) -> np.ndarray:
    """Physical pixel values as native float64 (astropy applies BZERO/BSCALE/BLANK)."""
    data = np.asarray(hdu.data)
    return np.array(data, dtype=np.float64)  # dtype('float64') is native: converts '>f4' etc.


def _merged_header(hdul: fits.HDUList, idx: int) -> fits.Header:
    """The chosen HDU's header plus the primary header's keywords it lacks.

    Survey metadata (FILTER, EXPTIME...) often sits in the primary header of a multi-extension
    file; inheriting it lets :func:`read_meta` find it and products keep it.  Scaling cards are
    dropped because the data are returned as physical float values.
    """
    header = hdul[idx].header.copy()
    if idx > 0:
        for card in hdul[0].header.cards:
            key = card.keyword
            if (key and key not in ("COMMENT", "HISTORY", "") and not _STRUCTURAL.match(key)
                    and not _WCS_CARD.match(key) and key not in header):
                header.append(card)
    for key in ("BZERO", "BSCALE", "BLANK"):
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def _celestial_wcs(header: fits.Header, hdul: fits.HDUList | None, path: Path | str) -> Any:
    """``astropy.wcs.WCS`` of the header if it is celestial, else None (warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, fobj=hdul)
        except Exception as exc:  # any WCS failure just means "no WCS"
            log.warning("%s: ignoring an unusable WCS (%s)", path, exc)
            return None
    if not wcs.has_celestial:
        return None
    return wcs.celestial if wcs.naxis > 2 else wcs


def _read_mask(mask: int | str | PathLike, hdul: fits.HDUList, path: Path,
               shape: tuple[int, ...]) -> np.ndarray:
    """Boolean bad-pixel mask (nonzero = bad) from an extension of ``hdul`` or a FITS file."""
    if isinstance(mask, (int, np.integer)) and not isinstance(mask, bool):
        idx = _select_hdu(hdul, int(mask), path)
        where = f"{path}[{int(mask)}]"
        values = np.asarray(hdul[idx].data)
    else:
        idx = _find_extname(hdul, str(mask)) if isinstance(mask, str) else None
        if idx is not None:
            idx = _select_hdu(hdul, idx, path)
            where = f"{path}[{mask}]"
            values = np.asarray(hdul[idx].data)
        else:
            mpath = Path(mask)
            if not mpath.exists():
                raise MissingFileError(
                    f"mask {str(mask)!r} is neither an extension of {path} "
                    f"(HDUs: {_describe_hdus(hdul)}) nor an existing file")
            with _open_fits(mpath, "mask file") as mh:
                midx = _select_hdu(mh, None, mpath)
                values = np.array(mh[midx].data)
            where = str(mpath)
    if values.shape != shape:
        raise InputError(f"mask {where} has shape {values.shape} but image {path} has shape "
                         f"{shape} (ny, nx)")
    with np.errstate(invalid="ignore"):
        return values != 0  # NaN != 0 too: a NaN in a mask counts as bad


def _header_value(header: Any, keyword: str | None) -> Any:
    if header is None or keyword is None or keyword not in header:
        return None
    value = header[keyword]
    if value is None or isinstance(value, fits.card.Undefined):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


def read_meta(header: Any, *, keys: HeaderKeys | None = None,
              overrides: Mapping[str, Any] | None = None, required: Iterable[str] = (),
              source: str | os.PathLike = "") -> ImageMeta:
    """Exposure metadata from a FITS header, with overrides.

    Parameters
    ----------
    header : astropy.io.fits.Header, dict-like or None
    keys : HeaderKeys, optional
        Keywords of each field (default ``HeaderKeys()``: FILTER, EPOCH, EXPTIME, GAIN,
        RDNOISE, NIGHT).
    overrides : dict, optional
        Values of ``band, epoch, exptime [s], gain [e-/ADU], rdnoise [e-], night`` that win over
        the header (None values are ignored).
    required : iterable of str
        Fields that must be found in the header or the overrides.
    source : str
        File name used in error messages.

    Returns
    -------
    ImageMeta
        Missing optional fields: band/epoch/exptime/night None, rdnoise 0.0.  The gain is the
        ``GAIN`` keyword (configurable), else ``CCDGAIN``/``ATODGAIN``/``EGAIN``; for a frame
        in electrons or counts per second (``BUNIT``) it is multiplied out with the exposure
        time (:func:`skysub.image.header_gain`).  Without one it is 1.0 with
        ``gain_known=False``: the sources' own shot noise is then left out.

    Raises
    ------
    HeaderError
        A required field is missing (the message names the file, the keyword and the
        ``--option`` that overrides it), or a numeric keyword does not hold a number.
    InputError
        Unknown override/required field names, or invalid values (exptime <= 0, ...).
    """
    keys = keys if keys is not None else HeaderKeys()
    src = f"{source}: " if str(source) else ""
    overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    bad = sorted(set(overrides) - set(META_FIELDS))
    if bad:
        raise InputError(f"{src}unknown metadata override(s) {', '.join(bad)}; expected some of "
                         f"{', '.join(META_FIELDS)}")
    required = tuple(required)
    bad = sorted(set(required) - set(META_FIELDS))
    if bad:
        raise InputError(f"unknown required metadata field(s) {', '.join(bad)}; expected some of "
                         f"{', '.join(META_FIELDS)}")
    values: dict[str, Any] = {}
    for name in META_FIELDS:
        keyword = getattr(keys, name)
        if name in overrides:
            value, origin = overrides[name], f"--{name}"
        else:
            value, origin = _header_value(header, keyword), f"header keyword {keyword}"
        if name == "gain" and name not in overrides:  # fallbacks, rate units x EXPTIME
            try:
                fv = float(value) if value is not None else None
            except (TypeError, ValueError):
                raise HeaderError(f"{src}{origin} must be a number (gain), got "
                                  f"{value!r}") from None
            if fv is None or (np.isfinite(fv) and fv > 0):  # else ImageMeta says why
                # exptime comes before gain in META_FIELDS: values holds it, checked
                value, how = header_gain(header, keyword, values.get("exptime"))
                if value is None and name in required:
                    what = (f"header keyword {keyword} missing" if keyword
                            else "no header keyword configured for gain")
                    raise HeaderError(f"{src}{what}" + (f" ({how})" if how else "")
                                      + "; give --gain (e-/ADU; for a frame in counts per "
                                      "second, the exposure time x the detector gain)")
                if value is None:
                    values["gain"], values["gain_known"] = _META_DEFAULTS["gain"], False
                    continue
        if value is None:
            if name in required:
                what = (f"header keyword {keyword} missing" if keyword
                        else f"no header keyword configured for {name}")
                raise HeaderError(f"{src}{what}; give --{name}")
            values[name] = _META_DEFAULTS[name]
            continue
        if name in _META_FLOAT:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise HeaderError(f"{src}{origin} must be a number ({name}), got "
                                  f"{value!r}") from None
        else:
            value = str(value).strip()
        values[name] = value
    try:
        return ImageMeta(**values)
    except InputError as exc:
        raise InputError(f"{src}{exc}") from None


def read_image(path: PathLike, *, hdu: int | str | None = None,
               mask: int | str | PathLike | None = None, keys: HeaderKeys | None = None,
               overrides: Mapping[str, Any] | None = None,
               required: Iterable[str] = ()) -> Image:
    """Read one exposure from a FITS file.

    Parameters
    ----------
    path : str or Path
    hdu : int, str or None
        HDU number or EXTNAME (case-insensitive); None: the first HDU holding a 2-D image.
    mask : int, str, Path or None
        Bad-pixel mask: an HDU number or EXTNAME of the same file, or the path of a FITS file
        (first 2-D HDU); nonzero values are bad.  Non-finite pixels are always masked.
    keys, overrides, required
        Metadata keywords, overriding values and required fields (see :func:`read_meta`).
        Keywords missing from an extension's header are looked up in the primary header.

    Returns
    -------
    Image
        ``data`` float64 native byte order, shape (ny, nx), physical values (BZERO/BSCALE
        applied); ``mask`` True = bad; ``header`` (scaling cards removed); ``wcs`` an
        ``astropy.wcs.WCS`` if the header has a celestial WCS, else None; ``meta``; ``path``.

    Raises
    ------
    MissingFileError
        The image (or the mask file) does not exist.
    InputError
        Not a FITS file, a bad ``hdu`` (the message lists the HDUs), a mask of the wrong
        shape, or invalid metadata values.
    HeaderError
        A required metadata keyword is missing and not overridden.
    """
    path = Path(path)
    with _open_fits(path, "image file") as hdul:
        idx = _select_hdu(hdul, hdu, path)
        try:
            data = _float_data(hdul[idx])
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"{path}: cannot read the data of HDU {idx} ({exc})") from None
        header = _merged_header(hdul, idx)
        bad = None if mask is None else _read_mask(mask, hdul, path, data.shape)
        wcs = _celestial_wcs(header, hdul, path)
    meta = read_meta(header, keys=keys, overrides=overrides, required=required, source=path)
    if meta.gain_known and (overrides or {}).get("gain") is None:
        meta = _plausible_gain(data, bad, meta, path, "gain" in tuple(required))
    return Image(data=data, mask=bad, header=header, wcs=wcs, meta=meta, path=path)


#: below this pixel noise in electrons (sky photons plus read noise: >= a few e- on any CCD) a
#: header's gain does not fit the frame's units (a frame in counts per second, or normalised)
MIN_PIXEL_NOISE_E = 0.5


def _plausible_gain(data: np.ndarray, bad: np.ndarray | None, meta: ImageMeta, path: Path,
                    required: bool) -> ImageMeta:
    """``meta``, or ``meta`` with ``gain_known=False`` (a warning, or with ``required`` an
    error) when the header's gain makes the pixel noise less than ``MIN_PIXEL_NOISE_E``."""
    from dataclasses import replace

    step = max(1, data.shape[0] // 256)
    rows = data[::step]
    if bad is not None:
        rows = np.where(bad[::step], np.nan, rows)
    d = np.diff(rows, axis=1).ravel()
    d = d[np.isfinite(d)]
    if d.size < 100:
        return meta
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / np.sqrt(2.0)
    if not (sigma > 0) or sigma * meta.gain >= MIN_PIXEL_NOISE_E:
        return meta
    why = (f"{path}: the header's gain {meta.gain:g} e-/unit makes the pixel noise "
           f"{sigma * meta.gain:.2g} e- (< {MIN_PIXEL_NOISE_E} e-): the frame is probably in "
           "counts per second or normalised")
    if required:
        raise HeaderError(f"{why}; give --gain (e-/ADU; for a frame in counts per second, the "
                          "exposure time x the detector gain)")
    warnings.warn(f"{why}; the gain is treated as unknown (give --gain)", stacklevel=3)
    return replace(meta, gain_known=False)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output(path: PathLike, *, overwrite: bool = False,
                 inputs: Iterable[PathLike | None] = ()) -> Path:
    """Check that ``path`` may be written; return it as a Path.

    Raises
    ------
    OutputExistsError
        ``path`` is one of ``inputs`` (always, even with ``overwrite``), or it exists and
        ``overwrite`` is False.
    InputError
        ``path`` is a directory.
    """
    path = Path(path)
    for inp in inputs:
        if isinstance(inp, Image):  # an in-memory image: its file, if it was read from one
            inp = inp.path
        if inp is None:
            continue
        if _same_file(path, Path(inp)):
            raise OutputExistsError(f"refusing to write {path}: it is one of the inputs "
                                    f"({inp}); choose another output file")
    if path.is_dir():
        raise InputError(f"output {path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; use --overwrite (overwrite=True) to replace it")
    return path


def _atomic_write(path: Path, write: Any) -> Path:
    """Call ``write(tmp_path)`` then move the result onto ``path``; clean up on failure.

    The temporary file sits in the destination folder (so :func:`os.replace` is an atomic
    rename) and ends with the destination's name, so suffix-based choices (``.gz``) match.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _product_header(header: Any, wcs: Any) -> fits.Header:
    """Non-structural cards of ``header``; WCS cards replaced by ``wcs`` when given."""
    out = fits.Header()
    if header is not None:
        for card in fits.Header(header).cards:
            key = card.keyword
            if _STRUCTURAL.match(key) or (wcs is not None and _WCS_CARD.match(key)):
                continue
            out.append(card, end=True)
    if wcs is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            out.update(wcs.to_header(relax=True))
    return out


def _as_hdu_data(name: str, array: Any) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    if arr.dtype.kind in "iu":
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)
    raise InputError(f"extension {name}: cannot write an array of dtype {arr.dtype} to FITS; "
                     "expected numbers or booleans")


def write_fits_product(path: PathLike, data: np.ndarray, *, header: Any = None, wcs: Any = None,
                       extensions: Mapping[str, np.ndarray] | None = None,
                       overwrite: bool = False, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Write a map (background, rms, template...) as FITS, atomically.

    Parameters
    ----------
    path : str or Path
    data : ndarray
        Primary HDU, written as float32.
    header : astropy.io.fits.Header, optional
        Header of the input image; its non-structural cards (metadata, history) are kept.
    wcs : astropy.wcs.WCS, optional
        Written to the primary HDU and every extension (replacing the header's WCS cards).
    extensions : dict, optional
        EXTNAME -> array, written as ImageHDUs in order (floats as float32, bool as uint8,
        integers unchanged), e.g. ``{"RMS": rms, "MASK": mask.astype(np.uint8)}``.
    overwrite : bool
        Replace an existing file.
    inputs : iterable of paths
        Files this product was made from; writing over any of them is always refused.

    Returns
    -------
    Path

    Raises
    ------
    OutputExistsError, InputError
        See :func:`check_output`; InputError also for arrays FITS cannot hold.
    """
    path = check_output(path, overwrite=overwrite, inputs=inputs)
    primary_data = _as_hdu_data("PRIMARY", data)
    if primary_data.dtype.kind != "f":
        primary_data = primary_data.astype(np.float32)
    hdr = _product_header(header, wcs)
    hdus: list[Any] = [fits.PrimaryHDU(data=primary_data, header=hdr)]
    wcs_hdr = _product_header(None, wcs) if wcs is not None else None
    for name, arr in (extensions or {}).items():
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"extension names must be non-empty strings, got {name!r}")
        ext = fits.ImageHDU(data=_as_hdu_data(name, arr), header=wcs_hdr, name=name.upper())
        hdus.append(ext)
    hdul = fits.HDUList(hdus)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            # long header values (e.g. HISTORY from other tools) are fine as written
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            hdul.writeto(tmp, output_verify="silentfix")

    return _atomic_write(path, write)


def _table_format(path: Path, what: str) -> str:
    name = path.name.lower()
    for ext, fmt in TABLE_FORMATS.items():
        if name.endswith(ext) or (fmt == "fits" and name.endswith(ext + ".gz")):
            return fmt
    raise InputError(f"{what} {path}: unknown table format; expected a file name ending in "
                     f"{', '.join(TABLE_FORMATS)} (FITS may be gzipped)")


def write_table(table: Table, path: PathLike, *, overwrite: bool = False,
                inputs: Iterable[PathLike | None] = ()) -> Path:
    """Write a table as CSV, ECSV or FITS (chosen by the file extension), atomically.

    Same refusal rules as :func:`check_output`; returns the path.
    """
    path = Path(path)
    fmt = _table_format(path, "output table")
    path = check_output(path, overwrite=overwrite, inputs=inputs)
    if not isinstance(table, Table):
        raise InputError(f"write_table expects an astropy Table, got {type(table).__name__}")

    def write(tmp: Path) -> None:
        table.write(tmp, format=fmt)

    return _atomic_write(path, write)


# ---------------------------------------------------------------------------------------------
# catalogues
# ---------------------------------------------------------------------------------------------
def _numeric_column(col: Any, name: str, source: str) -> np.ndarray:
    """A float64 array of ``col``; masked/empty entries become NaN; text is a CatalogError."""
    mask = np.asarray(col.mask) if isinstance(col, MaskedColumn) else np.zeros(len(col), bool)
    values = np.asarray(col)
    if values.dtype.kind in "biuf":
        out = values.astype(np.float64)
    else:
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):  # only reached for text columns (rare, error path)
            if mask[i]:
                continue
            s = v.decode() if isinstance(v, bytes) else str(v)
            if not s.strip():
                continue
            try:
                out[i] = float(s)
            except ValueError:
                raise CatalogError(f"{source}: column {name!r} must be numeric, but row {i} "
                                   f"holds {s!r}") from None
    out[mask] = np.nan
    return out


def read_catalog(path: PathLike | Table | np.ndarray) -> Table:
    """Read a source catalogue: a file (CSV, ECSV, FITS, SExtractor) or an in-memory table.

    Parameters
    ----------
    path : str or Path, astropy Table/QTable, or numpy structured array
        Files by extension: ``.csv``, ``.ecsv``, ``.fits``/``.fit``/``.fts`` (a FITS_LDAC file's
        ``LDAC_OBJECTS`` table is used), ``.cat`` (SExtractor ASCII_HEAD, or FITS_LDAC when the
        file is FITS).  Tables and record arrays are copied, never modified.

    Returns
    -------
    astropy.table.Table
        Column names lower-cased.  ``id`` (any type) plus either ``x, y`` (0-based pixels) or
        ``ra, dec`` (degrees).  Optional numeric columns (float64, blank = NaN): ``mag``,
        ``r50`` [px], ``sersic_n``, ``ba``, ``theta`` [degrees, counter-clockwise from +x];
        optional ``image`` (str: the file name the row belongs to).  Other columns are kept.
        ``table.meta["source"]`` holds the path.  A catalogue with no rows is valid.
        SExtractor (``NUMBER``, ``X_IMAGE``/``Y_IMAGE`` 1-based, ``ALPHA_J2000``/
        ``DELTA_J2000``), photutils ``SourceCatalog.to_table()`` and ``sep.extract`` columns are
        translated (see :mod:`skysub.catalogs`); ``table.meta["catalog_format"]`` says which.

    Raises
    ------
    MissingFileError
        The file does not exist.
    CatalogError
        Unreadable file, unknown extension, missing ``id`` or positions (the message lists
        the columns found and the formats understood), duplicate names after lower-casing, or
        text in a numeric column.
    """
    from .catalogs import as_table, normalise_catalog, read_sextractor_file, sniff_format

    from_array = False
    if isinstance(path, Table | np.ndarray | dict):
        from_array = not isinstance(path, Table)
        source = str(path.meta.get("source", "<table>")) if isinstance(path, Table) else (
            "<array>")
        table = as_table(path, source)
    else:
        path = Path(path)
        if not path.exists():
            raise MissingFileError(f"catalogue file not found: {path}")
        if path.name.lower().endswith((".cat", ".ldac")):
            fmt = sniff_format(path)
        else:
            try:
                fmt = _table_format(path, "catalogue")
            except InputError as exc:
                raise CatalogError(f"{exc}, or .cat (SExtractor)") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fits.verify.VerifyWarning)
                if fmt in ("fits", "ascii"):
                    table = read_sextractor_file(path, fmt)
                else:
                    table = Table.read(path, format=fmt)
        except Exception as exc:  # astropy raises many kinds: all mean "unreadable"
            what = "SExtractor ASCII_HEAD" if fmt == "ascii" else fmt
            raise CatalogError(f"{path}: cannot read as {what} ({type(exc).__name__}: "
                               f"{exc})") from None
        source = str(path)
    lower = [c.lower().strip() for c in table.colnames]
    dupes = sorted({c for c in lower if lower.count(c) > 1})
    if dupes:
        raise CatalogError(f"{source}: columns {', '.join(dupes)} appear twice (names are "
                           "case-insensitive)")
    if table.colnames:
        table.rename_columns(list(table.colnames), lower)
    normalise_catalog(table, source, from_array=from_array)
    for name in CATALOG_NUMERIC:
        if name in table.colnames:
            table[name] = _numeric_column(table[name], name, source)
    if "image" in table.colnames:
        table["image"] = np.array(
            [(v.decode() if isinstance(v, bytes) else str(v)).strip()
             for v in np.asarray(table["image"])], dtype=str)
    table.meta["source"] = source
    return table


def catalog_for_image(table: Table, image: Image, *, source: str = "") -> Table:
    """The catalogue rows of one image, with pixel positions.

    Parameters
    ----------
    table : astropy.table.Table
        As returned by :func:`read_catalog`.
    image : Image
    source : str
        Catalogue name for messages (default ``table.meta["source"]``).

    Returns
    -------
    astropy.table.Table
        A copy holding, if the catalogue has an ``image`` column, only the rows whose
        ``image`` equals the image's file name or stem (a directory part is ignored); float
        columns ``x, y`` (0-based pixels: taken from the catalogue when present, otherwise
        ``ra, dec`` [deg] projected with ``image.wcs.all_world2pix(ra, dec, 0)``); and a
        boolean ``on_image`` (centre within ``-0.5 <= x < nx - 0.5``, same for y).  All other
        columns are kept.

    Raises
    ------
    CatalogError
        The catalogue gives only ra/dec and the image has no celestial WCS, or it has an
        ``image`` column and the image has no file name.
    """
    source = source or str(table.meta.get("source", "<table>"))
    out = table.copy()
    if "image" in out.colnames:
        if image.path is None:
            raise CatalogError(f"catalogue {source} has an image column but the image was not "
                               "read from a file, so its rows cannot be selected")
        names = {image.path.name, image.path.stem}
        col = np.asarray(out["image"]).astype(str)
        uniq, inverse = np.unique(col, return_inverse=True)
        keep_u = np.array([Path(u.strip()).name in names or u.strip() in names for u in uniq],
                          dtype=bool)
        out = out[keep_u[inverse.ravel()]] if len(col) else out
    n = len(out)
    if "x" in out.colnames and "y" in out.colnames:
        x = np.asarray(out["x"], dtype=np.float64)
        y = np.asarray(out["y"], dtype=np.float64)
    elif "ra" in out.colnames and "dec" in out.colnames:
        if image.wcs is None:
            raise CatalogError(f"catalogue {source} gives ra/dec but {image.name} has no "
                               "celestial WCS; add x, y columns or use an image with a WCS")
        ra = np.asarray(out["ra"], dtype=np.float64)
        dec = np.asarray(out["dec"], dtype=np.float64)
        if n:
            with warnings.catch_warnings(), np.errstate(invalid="ignore"):
                warnings.simplefilter("ignore")
                x, y = image.wcs.all_world2pix(ra, dec, 0, quiet=True)
            x = np.asarray(x, np.float64)
            y = np.asarray(y, np.float64)
        else:
            x = y = np.zeros(0)
    else:
        raise CatalogError(f"catalogue {source} needs x, y or ra, dec columns; found: "
                           f"{', '.join(out.colnames)}")
    out["x"] = x
    out["y"] = y
    ny, nx = image.shape
    with np.errstate(invalid="ignore"):  # NaN positions are simply off the image
        out["on_image"] = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    return out


def expand_paths(patterns: Sequence[str | Path]) -> list[Path]:
    """Expand shell globs; every pattern must match at least one existing file."""
    out: list[Path] = []
    for p in patterns:
        p = str(p)
        if any(c in p for c in "*?["):
            hits = sorted(glob.glob(p))
            if not hits:
                raise MissingFileError(f"no file matches {p!r}")
            out.extend(Path(h) for h in hits)
        else:
            if not Path(p).exists():
                raise MissingFileError(f"image file not found: {p}")
            out.append(Path(p))
    if not out:
        raise InputError("no input images given")
    return out


def iter_images(paths: Sequence[str | Path], *, quiet: bool = False, desc: str = "images",
                **read_kwargs: Any) -> Iterator[Image]:
    """Read images one at a time (memory stays bounded by one exposure)."""
    from .progress import progress

    paths = expand_paths(paths)
    for p in progress(paths, desc=desc, quiet=quiet, unit="image"):
        yield read_image(p, **read_kwargs)


__all__ = [
    "CATALOG_NUMERIC", "META_FIELDS", "TABLE_FORMATS", "catalog_for_image", "check_output",
    "expand_paths", "iter_images", "read_catalog", "read_image", "read_meta",
    "write_fits_product", "write_table",
]
