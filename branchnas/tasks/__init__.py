"""Task types: formats, losses, exact metrics, and the multi-task performance Δm.

Every task type is registered under a name; :func:`create_task` makes a task from a name,
a type and the type's parameters::

    >>> from branchnas.tasks import create_task, list_task_types
    >>> list_task_types()[:4]
    ['binary', 'classification', 'depth', 'edges']
    >>> seg = create_task("seg", "segmentation", num_classes=19)
    >>> seg.out_channels, seg.metrics, seg.default_head, seg.primary
    (19, {'miou': True, 'pixel_acc': True}, 'fcn', 'miou')

A task gives ``loss(pred, target, present, reduction)``, ``meter()`` (an exact accumulator
over a dataset) and ``empty_target(image)``; :func:`delta_m` compares a model's metrics
with a baseline's; :func:`task_delta_m` does so on each task's primary measure (the paper's
tables) or over all its metrics. Formats and invalid markers: ``docs/internals.md``, section "Tasks".
"""

from .base import (
    REQUIRED,
    Meter,
    Task,
    create_task,
    get_task_type,
    list_task_types,
    masked_mean,
    register_task_type,
)
from .dense import (
    DepthTask,
    EdgesTask,
    InstanceTask,
    KeypointsTask,
    NormalsTask,
    SegmentationTask,
)
from .image import BinaryTask, ClassificationTask
from .performance import (
    DELTA_M_ON,
    delta_m,
    delta_m_per_task,
    metric_directions,
    select_metrics,
    task_delta_m,
    task_delta_m_per_task,
)

__all__ = [
    "Task",
    "Meter",
    "REQUIRED",
    "register_task_type",
    "list_task_types",
    "get_task_type",
    "create_task",
    "masked_mean",
    "SegmentationTask",
    "DepthTask",
    "NormalsTask",
    "EdgesTask",
    "InstanceTask",
    "KeypointsTask",
    "ClassificationTask",
    "BinaryTask",
    "delta_m",
    "delta_m_per_task",
    "metric_directions",
    "select_metrics",
    "task_delta_m",
    "task_delta_m_per_task",
    "DELTA_M_ON",
]
