"""opticam-style time-series photometry: frames of several cameras in, light curves out.

::

    from skysub.pipeline import Reducer, OptimalExtraction, simulate_observations

    simulate_observations("out/data", n_images=10)           # g, r, i frames + truth.json
    reducer = Reducer("out/data", "out/reduced")               # scan + header checks
    reducer.create_catalogs()                                  # catalogues, alignment, PSF
    reducer.photometry(OptimalExtraction())                    # lcs/optimal_annulus/*.csv

See ``docs/timeseries.md``.  Modules: :mod:`.reduce` (Reducer), :mod:`.align` (source matching),
:mod:`.catalog` (detection, stacking, PSF fits), :mod:`.photometers` (aperture / optimal
extraction with a pluggable local background), :mod:`.lightcurves` (files, relative light
curves, Lomb-Scargle), :mod:`.plots`, :mod:`.cli` (``skysub timeseries``).
"""

from ..simulate.timeseries import TimeSeriesSimConfig, simulate_observations
from .align import AlignmentError, Transform, match_transform
from .lightcurves import periodogram, relative_light_curve
from .photometers import ApertureExtraction, OptimalExtraction, PSFAnnulus
from .reduce import Reducer

__all__ = ["Reducer", "ApertureExtraction", "OptimalExtraction", "PSFAnnulus",
           "TimeSeriesSimConfig", "simulate_observations", "Transform", "AlignmentError",
           "match_transform", "periodogram", "relative_light_curve"]
