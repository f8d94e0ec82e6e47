"""Training: the trainer, loss weighting, asynchronous updates, run directories.

Public API (see the "Training" section of ``docs/internals.md``):

* :class:`TrainConfig` (defaults in one place; ``from_sources(space_training, overrides)``),
  :func:`add_train_arguments` / :func:`overrides_from_args` for the command line;
* :func:`train` (any multi-task model; checkpoints, resume, metrics) and :func:`evaluate`;
* :func:`train_single` (one single-task network per task, ``<out>/single/<task>/``),
  :func:`single_task_model`, :func:`load_single_task_model`;
* loss weightings: :func:`create_weighting`, :func:`list_weightings`, ... (equal, dwa, uncertainty);
* :class:`AsyncUpdater` (UberNet's asynchronous SGD) and :class:`RunDir`;
* ``memory_bounded_backward`` (UberNet's memory-bounded backprop).

Every name is imported on first use, so ``from branchnas.training.config import
add_train_arguments`` (what the command line's parser needs) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any, List

# Public name -> submodule defining it (resolved lazily by __getattr__).
_LAZY = {
    "TrainConfig": "config",
    "add_train_arguments": "config",
    "overrides_from_args": "config",
    "train": "trainer",
    "evaluate": "trainer",
    "resolve_device": "trainer",
    "resolve_amp": "trainer",
    "lr_factor": "trainer",
    "seed_everything": "trainer",
    "train_single": "single",
    "single_task_model": "single",
    "single_run_dir": "single",
    "load_single_task_model": "single",
    "RunDir": "rundir",
    "AsyncUpdater": "async_updates",
    "SHARED": "async_updates",
    "Weighting": "weighting",
    "EqualWeighting": "weighting",
    "DWAWeighting": "weighting",
    "UncertaintyWeighting": "weighting",
    "ScaledWeighting": "weighting",
    "create_weighting": "weighting",
    "get_weighting": "weighting",
    "list_weightings": "weighting",
    "register_weighting": "weighting",
    "memory_bounded_backward": "memory",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
