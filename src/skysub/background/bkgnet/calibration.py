"""BKGnet's error calibration: the network's predictions on a training set
(:func:`predict_set`) and the validation factor on sigma_net (:func:`sigma_scale`).
"""

from __future__ import annotations

import numpy as np

from .data import TrainingSet


def predict_set(model, ts: TrainingSet, *, batch_size: int = 1024) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Network background and sigma (image units) for a training set."""
    import torch

    from ...nn.bkgnet import denormalise

    model.eval()
    dev = next(model.parameters()).device
    bs, ss = [], []
    with torch.inference_mode():
        for s in range(0, len(ts), batch_size):
            sl = slice(s, s + batch_size)
            mu, ls = model(ts.x[sl].float().to(dev), ts.coords[sl].to(dev), ts.mag[sl].to(dev),
                           ts.has_mag[sl].to(dev), ts.key[sl].to(dev))
            b, sg = denormalise(mu.cpu(), ls.cpu(), torch.from_numpy(ts.loc[sl]),
                                torch.from_numpy(ts.scale[sl]))
            bs.append(b.numpy())
            ss.append(sg.numpy())
    return np.concatenate(bs), np.concatenate(ss)


def sigma_scale(model, val: TrainingSet) -> float:
    """Error calibration on the validation exposures: the factor ``k`` that makes the pull
    width ``sigma68[(b - label) / (k sigma_net)]`` one (temperature scaling of sigma_net).  The
    Gaussian likelihood fits sigma on the training stamps; held-out exposures scatter a little
    more, and ``k`` (typically 1.0-1.2) carries that into the reported errors."""
    from ...metrics import pull_summary

    b, s = predict_set(model, val)
    k = float(pull_summary(b, val.label, s)["sigma68"])
    return k if np.isfinite(k) and k > 0 else 1.0
