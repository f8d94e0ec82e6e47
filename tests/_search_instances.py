"""Random search instances shared by the search tests (exact, local, frontier)."""

from __future__ import annotations

import numpy as np


def random_affinity(n, depth, seed):
    """A symmetric (depth, n, n) affinity in [-1, 1] with a unit diagonal."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(depth, n, n))
    a = (x + x.transpose(0, 2, 1)) / 2
    for d in range(depth):
        np.fill_diagonal(a[d], 1.0)
    return a


def names(n):
    """Task names t0 .. t{n-1}."""
    return [f"t{i}" for i in range(n)]
