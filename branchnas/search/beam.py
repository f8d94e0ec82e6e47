"""Beam search for many tasks (the paper's §3.2, used for CelebA's 40 attributes).

The tree is built top-down, one depth at a time. At depth d every group of a partial tree
is split by spectral clustering on that location's affinity (negatives clipped to 0,
scikit-learn ``SpectralClustering(affinity="precomputed")``) into m = 1..b subgroups; the
splits of all groups are combined (a k-best knapsack over groups gives, for every total
group count, the best combinations), and of all resulting partial trees only the ``n``
with the least clustering cost so far are kept (the paper's top-n, n = 10) — among those
that can still meet the budget with the remaining depths (each deeper depth needs at least
as many groups as this one).
"""

from __future__ import annotations

import heapq
import logging
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import BranchnasError
from ..tree import Tree
from ._common import SearchProblem, StrategyOutput, register_strategy
from .cost import group_cost

__all__ = ["BeamSearch", "spectral_split"]

logger = logging.getLogger(__name__)

Group = Tuple[int, ...]
Partition = Tuple[Group, ...]


def spectral_split(
    affinity: np.ndarray, group: Group, m: int, seed: int = 0, assign_labels: str = "cluster_qr"
) -> Partition:
    """Split ``group`` into ``m`` subgroups by spectral clustering on ``affinity`` (N, N).

    Negative affinities are clipped to 0 and the diagonal set to 1 (every task is
    connected to itself, so the graph Laplacian is defined). ``m = 1`` and ``m = |group|``
    need no clustering.

    Returns:
        The subgroups in canonical order (by first task); fewer than ``m`` if the
        clustering leaves a cluster empty.
    """
    from sklearn.cluster import SpectralClustering

    if m <= 1:
        return (tuple(group),)
    if m >= len(group):
        return tuple((i,) for i in group)
    idx = np.asarray(group)
    w = np.clip(affinity[np.ix_(idx, idx)], 0.0, None)
    np.fill_diagonal(w, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = SpectralClustering(
            n_clusters=m, affinity="precomputed", assign_labels=assign_labels, random_state=seed
        ).fit_predict(w)
    subs: Dict[int, List[int]] = {}
    for task, lab in zip(group, labels.tolist()):
        subs.setdefault(lab, []).append(task)
    return tuple(sorted((tuple(sorted(s)) for s in subs.values()), key=lambda g: g[0]))


@register_strategy("beam")
class BeamSearch:
    """Top-down beam search with spectral clustering (the paper's §3.2 for many tasks).

    Args:
        beam_width: partial trees kept after each depth (the paper's n; 10 on CelebA).
        max_branches: most subgroups one group may split into at one depth (the paper's
            b); None allows up to the group's size (still capped by the budget).
        seed: random state of the clustering.
        assign_labels: scikit-learn's label assignment ("cluster_qr", "kmeans",
            "discretize"); "cluster_qr" is deterministic and fast.
    """

    def __init__(
        self,
        beam_width: int = 10,
        max_branches: Optional[int] = None,
        seed: int = 0,
        assign_labels: str = "cluster_qr",
    ) -> None:
        self.beam_width = beam_width
        self.max_branches = max_branches
        self.seed = seed
        self.assign_labels = assign_labels

    def run(self, problem: SearchProblem, top_k: int = 1) -> StrategyOutput:
        """Search ``problem``; returns up to ``max(beam_width, top_k)`` trees, best first."""
        if not isinstance(self.beam_width, (int, np.integer)) or self.beam_width < 1:
            raise BranchnasError(f"beam_width must be a positive integer, got {self.beam_width!r}")
        if self.max_branches is not None and (
            not isinstance(self.max_branches, (int, np.integer)) or self.max_branches < 1
        ):
            raise BranchnasError(
                f"max_branches must be a positive integer or None, got {self.max_branches!r}"
            )
        n, depth, t = problem.num_tasks, problem.depth, problem.shared_prefix
        r = [int(x) for x in problem.resource]
        suffix = [sum(r[d:]) for d in range(depth)] + [0]
        limit = problem.limit
        root: Partition = (tuple(range(n)),)
        cost0 = sum(group_cost(problem.dis[d], root[0]) for d in range(t))
        res0 = problem.fixed_resource + sum(r[:t])
        beam: List[Tuple[float, int, Tuple[Partition, ...]]] = [(cost0, res0, (root,) * t)]
        self._cache: Dict[Tuple[int, Group, int], Tuple[Partition, float]] = {}
        scored = 0
        for d in range(t, depth):
            width = self.beam_width if d < depth - 1 else max(self.beam_width, top_k)
            pool: Dict[Tuple[Partition, ...], Tuple[float, int]] = {}
            for cost, res, chain in beam:
                last = chain[-1] if chain else root
                kmax = n if suffix[d] == 0 else min(n, (limit - res) // suffix[d])
                for k, local, part in self._children(problem, d, last, kmax, width):
                    key = chain + (part,)
                    cand = (cost + local / k, res + k * r[d])
                    scored += 1
                    if key not in pool or cand < pool[key]:
                        pool[key] = cand
            ranked = sorted(pool.items(), key=lambda kv: (kv[1][0], kv[1][1], kv[0]))[:width]
            beam = [(c, rs, key) for key, (c, rs) in ranked]
            logger.debug("beam depth %d: %d candidates, kept %d", d + 1, len(pool), len(beam))
        trees = [Tree.from_index_partitions(problem.tasks, chain) for _, _, chain in beam[:top_k]]
        return StrategyOutput(trees, enumerated=scored, feasible=None)

    def _options(
        self, problem: SearchProblem, d: int, group: Group, cap: int
    ) -> List[Tuple[int, float, Partition]]:
        top = len(group) if self.max_branches is None else min(len(group), self.max_branches)
        out: Dict[int, Tuple[int, float, Partition]] = {}
        for m in range(1, min(top, cap) + 1):
            key = (d, group, m)
            if key not in self._cache:
                part = spectral_split(problem.affinity[d], group, m, self.seed, self.assign_labels)
                local = sum(group_cost(problem.dis[d], g) for g in part)
                self._cache[key] = (part, local)
            part, local = self._cache[key]
            if len(part) not in out:
                out[len(part)] = (len(part), local, part)
        return list(out.values())

    def _children(
        self, problem: SearchProblem, d: int, last: Partition, kmax: int, width: int
    ) -> List[Tuple[int, float, Partition]]:
        """Best ways to split every group of ``last``: (total groups k, Σ group costs, partition)."""
        groups = len(last)
        if kmax < groups:
            return []
        # k-best knapsack over groups: total count -> best (Σ local, choices)
        table: Dict[int, List[Tuple[float, Tuple[Partition, ...]]]] = {0: [(0.0, ())]}
        for gi, group in enumerate(last):
            rest = groups - gi - 1
            opts = self._options(problem, d, group, kmax - groups + 1)
            new: Dict[int, List[Tuple[float, Tuple[Partition, ...]]]] = {}
            for tot, lst in table.items():
                for c, local, part in opts:
                    nt = tot + c
                    if nt + rest > kmax:
                        continue
                    bucket = new.setdefault(nt, [])
                    bucket.extend((s + local, ch + (part,)) for s, ch in lst)
            table = {k: heapq.nsmallest(width, v, key=lambda x: x[0]) for k, v in new.items()}
        out = []
        for k, lst in table.items():
            for total, choice in lst:
                part = tuple(sorted((g for p in choice for g in p), key=lambda g: g[0]))
                out.append((k, total, part))
        return out
