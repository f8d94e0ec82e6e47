"""Multi-task performance Δm (Maninis et al., 2019), as defined in design.md.

    Δm = (100 / T) · Σ_i (−1)^{l_i} · (M_m,i − M_b,i) / M_b,i,   l_i = 1 where lower is better,

where, for a task with several metrics, the term of task i is the average of its metrics'
terms. A positive Δm means the model beats the baseline on average.

:func:`delta_m` is the formula over whatever metrics it is given. :func:`task_delta_m` picks
them from the tasks: ``on="primary"`` uses each task's one primary measure (``Task.primary``:
mIoU, the depth error, the mean angle, top-1, ...), which is what the paper's Tables 1 and 2
report; ``on="all"`` averages every metric of a task first (the second figure we print).
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, Iterable, Mapping, Union

import numpy as np

from ..errors import BranchnasError
from .base import Task

__all__ = ["delta_m", "delta_m_per_task", "metric_directions", "select_metrics", "task_delta_m",
           "task_delta_m_per_task", "DELTA_M_ON"]

# The two Δm figures every table shows: on each task's primary measure, and over all metrics.
DELTA_M_ON = ("primary", "all")

Metrics = Mapping[str, Mapping[str, float]]


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BranchnasError(f"{what} must be a real number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise BranchnasError(f"{what} is {x}; Δm needs finite metric values")
    return x


def delta_m_per_task(
    model: Metrics, baseline: Metrics, higher_is_better: Mapping[str, bool]
) -> Dict[str, float]:
    """Each task's relative gain over the baseline, in percent, averaged over its metrics.

    Args:
        model: task → metric → value of the model under evaluation. Its tasks and metrics
            are the ones compared.
        baseline: task → metric → value of the reference (e.g. the single-task networks);
            must hold every task and metric of ``model`` (extra entries are ignored).
        higher_is_better: metric name → True if higher is better, False if lower is.

    Returns:
        task → ``100 · mean_m (−1)^{l_m} (M_m − M_b) / M_b``, in ``model``'s task order.

    Raises:
        BranchnasError: for an empty model or task, a task or metric missing from the
            baseline, a metric without a direction, a non-finite value or a zero baseline.
    """
    if not model:
        raise BranchnasError("Δm needs at least one task in the model's metrics")
    out: Dict[str, float] = {}
    for task, metrics in model.items():
        if task not in baseline:
            raise BranchnasError(
                f"task {task!r} is missing from the baseline metrics; baseline has: "
                f"{', '.join(map(str, baseline)) or 'no tasks'}"
            )
        if not metrics:
            raise BranchnasError(f"task {task!r} has no metrics; give at least one per task")
        base_metrics = baseline[task]
        terms = []
        for metric, value in metrics.items():
            if metric not in base_metrics:
                raise BranchnasError(
                    f"metric {metric!r} of task {task!r} is missing from the baseline; "
                    f"baseline has: {', '.join(map(str, base_metrics)) or 'none'}"
                )
            if metric not in higher_is_better:
                raise BranchnasError(
                    f"no direction for metric {metric!r} (task {task!r}); add it to "
                    f"higher_is_better as True (higher is better) or False"
                )
            higher = higher_is_better[metric]
            if not isinstance(higher, (bool, np.bool_)):
                raise BranchnasError(
                    f"higher_is_better[{metric!r}] must be True or False, got {higher!r}"
                )
            m = _number(value, f"model value of {task}/{metric}")
            b = _number(base_metrics[metric], f"baseline value of {task}/{metric}")
            if b == 0:
                raise BranchnasError(
                    f"baseline value of {task}/{metric} is 0 and Δm divides by it; "
                    f"leave that metric out or use a baseline with a nonzero value"
                )
            sign = 1.0 if bool(higher) else -1.0
            terms.append(sign * (m - b) / b)
        out[task] = 100.0 * sum(terms) / len(terms)
    return out


def delta_m(model: Metrics, baseline: Metrics, higher_is_better: Mapping[str, bool]) -> float:
    """Multi-task performance Δm of ``model`` relative to ``baseline``, in percent.

    The mean over ``model``'s tasks of :func:`delta_m_per_task`.

    Args:
        model: task → metric → value of the model under evaluation.
        baseline: task → metric → value of the reference (single-task networks).
        higher_is_better: metric name → True if higher is better.

    Returns:
        Δm in percent (positive: better than the baseline).

    Raises:
        BranchnasError: see :func:`delta_m_per_task`.

    Example:
        >>> delta_m({"seg": {"miou": 61.51}, "depth": {"abs_err": 2.66}},
        ...         {"seg": {"miou": 65.17}, "depth": {"abs_err": 2.57}},
        ...         {"miou": True, "abs_err": False})  # doctest: +ELLIPSIS
        -4.5590...
    """
    per_task = delta_m_per_task(model, baseline, higher_is_better)
    return sum(per_task.values()) / len(per_task)


def metric_directions(tasks: Iterable[Task]) -> Dict[str, bool]:
    """The ``higher_is_better`` mapping for :func:`delta_m`, merged from tasks' ``.metrics``.

    Raises:
        BranchnasError: if two tasks give the same metric name opposite directions.
    """
    out: Dict[str, bool] = {}
    for task in tasks:
        for metric, higher in task.metrics.items():
            if out.setdefault(metric, higher) != higher:
                raise BranchnasError(
                    f"metric {metric!r} is higher-is-better in one task and lower-is-better "
                    f"in another (task {task.name!r}); rename one of them"
                )
    return out


def _task_map(tasks: Union[Iterable[Task], Mapping[str, Task]]) -> Dict[str, Task]:
    if isinstance(tasks, Mapping):
        return dict(tasks)
    return {t.name: t for t in tasks}


def select_metrics(metrics: Metrics, tasks: Union[Iterable[Task], Mapping[str, Task]],
                   on: str = "primary") -> Dict[str, Dict[str, float]]:
    """The metrics Δm is computed on: each task's primary measure, or all of them.

    Args:
        metrics: task → metric → value.
        tasks: the :class:`Task` objects (or name → Task) of every task in ``metrics``.
        on: ``"primary"`` (each task's ``Task.primary`` only) or ``"all"``.

    Returns:
        task → metric → value, the same tasks in the same order.

    Raises:
        BranchnasError: for an unknown ``on``, a task not in ``tasks``, or (``"primary"``) a
            task whose primary measure is missing from ``metrics``.
    """
    if on not in DELTA_M_ON:
        raise BranchnasError(f"unknown Δm measure {on!r}; choose one of: {', '.join(DELTA_M_ON)}")
    by_name = _task_map(tasks)
    out: Dict[str, Dict[str, float]] = {}
    for name, ms in metrics.items():
        if name not in by_name:
            raise BranchnasError(f"task {name!r} has metrics but no task definition; "
                                 f"known tasks: {', '.join(by_name) or 'none'}")
        if on == "all":
            out[name] = dict(ms)
            continue
        primary = by_name[name].primary
        if primary not in ms:
            raise BranchnasError(
                f"task {name!r} has no value for its primary measure {primary!r}; it has: "
                f"{', '.join(ms) or 'none'}")
        out[name] = {primary: ms[primary]}
    return out


def task_delta_m_per_task(model: Metrics, baseline: Metrics,
                          tasks: Union[Iterable[Task], Mapping[str, Task]],
                          on: str = "primary") -> Dict[str, float]:
    """Each task's Δm term (percent) on its primary measure (``on="primary"``) or over all
    its metrics averaged (``on="all"``); see :func:`delta_m_per_task`."""
    by_name = _task_map(tasks)
    picked = select_metrics(model, by_name, on)
    return delta_m_per_task(picked, baseline, metric_directions(by_name[t] for t in picked))


def task_delta_m(model: Metrics, baseline: Metrics,
                 tasks: Union[Iterable[Task], Mapping[str, Task]], on: str = "primary") -> float:
    """Δm of ``model`` against ``baseline`` with the metrics chosen by the tasks.

    Args:
        model: task → metric → value of the model (every metric the meters give).
        baseline: the same for the single-task networks.
        tasks: the :class:`Task` objects of the model's tasks (their ``primary`` and metric
            directions are used).
        on: ``"primary"`` (the paper's tables) or ``"all"`` (every metric, averaged per task).

    Returns:
        Δm in percent.

    Raises:
        BranchnasError: see :func:`select_metrics` and :func:`delta_m_per_task`.

    Example:
        >>> from branchnas.tasks import create_task
        >>> tasks = [create_task("S", "segmentation", num_classes=19), create_task("D", "depth")]
        >>> single = {"S": {"miou": 65.17, "pixel_acc": 90.0}, "D": {"abs_err": 2.57, "rel_err": 0.3}}
        >>> mtl = {"S": {"miou": 61.51, "pixel_acc": 91.0}, "D": {"abs_err": 2.66, "rel_err": 0.3}}
        >>> round(task_delta_m(mtl, single, tasks), 4), round(task_delta_m(mtl, single, tasks, "all"), 4)
        (-4.559, -2.0017)
    """
    per_task = task_delta_m_per_task(model, baseline, tasks, on)
    return sum(per_task.values()) / len(per_task)
