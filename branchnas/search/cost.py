"""The clustering cost of a task tree (the paper's §3.2, design.md "Contracts").

With ``Dis = 1 - A``::

    cost(tree) = Σ_d (1/|P_d|) Σ_{g ∈ P_d} max_{i,j ∈ g} Dis[d, i, j]

Depth d of the tree (1..D) uses affinity location d. A group of one task costs 0; the
diagonal of ``Dis`` is taken as 0 (a unit-diagonal affinity), so a group never costs less
than 0.

Example:
    >>> import numpy as np
    >>> from branchnas.tree import Tree
    >>> A = np.array([[[1, .8, .2], [.8, 1, .4], [.2, .4, 1]]] * 2)
    >>> t = Tree(("a", "b", "c"), [[["a", "b", "c"]], [["a", "b"], ["c"]]])
    >>> round(clustering_cost(t, A), 6)  # depth 1: max 0.8; depth 2: (0.2 + 0) / 2
    0.9
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import BranchnasError
from ..tree import Tree
from ._partitions import PartitionTable

__all__ = ["clustering_cost", "depth_costs", "group_cost"]


def group_cost(dis: np.ndarray, group: Sequence[int]) -> float:
    """``max_{i,j ∈ group} dis[i, j]`` over one location's (N, N) dissimilarity (0 for one task)."""
    if len(group) < 2:
        return 0.0
    idx = np.asarray(group)
    sub = dis[np.ix_(idx, idx)]
    return max(0.0, float(sub[np.triu_indices(idx.size, 1)].max()))


def depth_costs(tree: Tree, affinity: np.ndarray) -> np.ndarray:
    """The clustering cost of every depth of ``tree`` (length D; their sum is the cost).

    Raises:
        BranchnasError: if the affinity's shape does not match the tree.
    """
    a = np.asarray(affinity, dtype=np.float64)
    n = tree.num_tasks
    if a.shape != (tree.depth, n, n):
        raise BranchnasError(
            f"affinity has shape {a.shape} but the tree needs ({tree.depth}, {n}, {n}) "
            "(one N×N matrix per depth); use the affinity computed for these tasks and cut points"
        )
    out = np.empty(tree.depth)
    for d, part in enumerate(tree.index_groupings):
        dis = 1.0 - a[d]
        out[d] = sum(group_cost(dis, g) for g in part) / len(part)
    return out


def clustering_cost(tree: Tree, affinity: np.ndarray) -> float:
    """The paper's clustering cost of ``tree`` under ``affinity`` (D, N, N).

    Args:
        tree: a task tree with D depths over N tasks (indices follow ``tree.tasks``).
        affinity: task affinity per location, rows/columns in ``tree.tasks`` order.

    Returns:
        ``Σ_d (1/|P_d|) Σ_{g ∈ P_d} max_{i,j ∈ g} (1 - A[d, i, j])``.

    Raises:
        BranchnasError: if the affinity's shape does not match the tree.
    """
    return float(depth_costs(tree, affinity).sum())


def partition_costs(table: PartitionTable, subset_max: np.ndarray) -> np.ndarray:
    """``c_d(P)`` for every partition P of the table and every location d: (D, B)."""
    depth = subset_max.shape[0]
    out = np.empty((depth, table.size))
    for d in range(depth):
        out[d] = subset_max[d][table.masks].sum(axis=1) / table.nblocks
    return out
