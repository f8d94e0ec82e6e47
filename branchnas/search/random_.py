"""Random grouping at a given budget: the "no affinity" baseline.

Each draw builds a refining chain top-down: at depth d the number of groups is drawn
uniformly among the counts that can still meet the budget (every deeper depth needs at
least as many groups), the extra groups are handed to random groups, and every group is
split into its share of non-empty subgroups at random. Draws are repeated (seeded) until
``top_k`` distinct trees within the budget are found.
"""

from __future__ import annotations

import logging
from typing import List, Set

import numpy as np

from ..tree import Tree
from ._common import SearchProblem, StrategyOutput, register_strategy
from .enumerate import count_trees

__all__ = ["RandomSearch"]

logger = logging.getLogger(__name__)


@register_strategy("random", exact=False, ranked=False, options=("seed",))
class RandomSearch:
    """Random refining partitions within the budget.

    Args:
        seed: seed of the random generator (same seed, same trees).
        max_draws: give up after this many draws (returns what was found).
        patience: also give up after this many draws in a row that add no new tree
            (when fewer than ``top_k`` trees fit the budget).

    Returns trees in draw order (not ranked by cost).
    """

    def __init__(self, seed: int = 0, max_draws: int = 10_000, patience: int = 200) -> None:
        self.seed = seed
        self.max_draws = max_draws
        self.patience = patience

    def run(self, problem: SearchProblem, top_k: int = 1) -> StrategyOutput:
        """Search ``problem``; see :class:`StrategyOutput`."""
        rng = np.random.default_rng(self.seed)
        want = min(top_k, count_trees(problem.num_tasks, problem.depth, problem.shared_prefix))
        found: List[Tree] = []
        seen: Set[Tree] = set()
        draws = misses = 0
        while len(found) < want and draws < self.max_draws and misses < self.patience:
            tree = self.draw(problem, rng)
            draws += 1
            misses += 1
            if problem.resource_of(tree.group_counts) <= problem.limit and tree not in seen:
                seen.add(tree)
                found.append(tree)
                misses = 0
        logger.debug("random: %d draws for %d trees", draws, len(found))
        return StrategyOutput(found, enumerated=draws, feasible=None)

    @staticmethod
    def draw(problem: SearchProblem, rng: np.random.Generator) -> Tree:
        """One random tree within the problem's budget."""
        n, depth, t = problem.num_tasks, problem.depth, problem.shared_prefix
        r = [int(x) for x in problem.resource]
        suffix = [sum(r[d:]) for d in range(depth)]
        used = problem.fixed_resource + sum(r[:t])
        last: List[List[int]] = [list(range(n))]
        parts = [last] * t
        for d in range(t, depth):
            k = len(last)
            kmax = n if suffix[d] == 0 else min(n, (problem.limit - used) // suffix[d])
            target = int(rng.integers(k, max(k, kmax) + 1))
            counts = [1] * k
            room = [len(g) - 1 for g in last]
            for _ in range(target - k):
                open_ = [i for i in range(k) if room[i] > 0]
                i = open_[int(rng.integers(len(open_)))]
                counts[i] += 1
                room[i] -= 1
            nxt: List[List[int]] = []
            for g, m in zip(last, counts):
                order = rng.permutation(g).tolist()
                subs = [[x] for x in order[:m]]
                for x in order[m:]:
                    subs[int(rng.integers(m))].append(x)
                nxt.extend(subs)
            used += target * r[d]
            parts.append(nxt)
            last = nxt
        return Tree.from_index_partitions(problem.tasks, parts)
