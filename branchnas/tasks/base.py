"""The task-type registry and the pieces every task type shares.

A *task type* (segmentation, depth, ...) is a :class:`Task` subclass registered under a
name with :func:`register_task_type`. A *task* is an instance of one, made by
:func:`create_task` with a user-chosen name and the type's parameters. The task knows its
prediction/target formats, its loss, its metrics (with their direction) and how missing
labels are marked; see the "Tasks" section of ``docs/internals.md``.

Missing labels are handled at two levels, identically in losses and meters:

* ``present`` (bool ``(B,)``): False means the sample has no label for this task at all;
  it contributes nothing.
* the type's invalid marker inside the target (255, NaN or -1): those elements contribute
  nothing.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
from torch import Tensor

from .._registry import Registry
from ..errors import BranchnasError

__all__ = [
    "Task",
    "Meter",
    "REQUIRED",
    "register_task_type",
    "list_task_types",
    "get_task_type",
    "create_task",
    "masked_mean",
]

ShapeLike = Union[Tensor, torch.Size, Sequence[int]]


class _Required:
    """Sentinel for a task parameter without a default."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
"""Marks a task parameter that has no default in ``Task.param_defaults``."""

_TASK_TYPES: "Registry[Type[Task]]" = Registry("task type")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


class Task:
    """One task of a multi-task problem: formats, loss, metrics and missing-label handling.

    Subclasses set the class attributes below and implement ``out_channels``,
    :meth:`_check_shapes`, :meth:`_labelled` (and :meth:`_check_labels` where labels can be
    illegal), :meth:`_elementwise_loss`, :meth:`_target_shape` and :meth:`meter`.

    Attributes:
        name: the task's name (the key in predictions, labels, trees).
        type: the registered task-type name.
        params: the task-type parameters, defaults filled in.
        metrics: metric name -> True if higher is better.
        primary: the metric Δm is measured on (the type's :attr:`primary_metric` unless the
            task was made with ``primary=``, e.g. a space's ``primary = "top5"``).
        dense: True for per-pixel outputs, False for image-level outputs.
        default_head: head kind a search space uses unless it names another.
        invalid: the marker for an element without a label (255, NaN or -1).
        target_dtype: dtype of targets made by :meth:`empty_target` (None: default float).
    """

    type: ClassVar[str] = ""
    dense: ClassVar[bool] = True
    default_head: ClassVar[str] = "fcn"
    invalid: Union[int, float] = math.nan
    metric_directions: ClassVar[Dict[str, bool]] = {}
    # The one measure per task the papers' Δm tables use (mIoU, depth error, mean angle,
    # top-1, ...); every registered type declares it (checked by register_task_type).
    primary_metric: ClassVar[str] = ""
    param_defaults: ClassVar[Dict[str, Any]] = {}
    target_dtype: ClassVar[Optional[torch.dtype]] = None

    def __init__(self, name: str, primary: Optional[str] = None, **params: Any) -> None:
        if not isinstance(name, str) or not name:
            raise BranchnasError(f"task name must be a non-empty string, got {name!r}")
        unknown = sorted(set(params) - set(self.param_defaults))
        if unknown:
            accepted = ", ".join(sorted(self.param_defaults)) or "none"
            raise BranchnasError(
                f"task {name!r} of type {self.type!r} got unknown parameter(s) "
                f"{', '.join(unknown)}; accepted: {accepted}"
            )
        resolved = {k: params.get(k, v) for k, v in self.param_defaults.items()}
        missing = sorted(k for k, v in resolved.items() if v is REQUIRED)
        if missing:
            raise BranchnasError(
                f"task {name!r} of type {self.type!r} needs parameter(s) {', '.join(missing)}; "
                f"add them to the task's definition"
            )
        self.name = name
        self.params: Dict[str, Any] = resolved
        self.metrics: Dict[str, bool] = dict(self.metric_directions)
        chosen = primary if primary is not None else (
            self.primary_metric or next(iter(self.metrics), ""))
        if chosen not in self.metrics:
            raise BranchnasError(
                f"task {name!r} of type {self.type!r}: primary measure {chosen!r} is not one of "
                f"its metrics; choose from: {', '.join(self.metrics) or 'none'}"
            )
        self.primary: str = chosen
        self._validate_params()

    # ----------------------------------------------------------------- to override
    def _validate_params(self) -> None:
        """Check ``self.params``; raise :class:`BranchnasError` on a bad value."""

    @property
    def out_channels(self) -> int:
        """Channels of the prediction (classes for segmentation/classification)."""
        raise NotImplementedError

    def _check_shapes(self, pred: Tensor, target: Tensor) -> None:
        """Raise :class:`BranchnasError` unless ``pred`` and ``target`` fit this type."""
        raise NotImplementedError

    def _labelled(self, target: Tensor) -> Tensor:
        """Bool mask of elements not carrying the invalid marker (no value checks)."""
        raise NotImplementedError

    def _check_labels(self, target: Tensor, mask: Tensor) -> None:
        """Raise :class:`BranchnasError` if a labelled element (``mask``) is illegal."""

    def _elementwise_loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        """Loss per element, same shape as ``valid``; finite where ``valid`` is False.

        ``valid`` already includes ``present``.
        """
        raise NotImplementedError

    def _target_shape(self, batch: Optional[int], hw: Tuple[int, int]) -> Tuple[int, ...]:
        """Shape of a target for one sample (``batch`` None) or a batch."""
        raise NotImplementedError

    def meter(self) -> "Meter":
        """A fresh accumulator of this task's metrics over a dataset."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared API
    def valid_mask(self, target: Tensor, present: Optional[Tensor] = None) -> Tensor:
        """Bool mask of the elements that count: labelled, and in a present sample.

        Args:
            target: a batch of targets in this type's format.
            present: bool ``(B,)``; None means every sample is present.

        Returns:
            ``(B, H, W)`` for dense tasks (one entry per pixel), ``(B,)`` otherwise.

        Raises:
            BranchnasError: if a counted element holds an illegal value (a class id out of
                range, an edge label outside [0, 1], ...). Absent samples are not checked.
        """
        mask = self._labelled(target)
        if present is not None:
            mask = mask & present.to(mask.device).view(-1, *([1] * (mask.dim() - 1)))
        self._check_labels(target, mask)
        return mask

    def check_inputs(
        self, pred: Tensor, target: Tensor, present: Optional[Tensor] = None
    ) -> Tensor:
        """Validate a batch and return ``present`` as a bool ``(B,)`` tensor on pred's device.

        Args:
            pred: the prediction, in this type's format.
            target: the target, in this type's format.
            present: bool ``(B,)``; None means every sample is labelled.

        Raises:
            BranchnasError: on shapes or dtypes that do not fit the type.
        """
        if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
            raise BranchnasError(
                f"task {self.name!r}: pred and target must be torch tensors, got "
                f"{type(pred).__name__} and {type(target).__name__}"
            )
        self._check_shapes(pred, target)
        batch = pred.shape[0]
        if present is None:
            return torch.ones(batch, dtype=torch.bool, device=pred.device)
        if not isinstance(present, Tensor):
            present = torch.as_tensor(present)
        if present.dim() != 1 or present.shape[0] != batch:
            raise BranchnasError(
                f"task {self.name!r}: present must be a bool tensor of shape ({batch},), got "
                f"shape {_fmt_shape(present.shape)}"
            )
        return present.to(device=pred.device, dtype=torch.bool)

    def loss(
        self,
        pred: Tensor,
        target: Tensor,
        present: Optional[Tensor] = None,
        reduction: str = "mean",
    ) -> Tensor:
        """The training loss.

        Args:
            pred: the prediction, in this type's format (``docs/internals.md``).
            target: the target, in this type's format, invalid elements marked.
            present: bool ``(B,)``, False for samples without a label; None means all present.
            reduction: ``"mean"``: a scalar, the mean over the valid elements of the present
                samples (an exact zero, still attached to ``pred``'s graph, when there are
                none). ``"none"``: a ``(B,)`` tensor, each sample's mean over its valid
                elements, NaN for a sample with none (absent samples included).

        Returns:
            The loss tensor.

        Raises:
            BranchnasError: on bad shapes, illegal label values or an unknown reduction.
        """
        if reduction not in ("mean", "none"):
            raise BranchnasError(
                f"unknown loss reduction {reduction!r}; choose 'mean' or 'none'"
            )
        present = self.check_inputs(pred, target, present)
        if pred.dtype in (torch.float16, torch.bfloat16):
            pred = pred.float()  # sums over a whole batch of pixels overflow half precision
        target = target.to(pred.device)
        valid = self.valid_mask(target, present)
        elem = self._elementwise_loss(pred, target, valid)
        return masked_mean(elem, valid, reduction)

    def empty_target(self, shape_like: ShapeLike) -> Tensor:
        """A target meaning "no label": every element carries the invalid marker.

        Args:
            shape_like: the image (or its shape) the target belongs to: ``(3, H, W)`` or
                ``(H, W)`` gives one sample's target, ``(B, 3, H, W)`` a batch's. Only the
                spatial size (last two entries) and the batch size are used; image-level
                tasks ignore the spatial size. A tensor also sets the device.

        Returns:
            ``(H, W)``/``(C, H, W)`` (dense) or a 0-d tensor (image-level), with a leading
            batch dimension for a 4-d ``shape_like``.

        Raises:
            BranchnasError: if ``shape_like`` does not have 2 to 4 entries.
        """
        device = shape_like.device if isinstance(shape_like, Tensor) else None
        shape = tuple(shape_like.shape) if isinstance(shape_like, Tensor) else tuple(shape_like)
        if not 2 <= len(shape) <= 4:
            raise BranchnasError(
                f"task {self.name!r}: empty_target needs an image or its shape ((H, W), "
                f"(3, H, W) or (B, 3, H, W)), got shape {_fmt_shape(shape)}"
            )
        batch = int(shape[0]) if len(shape) == 4 else None
        hw = (int(shape[-2]), int(shape[-1]))
        dtype = self.target_dtype or torch.get_default_dtype()
        return torch.full(self._target_shape(batch, hw), self.invalid, dtype=dtype, device=device)

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}(name={self.name!r}{args})"


class Meter:
    """Accumulates a task's metrics exactly over a whole dataset.

    Call :meth:`update` once per batch and :meth:`compute` at the end. Sums are kept in
    float64 and counts as integers, so the result equals a single computation over the
    concatenated dataset (never a mean of per-batch means). A metric with no valid
    element in the whole dataset is NaN.
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        raise NotImplementedError

    def update(self, pred: Tensor, target: Tensor, present: Optional[Tensor] = None) -> None:
        """Add one batch (same formats and ``present`` semantics as :meth:`Task.loss`)."""
        with torch.no_grad():
            present = self.task.check_inputs(pred, target, present)
            pred = pred.detach()
            target = target.detach().to(pred.device)
            valid = self.task.valid_mask(target, present)
            self._update(pred, target, valid)

    def _update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> Dict[str, float]:
        """The metrics over everything seen since the last :meth:`reset`."""
        raise NotImplementedError


def masked_mean(elem: Tensor, valid: Tensor, reduction: str = "mean") -> Tensor:
    """Mean of ``elem`` over the True entries of ``valid``, overall or per sample.

    Entries where ``valid`` is False are replaced (not multiplied) by zero, so they add
    neither value nor gradient. With nothing valid the ``"mean"`` result is an exact 0 that
    keeps ``elem``'s ``grad_fn``; a sample with nothing valid is NaN under ``"none"``.

    Args:
        elem: ``(B, ...)`` per-element values.
        valid: bool, same shape as ``elem``.
        reduction: ``"mean"`` (scalar) or ``"none"`` (``(B,)``).

    Returns:
        The reduced tensor.
    """
    picked = torch.where(valid, elem, torch.zeros((), dtype=elem.dtype, device=elem.device))
    if reduction == "mean":
        return picked.sum() / valid.sum().clamp(min=1).to(elem.dtype)
    batch = elem.shape[0]
    num = picked.reshape(batch, -1).sum(1)
    den = valid.reshape(batch, -1).sum(1)
    per_sample = num / den.clamp(min=1).to(elem.dtype)
    return torch.where(den > 0, per_sample, torch.full_like(per_sample, math.nan))


def register_task_type(name: str) -> Any:
    """Class decorator registering a :class:`Task` subclass as task type ``name``.

    Example:
        >>> @register_task_type("my_depth")          # doctest: +SKIP
        ... class MyDepth(DepthTask): ...

    Raises:
        BranchnasError: if ``name`` is taken or the class is not a ``Task``.
    """

    def add(cls: Type[Task]) -> Type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise BranchnasError(
                f"task type {name!r} must be a subclass of branchnas.tasks.Task, got {cls!r}"
            )
        if cls.primary_metric not in cls.metric_directions:
            raise BranchnasError(
                f"task type {name!r} must declare primary_metric, the measure Δm uses, as one "
                f"of its metrics ({', '.join(cls.metric_directions) or 'none'}); got "
                f"{cls.primary_metric!r}"
            )
        _TASK_TYPES.register(name, cls, primary=cls.primary_metric,
                             metrics=dict(cls.metric_directions))
        cls.type = name
        return cls

    return add


def list_task_types() -> List[str]:
    """Names of the registered task types, sorted."""
    return _TASK_TYPES.names()


def get_task_type(name: str) -> Type[Task]:
    """The :class:`Task` subclass registered as ``name``.

    Raises:
        BranchnasError: for an unknown name, listing the known ones.
    """
    return _TASK_TYPES.get(name)


def create_task(name: str, type: str, primary: Optional[str] = None,  # noqa: A002
                **params: Any) -> Task:
    """Make a task called ``name`` of the registered task type ``type``.

    Args:
        name: the task's name, e.g. ``"seg"``.
        type: a registered task type, e.g. ``"segmentation"`` (see :func:`list_task_types`).
        primary: the metric Δm is measured on; None: the type's declared ``primary_metric``.
        **params: the type's parameters, e.g. ``num_classes=19``.

    Returns:
        The task.

    Raises:
        BranchnasError: for an unknown type, an unknown or missing parameter, or a bad value.

    Example:
        >>> task = create_task("seg", "segmentation", num_classes=3)
        >>> task.out_channels, task.metrics["miou"], task.primary
        (3, True, 'miou')
        >>> create_task("scene", "classification", primary="top5", num_classes=8).primary
        'top5'
    """
    return get_task_type(type)(name, primary=primary, **params)
