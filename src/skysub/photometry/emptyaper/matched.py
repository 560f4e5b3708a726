"""Clearance weights of the empty positions (``error_calibration="matched"``): the
measured sources' distribution of the distance to the nearest catalogued source."""

from __future__ import annotations

import numpy as np

from .local import LOCAL_K_MAX, LOCAL_K_MIN, LOCAL_MIN, LOCAL_SHARE
from .neighbour import nearest_distance

#: pseudo-sources spread like the empty positions that :func:`clearance_weights` adds to the
#: measured ones (a few sources move the weights little)
MATCH_PSEUDO = 4


def clearance_weights(x: np.ndarray, y: np.ndarray, target_xy: tuple, avoid_xy: tuple
                      ) -> tuple[np.ndarray | None, dict | None]:
    """Importance weights that give the empty positions ``x, y`` the measured sources'
    (``target_xy``) distribution of the distance to the nearest catalogued source of
    ``avoid_xy`` (:func:`nearest_distance`, a source's own entry left out): a neighbour's
    light in a position's background is an error that shrinks with that distance, and the
    empty positions keep the probes' clearance while the sources stand where they stand.
    Nearest-neighbour matching on that distance: each source hands a weight 1/k to each of
    the ``k`` empty positions nearest to it in distance (``k`` as the local factor's:
    ``clip(n / 8, 25, 150)``), so a source nearer (farther) than every empty position is
    represented by the nearest (farthest) ones; :data:`MATCH_PSEUDO` pseudo-sources spread
    like the empty positions are added, and the weights scaled to a mean of 1.  ``(None,
    None)`` without sources or with fewer than :data:`LOCAL_MIN` positions, else the weights
    and a record (``k``, the distances' 5/50/95 % points, the effective number of
    positions)."""
    from scipy.spatial import cKDTree

    ax, ay = (np.asarray(v, float).ravel() for v in avoid_xy)
    tx, ty = (np.asarray(v, float).ravel() for v in target_xy)
    fin = np.isfinite(ax) & np.isfinite(ay)
    tfin = np.isfinite(tx) & np.isfinite(ty)
    if not fin.any() or not tfin.any() or x.size < LOCAL_MIN:
        return None, None
    tree = cKDTree(np.c_[ax[fin], ay[fin]])
    de = nearest_distance(np.asarray(x, float), np.asarray(y, float), tree)
    dt = np.minimum(nearest_distance(tx[tfin], ty[tfin], tree), de.max())  # alone: farthest
    k = int(np.clip(round(de.size / LOCAL_SHARE), LOCAL_K_MIN, LOCAL_K_MAX))
    _, idx = cKDTree(de[:, None]).query(dt[:, None], k=k)
    c = np.bincount(np.ravel(idx), minlength=de.size) / k + MATCH_PSEUDO / de.size
    w = c * de.size / c.sum()
    pct = [5, 50, 95]
    rec = {"rule": "nearest-neighbour matching on the distance to the nearest catalogued "
                   "source", "k": k, "n_sources": int(dt.size),
           "n_eff": float(w.sum() ** 2 / np.sum(w**2)),
           "source_distance_percentiles": [float(v) for v in np.percentile(dt, pct)],
           "empty_distance_percentiles": [float(v) for v in np.percentile(de, pct)]}
    return w, rec
