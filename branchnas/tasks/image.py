"""Image-level task types: classification (C classes) and binary attributes.

Metric values are percent of the labelled samples of the whole dataset.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import BranchnasError
from .base import REQUIRED, Meter, Task, _fmt_shape, _is_int, register_task_type

__all__ = ["ClassificationTask", "BinaryTask"]

_NAN = math.nan


@register_task_type("classification")
class ClassificationTask(Task):
    """Single-label classification: cross-entropy; top-1 and top-5 accuracy.

    Formats: pred logits ``(B, C)``, target int64 ``(B,)`` with -1 for "no label".

    Params:
        num_classes: number of classes C (>= 2).

    Metrics (percent): ``top1``; ``top5``: the true class is among the k = min(5, C)
    highest logits (so with C ≤ 5 it is always 100).
    """

    metric_directions = {"top1": True, "top5": True}
    primary_metric = "top1"  # Taskonomy's table uses top-5: its space overrides it
    param_defaults = {"num_classes": REQUIRED}
    dense = False
    default_head = "mlp"
    invalid = -1
    target_dtype = torch.int64

    def _validate_params(self) -> None:
        c = self.params["num_classes"]
        if not _is_int(c) or c < 2:
            raise BranchnasError(
                f"classification task {self.name!r}: num_classes must be an integer >= 2, "
                f"got {c!r}"
            )
        self.params["num_classes"] = int(c)

    @property
    def out_channels(self) -> int:
        return self.params["num_classes"]

    def _check_shapes(self, pred: Tensor, target: Tensor) -> None:
        c = self.out_channels
        if pred.dim() != 2 or pred.shape[1] != c:
            raise BranchnasError(
                f"classification task {self.name!r}: pred must be logits of shape (B, {c}), "
                f"got {_fmt_shape(pred.shape)}; check the head's out_channels"
            )
        if tuple(target.shape) != (pred.shape[0],):
            raise BranchnasError(
                f"classification task {self.name!r}: target must have shape "
                f"({pred.shape[0]},), got {_fmt_shape(target.shape)}"
            )
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise BranchnasError(
                f"classification task {self.name!r}: target must hold integer class ids "
                f"(int64), got dtype {target.dtype}"
            )

    def _target_shape(self, batch: Optional[int], hw: Tuple[int, int]) -> Tuple[int, ...]:
        return () if batch is None else (batch,)

    def _labelled(self, target: Tensor) -> Tensor:
        return target != -1

    def _check_labels(self, target: Tensor, mask: Tensor) -> None:
        c = self.out_channels
        bad = mask & ((target < 0) | (target >= c))
        if bool(bad.any()):
            raise BranchnasError(
                f"classification task {self.name!r}: target holds class id "
                f"{int(target[bad][0])} outside [0, {c}); use -1 for a missing label"
            )

    def _elementwise_loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        safe = torch.where(valid, target.long(), torch.zeros((), dtype=torch.long,
                                                             device=target.device))
        return F.cross_entropy(pred, safe, reduction="none")

    def meter(self) -> "ClassificationMeter":
        return ClassificationMeter(self)


class ClassificationMeter(Meter):
    """Counts of top-1 and top-k hits over labelled samples."""

    def reset(self) -> None:
        self.top1 = 0
        self.topk = 0
        self.count = 0

    def _update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        logits = pred[valid]
        truth = target[valid].long()
        k = min(5, self.task.out_channels)
        best = logits.topk(k, dim=1).indices
        hits = best == truth.unsqueeze(1)
        self.top1 += int(hits[:, 0].sum())
        self.topk += int(hits.any(dim=1).sum())
        self.count += truth.numel()

    def compute(self) -> Dict[str, float]:
        if self.count == 0:
            return {"top1": _NAN, "top5": _NAN}
        return {"top1": 100.0 * self.top1 / self.count, "top5": 100.0 * self.topk / self.count}


@register_task_type("binary")
class BinaryTask(Task):
    """A binary attribute (e.g. one CelebA attribute): BCE with logits; accuracy.

    Formats: pred logit ``(B, 1)`` (``(B,)`` accepted), target float ``(B,)`` in {0, 1} with
    NaN for "no label" (soft targets in [0, 1] are accepted by the loss).

    Metrics (percent): ``accuracy``: the prediction is positive where the logit is > 0, and
    the label positive where the target is ≥ 0.5.
    """

    metric_directions = {"accuracy": True}
    primary_metric = "accuracy"
    dense = False
    default_head = "mlp"
    invalid = math.nan

    @property
    def out_channels(self) -> int:
        return 1

    def _check_shapes(self, pred: Tensor, target: Tensor) -> None:
        if not (pred.dim() == 2 and pred.shape[1] == 1) and pred.dim() != 1:
            raise BranchnasError(
                f"binary task {self.name!r}: pred must be logits of shape (B, 1), got "
                f"{_fmt_shape(pred.shape)}; check the head's out_channels"
            )
        if tuple(target.shape) != (pred.shape[0],):
            raise BranchnasError(
                f"binary task {self.name!r}: target must have shape ({pred.shape[0]},), got "
                f"{_fmt_shape(target.shape)}"
            )
        if not target.is_floating_point():
            raise BranchnasError(
                f"binary task {self.name!r}: target must be a float tensor with NaN for "
                f"missing labels, got dtype {target.dtype}"
            )

    def _target_shape(self, batch: Optional[int], hw: Tuple[int, int]) -> Tuple[int, ...]:
        return () if batch is None else (batch,)

    def _labelled(self, target: Tensor) -> Tensor:
        return torch.isfinite(target)

    def _check_labels(self, target: Tensor, mask: Tensor) -> None:
        if bool((mask & ((target < 0) | (target > 1))).any()):
            raise BranchnasError(
                f"binary task {self.name!r}: labelled target values must lie in [0, 1]; "
                f"mark missing labels with NaN"
            )

    def _elementwise_loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        x = pred.reshape(-1)
        y = torch.where(valid, target, torch.zeros((), dtype=target.dtype, device=target.device))
        return F.binary_cross_entropy_with_logits(x, y.to(x.dtype), reduction="none")

    def meter(self) -> "BinaryMeter":
        return BinaryMeter(self)


class BinaryMeter(Meter):
    """Count of correct sign predictions over labelled samples."""

    def reset(self) -> None:
        self.correct = 0
        self.count = 0

    def _update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        guess = pred.reshape(-1)[valid] > 0
        truth = target[valid] >= 0.5
        self.correct += int((guess == truth).sum())
        self.count += int(valid.sum())

    def compute(self) -> Dict[str, float]:
        return {"accuracy": 100.0 * self.correct / self.count if self.count else _NAN}
