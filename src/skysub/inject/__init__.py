"""Injection–recovery: artificial sources of known flux in the user's own frames.

Layout (as :mod:`skysub.removal`): :mod:`~skysub.inject.core` places and renders the sources
and records the truths; :mod:`~skysub.inject.recovery` runs any photometer with any background
method on the injected copies and scores them; :mod:`~skysub.inject.plots` draws the figure;
:mod:`~skysub.inject.cli` is ``skysub inject``.  Nothing here is an estimator, and no estimator
imports this package.

Example::

    from skysub.inject import InjectionSettings, Method, run_injection, summarise

    res = run_injection(["frame.fits"], "cat.csv", [Method("aperture", "annulus")],
                        InjectionSettings(kind="star", n_per_image=50), realisations=3)
    print(summarise(res["recovered"]))
"""

from importlib import import_module

# resolved on first use, so that building the ``skysub inject`` parser loads no astropy table
_EXPORTS = {"InjectionSettings": ".core", "inject_sources": ".core", "merged_catalog": ".core",
            "sky_sigma": ".core", "Method": ".recovery", "parse_methods": ".recovery",
            "run_injection": ".recovery", "score": ".recovery", "summarise": ".recovery"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
