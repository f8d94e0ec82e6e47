"""Tree search: the task tree of least clustering cost within a parameter or FLOPs budget.

Pure functions over an affinity tensor ``(D, N, N)``, the task names, and the per-block
cost of the search space (one copy of block d costs ``block_params[d]``; stem and heads are
``fixed_params``). Strategies live in a registry (``list_strategies()``):

- ``exhaustive``: score every tree (the paper's §3.2); up to ~8 tasks × 4 cut points.
- ``exact``: the same optimum by dynamic programming over (depth, partition) states,
  without enumerating trees; 10 tasks × 4 cut points in seconds.
- ``beam``: the paper's beam search for many tasks (spectral clustering top-down).
- ``fa``: Lu et al. (2017)'s greedy layer-by-layer grouping (the paper's FA baseline).
- ``random``: random refining partitions within the budget (seeded).

Example:
    >>> import numpy as np
    >>> A = np.ones((2, 3, 3)); A[:, 0, 2] = A[:, 2, 0] = 0.1; A[:, 1, 2] = A[:, 2, 1] = 0.5
    >>> r = search(A, ["a", "b", "c"], [10, 10], budget=30, strategy="exact")
    >>> r.best.tree.groupings, r.best.params
    (((('a', 'b', 'c'),), (('a', 'b'), ('c',))), 30)
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..errors import BranchnasError
from ._common import (
    ScoredTree,
    SearchProblem,
    SearchResult,
    StrategyOutput,
    create_strategy,
    get_strategy,
    list_strategies,
    make_problem,
    register_strategy,
    validate_affinity,
)
from .beam import BeamSearch
from .budget import PathPoint, budget_path, format_budget, parse_budget
from .cost import clustering_cost, depth_costs
from .enumerate import ExhaustiveSearch, count_trees, enumerate_trees
from .exact import ExactSearch, ExactSolver
from .greedy import FAGreedySearch
from .random_ import RandomSearch

__all__ = [
    "BeamSearch",
    "ExactSearch",
    "ExactSolver",
    "ExhaustiveSearch",
    "FAGreedySearch",
    "PathPoint",
    "RandomSearch",
    "ScoredTree",
    "SearchProblem",
    "SearchResult",
    "StrategyOutput",
    "budget_path",
    "clustering_cost",
    "count_trees",
    "create_strategy",
    "depth_costs",
    "enumerate_trees",
    "format_budget",
    "get_strategy",
    "list_strategies",
    "make_problem",
    "parse_budget",
    "register_strategy",
    "search",
    "validate_affinity",
]

logger = logging.getLogger(__name__)


def search(
    affinity: Any,
    tasks: Sequence[str],
    block_params: Sequence[int],
    budget: Union[int, str, None] = None,
    strategy: str = "exact",
    top_k: int = 1,
    fixed_params: int = 0,
    block_flops: Optional[Sequence[int]] = None,
    fixed_flops: int = 0,
    budget_kind: str = "params",
    shared_prefix: int = 0,
    beam_width: int = 10,
    max_branches: Optional[int] = None,
    seed: int = 0,
) -> SearchResult:
    """Find the least-cost trees within a budget.

    Args:
        affinity: (D, N, N) task affinity, symmetric and finite; rows in ``tasks`` order.
        tasks: the N task names.
        block_params: parameters of one copy of each of the D blocks.
        budget: the limit on params (or FLOPs), an int or a string such as "12M";
            None searches without a limit.
        strategy: a registered strategy name (see :func:`list_strategies`).
        top_k: how many trees to return (best first).
        fixed_params: parameters paid once whatever the tree (stem, heads).
        block_flops: FLOPs of one copy of each block (needed for a FLOPs budget; reported
            otherwise when given).
        fixed_flops: FLOPs paid once.
        budget_kind: "params" or "flops".
        shared_prefix: force the first k blocks to be shared by all tasks.
        beam_width: beam search: partial trees kept per depth (the paper's n = 10).
        max_branches: beam search: most subgroups a group may split into per depth
            (the paper's b; None = the group's size).
        seed: random and beam search seed.

    Returns:
        A :class:`SearchResult`. A budget at or above the all-separate tree returns that
        tree alone, with a ``note`` saying so.

    Raises:
        BranchnasError: for malformed input (affinity shape, symmetry, finiteness, costs),
            an unknown strategy, or a budget below the cheapest (fully shared) tree — the
            message states the smallest feasible budget.
    """
    if isinstance(budget, str):
        budget = parse_budget(budget)
    if not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise BranchnasError(f"top_k must be a positive integer, got {top_k!r}")
    problem = make_problem(
        affinity, tasks, block_params, budget, fixed_params, block_flops, fixed_flops,
        budget_kind, shared_prefix,
    )
    cls = get_strategy(strategy)
    wanted = {"beam_width": beam_width, "max_branches": max_branches, "seed": seed}
    accepted = inspect.signature(cls).parameters
    strat = create_strategy(strategy, **{k: v for k, v in wanted.items() if k in accepted})
    note = None
    unit = problem.unit()
    if problem.budget is not None:
        if problem.budget < problem.min_resource:
            raise BranchnasError(
                f"budget {format_budget(problem.budget)} {unit} is below the cheapest tree "
                f"(fully shared, {format_budget(problem.min_resource)} {unit}); the smallest "
                f"feasible budget is {problem.min_resource}"
            )
        if problem.budget >= problem.max_resource:
            note = (
                f"budget {format_budget(problem.budget)} {unit} is at or above the all-separate "
                f"tree ({format_budget(problem.max_resource)} {unit}); every tree fits, so the "
                "all-separate tree is returned"
            )
            logger.info(note)
            total = count_trees(problem.num_tasks, problem.depth, problem.shared_prefix)
            return SearchResult(
                [problem.score(problem.all_separate())], 0, total, strategy, note,
                problem.budget, problem.budget_kind,
            )
    out: StrategyOutput = strat.run(problem, int(top_k))
    scored = [problem.score(t) for t in out.trees]
    logger.info(
        "%s search: %d trees returned, %d candidates scored", strategy, len(scored), out.enumerated
    )
    return SearchResult(
        scored, out.enumerated, out.feasible, strategy, note, problem.budget, problem.budget_kind
    )
