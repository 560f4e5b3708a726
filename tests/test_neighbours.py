"""The grid neighbour count equals scipy's k-d tree, ties at the radius included."""

import numpy as np
import pytest

from skysub import neighbours
from skysub.neighbours import _count_grid, _count_tree, count_within


@pytest.mark.parametrize("seed", range(6))
def test_grid_equals_tree(seed):
    rng = np.random.default_rng(seed)
    for trial in range(40):
        n, m = int(rng.integers(0, 200)), int(rng.integers(1, 200))
        if trial % 3 == 0:  # integer positions: many pairs exactly at the radius
            x, y = rng.integers(0, 60, (2, n)).astype(float)
            px, py = rng.integers(0, 60, (2, m)).astype(float)
        else:
            x, y = rng.uniform(-50, 500, (2, n))
            px, py = rng.uniform(-50, 500, (2, m))
        r = float(rng.choice([0.5, 3.0, 5.0, 30.0, 45.0, 1000.0]))
        got = _count_grid(x, y, px, py, r)
        ref = _count_tree(x, y, px, py, r) if n else np.zeros(0, np.int64)
        np.testing.assert_array_equal(got, ref)


def test_known_counts_and_dense_fallback(monkeypatch):
    # a 3x3 block of points 1 px apart: the centre has 8 neighbours within 1.5 px (+ itself),
    # an edge point 5 (+ itself), a corner 3 (+ itself)
    gx, gy = np.meshgrid(np.arange(3.0), np.arange(3.0))
    x, y = gx.ravel(), gy.ravel()
    got = _count_grid(x, y, x, y, 1.5)
    assert got.reshape(3, 3).tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]
    # radius exactly 1: only the 4-neighbours (d = 1 counts, d = sqrt 2 does not)
    assert _count_grid(x, y, x, y, 1.0).reshape(3, 3).tolist() == [[3, 4, 3], [4, 5, 4],
                                                                    [3, 4, 3]]
    monkeypatch.setattr(neighbours, "MAX_PAIRS", 10)  # too dense for the grid: the tree
    assert _count_grid(x, y, x, y, 1.5).reshape(3, 3).tolist() == [[4, 6, 4], [6, 9, 6],
                                                                    [4, 6, 4]]
    assert count_within(x, y, x, y, 0.0).tolist() == [1] * 9
    assert count_within(x[:0], y[:0], x, y, 2.0).tolist() == []
