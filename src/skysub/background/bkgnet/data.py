"""BKGnet's training set: stamps sampled from exposures (:func:`skysub.simulate.trainingdata.
sample_training_stamps`: empty positions, labels, injected galaxies) turned into normalised
network tensors (:class:`TrainingSet`, :func:`build_training_set`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InputError
from ...image import Image
from ...simulate.trainingdata import galaxy_pool, key_name, sample_training_stamps
from .estimator import BKGnetSettings

log = logging.getLogger("skysub")


# -- training ----------------------------------------------------------------------------------
@dataclass
class TrainingSet:
    """Stamps ready for the network (normalised), with their provenance."""

    x: Any  # torch (N, 2, S, S) float16
    coords: Any  # (N, 2) float32
    mag: Any  # (N,) float32
    has_mag: Any  # (N,) float32
    key: Any  # (N,) long
    y: Any  # (N,) float32 normalised label
    label: np.ndarray  # image units
    label_sigma: np.ndarray
    loc: np.ndarray
    scale: np.ndarray
    exposure: np.ndarray  # index of the exposure each stamp came from
    pos: np.ndarray  # (N, 2) pixel positions

    def subset(self, sel: np.ndarray) -> TrainingSet:
        import torch

        t = torch.from_numpy(np.flatnonzero(sel))
        return TrainingSet(self.x[t], self.coords[t], self.mag[t], self.has_mag[t], self.key[t],
                           self.y[t], self.label[sel], self.label_sigma[sel], self.loc[sel],
                           self.scale[sel], self.exposure[sel], self.pos[sel])

    def tensors(self) -> dict:
        return {"x": self.x, "coords": self.coords, "mag": self.mag, "has_mag": self.has_mag,
                "key": self.key, "y": self.y}

    def __len__(self) -> int:
        return len(self.label)


def build_training_set(exposures: Iterable[tuple[Image, Any, np.ndarray | None]],
                       settings: BKGnetSettings, keys: list[str], *, seed: int = 0,
                       catalog: Any = None, quiet: bool = False, total: int | None = None
                       ) -> TrainingSet:
    """Sample, label, inject and normalise training stamps from ``(image, cat_xy,
    truth_background or None)`` triples."""
    import torch

    from ...nn.bkgnet import normalise_stamps
    from ...progress import progress

    rng = np.random.default_rng(seed)
    galaxies = galaxy_pool(catalog, rng) if settings.inject else None
    parts: dict[str, list] = {k: [] for k in ("x", "coords", "mag", "has", "key", "y", "label",
                                              "lsig", "loc", "scale", "exp", "pos")}
    for j, (image, cat_xy, truth) in enumerate(progress(exposures, desc="sampling stamps",
                                                        quiet=quiet, total=total,
                                                        unit="image")):
        k = key_name(image.meta.band, image.meta.epoch)
        if k not in keys:
            keys.append(k)
        d = sample_training_stamps(image, cat_xy, settings, rng, galaxies=galaxies,
                                   truth_background=truth)
        m = len(d["label"])
        if m == 0:
            log.warning("%s: no usable empty position (crowded or saturated?)", image.name)
            continue
        st = torch.from_numpy(d["stamps"])
        valid = ~torch.isnan(st)
        xin, loc, scale, ok = normalise_stamps(torch.nan_to_num(st), valid, settings.mask_size,
                                               min_valid=settings.min_valid)
        ok = ok.numpy()
        loc, scale = loc.numpy(), scale.numpy()
        ny, nx = image.shape
        parts["x"].append(xin[torch.from_numpy(ok)].to(torch.float16))
        cx = d["x"] / max(nx - 1, 1) * 2 - 1
        cy = d["y"] / max(ny - 1, 1) * 2 - 1
        parts["coords"].append(np.column_stack([cx, cy])[ok])
        parts["mag"].append(np.nan_to_num(d["mag"], nan=0.0)[ok])
        parts["has"].append(np.isfinite(d["mag"])[ok])
        parts["key"].append(np.full(ok.sum(), keys.index(k)))
        parts["y"].append(((d["label"] - loc) / scale)[ok])
        parts["label"].append(d["label"][ok])
        parts["lsig"].append(d["label_sigma"][ok])
        parts["loc"].append(loc[ok])
        parts["scale"].append(scale[ok])
        parts["exp"].append(np.full(ok.sum(), j))
        parts["pos"].append(np.column_stack([d["x"], d["y"]])[ok])
    if not parts["x"]:
        raise InputError("no training stamps could be drawn from the exposures (every position "
                         "crowded, saturated or masked?)")
    cat = {k: np.concatenate(v) for k, v in parts.items() if k != "x"}
    return TrainingSet(
        x=torch.cat(parts["x"]), coords=torch.from_numpy(cat["coords"].astype(np.float32)),
        mag=torch.from_numpy(cat["mag"].astype(np.float32)),
        has_mag=torch.from_numpy(cat["has"].astype(np.float32)),
        key=torch.from_numpy(cat["key"].astype(np.int64)),
        y=torch.from_numpy(cat["y"].astype(np.float32)), label=cat["label"],
        label_sigma=cat["lsig"], loc=cat["loc"], scale=cat["scale"], exposure=cat["exp"],
        pos=cat["pos"])
