"""Simulators with known truth: Sérsic profiles, PSFs, scattered light, CCD exposures."""

from .ccd import CCDSimConfig, simulate_exposure, simulate_field, simulate_survey
from .profiles import sersic_bn, sersic_image, sersic_stamps
from .psf import elliptical_gaussian_psf, gaussian_psf, load_psf, moffat_psf
from .scattered import scattered_light_pattern

__all__ = ["CCDSimConfig", "simulate_exposure", "simulate_field", "simulate_survey",
           "sersic_bn", "sersic_image", "sersic_stamps", "gaussian_psf", "moffat_psf",
           "elliptical_gaussian_psf", "load_psf", "scattered_light_pattern"]
