"""How a catalogue magnitude reaches Lumos: zero points from the user's data and the
noise-relative magnitude the network reads.

A model trained on the user's exposures (``skysub train lumos IMAGE... --catalog``) never
assumes a zero point.  Per exposure the zero point comes from ``--zeropoint``, a header keyword
or a fit of the catalogue's magnitudes to aperture fluxes of bright isolated sources
(:func:`skysub.photometry.zeropoint.resolve_zeropoint`); it turns a catalogue magnitude into a
flux ``f_cat`` in image units, and the network reads

    m_noise = 21 - 2.5 log10(f_cat / unit)

with ``unit`` the stamp's own flux unit (its pixel noise x ``FLUX_UNIT``,
:func:`skysub.nn.lumos.stamp_features`).  ``m_noise`` is the same number for the same source on
frames of any units, gain or depth, so frames of several instruments train one network.  The
card says ``inputs.mag_input = "noise"``; models without that entry (``lumos-paus``) read the
catalogue magnitude itself in their band system (``mag_offset``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ...errors import InputError

log = logging.getLogger("skysub")

#: ``inputs.mag_input`` of models that read the noise-relative magnitude
NOISE_MAG = "noise"
NOISE_MAG_DOC = ("21 - 2.5 log10(f_cat / unit): f_cat = 10^(-0.4 (mag - zero point)) in image "
                 "units (the exposure's zero point), unit = the stamp's flux unit")


def noise_mag(cat_flux: Any, unit: Any) -> np.ndarray:
    """``21 - 2.5 log10(cat_flux / unit)`` (NaN where the catalogue flux is not positive)."""
    f = np.asarray(cat_flux, float)
    u = np.asarray(unit, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = 21.0 - 2.5 * np.log10(f / u)
    return np.where(np.isfinite(m) & (f > 0), m, np.nan)


def exposure_zeropoint(image: Any, catalog: Any, *, given: float | None = None,
                       header_keys: tuple[str, ...] | None = None, say=None,
                       photometric_system: str = "AB"):
    """The zero point of one exposure (:func:`skysub.photometry.zeropoint.resolve_zeropoint`),
    printed through ``say`` (else logged) with its source; a poor fit, or one from PHOTFLAM
    (in ``photometric_system``, AB or ST), warns."""
    from ..zeropoint import HEADER_KEYS, resolve_zeropoint

    keys = tuple(header_keys) if header_keys else HEADER_KEYS
    cat = catalog
    if cat is not None and hasattr(cat, "colnames") and "mag" in cat.colnames:
        # a fit reads the catalogued sources only (the injected ones of a benchmark are not)
        if "catalogued" in cat.colnames:
            cat = cat[np.asarray(cat["catalogued"], bool)]
    try:
        zp = resolve_zeropoint(image, cat, given=given, header_keys=keys,
                               photometric_system=photometric_system)
    except InputError as exc:
        raise InputError(f"{getattr(image, 'name', 'image')}: {exc}") from None
    line = f"{getattr(image, 'name', 'image')}: {zp.describe()}"
    if zp.warning:
        log.warning(line)
    elif say is not None:
        say(line)
    else:
        log.info(line)
    return zp


__all__ = ["NOISE_MAG", "NOISE_MAG_DOC", "exposure_zeropoint", "noise_mag"]
