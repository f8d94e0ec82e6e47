"""The training stages of the pipeline, each cached in its run directory.

- :func:`run_singles`: one single-task network per task (``<out>/single/<task>/``), the
  reference every Δm is measured against.
- :func:`run_tree`: a BranchedNet of a given tree (``<out>/trees/<name>/``).
- :func:`run_baseline`: a registered baseline (``<out>/baselines/<name>/``), as its registry
  metadata says (:func:`~branchnas.models.baselines.baseline_meta`): cross-stitch and NDDR-CNN
  start from the converged single-task weights, as the paper does (its SGD settings reach
  them through the config resolver, :func:`~branchnas.pipeline.resolve.model_protocol`).

Each writes a :class:`~branchnas.pipeline.results.ModelResult` (``result.json``) beside the
trainer's files, so :func:`~branchnas.pipeline.results.results_table` sees every model. A stage
whose run is done returns its stored result; an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from ..errors import BranchnasError
from ..tasks import delta_m, metric_directions
from ..training import TrainConfig, load_single_task_model, single_run_dir, train, train_single
from ..tree import Tree
from .results import RESULT_FILE, ModelResult, read_result, write_result

__all__ = ["run_singles", "run_tree", "run_baseline", "single_metrics", "model_delta_m"]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


def _metrics_only(result: Mapping[str, Any], tasks: Sequence[str]) -> Dict[str, Dict[str, float]]:
    return {t: dict(result[t]) for t in tasks}


def run_singles(space: Any, out_dir: PathLike, config: TrainConfig,
                tasks: Optional[Sequence[str]] = None, device: Any = None) -> Dict[str, ModelResult]:
    """Train (or reuse) the single-task networks and record their results.

    Returns:
        ``{task: ModelResult}`` in the space's task order.
    """
    names = list(tasks) if tasks else list(space.task_names)
    missing = [t for t in names if not (single_run_dir(out_dir, t).path / RESULT_FILE).exists()]
    raw = train_single(space, missing, out_dir, config, device) if missing else {}
    results: Dict[str, ModelResult] = {}
    for task in names:
        run = single_run_dir(out_dir, task)
        path = run.path / RESULT_FILE
        if task not in raw:
            results[task] = read_result(path)
            continue
        sub = space.subset([task])
        tree = Tree.single_task([task], sub.depth)
        results[task] = ModelResult(
            model="single", name=f"single/{task}", space=space.name,
            params=sub.tree_params(tree), flops=sub.tree_flops(tree),
            metrics=_metrics_only(raw[task], [task]), delta_m=None, seed=config.seed,
            tree=tree.to_json(), extra={"epochs": raw[task].get("epochs"),
                                        "images_per_s": raw[task].get("images_per_s")},
        )
        write_result(run.path, results[task])
    return results


def single_metrics(space: Any, out_dir: PathLike, config: TrainConfig,
                   tasks: Optional[Sequence[str]] = None, device: Any = None) -> Dict[str, Dict[str, float]]:
    """The single-task networks' metrics (``task -> metric -> value``), training any missing."""
    singles = run_singles(space, out_dir, config, tasks, device)
    return {t: r.metrics[t] for t, r in singles.items()}


def model_delta_m(space: Any, metrics: Mapping[str, Mapping[str, float]],
                  reference: Mapping[str, Mapping[str, float]]) -> Optional[float]:
    """Δm of ``metrics`` against the single-task ``reference``; None (with a warning) when
    undefined, e.g. a reference metric of 0 after a very short training run."""
    tasks = [space.task(t) for t in metrics]
    try:
        return delta_m(metrics, {t: reference[t] for t in metrics}, metric_directions(tasks))
    except BranchnasError as exc:
        log.warning("Δm undefined: %s", exc)
        return None


def _datasets(space: Any) -> Any:
    from ..data import create_dataset

    kwargs = space.dataset_kwargs
    return (create_dataset(space.dataset_name, split="train", tasks=space.task_names, **kwargs),
            create_dataset(space.dataset_name, split="val", tasks=space.task_names, **kwargs))


def _train_and_record(model: Any, kind: str, name: str, run_path: Path, space: Any,
                      config: TrainConfig, out_dir: PathLike, device: Any, params: int,
                      flops: Optional[int], tree: Optional[Tree], meta: Dict[str, Any],
                      extra: Optional[Dict[str, Any]] = None) -> ModelResult:
    if (run_path / RESULT_FILE).exists():
        return read_result(run_path / RESULT_FILE)
    reference = single_metrics(space, out_dir, config, device=device)
    train_set, val_set = _datasets(space)
    raw = train(model, space.tasks, train_set, val_set, config, run_path, device, meta=meta)
    metrics = _metrics_only(raw, space.task_names)
    result = ModelResult(
        model=kind, name=name, space=space.name, params=params, flops=flops, metrics=metrics,
        delta_m=model_delta_m(space, metrics, reference), seed=config.seed,
        tree=tree.to_json() if tree is not None else None,
        extra={"epochs": raw.get("epochs"), "images_per_s": raw.get("images_per_s"),
               **(extra or {})},
    )
    write_result(run_path, result)
    return result


def run_tree(space: Any, tree: Tree, out_dir: PathLike, config: TrainConfig, name: str,
             device: Any = None, extra: Optional[Dict[str, Any]] = None) -> ModelResult:
    """Train (or reuse) the BranchedNet of ``tree``; Δm against the single-task networks.

    Args:
        space: the search space.
        tree: a tree over the space's tasks and cut points.
        out_dir: the pipeline's output root; the run goes to ``<out_dir>/trees/<name>/``.
        config: the training config.
        name: the run's label (unique within ``out_dir``).
        extra: facts kept with the result (budget, search cost, strategy).
    """
    import torch

    from ..models import BranchedNet

    space.check_tree(tree)
    run_path = Path(out_dir) / "trees" / name
    torch.manual_seed(config.seed)
    model = BranchedNet(tree, space)
    return _train_and_record(
        model, "tree", name, run_path, space, config, out_dir, device,
        params=space.tree_params(tree), flops=space.tree_flops(tree), tree=tree,
        meta={"stage": "tree", "space": space.name, "tree": tree.to_json()}, extra=extra)


def run_baseline(space: Any, name: str, out_dir: PathLike, config: TrainConfig,
                 device: Any = None, options: Optional[Dict[str, Any]] = None) -> ModelResult:
    """Train (or reuse) a baseline (``single``, ``shared``, ``cross_stitch``, ``mtan``, ``nddr``).

    What it needs comes from its registry metadata: ``reuses_single`` (``single``: the
    single-task networks themselves), ``init_from_single`` (cross-stitch, NDDR-CNN: start
    from the converged single-task networks), ``tree`` (a BranchedNet baseline's tree, for
    its FLOPs). ``config`` is the baseline's own (``RunSpec.train_config(name)``: the
    paper's protocol included).
    """
    import torch

    from ..models.baselines import baseline_meta, baseline_params, create_baseline

    meta = baseline_meta(name)  # an unknown name is an error listing the known ones
    if meta.get("reuses_single"):
        singles = run_singles(space, out_dir, config, device=device)
        sizes = [r.params for r in singles.values()]
        return ModelResult(model="single", name="single-task", space=space.name,
                           params=sum(sizes), flops=None,
                           metrics={t: r.metrics[t] for t, r in singles.items()}, delta_m=0.0,
                           seed=config.seed)
    options = dict(options or {})
    run_path = Path(out_dir) / "baselines" / name
    torch.manual_seed(config.seed)
    model = create_baseline(name, space, **options)
    if meta.get("init_from_single") and not (run_path / RESULT_FILE).exists():
        missing = [t for t in space.task_names if not single_run_dir(out_dir, t).is_done()]
        if missing:
            # not trained here: `config` is this baseline's (the paper's SGD), not theirs
            raise BranchnasError(
                f"baseline {name!r} starts from the converged single-task networks, and "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not trained in "
                f"{out_dir}; run `branchnas train-single` with the same --space and --out first")
        # the converged weights: the best epoch's (RunDir.model_state)
        model.init_from_single({t: load_single_task_model(space, t, out_dir) for t in space.task_names})
    make_tree = meta.get("tree")
    tree = make_tree(list(space.task_names), space.depth) if make_tree is not None else None
    flops = space.tree_flops(tree) if tree is not None else None
    return _train_and_record(
        model, name, name, run_path, space, config, out_dir, device,
        params=baseline_params(name, space, **options), flops=flops, tree=tree,
        meta={"stage": "baseline", "space": space.name, "baseline": name, "options": options,
              # the protocol, recorded: its starting weights and its units' rate factor
              "init_from_single": bool(meta.get("init_from_single")),
              "unit_lr_mult": options.get("unit_lr_mult", meta.get("unit_lr_mult"))},
        extra={"options": options} if options else None)

