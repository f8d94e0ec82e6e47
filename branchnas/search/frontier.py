"""The (resource, cost) Pareto frontier of trees, and rules that pick one tree for a budget.

The least-cost tree within a budget spends (nearly) all of it: peeling one task off a group
never raises the clustering cost. The frontier shows what each extra block copy buys:
every tree that no other tree beats on both parameters (or FLOPs) and cost. A *selection
rule* then picks a tree from the frontier points within the budget:

- ``least-cost`` (the paper's §3.2): the least-cost tree within the budget.
- ``epsilon``: the smallest tree whose cost is within ``eps`` of the budget's optimum,
  ``eps`` measured as a share of the cost range the budget spans (from the fully shared
  tree's cost down to the optimum), so it is scale-free.
- ``knee``: the frontier point (within the budget) farthest below the straight line from
  the fully shared tree to the budget's optimum, both axes scaled to [0, 1].

Plots are two steps: :func:`frontier_plot_data` (plain data) and :func:`draw_frontier`
(draws into a matplotlib Axes it returns; matplotlib is imported there).

Example:
    >>> import numpy as np
    >>> a = np.ones((2, 3, 3)); a[:, 0, 2] = a[:, 2, 0] = 0.1
    >>> pts = frontier(a, ["a", "b", "c"], [10, 10])
    >>> [(p.params, round(p.cost, 3)) for p in pts]
    [(20, 1.8), (30, 0.9), (40, 0.0)]
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .._registry import Registry
from ..errors import BranchnasError
from ._common import ScoredTree

__all__ = ["draw_frontier", "frontier", "frontier_plot_data", "list_rules", "non_dominated",
           "register_rule", "select", "DEFAULT_RULE"]

logger = logging.getLogger(__name__)

_RULES: Registry[Callable[..., Any]] = Registry("selection rule")

# The rule `search` applies by default. The validation study's trained trees decide this
# (bench/bench_search.py --selection); see results/validation and the README.
DEFAULT_RULE = "least-cost"


def register_rule(name: str, **meta: Any) -> Callable[[Any], Any]:
    """Register ``fn(points, budget, **options) -> ScoredTree`` as selection rule ``name``.

    ``points`` are frontier points (ascending resource, descending cost) within the budget.
    """
    return _RULES.register(name, **meta)


def list_rules() -> List[str]:
    """Registered selection rules, sorted."""
    return _RULES.names()


def _resource(p: ScoredTree, kind: str) -> int:
    if kind == "flops":
        if p.flops is None:
            raise BranchnasError("a FLOPs frontier needs per-block FLOPs")
        return p.flops
    return p.params


def non_dominated(points: Sequence[ScoredTree], kind: str = "params") -> List[ScoredTree]:
    """The points no other point beats on both resource and cost, ascending resource.

    Of equal (resource, cost) points the first is kept.
    """
    order = sorted(range(len(points)), key=lambda i: (_resource(points[i], kind), points[i].cost, i))
    out: List[ScoredTree] = []
    for i in order:
        p = points[i]
        if not out or p.cost < out[-1].cost - 1e-12:
            out.append(p)
    return out


def frontier(affinity: Any, tasks: Sequence[str], block_params: Sequence[int],
             strategy: str = "exact", budget_kind: str = "params", num_budgets: int = 40,
             **options: Any) -> List[ScoredTree]:
    """Every tree on the (resource, cost) Pareto frontier, ascending resource.

    Exact for strategies that compute every resource's optimum in one pass (metadata
    ``path``: exact, exhaustive); for the others an approximation from ``num_budgets``
    searches at evenly spaced budgets.

    Args:
        affinity, tasks, block_params: as for :func:`branchnas.search.search`.
        strategy: a registered strategy.
        budget_kind: "params" or "flops" (the frontier's resource axis).
        num_budgets: budgets searched by strategies without a one-pass path.
        **options: the other options of :func:`branchnas.search.budget_path`.
    """
    from .budget import budget_path

    pts = budget_path(affinity, tasks, block_params, strategy=strategy, budget_kind=budget_kind,
                      num_budgets=num_budgets, **options)
    return non_dominated([p.best for p in pts], budget_kind)


def _within(points: Sequence[ScoredTree], budget: Optional[int], kind: str) -> List[ScoredTree]:
    pts = non_dominated(points, kind)
    if budget is not None:
        pts = [p for p in pts if _resource(p, kind) <= budget]
    if not pts:
        raise BranchnasError(f"no frontier tree fits the budget {budget}; raise the budget")
    return pts


@register_rule("least-cost", paper=True)
def _least_cost(points: List[ScoredTree], kind: str = "params") -> ScoredTree:
    """The paper's rule: the least cost within the budget (the largest frontier point)."""
    return points[-1]


@register_rule("epsilon", paper=False)
def _epsilon(points: List[ScoredTree], kind: str = "params", eps: float = 0.1) -> ScoredTree:
    """The smallest tree within ``eps`` of the optimum, as a share of the budget's cost range."""
    if not 0.0 <= float(eps) <= 1.0:
        raise BranchnasError(f"eps must lie in [0, 1], got {eps}")
    lo, hi = points[-1].cost, points[0].cost
    return next(p for p in points if p.cost <= lo + float(eps) * (hi - lo) + 1e-12)


@register_rule("knee", paper=False)
def _knee(points: List[ScoredTree], kind: str = "params") -> ScoredTree:
    """The point farthest below the chord from the smallest to the least-cost tree (scaled axes)."""
    if len(points) <= 2:
        return points[-1]
    x = np.array([_resource(p, kind) for p in points], dtype=float)
    y = np.array([p.cost for p in points])
    xs = (x - x[0]) / max(x[-1] - x[0], 1e-300)
    ys = (y - y[-1]) / max(y[0] - y[-1], 1e-300)
    below = (1.0 - xs) - ys  # the chord is ys = 1 - xs; positive = below it
    return points[int(np.argmax(below))]


def select(points: Sequence[ScoredTree], budget: Optional[int] = None, rule: str = DEFAULT_RULE,
           budget_kind: str = "params", **options: Any) -> ScoredTree:
    """Pick one tree for ``budget`` from frontier (or any) points by a registered rule.

    Raises:
        BranchnasError: unknown rule or options, or nothing within the budget.
    """
    fn = _RULES.get(rule)
    from .._registry import check_kwargs

    check_kwargs(fn, options, f"selection rule {rule!r}", reserved=("points", "kind"))
    return fn(_within(points, budget, budget_kind), kind=budget_kind, **options)


def frontier_plot_data(points: Sequence[ScoredTree], budget: Optional[int] = None,
                       budget_kind: str = "params", chosen: Optional[ScoredTree] = None) -> Dict[str, Any]:
    """Plain data for :func:`draw_frontier`: resources, costs, the budget, the chosen point."""
    pts = non_dominated(points, budget_kind)
    return {
        "resource": [_resource(p, budget_kind) for p in pts],
        "cost": [p.cost for p in pts],
        "groups": ["-".join(str(c) for c in p.tree.group_counts) for p in pts],
        "budget": budget,
        "kind": budget_kind,
        "chosen": None if chosen is None else (_resource(chosen, budget_kind), chosen.cost),
    }


def draw_frontier(data: Dict[str, Any], ax: Any = None, title: Optional[str] = None) -> Any:
    """Draw the frontier (cost vs resource, steps), the budget line and the chosen tree."""
    if ax is None:
        from .._figure import agg_figure

        ax = agg_figure(figsize=(6, 4)).subplots()
    x, y = data["resource"], data["cost"]
    ax.step(x, y, where="post", color="0.6", lw=1)
    ax.plot(x, y, "o", color="tab:blue", ms=4, label="frontier trees")
    if data.get("budget") is not None:
        ax.axvline(data["budget"], color="tab:red", ls="--", lw=1, label="budget")
    if data.get("chosen") is not None:
        ax.plot(*data["chosen"], "*", color="tab:orange", ms=12, label="selected")
    ax.set_xlabel("FLOPs" if data.get("kind") == "flops" else "parameters")
    ax.set_ylabel("clustering cost")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def write_frontier_plot(data: Dict[str, Any], path: Union[str, "Any"], title: Optional[str] = None) -> str:
    """Draw :func:`draw_frontier` into a new figure and save it as ``path`` (PNG)."""
    from pathlib import Path

    from .._figure import agg_figure

    fig = agg_figure(figsize=(6, 4))
    ax = fig.subplots()
    draw_frontier(data, ax, title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return str(out)
