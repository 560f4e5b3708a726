"""Lumos as "just another photometer": flux PDFs (5-Gaussian mixtures) from a trained network,
and its training on Teahupoo-like simulations (plus unsupervised transfer learning on pairs).

:class:`LumosPhotometer` follows the photometer protocol (``measure(image, x, y, *, mask, mag,
neighbours, catalog) -> PhotometryResult``).  ``flux``/``flux_err`` are the point estimates
chosen by ``estimator`` (default: the PDF's median and sigma68 -- with calibrated PDFs half the
true fluxes lie below the median, so its median relative error, the paper's bias, vanishes;
the paper's choice, the mode, sits below the median of a right-skewed faint-source PDF);
``extra`` holds the mixture (a1..a5, f1..f5, s1..s5, image units) and every summary
(:func:`mixture_summary`: mean and std (eq. 15-16), mode, median, sigma68, sigma95, eta (eq. 22)).
``bkg`` is NaN: Lumos learns the background internally and never reports it.

The PDF is the network's mixture with every component truncated to flux >= 0 (eq. 10's
density; for bright sources the truncation is negligible and eq. 8 and 10 agree).  Mean and
std are eq. 15-16 evaluated with the truncated components' moments (the untruncated eq. 15-16
are the limit mu >> sigma).

:func:`train_lumos` trains one (``skysub train lumos``); :func:`fine_tune_pairs` is the
transfer-learning step (eq. 11-12) that updates only the last dense layer.

Layout (as :mod:`skysub.removal`; every name below is importable from this package)
------------------------------------------------------------------------------------
- :mod:`.photometer` -- :class:`LumosPhotometer` (inference)
- :mod:`.settings` -- :class:`LumosSettings` (``[lumos]``), :data:`DEFAULT_MODEL`
- :mod:`.mixtures` -- :func:`predict_mixtures`, :func:`mixture_summary`,
  :func:`divide_training_prior`
- :mod:`.calibration` -- :class:`SNRCalibration`, :func:`fit_snr_calibration`,
  :func:`fit_width_factor`, :func:`calibrate_widths`
- :mod:`.data` -- network tensors and training stamps (:func:`training_tensors`); the shared
  sampling lives in :mod:`skysub.simulate.trainingdata` and :mod:`skysub.simulate.galaxies`
- :mod:`.pairs` -- :func:`find_pairs`, :func:`pairs_from_exposures`, :func:`pair_tensors`,
  :func:`fine_tune_pairs`
- :mod:`.training` -- :func:`make_loss`, :func:`train_lumos`, :func:`recalibrate_lumos`
- :mod:`.evaluation` -- :func:`evaluate_mixtures`
"""

from .calibration import (
    CROWD_C,
    SNRCalibration,
    _calibrated,
    calibrate_widths,
    crowding,
    fit_snr_calibration,
    fit_width_factor,
)
from .data import TENSOR_KEYS, torch_where_mag, training_tensors
from .evaluation import evaluate_mixtures
from .mixtures import (
    ESTIMATORS,
    SUMMARY_KEYS,
    divide_training_prior,
    mixture_summary,
    predict_mixtures,
)
from .pairs import find_pairs, fine_tune_pairs, pair_tensors, pairs_from_exposures
from .photometer import LumosPhotometer
from .settings import DEFAULT_MODEL, LumosSettings
from .training import make_loss, recalibrate_lumos, train_lumos

__all__ = ["CROWD_C", "DEFAULT_MODEL", "ESTIMATORS", "SUMMARY_KEYS", "TENSOR_KEYS",
           "LumosPhotometer", "LumosSettings", "SNRCalibration", "_calibrated",
           "calibrate_widths", "crowding", "divide_training_prior", "evaluate_mixtures",
           "fine_tune_pairs", "find_pairs", "fit_snr_calibration", "fit_width_factor",
           "make_loss", "mixture_summary", "pair_tensors", "pairs_from_exposures",
           "predict_mixtures", "recalibrate_lumos", "torch_where_mag", "train_lumos",
           "training_tensors"]
