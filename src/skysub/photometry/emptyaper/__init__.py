"""Empty-aperture calibration of flux errors (Labbé et al. 2003; Whitaker et al. 2011; Skelton
et al. 2014): the photometer measures the frame where there is no source and the spread of what
it finds sets the part of the error the pixel-noise model misses.

The error model of :mod:`skysub.photometry.errors` predicts, for a flux ``F = S - N_a b``, the
variance that does not come from the source itself,

.. math::  W = N_{\\rm noise}\\,\\sigma_{\\rm pix}^2 + N_a^2\\,\\sigma_b^2 ,

which is exact for white noise on a flat sky.  Real frames have correlated pixel noise
(resampling, smoothing, the detector) and background structure on the scale of the annulus
(scattered light, unresolved sources, flat-field residuals) that no per-source statistic sees.
At many random *empty* positions -- away from every catalogued source, masked pixels and the
edges -- the photometer measures the frame with its own weights and its own background
estimator, so the true flux is zero and what it finds is all noise.  Per probe size ``k`` (several
apertures / weight widths) the robust variance ``V_k`` (the biweight scale of the fluxes,
squared) is fitted with

.. math::  V_k = \\alpha\\, W_k + \\sigma_s^2\\, N_0^2\\,(N_{a,k} / N_0)^{\\gamma} ,

``alpha >= 0`` a correlated-noise factor on the white-noise terms, ``sigma_s >= 0`` (ADU per
pixel) a background-structure error at the photometer's own size ``N_0`` (its aperture area;
the point-source weights' ``sum(w)``) and ``gamma`` in [1, 2] how that error grows with the
aperture: 2 for structure fully correlated over the aperture, like the background estimate's
own error, less when the aperture reaches the scale of the structure -- the power law of the
empty-aperture literature, ``sigma(N) ~ N^beta`` with ``beta = gamma / 2`` in [0.5, 1].  The
fit is then scaled to match exactly at ``N_0``, where most sources are measured.  Every
source's error becomes

.. math::  \\sigma_F^2 = \\max(F, 0)/g + \\alpha N_{\\rm noise}\\sigma_{\\rm pix}^2
           + N_a^2\\,\\sigma_{b,\\rm cal}^2 , \\qquad
           \\sigma_{b,\\rm cal}^2 = \\alpha \\sigma_b^2 + \\sigma_s^2 (N_a / N_0)^{\\gamma - 2}

and ``bkg_err`` the honest ``sigma_b,cal``.  On white noise and a flat sky
``alpha ~ 1`` and ``sigma_s ~ 0`` (tested).  With a single probe size (or sizes whose ``N_a^2 /
W`` hardly differ) the two terms cannot be told apart and only ``alpha`` is fitted; where the
sizes do not pin ``gamma`` down (two sizes fit exactly by any) it is 2.  Too few
empty positions: a warning, no calibration (``alpha = 1``, ``sigma_s = 0``) and the
:data:`skysub.flags.UNCALIBRATED` flag on every source.

Two factors then follow how the noise varies, ``q = q_pos(x, y) q_nb(d)`` on the non-source
variance: the position factor (:class:`LocalFactor`) and, with
``error_calibration="neighbours"`` only (opt-in), the neighbour factor
(:class:`NeighbourFactor`), a function of the distance ``d`` to the nearest catalogued source
(divided by that source's brightness to the power 1/6): a background near a source holds
some of its light, so positions near sources are noisier (and biased low), and one factor per
frame gives sources more isolated than the average empty position errors too large.  Sources
and empty positions take ``d`` the same way, from the same catalogue.

The package's modules: :mod:`.core` (the empty positions, the fit per frame,
:class:`NoiseCalibration` and :func:`calibrate`), :mod:`.local` (the position factor),
:mod:`.level` (the noise-level factor), :mod:`.neighbour` (the neighbour factor) and
:mod:`.matched` (the clearance weights).
"""

from .core import (
    CALIBRATIONS,
    CLEAR_STEPS,
    GAMMAS,
    NEIGHBOUR_BRIGHTNESS,
    OFF,
    NoiseCalibration,
    calibrate,
    check_calibration,
    empty_positions,
    fit_factors,
)
from .level import (
    LEVEL_NULL,
    TREND_BINS,
    NoiseLevelFactor,
    level_and_position,
    noise_level_factor,
)
from .local import (
    LOCAL_K_MAX,
    LOCAL_K_MIN,
    LOCAL_MIN,
    LOCAL_SHARE,
    LocalFactor,
    local_factor,
    robust_sigma,
)
from .matched import MATCH_PSEUDO, clearance_weights
from .neighbour import (
    BACKFIT_ROUNDS,
    NEIGHBOUR_NULL,
    NEIGHBOUR_SEARCH,
    WING_POWER,
    NeighbourFactor,
    nearest_distance,
    neighbour_factor,
    neighbour_peaks,
    position_and_neighbour,
)

__all__ = ["BACKFIT_ROUNDS", "CALIBRATIONS", "CLEAR_STEPS", "GAMMAS", "LEVEL_NULL",
           "LOCAL_K_MAX", "LOCAL_K_MIN", "LOCAL_MIN", "LOCAL_SHARE", "MATCH_PSEUDO",
           "NEIGHBOUR_BRIGHTNESS", "NEIGHBOUR_NULL", "NEIGHBOUR_SEARCH", "OFF", "TREND_BINS",
           "WING_POWER", "LocalFactor", "NeighbourFactor", "NoiseCalibration",
           "NoiseLevelFactor", "calibrate", "check_calibration", "clearance_weights",
           "empty_positions", "fit_factors", "level_and_position", "local_factor",
           "nearest_distance", "neighbour_factor", "neighbour_peaks", "noise_level_factor",
           "position_and_neighbour", "robust_sigma"]
