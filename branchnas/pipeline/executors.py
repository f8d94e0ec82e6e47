"""The job kinds of the pipeline's training stages (what an executor runs, anywhere).

``train_single``, ``train_tree`` and ``train_baseline`` carry the (profiled) search space as a
dict and the training config as a dict, so a process on another machine rebuilds exactly what
the driver would have trained. They call the same stage functions as an in-process run and
train into the same run directories; each job's ``out_dir`` is its run directory, whose
``done`` marker holds the stored :class:`~branchnas.pipeline.results.ModelResult` that the job
returns (as a dict). A job asks the executor for the CPU threads its config trains with.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..training import TrainConfig
from ..tree import Tree
from .layout import RunLayout
from .jobs import JobSpec, make_job, register_job_kind
from .stages import run_baseline, run_singles, run_tree

__all__ = ["single_job", "tree_job", "baseline_job", "job_resources"]


def job_resources(config: TrainConfig, device: Optional[str] = None) -> Dict[str, float]:
    """What one training job asks an executor for: the CPU threads it trains with, and no GPU
    when it trains on the CPU (otherwise GPUs are the executor's setting, e.g.
    ``--gpus-per-job 0.25`` to share a GPU between small models)."""
    res = {"cpus": float(config.threads or 1)}
    if device is not None and str(device).startswith("cpu"):
        res["gpus"] = 0.0
    return res


def _params(space: Any, config: TrainConfig, out: Path, device: Optional[str]) -> Dict[str, Any]:
    return {"space": space.to_dict(), "space_name": space.name, "source": space.source,
            "config": config.to_dict(), "out": str(out), "device": device}


def single_job(space: Any, task: str, config: TrainConfig, out: Path,
               device: Optional[str] = None) -> JobSpec:
    """The job training ``task``'s single-task network into ``<out>/single/<task>``."""
    return make_job("train_single", {**_params(space, config, out, device), "task": task},
                    RunLayout(out).single(task), job_resources(config, device))


def tree_job(space: Any, tree: Tree, name: str, config: TrainConfig, out: Path,
             device: Optional[str] = None, extra: Optional[Mapping[str, Any]] = None) -> JobSpec:
    """The job training the BranchedNet of ``tree`` into ``<out>/trees/<name>``."""
    return make_job("train_tree", {**_params(space, config, out, device), "tree": tree.to_json(),
                                   "name": name, "extra": dict(extra or {})},
                    RunLayout(out).tree(name), job_resources(config, device))


def baseline_job(space: Any, name: str, config: TrainConfig, out: Path,
                 device: Optional[str] = None) -> JobSpec:
    """The job training baseline ``name`` into ``<out>/baselines/<name>``."""
    return make_job("train_baseline", {**_params(space, config, out, device), "name": name},
                    RunLayout(out).baseline(name), job_resources(config, device))


def _unpack(spec: Mapping[str, Any]) -> Any:
    from ..spaces import SearchSpace

    p = spec["params"]
    space = SearchSpace.from_dict(p["space"], name=p["space_name"], source=p.get("source"))
    return space, TrainConfig.from_dict(p["config"]), Path(p["out"]), p.get("device")


@register_job_kind("train_single")
def _train_single(spec: Mapping[str, Any]) -> Dict[str, Any]:
    space, config, out, device = _unpack(spec)
    task = spec["params"]["task"]
    return asdict(run_singles(space, out, config, tasks=[task], device=device)[task])


@register_job_kind("train_tree")
def _train_tree(spec: Mapping[str, Any]) -> Dict[str, Any]:
    space, config, out, device = _unpack(spec)
    p = spec["params"]
    tree = Tree.from_json(p["tree"], tasks=space.task_names, depth=space.depth)
    return asdict(run_tree(space, tree, out, config, p["name"], device=device, extra=p["extra"]))


@register_job_kind("train_baseline")
def _train_baseline(spec: Mapping[str, Any]) -> Dict[str, Any]:
    space, config, out, device = _unpack(spec)
    return asdict(run_baseline(space, spec["params"]["name"], out, config, device=device))
