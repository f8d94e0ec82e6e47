"""Exact search without enumerating trees: a resource-constrained shortest path over partitions.

Both the clustering cost and the budgeted resource add up over depths, and the resource of
a tree depends only on its group counts ``k_d = |P_d|`` (``Σ_d k_d · r_d``). So the search
is a shortest path over states (depth d, partition P_d) whose resource is carried by the
count sequence. For every partition P at depth d and every non-decreasing sequence
``s = (k_{d+1}, …, k_D)`` with ``k_{d+1} ≥ |P|`` we compute

    M_d(P)[s] = min over Q finer than or equal to P with |Q| = s[0] of  c_d(Q) + M_{d+1}(Q)[s[1:]]

(the best completion of the tree below P with exactly those counts). The minimum over all
refinements is taken through the covering relation (one block split in two), level by level
from the finest partitions up: ``M(P) = [c(P) + M_next(P)] ++ min_{children C} M(C)``. With
sequences in lexicographic order, every vector is a contiguous tail of one array per depth,
so each level is one vectorized gather + segment-min. The best tree for each full count
sequence falls out at the top; a budget is then a filter on sequences, and the budget path a
running minimum over them.

Trees are recovered (top-1 or top-k) by best-first search whose heuristic is the exact
completion cost ``M``: nodes pop in order of their final cost, so the first k complete trees
popped are the k best, with no duplicates (each tree has one chain and one count sequence).

Bell(10) = 115,975 partitions: 10 tasks × 4 cut points (4.2 billion trees) takes a
few seconds on one core (see bench/bench_search.py).
"""

from __future__ import annotations

import heapq
import logging
from itertools import count as _counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import BranchnasError
from ..tree import Tree
from ._common import SearchProblem, StrategyOutput, register_strategy
from ._partitions import PartitionTable, partition_table, subset_max_table
from .cost import partition_costs
from .enumerate import _groups

__all__ = ["ExactSearch", "ExactSolver"]

logger = logging.getLogger(__name__)

_GATHER = 1 << 20  # floats gathered per segment-min chunk (8 MB, reused)


class _Seqs:
    """Non-decreasing sequences of length ``ell`` over 1..n, in lexicographic order."""

    def __init__(self, n: int, ell: int, shorter: Optional["_Seqs"]) -> None:
        self.ell = ell
        if ell == 0:
            self.rows = np.zeros((1, 0), dtype=np.int64)
            self.off = np.zeros(n + 2, dtype=np.int64)  # every tail is the one empty sequence
            self.tail = np.ones(n + 2, dtype=np.int64)
        else:
            assert shorter is not None
            blocks, off = [], [0, 0]
            for f in range(1, n + 1):
                rest = shorter.rows[shorter.off[f]:]
                blocks.append(np.concatenate([np.full((rest.shape[0], 1), f), rest], axis=1))
                off.append(off[-1] + rest.shape[0])
            self.rows = np.concatenate(blocks).astype(np.int64)
            self.off = np.asarray(off, dtype=np.int64)  # off[m] = first row with s[0] >= m
            self.tail = self.rows.shape[0] - self.off
        self.index: Dict[Tuple[int, ...], int] = {
            tuple(r): i for i, r in enumerate(self.rows.tolist())
        }

    def col(self, s: Sequence[int], m: int) -> int:
        """Column of ``s`` in the tail vector of a partition with m blocks."""
        return self.index[tuple(s)] - int(self.off[m])


def _segment_min(child: np.ndarray, kid: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``out[p] = min(child[kid[starts[p]:starts[p+1]]])`` row-wise, in small reused chunks."""
    n_par, cols = starts.size, child.shape[1]
    out = np.empty((n_par, cols))
    ends = np.append(starts[1:], kid.size)
    rows_per = max(1, _GATHER // max(cols, 1))
    seg_max = int((ends - starts).max())
    buf = np.empty((max(rows_per, seg_max), cols))
    p0 = 0
    while p0 < n_par:
        p1 = int(np.searchsorted(ends, starts[p0] + rows_per, side="right"))
        p1 = max(p1, p0 + 1)
        lo, hi = int(starts[p0]), int(ends[p1 - 1])
        chunk = buf[: hi - lo]
        np.take(child, kid[lo:hi], axis=0, out=chunk)
        out[p0:p1] = np.minimum.reduceat(chunk, starts[p0:p1] - lo, axis=0)
        p0 = p1
    return out


def _refining(table: PartitionTable, ids: np.ndarray, parent: int) -> np.ndarray:
    """Positions in ``ids`` of the partitions finer than or equal to ``parent``."""
    pm = table.masks[parent][table.rgs[parent]]  # block mask of each element under the parent
    qm = table.masks[ids]
    low = qm & -qm
    first = np.log2(np.where(low > 0, low, 1)).astype(np.int64)
    ok = ((qm & ~pm[first]) == 0) | (qm == 0)
    return np.flatnonzero(ok.all(axis=1))


def estimate_entries(n: int, depth: int, shared_prefix: int = 0) -> int:
    """Number of table entries :class:`ExactSolver` would compute (memory ≈ 8 bytes each)."""
    from math import comb

    stirling = _stirling_row(n)
    total = 0
    for ell in range(1, depth - shared_prefix + 1):
        total += sum(stirling[m] * comb(n - m + ell, ell) for m in range(1, n + 1))
    return total


def _stirling_row(n: int) -> List[int]:
    row = [1]  # S(0, 0)
    for i in range(1, n + 1):
        new = [0] * (i + 1)
        for k in range(1, i + 1):
            new[k] = k * (row[k] if k < len(row) else 0) + row[k - 1]
        row = new
    return row


def _seconds(num_tasks: int, depth: int, shared_prefix: int = 0) -> float:
    """Run-time estimate on one core (about 3e7 table entries per second, plus the partition table)."""
    if num_tasks > 12:
        return float("inf")
    return estimate_entries(num_tasks, depth, shared_prefix) / 3e7 + 2e-5 * _bell(num_tasks)


def _bell(n: int) -> int:
    return sum(_stirling_row(n)) if n else 1


def _path(problem: SearchProblem) -> Tuple[List[Tuple[int, float, int]], Any]:
    """Every count sequence's resource and least cost, and a resolver to its tree."""
    solver = ExactSolver(problem)
    idx = solver.feasible_sequences(problem.max_resource)
    rows = [(int(solver.seq_res[i]), float(solver.best[i]) + solver.prefix_cost, int(i)) for i in idx]

    def resolve(i: int) -> Tree:
        return solver.top_k(problem.max_resource, 1, np.array([i]))[0]

    return rows, resolve


class ExactSolver:
    """The dynamic program of this module for one problem (tables built on construction).

    Args:
        problem: a validated :class:`~branchnas.search.SearchProblem`.
        max_entries: refuse problems whose tables would exceed this many floats.
        subset_max: (D, 2**N) cost of every group of "tasks" per depth, instead of the max
            pairwise dissimilarity (local search re-solves a tree over groups of tasks, whose
            group cost also counts each member group's own diameter).

    Raises:
        BranchnasError: when the tables would be too large (too many tasks).
    """

    def __init__(self, problem: SearchProblem, max_entries: int = 60_000_000,
                 subset_max: Optional[np.ndarray] = None) -> None:
        n, depth, t = problem.num_tasks, problem.depth, problem.shared_prefix
        need = estimate_entries(n, depth, t)
        if need > max_entries:
            raise BranchnasError(
                f"exact search over {n} tasks × {depth - t} free cut points needs {need:,} table "
                f"entries (limit {max_entries:,}); use strategy 'local' (near-optimal for many tasks) or fewer tasks"
            )
        self.problem = problem
        self.n, self.depth, self.start = n, depth, t
        self.table = partition_table(n)
        smax = subset_max_table(problem.dis) if subset_max is None else subset_max
        self.costs = partition_costs(self.table, smax)
        r = problem.resource.astype(np.int64)
        self.prefix_cost = float(sum(self.costs[d, 0] for d in range(t)))
        prefix_res = problem.fixed_resource + int(r[:t].sum())
        self.seqs: List[_Seqs] = []
        for ell in range(depth - t + 1):
            self.seqs.append(_Seqs(n, ell, self.seqs[-1] if self.seqs else None))
        self.entries = 0
        # M[d][m]: (S(n, m), tail_{D-d}(m)) for d = t+1 .. D-1
        self.M: Dict[int, Dict[int, np.ndarray]] = {}
        for d in range(depth - 1, t, -1):
            self.M[d] = self._level_tables(d)
        top = self.seqs[depth - t]
        self.best = np.full(top.rows.shape[0], np.inf)
        self.best_arg = np.full(top.rows.shape[0], -1, dtype=np.int64)
        if t < depth:
            for m in range(1, n + 1):
                ids = self.table.levels[m]
                vals = self.costs[t, ids][:, None] + self._below(t, m)
                self.entries += vals.size
                j = vals.argmin(axis=0)
                sl = slice(int(top.off[m]), int(top.off[m + 1]))
                self.best[sl] = vals[j, np.arange(vals.shape[1])]
                self.best_arg[sl] = ids[j]
            self.seq_res = prefix_res + top.rows @ r[t:]
        else:
            self.best[:] = 0.0
            self.seq_res = np.array([prefix_res], dtype=np.int64)
        logger.debug("exact: %d table entries for %d tasks × %d depths", self.entries, n, depth)

    def _below(self, d: int, m: int) -> np.ndarray:
        if d + 1 < self.depth:
            return self.M[d + 1][m]
        return np.zeros((self.table.levels[m].size, 1))

    def _level_tables(self, d: int) -> Dict[int, np.ndarray]:
        out: Dict[int, np.ndarray] = {}
        for m in range(self.n, 0, -1):
            ids = self.table.levels[m]
            own = self.costs[d, ids][:, None] + self._below(d, m)
            if m == self.n:
                out[m] = own
            else:
                _, kid, starts = self.table.covers(m)
                out[m] = np.concatenate([own, _segment_min(out[m + 1], kid, starts)], axis=1)
            self.entries += out[m].size
        return out

    # ------------------------------------------------------------------ queries
    def feasible_sequences(self, limit: int) -> np.ndarray:
        """Indices of the count sequences whose resource fits ``limit``."""
        return np.flatnonzero((self.seq_res <= limit) & np.isfinite(self.best))

    def sequence(self, i: int) -> Tuple[int, ...]:
        """Full group counts (all D depths) of top-level sequence ``i``."""
        return (1,) * self.start + tuple(int(x) for x in self.seqs[-1].rows[i])

    def _children(
        self, d: int, parent: int, s_rem: Tuple[int, ...], g: float
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = s_rem[0]
        ids = self.table.levels[m]
        pos = np.arange(ids.size) if d == self.start else _refining(self.table, ids, parent)
        step = self.costs[d, ids[pos]]
        if d + 1 < self.depth:
            below = self.M[d + 1][m][pos, self.seqs[self.depth - d - 1].col(s_rem[1:], m)]
        else:
            below = 0.0
        f = g + step + below
        order = np.argsort(f, kind="stable")
        order = order[np.isfinite(f[order])]
        self.entries += pos.size
        return ids[pos[order]], f[order], (g + step)[order]

    def top_k(self, limit: int, k: int, sequences: Optional[np.ndarray] = None) -> List[Tree]:
        """The ``k`` least-cost trees whose resource fits ``limit`` (best first).

        Args:
            limit: the budget in the problem's budget kind.
            k: how many trees.
            sequences: restrict to these top-level count sequences (default: all feasible).
        """
        seqs = self.feasible_sequences(limit) if sequences is None else sequences
        tick = _counter()
        heap: list = []
        for i in seqs.tolist():
            s = tuple(int(x) for x in self.seqs[-1].rows[i])
            node = (self.start - 1, 0, s, self.prefix_cost, ())
            heap.append((self.prefix_cost + float(self.best[i]), int(self.seq_res[i]), next(tick), 0, node))
        heapq.heapify(heap)
        found: List[Tuple[int, ...]] = []
        while heap and len(found) < k:
            _f, res, _, kind, st = heapq.heappop(heap)
            if kind == 0:  # a node: complete, or expand lazily
                d, pid, s_rem, g, chain = st
                if d == self.depth - 1 or not s_rem:
                    found.append(chain)
                    continue
                q, fq, gq = self._children(d + 1, pid, s_rem, g)
                if q.size:
                    heapq.heappush(heap, (float(fq[0]), res, next(tick), 1, (q, fq, gq, 0, d + 1, s_rem, chain)))
            else:  # a sorted child list: emit its next child, re-queue the rest
                q, fq, gq, j, dn, s_rem, chain = st
                qid = int(q[j])
                node = (dn, qid, s_rem[1:], float(gq[j]), chain + (qid,))
                heapq.heappush(heap, (float(fq[j]), res, next(tick), 0, node))
                if j + 1 < q.size:
                    heapq.heappush(heap, (float(fq[j + 1]), res, next(tick), 1, (q, fq, gq, j + 1, dn, s_rem, chain)))
        return [self._tree(c) for c in found]

    def _tree(self, chain: Tuple[int, ...]) -> Tree:
        full = (0,) * self.start + chain
        parts = [_groups(self.table.rgs[c]) for c in full]
        return Tree.from_index_partitions(self.problem.tasks, parts)


@register_strategy("exact", exact=True, seconds=_seconds, path=_path)
class ExactSearch:
    """Exact optimum within budget by dynamic programming over (depth, partition) states.

    Returns the same trees as exhaustive enumeration (top-k by cost, ties by resource)
    without enumerating trees; practical up to 10 tasks (Bell(10) = 115,975 partitions).

    Args:
        max_entries: refuse problems whose DP tables exceed this many floats (8 bytes each).
    """

    def __init__(self, max_entries: int = 60_000_000) -> None:
        self.max_entries = max_entries

    def run(self, problem: SearchProblem, top_k: int = 1) -> StrategyOutput:
        """Search ``problem``; see :class:`StrategyOutput`."""
        solver = ExactSolver(problem, self.max_entries)
        trees = solver.top_k(problem.limit, top_k)
        return StrategyOutput(trees, enumerated=solver.entries, feasible=None)
