"""MTAN, the multi-task attention network (Liu, Johns and Davison, 2019), on any block backbone.

One shared network (the space's blocks, one copy) and, per task, a soft-attention module
at every block that picks the features the task needs from the shared ones.

MTAN's formulation, for task ``i`` and block ``j`` of the shared network, with ``u_j`` the
output of the block's first layer and ``p_j`` the output of its last layer:

* mask ``a_j^i = h_j^i(g_j^i(z))`` with ``g`` = 1×1 conv → BN → ReLU and ``h`` = 1×1 conv →
  BN → sigmoid (values in ``[0, 1]``), task-specific;
* its input ``z = u_1`` for the first block and ``z = [u_j ; P(f_j(â_{j-1}^i))]`` after it,
  where ``f_j`` is a 3×3 conv → BN → ReLU *shared by the tasks* that maps the previous
  attended features to the block's width and ``P`` pools them to the block's resolution;
* the attended features ``â_j^i = a_j^i ⊙ p_j``; the last ones feed the task's head.

Deviations forced by opaque blocks (a block is one ``nn.Module`` with metadata, so its first
layer cannot be reached):

* the mask is computed from the block *output* ``p_j`` instead of ``u_j``;
* ``P`` resamples ``f_j(â_{j-1})`` to ``p_j``'s spatial size: adaptive max pooling when it
  shrinks (MTAN's 2×2 max pooling for a stride-2 block), bilinear interpolation when it
  grows, nothing when equal;
* the mask's hidden width and the bridge's output width are ``C_j / reduction``; the
  default ``reduction = 1`` is MTAN's SegNet layout (``f_j`` to ``C_j``, masks
  ``[2C, C, C]``); ``reduction = 4`` gives bottleneck-sized modules for wide backbones such
  as ResNet-50 (whose ``reduction = 1`` attention adds about 40M parameters on Cityscapes);
* convolutions before batch norm have no bias (the norm's shift makes it redundant);
* block outputs of shape ``(B, C)`` are treated as ``1×1`` maps;
* MTAN also attends inside its SegNet decoder; here decoding is the task heads' job, so
  attention covers the backbone's blocks only.

Parameter ownership: the blocks and the bridges ``f_j`` are shared; task ``i`` owns its
attention modules and its head.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BranchnasError
from .cross_stitch import resolve_tasks

__all__ = ["MTAN", "AttentionModule"]


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` → ``(B, C, 1, 1)``; 4-D tensors unchanged."""
    if x.dim() == 2:
        return x[:, :, None, None]
    if x.dim() != 4:
        raise BranchnasError(
            f"MTAN takes block outputs of shape (B, C, H, W) or (B, C), got "
            f"{tuple(x.shape)}; use another baseline for this backbone"
        )
    return x


def _check_reduction(reduction: Any) -> int:
    r = int(reduction) if isinstance(reduction, (int, float)) else 0
    if r != reduction or r < 1:
        raise BranchnasError(
            f"MTAN reduction must be a positive integer, got {reduction!r}; use 1 or 4"
        )
    return r


def _resample(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bring a map to ``size``: max pooling to shrink, bilinear interpolation to grow."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return F.adaptive_max_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class AttentionModule(nn.Module):
    """A task's soft mask at one block: 1×1 conv → BN → ReLU → 1×1 conv → BN → sigmoid.

    Args:
        in_channels: channels of the mask's input.
        hidden: width of the hidden layer.
        channels: channels ``C`` of the block output the mask multiplies.
    """

    def __init__(self, in_channels: int, hidden: int, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _bridge(in_channels: int, channels: int) -> nn.Module:
    """MTAN's shared ``f_j``: 3×3 conv → BN → ReLU from the previous block's width."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


class MTAN(nn.Module):
    """Multi-task attention network over the space's backbone.

    Args:
        space: the search space (backbone blocks, heads, task names).
        tasks: the tasks (``None``: all of the space's).
        reduction: the masks' hidden width and the bridges' output width are
            ``max(1, C_j // reduction)`` (1: MTAN's SegNet layout).

    Attributes:
        tasks: the task names.
        blocks: the shared backbone, ``nn.ModuleList`` of D blocks.
        bridges: the shared ``f_j``, ``nn.ModuleList`` of D−1 modules (``bridges[d-1]``
            feeds block ``d``'s masks).
        attention: ``nn.ModuleDict`` task → ``nn.ModuleList`` of D attention modules.
        heads: ``nn.ModuleDict`` task → head, called as ``head(features, out_hw=...)``.

    Raises:
        BranchnasError: for an unknown or repeated task, or a reduction below 1.
    """

    def __init__(
        self, space: Any, tasks: Optional[Sequence[str]] = None, reduction: int = 1
    ) -> None:
        super().__init__()
        names = resolve_tasks(space, tasks)
        self.tasks: Tuple[str, ...] = names
        self.reduction = _check_reduction(reduction)
        backbone = space.backbone
        chans = [int(b.out_channels) for b in backbone.blocks]
        narrow = [max(1, c // self.reduction) for c in chans]
        self.blocks = nn.ModuleList(backbone.make_block(d) for d in range(len(chans)))
        self.bridges = nn.ModuleList(
            _bridge(chans[d - 1], narrow[d]) for d in range(1, len(chans))
        )
        self.attention = nn.ModuleDict({
            t: nn.ModuleList(
                AttentionModule(c if d == 0 else c + narrow[d], narrow[d], c)
                for d, c in enumerate(chans)
            )
            for t in names
        })
        self.heads = nn.ModuleDict({t: space.make_head(t) for t in names})

    def forward(
        self, image: torch.Tensor, tasks: Optional[Sequence[str]] = None
    ) -> Dict[str, torch.Tensor]:
        """Predict the given tasks (all by default); only their attention branches run.

        Args:
            image: ``(B, 3, H, W)``.
            tasks: task names to predict; ``None`` for all.

        Returns:
            task → prediction, each head given ``out_hw = image.shape[-2:]``.
        """
        if tasks is None:
            wanted = list(self.tasks)
        else:
            wanted = [tasks] if isinstance(tasks, str) else list(tasks)
            unknown = [t for t in wanted if t not in self.heads]
            if unknown:
                raise BranchnasError(
                    f"this model has no task(s) {', '.join(map(str, unknown))}; "
                    f"choose from: {', '.join(self.tasks)}"
                )
        attended: Dict[str, torch.Tensor] = {}
        x = image
        for d, block in enumerate(self.blocks):
            x = block(x)
            shared = _as_map(x)
            size = tuple(shared.shape[-2:])
            for t in wanted:
                if d == 0:
                    z = shared
                else:
                    z = torch.cat(
                        [shared, _resample(self.bridges[d - 1](attended[t]), size)], dim=1
                    )
                attended[t] = self.attention[t][d](z) * shared
        out_hw = tuple(image.shape[-2:])
        return {
            t: self.heads[t](attended[t].flatten(1) if x.dim() == 2 else attended[t],
                             out_hw=out_hw)
            for t in wanted
        }

    def shared_parameters(self) -> List[nn.Parameter]:
        """The backbone blocks and the bridges ``f_j``."""
        return list(self.blocks.parameters()) + list(self.bridges.parameters())

    def task_parameters(self, task: str) -> List[nn.Parameter]:
        """The task's attention modules and head.

        Raises:
            BranchnasError: for a task the model does not have.
        """
        if task not in self.heads:
            raise BranchnasError(
                f"this model has no task {task!r}; choose from: {', '.join(self.tasks)}"
            )
        return list(self.attention[task].parameters()) + list(self.heads[task].parameters())

    def param_groups(self, base_lr: float) -> List[Dict[str, Any]]:
        """One optimizer group, everything at ``base_lr`` (MTAN has no special rates)."""
        return [{"name": "network", "params": list(self.parameters()), "lr": float(base_lr)}]

    @staticmethod
    def count_params(
        space: Any, tasks: Optional[Sequence[str]] = None, reduction: int = 1
    ) -> int:
        """Parameters of an MTAN, from the space's metadata.

        With ``h_d = max(1, C_d // reduction)``: ``Σ_d params(block d) + Σ heads +
        Σ_{d≥1} (9·C_{d-1}·h_d + 2·h_d)`` (bridges) ``+ N · Σ_d (in_d·h_d + h_d·C_d + 2·h_d
        + 2·C_d)`` (masks; ``in_0 = C_0``, ``in_d = C_d + h_d``).
        """
        names = resolve_tasks(space, tasks)
        r = _check_reduction(reduction)
        chans = [int(b.out_channels) for b in space.backbone.blocks]
        hid = [max(1, c // r) for c in chans]
        bridges = sum(9 * chans[d - 1] * hid[d] + 2 * hid[d] for d in range(1, len(chans)))
        masks = sum(
            ((c if d == 0 else c + h) * h + h * c + 2 * h + 2 * c)
            for d, (c, h) in enumerate(zip(chans, hid))
        )
        return (
            sum(int(p) for p in space.block_params)
            + sum(int(space.head_params[t]) for t in names)
            + bridges
            + len(names) * masks
        )
