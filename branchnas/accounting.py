"""Parameters and FLOPs of a task tree from per-block numbers (pure functions).

Group ``g`` at depth ``d`` owns one copy of block ``d``, so a tree costs
``Σ_d |P_d| · block[d]`` plus the stem (once) and one head per task. Parameters and FLOPs
add up the same way; only the per-block numbers differ.

Example:
    >>> from branchnas.tree import Tree
    >>> t = Tree(("a", "b"), [[["a", "b"]], [["a"], ["b"]]])
    >>> tree_params(t, [100, 10], head_params={"a": 1, "b": 2})
    123
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from .errors import BranchnasError
from .tree import Tree

__all__ = ["counts_total", "tree_flops", "tree_params"]


def _as_int(value: object, what: str) -> int:
    try:
        v = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise BranchnasError(f"{what} must be an integer, got {value!r}") from None
    if v != value or v < 0:
        raise BranchnasError(f"{what} must be a non-negative integer, got {value!r}")
    return v


def counts_total(
    group_counts: Sequence[int], per_block: Sequence[int], fixed: int = 0
) -> int:
    """``Σ_d group_counts[d] · per_block[d] + fixed``: the one summation behind all accounting.

    Args:
        group_counts: ``|P_d|`` per depth.
        per_block: the cost of one copy of each block (parameters or FLOPs).
        fixed: costs paid once whatever the tree (stem, heads).

    Raises:
        BranchnasError: when the lengths differ or a number is negative / not an integer.
    """
    if len(group_counts) != len(per_block):
        raise BranchnasError(
            f"the tree has {len(group_counts)} depths but {len(per_block)} per-block numbers "
            "were given; give one number per cut point"
        )
    total = _as_int(fixed, "fixed cost")
    for d, (k, b) in enumerate(zip(group_counts, per_block), start=1):
        total += int(k) * _as_int(b, f"block {d} cost")
    return total


def _tree_total(
    tree: Tree,
    per_block: Sequence[int],
    stem: int,
    heads: Optional[Mapping[str, int]],
    what: str,
) -> int:
    fixed = _as_int(stem, f"stem {what}")
    if heads is not None:
        missing = [t for t in tree.tasks if t not in heads]
        if missing:
            raise BranchnasError(
                f"no head {what} for tasks {', '.join(missing)}; give one number per task"
            )
        fixed += sum(_as_int(heads[t], f"head {what} of {t!r}") for t in tree.tasks)
    return counts_total(tree.group_counts, per_block, fixed)


def tree_params(
    tree: Tree,
    block_params: Sequence[int],
    stem_params: int = 0,
    head_params: Optional[Mapping[str, int]] = None,
) -> int:
    """Exact parameter count of the branched network described by ``tree``.

    Args:
        tree: the task tree (D depths).
        block_params: parameters of one copy of block d, for d = 1..D.
        stem_params: parameters paid once before block 1 (normally 0: our backbones fold
            the stem into block 1).
        head_params: task → parameters of its head; ``None`` counts no heads.

    Returns:
        ``Σ_d |P_d| · block_params[d] + stem_params + Σ_tasks head_params[task]``.

    Raises:
        BranchnasError: for a length mismatch, a missing head, or a negative number.
    """
    return _tree_total(tree, block_params, stem_params, head_params, "params")


def tree_flops(
    tree: Tree,
    block_flops: Sequence[int],
    stem_flops: int = 0,
    head_flops: Optional[Mapping[str, int]] = None,
) -> int:
    """FLOPs of one forward pass of the branched network (same summation as :func:`tree_params`).

    Args:
        tree: the task tree (D depths).
        block_flops: FLOPs of one copy of block d at the space's input size, d = 1..D.
        stem_flops: FLOPs paid once before block 1 (normally 0).
        head_flops: task → FLOPs of its head; ``None`` counts no heads.

    Returns:
        ``Σ_d |P_d| · block_flops[d] + stem_flops + Σ_tasks head_flops[task]``.

    Raises:
        BranchnasError: for a length mismatch, a missing head, or a negative number.
    """
    return _tree_total(tree, block_flops, stem_flops, head_flops, "FLOPs")
