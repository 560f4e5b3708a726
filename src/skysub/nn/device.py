"""Device, threads and seeds for every skysub network (pure torch; no FITS, no catalogues).

CPU by default; ``"auto"`` takes a CUDA GPU (or Apple MPS) when one is present, so the same code
runs on a laptop, a cluster node and a GPU box.  Nothing here is CUDA-specific.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager

import numpy as np
import torch

from ..errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for a user's ``--device`` choice.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"} or torch.device
        ``auto`` (default) = the first CUDA GPU if present, else Apple MPS if present, else CPU.

    Raises
    ------
    InputError
        An unknown name, or a GPU asked for on a machine without one.
    """
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA GPU is available on this machine "
                             "(use --device cpu or auto)")
        return torch.device(name)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError("--device mps: Apple MPS is not available on this machine")
        return torch.device("mps")
    raise InputError(f"unknown device {device!r}; expected auto, cpu, cuda, cuda:N or mps")


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads (default: the cores this process may use); returns it.

    One process per core is what Dask workers use (each calls this with 1); a single process
    uses every core.  ``SKYSUB_THREADS`` overrides the default.
    """
    if n is None:
        env = os.environ.get("SKYSUB_THREADS")
        if env:
            n = int(env)
        else:
            try:
                n = len(os.sched_getaffinity(0))
            except AttributeError:  # not on Linux
                n = os.cpu_count() or 1
    n = max(1, int(n))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextmanager
def one_torch_thread():
    """Torch intra-op threads set to 1 inside the block (restored after): for callers that run
    independent batches on their own Python threads, one core each."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def worker_map(fn, items, enabled: bool = True):
    """``map(fn, items)`` in order; with ``enabled`` and several torch threads, on that many
    Python threads with one torch thread each (:func:`one_torch_thread`).  For independent
    batches whose work releases the GIL (torch, numba ``nogil`` kernels): no barrier between
    cores, so a core that the OS hands to another process delays only its own batch (on a
    shared 2-core machine torch's own 2 threads ran slower than one)."""
    items = list(items)
    workers = min(torch.get_num_threads(), len(items)) if enabled else 1
    if workers < 2:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor

    with one_torch_thread(), ThreadPoolExecutor(workers) as pool:
        yield from pool.map(fn, items)


def seed_everything(seed: int | None) -> None:
    """Seed Python, numpy's legacy global generator and torch (CPU and GPU)."""
    if seed is None:
        return
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
