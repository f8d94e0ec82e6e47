"""The affinity stage: single-task networks → affinity file (design.md's npz + sidecar).

The K images are drawn from the space's validation split, which no network trained on.
The file is the stage's cache: when it exists (and was made with the same measure, K and
seed), it is reused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Union

from ..training import TrainConfig, load_single_task_model
from .layout import RunLayout
from .stages import run_singles

__all__ = ["affinity_stage", "affinity_path"]

log = logging.getLogger(__name__)


def affinity_path(out_dir: Union[str, Path], measure: str = "rsa") -> Path:
    """Where the pipeline keeps a run's affinity file."""
    return RunLayout(out_dir).affinity(measure)


def _same_recipe(path: Path, measure: str, k: int, seed: int) -> bool:
    sidecar = path.with_suffix(".json")
    if not (path.is_file() and sidecar.is_file()):
        return False
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    return meta.get("measure") == measure and meta.get("k_requested", meta.get("K")) == k \
        and meta.get("seed") == seed


def affinity_stage(space: Any, out_dir: Union[str, Path], config: TrainConfig, measure: str = "rsa",
                   k: int = 500, seed: int = 0, device: Any = None,
                   path: Optional[Union[str, Path]] = None, batch_size: int = 32) -> Path:
    """Compute (or reuse) the affinity of the space's tasks; returns the ``.npz`` path.

    Trains the single-task networks first where they are missing.
    """
    from ..affinity import compute_affinity, save_affinity
    from ..data import create_dataset

    target = Path(path) if path else affinity_path(out_dir, measure)
    if target.suffix != ".npz":
        target = target.with_suffix(".npz")
    if _same_recipe(target, measure, k, seed):
        log.info("affinity: reusing %s", target)
        return target
    run_singles(space, out_dir, config, device=device, check=False)  # read as they are (maybe tuned)
    models = {t: load_single_task_model(space, t, out_dir, device=device or "cpu") for t in space.task_names}
    held_out = create_dataset(space.dataset_name, split="val", tasks=space.task_names, **space.dataset_kwargs)
    affinity, locations, meta = compute_affinity(
        models, held_out, space.tasks, k=k, seed=seed, measure=measure, device=device,
        locations=space.locations, batch_size=batch_size)
    meta.update({"backbone": space.backbone.name, "dataset": space.dataset_name, "space": space.name,
                 "k_requested": k, "split": "val", "train_seed": config.seed})
    save_affinity(target, affinity, space.task_names, locations, meta)
    log.info("affinity: wrote %s", target)
    return target
