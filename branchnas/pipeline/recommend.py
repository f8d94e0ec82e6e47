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

__all__ = ["Recommendation", "recommend", "find_affinity", "shipped_affinity_dir", "auto_strategy",
           "EXACT_MAX_TASKS", "EXHAUSTIVE_MAX_TREES"]

log = logging.getLogger(__name__)

# "auto" strategy: enumerate every tree while there are few enough (it also counts the feasible
# ones), the exact solver up to this many tasks (Bell numbers grow fast), beam search beyond.
EXHAUSTIVE_MAX_TREES = 2_000_000
EXACT_MAX_TASKS = 10


def auto_strategy(num_tasks: int, depth: int, shared_prefix: int = 0) -> str:
    """The strategy ``auto`` stands for on a problem of this size."""
    from ..search import count_trees

    if count_trees(num_tasks, depth, shared_prefix) <= EXHAUSTIVE_MAX_TREES:
        return "exhaustive"
    return "exact" if num_tasks <= EXACT_MAX_TASKS else "beam"


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

    def to_json(self) -> Dict[str, Any]:
        """``{"trees": [Tree fields + cost, params, flops], "enumerated", "feasible", ...}``."""
        r = self.result
        return {
            "trees": [{**s.tree.to_json(), "cost": s.cost, "params": s.params, "flops": s.flops}
                      for s in r.trees],
            "enumerated": r.enumerated,
            "feasible": r.feasible,  # None where the strategy does not count them (exact, beam)
            "strategy": r.strategy,
            "budget": r.budget,
            "budget_kind": r.budget_kind,
            "note": r.note,
            "affinity": str(self.affinity_path) if self.affinity_path else None,
            "space": self.space_name,
        }

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
              runs: Optional[Union[str, Path]] = None) -> Recommendation:
    """Search the best trees for a budget.

    Args:
        space: a SearchSpace, or its name or path (default ``scenes`` unless ``block_params``
            is given).
        affinity: affinity file; default :func:`find_affinity`.
        block_params: what-if instead of a space: one block copy's parameters per depth
            (list or "p1,...,pD"); heads then count 0.
        budget / budget_flops: a parameter or FLOPs budget (strings like "12M" accepted).
        strategy: a registered strategy, or "auto" (:func:`auto_strategy`: exhaustive for up to
            2M trees, then exact up to 10 tasks, beam beyond).
        top_k, beam_width, max_branches, shared_prefix, seed: see :func:`branchnas.search.search`;
            ``shared_prefix`` None: the space's ``[search] shared_prefix`` (0 without a space).
        runs: the run directory whose computed affinity is preferred.

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
    if strategy == "auto":
        strategy = auto_strategy(len(tasks), depth, shared_prefix)
    kind = "flops" if budget_flops is not None else "params"
    if kind == "flops" and block_flops is None:
        raise BranchnasError("--budget-flops needs --space (FLOPs come from the space's blocks)")
    result = search(
        aff.affinity, tasks, sizes, budget=budget_flops if kind == "flops" else budget,
        strategy=strategy, top_k=top_k, fixed_params=fixed_params, block_flops=block_flops,
        fixed_flops=fixed_flops, budget_kind=kind, shared_prefix=shared_prefix,
        beam_width=beam_width, max_branches=max_branches, seed=seed,
    )
    return Recommendation(result=result, affinity_path=Path(affinity), space_name=space_name, tasks=tasks)
