"""Reading torch files without running code.

Every ``.pt`` / ``.ckpt`` file skysub reads goes through :func:`load_plain`, i.e.
``torch.load(weights_only=True)``: tensors, numbers, strings, lists, tuples and dicts only.  A
file that holds anything else (a pickled object whose unpickling could run code) is refused with
an :class:`~skysub.errors.InputError` naming the file; nothing in it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError


def load_plain(path: str | Path, *, map_location: Any = "cpu", what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)``; a file with other objects raises InputError.

    Other failures (a truncated or non-torch file) propagate unchanged, so callers can word
    their own "not a model file" messages.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        found = [ln.strip() for ln in msg.splitlines() if "GLOBAL" in ln]
        if not found:
            raise  # not a refused object but a corrupt or foreign file
        first = found[0]
        raise InputError(f"refusing to read {what} {path}: it holds objects other than "
                         "tensors, numbers and strings, which could run code when read (a file "
                         f"skysub wrote never does) -- {first[:200]}") from None
