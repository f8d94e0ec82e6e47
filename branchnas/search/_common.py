"""Shared types of the search package: the problem, results, validation, the registry."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._registry import Registry
from ..errors import BranchnasError
from ..tree import Tree

__all__ = [
    "ScoredTree",
    "SearchProblem",
    "SearchResult",
    "StrategyOutput",
    "create_strategy",
    "get_strategy",
    "list_strategies",
    "make_problem",
    "register_strategy",
    "strategy_meta",
]

logger = logging.getLogger(__name__)

BUDGET_KINDS = ("params", "flops")


@dataclass(frozen=True)
class ScoredTree:
    """A tree with its clustering cost, parameter count and FLOPs (None if unknown)."""

    tree: Tree
    cost: float
    params: int
    flops: Optional[int] = None


@dataclass(frozen=True)
class SearchResult:
    """What a search returns.

    Attributes:
        trees: the best trees found, best first (random search: in draw order).
        enumerated: how many candidates the strategy scored: whole trees for exhaustive,
            random and fa, (depth, partition, group-count) states for exact, partial trees
            for beam; 0 when no search was needed.
        feasible: how many trees of the space fit the budget, when the strategy knows it.
        strategy: the strategy's registry name.
        note: a one-line remark for the user (e.g. the budget exceeds every tree), else None.
        budget: the budget searched under (None: unconstrained).
        budget_kind: "params" or "flops".
        lower_bound: a certified lower bound on the least cost within the budget (the
            optimum's cost for exact strategies), None when the strategy gives none.
    """

    trees: List[ScoredTree]
    enumerated: int
    feasible: Optional[int]
    strategy: str
    note: Optional[str] = None
    budget: Optional[int] = None
    budget_kind: str = "params"
    lower_bound: Optional[float] = None

    @property
    def gap(self) -> Optional[float]:
        """Certified relative gap ``(cost - lower_bound) / cost`` of the best tree (0 when optimal)."""
        if self.lower_bound is None or not self.trees:
            return None
        c = self.best.cost
        return 0.0 if c <= self.lower_bound + 1e-12 else (c - self.lower_bound) / c

    @property
    def best(self) -> ScoredTree:
        """The first (best) tree."""
        return self.trees[0]


@dataclass(frozen=True)
class StrategyOutput:
    """A strategy's raw answer, before scoring: trees best first and counters."""

    trees: List[Tree]
    enumerated: int
    feasible: Optional[int] = None
    lower_bound: Optional[float] = None


@dataclass(frozen=True)
class SearchProblem:
    """A validated search instance (built by :func:`make_problem`).

    Attributes:
        affinity: (D, N, N) float64 task affinity.
        tasks: the N task names (affinity rows/columns in this order).
        block_params: (D,) int64 parameters of one copy of each block.
        fixed_params: parameters paid once (stem, heads).
        block_flops: (D,) int64 FLOPs per block copy, or None.
        fixed_flops: FLOPs paid once.
        budget_kind: which of params/FLOPs the budget limits.
        budget: the limit (None: unconstrained).
        shared_prefix: the first k depths are forced to be shared by all tasks.
        dis: (D, N, N) dissimilarity ``1 - affinity``.
    """

    affinity: np.ndarray
    tasks: Tuple[str, ...]
    block_params: np.ndarray
    fixed_params: int
    block_flops: Optional[np.ndarray]
    fixed_flops: int
    budget_kind: str
    budget: Optional[int]
    shared_prefix: int
    dis: np.ndarray = field(repr=False)

    @property
    def depth(self) -> int:
        """D, the number of cut points."""
        return int(self.affinity.shape[0])

    @property
    def num_tasks(self) -> int:
        """N."""
        return len(self.tasks)

    @property
    def resource(self) -> np.ndarray:
        """Per-block cost of the budgeted kind (params or FLOPs), int64 (D,)."""
        return self.block_flops if self.budget_kind == "flops" else self.block_params  # type: ignore[return-value]

    @property
    def fixed_resource(self) -> int:
        """Fixed cost of the budgeted kind."""
        return self.fixed_flops if self.budget_kind == "flops" else self.fixed_params

    def resource_of(self, counts: Sequence[int]) -> int:
        """Budgeted cost of a tree with group counts ``counts`` per depth."""
        return self.fixed_resource + int(np.dot(np.asarray(counts, dtype=np.int64), self.resource))

    @property
    def min_resource(self) -> int:
        """Cost of the fully shared tree (the cheapest)."""
        return self.resource_of([1] * self.depth)

    @property
    def max_resource(self) -> int:
        """Cost of the all-separate tree (after the shared prefix): the most expensive."""
        k = self.shared_prefix
        return self.resource_of([1] * k + [self.num_tasks] * (self.depth - k))

    @property
    def limit(self) -> int:
        """The budget, or the all-separate cost when unconstrained."""
        return self.max_resource if self.budget is None else self.budget

    def all_separate(self) -> Tree:
        """The most expensive tree: shared prefix, then one branch per task."""
        n, k = self.num_tasks, self.shared_prefix
        parts = [[list(range(n))]] * k + [[[i] for i in range(n)]] * (self.depth - k)
        return Tree.from_index_partitions(self.tasks, parts)

    def score(self, tree: Tree) -> ScoredTree:
        """Cost, params and FLOPs of ``tree`` (its tasks must be this problem's, same order)."""
        from .cost import clustering_cost

        counts = np.asarray(tree.group_counts, dtype=np.int64)
        params = self.fixed_params + int(counts @ self.block_params)
        flops = None
        if self.block_flops is not None:
            flops = self.fixed_flops + int(counts @ self.block_flops)
        return ScoredTree(tree, clustering_cost(tree, self.affinity), params, flops)

    def unit(self) -> str:
        """The budget's unit, for messages."""
        return "FLOPs" if self.budget_kind == "flops" else "params"


def _int_vector(values: Any, name: str, length: int) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except Exception:  # noqa: BLE001 - any conversion failure is a user error here
        raise BranchnasError(f"{name} must be a list of {length} integers") from None
    if arr.ndim != 1 or arr.shape[0] != length:
        raise BranchnasError(
            f"{name} has shape {arr.shape} but the affinity has {length} locations; "
            f"give one number per cut point"
        )
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise BranchnasError(f"{name} must hold finite numbers, got {list(values)!r}")
    if np.any(arr < 0) or np.any(arr != np.round(arr)):
        raise BranchnasError(f"{name} must hold non-negative integers, got {list(values)!r}")
    return arr.astype(np.int64)


def _non_negative_int(value: Any, name: str) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise BranchnasError(f"{name} must be a non-negative integer, got {value!r}") from None
    if v != value or v < 0:
        raise BranchnasError(f"{name} must be a non-negative integer, got {value!r}")
    return v


def validate_affinity(affinity: Any, tasks: Sequence[str], atol: float = 1e-6,
                      locations: Optional[Sequence[str]] = None) -> np.ndarray:
    """Check an affinity tensor against the task list and return it as float64.

    The one check of shape, finiteness and symmetry; :func:`branchnas.affinity.check_affinity`
    adds what a stored file must also satisfy (names, unit diagonal, values in [-1, 1]).

    Args:
        affinity: array-like ``(D, N, N)``.
        tasks: the N task names.
        atol: tolerance of the symmetry check.
        locations: D location names for the messages; locations are numbered from 1 without.

    Raises:
        BranchnasError: wrong shape, non-finite values, or not symmetric (within ``atol``).
    """
    n = len(tasks)
    try:
        a = np.asarray(affinity, dtype=np.float64)
    except (TypeError, ValueError):
        raise BranchnasError("affinity must be a numeric array of shape (D, N, N)") from None
    if a.ndim != 3 or a.shape[1] != n or a.shape[2] != n or a.shape[0] < 1:
        raise BranchnasError(
            f"affinity has shape {a.shape} but {n} tasks need (D, {n}, {n}) with D >= 1; "
            "use the affinity computed for exactly these tasks"
        )

    def where(d: int) -> str:
        return repr(str(locations[d])) if locations is not None else str(d + 1)

    bad = ~np.isfinite(a)
    if bad.any():
        d, i, j = (int(x) for x in np.argwhere(bad)[0])
        raise BranchnasError(
            f"affinity has a non-finite value at location {where(d)} ({tasks[i]}, {tasks[j]}; "
            f"{int(bad.sum())} in all); recompute it or replace them"
        )
    asym = np.abs(a - a.transpose(0, 2, 1))
    if asym.max() > atol:
        d, i, j = (int(x) for x in np.unravel_index(int(asym.argmax()), asym.shape))
        raise BranchnasError(
            f"affinity is not symmetric at location {where(d)} ({tasks[i]} vs {tasks[j]}, off by "
            f"{asym.max():.3g}); symmetrise it, e.g. (A + A.transpose(0, 2, 1)) / 2"
        )
    return a


def make_problem(
    affinity: Any,
    tasks: Sequence[str],
    block_params: Sequence[int],
    budget: Optional[int] = None,
    fixed_params: int = 0,
    block_flops: Optional[Sequence[int]] = None,
    fixed_flops: int = 0,
    budget_kind: str = "params",
    shared_prefix: int = 0,
) -> SearchProblem:
    """Validate the inputs of a search and bundle them.

    Raises:
        BranchnasError: for any inconsistent or malformed input (one-line message).
    """
    tasks_t = tuple(tasks)
    if not tasks_t:
        raise BranchnasError("no tasks given; a search needs at least one task")
    if len(set(tasks_t)) != len(tasks_t):
        dup = next(t for t in tasks_t if tasks_t.count(t) > 1)
        raise BranchnasError(f"task {dup!r} is listed twice; list each task once")
    a = validate_affinity(affinity, tasks_t)
    depth = a.shape[0]
    bp = _int_vector(block_params, "block_params", depth)
    bf = None if block_flops is None else _int_vector(block_flops, "block_flops", depth)
    if budget_kind not in BUDGET_KINDS:
        raise BranchnasError(
            f"unknown budget kind {budget_kind!r}; choose one of: {', '.join(BUDGET_KINDS)}"
        )
    if budget_kind == "flops" and bf is None:
        raise BranchnasError("a FLOPs budget needs per-block FLOPs; pass block_flops")
    sp = _non_negative_int(shared_prefix, "shared_prefix")
    if sp > depth:
        raise BranchnasError(
            f"shared_prefix {sp} exceeds the {depth} cut points; use 0..{depth}"
        )
    b = None if budget is None else _non_negative_int(budget, "budget")
    dis = 1.0 - a
    for arr in (a, dis, bp) + ((bf,) if bf is not None else ()):
        arr.setflags(write=False)
    return SearchProblem(
        affinity=a,
        tasks=tasks_t,
        block_params=bp,
        fixed_params=_non_negative_int(fixed_params, "fixed_params"),
        block_flops=bf,
        fixed_flops=_non_negative_int(fixed_flops, "fixed_flops"),
        budget_kind=budget_kind,
        budget=b,
        shared_prefix=sp,
        dis=dis,
    )


# ---------------------------------------------------------------------- registry
_STRATEGIES: Registry[Callable[..., Any]] = Registry("search strategy")


def register_strategy(name: str, **meta: Any) -> Callable[[Any], Any]:
    """Decorator registering a strategy class under ``name`` with its metadata.

    A strategy's constructor takes only hyperparameters (keyword arguments); its
    ``run(problem: SearchProblem, top_k: int) -> StrategyOutput`` does the search.

    Metadata callers read instead of switching on names (all optional):

    - ``exact`` (bool): returns the least-cost trees within the budget.
    - ``many_tasks`` (bool): the near-optimal strategy ``auto`` uses beyond the exact ones.
    - ``options`` (tuple of str): the :func:`~branchnas.search.search` options it takes
      (``beam_width``, ``max_branches``, ``seed``).
    - ``seconds`` (callable ``(num_tasks, depth, shared_prefix) -> float``): an estimate of
      the run time on one core, for ``auto``; ``inf`` when it would refuse the size.
    - ``path`` (callable ``(problem) -> (rows, resolve)``): every achievable resource with
      its least cost in one pass, rows ``(resource, cost, key)`` and ``resolve(key) -> Tree``
      (the budget path and the frontier use it).
    - ``lower_bound`` (bool): the strategy's output carries a certified lower bound.
    """
    return _STRATEGIES.register(name, **meta)


def strategy_meta(name: str) -> Dict[str, Any]:
    """The metadata a strategy was registered with (see :func:`register_strategy`)."""
    return _STRATEGIES.meta(name)


def list_strategies() -> List[str]:
    """Registered strategy names, sorted."""
    return _STRATEGIES.names()


def get_strategy(name: str) -> Any:
    """The strategy class registered as ``name``."""
    return _STRATEGIES.get(name)


def create_strategy(name: str, **kwargs: Any) -> Any:
    """Instantiate strategy ``name`` with its hyperparameters."""
    return _STRATEGIES.create(name, **kwargs)
