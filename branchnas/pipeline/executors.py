"""Job kinds for the pipeline's training stages, so queue workers can run them.

``train_single``, ``train_tree`` and ``train_baseline`` carry the (profiled) search space as a
dict and the training config as a dict, so a worker on another machine rebuilds exactly what
the driver would have trained; they call the same stage functions as an in-process run and
write into the same run directories, so the driver afterwards finds every stage done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..training import TrainConfig
from ..tree import Tree
from .jobs import make_job, register_job_kind
from .results import ModelResult
from .stages import run_baseline, run_singles, run_tree

__all__ = ["single_job", "tree_job", "baseline_job"]


def _params(space: Any, config: TrainConfig, out: Path, device: Optional[str]) -> Dict[str, Any]:
    return {"space": space.to_dict(), "space_name": space.name, "config": config.to_dict(),
            "out": str(out), "device": device}


def single_job(space: Any, task: str, config: TrainConfig, out: Path, device: Optional[str] = None) -> Dict[str, Any]:
    """The job spec training ``task``'s single-task network."""
    return make_job("train_single", {**_params(space, config, out, device), "task": task},
                    str(Path(out) / "single" / task))


def tree_job(space: Any, tree: Tree, name: str, config: TrainConfig, out: Path,
             device: Optional[str] = None, extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The job spec training the BranchedNet of ``tree`` as run ``name``."""
    return make_job("train_tree", {**_params(space, config, out, device), "tree": tree.to_json(),
                                   "name": name, "extra": dict(extra or {})},
                    str(Path(out) / "trees" / name))


def baseline_job(space: Any, name: str, config: TrainConfig, out: Path, device: Optional[str] = None) -> Dict[str, Any]:
    """The job spec training baseline ``name``."""
    return make_job("train_baseline", {**_params(space, config, out, device), "name": name},
                    str(Path(out) / "baselines" / name))


def _unpack(spec: Mapping[str, Any]) -> Any:
    from ..spaces import SearchSpace

    p = spec["params"]
    space = SearchSpace.from_dict(p["space"], name=p["space_name"])
    return space, TrainConfig.from_dict(p["config"]), Path(p["out"]), p.get("device")


def _summary(result: ModelResult) -> Dict[str, Any]:
    out: Dict[str, Any] = {"name": result.name, "params": result.params}
    if result.delta_m is not None:
        out["value"] = result.delta_m
    return out


@register_job_kind("train_single")
def _train_single(spec: Mapping[str, Any]) -> Dict[str, Any]:
    space, config, out, device = _unpack(spec)
    task = spec["params"]["task"]
    return _summary(run_singles(space, out, config, tasks=[task], device=device)[task])


@register_job_kind("train_tree")
def _train_tree(spec: Mapping[str, Any]) -> Dict[str, Any]:
    space, config, out, device = _unpack(spec)
    p = spec["params"]
    tree = Tree.from_json(p["tree"], tasks=space.task_names, depth=space.depth)
    return _summary(run_tree(space, tree, out, config, p["name"], device=device, extra=p["extra"]))


@register_job_kind("train_baseline")
def _train_baseline(spec: Mapping[str, Any]) -> Dict[str, Any]:
    space, config, out, device = _unpack(spec)
    return _summary(run_baseline(space, spec["params"]["name"], out, config, device=device))
