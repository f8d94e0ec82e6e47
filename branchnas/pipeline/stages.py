"""The training stages of the pipeline, each cached in its run directory.

- :func:`run_singles`: one single-task network per task (``<out>/single/<task>/``), the
  reference every Δm is measured against.
- :func:`run_tree`: a BranchedNet of a given tree (``<out>/trees/<name>/``).
- :func:`run_baseline`: a registered baseline (``<out>/baselines/<name>/``), as its registry
  metadata says (:func:`~branchnas.models.baselines.baseline_meta`): cross-stitch and NDDR-CNN
  start from the converged single-task weights, as the paper does (its SGD settings reach
  them through the config resolver, :func:`~branchnas.pipeline.resolve.model_protocol`).

Each stores a :class:`~branchnas.pipeline.results.ModelResult` as its run directory's ``done``
marker (the trainer writes it last, ``train(finalize=...)``), so
:func:`~branchnas.pipeline.results.results_table` sees every model. A stage whose run is done
returns its stored result; an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from dataclasses import asdict
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from ..errors import BranchnasError
from ..tasks import task_delta_m
from ..training import TrainConfig, load_single_task_model, single_run_dir, train, train_single
from ..training.config import RUNTIME_FIELDS
from ..training.single import space_datasets
from ..tree import Tree
from ..training.rundir import RunDir
from .layout import RunLayout
from .results import ModelResult, is_model_result, read_result

__all__ = ["run_singles", "run_tree", "run_baseline", "single_metrics", "model_delta_m", "check_reusable"]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


def _is_done(run_path: PathLike, config: TrainConfig) -> bool:
    return RunDir(run_path).is_done()


def _metrics_only(result: Mapping[str, Any], tasks: Sequence[str]) -> Dict[str, Dict[str, float]]:
    return {t: dict(result[t]) for t in tasks}


def check_reusable(run_path: PathLike, config: TrainConfig) -> bool:
    """True when the run is done and was made with ``config``'s training settings.

    Raises:
        BranchnasError: for a done run made with other settings (naming them; the fix is a
            new --out, or --force to retrain), instead of silently returning its result.
    """
    run = RunDir(run_path)
    if not run.is_done():
        return False
    run.check_config(config.to_dict(), ignore_keys=RUNTIME_FIELDS, partial=True)
    return True


def run_singles(space: Any, out_dir: PathLike, config: TrainConfig,
                tasks: Optional[Sequence[str]] = None, device: Any = None,
                check: bool = True) -> Dict[str, ModelResult]:
    """Train (or reuse) the single-task networks and record their results.

    Args:
        check: refuse a done run made with other settings than ``config``; False where
            the networks are only read as the reference of another model (trained with
            that model's settings when missing).

    Returns:
        ``{task: ModelResult}`` in the space's task order.
    """
    names = list(tasks) if tasks else list(space.task_names)
    done = {t for t in names if (check_reusable if check else _is_done)(single_run_dir(out_dir, t).path, config)}
    missing = [t for t in names if t not in done]
    fresh = train_single(space, missing, out_dir, config, device,
                         finalize=lambda task, raw: asdict(_single_result(space, task, raw, config.seed))
                         ) if missing else {}
    return {t: _as_single(space, t, fresh[t] if t in fresh else single_run_dir(out_dir, t).read_result(),
                          config.seed) for t in names}


# What every result records of its training: epochs and why it stopped (the convergence
# rule), and the cost (images processed, seconds, device), so the report can show them.
_TRAINING_FACTS = ("epochs", "max_epochs", "best_epoch", "stop_reason", "images_seen", "seconds",
                   "device", "images_per_s")


def _training_facts(raw: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: raw.get(k) for k in _TRAINING_FACTS}


def _single_result(space: Any, task: str, raw: Mapping[str, Any], seed: int) -> ModelResult:
    sub = space.subset([task])
    tree = Tree.single_task([task], sub.depth)
    return ModelResult(
        model="single", name=f"single/{task}", space=space.name,
        params=sub.tree_params(tree), flops=sub.tree_flops(tree),
        metrics=_metrics_only(raw, [task]), delta_m=None, seed=seed,
        tree=tree.to_json(), extra=_training_facts(raw),
    )


def _as_single(space: Any, task: str, stored: Mapping[str, Any], seed: int) -> ModelResult:
    if is_model_result(stored):
        return ModelResult(**stored)
    # trained by the library's train_single (its done holds the trainer's result): derive it
    return _single_result(space, task, stored, seed)


def single_metrics(space: Any, out_dir: PathLike, config: TrainConfig,
                   tasks: Optional[Sequence[str]] = None, device: Any = None) -> Dict[str, Dict[str, float]]:
    """The single-task networks' metrics (``task -> metric -> value``), training any missing
    (with ``config``); done ones are read whatever their settings (they are the reference)."""
    singles = run_singles(space, out_dir, config, tasks, device, check=False)
    return {t: r.metrics[t] for t, r in singles.items()}


def model_delta_m(space: Any, metrics: Mapping[str, Mapping[str, float]],
                  reference: Mapping[str, Mapping[str, float]], on: str = "primary") -> Optional[float]:
    """Δm of ``metrics`` against the single-task ``reference``, on each task's primary measure
    (``on="primary"``, the paper's) or over all its metrics (``on="all"``); None (with a
    warning) when undefined, e.g. a reference metric of 0 after a very short training run."""
    tasks = [space.task(t) for t in metrics]
    try:
        return task_delta_m(metrics, {t: reference[t] for t in metrics}, tasks, on)
    except BranchnasError as exc:
        log.warning("Δm (%s) undefined: %s", on, exc)
        return None


def _train_and_record(model: Any, kind: str, name: str, run_path: Path, space: Any,
                      config: TrainConfig, out_dir: PathLike, device: Any, params: int,
                      flops: Optional[int], tree: Optional[Tree], meta: Dict[str, Any],
                      extra: Optional[Dict[str, Any]] = None) -> ModelResult:
    if check_reusable(run_path, config):
        return read_result(run_path)
    reference = single_metrics(space, out_dir, config, device=device)
    train_set, val_set = space_datasets(space)

    def finalize(raw: Dict[str, Any]) -> Dict[str, Any]:
        metrics = _metrics_only(raw, space.task_names)
        return asdict(ModelResult(
            model=kind, name=name, space=space.name, params=params, flops=flops, metrics=metrics,
            delta_m=model_delta_m(space, metrics, reference), seed=config.seed,
            delta_m_all=model_delta_m(space, metrics, reference, on="all"),
            tree=tree.to_json() if tree is not None else None,
            extra={**_training_facts(raw), **(extra or {})},
        ))

    # train's value (rank 0's, under torchrun), not a re-read: other ranks may not share the disk
    return ModelResult(**train(model, space.tasks, train_set, val_set, config, run_path, device,
                               meta=meta, finalize=finalize))


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
    run_path = RunLayout(out_dir).tree(name)
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
        singles = run_singles(space, out_dir, config, device=device, check=False)
        sizes = [r.params for r in singles.values()]
        return ModelResult(model="single", name="single-task", space=space.name,
                           params=sum(sizes), flops=None,
                           metrics={t: r.metrics[t] for t, r in singles.items()}, delta_m=0.0, delta_m_all=0.0,
                           seed=config.seed)
    options = dict(options or {})
    run_path = RunLayout(out_dir).baseline(name)
    torch.manual_seed(config.seed)
    model = create_baseline(name, space, **options)
    if meta.get("init_from_single") and not RunDir(run_path).is_done():
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

