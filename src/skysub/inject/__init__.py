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

from .core import InjectionSettings, inject_sources, merged_catalog, sky_sigma
from .recovery import Method, parse_methods, run_injection, score, summarise

__all__ = ["InjectionSettings", "inject_sources", "merged_catalog", "sky_sigma", "Method",
           "parse_methods", "run_injection", "score", "summarise"]
