"""Per-source quality flags (bit values, OR-ed together).

Rows are flagged, never dropped: a source whose statistic could not be computed gets NaN values
and :data:`NO_DATA`.
"""

from __future__ import annotations

import numpy as np

EDGE = 1  #: part of the stamp / annulus / aperture falls outside the image
MASKED = 2  #: some pixels of the annulus or aperture are masked (mask, NaN, inf)
CROWDED = 4  #: another catalogued source lies inside the aperture or annulus
NO_DATA = 8  #: too few valid pixels: values are NaN
OFF_IMAGE = 16  #: the source centre lies outside the image
CLIPPED = 32  #: sigma clipping rejected more than half of the annulus pixels
UNCALIBRATED = 64  #: empty-aperture error calibration asked for, but too few empty positions

NAMES = {
    EDGE: "edge",
    MASKED: "masked",
    CROWDED: "crowded",
    NO_DATA: "no_data",
    OFF_IMAGE: "off_image",
    CLIPPED: "clipped",
    UNCALIBRATED: "uncalibrated",
}


def describe(flag: int) -> str:
    """Human-readable list of the bits set in ``flag``, e.g. ``"edge|masked"``."""
    flag = int(flag)
    names = [name for bit, name in NAMES.items() if flag & bit]
    return "|".join(names) if names else "ok"


def zeros(n: int) -> np.ndarray:
    """An all-clear flag array for ``n`` sources."""
    return np.zeros(int(n), dtype=np.int32)
