"""The opticam-style reducer: frames in; catalogues, transforms, PSF parameters, light curves out.

::

    from skysub.pipeline import Reducer, OptimalExtraction

    reducer = Reducer("data", "reduced")          # scans and checks the headers
    reducer.create_catalogs()                     # detection, alignment, stacks, catalogues, PSF
    reducer.photometry(OptimalExtraction())       # lcs/optimal_annulus/<camera>_source_<n>.csv
    result = reducer.periodogram("optimal_annulus", "g", target=2)

Output folder layout::

    cat/<camera>_catalog.ecsv       id (1 = brightest), x, y (reference-frame px), flux, a, b,
                                    theta_deg (DEGREES), ...
    cat/<camera>_transforms.json    reference frame, and per frame the reference -> frame
                                    transform (matrix, offset, n_matches, rms) or null
    cat/<camera>_stack.fits         stacked reference frame
    cat/psf_params.json             camera -> semimajor_sigma, semiminor_sigma [px],
                                    orientation [DEGREES CCW from +x]
    cat/catalogs.png                stacks with the catalogues
    diag/<camera>_frames.ecsv       per frame: file, mjd, bmjd, exptime, background, rms,
                                    n_detected, aligned, n_matches, align_rms, dx, dy, rotation
    diag/header_times.png, diag/background.png, diag/<photometer>_rms_vs_median.png
    lcs/<photometer>/<camera>_source_<n>.csv (see skysub.pipeline.lightcurves), columns.json
    lcs/<photometer>/relative/<camera>_source_<n>.csv, diag/<photometer>_<camera>_source_<n>_
    periodogram.png

Frames are processed in parallel worker processes (``processes``; 1 = in this process).  A
re-run skips what is finished (catalogues of a camera, light curves of a camera) unless
``overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..errors import HeaderError, InputError, MissingFileError
from ..io import (
    _atomic_write,
    _merged_header,
    _open_fits,
    _select_hdu,
    check_output,
    read_image,
    write_fits_product,
    write_table,
)
from ..progress import progress
from . import plots
from .align import ALIGN_MODELS, AlignmentError, Transform, match_transform
from .catalog import PSF_KEYS, check_psf_params, detect_sources, psf_params, stack_frames
from .lightcurves import (
    LC_COLUMNS,
    PeriodogramResult,
    lc_name,
    periodogram,
    read_light_curve,
    relative_light_curve,
)

log = logging.getLogger("skysub")

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")


# ---------------------------------------------------------------------------------------------
# scanning
# ---------------------------------------------------------------------------------------------
@dataclass
class FrameInfo:
    """Header facts of one frame."""

    path: Path
    camera: str
    mjd: float  #: mid-exposure, UTC
    exptime: float
    binning: str
    shape: tuple[int, int]
    camera_id: str | None = None


def _binning(h: fits.Header, path: Path) -> str:
    if "BINNING" in h:
        raw = str(h["BINNING"])
    elif "CCDSUM" in h:
        raw = str(h["CCDSUM"])
    elif "XBINNING" in h and "YBINNING" in h:
        raw = f"{h['XBINNING']}x{h['YBINNING']}"
    else:
        raise HeaderError(f"{path}: no binning keyword (BINNING, CCDSUM or XBINNING/YBINNING)")
    parts = raw.lower().replace("x", " ").split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise HeaderError(f"{path}: cannot read the binning {raw!r}; expected e.g. '4x4'")
    return f"{parts[0]}x{parts[1]}"


def _mid_mjd(h: fits.Header, path: Path, exptime: float) -> float:
    from astropy.time import Time

    if "MJD-OBS" in h:
        try:
            start = float(h["MJD-OBS"])
        except (TypeError, ValueError):
            raise HeaderError(f"{path}: MJD-OBS must be a number, got {h['MJD-OBS']!r}") from None
    elif "DATE-OBS" in h:
        try:
            start = Time(str(h["DATE-OBS"]).strip(), scale="utc").mjd
        except ValueError:
            raise HeaderError(f"{path}: cannot read DATE-OBS {h['DATE-OBS']!r} as an ISO "
                              "time") from None
    else:
        raise HeaderError(f"{path}: no observation time (MJD-OBS or DATE-OBS)")
    return float(start + exptime / 2.0 / 86400.0)


def read_frame_info(path: str | Path) -> tuple[FrameInfo, fits.Header]:
    """Header facts of one frame; HeaderError naming the file and keyword when one is missing."""
    path = Path(path)
    with _open_fits(path, "frame") as hdul:
        idx = _select_hdu(hdul, None, path)
        h = _merged_header(hdul, idx)
    for key in ("FILTER", "EXPTIME"):
        if key not in h or str(h[key]).strip() == "":
            raise HeaderError(f"{path}: header keyword {key} missing")
    try:
        exptime = float(h["EXPTIME"])
    except (TypeError, ValueError):
        raise HeaderError(f"{path}: EXPTIME must be a number, got {h['EXPTIME']!r}") from None
    if not exptime > 0:
        raise HeaderError(f"{path}: EXPTIME must be positive, got {exptime}")
    cam_id = str(h["CAMERA"]).strip() if "CAMERA" in h else None
    info = FrameInfo(path, str(h["FILTER"]).strip(), _mid_mjd(h, path, exptime), exptime,
                     _binning(h, path), (int(h["NAXIS2"]), int(h["NAXIS1"])), cam_id)
    return info, h


def scan_directory(data_directory: str | Path, *, quiet: bool = False
                   ) -> tuple[dict[str, list[FrameInfo]], fits.Header]:
    """Frames of ``data_directory`` grouped by camera (= filter), in time order.

    Checks: every frame has FILTER, EXPTIME, a time and a binning keyword; all frames share one
    binning; each camera (header CAMERA, when present) carries one filter; the frames of a
    camera share one shape.  Returns the groups and the first frame's header.
    """
    d = Path(data_directory)
    if not d.is_dir():
        raise MissingFileError(f"data directory not found: {d}")
    files = sorted(p for p in d.iterdir() if p.name.lower().endswith(FITS_SUFFIXES)
                   and not p.name.startswith("."))
    if not files:
        raise InputError(f"{d} holds no FITS files (*.fits, *.fit, *.fts)")
    infos: list[FrameInfo] = []
    first_header = None
    for p in progress(files, desc="Scanning data directory", quiet=quiet, unit="file"):
        info, h = read_frame_info(p)
        infos.append(info)
        if first_header is None:
            first_header = h
    binnings = {i.binning for i in infos}
    if len(binnings) > 1:
        ex = {b: next(i.path.name for i in infos if i.binning == b) for b in binnings}
        raise HeaderError(f"{d}: frames have different binnings: "
                          + ", ".join(f"{b} (e.g. {n})" for b, n in sorted(ex.items())))
    by_id: dict[str, dict[str, str]] = {}
    for i in infos:
        if i.camera_id is not None:
            by_id.setdefault(i.camera_id, {}).setdefault(i.camera, i.path.name)
    for cid, filt in by_id.items():
        if len(filt) > 1:
            raise HeaderError(f"camera {cid} has frames with several filters: "
                              + ", ".join(f"{f} ({n})" for f, n in sorted(filt.items())))
    groups: dict[str, list[FrameInfo]] = {}
    for i in infos:
        groups.setdefault(i.camera, []).append(i)
    for cam, fr in groups.items():
        shapes = {f.shape for f in fr}
        if len(shapes) > 1:
            raise HeaderError(f"camera {cam}: frames have different shapes {sorted(shapes)}")
        if any("/" in cam or cam.startswith(".") for cam in groups):
            raise HeaderError(f"FILTER {cam!r} cannot be used in file names")
        fr.sort(key=lambda f: f.mjd)
    def order(cam: str) -> tuple:
        cid = groups[cam][0].camera_id
        return (0, int(cid), cam) if cid is not None and cid.isdigit() else (1, 0, cam)

    return {cam: groups[cam] for cam in sorted(groups, key=order)}, first_header


def barycentric_mjd(mjd_utc: np.ndarray, target: Any, site: Any) -> np.ndarray:
    """Barycentric MJD (TDB) of UTC MJDs, for a target (SkyCoord) seen from a site
    (EarthLocation): ``t_TDB + light travel time to the barycentre`` (astropy's built-in
    ephemeris, no download)."""
    from astropy.time import Time

    t = Time(np.asarray(mjd_utc, float), format="mjd", scale="utc", location=site)
    return (t.tdb + t.light_travel_time(target, "barycentric")).mjd


def _target_site(header: fits.Header | None, target: Any, site: Any):
    """Target SkyCoord and site EarthLocation from arguments or header keywords (or None)."""
    import astropy.units as u
    from astropy.coordinates import EarthLocation, SkyCoord

    h = header if header is not None else fits.Header()
    if target is None:
        if "RA" in h and "DEC" in h:
            ra, dec = h["RA"], h["DEC"]
            try:
                if isinstance(ra, str) and (":" in ra or " " in ra.strip()):
                    target = SkyCoord(ra, dec, unit=(u.hourangle, u.deg))
                else:
                    target = SkyCoord(float(ra), float(dec), unit="deg")
            except (TypeError, ValueError):
                log.warning("cannot read RA/DEC %r %r; times are not barycentred", ra, dec)
                target = None
    elif not isinstance(target, SkyCoord):
        target = SkyCoord(*target, unit="deg")
    if site is None:
        if all(k in h for k in ("OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z")):
            site = EarthLocation.from_geocentric(h["OBSGEO-X"], h["OBSGEO-Y"], h["OBSGEO-Z"],
                                                 unit=u.m)
        elif all(k in h for k in ("OBSGEO-B", "OBSGEO-L", "OBSGEO-H")):
            site = EarthLocation.from_geodetic(h["OBSGEO-L"] * u.deg, h["OBSGEO-B"] * u.deg,
                                               h["OBSGEO-H"] * u.m)
    elif not isinstance(site, EarthLocation):
        lat, lon, height = site
        site = EarthLocation.from_geodetic(lon * u.deg, lat * u.deg, height * u.m)
    return target, site


# ---------------------------------------------------------------------------------------------
# parallel map over frames
# ---------------------------------------------------------------------------------------------
def _map(func: Callable, tasks: Sequence, *, processes: int, desc: str, quiet: bool) -> list:
    """``[func(t) for t in tasks]`` in worker processes (in order), with a progress bar."""
    if processes <= 1 or len(tasks) <= 1:
        return [func(t) for t in progress(tasks, desc=desc, quiet=quiet, unit="frame")]
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(1, len(tasks) // (8 * processes))
    with ProcessPoolExecutor(max_workers=processes) as pool:
        return list(progress(pool.map(func, tasks, chunksize=chunk), desc=desc, quiet=quiet,
                             total=len(tasks), unit="frame"))


def _detect_task(task: tuple) -> dict:
    path, threshold, max_sources = task
    img = read_image(path)
    cat, sky = detect_sources(img.data, img.mask, threshold=threshold, max_sources=max_sources)
    return {"x": np.asarray(cat["x"]), "y": np.asarray(cat["y"]), **sky, "n": len(cat)}


def _recentre(data, mask, x, y, sig: float, max_shift: float = 2.0):
    """Windowed centroids (sep.winpos) near ``(x, y)``; the input position where it fails."""
    import sep

    from .catalog import sky_background

    bkg = sky_background(data, mask)
    sub = np.ascontiguousarray(data - bkg.back())
    ok = np.isfinite(x) & np.isfinite(y)
    xw, yw = x.copy(), y.copy()
    if ok.any():
        a, b, flag = sep.winpos(sub, x[ok], y[ok], sig, mask=mask)
        good = (flag == 0) & np.isfinite(a) & (np.hypot(a - x[ok], b - y[ok]) < max_shift)
        xw[ok] = np.where(good, a, x[ok])
        yw[ok] = np.where(good, b, y[ok])
    return xw, yw


def _photometry_task(task: tuple) -> list[dict]:
    path, transform, xr, yr, photometers, forced, sig = task
    img = read_image(path)
    x, y = Transform.from_dict(transform).apply(xr, yr)
    out = []
    for phot, force in zip(photometers, forced, strict=True):
        xx, yy = (x, y) if force else _recentre(img.data, img.mask, x, y, sig)
        res = phot.measure(img, xx, yy)
        last = phot.background.last
        pix = np.asarray(last.pixel_std, float)
        mean_err = np.asarray(res.bkg_err, float)
        with np.errstate(invalid="ignore"):
            bkg_err = np.sqrt(pix**2 + mean_err**2)
        out.append({"flux": res.flux, "flux_err": res.flux_err, "bkg": res.bkg,
                    "bkg_err": bkg_err, "bkg_pixel_std": pix, "bkg_mean_err": mean_err,
                    "x": xx, "y": yy, "flags": res.flags})
    return out


def _write_json(path: Path, obj: Any, *, overwrite: bool) -> Path:
    path = check_output(path, overwrite=overwrite)
    text = json.dumps(obj, indent=1)
    return _atomic_write(path, lambda tmp: tmp.write_text(text))


def default_processes() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


# ---------------------------------------------------------------------------------------------
# the reducer
# ---------------------------------------------------------------------------------------------
class Reducer:
    """Reduce a folder of multi-camera frames (see the module docstring for the outputs).

    Parameters
    ----------
    data_directory : str or Path
        FITS frames with FILTER, EXPTIME, MJD-OBS or DATE-OBS (start of exposure, UTC) and a
        binning keyword (BINNING, CCDSUM or XBINNING/YBINNING).  Frames are grouped into cameras
        by FILTER.
    out_directory : str or Path
        Created if needed.
    align : {"affine", "translation"}
        Transform fitted between each frame and its camera's reference (the first frame).
    threshold : float
        Detection threshold in background-RMS units (catalogues and alignment).
    max_align_sources : int
        Brightest detections per frame used for alignment.
    match_tol : float
        Match radius of the alignment [px].
    n_stack : int
        Aligned frames (evenly spaced in time) averaged into the stacked reference frame.
    processes : int, optional
        Worker processes (default: the CPUs available, at most 8; 1 = no workers).
    target : SkyCoord or (ra, dec) [deg], optional
        Default: header RA/DEC.  With a site, times are barycentred (BMJD, TDB).
    site : EarthLocation or (lat [deg], lon [deg], height [m]), optional
        Default: header OBSGEO-X/Y/Z or OBSGEO-B/L/H.
    quiet : bool
        No progress bars.

    Attributes
    ----------
    frames : dict camera -> list of FrameInfo (time order)
    times : dict camera -> array of BMJD (or MJD) at mid-exposure
    time_system : "BMJD_TDB" or "MJD_UTC"
    catalogs, transforms, psf_params : filled by :meth:`create_catalogs`
    """

    def __init__(self, data_directory: str | Path, out_directory: str | Path, *,
                 align: str = "affine", threshold: float = 5.0, max_align_sources: int = 30,
                 match_tol: float = 2.0, n_stack: int = 20, processes: int | None = None,
                 target: Any = None, site: Any = None, quiet: bool = False) -> None:
        if align not in ALIGN_MODELS:
            raise InputError(f"unknown alignment {align!r}; expected one of {ALIGN_MODELS}")
        if not threshold > 0:
            raise InputError(f"threshold must be positive (RMS units), got {threshold!r}")
        if int(n_stack) < 1:
            raise InputError(f"n_stack must be >= 1, got {n_stack!r}")
        self.data_directory = Path(data_directory)
        self.out_directory = Path(out_directory)
        if self.out_directory.resolve() == self.data_directory.resolve():
            raise InputError("out_directory must differ from data_directory")
        self.align = align
        self.threshold = float(threshold)
        self.max_align_sources = int(max_align_sources)
        self.match_tol = float(match_tol)
        self.n_stack = int(n_stack)
        self.processes = default_processes() if processes is None else max(1, int(processes))
        self.quiet = quiet
        self.frames, header = scan_directory(self.data_directory, quiet=quiet)
        self.binning = self.frames[next(iter(self.frames))][0].binning
        self.target, self.site = _target_site(header, target, site)
        self.times: dict[str, np.ndarray] = {}
        barycentric = self.target is not None and self.site is not None
        for cam, fr in self.frames.items():
            mjd = np.array([f.mjd for f in fr])
            self.times[cam] = barycentric_mjd(mjd, self.target, self.site) if barycentric \
                else mjd
        self.time_system = "BMJD_TDB" if barycentric else "MJD_UTC"
        if not barycentric:
            log.warning("target position or site unknown: the BMJD column holds MJD (UTC, "
                        "not barycentred)")
        self.catalogs: dict[str, Table] = {}
        self.transforms: dict[str, dict[str, Transform | None]] = {}
        self.psf_params: dict[str, dict[str, float]] = {}
        self.frame_tables: dict[str, Table] = {}
        for sub in ("cat", "diag", "lcs"):
            (self.out_directory / sub).mkdir(parents=True, exist_ok=True)
        path = self.out_directory / "diag" / "header_times.png"
        if not path.exists():
            plots.header_times({c: Table({"mjd": [f.mjd for f in fr]})
                                for c, fr in self.frames.items()}, path)

    def __repr__(self) -> str:
        n = {c: len(f) for c, f in self.frames.items()}
        return (f"Reducer({str(self.data_directory)!r}, {str(self.out_directory)!r}, "
                f"frames={n}, binning={self.binning!r}, time_system={self.time_system!r})")

    def _say(self, text: str) -> None:
        if self.quiet:
            log.info(text)
        else:
            print(text)

    @property
    def cameras(self) -> list[str]:
        return list(self.frames)

    def summary(self) -> str:
        """What the scan found, as opticam prints it."""
        lines = [f"Binning: {self.binning}", "Filters: " + ", ".join(self.cameras)]
        lines += [f"{len(fr)} {cam} images." for cam, fr in self.frames.items()]
        lines.append(f"Times: {self.time_system}")
        return "\n".join(lines)

    # -- paths ---------------------------------------------------------------------------------
    def _cat_path(self, cam: str) -> Path:
        return self.out_directory / "cat" / f"{cam}_catalog.ecsv"

    def _tr_path(self, cam: str) -> Path:
        return self.out_directory / "cat" / f"{cam}_transforms.json"

    def _frames_path(self, cam: str) -> Path:
        return self.out_directory / "diag" / f"{cam}_frames.ecsv"

    @property
    def _psf_path(self) -> Path:
        return self.out_directory / "cat" / "psf_params.json"

    def _cat_done(self, cam: str) -> bool:
        if not (self._cat_path(cam).exists() and self._tr_path(cam).exists()
                and self._frames_path(cam).exists() and self._psf_path.exists()):
            return False
        try:
            return cam in json.loads(self._psf_path.read_text())
        except (OSError, ValueError):
            return False

    # -- catalogues ----------------------------------------------------------------------------
    def create_catalogs(self, *, overwrite: bool = False) -> dict[str, Table]:
        """Detect, align, stack, catalogue and measure the PSF, per camera.

        Cameras whose outputs exist are loaded instead (unless ``overwrite``).  Frames that
        cannot be aligned are reported and left out of the photometry.
        """
        todo = [c for c in self.cameras if overwrite or not self._cat_done(c)]
        for cam in self.cameras:
            if cam not in todo:
                self._load_catalog(cam)
                self._say(f"{cam}: catalogue exists, loaded (overwrite=True / --overwrite "
                          "redoes it)")
        if todo:
            tasks = [(str(f.path), self.threshold, self.max_align_sources)
                     for cam in todo for f in self.frames[cam]]
            results = _map(_detect_task, tasks, processes=self.processes,
                           desc="Detecting sources", quiet=self.quiet)
            psf_all = {}
            if self._psf_path.exists():
                try:
                    psf_all = json.loads(self._psf_path.read_text())
                except (OSError, ValueError):
                    psf_all = {}
            i = 0
            for cam in todo:
                n = len(self.frames[cam])
                self._catalog_camera(cam, results[i:i + n], overwrite=True)
                psf_all[cam] = self.psf_params[cam]
                i += n
            _write_json(self._psf_path, psf_all, overwrite=True)
            stacks = {c: read_image(self.out_directory / "cat" / f"{c}_stack.fits").data
                      for c in self.cameras}
            plots.catalogs(stacks, self.catalogs, self.out_directory / "cat" / "catalogs.png")
            plots.background(self.frame_tables, self.out_directory / "diag" / "background.png")
        return self.catalogs

    def _catalog_camera(self, cam: str, det: list[dict], *, overwrite: bool) -> None:
        frames = self.frames[cam]
        ref = det[0]
        ref_xy = np.c_[ref["x"], ref["y"]]
        transforms: dict[str, Transform | None] = {}
        for f, d in zip(frames, det, strict=True):
            if f is frames[0]:
                transforms[f.path.name] = Transform(np.eye(2), np.zeros(2), d["n"], 0.0)
                continue
            try:
                transforms[f.path.name] = match_transform(ref_xy, np.c_[d["x"], d["y"]],
                                                          model=self.align, tol=self.match_tol)
            except AlignmentError as exc:
                log.warning("%s: %s could not be aligned: %s", cam, f.path.name, exc)
                transforms[f.path.name] = None
        n_bad = sum(t is None for t in transforms.values())
        self._say(f"{cam}: {len(frames) - n_bad} image(s) aligned, {n_bad} could not be aligned.")
        aligned = [f for f in frames if transforms[f.path.name] is not None]
        pick = np.unique(np.linspace(0, len(aligned) - 1, min(self.n_stack, len(aligned))
                                     ).round().astype(int))
        imgs = [read_image(aligned[k].path) for k in pick]
        stack = stack_frames([np.where(im.mask, np.nan, im.data) for im in imgs],
                             [transforms[aligned[k].path.name] for k in pick])
        bad = ~np.isfinite(stack)
        cat, _ = detect_sources(np.where(bad, 0.0, stack), bad, threshold=self.threshold)
        if len(cat) == 0:
            raise InputError(f"camera {cam}: no source found on the stacked frame at "
                             f"{self.threshold} sigma; lower the threshold")
        cat.add_column(np.arange(1, len(cat) + 1), name="id", index=0)
        cat.meta = {"camera": cam, "reference": frames[0].path.name,
                    "coordinates": "0-based pixels of the reference frame",
                    "theta_deg": "degrees counter-clockwise from +x"}
        ref_img = read_image(frames[0].path)
        guess = float(np.median(np.sqrt(cat["a"] * cat["b"])))
        psf = psf_params(np.where(ref_img.mask, np.nan, ref_img.data), cat["x"], cat["y"],
                         guess_sigma=max(guess, 1.0))
        self.psf_params[cam] = {k: psf[k] for k in PSF_KEYS}
        self.catalogs[cam] = cat
        self.transforms[cam] = transforms
        write_table(cat, self._cat_path(cam), overwrite=overwrite)
        write_fits_product(self.out_directory / "cat" / f"{cam}_stack.fits",
                           np.where(bad, np.nan, stack), overwrite=overwrite)
        _write_json(self._tr_path(cam), {
            "reference": frames[0].path.name, "model": self.align,
            "convention": "x_frame = matrix @ x_reference + offset (0-based pixels)",
            "frames": {k: (None if t is None else t.to_dict()) for k, t in transforms.items()}},
            overwrite=overwrite)
        rows = []
        for f, d, bm in zip(frames, det, self.times[cam], strict=True):
            t = transforms[f.path.name]
            rows.append({"file": f.path.name, "mjd": f.mjd, "bmjd": bm, "exptime": f.exptime,
                         "background": d["background"], "rms": d["rms"], "n_detected": d["n"],
                         "aligned": t is not None,
                         "n_matches": -1 if t is None else t.n_matches,
                         "align_rms": np.nan if t is None else t.rms,
                         "dx": np.nan if t is None else float(t.offset[0]),
                         "dy": np.nan if t is None else float(t.offset[1]),
                         "rotation_deg": np.nan if t is None else t.rotation_deg})
        self.frame_tables[cam] = Table(rows=rows)
        write_table(self.frame_tables[cam], self._frames_path(cam), overwrite=overwrite)

    def _load_catalog(self, cam: str) -> None:
        self.catalogs[cam] = Table.read(self._cat_path(cam), format="ascii.ecsv")
        d = json.loads(self._tr_path(cam).read_text())
        self.transforms[cam] = {k: (None if v is None else Transform.from_dict(v))
                                for k, v in d["frames"].items()}
        self.psf_params[cam] = check_psf_params(json.loads(self._psf_path.read_text())[cam],
                                                f"{self._psf_path} [{cam}]")
        self.frame_tables[cam] = Table.read(self._frames_path(cam), format="ascii.ecsv")

    def _need_catalogs(self) -> None:
        if not self.catalogs:
            if all(self._cat_done(c) for c in self.cameras):
                for c in self.cameras:
                    self._load_catalog(c)
            else:
                raise InputError("no catalogues yet: run create_catalogs() (skysub timeseries "
                                 "reduce) first")

    # -- photometry ----------------------------------------------------------------------------
    def lc_directory(self, photometer: Any) -> Path:
        name = photometer if isinstance(photometer, str) else photometer.name
        return self.out_directory / "lcs" / name

    def _lc_done(self, recipe, cam: str) -> bool:
        d = self.lc_directory(recipe)
        return (d / "columns.json").exists() and all(
            (d / lc_name(cam, i)).exists() for i in self.catalogs[cam]["id"])

    def photometry(self, photometer: Any | Iterable[Any], *, overwrite: bool = False
                   ) -> dict[str, dict[str, list[Path]]]:
        """Light curves of every catalogued source of every camera.

        Parameters
        ----------
        photometer : ApertureExtraction, OptimalExtraction or a list of them
            (see :mod:`skysub.pipeline.photometers`); several are run in one pass over the
            frames.
        overwrite : bool
            Redo cameras whose light curves exist (otherwise they are skipped).

        Returns
        -------
        dict photometer name -> camera -> list of light-curve paths
        """
        self._need_catalogs()
        recipes = list(photometer) if isinstance(photometer, (list, tuple)) else [photometer]
        for r in recipes:
            if not hasattr(r, "build"):
                raise InputError(f"not a pipeline photometer: {r!r}; use "
                                 "skysub.pipeline.ApertureExtraction or OptimalExtraction")
        names = [r.name for r in recipes]
        if len(set(names)) != len(names):
            raise InputError(f"photometer names must differ, got {names}")
        out: dict[str, dict[str, list[Path]]] = {r.name: {} for r in recipes}
        jobs: list[tuple[str, list]] = []
        for cam in self.cameras:
            todo = [r for r in recipes if overwrite or not self._lc_done(r, cam)]
            for r in recipes:
                if r not in todo:
                    self._say(f"{r.name}/{cam}: light curves exist, skipped (overwrite=True / "
                              "--overwrite redoes them)")
            if todo:
                jobs.append((cam, todo))
        tasks, index = [], []
        for cam, todo in jobs:
            built = [r.build(self.psf_params[cam]) for r in todo]
            forced = [r.forced for r in todo]
            psf = self.psf_params[cam]
            sig = float(np.sqrt(psf["semimajor_sigma"] * psf["semiminor_sigma"]))
            cat = self.catalogs[cam]
            xr, yr = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
            for k, f in enumerate(self.frames[cam]):
                t = self.transforms[cam].get(f.path.name)
                if t is None:
                    continue
                tasks.append((str(f.path), t.to_dict(), xr, yr, built, forced, sig))
                index.append((cam, k))
        results = _map(_photometry_task, tasks, processes=self.processes,
                       desc="Performing photometry", quiet=self.quiet) if tasks else []
        for cam, todo in jobs:
            rows = [(k, res) for (c, k), res in zip(index, results, strict=True) if c == cam]
            for j, r in enumerate(todo):
                out[r.name][cam] = self._write_lcs(cam, r, [(k, res[j]) for k, res in rows])
        for r in recipes:
            for cam in self.cameras:
                if cam not in out[r.name]:
                    out[r.name][cam] = [self.lc_directory(r) / lc_name(cam, i)
                                        for i in self.catalogs[cam]["id"]]
            if any(r in todo for _, todo in jobs):
                lcs = {c: [read_light_curve(p) for p in ps] for c, ps in out[r.name].items()}
                plots.rms_vs_median(lcs, self.out_directory / "diag"
                                    / f"{r.name}_rms_vs_median.png")
        return out

    def _write_lcs(self, cam: str, recipe, rows: list[tuple[int, dict]]) -> list[Path]:
        d = self.lc_directory(recipe)
        cat = self.catalogs[cam]
        k = np.array([r[0] for r in rows], int)
        bmjd = self.times[cam][k]
        names = np.array([self.frames[cam][i].path.name for i in k])
        paths = []
        for j, sid in enumerate(cat["id"]):
            t = Table()
            t["BMJD"] = bmjd
            for col in LC_COLUMNS[1:-1]:
                t[col] = np.array([r[1][col][j] for r in rows])
            t["frame"] = names
            paths.append(write_table(t, d / lc_name(cam, sid), overwrite=True))
        meta_path = d / "columns.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        meta.update({
            "time_system": self.time_system,
            "BMJD": ("barycentric MJD (TDB) at mid-exposure" if self.time_system == "BMJD_TDB"
                     else "MJD (UTC) at mid-exposure: NOT barycentred (target or site unknown)"),
            "flux": "total background-subtracted flux [counts]",
            "flux_err": "1-sigma error of flux, including the error of the background level",
            "bkg": "local background per pixel [counts]",
            "bkg_err": "per-pixel background uncertainty sqrt(bkg_pixel_std^2 + bkg_mean_err^2)",
            "bkg_pixel_std": "clipped per-pixel scatter of the background (opticam's bkg_err)",
            "bkg_mean_err": "1-sigma error of the background level bkg itself",
            "x, y": "frame pixel position (0-based)", "flags": "skysub.flags bits",
            "photometer": recipe.describe()})
        meta.setdefault("psf_params", {})[cam] = self.psf_params[cam]
        _write_json(meta_path, meta, overwrite=True)
        return paths

    # -- light curves --------------------------------------------------------------------------
    def light_curve(self, photometer: Any, camera: str, source: int) -> Table:
        """The light curve of catalogue source ``source`` (id) of ``camera``."""
        self._check_camera(camera)
        return read_light_curve(self.lc_directory(photometer) / lc_name(camera, source))

    def _check_camera(self, camera: str) -> None:
        if camera not in self.frames:
            raise InputError(f"unknown camera {camera!r}; cameras are {self.cameras}")

    def comparison_stars(self, photometer: Any, camera: str, target: int, n: int = 3
                         ) -> list[int]:
        """The ``n`` brightest other catalogue sources with a complete light curve."""
        self._need_catalogs()
        self._check_camera(camera)
        out = []
        for sid in self.catalogs[camera]["id"]:
            if int(sid) == int(target):
                continue
            lc = self.light_curve(photometer, camera, int(sid))
            if np.isfinite(np.asarray(lc["flux"], float)).all():
                out.append(int(sid))
            if len(out) == n:
                break
        if not out:
            raise InputError(f"{camera}: no comparison star with a complete light curve")
        return out

    def relative_light_curve(self, photometer: Any, camera: str, target: int,
                             comparisons: Sequence[int] | None = None, *,
                             overwrite: bool = False) -> Table:
        """Target / sum of comparisons (median-normalised), written to
        ``lcs/<photometer>/relative/<camera>_source_<target>.csv`` (re-derived on every call;
        ``comparisons`` default: :meth:`comparison_stars`; ``overwrite`` is accepted for symmetry
        and has no effect)."""
        self._need_catalogs()
        comps = list(comparisons) if comparisons is not None else \
            self.comparison_stars(photometer, camera, target)
        ids = set(int(i) for i in self.catalogs[camera]["id"])
        for sid in [target, *comps]:
            if int(sid) not in ids:
                raise InputError(f"{camera}: no source {sid} in the catalogue (ids 1-"
                                 f"{max(ids)})")
        if int(target) in [int(c) for c in comps]:
            raise InputError(f"the target {target} cannot be its own comparison star")
        rel = relative_light_curve(self.light_curve(photometer, camera, target),
                                   [self.light_curve(photometer, camera, c) for c in comps])
        rel.meta["comparisons"] = [int(c) for c in comps]
        # derived in milliseconds from the light curves: always re-derived, so the file always
        # matches the light curves and comparisons it came from
        write_table(rel, self.lc_directory(photometer) / "relative" / lc_name(camera, target),
                    overwrite=True)
        return rel

    def periodogram(self, photometer: Any, camera: str, target: int,
                    comparisons: Sequence[int] | None = None, *, plot: bool = True,
                    true_frequency: float | None = None, overwrite: bool = False,
                    **kwargs) -> PeriodogramResult:
        """Lomb-Scargle periodogram of the target's relative light curve (frequencies in Hz);
        ``kwargs`` go to :func:`skysub.pipeline.lightcurves.periodogram`.  With ``plot`` the
        light curve and periodogram are drawn to ``diag/<photometer>_<camera>_source_<n>_
        periodogram.png``."""
        rel = self.relative_light_curve(photometer, camera, target, comparisons,
                                        overwrite=overwrite)
        res = periodogram(rel["BMJD"], rel["rel_flux"], rel["rel_flux_err"], **kwargs)
        if plot:
            name = photometer if isinstance(photometer, str) else photometer.name
            plots.periodogram_plot(rel, res, self.out_directory / "diag"
                                   / f"{name}_{camera}_source_{int(target)}_periodogram.png",
                                   title=f"{camera} source {target}",
                                   true_frequency=true_frequency)
        return res

    def variability(self, photometer: Any, camera: str, n_comparisons: int = 3) -> Table:
        """Per source: reduced chi^2 of its relative light curve about a constant, and its RMS;
        the variable stands out with chi^2 >> 1."""
        self._need_catalogs()
        rows = []
        for sid in self.catalogs[camera]["id"]:
            comps = self.comparison_stars(photometer, camera, int(sid), n_comparisons)
            rel = relative_light_curve(self.light_curve(photometer, camera, int(sid)),
                                       [self.light_curve(photometer, camera, c) for c in comps])
            f, e = np.asarray(rel["rel_flux"]), np.asarray(rel["rel_flux_err"])
            chi2 = float(np.sum(((f - np.mean(f)) / e) ** 2) / max(len(f) - 1, 1))
            rows.append({"id": int(sid), "chi2_red": chi2, "rms": float(np.std(f)),
                         "n": len(f)})
        return Table(rows=rows)
