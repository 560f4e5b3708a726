"""Photometers: one protocol, several methods.

A photometer has ``measure(image, x, y, *, mask=None, mag=None, neighbours=None, catalog=None)
-> PhotometryResult`` and takes its background estimator at construction, so swapping the
background (annulus, mesh, BKGnet) or the photometer is one line::

    from skysub.background.annulus import AnnulusBackground
    from skysub.photometry import photometer_from_name

    phot = photometer_from_name("aperture", radius=8.0, background=AnnulusBackground(30, 45))
    result = phot.measure(image, x, y)

Available: ``"aperture"`` (:class:`AperturePhotometer`, exact-overlap fixed aperture),
``"model_aperture"`` (:class:`ModelAperturePhotometer`, Lumos' 62.5 %-light aperture) and
``"optimal"`` (:class:`OptimalPhotometer`, Lumos eq. 6 optimal weights).  Flux errors follow
:mod:`skysub.photometry.errors` (BKGnet eq. 8-10).
"""

from __future__ import annotations

from ..errors import ConfigError
from .aperture import AperturePhotometer, ModelAperturePhotometer, PhotometryResult
from .errors import flux_variance, pixel_variance
from .optimal import OptimalPhotometer

PHOTOMETERS = {
    "aperture": AperturePhotometer,
    "model_aperture": ModelAperturePhotometer,
    "optimal": OptimalPhotometer,
}


def photometer_from_name(name: str, **kwargs):
    """Build a photometer by registry name (``"aperture"``, ``"model_aperture"``,
    ``"optimal"``) with the class's keyword arguments (``psf`` may be given as a keyword)."""
    try:
        cls = PHOTOMETERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown photometer {name!r}; expected one of "
                          f"{sorted(PHOTOMETERS)}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"photometer {name!r}: {exc}") from None


__all__ = [
    "PhotometryResult", "AperturePhotometer", "ModelAperturePhotometer", "OptimalPhotometer",
    "photometer_from_name", "flux_variance", "pixel_variance", "PHOTOMETERS",
]
