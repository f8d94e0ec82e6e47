"""NDDR-CNN (Gao et al., 2019) on any block backbone of a search space.

NDDR-CNN ("neural discriminative dimensionality reduction") replaces the cross-stitch
unit's per-channel scalars by a learnt 1×1 convolution: after every block ``d``, the ``N``
tasks' outputs (``C_d`` channels each) are concatenated, and task ``i``'s next input is

    x̃_i = BN_i(W_i ∗ [x_1; …; x_N])          W_i: (C_d, N·C_d, 1, 1), no bias

so each task reduces the ``N·C_d`` channels back to ``C_d`` in its own way. It shares the
column architecture of :class:`~branchnas.models.cross_stitch.ColumnNet`: one backbone copy
per task, one unit after every block (the last one included), one head per task.

Initialisation (Gao et al.; Vandenhende et al., appendix A): ``W_i`` is ``α·I`` on the
task's own channels and ``β·I`` on each other task's channels (zero elsewhere); ``β``
defaults to ``(1 − α)/(N − 1)``, so ``α = 0.9`` gives ``β = 0.1`` for two tasks and
``β = 0.05`` for three (the appendix's Cityscapes setting; its other one, ``α = 0.8,
β = 0.1``, is ``alpha=0.8``). Batch norm starts at weight 1, bias 0. The units (convolution
and batch norm) train at ``unit_lr_mult`` (100) × the base learning rate and the columns
start from the single-task networks (:meth:`NDDRNet.init_from_single`).

Block outputs may be ``(B, C, H, W)`` or ``(B, C)`` (treated as 1×1 maps).

Parameter ownership: nothing is shared; task ``i`` owns its column, its head and its
NDDR unit after every block.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from ..errors import BranchnasError
from .cross_stitch import ColumnNet, convex_weights, require_several, resolve_tasks

__all__ = ["NDDRNet", "NDDRUnit"]


class NDDRUnit(nn.Module):
    """Task ``index``'s NDDR unit: 1×1 convolution ``N·C → C`` (no bias), then batch norm.

    Args:
        n_tasks: number of tasks ``N``.
        channels: channels ``C`` of each task's block output.
        index: the task whose next input this unit produces.
        alpha: initial weight of the task's own channels (identity scaled by ``alpha``).
        beta: initial weight of every other task's channels.

    Shape:
        input: the concatenated block outputs ``(B, N·C, H, W)`` or ``(B, N·C)``;
        output: ``(B, C, H, W)`` or ``(B, C)``.
    """

    def __init__(
        self, n_tasks: int, channels: int, index: int, alpha: float, beta: float
    ) -> None:
        super().__init__()
        self.n_tasks, self.channels, self.index = int(n_tasks), int(channels), int(index)
        self.conv = nn.Conv2d(self.n_tasks * self.channels, self.channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(self.channels)
        self.reset_parameters(alpha, beta)

    @torch.no_grad()
    def reset_parameters(self, alpha: float, beta: float) -> None:
        """``W[c, j·C + c] = alpha`` for the own task ``j``, ``beta`` for the others, else 0."""
        c = self.channels
        weight = torch.zeros(c, self.n_tasks * c)
        eye = torch.eye(c)
        for j in range(self.n_tasks):
            weight[:, j * c:(j + 1) * c] = eye * (alpha if j == self.index else beta)
        self.conv.weight.copy_(weight.view(c, self.n_tasks * c, 1, 1))
        self.bn.reset_parameters()

    def forward(self, concat: torch.Tensor) -> torch.Tensor:
        if concat.dim() == 2:
            return self.bn(self.conv(concat[:, :, None, None]))[:, :, 0, 0]
        if concat.dim() != 4:
            raise BranchnasError(
                f"NDDR units take block outputs of shape (B, C, H, W) or (B, C), got "
                f"{tuple(concat.shape)}; use another baseline for this backbone"
            )
        return self.bn(self.conv(concat))

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, channels={self.channels}, index={self.index}"


class NDDRNet(ColumnNet):
    """NDDR-CNN: one column per task, an NDDR unit per task after every block.

    Args:
        space: the search space (backbone blocks, heads, task names).
        tasks: the tasks (``None``: all of the space's); at least two.
        alpha: initial weight of a task's own channels (paper appendix: 0.9 or 0.8).
        beta: initial weight of each other task's channels; ``None`` for
            ``(1 − alpha)/(N − 1)``.
        unit_lr_mult: learning rate of the NDDR units relative to the base one (100).

    Raises:
        BranchnasError: for fewer than two tasks, an unknown task, weights outside
            ``[0, 1]`` or a non-positive multiplier.
    """

    def __init__(
        self,
        space: Any,
        tasks: Optional[Sequence[str]] = None,
        alpha: float = 0.9,
        beta: Optional[float] = None,
        unit_lr_mult: float = 100.0,
    ) -> None:
        names = resolve_tasks(space, tasks)
        require_several(names, "nddr")
        a, b = convex_weights(len(names), alpha, beta, "NDDR")
        super().__init__(
            space, names, unit_lr_mult, lambda n, c, i: NDDRUnit(n, c, i, alpha=a, beta=b)
        )
        self.alpha, self.beta = a, b

    def _gather(self, feats: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat(feats, dim=1)

    @staticmethod
    def count_params(space: Any, tasks: Optional[Sequence[str]] = None, **_: Any) -> int:
        """Parameters of an NDDR-CNN, from the space's metadata.

        ``N · Σ_d params(block d) + Σ heads + Σ_d N · (N·C_d² + 2·C_d)`` (per task and
        block, an ``N·C_d → C_d`` 1×1 convolution and a batch norm).
        """
        names = resolve_tasks(space, tasks)
        n = len(names)
        return (
            n * sum(int(p) for p in space.block_params)
            + sum(int(space.head_params[t]) for t in names)
            + sum(n * (n * int(b.out_channels) ** 2 + 2 * int(b.out_channels))
                  for b in space.backbone.blocks)
        )
