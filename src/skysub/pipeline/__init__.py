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

from importlib import import_module

# exports resolved on first use (PEP 562), so that ``skysub --help`` does not import astropy
_EXPORTS = {
    "Reducer": ".reduce", "ApertureExtraction": ".photometers", "OptimalExtraction":
    ".photometers", "PSFAnnulus": ".photometers", "TimeSeriesSimConfig": "..simulate.timeseries",
    "simulate_observations": "..simulate.timeseries", "Transform": ".align",
    "AlignmentError": ".align", "match_transform": ".align", "periodogram": ".lightcurves",
    "relative_light_curve": ".lightcurves",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
