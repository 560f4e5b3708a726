"""Lumos' settings (``[lumos]``, :class:`LumosSettings`), the shipped default model and the
band x epoch vocabulary lookup.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Any

from ...errors import ConfigError
from .mixtures import ESTIMATORS

log = logging.getLogger("skysub")


DEFAULT_MODEL = "lumos-paus"


# -- settings ------------------------------------------------------------------------------------

@dataclass
class LumosSettings:
    """The ``[lumos]`` configuration section besides the simulation settings
    (:class:`skysub.simulate.galaxies.GalaxySimSettings`).

    Attributes
    ----------
    faint_mag : eq. 10 (truncated) loss for mag >= faint_mag, eq. 8 below (paper: 20.5)
    estimator : point estimate reported as ``flux``: "median" (+ sigma68 as flux_err; unbiased
        in the median for calibrated PDFs), "mode" (+ sigma68; the paper's) or "mean" (+ std)
    stamps_per_image, n_exposures, epochs, batch_size, lr, preset, val_fraction : training
    pair_weight : weight of the pair-overlap loss in eq. 12 (paper: 1)
    finetune_epochs, finetune_lr : transfer-learning schedule (paper: 100 epochs, 1e-5, /10
        every 50; shortened for CPU budgets: halved once)
    max_pairs : at most this many pairs with ``pairs="auto"`` (paper: 20,000)
    neighbours : give the network the catalogued neighbours' models as a fourth channel
        (skysub's addition; blends)
    neighbour_fit : with ``neighbours``, fit them jointly with the target in its reference flux
        (True), or keep the target-only reference flux and give the head the neighbours' light
        in its matched filter (False; see :class:`skysub.nn.lumos.LumosArch`)
    neighbour_ratio : with ``neighbours`` and not ``neighbour_fit``: deblend the reference flux
        by the catalogue's flux ratio when the target's magnitude is known
        (:class:`skysub.nn.lumos.LumosArch`)
    data_deblend : with ``neighbour_ratio``: the data-only mode deblends by the joint fit's
        neighbour amplitude (magnitude-free; :class:`skysub.nn.lumos.LumosArch`)
    calibration_bins : the validation calibration's SNR bins (:class:`SNRCalibration`: a shift
        and a width factor per bin); 0 = one width factor for all (temperature scaling)
    calibration_injections : on user exposures, the with-magnitude calibration is refitted on
        about this many galaxies per instrument injected into the held-out part of the
        exposures (:mod:`.injection`); 0 = keep the validation stamps' calibration
    calibration_shrink : the injection calibration's per-SNR-bin shift and log width shrunk
        towards one global fit with weight ``n_b / (n_b + calibration_shrink)`` (``shrink_n`` of
        :func:`.calibration.fit_snr_calibration`); 0 = off (each bin on its own)
    calibration_placement : where those galaxies go (:data:`.injection.PLACEMENTS`):
        ``"empty"`` (default) 15 px from every catalogued source, ``"catalogue"`` with the
        catalogue sources' own nearest-neighbour distances, 45 % of them 15 px or more, and
        the calibration split at 15 px from the nearest source (docs/lumos.md: better beside
        neighbours on crowded frames, worse for isolated and sparse ones)
    prior_free_weight_cap : importance weights of the prior-free stamps (:func:`make_loss`)
        capped here; 1 = unweighted
    """

    faint_mag: float = 20.5
    estimator: str = "median"
    stamps_per_image: int = 400
    n_exposures: int = 48
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    preset: str = "lean"
    val_fraction: float = 0.15
    pair_weight: float = 1.0
    finetune_epochs: int = 10
    finetune_lr: float = 1e-4
    max_pairs: int = 5000
    neighbours: bool = True
    neighbour_fit: bool = True
    neighbour_ratio: bool = False
    data_deblend: bool = False
    prior_free_weight_cap: float = 1.0
    calibration_bins: int = 6
    calibration_injections: int = 1200
    calibration_shrink: float = 0.0
    calibration_placement: str = "empty"

    @classmethod
    def from_config(cls, section: dict | None, **overrides: Any) -> LumosSettings:
        from ...simulate.galaxies import GalaxySimSettings

        section = {**(section or {}), **{k: v for k, v in overrides.items() if v is not None}}
        names = {f.name for f in fields(cls)}
        sim_names = {f.name for f in fields(GalaxySimSettings)}
        unknown = sorted(set(section) - names - sim_names)
        if unknown:
            raise ConfigError(f"[lumos]: unknown setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(names | sim_names))}")
        s = cls(**{k: v for k, v in section.items() if k in names})
        if not isinstance(s.calibration_bins, int) or s.calibration_bins < 0:
            raise ConfigError(f"[lumos]: calibration_bins must be an integer >= 0, got "
                              f"{s.calibration_bins!r}")
        if not isinstance(s.calibration_injections, int) or s.calibration_injections < 0:
            raise ConfigError(f"[lumos]: calibration_injections must be an integer >= 0, got "
                              f"{s.calibration_injections!r}")
        shrink = s.calibration_shrink
        if (isinstance(shrink, bool) or not isinstance(shrink, (int, float))
                or not math.isfinite(shrink) or shrink < 0):
            raise ConfigError(f"[lumos]: calibration_shrink must be a finite number >= 0 "
                              f"(0 = off), got {s.calibration_shrink!r}")
        if s.calibration_placement not in ("catalogue", "empty"):
            raise ConfigError(f"[lumos]: calibration_placement must be 'catalogue' or 'empty', "
                              f"got {s.calibration_placement!r}")
        if s.neighbour_ratio and (not s.neighbours or s.neighbour_fit):
            raise ConfigError("[lumos]: neighbour_ratio = true needs neighbours = true and "
                              "neighbour_fit = false")
        if s.data_deblend and not s.neighbour_ratio:
            raise ConfigError("[lumos]: data_deblend = true needs neighbour_ratio = true")
        if s.estimator not in ESTIMATORS:
            raise ConfigError(f"[lumos]: estimator must be one of {ESTIMATORS}, got "
                              f"{s.estimator!r}")
        return s


# -- band x epoch vocabulary ----------------------------------------------------------------------

def _key_index(keys: list[str], band: Any, epoch: Any) -> int:
    from ...simulate.trainingdata import key_name

    k = key_name(band, epoch)
    if k in keys:
        return keys.index(k)
    if key_name(str(band), str(epoch)) in keys:  # training stamps keep str(None)
        return keys.index(key_name(str(band), str(epoch)))
    same_band = [i for i, kk in enumerate(keys) if kk.split("/")[0] == str(band)]
    if same_band:
        log.warning("band x epoch %s unknown to the Lumos model; using %s", k, keys[same_band[0]])
        return same_band[0]
    if len(keys) > 1:
        log.warning("band x epoch %s unknown to the Lumos model (knows %s); using %s", k,
                    ", ".join(keys), keys[0])
    return 0
