"""Cross-stitch networks (Misra et al., 2016) on any block backbone of a search space.

One copy of the space's backbone per task (a *column*), a cross-stitch unit after every
block, one head per task. The unit after block ``d`` has, for every channel ``c``, an
``N×N`` matrix ``α`` of learnt mixing weights: the input of task ``i``'s next block is

    x̃_i[c] = Σ_j α_d[c, i, j] · x_j[c]

where ``x_j`` is the output of block ``d`` of task ``j``'s column. Following the paper,
the units come after every block (the final one included: leaving it out hurt in
Vandenhende et al.'s appendix A), are initialised as a convex combination that favours the
task's own features and are trained with a learning rate ``unit_lr_mult`` (100) times the
base one, and the columns are initialised from the single-task networks
(:meth:`CrossStitchNet.init_from_single`).

Initialisation for ``N`` tasks (the paper states two): row ``i`` of every channel's matrix
is ``α_S`` on the diagonal and ``α_D`` for each other task, with ``α_D`` defaulting to
``(1 − α_S)/(N − 1)`` so that each row sums to one (for ``N = 2`` and ``α_S = 0.9`` this is
the paper's ``(α_S, α_D) = (0.9, 0.1)``). An explicit ``alpha_d`` is used as given for
every other task, as Vandenhende et al. do for three tasks (``α = 0.8, β = 0.1``).

Parameter ownership (for asynchronous per-task updates): nothing is shared. Task ``i``
owns its column, its head and row ``i`` of every unit (the weights that form *its* next
input); each row is a separate parameter of shape ``(N, C)``.

This module also holds what NDDR-CNN (:mod:`branchnas.models.nddr`), which generalises
cross-stitch units to 1×1 convolutions, shares with it: the column architecture
:class:`ColumnNet` and the task-list check :func:`resolve_tasks`.

Example:
    >>> net = CrossStitchNet(space, alpha_s=0.9)            # doctest: +SKIP
    >>> net.init_from_single({"seg": seg_net, "depth": depth_net})  # doctest: +SKIP
    >>> opt = torch.optim.SGD(net.param_groups(1e-3), momentum=0.9)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import BranchnasError

__all__ = [
    "CrossStitchNet",
    "CrossStitchUnit",
    "ColumnNet",
    "resolve_tasks",
    "require_several",
    "convex_weights",
]

logger = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]
SingleSource = Union[nn.Module, StateDict]


def resolve_tasks(space: Any, tasks: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """The task names a model is built for: ``tasks`` checked against the space's.

    Args:
        space: a search space (``.task_names``).
        tasks: a subset of the space's tasks, in the order to use; ``None`` for all of them.

    Returns:
        The task names as a tuple.

    Raises:
        BranchnasError: for an empty list, an unknown or a repeated task, or a name with
            a '.' (module names cannot hold one).
    """
    known = tuple(space.task_names)
    if tasks is None:
        tasks = known
    if isinstance(tasks, str):
        tasks = [tasks]
    names = tuple(tasks)
    if not names:
        raise BranchnasError("no tasks given; name at least one of: " + ", ".join(known))
    unknown = [t for t in names if t not in known]
    if unknown:
        raise BranchnasError(
            f"task(s) {', '.join(map(str, unknown))} not in search space "
            f"{getattr(space, 'name', '?')!r}; choose from: {', '.join(known)}"
        )
    dotted = [t for t in names if "." in t]
    if dotted:
        raise BranchnasError(
            f"task names may not contain '.', got {', '.join(dotted)}; rename the task(s)"
        )
    repeated = sorted({t for t in names if names.count(t) > 1})
    if repeated:
        raise BranchnasError(f"task(s) {', '.join(repeated)} given twice; name each task once")
    return names


def require_several(tasks: Sequence[str], kind: str) -> None:
    """Raise unless there are at least two tasks to share between.

    Raises:
        BranchnasError: for fewer than two tasks.
    """
    if len(tasks) < 2:
        raise BranchnasError(
            f"{kind} shares between tasks but got only {', '.join(tasks) or 'none'}; "
            "give at least two tasks or use the 'single' baseline"
        )


def convex_weights(
    n_tasks: int, alpha_self: float, alpha_other: Optional[float], what: str
) -> Tuple[float, float]:
    """Check a (self, other) initialisation and fill in the convex default for ``other``.

    Args:
        n_tasks: number of tasks ``N`` (at least 2).
        alpha_self: weight of a task's own features.
        alpha_other: weight of each other task's features; ``None`` for
            ``(1 − alpha_self)/(N − 1)`` (each row sums to one).
        what: the unit's name, for messages.

    Returns:
        ``(alpha_self, alpha_other)`` as floats.

    Raises:
        BranchnasError: for weights outside ``[0, 1]``.
    """
    a = float(alpha_self)
    if not 0.0 <= a <= 1.0:
        raise BranchnasError(
            f"{what} self weight must lie in [0, 1], got {alpha_self}; use e.g. 0.9"
        )
    b = (1.0 - a) / (n_tasks - 1) if alpha_other is None else float(alpha_other)
    if not 0.0 <= b <= 1.0:
        raise BranchnasError(
            f"{what} other-task weight must lie in [0, 1], got {alpha_other}; "
            f"omit it for the convex default (1 - {a}) / (N - 1)"
        )
    total = a + (n_tasks - 1) * b
    if not math.isclose(total, 1.0, rel_tol=0.0, abs_tol=1e-9):
        logger.warning(
            "%s initialisation %.4g + %d x %.4g = %.4g is not a convex combination; "
            "features change scale at initialisation",
            what, a, n_tasks - 1, b, total,
        )
    return a, b


class CrossStitchUnit(nn.Module):
    """Task ``index``'s row of a cross-stitch unit: per channel, a weight for every task.

    Args:
        n_tasks: number of tasks ``N``.
        channels: channels ``C`` of the block output it combines.
        index: the task whose next input this row produces.
        alpha_s: initial weight of the task's own features.
        alpha_d: initial weight of every other task's features.

    Shape:
        input: the stacked block outputs ``(N, B, C, *spatial)``; output ``(B, C, *spatial)``.
    """

    def __init__(
        self, n_tasks: int, channels: int, index: int, alpha_s: float, alpha_d: float
    ) -> None:
        super().__init__()
        self.n_tasks, self.channels, self.index = int(n_tasks), int(channels), int(index)
        self.weight = nn.Parameter(torch.empty(self.n_tasks, self.channels))
        self.reset_parameters(alpha_s, alpha_d)

    @torch.no_grad()
    def reset_parameters(self, alpha_s: float, alpha_d: float) -> None:
        """Set ``α_S`` for the own task and ``α_D`` for every other task, on every channel."""
        self.weight.fill_(alpha_d)
        self.weight[self.index].fill_(alpha_s)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        shape = (self.n_tasks, 1, self.channels) + (1,) * (stacked.dim() - 3)
        return (self.weight.view(shape) * stacked).sum(0)

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, channels={self.channels}, index={self.index}"


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


class ColumnNet(nn.Module):
    """One backbone column per task, with a task-mixing unit after every block.

    The common architecture of cross-stitch networks and NDDR-CNN. Subclasses give the
    unit factory and say how the N block outputs are presented to the units
    (:meth:`_gather`); every unit is one task's row, so ownership of parameters is clear.

    Args:
        space: the search space (backbone blocks, heads, task names).
        tasks: the tasks to build for (at least two of the space's).
        unit_lr_mult: learning-rate multiplier of the units in :meth:`param_groups`.
        make_unit: ``(n_tasks, channels, index) -> nn.Module``, task ``index``'s unit
            after a block with ``channels`` output channels.

    Attributes:
        tasks: the task names; task ``i`` owns ``columns[i]`` and ``units[d][i]``.
        columns: ``nn.ModuleList`` per task of ``nn.ModuleList`` of the D blocks.
        units: ``nn.ModuleList`` per depth of ``nn.ModuleList`` per task of units.
        heads: ``nn.ModuleDict`` task → head, called as ``head(features, out_hw=...)``.
    """

    def __init__(
        self,
        space: Any,
        tasks: Sequence[str],
        unit_lr_mult: float,
        make_unit: Callable[[int, int, int], nn.Module],
    ) -> None:
        super().__init__()
        names = resolve_tasks(space, tasks)
        require_several(names, type(self).__name__)
        if not float(unit_lr_mult) > 0:
            raise BranchnasError(
                f"unit_lr_mult must be positive, got {unit_lr_mult}; use e.g. 100"
            )
        self.tasks: Tuple[str, ...] = names
        self.unit_lr_mult = float(unit_lr_mult)
        backbone = space.backbone
        depth = len(backbone.blocks)
        self.columns = nn.ModuleList(
            nn.ModuleList(backbone.make_block(d) for d in range(depth)) for _ in names
        )
        self.units = nn.ModuleList(
            nn.ModuleList(
                make_unit(len(names), int(backbone.blocks[d].out_channels), i)
                for i in range(len(names))
            )
            for d in range(depth)
        )
        self.heads = nn.ModuleDict({t: space.make_head(t) for t in names})

    # ------------------------------------------------------------------ subclass hook
    def _gather(self, feats: List[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ forward
    @property
    def depth(self) -> int:
        """Number of blocks D."""
        return len(self.units)

    def _wanted(self, tasks: Optional[Sequence[str]]) -> List[str]:
        if tasks is None:
            return list(self.tasks)
        wanted = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [t for t in wanted if t not in self.heads]
        if unknown:
            raise BranchnasError(
                f"this model has no task(s) {', '.join(map(str, unknown))}; "
                f"choose from: {', '.join(self.tasks)}"
            )
        return wanted

    def forward(
        self, image: torch.Tensor, tasks: Optional[Sequence[str]] = None
    ) -> Dict[str, torch.Tensor]:
        """Predict the given tasks (all of them by default).

        Every column runs to the last block whatever ``tasks`` is (each unit reads all
        columns); only the wanted tasks' last units and heads run.

        Args:
            image: ``(B, 3, H, W)``.
            tasks: task names to predict; ``None`` for all.

        Returns:
            task → prediction, each head given ``out_hw = image.shape[-2:]``.
        """
        wanted = self._wanted(tasks)
        index = {t: i for i, t in enumerate(self.tasks)}
        feats = [image] * len(self.tasks)
        last = self.depth - 1
        for d in range(self.depth):
            feats = [col[d](x) for col, x in zip(self.columns, feats)]
            mixed = self._gather(feats)
            rows = range(len(self.tasks)) if d < last else [index[t] for t in wanted]
            feats = [self.units[d][i](mixed) if i in rows else feats[i]
                     for i in range(len(self.tasks))]
        out_hw = tuple(image.shape[-2:])
        return {t: self.heads[t](feats[index[t]], out_hw=out_hw) for t in wanted}

    # ------------------------------------------------------------------ parameters
    def _index(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise BranchnasError(
                f"this model has no task {task!r}; choose from: {', '.join(self.tasks)}"
            ) from None

    def shared_parameters(self) -> List[nn.Parameter]:
        """Parameters no single task owns: none (every unit row belongs to one task)."""
        return []

    def task_parameters(self, task: str) -> List[nn.Parameter]:
        """Task's column, head and its row of every unit.

        Raises:
            BranchnasError: for a task the model does not have.
        """
        i = self._index(task)
        params = list(self.columns[i].parameters()) + list(self.heads[task].parameters())
        for units in self.units:
            params.extend(units[i].parameters())
        return params

    def unit_parameters(self) -> List[nn.Parameter]:
        """The parameters of all units (trained at ``unit_lr_mult`` × the base rate)."""
        return list(self.units.parameters())

    def param_groups(self, base_lr: float) -> List[Dict[str, Any]]:
        """Optimizer parameter groups: the network at ``base_lr``, the units faster.

        Args:
            base_lr: the base learning rate.

        Returns:
            ``[{"name": "network", "params": [...], "lr": base_lr},
            {"name": "units", "params": [...], "lr": base_lr * unit_lr_mult}]``; any
            ``torch.optim`` optimizer accepts it (the extra ``name`` key is kept).
        """
        unit_ids = {id(p) for p in self.unit_parameters()}
        network = [p for p in self.parameters() if id(p) not in unit_ids]
        return [
            {"name": "network", "params": network, "lr": float(base_lr)},
            {"name": "units", "params": self.unit_parameters(),
             "lr": float(base_lr) * self.unit_lr_mult},
        ]

    # ------------------------------------------------------------------ initialisation
    def init_from_single(
        self, sources: Union[nn.Module, Mapping[str, SingleSource]]
    ) -> None:
        """Initialise every task's column and head from its single-task network.

        Args:
            sources: either one ``BranchedNet`` holding all tasks (e.g. the ``single``
                baseline; each task's path through its tree is used), or a mapping
                task → the task's single-task ``BranchedNet`` or its ``state_dict()``.
                A state dict must come from a one-task network (keys ``nodes.{d}.0.*``
                and ``heads.{task}.*``). Units keep their initialisation.

        Raises:
            BranchnasError: for a missing task, a network of another depth, or weights
                that do not fit (another backbone or head).
        """
        if isinstance(sources, nn.Module):
            per_task: Mapping[str, SingleSource] = {t: sources for t in self.tasks}
        else:
            per_task = sources
            missing = [t for t in self.tasks if t not in per_task]
            if missing:
                raise BranchnasError(
                    f"no single-task weights for task(s) {', '.join(missing)}; "
                    "give one network or state dict per task"
                )
        for i, task in enumerate(self.tasks):
            state, groups = _single_state(per_task[task], task, self.depth)
            for d in range(self.depth):
                prefix = f"nodes.{d}.{groups[d]}."
                _load_part(self.columns[i][d], state, prefix,
                           f"block {d + 1} of task {task!r}")
            _load_part(self.heads[task], state, f"heads.{task}.", f"head of task {task!r}")
        logger.info("initialised %s columns of %s from single-task weights",
                    type(self).__name__, ", ".join(self.tasks))


def _single_state(
    source: SingleSource, task: str, depth: int
) -> Tuple[StateDict, List[int]]:
    """The state dict of ``source`` and the group holding ``task`` at every depth."""
    if isinstance(source, nn.Module):
        tree = getattr(source, "tree", None)
        if tree is None:
            raise BranchnasError(
                f"the network given for task {task!r} is not a BranchedNet (it has no tree); "
                "pass the single-task BranchedNet or its state_dict()"
            )
        if task not in tree.tasks:
            raise BranchnasError(
                f"the network given for task {task!r} predicts only "
                f"{', '.join(tree.tasks)}; pass the network trained for {task!r}"
            )
        if tree.depth != depth:
            raise BranchnasError(
                f"the network given for task {task!r} has {tree.depth} blocks, this model "
                f"{depth}; use weights trained on the same search space"
            )
        return source.state_dict(), [tree.group_of(d, task) for d in range(depth)]
    state = source
    groups: List[int] = []
    for d in range(depth):
        found = {k.split(".")[2] for k in state if k.startswith(f"nodes.{d}.")}
        if not found:
            raise BranchnasError(
                f"the state dict given for task {task!r} has no block {d + 1} "
                f"(no 'nodes.{d}.*' keys); pass a BranchedNet state_dict() of the same space"
            )
        if found != {"0"}:
            raise BranchnasError(
                f"the state dict given for task {task!r} holds {len(found)} groups at "
                f"block {d + 1}; pass the BranchedNet itself so its tree names the task's group"
            )
        groups.append(0)
    return state, groups


def _load_part(module: nn.Module, state: StateDict, prefix: str, what: str) -> None:
    part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(part, strict=True)
    except RuntimeError as err:
        raise BranchnasError(
            f"cannot load the {what} from the single-task weights ({_one_line(err)}); "
            "use weights trained on the same search space"
        ) from None


class CrossStitchNet(ColumnNet):
    """Cross-stitch network: one column per task, a cross-stitch unit after every block.

    Args:
        space: the search space (backbone blocks, heads, task names).
        tasks: the tasks (``None``: all of the space's); at least two.
        alpha_s: initial same-task weight ``α_S`` (paper: 0.9 works best).
        alpha_d: initial weight of each other task ``α_D``; ``None`` for
            ``(1 − α_S)/(N − 1)`` (convex rows; 0.1 for two tasks).
        unit_lr_mult: learning rate of the units relative to the base one (paper: 100).

    Raises:
        BranchnasError: for fewer than two tasks, an unknown task, weights outside
            ``[0, 1]`` or a non-positive multiplier.
    """

    def __init__(
        self,
        space: Any,
        tasks: Optional[Sequence[str]] = None,
        alpha_s: float = 0.9,
        alpha_d: Optional[float] = None,
        unit_lr_mult: float = 100.0,
    ) -> None:
        names = resolve_tasks(space, tasks)
        require_several(names, "cross_stitch")
        a, b = convex_weights(len(names), alpha_s, alpha_d, "cross-stitch")
        super().__init__(
            space, names, unit_lr_mult,
            lambda n, c, i: CrossStitchUnit(n, c, i, alpha_s=a, alpha_d=b),
        )
        self.alpha_s, self.alpha_d = a, b

    def _gather(self, feats: List[torch.Tensor]) -> torch.Tensor:
        return torch.stack(feats)

    @staticmethod
    def count_params(space: Any, tasks: Optional[Sequence[str]] = None, **_: Any) -> int:
        """Parameters of a cross-stitch network, from the space's metadata.

        ``N · (Σ_d params(block d)) + Σ heads + Σ_d N² · C_d`` (an ``N×N`` matrix per
        channel after every block).
        """
        names = resolve_tasks(space, tasks)
        n = len(names)
        blocks = space.backbone.blocks
        return (
            n * sum(int(p) for p in space.block_params)
            + sum(int(space.head_params[t]) for t in names)
            + sum(n * n * int(b.out_channels) for b in blocks)
        )
