"""Helpers of :mod:`skysub.metrics`: NaN-aware conversion, broadcasting, median, sigma68.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ..stats import sigma68

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _as_float(x: Any, name: str) -> np.ndarray:
    """Float64 array of ``x`` with masked entries (numpy/astropy masked arrays) set to NaN."""
    if x is None:
        raise InputError(f"{name} is required, got None")
    if np.ma.isMaskedArray(x):
        mask = np.ma.getmaskarray(x)
        x = np.ma.getdata(x)
    else:
        mask = None
    try:
        a = np.array(getattr(x, "value", x), dtype=float)  # Quantity -> value
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric, got {type(x).__name__}: {exc}") from None
    if mask is not None and mask.any():
        a[mask] = np.nan
    return a



def _broadcast(**arrays: Any) -> list[np.ndarray]:
    """Convert to float and broadcast; the error names the parameters and their shapes."""
    conv = [_as_float(v, k) for k, v in arrays.items()]
    try:
        return list(np.broadcast_arrays(*conv))
    except ValueError:
        shapes = ", ".join(f"{k}{a.shape}" for k, a in zip(arrays, conv, strict=True))
        raise InputError(f"inputs must have the same (or broadcastable) shapes, got {shapes}"
                         ) from None



def _finite(a: np.ndarray) -> np.ndarray:
    """The finite entries of ``a`` as a 1-D array."""
    a = np.asarray(a, float).ravel()
    return a[np.isfinite(a)]



def _median(v: np.ndarray) -> float:
    v = _finite(v)
    return float(np.median(v)) if v.size else np.nan



def _sigma68(v: np.ndarray) -> float:
    v = _finite(v)
    return float(sigma68(v)) if v.size else np.nan
