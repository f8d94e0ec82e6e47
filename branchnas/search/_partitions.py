"""All set partitions of ``n`` tasks as arrays, with the refinement structure between them.

A partition is stored as its restricted growth string (RGS): ``rgs[i]`` is the block label
of task ``i``, labels numbered in order of first appearance. That is exactly the canonical
order of :class:`branchnas.tree.Tree` (groups sorted by their first task), so the RGS of a
partition is its identity. Partitions are numbered in lexicographic RGS order; the integer
key ``Σ rgs[i] · n^(n-1-i)`` is increasing in that order, so ids are found by binary search.

Tables are built once per ``n`` (vectorized; Bell(10) = 115975 partitions) and cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Tuple

import numpy as np

__all__ = ["PartitionTable", "partition_table", "subset_max_table"]


@dataclass(frozen=True)
class PartitionTable:
    """Every set partition of ``n`` elements.

    Attributes:
        n: number of elements.
        rgs: (B, n) int8 block label of each element (canonical).
        nblocks: (B,) int16 number of blocks.
        masks: (B, n) int64 bitmask of each block (0 where the label is unused).
        keys: (B,) int64 increasing integer codes of ``rgs``.
        levels: ``levels[m]`` = ids (increasing) of the partitions with m blocks, m = 1..n.
        local: (B,) position of each partition inside its level.
    """

    n: int
    rgs: np.ndarray
    nblocks: np.ndarray
    masks: np.ndarray
    keys: np.ndarray
    levels: Dict[int, np.ndarray]
    local: np.ndarray
    _covers: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    _refinements: List[Tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Number of partitions (the Bell number B_n)."""
        return int(self.rgs.shape[0])

    def ids_of(self, rgs: np.ndarray) -> np.ndarray:
        """Ids of canonical RGS rows (k, n)."""
        return np.searchsorted(self.keys, encode(rgs, self.n))

    def covers(self, m: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Merge relation between level ``m`` (parents) and level ``m+1`` (children).

        Every child is one of its parent's blocks split in two. Returns ``(parent_local,
        child_local, starts)``: pairs sorted by parent (level-local indices), and
        ``starts[p]`` the first pair of parent p (every parent with m < n has a child).
        """
        if m not in self._covers:
            self._covers[m] = _build_covers(self, m)
        return self._covers[m]

    def refinements(self) -> Tuple[np.ndarray, np.ndarray]:
        """CSR of the refinement order: ``idx[ptr[p]:ptr[p+1]]`` = ids of all Q finer or equal to p."""
        if not self._refinements:
            self._refinements.append(_build_refinements(self))
        return self._refinements[0]


def encode(rgs: np.ndarray, n: int) -> np.ndarray:
    """Integer key of RGS rows (..., n) (monotone in lexicographic order)."""
    key = np.zeros(rgs.shape[:-1], dtype=np.int64)
    for i in range(n):
        key *= n
        key += rgs[..., i]
    return key


@lru_cache(maxsize=4)
def partition_table(n: int) -> PartitionTable:
    """All set partitions of ``n`` elements (cached per n)."""
    rgs = np.zeros((1, 1), dtype=np.int8)
    top = np.zeros(1, dtype=np.int16)  # max label so far
    for _ in range(1, n):
        counts = top.astype(np.int64) + 2
        parent = np.repeat(np.arange(rgs.shape[0]), counts)
        starts = np.cumsum(counts) - counts
        label = np.arange(parent.size) - np.repeat(starts, counts)
        rgs = np.concatenate([rgs[parent], label[:, None].astype(np.int8)], axis=1)
        top = np.maximum(top[parent], label.astype(np.int16))
    size = rgs.shape[0]
    nblocks = (top + 1).astype(np.int16)
    masks = np.zeros((size, n), dtype=np.int64)
    rows = np.arange(size)
    for i in range(n):
        masks[rows, rgs[:, i]] |= np.int64(1) << i
    keys = encode(rgs, n)
    levels = {m: np.flatnonzero(nblocks == m) for m in range(1, n + 1)}
    local = np.empty(size, dtype=np.int64)
    for ids in levels.values():
        local[ids] = np.arange(ids.size)
    for a in (rgs, nblocks, masks, keys, local, *levels.values()):
        a.setflags(write=False)
    return PartitionTable(n, rgs, nblocks, masks, keys, levels, local)


def _build_covers(table: PartitionTable, m: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    children = table.levels[m + 1]
    child_rgs = table.rgs[children].astype(np.int16)
    parents, kids = [], []
    for b in range(1, m + 1):
        for a in range(b):
            merged = child_rgs.copy()
            merged[merged == b] = a
            merged[merged > b] -= 1
            parents.append(table.local[table.ids_of(merged)])
            kids.append(np.arange(children.size))
    parent = np.concatenate(parents)
    kid = np.concatenate(kids)
    order = np.argsort(parent, kind="stable")
    parent, kid = parent[order], kid[order]
    starts = np.searchsorted(parent, np.arange(table.levels[m].size))
    return parent, kid, starts


def _build_refinements(table: PartitionTable) -> Tuple[np.ndarray, np.ndarray]:
    # For a partition Q with k blocks, its coarsenings are rgs_k[r][Q] over every partition r of
    # Q's k blocks; composing keeps the labels canonical (blocks of Q appear in order).
    fine, coarse = [], []
    for k in range(1, table.n + 1):
        qs = table.levels[k]
        sub_t = partition_table(k).rgs.T.astype(np.int64)  # (k, B_k)
        key = np.zeros((qs.size, sub_t.shape[1]), dtype=np.int64)  # (S, B_k)
        for i in range(table.n):  # element i of every composed partition, contiguous
            key *= table.n
            key += sub_t[table.rgs[qs, i]]
        ids = np.searchsorted(table.keys, key).astype(np.int32)
        del key
        coarse.append(ids.ravel())
        fine.append(np.repeat(qs.astype(np.int32), ids.shape[1]))
    coarse_a = np.concatenate(coarse)
    del coarse
    fine_a = np.concatenate(fine)
    del fine
    idx = fine_a[np.argsort(coarse_a)]  # order inside a list does not matter
    ptr = np.zeros(table.size + 1, dtype=np.int64)
    np.cumsum(np.bincount(coarse_a, minlength=table.size), out=ptr[1:])
    return ptr, idx


def subset_max_table(dis: np.ndarray) -> np.ndarray:
    """Max pairwise dissimilarity of every subset of tasks, per location.

    Args:
        dis: (D, n, n) dissimilarity.

    Returns:
        (D, 2**n) array; entry ``[d, mask]`` is ``max_{i<j in mask} dis[d, i, j]``, 0 for
        subsets of fewer than two tasks.
    """
    depth, n, _ = dis.shape
    out = np.zeros((depth, 1 << n))
    for h in range(1, n):
        lo = 1 << h
        # row_max[rest] = max_{j in rest} dis[:, h, j] for every rest ⊆ {0..h-1}, rest ≠ ∅
        row_max = np.full((depth, lo), -np.inf)
        for j in range(h):
            b = 1 << j
            row_max[:, b:2 * b] = np.maximum(row_max[:, :b], dis[:, h, j][:, None])
        block = np.maximum(out[:, :lo], row_max)
        block[:, 0] = 0.0  # {h} alone
        out[:, lo:2 * lo] = block
    return out
