"""Recommend task trees for a budget: affinity file + search space (or block sizes) → ranked trees.

This is what ``branchnas search`` calls. It finds the affinity to use (given, computed in
the current run, or shipped with the tool under ``affinity/``), checks that it fits the
search space, picks a strategy, runs the search and formats the answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .._resources import shipped_resource_dir
from ..errors import BranchnasError

__all__ = ["Recommendation", "recommend", "find_affinity", "shipped_affinity_dir", "auto_strategy"]

log = logging.getLogger(__name__)

def auto_strategy(num_tasks: int, depth: int, shared_prefix: int = 0) -> str:
    """The strategy ``auto`` stands for on a problem of this size.

    The fastest exact strategy estimated to finish within seconds (exhaustive while there
    are few trees, it also counts the feasible ones; the exact dynamic programme up to about
    10 tasks), the near-optimal local search beyond (:func:`branchnas.search.choose_strategy`,
    read from the strategies' metadata).
    """
    from ..search import choose_strategy

    return choose_strategy(num_tasks, depth, shared_prefix)


def shipped_affinity_dir() -> Path:
    """The folder of affinity tensors that ship with branchnas (package data)."""
    return shipped_resource_dir("affinity")


def find_affinity(space_name: str, runs: Optional[Union[str, Path]] = None,
                  measure: str = "rsa") -> Path:
    """The affinity file for a space: the current run's, else the shipped one.

    Raises:
        BranchnasError: when neither exists, saying how to compute one.
    """
    from .layout import RunLayout, default_out

    layout = RunLayout(runs if runs else default_out(space_name))
    candidates = [layout.affinity(measure), shipped_affinity_dir() / f"{space_name}.npz"]
    for c in candidates:
        if c.is_file():
            return c
    raise BranchnasError(
        f"no affinity file for space {space_name!r} (looked for {', '.join(map(str, candidates))}); "
        f"compute one with `branchnas affinity --space {space_name}` or pass --affinity FILE"
    )


def _parse_block_params(text: str) -> List[int]:
    from ..search import parse_budget

    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise BranchnasError("--block-params needs a comma-separated list, e.g. 0.2M,1M,4M,8M")
    return [parse_budget(p.strip()) for p in parts]


@dataclass
class Recommendation:
    """A search's answer with what it was computed from."""

    result: Any  # branchnas.search.SearchResult
    affinity_path: Optional[Path]
    space_name: Optional[str]
    tasks: List[str]
    rule: str = "least-cost"  # the selection rule that picked ``selected``
    selected: Any = None  # the rule's pick (a ScoredTree); the least-cost tree under the paper's rule
    frontier: Optional[List[Any]] = None  # (resource, cost) Pareto frontier, when asked for
    frontier_exact: bool = True  # False: sampled at budgets by a heuristic strategy

    @property
    def chosen(self) -> Any:
        """The tree to build: the rule's pick."""
        return self.selected if self.selected is not None else self.result.best

    def to_json(self) -> Dict[str, Any]:
        """``{"trees": [Tree fields + cost, params, flops], "strategy" (the one used), ...}``."""
        r = self.result

        def row(s: Any) -> Dict[str, Any]:
            return {**s.tree.to_json(), "cost": s.cost, "params": s.params, "flops": s.flops}

        out = {
            "trees": [row(s) for s in r.trees],
            "enumerated": r.enumerated,
            "feasible": r.feasible,  # None where the strategy does not count them (exact, beam)
            "strategy": r.strategy,  # the strategy actually used ("auto" resolved)
            "lower_bound": r.lower_bound,  # certified: no tree within the budget costs less
            "gap": r.gap,  # (cost - lower_bound) / cost of the best tree; 0 when exact
            "rule": self.rule,
            "selected": row(self.chosen),
            "budget": r.budget,
            "budget_kind": r.budget_kind,
            "note": r.note,
            "affinity": str(self.affinity_path) if self.affinity_path else None,
            "space": self.space_name,
        }
        if self.frontier is not None:
            out["frontier"] = [row(s) for s in self.frontier]
            out["frontier_exact"] = self.frontier_exact
        return out

    def format_frontier(self) -> str:
        """The frontier as a table: resource, cost, group counts per depth, within budget or not."""
        from ..search import format_budget

        r = self.result
        kind = r.budget_kind
        lines = [f"(params, cost) Pareto frontier: {len(self.frontier or [])} trees"
                 + ("" if self.frontier_exact else " (sampled at budgets by a heuristic, not exact)"),
                 f"{'params':>10} {'FLOPs':>10} {'cost':>8}  {'groups per depth':<24} note"]
        chosen = self.chosen
        for s in self.frontier or []:
            res = s.flops if kind == "flops" else s.params
            note = []
            if r.budget is not None and res > r.budget:
                note.append("over budget")
            if s.tree == chosen.tree:
                note.append(f"selected ({self.rule})")
            flops = format_budget(s.flops) if s.flops is not None else "-"
            counts = "-".join(str(c) for c in s.tree.group_counts)
            lines.append(f"{format_budget(s.params):>10} {flops:>10} {s.cost:>8.4f}  {counts:<24} {', '.join(note)}")
        return "\n".join(lines)

    def format_table(self) -> str:
        """A human-readable table: per tree an ASCII drawing, params, FLOPs and cost."""
        from ..search import format_budget

        r = self.result
        budget = "none" if r.budget is None else format_budget(r.budget)
        lines = [f"space: {self.space_name or '(block sizes given)'}   tasks: {len(self.tasks)}   "
                 f"budget ({r.budget_kind}): {budget}   strategy: {r.strategy}",
                 f"affinity: {self.affinity_path}",
                 f"candidates scored: {r.enumerated}" +
                 (f"   feasible trees: {r.feasible}" if r.feasible is not None else "")]
        if r.lower_bound is not None and r.gap:
            lines.append(f"lower bound on the optimum: {r.lower_bound:.4f}   certified gap of #1: {r.gap:.1%}")
        if self.selected is not None and self.selected.tree != r.best.tree:
            lines.append(f"selected by rule {self.rule!r}: params {format_budget(self.selected.params)}   "
                         f"cost {self.selected.cost:.4f} (not #1: the least-cost tree)")
        if r.note:
            lines.append(f"note: {r.note}")
        for rank, s in enumerate(r.trees, 1):
            flops = format_budget(s.flops) if s.flops is not None else "-"
            lines.append("")
            lines.append(f"#{rank}  params {format_budget(s.params)}   FLOPs {flops}   cost {s.cost:.4f}")
            lines.extend("    " + line for line in s.tree.ascii().splitlines())
        return "\n".join(lines)


def recommend(space: Optional[Any] = None, affinity: Optional[Union[str, Path]] = None,
              block_params: Optional[Union[str, Sequence[int]]] = None,
              budget: Optional[Union[int, str]] = None, budget_flops: Optional[Union[int, str]] = None,
              strategy: str = "auto", top_k: int = 3, beam_width: int = 10,
              max_branches: Optional[int] = None, shared_prefix: Optional[int] = None, seed: int = 0,
              runs: Optional[Union[str, Path]] = None, frontier: bool = False,
              rule: Optional[str] = None, rule_options: Optional[Dict[str, Any]] = None) -> Recommendation:
    """Search the best trees for a budget.

    Args:
        space: a SearchSpace, or its name or path (default ``scenes`` unless ``block_params``
            is given).
        affinity: affinity file; default :func:`find_affinity`.
        block_params: what-if instead of a space: one block copy's parameters per depth
            (list or "p1,...,pD"); heads then count 0.
        budget / budget_flops: a parameter or FLOPs budget (strings like "12M" accepted).
        strategy: a registered strategy, or "auto" (:func:`auto_strategy`: an exact strategy
            where it finishes in seconds, local search beyond); the result names the one used.
        top_k, beam_width, max_branches, shared_prefix, seed: see :func:`branchnas.search.search`;
            ``shared_prefix`` None: the space's ``[search] shared_prefix`` (0 without a space).
        runs: the run directory whose computed affinity is preferred.
        frontier: also compute every tree on the (resource, cost) Pareto frontier (exact
            for exact strategies; sampled at budgets by heuristic ones).
        rule: the selection rule (:func:`branchnas.search.frontier.list_rules`; default
            :data:`~branchnas.search.frontier.DEFAULT_RULE`, the paper's least cost within
            the budget); ``rule_options`` its options (e.g. ``{"eps": 0.1}``).

    Raises:
        BranchnasError: for a missing or invalid affinity file, tasks or cut points that do
            not match the space, or an impossible budget.
    """
    from ..affinity import load_affinity
    from ..search import search

    if block_params is not None and space is not None:
        raise BranchnasError("give either --space or --block-params, not both")
    if block_params is None and space is None:
        space = "scenes"
    sp = None
    if space is not None:
        from ..spaces import SearchSpace, load_space

        sp = space if isinstance(space, SearchSpace) else load_space(space)
    if affinity is None:
        if sp is None:
            raise BranchnasError("--block-params needs --affinity FILE (there is no space to find one for)")
        affinity = find_affinity(sp.name, runs)
    aff = load_affinity(affinity)
    tasks = list(aff.tasks)
    depth = aff.affinity.shape[0]

    block_flops = None
    fixed_params = fixed_flops = 0
    space_name = None
    if sp is not None:
        space_name = sp.name
        unknown = [t for t in tasks if t not in sp.task_names]
        if unknown:
            raise BranchnasError(
                f"affinity file {affinity} has task(s) {', '.join(unknown)} that space {sp.name!r} "
                f"lacks (its tasks: {', '.join(sp.task_names)}); use the space the affinity was computed for"
            )
        if depth != sp.depth:
            raise BranchnasError(
                f"affinity file {affinity} has {depth} locations but space {sp.name!r} has "
                f"{sp.depth} cut points; use the space the affinity was computed for"
            )
        if set(tasks) != set(sp.task_names):
            log.info("searching over the affinity's %d of the space's %d tasks", len(tasks), len(sp.task_names))
        sub = sp.subset(tasks)
        sizes, block_flops = list(sub.block_params), list(sub.block_flops)
        fixed_params = sum(sub.head_params.values())
        fixed_flops = sum(sub.head_flops.values())
    else:
        sizes = _parse_block_params(block_params) if isinstance(block_params, str) else list(block_params)
        if len(sizes) != depth:
            raise BranchnasError(
                f"--block-params gives {len(sizes)} blocks but the affinity has {depth} locations; "
                f"give exactly {depth} values"
            )
    if shared_prefix is None:  # the space says which blocks every tree shares
        shared_prefix = sp.shared_prefix if sp is not None else 0
    from ..search.frontier import DEFAULT_RULE, list_rules

    rule = DEFAULT_RULE if rule is None else rule
    if rule not in list_rules():
        raise BranchnasError(f"unknown selection rule {rule!r}; choose one of: {', '.join(list_rules())}")
    kind = "flops" if budget_flops is not None else "params"
    if kind == "flops" and block_flops is None:
        raise BranchnasError("--budget-flops needs --space (FLOPs come from the space's blocks)")
    result = search(
        aff.affinity, tasks, sizes, budget=budget_flops if kind == "flops" else budget,
        strategy=strategy, top_k=top_k, fixed_params=fixed_params, block_flops=block_flops,
        fixed_flops=fixed_flops, budget_kind=kind, shared_prefix=shared_prefix,
        beam_width=beam_width, max_branches=max_branches, seed=seed,
    )
    rec = Recommendation(result=result, affinity_path=Path(affinity), space_name=space_name, tasks=tasks,
                         rule=rule)
    if frontier or rule != DEFAULT_RULE:
        from ..search import strategy_meta
        from ..search.frontier import frontier as pareto, non_dominated, select

        used = result.strategy
        exact = strategy_meta(used).get("path") is not None
        opts = {k: v for k, v in (("seed", seed), ("beam_width", beam_width), ("max_branches", max_branches))
                if k in strategy_meta(used).get("options", ())}
        points = pareto(aff.affinity, tasks, sizes, strategy=used, budget_kind=kind, num_budgets=12,
                        fixed_params=fixed_params, block_flops=block_flops, fixed_flops=fixed_flops,
                        shared_prefix=shared_prefix, **opts)
        points = non_dominated(points + list(result.trees), kind)
        rec.frontier, rec.frontier_exact = points, exact
        rec.selected = select(points, result.budget, rule, budget_kind=kind, **(rule_options or {}))
    return rec
