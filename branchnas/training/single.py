"""Single-task networks: the first stage of the pipeline (``branchnas train-single``).

For every task of a search space, :func:`train_single` trains the network of the tree
``Tree.single_task([task], D)`` on the space restricted to that task: the space's backbone
with the task's own head, all built with the same seed, so the networks differ only in
their task (the paper trains them "under the same conditions"). Each lands in its own run
directory ``<out_dir>/single/<task>/``; a task whose run is done is skipped, one that was
interrupted is resumed.

Example::

    from branchnas.spaces import load_space
    results = train_single(load_space("scenes"), ["semseg", "depth"], "runs/scenes")
    results["semseg"]["miou"]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import BranchnasError
from .config import RUNTIME_FIELDS, TrainConfig
from .rundir import RunDir
from .trainer import resolve_device, train

__all__ = ["train_single", "single_task_model", "single_run_dir", "load_single_task_model",
           "space_dataset", "space_datasets"]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


def _space(space: Any) -> Any:
    if isinstance(space, (str, Path)):
        from ..spaces import load_space

        return load_space(space)
    return space


def single_run_dir(out_dir: PathLike, task: str) -> RunDir:
    """The run directory of ``task``'s single-task network under ``out_dir``."""
    return RunDir(Path(out_dir) / "single" / task)


def single_task_model(space: Any, task: str, seed: Optional[int] = None) -> nn.Module:
    """The single-task network of ``task``: the space's backbone and the task's head.

    Args:
        space: a ``SearchSpace`` (or its name / TOML path).
        task: one of the space's tasks.
        seed: when given, ``torch.manual_seed(seed)`` first, so the weights are reproducible.

    Raises:
        BranchnasError: for a task the space does not have.
    """
    from ..models import BranchedNet
    from ..tree import Tree

    space = _space(space)
    sub = space.subset([task])
    if seed is not None:
        torch.manual_seed(seed)
    return BranchedNet(Tree.single_task([task], sub.depth), sub)


def load_single_task_model(
    space: Any, task: str, out_dir: PathLike, device: Union[None, str, torch.device] = "cpu"
) -> nn.Module:
    """The trained single-task network of ``task`` from ``<out_dir>/single/<task>/``, in eval mode.

    Raises:
        BranchnasError: when that run is not finished (train it with ``train-single``).
    """
    run = single_run_dir(out_dir, task)
    if not run.is_done():
        raise BranchnasError(
            f"no finished single-task run for {task!r} in {run.path}; run train-single first"
        )
    model = single_task_model(space, task)
    run.load_model(model)
    return model.to(resolve_device(device)).eval()


def space_dataset(space: Any, split: str, tasks: Optional[Sequence[str]] = None,
                  overrides: Optional[Mapping[str, Any]] = None) -> Any:
    """One split of the space's dataset (the one place the stages, tuning and
    ``train_single`` build their data).

    Args:
        space: a ``SearchSpace``.
        split: ``train``, ``val`` or ``test``.
        tasks: the tasks to label (default: all of the space's).
        overrides: dataset keyword arguments over the space's ``[dataset]`` table.

    Raises:
        BranchnasError: when the space names no dataset (or the dataset refuses its options).
    """
    from ..data import create_dataset

    if not space.dataset_name:
        raise BranchnasError(
            f"search space {space.name!r} names no dataset; add [dataset] name = ... to its file"
        )
    kwargs = {**space.dataset_kwargs, **dict(overrides or {})}
    names = list(tasks) if tasks is not None else list(space.task_names)
    return create_dataset(space.dataset_name, split=split, tasks=names, **kwargs)


def space_datasets(space: Any, tasks: Optional[Sequence[str]] = None,
                   overrides: Optional[Mapping[str, Any]] = None) -> Tuple[Any, Any]:
    """``(train split, val split)`` of the space's dataset (see :func:`space_dataset`)."""
    return (space_dataset(space, "train", tasks, overrides),
            space_dataset(space, "val", tasks, overrides))


def train_single(
    space: Any,
    tasks: Optional[Sequence[str]] = None,
    out_dir: PathLike = "runs",
    config: Optional[TrainConfig] = None,
    device: Union[None, str, torch.device] = None,
    *,
    overrides: Optional[Mapping[str, Any]] = None,
    command: Optional[Sequence[str]] = None,
    datasets: Optional[Tuple[Any, Any]] = None,
    finalize: Optional[Callable[[str, Dict[str, Any]], Mapping[str, Any]]] = None,
) -> Dict[str, Dict[str, Any]]:
    """Train one single-task network per task (skipping finished runs, resuming others).

    Args:
        space: a ``SearchSpace`` or its name / TOML path.
        tasks: task names (default: all of the space's, in its order).
        out_dir: root of the run directories (``<out_dir>/single/<task>/``).
        config: the training config; None resolves the space's ``[training]`` table with
            ``overrides`` (:meth:`TrainConfig.from_sources`).
        device: None picks CUDA when available, else the CPU.
        overrides: training settings over the space's (only when ``config`` is None).
        command: command line recorded in each run's ``command.txt`` (default: ``sys.argv``).
        datasets: ``(train_set, val_set)`` labelling the tasks, instead of the space's
            dataset (``create_dataset(space.dataset_name, split, tasks=[task], ...)``).
        finalize: ``finalize(task, result)`` is what each run's ``done`` stores and what is
            returned for it (see :func:`~branchnas.training.trainer.train`).

    Returns:
        ``{task: result}`` with each run's result (final validation metrics of the task,
        ``"epochs"``, ``"images_per_s"``; see :func:`~branchnas.training.trainer.train`).

    Raises:
        BranchnasError: for unknown tasks or settings, or a run directory holding another config.
    """
    space = _space(space)
    names = list(tasks) if tasks else list(space.task_names)
    unknown = [t for t in names if t not in space.task_names]
    if unknown:
        raise BranchnasError(
            f"search space {space.name!r} has no task(s) {', '.join(unknown)}; "
            f"choose from: {', '.join(space.task_names)}"
        )
    if config is None:
        config = TrainConfig.from_sources(space.training, overrides)
    elif overrides:
        raise BranchnasError("give train_single either a config or overrides, not both")

    results: Dict[str, Dict[str, Any]] = {}
    for i, task in enumerate(names):
        run = single_run_dir(out_dir, task)
        if run.is_done():
            # a finished run made with other training settings is refused, not reused
            run.check_config(config.to_dict(), ignore_keys=RUNTIME_FIELDS, partial=True)
            log.info("single-task %s: done in %s; skipping", task, run.path)
            results[task] = run.read_result()
            continue
        log.info("single-task %s (%d/%d): training in %s", task, i + 1, len(names), run.path)
        # a dataset labelling just this task: items stay small
        train_set, val_set = datasets if datasets is not None else space_datasets(space, [task])
        model = single_task_model(space, task, seed=config.seed)
        meta = {"stage": "single", "space": space.name, "task": task,
                "tree": model.tree.to_json() if hasattr(model, "tree") else None}
        results[task] = train(
            model, [space.task(task)], train_set, val_set, config, run, device,
            meta=meta, command=command,
            finalize=None if finalize is None else (lambda raw, t=task: finalize(t, raw)),
        )
        stored = results[task]  # the trainer's result, or what finalize made of it
        log.info("single-task %s: %s", task, stored.get(task, stored.get("metrics", {}).get(task)))
    return {t: results[t] for t in names}
