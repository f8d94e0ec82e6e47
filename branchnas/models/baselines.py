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

A registered baseline is a callable ``factory(space, tasks=None, **options) -> nn.Module``
with metadata (:func:`baseline_meta`) saying what the pipeline must do for it, so no caller
switches on a name:

========================  ==========================================================
key                       meaning
========================  ==========================================================
``reuses_single``         it *is* the single-task networks (nothing of its own to train)
``tree``                  ``(tasks, depth) -> Tree`` of a BranchedNet baseline (FLOPs)
``count_params``          ``(space, tasks=None, **options) -> int`` in closed form;
                          without it :func:`baseline_params` counts on the meta device
``init_from_single``      starts from the converged single-task networks' weights
                          (``model.init_from_single``), as its paper does
``training``              training settings its paper's protocol fixes; the config
                          resolver applies them over the space and profile, below
                          tuned settings and the command line
``unit_lr_mult``          learning rate of its sharing units relative to the base rate,
                          the default of its ``unit_lr_mult`` option
``marker``, ``colour``    its style in the Pareto plots (matplotlib marker, hex colour)
========================  ==========================================================

The paper's protocol (appendix A, Cityscapes; reused for Taskonomy in appendix B):
cross-stitch and NDDR-CNN are "initialized from the set of the best single-task models";
"the Adam optimizer broke the initialization", so they train with SGD, initial learning
rate 1e-3, momentum 0.9, their units at "a learning rate that is 100 times higher than the
base learning rate". MTAN and the shared network train like the other multi-task models.

Example:
    >>> from branchnas.spaces import load_space                # doctest: +SKIP
    >>> space = load_space("scenes")                            # doctest: +SKIP
    >>> net = create_baseline("cross_stitch", space, alpha_s=0.9)  # doctest: +SKIP
    >>> preds = net(images)                                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

from .._registry import Registry, check_kwargs
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
    "baseline_meta",
    "model_style",
    "PAPER_SOFT_SHARING_TRAINING",
    "single_task_net",
    "fully_shared_net",
]

logger = logging.getLogger(__name__)

_BASELINES: Registry[Callable[..., nn.Module]] = Registry("baseline")


# Appendix A: "stochastic gradient descent with initial learning rate 1e-3 and momentum 0.9"
# (Adam "broke the initialization" from the single-task models).
PAPER_SOFT_SHARING_TRAINING: Dict[str, Any] = {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9}

# The Pareto style of a model that is no registered baseline (the searched trees).
_TREE_STYLE: Tuple[str, str] = ("o", "#1f77b4")
_META_KEYS = frozenset({"reuses_single", "tree", "count_params", "init_from_single", "training",
                        "unit_lr_mult", "marker", "colour"})


def register_baseline(name: str, factory: Optional[Callable[..., nn.Module]] = None,
                      **meta: Any) -> Any:
    """Register a baseline factory ``(space, tasks=None, **options) -> nn.Module``.

    Usable as ``register_baseline("name", factory, **meta)`` or as a decorator
    ``@register_baseline("name", **meta)``; ``meta`` keys are listed in the module docstring.

    Raises:
        BranchnasError: if ``name`` is taken or a metadata key is unknown.
    """
    unknown = sorted(set(meta) - _META_KEYS)
    if unknown:
        raise BranchnasError(f"baseline {name!r}: unknown metadata {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(_META_KEYS))}")
    return _BASELINES.register(name, factory, **meta)


def baseline_meta(name: str) -> Dict[str, Any]:
    """The metadata of baseline ``name`` (a copy; see the module docstring).

    Raises:
        BranchnasError: for an unknown name, listing the known ones.
    """
    return _BASELINES.meta(name)


def model_style(kind: str) -> Tuple[str, str]:
    """``(marker, colour)`` of a result's model kind in the Pareto plots: the baseline's
    registered style, else the trees' (``"o"``, blue)."""
    if kind in _BASELINES:
        meta = _BASELINES.meta(kind)
        return meta.get("marker", _TREE_STYLE[0]), meta.get("colour", _TREE_STYLE[1])
    return _TREE_STYLE


def list_baselines() -> List[str]:
    """Names of the registered baselines, sorted."""
    return _BASELINES.names()


def get_baseline(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name``.

    Raises:
        BranchnasError: for an unknown name, listing the known ones.
    """
    return _BASELINES.get(name)


def _options(name: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """``options`` checked against the factory's signature, with the registry's defaults."""
    factory = get_baseline(name)
    check_kwargs(factory, options, f"baseline {name!r}", reserved=("space", "tasks"))
    meta = _BASELINES.meta(name)
    if "unit_lr_mult" in meta:
        options = {"unit_lr_mult": float(meta["unit_lr_mult"]), **options}
    return options


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
    model = factory(space=space, tasks=tasks, **_options(name, options))
    logger.info("built baseline %s: %d parameters", name,
                sum(p.numel() for p in model.parameters()))
    return model


def baseline_params(
    name: str, space: Any, tasks: Optional[Sequence[str]] = None, **options: Any
) -> int:
    """Exact parameter count of a baseline, without building it on a real device.

    Uses the registered ``count_params`` (closed forms over the space's block metadata) when
    there is one, otherwise builds the model on the meta device and counts.

    Raises:
        BranchnasError: as :func:`create_baseline`.
    """
    factory = get_baseline(name)
    options = _options(name, options)
    count = _BASELINES.meta(name).get("count_params")
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


register_baseline("single", single_task_net, reuses_single=True, tree=Tree.single_task,
                  count_params=_tree_count(Tree.single_task), marker="s", colour="#7f7f7f")
register_baseline("shared", fully_shared_net, tree=Tree.fully_shared,
                  count_params=_tree_count(Tree.fully_shared), marker="D", colour="#8c564b")
register_baseline("cross_stitch", CrossStitchNet, count_params=CrossStitchNet.count_params,
                  init_from_single=True, training=dict(PAPER_SOFT_SHARING_TRAINING),
                  unit_lr_mult=100.0, marker="^", colour="#2ca02c")
register_baseline("mtan", MTAN, count_params=MTAN.count_params, marker="v", colour="#9467bd")
register_baseline("nddr", NDDRNet, count_params=NDDRNet.count_params, init_from_single=True,
                  training=dict(PAPER_SOFT_SHARING_TRAINING), unit_lr_mult=100.0, marker="P",
                  colour="#d62728")
