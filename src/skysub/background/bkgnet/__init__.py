"""BKGnet as "just another background estimator", and its training from a user's exposures.

:class:`BKGnetBackground` wraps a trained :class:`skysub.nn.bkgnet.BKGnet` behind the estimator
protocol of :mod:`skysub.background.base`: image + positions in, background per pixel and its
1-sigma error out.  :func:`train_bkgnet` trains one from FITS exposures and a catalogue (or
from the built-in simulator), as ``skysub train bkgnet`` does.

Layout (as :mod:`skysub.removal`; every name below is importable from this package)
------------------------------------------------------------------------------------
- :mod:`.estimator` -- :class:`BKGnetBackground` (inference) and :class:`BKGnetSettings`
- :mod:`.data` -- the training set (:class:`TrainingSet`, :func:`build_training_set`); the
  stamp sampling, labels and injection it uses live in :mod:`skysub.simulate.trainingdata`,
  shared with Lumos
- :mod:`.calibration` -- :func:`predict_set`, :func:`sigma_scale`, :func:`fit_error_calibration`
  (label noise measured from label stencils per band x epoch, sigma_net scaled on held-out
  sky tiles)
- :mod:`.errormodel` -- :func:`calibrated_errors` (the calibration applied at inference)
- :mod:`.evaluation` -- :func:`validation_metrics`, :func:`training_report`
- :mod:`.training` -- :func:`train_bkgnet` (fine-tunes the shipped model by default),
  :func:`command_line`

Training data (BKGnet §3.2, with the fixes skysub makes)
--------------------------------------------------------
- positions are drawn uniformly over each exposure plus an extra share within ``edge_width`` px
  of the CCD edges (where scattered light lives); a position is "empty" when no catalogued
  source lies within ``empty_radius`` px; stamps with any pixel above ``saturation`` are
  skipped (the paper: 100,000 counts);
- the label is the mean of the pixels within ``label_radius`` = 8 px of the position, after
  clipping pixels more than ``label_clip`` robust sigmas from the circle's median (cosmic rays and
  hot pixels would otherwise dominate the loss); its error is BKGnet eq. 3 for the mean of the
  kept pixels with the exposure's gain and read noise (:func:`skysub.nn.bkgnet.label_sigma`);
- a Sérsic galaxy with (mag, r50, n, b/a, theta) drawn jointly from the catalogue's rows is
  injected at the centre (with its photon noise) BEFORE the centre is hidden -- without it the
  net fails on bright sources (BKGnet §3.2);
- training and validation stamps come from different parts of the sky (held-out 128 px
  tiles in every exposure, :func:`skysub.simulate.trainingdata.split_by_sky`).

(:mod:`skysub.simulate.trainingdata` implements the sampling.)

With ``labels="truth"`` (simulations only) the label is the noise-free background of the
simulator in the same circle and its error is zero: pre-training on simulations.
"""

from ...simulate.trainingdata import (
    circle_offsets,
    circle_values,
    clipped_label,
    key_name,
    sample_training_stamps,
    simulated_exposures,
    split_by_exposure,
)
from ...simulate.trainingdata import galaxy_pool as _galaxy_pool  # its name here before
from .calibration import fit_error_calibration, predict_set, sigma_scale
from .data import TrainingSet, build_training_set, label_stencils
from .errormodel import calibrated_errors
from .estimator import DEFAULT_MODEL, TRAIN_KEYS, BKGnetBackground, BKGnetSettings
from .evaluation import training_report, validation_metrics
from .training import command_line, train_bkgnet

__all__ = ["DEFAULT_MODEL", "TRAIN_KEYS", "BKGnetBackground", "BKGnetSettings", "TrainingSet",
           "_galaxy_pool", "build_training_set", "calibrated_errors", "circle_offsets",
           "circle_values", "clipped_label", "command_line", "fit_error_calibration",
           "key_name", "label_stencils", "predict_set", "sample_training_stamps",
           "sigma_scale", "simulated_exposures", "split_by_exposure", "train_bkgnet",
           "training_report", "validation_metrics"]
