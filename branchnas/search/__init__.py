"""Tree search: the task tree of least clustering cost within a parameter or FLOPs budget.

Pure functions over an affinity tensor ``(D, N, N)``, the task names, and the per-block
cost of the search space (one copy of block d costs ``block_params[d]``; stem and heads are
``fixed_params``). Strategies live in a registry (``list_strategies()``):

- ``exhaustive``: score every tree (the paper's §3.2); up to ~8 tasks × 4 cut points.
- ``exact``: the same optimum by dynamic programming over (depth, partition) states,
  without enumerating trees; 10 tasks × 4 cut points in seconds.
- ``beam``: the paper's beam search for many tasks (top-down from the outermost layer,
  spectral clustering of the tasks per layer, the top-n eligible groupings kept).
- ``beam-split``: our earlier reading (from the input, each group split on its own).
- ``local``: iterated local search over trees with an exact large-neighbourhood move and a
  certified lower bound; near-optimal for many tasks (``auto`` beyond the exact range).
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
    strategy_meta,
    validate_affinity,
)
from .beam import BeamSearch, SplitBeamSearch
from .bound import lower_bound
from .budget import PathPoint, budget_path, format_budget, parse_budget
from .cost import clustering_cost, depth_costs
from .enumerate import ExhaustiveSearch, count_trees, enumerate_trees
from .exact import ExactSearch, ExactSolver
from .greedy import FAGreedySearch
from .local import LocalSearch
from .random_ import RandomSearch

__all__ = [
    "BeamSearch",
    "ExactSearch",
    "ExactSolver",
    "ExhaustiveSearch",
    "FAGreedySearch",
    "LocalSearch",
    "PathPoint",
    "RandomSearch",
    "SplitBeamSearch",
    "ScoredTree",
    "SearchProblem",
    "SearchResult",
    "StrategyOutput",
    "budget_path",
    "choose_strategy",
    "clustering_cost",
    "count_trees",
    "create_strategy",
    "depth_costs",
    "enumerate_trees",
    "format_budget",
    "get_strategy",
    "list_strategies",
    "lower_bound",
    "make_problem",
    "parse_budget",
    "register_strategy",
    "MAX_BEAM_WIDTH",
    "MAX_TOP_K",
    "search",
    "strategy_meta",
    "validate_affinity",
]

logger = logging.getLogger(__name__)

# ``auto``: an exact strategy wherever one is estimated to finish within this many seconds on
# one core (the fastest such), else the near-optimal many-task strategy.
AUTO_SECONDS = 5.0
MAX_BEAM_WIDTH = 1000  # partial trees per depth: beyond this a beam costs minutes on 40 tasks
MAX_TOP_K = 1000


def _check_int(name: str, value: Any, most: Optional[int]) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
    if not ok or (most is not None and value > most):
        bound = f"1..{most}" if most is not None else "a positive integer"
        raise BranchnasError(f"{name} must be {bound}, got {value!r}")


def choose_strategy(num_tasks: int, depth: int, shared_prefix: int = 0,
                    seconds: float = AUTO_SECONDS) -> str:
    """The strategy ``auto`` stands for on a problem of this size (read from the registry's metadata).

    An exact strategy estimated to finish within ``seconds`` on one core (one that also
    counts the feasible trees while it takes under a second, else the fastest), else the
    registered many-task strategy.

    Example:
        >>> choose_strategy(4, 4), choose_strategy(10, 4), choose_strategy(40, 15)
        ('exhaustive', 'exact', 'local')
    """
    timed = []
    for name in list_strategies():
        meta = strategy_meta(name)
        if meta.get("exact") and meta.get("seconds") is not None:
            est = float(meta["seconds"](num_tasks, depth, shared_prefix))
            if est <= seconds:
                # one that also counts the feasible trees is preferred while it takes under a second
                timed.append((not (meta.get("counts_feasible") and est <= 1.0), est, name))
    if timed:
        return min(timed)[2]
    many = [n for n in list_strategies() if strategy_meta(n).get("many_tasks")]
    if not many:
        raise BranchnasError("no many-task strategy is registered; pass a strategy by name")
    return many[0]


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
        strategy: a registered strategy name (see :func:`list_strategies`), or "auto"
            (:func:`choose_strategy`); the result names the strategy actually used.
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
    _check_int("top_k", top_k, MAX_TOP_K)
    _check_int("beam_width", beam_width, MAX_BEAM_WIDTH)
    if max_branches is not None:
        _check_int("max_branches", max_branches, None)
    problem = make_problem(
        affinity, tasks, block_params, budget, fixed_params, block_flops, fixed_flops,
        budget_kind, shared_prefix,
    )
    if strategy == "auto":
        strategy = choose_strategy(problem.num_tasks, problem.depth, problem.shared_prefix)
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
            best = problem.score(problem.all_separate())
            return SearchResult(
                [best], 0, total, strategy, note, problem.budget, problem.budget_kind, best.cost,
            )
    out: StrategyOutput = strat.run(problem, int(top_k))
    scored = [problem.score(t) for t in out.trees]
    logger.info(
        "%s search: %d trees returned, %d candidates scored", strategy, len(scored), out.enumerated
    )
    bound = out.lower_bound
    if bound is None and strategy_meta(strategy).get("exact") and scored:
        bound = scored[0].cost  # the optimum bounds itself
    return SearchResult(
        scored, out.enumerated, out.feasible, strategy, note, problem.budget, problem.budget_kind,
        bound,
    )
