"""Training: the trainer, loss weighting, asynchronous updates, run directories.

Public API (see the "Training" section of ``docs/internals.md``):

* :class:`TrainConfig` (defaults in one place; ``from_sources(space_training, overrides)``),
  :func:`add_train_arguments` / :func:`overrides_from_args` for the command line;
* :func:`train` (any multi-task model; checkpoints, resume, metrics) and :func:`evaluate`;
* :func:`train_single` (one single-task network per task, ``<out>/single/<task>/``),
  :func:`single_task_model`, :func:`load_single_task_model`;
* loss weightings: :func:`create_weighting`, :func:`list_weightings`, ... (equal, dwa, uncertainty);
* :class:`AsyncUpdater` (UberNet's asynchronous SGD) and :class:`RunDir`;
* ``memory_bounded_backward`` (UberNet's memory-bounded backprop), imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .async_updates import SHARED, AsyncUpdater
from .config import TrainConfig, add_train_arguments, overrides_from_args
from .rundir import RunDir
from .single import load_single_task_model, single_run_dir, single_task_model, train_single
from .trainer import evaluate, lr_factor, resolve_amp, resolve_device, seed_everything, train
from .weighting import (
    DWAWeighting,
    EqualWeighting,
    ScaledWeighting,
    UncertaintyWeighting,
    Weighting,
    create_weighting,
    get_weighting,
    list_weightings,
    register_weighting,
)

__all__ = [
    "TrainConfig",
    "add_train_arguments",
    "overrides_from_args",
    "train",
    "evaluate",
    "resolve_device",
    "resolve_amp",
    "lr_factor",
    "seed_everything",
    "train_single",
    "single_task_model",
    "single_run_dir",
    "load_single_task_model",
    "RunDir",
    "AsyncUpdater",
    "SHARED",
    "Weighting",
    "EqualWeighting",
    "DWAWeighting",
    "UncertaintyWeighting",
    "ScaledWeighting",
    "create_weighting",
    "get_weighting",
    "list_weightings",
    "register_weighting",
    "memory_bounded_backward",
]

_LAZY = {"memory_bounded_backward": "branchnas.training.memory"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'branchnas.training' has no attribute {name!r}")
