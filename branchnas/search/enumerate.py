"""Every task tree, lazily or in bulk: counting, enumeration and the exhaustive strategy.

A tree is a chain ``P_1 ≥ P_2 ≥ … ≥ P_D`` of set partitions, each refining the one before.
The number of chains follows the exponential formula: with ``T(n, 0) = 1``,
``T(n, d) = Σ_P Π_{b ∈ P} T(|b|, d-1)`` over the set partitions P of n tasks (6 tasks × 4
depths: 44,590 trees; 8 × 4: 11,035,095; 10 × 4: 4,183,174,520).

:func:`enumerate_trees` is a pure-Python lazy generator of :class:`~branchnas.tree.Tree`
objects (any size, slow per tree). :class:`ExhaustiveSearch` scores every tree with
vectorized chain expansion over the partition tables (millions of trees per second).
"""

from __future__ import annotations

import logging
from math import comb
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np

from ..errors import BranchnasError
from ..tree import Tree
from ._common import SearchProblem, StrategyOutput, register_strategy
from ._partitions import partition_table, subset_max_table
from .cost import partition_costs

__all__ = ["ExhaustiveSearch", "count_trees", "enumerate_trees", "set_partitions"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20  # trees scored per vectorized batch


def count_trees(num_tasks: int, depth: int, shared_prefix: int = 0) -> int:
    """Number of trees over ``num_tasks`` tasks and ``depth`` cut points (exact integer).

    Args:
        num_tasks: N >= 1.
        depth: D >= 1.
        shared_prefix: the first k depths are shared by all tasks (0 <= k <= D).

    Example:
        >>> count_trees(4, 1), count_trees(8, 4), count_trees(8, 4, shared_prefix=2)
        (15, 11035095, 167894)
    """
    _check_shape_args(num_tasks, depth, shared_prefix)
    a = [1] * (num_tasks + 1)  # T(m, 0) = 1
    for _ in range(depth - shared_prefix):
        b = [1] + [0] * num_tasks
        for m in range(1, num_tasks + 1):
            # the block holding element 1 has size k
            b[m] = sum(comb(m - 1, k - 1) * a[k] * b[m - k] for k in range(1, m + 1))
        a = b
    return a[num_tasks]


def _check_shape_args(num_tasks: int, depth: int, shared_prefix: int) -> None:
    if not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
        raise BranchnasError(f"the number of tasks must be a positive integer, got {num_tasks!r}")
    if not isinstance(depth, (int, np.integer)) or depth < 1:
        raise BranchnasError(f"the depth must be a positive integer, got {depth!r}")
    if not isinstance(shared_prefix, (int, np.integer)) or not 0 <= shared_prefix <= depth:
        raise BranchnasError(f"shared_prefix must be in 0..{depth}, got {shared_prefix!r}")


def set_partitions(items: Sequence[int]) -> Iterator[List[List[int]]]:
    """Every set partition of ``items`` (lazily; B_n of them).

    Example:
        >>> sorted(sorted(map(sorted, p)) for p in set_partitions([0, 1, 2]))[:2]
        [[[0], [1], [2]], [[0], [1, 2]]]
    """
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for p in set_partitions(rest):
        yield [[first]] + p
        for i in range(len(p)):
            yield p[:i] + [[first] + p[i]] + p[i + 1:]


def _refinements(groups: List[List[int]]) -> Iterator[List[List[int]]]:
    if not groups:
        yield []
        return
    head, tail = groups[0], groups[1:]
    for split in set_partitions(head):
        for rest in _refinements(tail):
            yield split + rest


def enumerate_trees(
    tasks: Sequence[str], depth: int, shared_prefix: int = 0
) -> Iterator[Tree]:
    """Lazily yield every tree over ``tasks`` with ``depth`` cut points.

    Args:
        tasks: task names.
        depth: D, the number of cut points.
        shared_prefix: force the first k blocks to be shared by all tasks.

    Yields:
        Each tree exactly once (depth-first order).

    Raises:
        BranchnasError: for no tasks, duplicate names, or an invalid depth/prefix.

    Example:
        >>> sum(1 for _ in enumerate_trees(["a", "b", "c"], 2))
        12
    """
    tasks_t = tuple(tasks)
    _check_shape_args(len(tasks_t), depth, shared_prefix)
    if len(set(tasks_t)) != len(tasks_t):
        raise BranchnasError("task names must be unique; list each task once")
    root = [list(range(len(tasks_t)))]
    prefix = [root] * shared_prefix

    def walk(chain: List[List[List[int]]], current: List[List[int]]) -> Iterator[Tree]:
        if len(chain) == depth:
            yield Tree.from_index_partitions(tasks_t, chain)
            return
        for nxt in _refinements(current):
            yield from walk(chain + [nxt], nxt)

    yield from walk(list(prefix), root)


# ---------------------------------------------------------------------- vectorized engine
class _ChainScorer:
    """Scores every chain of partitions in vectorized batches (used by exhaustive search)."""

    def __init__(self, problem: SearchProblem) -> None:
        n, depth = problem.num_tasks, problem.depth
        self.problem = problem
        self.table = partition_table(n)
        if depth - problem.shared_prefix >= 2:
            self.ptr, self.idx = self.table.refinements()
        else:  # a single free depth: no refinement steps (each partition is its own list)
            self.ptr = np.arange(self.table.size + 1, dtype=np.int64)
            self.idx = np.arange(self.table.size, dtype=np.int64)
        self.costs = partition_costs(self.table, subset_max_table(problem.dis))
        self.res = problem.resource
        self.start = problem.shared_prefix
        self.depth = depth
        nb = self.table.nblocks.astype(np.int64)
        self.block_res = [nb * int(r) for r in self.res]
        # completions[d][p]: number of chains from depth d (P_d = p) to the last depth
        comp = [np.ones(self.table.size, dtype=np.int64)]
        for _ in range(depth - 1):
            nxt = np.add.reduceat(comp[0][self.idx], self.ptr[:-1])
            comp.insert(0, nxt)
        self.completions = comp

    def _expand(
        self, hist: np.ndarray, cost: np.ndarray, res: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = hist.shape[1]  # next depth index
        cur = hist[:, -1]
        counts = self.ptr[cur + 1] - self.ptr[cur]
        rep = np.repeat(np.arange(cur.size), counts)
        offs = np.arange(rep.size) - np.repeat(np.cumsum(counts) - counts, counts)
        new = self.idx[np.repeat(self.ptr[cur], counts) + offs]
        hist2 = np.empty((rep.size, d + 1), dtype=np.int32)
        hist2[:, :d] = hist[rep]
        hist2[:, d] = new
        return hist2, cost[rep] + self.costs[d, new], res[rep] + self.block_res[d][new]

    def batches(self) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (chains (n, D) partition ids, cost (n,), resource (n,)) covering every tree."""
        p = self.problem
        t = self.start
        prefix_cost = float(sum(self.costs[d, 0] for d in range(t)))
        prefix_res = p.fixed_resource + int(sum(int(self.res[d]) for d in range(t)))
        if t == self.depth:
            hist = np.zeros((1, self.depth), dtype=np.int32)
            yield hist, np.array([prefix_cost]), np.array([prefix_res], dtype=np.int64)
            return
        first = np.arange(self.table.size, dtype=np.int32)
        hist = np.zeros((first.size, t + 1), dtype=np.int32)
        hist[:, t] = first
        cost = prefix_cost + self.costs[t, first]
        res = prefix_res + self.block_res[t][first]
        yield from self._walk(hist, cost, res)

    def _walk(
        self, hist: np.ndarray, cost: np.ndarray, res: np.ndarray
    ) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        d = hist.shape[1] - 1
        if d == self.depth - 1:
            yield hist, cost, res
            return
        comp = self.completions[d][hist[:, -1]]
        if int(comp.sum()) <= _CHUNK:
            while hist.shape[1] < self.depth:
                hist, cost, res = self._expand(hist, cost, res)
            yield hist, cost, res
        elif hist.shape[0] > 1:
            group = np.cumsum(comp) // _CHUNK
            cuts = np.flatnonzero(np.diff(group)) + 1
            if cuts.size == 0:
                cuts = np.array([hist.shape[0] // 2])
            for sl in np.split(np.arange(hist.shape[0]), cuts):
                yield from self._walk(hist[sl], cost[sl], res[sl])
        else:
            yield from self._walk(*self._expand(hist, cost, res))

    def tree(self, chain: Sequence[int]) -> Tree:
        parts = [_groups(self.table.rgs[int(c)]) for c in chain]
        return Tree.from_index_partitions(self.problem.tasks, parts)


def _groups(rgs: np.ndarray) -> List[List[int]]:
    out: List[List[int]] = [[] for _ in range(int(rgs.max()) + 1)]
    for i, g in enumerate(rgs):
        out[int(g)].append(i)
    return out


def best_per_resource(problem: SearchProblem) -> Dict[int, Tuple[float, Tree]]:
    """Exhaustively, the least-cost tree at every achievable resource value.

    Returns:
        resource value → (cost, tree), over every tree of the space.
    """
    scorer = _ChainScorer(problem)
    best: Dict[int, Tuple[float, Tuple[int, ...]]] = {}
    for hist, cost, res in scorer.batches():
        order = np.lexsort((cost, res))
        uniq, first = np.unique(res[order], return_index=True)
        for r, i in zip(uniq.tolist(), order[first].tolist()):
            c = float(cost[i])
            if r not in best or c < best[r][0]:
                best[r] = (c, tuple(hist[i].tolist()))
    return {r: (c, scorer.tree(ch)) for r, (c, ch) in best.items()}


def _seconds(num_tasks: int, depth: int, shared_prefix: int = 0) -> float:
    """Run-time estimate on one core (a few million trees scored per second)."""
    return count_trees(num_tasks, depth, shared_prefix) / 3e6


def _path(problem: SearchProblem) -> Tuple[List[Tuple[int, float, Tuple[int, ...]]], Any]:
    best = best_per_resource(problem)
    return [(r, c, t) for r, (c, t) in best.items()], lambda t: t


@register_strategy("exhaustive", exact=True, counts_feasible=True, seconds=_seconds, path=_path)
class ExhaustiveSearch:
    """Score every tree of the space (the paper's §3.2) and keep the top-k within budget.

    Args:
        max_trees: refuse spaces with more trees than this (use "exact" or "local" there).

    Ranking is by cost, then by the budgeted resource (cheaper first), then by enumeration
    order.
    """

    def __init__(self, max_trees: int = 500_000_000) -> None:
        self.max_trees = max_trees

    def run(self, problem: SearchProblem, top_k: int = 1) -> StrategyOutput:
        """Search ``problem``; see :class:`StrategyOutput`."""
        total = count_trees(problem.num_tasks, problem.depth, problem.shared_prefix)
        if total > self.max_trees:
            raise BranchnasError(
                f"{problem.num_tasks} tasks × {problem.depth} cut points give {total:,} trees, "
                f"over the exhaustive limit of {self.max_trees:,}; use strategy 'exact' or 'local'"
            )
        scorer = _ChainScorer(problem)
        limit = problem.limit
        keep: List[Tuple[float, int, int, Tuple[int, ...]]] = []
        seen = feasible = 0
        for hist, cost, res in scorer.batches():
            ok = np.flatnonzero(res <= limit)
            feasible += int(ok.size)
            if ok.size > top_k:
                kth = np.partition(cost[ok], top_k - 1)[top_k - 1]
                ok = ok[cost[ok] <= kth]
            ok = ok[np.lexsort((ok, res[ok], cost[ok]))][:top_k]
            for i in ok.tolist():
                keep.append((float(cost[i]), int(res[i]), seen + i, tuple(hist[i].tolist())))
            keep.sort()
            del keep[top_k:]
            seen += hist.shape[0]
        logger.debug("exhaustive: %d trees scored, %d within budget", seen, feasible)
        return StrategyOutput([scorer.tree(k[3]) for k in keep], enumerated=seen, feasible=feasible)
