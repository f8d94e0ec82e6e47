"""A certified lower bound on the least clustering cost within a budget (a relaxation).

The cost of a tree is ``Σ_d c_d(P_d)`` with ``c_d(P) = (1/|P|) Σ_{g ∈ P} diam_d(g)``, and its
resource is ``Σ_d |P_d| r_d``. Two relaxations give a bound in milliseconds for 40 tasks:

1. **Per depth, per group count.** Forget that the partitions must refine each other: the
   cost at depth d with k groups is at least ``f_d(k) = min_{|P| = k} c_d(P)``. We bound
   ``f_d(k)`` from below by the largest of

   - *a subset's exact optimum*: restricting a partition to a subset S of tasks never raises
     any group's diameter and leaves at most k groups, so ``Σ_g diam(g) ≥ F_S(k)``, the least
     ``Σ diam`` over partitions of S into at most k groups, computed exactly by enumerating
     S's partitions (|S| ≤ 10; S = the most mutually dissimilar tasks, found greedily);
   - *nearest neighbours*: a task that shares its group has a group diameter at least its
     distance to its nearest other task; with s singletons and k - s shared groups, the
     shared groups' diameters sum to at least the largest such distance among the shared
     tasks plus the k - s - 1 smallest (minimised over s);

   and ``f_d`` is non-increasing in k (peeling a task off never raises the cost), so each
   bound is also a bound for every smaller k.
2. **Budget.** The counts are non-decreasing with depth and must fit the budget; rounding
   every block cost down to a multiple of a quantum q (and the budget too) only enlarges
   the feasible set. A dynamic programme over (depth, count, quantised resource) then gives
   the least ``Σ_d f_d(k_d)`` over every admissible count sequence.

The bound is the optimum of a relaxation, so it never exceeds the true optimum (tests check
it against the exact solver); the gap it certifies is loose where the optimum needs large
groups at many depths.
"""

from __future__ import annotations

import logging
from typing import List, Optional

import numpy as np

from ._common import SearchProblem
from ._partitions import partition_table, subset_max_table

__all__ = ["depth_count_bounds", "lower_bound"]

logger = logging.getLogger(__name__)

_SUBSET = 10  # largest subset whose partitions are enumerated (Bell(10) = 115,975)
_STEPS = 1 << 14  # resource levels of the budget DP


def _dispersed(dis: np.ndarray, size: int, start: int) -> List[int]:
    """Greedy max-min dispersion: ``size`` tasks far from each other, from task ``start``."""
    chosen = [start]
    near = dis[start].copy()
    near[start] = -np.inf
    for _ in range(size - 1):
        j = int(np.argmax(near))
        chosen.append(j)
        near = np.minimum(near, dis[j])
        near[chosen] = -np.inf
    return sorted(chosen)


def _subset_sums(dis: np.ndarray, subset: List[int], n: int) -> np.ndarray:
    """``F_S(k)`` for k = 1..n: least Σ diam over partitions of ``subset`` into at most k groups."""
    s = len(subset)
    table = partition_table(s)
    sub = np.maximum(dis[np.ix_(subset, subset)], 0.0)
    smax = subset_max_table(sub[None])[0]
    sums = smax[table.masks].sum(axis=1)
    best = np.full(n + 1, np.inf)
    for m in range(1, s + 1):
        best[m] = sums[table.levels[m]].min()
    best[0] = np.inf
    best[s + 1:] = 0.0
    return np.minimum.accumulate(best[1:])  # at most k groups


def _nn_sums(dis: np.ndarray, n: int) -> np.ndarray:
    """Nearest-neighbour bound on Σ diam for exactly k = 1..n groups."""
    off = dis + np.diag(np.full(n, np.inf))
    v = np.sort(np.maximum(off.min(axis=1), 0.0))  # ascending nearest-neighbour distances
    csum = np.concatenate([[0.0], np.cumsum(v)])
    out = np.zeros(n)
    for k in range(1, n):
        best = np.inf
        for s in range(max(0, 2 * k - n), k):  # s singletons, q = k - s shared groups
            q = k - s
            # shared tasks: the n - s with the smallest distances; q maxima are distinct
            # elements, one the largest, the others at least the q - 1 smallest
            best = min(best, v[n - s - 1] + csum[q - 1])
        out[k - 1] = best
    return out


def depth_count_bounds(problem: SearchProblem, subsets: int = 2) -> np.ndarray:
    """``L[d, k-1] ≤ min over partitions P with k groups of c_d(P)``, shape (D, N).

    Args:
        problem: the search problem.
        subsets: dispersed subsets tried per depth (different starting tasks).
    """
    n, depth = problem.num_tasks, problem.depth
    out = np.zeros((depth, n))
    ks = np.arange(1, n + 1)
    for d in range(depth):
        dis = problem.dis[d]
        sums = _nn_sums(dis, n)
        if n >= 2:
            size = min(n, _SUBSET)
            iu = np.triu_indices(n, 1)
            far = np.argsort(-dis[iu])
            starts: List[int] = []
            for idx in far:
                for t in (int(iu[0][idx]), int(iu[1][idx])):
                    if t not in starts:
                        starts.append(t)
                if len(starts) >= subsets:
                    break
            for st in starts[:subsets]:
                sums = np.maximum(sums, _subset_sums(dis, _dispersed(dis, size, st), n))
        full = max(0.0, float(np.max(np.where(np.eye(n, dtype=bool), -np.inf, dis)))) if n > 1 else 0.0
        sums[0] = full  # one group: exact
        sums[n - 1] = 0.0
        per = sums / ks
        out[d] = np.maximum.accumulate(per[::-1])[::-1]  # f_d non-increasing in k
    return out


def lower_bound(problem: SearchProblem, bounds: Optional[np.ndarray] = None) -> float:
    """A lower bound on the least cost of a tree within ``problem``'s budget.

    Args:
        problem: the search problem (budget None: the all-separate limit).
        bounds: per-depth, per-count bounds (default :func:`depth_count_bounds`).

    Returns:
        The bound (``inf`` if no count sequence fits, which make_problem's checks exclude).

    Example:
        >>> import numpy as np
        >>> from branchnas.search import make_problem
        >>> a = np.ones((2, 3, 3)); a[:, 0, 2] = a[:, 2, 0] = 0.2
        >>> lower_bound(make_problem(a, ["a", "b", "c"], [1, 1], budget=2))  # fully shared only
        1.6
    """
    n, depth, t = problem.num_tasks, problem.depth, problem.shared_prefix
    lb = depth_count_bounds(problem) if bounds is None else bounds
    r = problem.resource.astype(np.int64)
    room = problem.limit - problem.fixed_resource
    if room < 0:
        return float("inf")
    q = max(1, -(-room // _STEPS))
    w = r // q  # rounding down only enlarges the feasible set
    cap = room // q
    steps = int(cap) + 1
    # g[k-1, rho]: least bound of the depths so far with k groups at the last, quantised
    # resource at most rho
    g = np.zeros((1, steps))
    g_k = 1  # rows of g (counts 1..g_k)
    for d in range(depth):
        kmax = 1 if d < t else n
        prev = np.minimum.accumulate(g, axis=0)  # any count <= k at the previous depth
        new = np.full((kmax, steps), np.inf)
        for k in range(1, kmax + 1):
            row = prev[min(k, g_k) - 1]
            shift = int(k * w[d])
            if shift < steps:
                new[k - 1, shift:] = lb[d, k - 1] + row[: steps - shift]
        g, g_k = new, kmax
    return float(g[:, -1].min())
