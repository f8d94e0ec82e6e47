"""The baselines registry: the networks branched trees are compared against.

All baselines are built on a search space's backbone blocks and task heads, for any
number of tasks (the soft-sharing ones for two or more):

========================  ==========================================================
name                      model
========================  ==========================================================
``single``                a :class:`BranchedNet` of ``Tree.single_task``: one network
                          per task (the ``train-single`` runs)
``shared``                a :class:`BranchedNet` of ``Tree.fully_shared``: one encoder,
                          task heads (the "MTL baseline")
``cross_stitch``          :class:`~branchnas.models.cross_stitch.CrossStitchNet`
``mtan``                  :class:`~branchnas.models.mtan.MTAN`
``nddr``                  :class:`~branchnas.models.nddr.NDDRNet`
========================  ==========================================================

Every model has ``forward(image, tasks=None) -> {task: pred}``, ``shared_parameters()``
and ``task_parameters(task)``; the soft-sharing ones also ``param_groups(base_lr)``
(cross-stitch and NDDR units at ``unit_lr_mult`` × ``base_lr``) and, for cross-stitch and
NDDR, ``init_from_single(...)``.

A registered baseline is a callable ``factory(space, tasks=None, **options) -> nn.Module``;
if it has a ``count_params(space, tasks=None, **options)`` attribute,
:func:`baseline_params` uses it, otherwise it builds the model on the meta device.

Example:
    >>> from branchnas.spaces import load_space                # doctest: +SKIP
    >>> space = load_space("scenes")                            # doctest: +SKIP
    >>> net = create_baseline("cross_stitch", space, alpha_s=0.9)  # doctest: +SKIP
    >>> preds = net(images)                                     # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, List, Optional, Sequence

from torch import nn

from .._registry import Registry
from ..accounting import tree_params
from ..errors import BranchnasError
from ..tree import Tree
from .branched import BranchedNet
from .cross_stitch import CrossStitchNet, resolve_tasks
from .mtan import MTAN
from .nddr import NDDRNet

__all__ = [
    "register_baseline",
    "list_baselines",
    "get_baseline",
    "create_baseline",
    "baseline_params",
    "single_task_net",
    "fully_shared_net",
]

logger = logging.getLogger(__name__)

_BASELINES: Registry[Callable[..., nn.Module]] = Registry("baseline")


def register_baseline(name: str, factory: Optional[Callable[..., nn.Module]] = None) -> Any:
    """Register a baseline factory ``(space, tasks=None, **options) -> nn.Module``.

    Usable as ``register_baseline("name", factory)`` or as a decorator
    ``@register_baseline("name")``.

    Raises:
        BranchnasError: if ``name`` is taken.
    """
    return _BASELINES.register(name, factory)


def list_baselines() -> List[str]:
    """Names of the registered baselines, sorted."""
    return _BASELINES.names()


def get_baseline(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name``.

    Raises:
        BranchnasError: for an unknown name, listing the known ones.
    """
    return _BASELINES.get(name)


def _check_options(name: str, factory: Callable[..., Any], options: dict) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params
                if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                              inspect.Parameter.POSITIONAL_OR_KEYWORD)
                and p.name not in ("self", "space", "tasks")]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise BranchnasError(
            f"baseline {name!r} has no option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(accepted) or 'none'}"
        )


def create_baseline(
    name: str, space: Any, tasks: Optional[Sequence[str]] = None, **options: Any
) -> nn.Module:
    """Build the baseline ``name`` on ``space``'s backbone and heads.

    Args:
        name: one of :func:`list_baselines`.
        space: a loaded search space.
        tasks: the tasks to build for (``None``: all of the space's).
        **options: the baseline's own options (e.g. ``alpha_s``, ``alpha_d``,
            ``unit_lr_mult`` for ``cross_stitch``; ``alpha``, ``beta``, ``unit_lr_mult``
            for ``nddr``).

    Returns:
        The model (fresh weights).

    Raises:
        BranchnasError: for an unknown baseline, task or option, or bad option values.
    """
    factory = get_baseline(name)
    _check_options(name, factory, options)
    model = factory(space=space, tasks=tasks, **options)
    logger.info("built baseline %s: %d parameters", name,
                sum(p.numel() for p in model.parameters()))
    return model


def baseline_params(
    name: str, space: Any, tasks: Optional[Sequence[str]] = None, **options: Any
) -> int:
    """Exact parameter count of a baseline, without building it on a real device.

    Uses the factory's ``count_params`` (closed forms over the space's block metadata) when
    it has one, otherwise builds the model on the meta device and counts.

    Raises:
        BranchnasError: as :func:`create_baseline`.
    """
    factory = get_baseline(name)
    _check_options(name, factory, options)
    count = getattr(factory, "count_params", None)
    if count is not None:
        return int(count(space, tasks, **options))
    import torch  # local: only this fallback needs the device context

    with torch.device("meta"):
        model = factory(space=space, tasks=tasks, **options)
    return sum(p.numel() for p in model.parameters())


def single_task_net(space: Any, tasks: Optional[Sequence[str]] = None) -> BranchedNet:
    """One network per task: the :class:`BranchedNet` of ``Tree.single_task``."""
    names = resolve_tasks(space, tasks)
    return BranchedNet(Tree.single_task(names, len(space.backbone.blocks)), space)


def fully_shared_net(space: Any, tasks: Optional[Sequence[str]] = None) -> BranchedNet:
    """One shared encoder and a head per task: the :class:`BranchedNet` of ``Tree.fully_shared``."""
    names = resolve_tasks(space, tasks)
    return BranchedNet(Tree.fully_shared(names, len(space.backbone.blocks)), space)


def _tree_count(make_tree: Callable[[Sequence[str], int], Tree]) -> Callable[..., int]:
    def count(space: Any, tasks: Optional[Sequence[str]] = None, **_: Any) -> int:
        names = resolve_tasks(space, tasks)
        tree = make_tree(names, len(space.backbone.blocks))
        return tree_params(tree, space.block_params, head_params=space.head_params)

    return count


single_task_net.count_params = _tree_count(Tree.single_task)  # type: ignore[attr-defined]
fully_shared_net.count_params = _tree_count(Tree.fully_shared)  # type: ignore[attr-defined]

register_baseline("single", single_task_net)
register_baseline("shared", fully_shared_net)
register_baseline("cross_stitch", CrossStitchNet)
register_baseline("mtan", MTAN)
register_baseline("nddr", NDDRNet)
