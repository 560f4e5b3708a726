"""Compiled kernels for the hot loops over many small samples (numba, with a numpy fallback).

Two kernels serve the sigma-clipped annulus (:class:`skysub.background.annulus.AnnulusBackground`)
and :func:`skysub.stats.clipped_stats`:

- :func:`gather_annulus` -- for every source, the values of the valid pixels whose centres fall
  in its (sub-pixel positioned, circular or elliptical) annulus, packed at the start of one row
  of a NaN-padded array, with the EDGE / MASKED flags.  No ``(n, p)`` index, radius or mask
  temporaries as the numpy path needs.
- :func:`clip_sorted_rows` -- astropy ``SigmaClip`` (centre median, scale population std,
  ``maxiters``, the final-bounds rule) of every sorted row: a kept run ``[lo, hi)`` per row and
  its mean, median and std, with exact two-pass sums over the run (no prefix-sum cancellation).

The sort between the two stays numpy's (``np.sort(axis=1)``): numpy sorts float rows with SIMD
(x86-simd-sort / highway), ~10x faster than numba's own ``np.sort`` on this machine, so the
fastest split is gather and clip compiled, sort in numpy.

Why numba (over Cython or C): it ships as a binary wheel for every platform numpy does (no
compiler needed, so ``pip install`` from a fresh clone still just works), the kernels stay
readable Python next to the numpy fallback they must equal, and it is what the astronomy stack
already uses.  Compilation is lazy (on the first call, so commands that never clip never import
numba) and cached on disk (``cache=True``: next to this file when it is writable, else in
numba's user cache directory or ``NUMBA_CACHE_DIR``); without any writable cache the functions
are compiled in memory each run.

Both engines give the same bits: they keep the same pixels, and the final mean and std are
the same strictly sequential float64 sums (the numpy fallback's ``cumsum`` reproduces the
kernel's loop), so the choice of engine is a matter of speed only.  Small jobs stay on numpy:
importing numba and loading the cached machine code costs ~0.5 s per process (measured on a
one-image ``skysub background --method annulus``: 3.4 s whole command with numba against 2.8 s
without, 767 sources), more than the kernel saves on fewer than ~3,000 PAUS-sized annuli.  So
``"auto"`` (the default) uses the compiled kernels once a call -- or a job announced with
:func:`job` (a batch worker's exposures) -- clips at least :data:`AUTO_MIN_VALUES` values
(``sources x annulus pixels``; e.g. 10,000 sources in a 30-45 px annulus: 4e7), and for every
call once they are loaded in the process; the numpy fallback otherwise.

``SKYSUB_KERNELS=numba`` (or :func:`set_engine`) uses the kernels for every call,
``SKYSUB_KERNELS=numpy`` never; numpy is also used, with a debug log line, when numba is not
installed or fails to compile.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager

import numpy as np

from .errors import InputError

log = logging.getLogger("skysub")

ENGINES = ("auto", "numba", "numpy")
#: "auto" compiles only calls that clip at least this many values (sources x pixels): the
#: break-even of the ~0.5 s numba import + cache load against the kernel's gain (~4e-8 s per
#: value, benchmarks/bench_annulus.py: numpy fallback vs numba on 10,000 PAUS annuli)
AUTO_MIN_VALUES = 10_000_000
_engine = os.environ.get("SKYSUB_KERNELS", "auto").strip().lower() or "auto"
_lock = threading.Lock()
_compiled: dict | None = None  # name -> compiled function, once built
_failed: str | None = None  # why the compiled path is unavailable
_job_calls = 1  # calls of about the same size expected in this process (see job())


def set_engine(engine: str) -> str:
    """Select the kernels: ``"auto"`` (numba when it imports, else numpy), ``"numba"`` (error if
    unavailable) or ``"numpy"``.  Returns the previous setting."""
    global _engine
    engine = str(engine).strip().lower()
    if engine not in ENGINES:
        raise InputError(f"kernel engine {engine!r}: expected one of {ENGINES}")
    old, _engine = _engine, engine
    return old


@contextmanager
def engine(name: str):
    """Context manager form of :func:`set_engine`."""
    old = set_engine(name)
    try:
        yield
    finally:
        set_engine(old)


@contextmanager
def job(calls: int):
    """Announce ``calls`` clipping calls of about the same size in this process (a batch
    worker's exposures): ``"auto"`` weighs the one-time numba load against all of them."""
    global _job_calls
    old, _job_calls = _job_calls, max(1, int(calls))
    try:
        yield
    finally:
        _job_calls = old


def _check_env_engine() -> None:
    if _engine not in ENGINES:
        raise InputError(f"SKYSUB_KERNELS={_engine!r}: expected one of {ENGINES}")


def compiled(work: int | None = None) -> dict | None:
    """The compiled kernels (compiling them on the first call), or None for the numpy path.

    ``work``: the number of values the caller is about to clip; with the ``"auto"`` engine a
    call below :data:`AUTO_MIN_VALUES` gets None (numpy), as does any call where numba is
    unavailable.  None means "large" (the kernels whenever they are available)."""
    global _compiled, _failed
    _check_env_engine()
    if _engine == "numpy":
        return None
    if (_engine == "auto" and _compiled is None and work is not None
            and work * _job_calls < AUTO_MIN_VALUES):
        return None  # (once loaded, the kernels serve every call: the same bits, faster)
    if _compiled is None and _failed is None:
        with _lock:
            if _compiled is None and _failed is None:
                try:
                    _compiled = _build()
                except Exception as exc:  # no numba, or it cannot compile here: numpy path
                    _failed = f"{type(exc).__name__}: {exc}"
                    log.debug("compiled kernels unavailable (%s); using numpy", _failed)
    if _compiled is None and _engine == "numba":
        raise InputError(f"the numba kernels are unavailable ({_failed}); install numba or "
                         "set SKYSUB_KERNELS=numpy")
    return _compiled


_optional: dict = {}  # name -> compiled kernel, or None where it is unavailable


def optional_kernel(name: str, load) -> object | None:
    """A compiled kernel outside the clipping set (BKGnet's stamp folding, Lumos' Sérsic
    pixels), or None for the caller's numpy/torch path: with the ``"numpy"`` engine, or where
    ``load()`` -- which imports the kernel and runs it once on a tiny input -- fails (no numba,
    or it cannot compile here; logged at debug level, once per process)."""
    _check_env_engine()
    if _engine == "numpy":
        return None
    if name not in _optional:
        with _lock:
            if name not in _optional:
                try:
                    _optional[name] = load()
                except Exception as exc:  # no numba, or no compiler for this platform
                    _optional[name] = None
                    log.debug("compiled kernel %s unavailable (%s: %s)", name,
                              type(exc).__name__, exc)
    return _optional[name]


def active_engine(work: int | None = None) -> str:
    """``"numba"`` or ``"numpy"``: what a clipping call of ``work`` values will use."""
    return "numba" if compiled(work) is not None else "numpy"


def _build() -> dict:
    from . import _numba_kernels as k  # imports numba: only here, on the first clipping call

    # compile (or load from the cache) now, on tiny inputs, so that a failure to compile falls
    # back to numpy here instead of failing the caller's first real call
    for dtype in (np.float32, np.float64):
        s = np.array([[1.0, 2.0, np.nan]], dtype)
        _clip(k.clip_sorted_rows, s, np.array([2]), 3.0, 3.0, 10)
    return {"gather_annulus": k.gather_annulus, "clip_sorted_rows": k.clip_sorted_rows}


def _clip(kernel, s, n_valid, sigma_lower, sigma_upper, maxiters):
    n = s.shape[0]
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    mean, med, std = (np.empty(n) for _ in range(3))
    do_clip = sigma_lower is not None or sigma_upper is not None
    lower_open = sigma_lower is None or bool(np.isinf(sigma_lower))
    upper_open = sigma_upper is None or bool(np.isinf(sigma_upper))
    kernel(s, np.ascontiguousarray(n_valid, np.int64), do_clip,
           0.0 if lower_open else float(sigma_lower), 0.0 if upper_open else float(sigma_upper),
           lower_open, upper_open, -1 if maxiters is None else int(maxiters),
           lo, hi, mean, med, std)
    return lo, hi, mean, med, std


def clip_sorted_rows(s: np.ndarray, n_valid: np.ndarray, sigma_lower: float | None,
                     sigma_upper: float | None, maxiters: int | None):
    """astropy ``SigmaClip`` of every row of ``s`` (sorted ascending, the ``n_valid[i]`` finite
    values first): returns ``(lo, hi, mean, median, std)``, the kept run ``[lo, hi)`` of each
    row and its statistics (NaN where the run is empty).  ``None`` sigmas leave that side
    open; both None: no clipping.  Needs the compiled kernels (:func:`compiled`)."""
    k = compiled()
    if k is None:
        raise InputError("clip_sorted_rows needs the compiled kernels (numba)")
    s = np.ascontiguousarray(s)
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    return _clip(k["clip_sorted_rows"], s, n_valid, sigma_lower, sigma_upper, maxiters)
