"""Budgets: parsing "12M"-style strings, and the budget path (best tree per budget, Fig. 2b).

Example:
    >>> parse_budget("12M"), parse_budget("1.5G"), parse_budget("3e6"), parse_budget(250_000)
    (12000000, 1500000000, 3000000, 250000)
    >>> format_budget(12_345_678)
    '12.3M'
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import BranchnasError
from ._common import ScoredTree, SearchProblem, make_problem

__all__ = ["PathPoint", "budget_path", "format_budget", "parse_budget"]

logger = logging.getLogger(__name__)

_MAX_BUDGET = 2**63  # counts are int64 everywhere downstream
_SUFFIX = {"": 0, "k": 3, "m": 6, "g": 9, "b": 9, "t": 12}
_PATTERN = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?\s*([kKmMgGbBtT]?)")


def parse_budget(value: Union[str, float]) -> int:
    """Parse a budget: an integer, or a string like "12M", "1.5G", "250k", "3e6", "12_000_000".

    Suffixes: k = 1e3, M = 1e6, G or B = 1e9, T = 1e12 (case-insensitive). Fractions are
    rounded down (a budget is a ceiling).

    Raises:
        BranchnasError: for anything else, or a negative budget.
    """
    if isinstance(value, bool):
        raise BranchnasError(f"invalid budget {value!r}; write a number such as 12M, 1.5G or 3e6")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise BranchnasError(f"budget must not be negative, got {value}")
        if value >= _MAX_BUDGET:
            raise BranchnasError(f"budget {value} is too large; at most {_MAX_BUDGET - 1:.3g} (a 64-bit count)")
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value) or value < 0:
            raise BranchnasError(f"budget must be a finite non-negative number, got {value}")
        if value >= _MAX_BUDGET:
            raise BranchnasError(f"budget {value} is too large; at most {_MAX_BUDGET - 1:.3g} (a 64-bit count)")
        return int(value)
    text = str(value).strip().replace("_", "").replace(",", "")
    m = _PATTERN.fullmatch(text)
    if m is None:
        raise BranchnasError(
            f"invalid budget {value!r}; write a number with an optional k/M/G suffix, "
            "e.g. 12M, 1.5G or 3e6"
        )
    try:
        number = Decimal(m.group(1)).scaleb(int(m.group(2) or 0) + _SUFFIX[m.group(3).lower()])
    except InvalidOperation:
        raise BranchnasError(f"invalid budget {value!r}; e.g. 12M, 1.5G or 3e6") from None
    if number >= _MAX_BUDGET:
        raise BranchnasError(f"budget {value!r} is too large; at most {_MAX_BUDGET - 1:.3g} (a 64-bit count)")
    return int(number)


def format_budget(value: int) -> str:
    """A short human form of a count: 950, 12.3k, 12.35M, 1.50G."""
    v = int(value)
    for exp, suffix in ((12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(v) >= 10**exp:
            return f"{v / 10**exp:.{max(0, 3 - len(str(abs(v) // 10**exp)))}f}{suffix}"
    return str(v)


@dataclass(frozen=True)
class PathPoint:
    """One point of a budget path: the budget and the best tree within it."""

    budget: int
    best: ScoredTree


def _path_from_table(
    problem: SearchProblem,
    table: Sequence[Tuple[int, float, Any]],
    budgets: Optional[Sequence[int]],
    resolve: Any,
) -> List[PathPoint]:
    """Running minimum over (resource, cost, key) rows; ``resolve(key) -> Tree``."""
    rows = sorted(table, key=lambda x: (x[0], x[1]))
    steps: List[Tuple[int, float, Any]] = []
    for res, cost, key in rows:
        if not steps or cost < steps[-1][1]:
            steps.append((res, cost, key))
    if budgets is None:
        return [PathPoint(res, problem.score(resolve(key))) for res, _, key in steps]
    out: List[PathPoint] = []
    cache: Dict[int, ScoredTree] = {}
    for b in budgets:
        i = int(np.searchsorted([s[0] for s in steps], b, side="right")) - 1
        if i not in cache:
            cache[i] = problem.score(resolve(steps[i][2]))
        out.append(PathPoint(int(b), cache[i]))
    return out


def budget_path(
    affinity: Any,
    tasks: Sequence[str],
    block_params: Sequence[int],
    budgets: Optional[Sequence[Union[int, str]]] = None,
    strategy: str = "exact",
    fixed_params: int = 0,
    block_flops: Optional[Sequence[int]] = None,
    fixed_flops: int = 0,
    budget_kind: str = "params",
    shared_prefix: int = 0,
    num_budgets: int = 20,
    **strategy_options: Any,
) -> List[PathPoint]:
    """The best tree as the budget grows (the path drawn in the paper's Fig. 2b).

    Args:
        affinity, tasks, block_params, fixed_params, block_flops, fixed_flops, budget_kind,
            shared_prefix: as for :func:`branchnas.search.search`.
        budgets: the budgets to evaluate, increasing. None: for strategies that compute
            the whole path in one pass (metadata ``path``: exact, exhaustive), every budget
            at which the optimum changes (one point per change, at the resource of the new
            tree, i.e. the (resource, cost) Pareto frontier); for other strategies
            ``num_budgets`` budgets evenly spaced from the fully shared to the all-separate tree.
        strategy: a registered strategy; those with a ``path`` compute the whole path in
            one pass, the others run once per budget.
        num_budgets: see ``budgets``.
        **strategy_options: passed to :func:`branchnas.search.search` (e.g. beam_width).

    Returns:
        One :class:`PathPoint` per budget, in increasing budget order.

    Raises:
        BranchnasError: for invalid input, or a budget below the cheapest tree.
    """
    problem = make_problem(
        affinity, tasks, block_params, None, fixed_params, block_flops, fixed_flops,
        budget_kind, shared_prefix,
    )
    blist = None if budgets is None else sorted(parse_budget(b) for b in budgets)
    if blist is not None and blist and blist[0] < problem.min_resource:
        raise BranchnasError(
            f"budget {blist[0]} is below the cheapest tree (fully shared, "
            f"{problem.min_resource} {problem.unit()}); the smallest feasible budget is "
            f"{problem.min_resource}"
        )
    from ._common import strategy_meta

    path = strategy_meta(strategy).get("path")
    if path is not None:  # every achievable resource and its least cost, in one pass
        rows, resolve = path(problem)
        return _path_from_table(problem, rows, blist, resolve)
    from . import search

    if blist is None:
        lo, hi = problem.min_resource, problem.max_resource
        blist = sorted({round(x) for x in np.linspace(lo, hi, max(2, num_budgets))})
    points = []
    for b in blist:
        res = search(
            affinity, tasks, block_params, b, strategy=strategy, fixed_params=fixed_params,
            block_flops=block_flops, fixed_flops=fixed_flops, budget_kind=budget_kind,
            shared_prefix=shared_prefix, **strategy_options,
        )
        points.append(PathPoint(b, res.best))
    return points
