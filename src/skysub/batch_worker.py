"""The worker side of :mod:`skysub.batch`: one task measures a group of exposures.

A task (:func:`process_exposures`) builds or reuses the estimator and the catalogue cached in
its process (:func:`_cached_tool`, :func:`_cached_catalog`: once per worker, not once per
exposure), reads each FITS file -- the next one prefetched in a thread while the current one
is measured -- measures it with :func:`skysub.workflows.measure_background` /
:func:`~skysub.workflows.measure_photometry`, writes its partitions atomically and returns one
small record per exposure (status, rows, read / compute / write seconds, CPU, peak memory).
It runs in a local worker process, in the calling process, or in a Dask worker alike; nothing
here imports :mod:`skysub.batch` (the client side).
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from . import kernels
from .io import _atomic_write

#: what a task computes: a :class:`skysub.batch.BatchSpec` (typed loosely here, so that the
#: worker side never imports the client side)
BatchSpec = Any

#: output formats: name -> (sub-folder, file suffix)
FORMATS = {"parquet": ("parquet", ".parquet"), "csv": ("csv", ".csv")}
_FITS_SUFFIXES = (".fits.gz", ".fits.fz", ".fit.gz", ".fits", ".fit", ".fts", ".fz")


_LOCK = threading.Lock()
_TOOLS: dict[tuple, tuple[Any, dict]] = {}
_CATALOGS: dict[tuple, Table] = {}
#: estimators/photometers built in this process (tests check "once per worker")
BUILD_COUNT = 0


def _file_stamps(spec: BatchSpec) -> tuple:
    """(path, mtime, size) of the spec's input files: a long-lived worker that has cached an
    estimator rebuilds it when its model, templates or configuration file changed."""
    out = []
    for value in (spec.config, spec.templates, spec.model, spec.psf):
        if value is not None and os.path.isfile(value):
            st = os.stat(value)
            out.append((value, st.st_mtime_ns, st.st_size))
    return tuple(out)


_MAX_CACHED_TOOLS = 4  # estimators kept per worker (a long-lived cluster serves many runs)


def _cached_tool(spec: BatchSpec) -> tuple[Any, dict]:
    global BUILD_COUNT
    key = (spec, _file_stamps(spec))
    with _LOCK:
        if key not in _TOOLS:
            if len(_TOOLS) >= _MAX_CACHED_TOOLS:
                _TOOLS.clear()
            _TOOLS[key] = spec.build()
            BUILD_COUNT += 1
            if spec.torch_threads is not None and "torch" in sys.modules:
                # after the build: BKGnetBackground sets "all cores" when it is created
                from .nn.device import configure_threads

                configure_threads(spec.torch_threads)
        return _TOOLS[key]


def _cached_catalog(catalog: str | Table) -> Table:
    if isinstance(catalog, Table):
        return catalog
    from .io import read_catalog

    st = os.stat(catalog)
    key = (catalog, st.st_mtime_ns, st.st_size)
    with _LOCK:
        if key not in _CATALOGS:
            _CATALOGS.clear()  # one catalogue at a time is what a run needs
            _CATALOGS[key] = read_catalog(catalog)
        return _CATALOGS[key]


def exposure_name(path: str | os.PathLike) -> str:
    """The partition name of an exposure: its file name without the FITS suffix."""
    name = Path(path).name
    for suf in _FITS_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def partition_paths(output_dir: str | os.PathLike, name: str,
                    formats: Sequence[str]) -> list[Path]:
    out = Path(output_dir)
    return [out / FORMATS[f][0] / f"{name}{FORMATS[f][1]}" for f in formats]


def _to_arrow(table: Table):
    """An astropy Table as a pyarrow Table (masked entries become nulls)."""
    import pyarrow as pa

    cols = {}
    for name in table.colnames:
        col = table[name]
        mask = np.ma.getmaskarray(col) if getattr(col, "mask", None) is not None else None
        data = np.asarray(np.ma.getdata(col))
        cols[name] = pa.array(data, mask=mask if mask is not None and mask.any() else None)
    return pa.table(cols)


def _write_partition(table: Table, path: Path) -> None:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        patable = _to_arrow(table)

        def write(tmp: Path) -> None:
            pq.write_table(patable, tmp)
    else:
        def write(tmp: Path) -> None:
            table.write(tmp, format="ascii.csv")

    _atomic_write(path, write)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far [MB].

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process's own memory.
    (``getrusage``'s ``ru_maxrss`` survives ``execve``: a worker spawned by a big parent would
    report the parent's peak.)  Elsewhere ``ru_maxrss`` (KiB; bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if platform.system() == "Darwin" else r / 1024


def _new_record(path: str) -> dict:
    return {"exposure": exposure_name(path), "path": str(path), "status": "done", "rows": 0,
            "seconds": 0.0, "cpu_seconds": 0.0, "read_seconds": 0.0, "compute_seconds": 0.0,
            "write_seconds": 0.0, "worker": f"{platform.node()}:{os.getpid()}", "builds": 0,
            "peak_rss_mb": 0.0, "error_type": "", "message": "", "traceback": ""}


def _read_timed(path: str, read_kwargs: dict) -> tuple[Any, BaseException | None, float]:
    """(image or None, the exception or None, seconds): runs in the prefetch thread."""
    from .io import read_image

    t0 = time.perf_counter()
    try:
        return read_image(path, **read_kwargs), None, time.perf_counter() - t0
    except Exception as exc:  # reported by the exposure's record, not here
        return None, exc, time.perf_counter() - t0


def process_exposures(paths: Sequence[str], catalog: str | Table, spec: BatchSpec,
                      output_dir: str, formats: Sequence[str] = ("parquet",), *,
                      per_worker: int | None = None) -> list[dict]:
    """One task: measure several exposures in turn, write their partitions, return one small
    record per exposure (see :func:`process_exposure`).

    The next exposure's FITS file is read in a background thread while the current one is
    measured (reading is mostly I/O and decompression, which release the GIL), so a task of
    short exposures keeps its core busy.  ``per_worker``: the exposures this worker process
    will measure in the run (default: this task's), so that the compiled clipping kernels are
    loaded when the whole share is worth it (:func:`skysub.kernels.job`; the numbers are the
    same either way).  Never raises for a bad exposure.
    """
    with kernels.job(per_worker or len(paths)):
        return _process_exposures(paths, catalog, spec, output_dir, formats)


def _process_exposures(paths, catalog, spec, output_dir, formats) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    from .workflows import measure_background, measure_photometry


    paths = [str(p) for p in paths]
    recs = [_new_record(p) for p in paths]
    try:
        tool, read_kwargs = _cached_tool(spec)
        cat = _cached_catalog(catalog)
    except Exception as exc:  # every exposure of the task fails with the reason
        tb = traceback.format_exc()
        for rec in recs:
            rec.update(status="failed", error_type=type(exc).__name__, message=str(exc),
                       traceback=tb, builds=BUILD_COUNT, peak_rss_mb=_peak_rss_mb())
        return recs
    with ThreadPoolExecutor(1, thread_name_prefix="skysub-read") as reader:
        nxt = reader.submit(_read_timed, paths[0], read_kwargs) if paths else None
        for k, rec in enumerate(recs):
            t0, c0 = time.perf_counter(), time.process_time()
            image, err, rec["read_seconds"] = nxt.result()
            nxt = (reader.submit(_read_timed, paths[k + 1], read_kwargs)
                   if k + 1 < len(paths) else None)
            try:
                if err is not None:
                    raise err
                t1 = time.perf_counter()
                if spec.photometer is None:
                    table = measure_background([image], cat, tool, quiet=True)
                else:
                    table = measure_photometry([image], cat, tool, quiet=True)
                del image
                t2 = time.perf_counter()
                rec["compute_seconds"] = t2 - t1
                for p in partition_paths(output_dir, rec["exposure"], formats):
                    _write_partition(table, p)
                rec["write_seconds"] = time.perf_counter() - t2
                rec["rows"] = len(table)
            except Exception as exc:  # recorded, not raised: the run goes on
                rec.update(status="failed", error_type=type(exc).__name__, message=str(exc),
                           traceback="".join(traceback.format_exception(exc)))
            # wall time of this exposure: its (prefetched) read plus what ran here
            rec["seconds"] = rec["read_seconds"] + time.perf_counter() - t0
            rec["cpu_seconds"] = time.process_time() - c0  # CPU this process got meanwhile
            rec["builds"] = BUILD_COUNT
            rec["peak_rss_mb"] = _peak_rss_mb()
    return recs


def process_exposure(path: str, catalog: str | Table, spec: BatchSpec, output_dir: str,
                     formats: Sequence[str] = ("parquet",)) -> dict:
    """One exposure as a task: measure it, write its partitions, return a small record.

    Never raises for a bad exposure: the record's ``status`` is ``"failed"`` with the error
    type, message and traceback, so one corrupt file does not stop a survey.  The record also
    says where the time went: ``read_seconds``, ``compute_seconds``, ``write_seconds``.
    """
    return process_exposures([path], catalog, spec, output_dir, formats)[0]


def _preload(spec: BatchSpec, catalog: str | None) -> int:
    """Runs on each worker (``Client.run``): build and cache the estimator and catalogue."""
    _cached_tool(spec)
    if catalog is not None:
        _cached_catalog(catalog)
    return BUILD_COUNT


def _pool_init(spec: BatchSpec, catalog: str | None) -> None:
    """Worker start (spawned workers): build the estimator and read the catalogue once."""
    try:
        _preload(spec, catalog)
    except Exception:  # reported per exposure by process_exposures
        pass
