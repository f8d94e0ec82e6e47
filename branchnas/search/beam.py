"""Beam searches for many tasks (the paper's §3.2, used for CelebA's 40 attributes).

:class:`BeamSearch` (``beam``) is the paper's procedure as we read §3.2 ("An exhaustive
search becomes intractable ..."):

    "derive the tree in a top-down manner, starting at the most outer layer. At every step
    l, we can perform spectral clustering for each possible number of groups m where
    1 ≤ m ≤ b_{l+1}, with b_{l+1} the number of branches at layer l + 1. Before proceeding
    to the next step, we select the top-n task groupings with minimal cost. [...] When we
    proceed to cluster the tasks at the next layer, we select the top-n groupings from the
    ones that are still eligible to be constructed."

So the tree is derived from the outermost cut point D (next to the task heads, where
b_{D+1} = N: one decoder per task) towards the input. At step l the *tasks* are clustered
by spectral clustering on location l's affinity into m = 1 .. b_{l+1} groups; a grouping is
kept only if it is "still eligible to be constructed". Our reading of that phrase (the
paper does not spell it out): (1) the grouping is a coarsening of the one chosen for layer
l+1, so the result is a tree (every branch of layer l+1 lies inside one node of layer l),
and (2) the budget can still be met (every shallower layer needs at least one copy of its
block). Of all eligible (partial tree, grouping) pairs the n with the least clustering cost
summed over the layers chosen so far are kept (the paper's top-n; n = 10 on CelebA). Ties
go to the cheaper tree. ``m = 1`` is always eligible, so the beam never empties.

Other details that are our reading: spectral clustering is scikit-learn's
``SpectralClustering(affinity="precomputed")`` on the affinity with negatives clipped to 0
and a unit diagonal, labels assigned by "cluster_qr" (deterministic); a clustering that
leaves a cluster empty gives fewer than m groups and is kept as such. Since the tasks are
clustered whatever the partial tree, the D × N clusterings are computed once and shared by
the whole beam.

:class:`SplitBeamSearch` (``beam-split``) is our earlier reading, kept for comparison in
``bench/bench_search.py``: it grows the tree from the input and splits every group on its
own (a k-best knapsack over groups), keeping the n least-cost partial trees per depth.
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

__all__ = ["BeamSearch", "SplitBeamSearch", "spectral_split"]

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


def _check_width(beam_width: object) -> None:
    if not isinstance(beam_width, (int, np.integer)) or isinstance(beam_width, bool) or beam_width < 1:
        raise BranchnasError(f"beam_width must be a positive integer, got {beam_width!r}")


@register_strategy("beam", exact=False, many_tasks=False, options=("beam_width", "seed"))
class BeamSearch:
    """The paper's beam search: top-down from the outermost layer, spectral clustering per layer.

    Args:
        beam_width: groupings kept after each layer (the paper's n; 10 on CelebA).
        seed: random state of the clustering.
        assign_labels: scikit-learn's label assignment ("cluster_qr", "kmeans",
            "discretize"); "cluster_qr" is deterministic and fast.

    Returns up to ``max(beam_width, top_k)`` trees, best first.
    """

    def __init__(self, beam_width: int = 10, seed: int = 0, assign_labels: str = "cluster_qr") -> None:
        self.beam_width = beam_width
        self.seed = seed
        self.assign_labels = assign_labels

    def clusterings(self, problem: SearchProblem, depth: int, m_max: int) -> List[np.ndarray]:
        """Distinct spectral clusterings of all tasks at ``depth`` for m = 1..m_max, as label arrays."""
        n = problem.num_tasks
        out: List[np.ndarray] = []
        seen = set()
        for m in range(1, min(m_max, n) + 1):
            part = spectral_split(problem.affinity[depth], tuple(range(n)), m, self.seed, self.assign_labels)
            lab = np.empty(n, dtype=np.int64)
            for g, group in enumerate(part):
                lab[list(group)] = g
            if lab.tobytes() not in seen:
                seen.add(lab.tobytes())
                out.append(lab)
        return out

    def run(self, problem: SearchProblem, top_k: int = 1) -> StrategyOutput:
        """Search ``problem``; see :class:`StrategyOutput`."""
        _check_width(self.beam_width)
        n, depth, t = problem.num_tasks, problem.depth, problem.shared_prefix
        r = [int(x) for x in problem.resource]
        reserve = [sum(r[:d]) for d in range(depth + 1)]  # one copy of each shallower block
        limit = problem.limit
        # beam entries: (cost so far, resource so far, labels per chosen layer (deepest last))
        beam: List[Tuple[float, int, Tuple[bytes, ...], List[np.ndarray]]] = [
            (0.0, problem.fixed_resource, (), [])]
        scored = 0
        for d in range(depth - 1, -1, -1):
            width = self.beam_width if d > 0 else max(self.beam_width, top_k)
            # b_{l+1}: branches of the layer below (N below the outermost one: a decoder per task)
            m_max = 1 if d < t else max(int(e[3][0].max()) + 1 if e[3] else n for e in beam)
            options = []
            for lab in self.clusterings(problem, d, m_max):
                k = int(lab.max()) + 1
                local = sum(group_cost(problem.dis[d], tuple(np.flatnonzero(lab == g))) for g in range(k)) / k
                options.append((lab, k, local))
            pool: Dict[Tuple[bytes, ...], Tuple[float, int, List[np.ndarray]]] = {}
            for cost, res, key, labs in beam:
                below = labs[0] if labs else None
                b_next = n if below is None else int(below.max()) + 1
                for lab, k, local in options:
                    if k > b_next or res + k * r[d] + reserve[d] > limit:
                        continue
                    if below is not None and not _coarsens(lab, below, b_next):
                        continue  # not constructible: a branch of layer d+1 would span two nodes
                    scored += 1
                    nkey = (lab.tobytes(),) + key
                    cand = (cost + local, res + k * r[d], [lab] + labs)
                    if nkey not in pool or cand[:2] < pool[nkey][:2]:
                        pool[nkey] = cand
            ranked = sorted(pool.items(), key=lambda kv: (kv[1][0], kv[1][1], kv[0]))[:width]
            beam = [(c, rs, key, labs) for key, (c, rs, labs) in ranked]
            logger.debug("beam layer %d: %d eligible groupings, kept %d", d + 1, len(pool), len(beam))
        trees = [Tree.from_index_partitions(problem.tasks, [_groups_of(lab) for lab in labs])
                 for _, _, _, labs in beam[:top_k]]
        return StrategyOutput(trees, enumerated=scored, feasible=None)


def _coarsens(coarse: np.ndarray, fine: np.ndarray, fine_groups: int) -> bool:
    """Whether every group of ``fine`` (labels) lies inside one group of ``coarse``."""
    first = np.full(fine_groups, -1, dtype=np.int64)
    first[fine[::-1]] = coarse[::-1]  # some member's coarse label per fine group
    return bool(np.all(first[fine] == coarse))


def _groups_of(lab: np.ndarray) -> List[List[int]]:
    return [np.flatnonzero(lab == g).tolist() for g in range(int(lab.max()) + 1)]


@register_strategy("beam-split", exact=False, many_tasks=False, options=("beam_width", "max_branches", "seed"))
class SplitBeamSearch:
    """Beam search from the input, splitting each group on its own (our first reading of §3.2).

    Kept for comparison with :class:`BeamSearch` (the paper's reading) in
    ``bench/bench_search.py``: it grows the tree from the input, so spectral splits give
    balanced groups where the optimum peels off outlier tasks.

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
