"""Quality metrics against truth: bias, scatter, pulls, duplicates, PIT, power spectra, pixel
statistics.

Every function here is NaN-aware: non-finite entries (NaN, +-inf) of any input are ignored, and
a statistic over no valid entry is NaN (never a warning, never an exception).  Inputs are
array-like (numpy arrays, astropy Columns/Quantities -- whose units are dropped -- or masked
arrays, whose masked entries count as invalid).

Definitions (SPEC.md sections 3-5):

- relative error ``(f - f0) / f0``; bias = its median (Lumos eq. 17), scatter = its sigma68
  (Lumos eq. 18), with ``sigma68 = (q84 - q16) / 2``;
- pull ``(f - f0) / sigma``: N(0, 1) when the errors are right (BKGnet section 3.4);
- duplicates ``D = (e1 - e2) / sqrt(s1^2 + s2^2)`` over repeated measurements of one object
  (BKGnet eq. 11): sigma68[D] = 1 when the errors are right, without knowing the truth;
- probability integral transform ``PIT = CDF(f*)`` at the true value (Lumos eq. 13), U[0, 1]
  for calibrated PDFs;
- azimuthally averaged power spectrum and pixel statistics of maps (Madarasz et al. section 5.3).

Layout: :mod:`.accuracy` (bias, scatter, pulls), :mod:`.duplicates`, :mod:`.pit`, :mod:`.maps`
(power spectra, pixel statistics), :mod:`.summary` (background tables), :mod:`._common`
(helpers); every name is importable from ``skysub.metrics``.
"""

from ..stats import mad_std, sigma68  # importable from here, as before
from ._common import _sigma68
from .accuracy import (
    bias,
    gaussianity,
    median_standard_error,
    pull_summary,
    pulls,
    relative_error,
    scatter,
    sigma95,
)
from .duplicates import duplicates, duplicates_from_table, duplicates_sigma68
from .maps import WINDOWS, pixel_stats, power_spectrum, power_spectrum_ratio
from .pit import KSResult, mixture_cdf, pit_gaussian_mixture, pit_histogram, pit_uniformity
from .summary import background_summary

__all__ = [
    "relative_error", "bias", "scatter", "median_standard_error", "sigma95", "gaussianity",
    "pulls", "pull_summary",
    "duplicates", "duplicates_from_table", "duplicates_sigma68",
    "mixture_cdf", "pit_gaussian_mixture", "pit_histogram", "pit_uniformity", "KSResult",
    "power_spectrum", "power_spectrum_ratio",
    "pixel_stats", "background_summary",
]

# also importable from here (not part of the public list): the stats helpers, _sigma68, WINDOWS
_REEXPORTED = (mad_std, sigma68, _sigma68, WINDOWS)
