"""Survey-scale batch processing: many exposures in parallel, locally or on Dask, resumable.

:func:`run` measures the background (or the photometry) of every catalogued source on every
exposure.  Locally (the default) it starts its single-threaded worker processes once -- one per
core; with one worker, the calling process itself -- and gives each two tasks, a task being a
group of exposures whose next FITS read is prefetched in a thread while the current one is
measured (short exposures would otherwise pay start-up and per-task costs that dwarf their
compute).  On any running Dask scheduler (or a local Dask cluster, ``scheduler="dask"``) it runs
one Dask task per exposure, so the same call scales from a laptop to a cluster.  The per-source
columns are exactly those of ``skysub background`` /
``skysub photometry`` (each task calls :func:`skysub.workflows.measure_background` or
:func:`~skysub.workflows.measure_photometry` on its exposure), and estimators and photometers are
built by :func:`skysub.workflows.make_background` / :func:`~skysub.workflows.make_photometer`,
so every registered method (annulus, templates, mesh, bkgnet, and later ones) works here.

Output folder ``DIR``::

    DIR/parquet/<exposure>.parquet  one partition per exposure (written atomically by the worker)
    DIR/csv/<exposure>.csv          the same rows as CSV, on request (formats=("parquet", "csv"))
    DIR/_manifest.json              what was computed (method, options, catalogue), for resume
    DIR/_failures.json              the exposures that failed in the last run, with the error
    DIR/_summary.json               the last run's summary (:class:`BatchResult`)

``pyarrow.parquet.read_table("DIR/parquet")``, ``pandas.read_parquet("DIR/parquet")`` or
:func:`read_results` read the partitions back as one
table (files starting with ``_`` or ``.`` are ignored by Parquet dataset readers).

Resume: an exposure is finished when all its partitions exist; a rerun into the same folder
skips finished exposures and retries failed ones.  A rerun with different settings is refused
(the manifest says what differs) unless ``overwrite``, which deletes the folder's partitions
and recomputes everything.

Workers: the estimator (a BKGnet model, templates...) and the catalogue are built or read once
per worker process and cached there (not once per exposure); torch uses ``torch_threads``
(default 1) intra-op threads per worker, because a local cluster runs one worker process per
core.  Memory per worker is about one exposure (pixels, mask, stamps of one BKGnet batch).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from . import batch_worker
from .batch_worker import (  # noqa: F401  (re-exported: the worker side of skysub.batch)
    FORMATS,
    _cached_catalog,
    _cached_tool,
    _new_record,
    _pool_init,
    _preload,
    exposure_name,
    partition_paths,
    process_exposure,
    process_exposures,
)
from .errors import InputError, OutputExistsError
from .io import _atomic_write
from .progress import progress

log = logging.getLogger("skysub")

#: output formats: name -> (sub-folder, file suffix)
MANIFEST = "_manifest.json"
FAILURES = "_failures.json"
SUMMARY = "_summary.json"
#: settings that change speed, not results: a resume may change them
_SPEED_ONLY = ("device", "batch_size", "torch_threads")
#: default stamps per forward pass in batch runs.  CPU: measured with benchmarks/bench_batch.py
#: (BKGnet lean, 1 torch thread: 64-256 stamps per batch are alike end to end, 512 is 30-50 %
#: slower, likely cache effects); GPU: larger batches keep
#: the device busy (not measured here: no GPU on the development machines).
from .names import CPU_BATCH_SIZE, GPU_BATCH_SIZE  # noqa: E402  (re-exported here)

_CLASSICAL = {"annulus", "templates", "mesh", "aperture", "optimal", None}
#: photometers that estimate their own background: no --method estimator is built for them
#: (as in `skysub photometry`), so --model goes to the photometer alone
OWN_BACKGROUND = {"lumos"}


# ---------------------------------------------------------------------------------------------
# what to compute
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchSpec:
    """What each exposure's task computes; picklable and hashable (the worker cache key).

    ``photometer`` None measures the background only (``skysub background`` columns); a name
    measures fluxes (``skysub photometry`` columns) with ``method`` as its background.  The
    other fields are the options of :func:`skysub.workflows.make_background` /
    :func:`~skysub.workflows.make_photometer` and of :func:`skysub.io.read_image`; paths are
    absolute, so workers started elsewhere find the same files (on a shared file system).
    """

    method: str = "annulus"
    photometer: str | None = None
    config: str | None = None
    templates: str | None = None
    model: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    r_in: float | None = None
    r_out: float | None = None
    statistic: str | None = None
    radius: float | None = None
    psf_fwhm: float | None = None
    psf: str | None = None
    hdu: int | str | None = None
    mask: int | str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    torch_threads: int | None = 1
    use_mag: bool = True
    mag_offset: float = 0.0

    @property
    def kind(self) -> str:
        return "background" if self.photometer is None else "photometry"

    def build(self) -> tuple[Any, dict]:
        """(estimator or photometer, read_image keyword arguments) -- what the serial CLI builds."""
        from .config import load_config
        from .workflows import make_background, make_photometer

        cfg = load_config(self.config)
        bs = self.batch_size or self.default_batch_size()
        est = None if self.photometer in OWN_BACKGROUND else make_background(
            self.method, config=cfg, templates=self.templates, r_in=self.r_in, r_out=self.r_out,
            statistic=self.statistic, model=self.model, device=self.device, batch_size=bs)
        tool = est
        if self.photometer is not None:
            # learned photometers (lumos) may take model/device/batch_size: pass what is accepted
            extra = {"model": self.model, "device": self.device, "batch_size": bs,
                     "use_mag": self.use_mag, "mag_offset": self.mag_offset}
            accepted = inspect.signature(make_photometer).parameters
            extra = {k: v for k, v in extra.items() if k in accepted}
            tool = make_photometer(self.photometer, background=est, config=cfg,
                                   radius=self.radius, psf_fwhm=self.psf_fwhm, psf=self.psf,
                                   **extra)
        read_kwargs = {"hdu": self.hdu, "mask": self.mask, "keys": cfg.header,
                       "overrides": dict(self.overrides)}
        return tool, read_kwargs

    def default_batch_size(self) -> int:
        """:data:`CPU_BATCH_SIZE` or, when the run will use a GPU, :data:`GPU_BATCH_SIZE`."""
        dev = (self.device or "auto").lower()
        if dev.startswith(("cuda", "mps")):
            return GPU_BATCH_SIZE
        if dev != "auto" or {self.method, self.photometer} <= _CLASSICAL:
            return CPU_BATCH_SIZE  # (classical methods ignore it: no torch import for them)
        import torch

        return GPU_BATCH_SIZE if torch.cuda.is_available() else CPU_BATCH_SIZE

    def as_dict(self) -> dict:
        d = asdict(self)
        d["overrides"] = dict(self.overrides)
        d["kind"] = self.kind
        return d


def _abs_if_file(value: str | os.PathLike | None) -> str | None:
    """Absolute path when ``value`` names an existing file (a preset/model name stays as is)."""
    if value is None:
        return None
    p = Path(value)
    return str(p.resolve()) if p.exists() else str(value)


def make_spec(method: str = "annulus", *, photometer: str | None = None,
              config: str | os.PathLike | None = None, templates: str | os.PathLike | None = None,
              model: str | os.PathLike | None = None, device: str = "auto",
              batch_size: int | None = None, r_in: float | None = None,
              r_out: float | None = None,
              statistic: str | None = None, radius: float | None = None,
              psf_fwhm: float | None = None, psf: str | os.PathLike | None = None,
              hdu: int | str | None = None, mask: int | str | os.PathLike | None = None,
              overrides: dict | None = None, torch_threads: int | None = 1,
              use_mag: bool = True, mag_offset: float = 0.0) -> BatchSpec:
    """A :class:`BatchSpec` with file arguments made absolute."""
    if mask is not None and not isinstance(mask, int):
        mask = _abs_if_file(mask)
    return BatchSpec(method=method, photometer=photometer, config=_abs_if_file(config),
                     templates=_abs_if_file(templates), model=_abs_if_file(model),
                     device=device, batch_size=None if batch_size is None else int(batch_size),
                     r_in=r_in, r_out=r_out,
                     statistic=statistic, radius=radius, psf_fwhm=psf_fwhm,
                     psf=_abs_if_file(psf), hdu=hdu, mask=mask,
                     overrides=tuple(sorted((overrides or {}).items())),
                     torch_threads=torch_threads, use_mag=bool(use_mag),
                     mag_offset=float(mag_offset))


# ---------------------------------------------------------------------------------------------
# client side
# ---------------------------------------------------------------------------------------------
def _from_arrow(patable) -> Table:
    """A pyarrow Table as an astropy Table (text as str, nulls masked)."""
    out = Table()
    for name in patable.column_names:
        col = patable.column(name)
        data = col.to_numpy(zero_copy_only=False)
        if data.dtype == object:
            data = data.astype(str)
        if col.null_count:
            out[name] = np.ma.MaskedArray(data, mask=col.is_null().to_numpy(
                zero_copy_only=False))
        else:
            out[name] = data
    return out


def _seconds_since_process_start() -> float | None:
    """Seconds since this process started (Linux: /proc), None where unknown."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@dataclass
class BatchResult:
    """Summary of a :func:`run`.

    Attributes
    ----------
    output_dir : folder of the partitions
    n_exposures : exposures given
    n_done : exposures computed in this run
    n_skipped : exposures already finished by an earlier run (not recomputed)
    n_failed : exposures that failed (listed in ``DIR/_failures.json``; retried next run)
    n_pending : exposures left for a later run (``max_exposures``)
    n_rows : rows written in this run
    seconds : wall time from the first submitted exposure to the last result [s] (cluster
        start-up and the per-worker estimator build, ``preload_seconds``, excluded)
    preload_seconds : time to build the estimator (load the model) on every worker [s]
    startup_seconds : from the call to the first submitted exposure [s]: validation (the
        estimator built here), manifest and checksums, starting the workers, preloading
    shutdown_seconds : stopping the workers and writing the summary [s]
    total_seconds : the whole call [s]
    executor : what ran the tasks: ``"in-process"``, ``"processes"`` (the local pool) or
        ``"dask"``
    tasks : tasks submitted (each a group of exposures)
    workers : workers of the cluster
    peak_rss_mb : largest peak resident memory reported by a worker [MB]
    records : one dict per exposure processed in this run (see :func:`process_exposure`)
    """

    output_dir: str
    n_exposures: int = 0
    n_done: int = 0
    n_skipped: int = 0
    n_failed: int = 0
    n_pending: int = 0
    n_rows: int = 0
    seconds: float = 0.0
    preload_seconds: float = 0.0
    startup_seconds: float = 0.0
    shutdown_seconds: float = 0.0
    total_seconds: float = 0.0
    executor: str = ""
    tasks: int = 0
    workers: int = 0
    peak_rss_mb: float = 0.0
    records: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.n_failed == 0

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "failed"]

    @property
    def exposures_per_s(self) -> float:
        return self.n_done / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        lines = [f"{self.n_done} exposures done ({self.n_rows} rows), {self.n_skipped} already "
                 f"done, {self.n_failed} failed, {self.n_pending} left -> {self.output_dir}"]
        if self.records:
            lines.append(f"{self.seconds:.1f} s on {self.workers} workers "
                         f"({self.exposures_per_s:.2f} exposures/s), peak worker memory "
                         f"{self.peak_rss_mb:.0f} MB")
        else:
            lines.append("nothing to do")
        for r in self.failures[:10]:
            lines.append(f"  failed {r['path']}: {r['error_type']}: {r['message']}")
        if self.n_failed > 10:
            lines.append(f"  ... {self.n_failed - 10} more in {self.output_dir}/{FAILURES}")
        if self.n_failed:
            lines.append(f"failed exposures are listed in {self.output_dir}/{FAILURES} and "
                         "retried by the same command")
        return "\n".join(lines)

    def timing(self) -> dict:
        """Where the time went [s]: start-up, the exposures' read / compute / write (summed
        over the workers: worker-seconds) and the CPU time the workers got meanwhile, the wall
        time of the exposures, shutdown."""
        done = [r for r in self.records if np.isfinite(r.get("seconds", np.nan))]
        return {"startup": self.startup_seconds, "preload": self.preload_seconds,
                "read": float(sum(r.get("read_seconds", 0.0) for r in done)),
                "compute": float(sum(r.get("compute_seconds", 0.0) for r in done)),
                "write": float(sum(r.get("write_seconds", 0.0) for r in done)),
                "cpu": float(sum(r.get("cpu_seconds", 0.0) for r in done)),
                "exposures_wall": self.seconds, "shutdown": self.shutdown_seconds,
                "total": self.total_seconds}

    def timing_report(self) -> str:
        """:meth:`timing` as a few lines (``skysub --verbose batch`` prints them)."""
        t = self.timing()
        busy = t["read"] + t["compute"] + t["write"]
        lines = [f"time: {t['total']:.2f} s in skysub.batch.run ({self.executor}, "
                 f"{self.workers} workers, {self.tasks} tasks of {self.n_done + self.n_failed} "
                 "exposures)",
                 f"  start-up  {t['startup']:7.2f} s  (validation, manifest, starting workers; "
                 f"preload {t['preload']:.2f} s)",
                 f"  exposures {t['exposures_wall']:7.2f} s wall: read {t['read']:.2f}, compute "
                 f"{t['compute']:.2f}, write {t['write']:.2f} worker-s"
                 + (f" ({busy / (self.workers * t['exposures_wall']):.0%} of "
                    f"{self.workers} workers busy)"
                    if self.workers and t["exposures_wall"] > 0 else ""),
                 f"            CPU {t['cpu']:.2f} s"
                 + (f" ({t['cpu'] / (self.workers * t['exposures_wall']):.0%} of "
                    f"{self.workers} cores: less = the cores were shared)"
                    if self.workers and t["exposures_wall"] > 0 else ""),
                 f"  shutdown  {t['shutdown']:7.2f} s"]
        since = _seconds_since_process_start()
        if since is not None:
            lines.append(f"  process   {since:7.2f} s since the interpreter started "
                         "(imports and argument parsing included)")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "records"}
        d["timing"] = self.timing()
        d["exposures_per_s"] = self.exposures_per_s
        d["failures"] = self.failures
        return d


def parse_scheduler(value: str | None) -> tuple[str, str | None]:
    """Interpret ``--scheduler``: returns ``(kind, target)``.

    ========================  ===================================================================
    value                     meaning
    ========================  ===================================================================
    None, "local"             worker processes started once by skysub (``kind="local"``); one
                              worker runs in this process
    "dask"                    a new local Dask cluster of worker processes (``"dask"``: Dask's
                              nannies enforce ``memory_limit``; its start-up costs seconds)
    "threads"                 a new in-process Dask cluster of threads (debugging; ``"threads"``)
    "tcp://host:8786", ...    a running scheduler (tcp, tls, ucx, inproc, ws, wss; ``"address"``)
    "host:8786"               the same, tcp assumed
    "path/scheduler.json"     a scheduler file (``dask scheduler --scheduler-file``; ``"file"``)
    ========================  ===================================================================
    """
    if value is None or value == "local":
        return "local", None
    v = str(value).strip()
    if v in ("threads", "dask"):
        return v, None
    if v.endswith(".json"):
        if not Path(v).is_file():
            raise InputError(f"--scheduler {v}: scheduler file not found")
        return "file", str(Path(v).resolve())
    if "://" in v:
        proto, rest = v.split("://", 1)
        if proto not in ("tcp", "tls", "ucx", "inproc", "ws", "wss") or not rest:
            raise InputError(f"--scheduler {v!r}: expected an address like tcp://host:8786 "
                             "(protocols tcp, tls, ucx, inproc, ws, wss), a scheduler file "
                             "(.json), 'local', 'dask' or 'threads'")
        return "address", v
    host, _, port = v.rpartition(":")
    if host and port.isdigit() and 0 < int(port) < 65536:
        return "address", f"tcp://{v}"
    raise InputError(f"--scheduler {v!r}: expected an address like tcp://host:8786 or "
                     "host:8786, a scheduler file (.json), 'local', 'dask' or 'threads'")


@contextmanager
def _dask_client(scheduler: str | None, workers: int | None, memory_limit: str | float | None,
                 quiet: bool, connect_timeout: str = "30s"):
    from distributed import Client, LocalCluster

    kind, target = parse_scheduler(scheduler)
    # Dask logs every worker start/stop at INFO: keep it to warnings (errors when quiet) unless
    # skysub itself logs details (--verbose)
    dlog = logging.getLogger("distributed")
    old_level = dlog.level
    if not log.isEnabledFor(logging.INFO):
        dlog.setLevel(logging.ERROR if quiet else logging.WARNING)
    cluster = None
    if kind in ("address", "file"):
        try:
            client = (Client(target, timeout=connect_timeout) if kind == "address" else
                      Client(scheduler_file=target, timeout=connect_timeout))
        except (OSError, TimeoutError) as exc:
            dlog.setLevel(old_level)
            raise InputError(f"--scheduler {scheduler}: cannot connect to the Dask scheduler "
                             f"({exc}); is `dask scheduler` running there?") from None
    else:
        n = workers or _cores()
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=kind != "threads",
                               memory_limit=memory_limit, dashboard_address=":0",
                               silence_logs=logging.ERROR if quiet else logging.WARNING)
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        dlog.setLevel(old_level)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=1, default=str)
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def _describe_change(key: str, old: Any, new: Any) -> str:
    if key == "checksums":
        old = old or {}
        changed = sorted(n for n in {*old, *new} if old.get(n) != new.get(n))
        return f"checksums: the content of {', '.join(changed)} changed"
    return f"{key}: {old!r} there, {new!r} now"


def _prepare_output(out: Path, manifest: dict, *, overwrite: bool, inputs: Sequence[str]) -> None:
    """Create ``out``; refuse (without overwrite) a folder holding another run's results."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--output {out} is a file; give a folder")
    for inp in inputs:  # never a folder that is (or holds) one of the inputs' own path
        if Path(inp).resolve() == out.resolve():
            raise OutputExistsError(f"--output {out} is one of the inputs")
    old = _read_json(out / MANIFEST)
    parts = [p for f in FORMATS for p in (out / FORMATS[f][0]).glob(f"*{FORMATS[f][1]}")]
    if overwrite:
        for sub in {FORMATS[f][0] for f in FORMATS}:
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in (MANIFEST, FAILURES, SUMMARY):
            (out / name).unlink(missing_ok=True)
    elif old is not None:
        # a setting newer than the old manifest counts as its default there
        defaults = {f.name: f.default for f in fields(BatchSpec)}
        diff = {k: (old.get(k, defaults.get(k)), v) for k, v in manifest.items()
                if k not in _SPEED_ONLY and old.get(k, defaults.get(k)) != v}
        if diff:
            what = "; ".join(_describe_change(k, a, b) for k, (a, b) in diff.items())
            raise OutputExistsError(f"{out} holds results of a different run ({what}); use "
                                    "--overwrite to replace them or another --output folder")
    elif parts:
        raise OutputExistsError(f"{out} holds {len(parts)} partitions but no {MANIFEST}; use "
                                "--overwrite to replace them or another --output folder")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / MANIFEST, manifest)


def run(images: Sequence[str | os.PathLike], catalog: str | os.PathLike | Table,
        output_dir: str | os.PathLike, *, method: str = "annulus",
        photometer: str | None = None, spec: BatchSpec | None = None,
        workers: int | None = None, scheduler: str | None = None,
        formats: Sequence[str] = ("parquet",), overwrite: bool = False, quiet: bool = False,
        max_exposures: int | None = None, memory_limit: str | float | None = "auto",
        client: Any = None, validate: bool = True, **options: Any) -> BatchResult:
    """Process many exposures in parallel; write one partition per exposure as each finishes.

    Parameters
    ----------
    images : FITS paths or globs (``"survey/*.fits"``); exposure file names must be unique
    catalog : catalogue file (read once per worker) or an astropy Table (scattered to workers)
    output_dir : folder of the partitions (see the module notes for its layout)
    method : background method (``annulus``, ``templates``, ``mesh``, ``bkgnet``... any name
        :func:`skysub.workflows.make_background` knows)
    photometer : photometer name (``aperture``, ``optimal``...); None = background only
    spec : a ready :class:`BatchSpec` (then ``method``, ``photometer`` and ``options`` are unused)
    workers : worker processes (default: the cores of this machine); with the default local
        pool one worker is this process itself (``workers=1`` starts no other process)
    scheduler : None/"local" (worker processes started once by skysub, each task a group of
        exposures), "dask" (a local Dask cluster), "threads" (an in-process Dask cluster), a
        scheduler address ``tcp://host:8786`` or a scheduler file: see :func:`parse_scheduler`
    formats : ``("parquet",)`` (default), ``("csv",)`` or both
    overwrite : delete this folder's previous results first and recompute everything; without
        it a rerun resumes (finished exposures are skipped, failed ones retried)
    quiet : no progress bar
    max_exposures : process at most this many unfinished exposures (the rest on a later run)
    memory_limit : per worker of a local Dask cluster (Dask's ``memory_limit``: "auto",
        "2GB"...).  The default local pool does not enforce it: a limit other than "auto" (or
        None) runs the local workers on a Dask cluster, whose nannies do
    client : an existing ``distributed.Client`` to use (``scheduler`` and ``workers`` unused)
    validate : build the estimator once here first, so that a bad option (unknown method,
        missing model or templates file) is one clear error instead of one failure per exposure
    **options : the other :func:`make_spec` arguments (config, model, templates, r_in, ...)

    Returns
    -------
    BatchResult
    """
    from .io import expand_paths

    t_call = time.perf_counter()
    spec = spec or make_spec(method, photometer=photometer, **options)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InputError(f"formats {list(formats)!r}: expected one or more of "
                         f"{', '.join(FORMATS)}")
    formats = tuple(dict.fromkeys(formats))
    paths = [str(p.resolve()) for p in expand_paths(images)]
    names = [exposure_name(p) for p in paths]
    seen: dict[str, str] = {}
    for n, p in zip(names, paths, strict=True):
        if n in seen and seen[n] != p:
            raise InputError(f"two exposures share the name {n!r} ({seen[n]} and {p}); "
                             "partitions are named by exposure: rename one or run them apart")
        seen[n] = p
    order = list(dict.fromkeys(zip(names, paths, strict=True)))
    if isinstance(catalog, Table):
        cat_arg: Any = catalog
        cat_label = f"<Table of {len(catalog)} rows>"
    else:
        check = Path(catalog)
        if not check.is_file():
            from .errors import MissingFileError

            raise MissingFileError(f"--catalog {catalog}: file not found")
        cat_arg = cat_label = str(check.resolve())
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if max_exposures is not None and max_exposures < 0:
        raise InputError(f"max_exposures must be >= 0, got {max_exposures}")
    kind, _ = (("client", None) if client is not None else parse_scheduler(scheduler))
    if kind == "local" and memory_limit not in (None, "auto"):
        log.info("memory_limit=%s: running the local workers on a Dask cluster (its nannies "
                 "enforce the limit)", memory_limit)
        kind, scheduler = "dask", "dask"
    if validate:
        # clear errors up front (and in this process, not once per exposure); the local pool
        # keeps the built estimator: this process is a worker, and forked workers inherit it
        _cached_tool(spec) if kind == "local" else spec.build()
    out = Path(output_dir)
    manifest = {**spec.as_dict(), "catalog": cat_label, "formats": list(formats)}
    # the content of every input file but the exposures: a retrained model, edited templates,
    # configuration or catalogue under the same name must not be mixed with older partitions
    manifest["checksums"] = {k: _sha256(v) for k, v in manifest.items()
                             if k in ("config", "templates", "model", "psf", "catalog")
                             and isinstance(v, str) and Path(v).is_file()}
    _prepare_output(out, manifest, overwrite=overwrite, inputs=[*paths, cat_label])

    done = [(n, p) for n, p in order
            if all(q.is_file() for q in partition_paths(out, n, formats))]
    finished = set(done)
    todo = [(n, p) for n, p in order if (n, p) not in finished]
    pending = 0
    if max_exposures is not None and len(todo) > max_exposures:
        pending = len(todo) - max_exposures
        todo = todo[:max_exposures]
    result = BatchResult(output_dir=str(out), n_exposures=len(order), n_skipped=len(done),
                         n_pending=pending)
    failures: list[dict] = []
    if todo and kind == "local":
        _run_local(todo, cat_arg, spec, out, formats, result, failures, quiet, workers,
                   t_call)
    elif todo:
        result.executor = "dask"
        ctx = _existing(client) if client is not None else _dask_client(
            scheduler, workers, memory_limit, quiet)
        with ctx as cl:
            result.workers = len(cl.nthreads())
            if result.workers == 0:
                log.warning("the Dask scheduler has no workers yet: the exposures wait for "
                            "`dask worker` processes to connect")
            t0 = time.perf_counter()
            try:  # build the estimator (load the model) on every worker before timing starts
                cl.run(_preload, spec, cat_arg if isinstance(cat_arg, str) else None)
            except Exception as exc:  # workers that fail here fail each task with the reason
                log.warning("preloading the estimator on the workers failed: %s", exc)
            result.preload_seconds = time.perf_counter() - t0
            result.startup_seconds = time.perf_counter() - t_call
            _submit_and_collect(cl, todo, cat_arg, spec, out, formats, result, failures, quiet)
            t_end = time.perf_counter()
        result.shutdown_seconds = time.perf_counter() - t_end
    _write_json(out / FAILURES, failures)
    result.total_seconds = time.perf_counter() - t_call
    _write_json(out / SUMMARY, result.as_dict())
    if todo:
        log.info("%s", result.timing_report())
    return result


#: tasks per worker of the local pool: each task is a group of exposures (start-up and
#: per-task costs paid once per group, the next read prefetched inside it), and two groups
#: per worker leave room to balance exposures of unequal cost
TASKS_PER_WORKER = 2
#: at most this many exposures per task (a long run still reports progress regularly)
MAX_GROUP = 16


def _groups(todo: list, n_workers: int) -> list[list]:
    """Split ``todo`` into contiguous groups: ~TASKS_PER_WORKER per worker, <= MAX_GROUP."""
    size = max(1, min(MAX_GROUP, -(-len(todo) // (TASKS_PER_WORKER * max(n_workers, 1)))))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def _pool_context():
    """``fork`` where it is safe and available (workers inherit the imported modules, the
    built estimator and the catalogue: no start-up), else ``spawn``.  Not safe once torch has
    run (its thread pools do not survive a fork), so learned methods spawn."""
    import multiprocessing as mp

    if "fork" in mp.get_all_start_methods() and "torch" not in sys.modules:
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _failed_record(name: str, path: str, exc: BaseException) -> dict:
    rec = _new_record(path)
    rec.update(exposure=name, status="failed", seconds=float("nan"),
               cpu_seconds=float("nan"), worker="", peak_rss_mb=float("nan"),
               error_type=type(exc).__name__, message=str(exc) or type(exc).__name__,
               traceback="".join(traceback.format_exception(exc)))
    return rec


def _collect(rec: dict, result: BatchResult, failures: list, out: Path) -> None:
    result.records.append(rec)
    if rec["status"] == "done":
        result.n_done += 1
        result.n_rows += rec["rows"]
    else:
        result.n_failed += 1
        failures.append(rec)
        _write_json(out / FAILURES, failures)
        log.warning("%s failed: %s: %s", rec["path"], rec["error_type"], rec["message"])
    if np.isfinite(rec["peak_rss_mb"]):
        result.peak_rss_mb = max(result.peak_rss_mb, rec["peak_rss_mb"])


def _run_local(todo, cat_arg, spec, out, formats, result, failures, quiet, workers,
               t_call) -> None:
    """The default local executor: worker processes started once, each task a group of
    exposures.  One worker runs the tasks in this process; more fork (or spawn) a pool."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    n = max(1, min(workers or _cores(), len(todo)))
    groups = _groups(todo, n)
    result.workers, result.tasks = n, len(groups)

    def paths(group):
        return [p for _, p in group]

    share = -(-len(todo) // n)  # exposures per worker

    def records():
        if n == 1:
            result.executor = "in-process"
            result.startup_seconds = time.perf_counter() - t_call
            for group in groups:
                yield from process_exposures(paths(group), cat_arg, spec, str(out), formats,
                                             per_worker=share)
            return
        ctx = _pool_context()
        result.executor = f"processes ({ctx.get_start_method()})"
        t0 = time.perf_counter()
        pool = ProcessPoolExecutor(
            n, mp_context=ctx, initializer=_pool_init,
            initargs=(spec, cat_arg if isinstance(cat_arg, str) else None))
        try:
            futures = {pool.submit(process_exposures, paths(g), cat_arg, spec, str(out),
                                   formats, per_worker=share): g for g in groups}
            result.preload_seconds = time.perf_counter() - t0
            result.startup_seconds = time.perf_counter() - t_call
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        yield from fut.result()
                    except Exception as exc:  # the worker died (memory, crash): record it
                        for name, path in futures[fut]:
                            yield _failed_record(name, path, exc)
        except BaseException:  # Ctrl-C: finished partitions stay; the rest resumes next time
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        t_end = time.perf_counter()
        pool.shutdown(wait=True)
        result.shutdown_seconds = time.perf_counter() - t_end

    try:
        for rec in progress(records(), desc="exposures", total=len(todo), quiet=quiet,
                            unit="exposure"):
            _collect(rec, result, failures, out)
    finally:
        t_first = t_call + result.startup_seconds
        result.seconds = time.perf_counter() - t_first - result.shutdown_seconds


@contextmanager
def _existing(client):
    yield client


def _submit_and_collect(client, todo, cat_arg, spec, out, formats, result, failures,
                        quiet) -> None:
    from distributed import as_completed

    if isinstance(cat_arg, Table):
        [cat_arg] = client.scatter([cat_arg], broadcast=True)
    t0 = time.perf_counter()
    futures = {}
    for name, path in todo:
        fut = client.submit(process_exposure, path, cat_arg, spec, str(out), formats,
                            key=f"skysub-batch-{name}-{os.urandom(4).hex()}", pure=False)
        futures[fut] = (name, path)
    try:
        for fut in progress(as_completed(futures), desc="exposures", total=len(futures),
                            quiet=quiet, unit="exposure"):
            name, path = futures[fut]
            try:
                rec = fut.result()
            except Exception as exc:  # the worker died (memory limit, crash): record it
                rec = _failed_record(name, path, exc)
            _collect(rec, result, failures, out)
    except BaseException:  # Ctrl-C: finished partitions stay; the rest is resumed next time
        client.cancel(list(futures))
        raise
    finally:
        result.seconds = time.perf_counter() - t0


def __getattr__(name: str):
    if name == "BUILD_COUNT":  # estimators built in this process (kept by the worker side)
        return batch_worker.BUILD_COUNT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_results(output_dir: str | os.PathLike, *, format: str = "parquet") -> Table:
    """All partitions of a batch folder as one table (exposures in file-name order)."""
    sub, suffix = FORMATS[format]
    files = sorted((Path(output_dir) / sub).glob(f"*{suffix}"))
    if not files:
        raise InputError(f"{output_dir}: no {format} partitions found")
    if format == "parquet":
        import pyarrow.parquet as pq

        tables = [_from_arrow(pq.read_table(f)) for f in files]
    else:
        tables = [Table.read(f, format="ascii.csv") for f in files]
    return vstack(tables, metadata_conflicts="silent")
