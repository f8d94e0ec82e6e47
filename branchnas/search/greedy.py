"""Lu et al. (2017)'s greedy layer-by-layer grouping: the paper's "FA" baseline.

Fully-adaptive feature sharing widens a thin network from the output towards the input:
at the active layer, the branches above it are clustered into groups, one new branch per
group, and the decision is made looking at that layer only (the paper's §2 and §3.2 contrast
this local criterion with its global one). Here, given the affinity, the greedy starts at the
deepest cut point D with one branch per task; at each depth d (D, D-1, …, 1) it groups the
branches of depth d+1 into the coarsening with the least clustering cost *at location d
alone*, among those that leave enough budget for the shallower depths (each needs at least
one copy of its block). Ties go to fewer groups. The separation term (average over groups of
the maximum within-group dissimilarity) is Lu et al.'s; the budget replaces their
branch-creation penalty so both methods are compared at the same cost.

The best coarsening is found exactly when there are at most ``exact_branches`` branches
(every set partition of the branches), otherwise by complete-linkage agglomeration of the
branches (whose merge distance is exactly the within-group maximum).
"""

from __future__ import annotations

import logging
from typing import List, Tuple

import numpy as np

from ..tree import Tree
from ._common import SearchProblem, StrategyOutput, register_strategy
from ._partitions import partition_table, subset_max_table
from .cost import group_cost

__all__ = ["FAGreedySearch", "best_coarsening"]

logger = logging.getLogger(__name__)

Group = Tuple[int, ...]


def _branch_dissimilarity(dis: np.ndarray, branches: List[Group]) -> Tuple[np.ndarray, np.ndarray]:
    """(B, B) max task dissimilarity between branches, and (B,) max within each branch."""
    b = len(branches)
    between = np.zeros((b, b))
    for i in range(b):
        for j in range(i + 1, b):
            between[i, j] = between[j, i] = dis[np.ix_(branches[i], branches[j])].max()
    within = np.array([group_cost(dis, g) for g in branches])
    return between, within


def best_coarsening(
    dis: np.ndarray, branches: List[Group], max_groups: int, exact_branches: int = 10
) -> Tuple[List[Group], float, int]:
    """The grouping of ``branches`` with the least local clustering cost, at most ``max_groups`` groups.

    Args:
        dis: (N, N) dissimilarity at this location.
        branches: the groups of tasks to merge (disjoint).
        max_groups: the most groups allowed (>= 1).
        exact_branches: enumerate every grouping up to this many branches.

    Returns:
        (groups of tasks in canonical order, local cost, number of groupings scored).
    """
    nb = len(branches)
    between, within = _branch_dissimilarity(dis, branches)
    if nb <= exact_branches:
        table = partition_table(nb)
        # max over a set of branches = max(pairwise between, each branch's own max, 0)
        pair = subset_max_table(between[None])[0]
        own = np.zeros(1 << nb)
        for j in range(nb):
            bit = 1 << j
            own[bit:2 * bit] = np.maximum(own[:bit], within[j])
        union = np.maximum(pair, own)
        cost = union[table.masks].sum(axis=1) / table.nblocks
        ok = np.flatnonzero(table.nblocks <= max_groups)
        best = ok[np.lexsort((table.nblocks[ok], cost[ok]))[0]]
        rgs = table.rgs[best]
        groups = [sorted(t for j in range(nb) if rgs[j] == g for t in branches[j])
                  for g in range(int(table.nblocks[best]))]
        scored = ok.size
    else:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import squareform

        z = linkage(squareform(np.maximum(between, 0.0), checks=False), method="complete")
        cands = []
        for c in range(1, min(max_groups, nb) + 1):
            labels = fcluster(z, c, criterion="maxclust")
            groups_c = [sorted(t for j in range(nb) if labels[j] == lab for t in branches[j])
                        for lab in np.unique(labels)]
            local = sum(group_cost(dis, g) for g in groups_c) / len(groups_c)
            cands.append((local, len(groups_c), groups_c))
        scored = len(cands)
        local_best = min(cands, key=lambda x: (x[0], x[1]))
        groups = local_best[2]
    groups_t = sorted((tuple(g) for g in groups), key=lambda g: g[0])
    return groups_t, sum(group_cost(dis, g) for g in groups_t) / len(groups_t), int(scored)


@register_strategy("fa", exact=False)
class FAGreedySearch:
    """Lu et al. (2017)'s greedy layer-by-layer task grouping under the same budget.

    Args:
        exact_branches: up to this many branches, the local grouping is optimal (every set
            partition is scored); above, complete-linkage agglomeration.

    Returns a single tree whatever ``top_k`` (the greedy builds one).
    """

    def __init__(self, exact_branches: int = 10) -> None:
        self.exact_branches = exact_branches

    def run(self, problem: SearchProblem, top_k: int = 1) -> StrategyOutput:
        """Search ``problem``; see :class:`StrategyOutput`."""
        n, depth, t = problem.num_tasks, problem.depth, problem.shared_prefix
        r = [int(x) for x in problem.resource]
        limit = problem.limit
        used = problem.fixed_resource + sum(r[:t])
        parts: List[List[Group]] = [[tuple(range(n))] for _ in range(depth)]
        branches: List[Group] = [(i,) for i in range(n)]
        scored = 0
        for d in range(depth - 1, t - 1, -1):
            reserve = sum(r[t:d])  # shallower free depths keep at least one group each
            cap = len(branches) if r[d] == 0 else (limit - used - reserve) // r[d]
            cap = max(1, min(cap, len(branches)))
            groups, local, k = best_coarsening(problem.dis[d], branches, cap, self.exact_branches)
            scored += k
            parts[d] = groups
            used += len(groups) * r[d]
            branches = groups
            logger.debug("fa depth %d: %d groups, local cost %.4f", d + 1, len(groups), local)
        tree = Tree.from_index_partitions(problem.tasks, parts)
        return StrategyOutput([tree], enumerated=scored, feasible=None)
