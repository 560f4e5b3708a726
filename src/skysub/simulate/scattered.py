"""Edge-dominated scattered-light patterns, per band x epoch, varying per exposure.

PAUS (BKGnet §2.3) sees light reflected off the filter-tray edges: a multiplicative excess that
is negligible in the CCD centre and rises towards some edges, with a shape fixed by the band and
the camera epoch (before/after an intervention) and an amplitude that changes from exposure to
exposure.  :func:`scattered_light_pattern` draws such a template ``SLT(x, y) >= 1`` with
``SLT = 1`` (to < 1e-3) in the central half of the CCD, so that the central median measures the
sky (BKGnet eq. 1-2).
"""

from __future__ import annotations

import zlib

import numpy as np

from ..errors import InputError


def _key_rng(band: str, epoch: str) -> np.random.Generator:
    # a stable hash (Python's hash() is salted per process)
    return np.random.default_rng(zlib.crc32(f"{band}|{epoch}".encode()))


def scattered_light_pattern(shape: tuple[int, int], band: str, epoch: str, *,
                            amplitude: float = 0.15, seed=None,
                            variation: float = 0.1) -> np.ndarray:
    """Multiplicative scattered-light template for one exposure.

    Parameters
    ----------
    shape : (ny, nx)
    band, epoch : str
        Select the deterministic base shape: which edges glow, how strongly, how far in.
    amplitude : float
        Peak fractional excess at the brightest edge (0 gives a flat template of ones).
    seed : int, Generator or None
        Per-exposure variation of the amplitude (x ``1 + variation * N(0, 1)``) and of the
        decay lengths (x ``1 + variation / 2 * N(0, 1)``).
    variation : float

    Returns
    -------
    ndarray (ny, nx), >= 1
    """
    ny, nx = (int(s) for s in shape)
    if ny < 8 or nx < 8:
        raise InputError(f"shape must be at least 8 x 8, got {shape}")
    if amplitude < 0:
        raise InputError(f"scattered-light amplitude must be >= 0, got {amplitude}")
    if amplitude == 0:
        return np.ones((ny, nx))
    base = _key_rng(str(band), str(epoch))
    weights = base.uniform(0.15, 1.0, 4)  # left, right, bottom, top
    weights[base.integers(4)] = 1.0  # one edge always dominant
    frac = base.uniform(0.025, 0.042, 4)  # decay length / axis length
    corner = base.uniform(0.0, 0.5)
    rng = np.random.default_rng(seed)
    amp = amplitude * max(0.2, 1 + variation * rng.standard_normal())
    lengths = frac * np.array([nx, nx, ny, ny]) * np.clip(
        1 + 0.5 * variation * rng.standard_normal(4), 0.7, 1.2)
    x = np.arange(nx)[None, :]
    y = np.arange(ny)[:, None]
    d = [x, nx - 1 - x, y, ny - 1 - y]
    excess = np.zeros((ny, nx))
    for w, L, dist in zip(weights, lengths, d, strict=True):
        excess = excess + w * np.exp(-dist / L)
    # corners collect light from two edges
    excess = excess + corner * np.exp(-d[0] / lengths[0]) * np.exp(-d[2] / lengths[2])
    return 1.0 + amp * excess / excess.max()  # peak excess = amp
