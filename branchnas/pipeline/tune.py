"""Hyperparameter tuning with an equal budget per method (``branchnas tune``).

The paper compares methods "under the same conditions"; a method whose learning rate was
tuned and one whose was not are not comparable. :func:`tune` runs one optuna study per
(search space, model) over the optimiser, learning rate, batch size and schedule, with the
same budget for every model: the same number of trials, the same epochs per trial, the
same search space, sampler and pruner. The best settings land in a JSON file that
``train``/``run`` merge between the space's ``[training]`` table and the command line.

**Models** (:func:`build_model`): ``single:<task>`` (the single-task network of a task),
``tree:<path.json>`` (a ``BranchedNet`` of a tree file), or a registered baseline name
(``single``, ``shared``, ``cross_stitch``, ``mtan``, ``nddr``; all the space's tasks).

**Search space** (:data:`TUNING_SPACE`): optimiser Adam or SGD (momentum 0.9); learning rate
log-uniform in 1e-4..1e-2 for Adam, 1e-3..1e-1 for SGD (two parameters, ``lr_adam`` and
``lr_sgd``, so TPE models each on its own scale); batch size in {8, 16, 32, 64} (those not
larger than the tuning training set); schedule ``none``, ``step`` (with ``step_size`` in
1..epochs-1 and gamma 0.1) or ``poly``. The first trial is always the untuned default
(the space's ``[training]`` over the built-in defaults), so tuning never ends worse than
not tuning, on the tuning objective.

**Objective** (minimised): the mean over tasks of the validation loss after each epoch,
each divided by the same task's validation loss of the *initial* network::

    objective = (1/T) Σ_t L_t(model after epoch e) / L_t(model at initialisation)

The initial network is the same for every trial of a model (its weights come from the
fixed seed), so the normaliser is a constant per task: tasks whose losses live on
different scales (cross-entropy, L1 depth, angular normals) count equally, as in Δm, and
the objective is defined from the first epoch on, which the pruner needs. Δm itself is
not used because it needs trained single-task references, which are themselves among the
models being tuned. The loss is each task's ``Task.loss`` averaged over samples (samples
without a label for a task are left out of that task's mean).

**Validation split**: trials train on the training split minus a held-out part
(``holdout``, 20 % by default, the same seeded subset for every model) and are scored on
that held-out part, so the ``val`` split that final results are reported on is never
used for selection.

**Pruning**: optuna's ``MedianPruner`` on the per-epoch objective: after
:data:`PRUNER_STARTUP_TRIALS` finished trials, a trial whose objective after epoch e (e ≥ 2)
is worse than the median of earlier trials at epoch e stops. Pruned trials count toward
the budget. Trials that diverge (the trainer stops on a non-finite loss) count as failed.

**Jobs**: each trial is a ``tune_trial`` job (:mod:`branchnas.pipeline.jobs`), run in this
process or by queue workers (:mod:`branchnas.pipeline.queue`). The tuning study lives on
the queue's storage when there is one (study ``tune:<space>:<model>``), else in a journal
file beside the results. A job killed mid-trial resumes the same optuna trial (same
settings) from its last checkpoint.

**Output**: ``<out_dir>/tuned/<space>/<model-slug>.json`` (:func:`tuned_path`)::

    {"space": "scenes", "model": "single:semseg",
     "settings": {"optimizer": "sgd", "lr": 0.031, "batch_size": 16, "schedule": "poly"},
     "objective": 0.412, "trial": 7,
     "budget": {"trials": 20, "epochs": 8, "holdout": 0.2, ..., "complete": 14, "pruned": 6,
                "failed": 0}, ...}

``settings`` holds :class:`~branchnas.training.TrainConfig` field names only; merge it with
:func:`tuned_overrides`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import BranchnasError
from .jobs import JobSpec, current_job, make_job, register_job_kind
from .queue import DEFAULT_STUDY, redact_url, run_jobs

__all__ = [
    "DEFAULT_TRIALS",
    "TUNING_SPACE",
    "HOLDOUT",
    "PRUNER_STARTUP_TRIALS",
    "PRUNER_WARMUP_EPOCHS",
    "OBJECTIVE",
    "tune",
    "tune_jobs",
    "summarise_tuning",
    "tuned_path",
    "load_tuned",
    "tuned_overrides",
    "model_slug",
    "build_model",
    "suggest_settings",
    "validation_losses",
    "normalised_objective",
    "tuning_study_name",
    "tuning_storage_url",
    "check_equal_budgets",
]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

DEFAULT_TRIALS = 20  # tuning trials per model: the same for every compared method
HOLDOUT = 0.2  # fraction of the training split held out to score trials
PRUNER_STARTUP_TRIALS = 4  # finished trials before the median pruner may prune
PRUNER_WARMUP_EPOCHS = 1  # epochs a trial always runs before it may be pruned

TUNING_SPACE: Dict[str, Any] = {
    "optimizer": ["adam", "sgd"],
    "lr": {"adam": [1e-4, 1e-2], "sgd": [1e-3, 1e-1]},  # log-uniform, per optimiser
    "batch_size": [8, 16, 32, 64],
    "schedule": ["none", "step", "poly"],
    "step_size": "1..epochs-1 (schedule step)",
}
"""What is searched (see the module docstring); the JSON output repeats it."""

OBJECTIVE = ("mean over tasks of holdout loss / the initial network's holdout loss "
             "(minimised, per epoch)")


# ----------------------------------------------------------------------------- naming


def model_slug(model: str) -> str:
    """A file-name-safe name for a model id (``tree:<path>`` uses a hash of the file's tree,
    so the same tree gets the same name wherever it lies)."""
    kind, sep, arg = model.partition(":")
    if kind == "tree" and sep:
        from ..tree import Tree

        try:
            text = Tree.load(arg).dumps()
        except BranchnasError:
            text = arg
        return "tree-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-")
    if not slug:
        raise BranchnasError(
            f"model id {model!r} is empty; give e.g. single:<task>, tree:<file> or shared"
        )
    return slug


def _space_ref(space: Any) -> Tuple[str, str]:
    """``(reference a worker can load, the space's name)`` of a space, its name or TOML path."""
    if isinstance(space, (str, os.PathLike)):
        from ..spaces import load_space

        return str(space), load_space(space).name
    return str(getattr(space, "source", None) or space.name), space.name


def _space_name(space: Any) -> str:
    if isinstance(space, str) and not space.endswith(".toml") and "/" not in space:
        return space
    return _space_ref(space)[1]


def tuned_path(out_dir: PathLike, space: Any, model: str) -> Path:
    """``<out_dir>/tuned/<space name>/<model slug>.json``.

    Args:
        out_dir: the run's root directory.
        space: a ``SearchSpace``, its name, or its TOML path.
        model: a model id (:func:`build_model`).
    """
    return Path(out_dir) / "tuned" / _space_name(space) / f"{model_slug(model)}.json"


def load_tuned(out_dir: PathLike, space: Any, model: str) -> Optional[Dict[str, Any]]:
    """The tuning result of ``model`` (the JSON written by :func:`tune`), or None."""
    path = tuned_path(out_dir, space, model)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise BranchnasError(f"{path} is not valid JSON; delete it and tune again") from None


def tuned_overrides(out_dir: PathLike, space: Any, model: str) -> Dict[str, Any]:
    """The tuned training settings of ``model`` ({} when it was not tuned), to merge as
    ``TrainConfig.from_sources(space.training, {**tuned, **command_line})``."""
    tuned = load_tuned(out_dir, space, model)
    return dict(tuned["settings"]) if tuned else {}


def tuning_study_name(space_name: str, model: str) -> str:
    """The optuna study of one model's tuning."""
    return f"tune:{space_name}:{model_slug(model)}"


def tuning_storage_url(out_dir: PathLike, space_name: str, model: str,
                       storage: Optional[str] = None) -> str:
    """Where the tuning study lives: the queue's storage, else a journal file beside the result."""
    if storage is not None:
        return storage
    path = Path(out_dir).resolve() / "tuned" / space_name / f"{model_slug(model)}.journal"
    return f"journal:{path}"


# ----------------------------------------------------------------------------- models


def build_model(space: Any, model: str, seed: Optional[int] = None) -> Tuple[Any, List[Any]]:
    """The network of a model id and the tasks it trains.

    Args:
        space: a ``SearchSpace``.
        model: ``single:<task>``, ``tree:<path.json>`` or a registered baseline name.
        seed: ``torch.manual_seed(seed)`` before building (reproducible weights).

    Returns:
        ``(model, tasks)`` with ``tasks`` the :class:`Task` objects it predicts.

    Raises:
        BranchnasError: for an unknown task, tree file or baseline.
    """
    import torch

    kind, sep, arg = model.partition(":")
    if kind == "single" and sep:
        from ..training import single_task_model

        if arg not in space.task_names:
            raise BranchnasError(
                f"search space {space.name!r} has no task {arg!r}; choose from: "
                f"{', '.join(space.task_names)}"
            )
        return single_task_model(space, arg, seed=seed), [space.task(arg)]
    if seed is not None:
        torch.manual_seed(seed)
    if kind == "tree" and sep:
        from ..models import BranchedNet
        from ..tree import Tree

        tree = Tree.load(arg, depth=space.depth)
        return BranchedNet(tree, space), [space.task(t) for t in tree.tasks]
    if sep:
        raise BranchnasError(
            f"model id {model!r} is not understood; use single:<task>, tree:<file.json> or a "
            "baseline name"
        )
    from ..models.baselines import create_baseline

    return create_baseline(model, space), list(space.tasks)


# ----------------------------------------------------------------------------- objective


def validation_losses(model: Any, tasks: Sequence[Any], dataset: Any, device: Any = None,
                      batch_size: int = 64, max_batches: Optional[int] = None) -> Dict[str, float]:
    """Each task's mean per-sample loss over ``dataset`` (samples without its label left out).

    Returns:
        ``{task: loss}`` (NaN for a task no sample is labelled for).
    """
    import torch
    from torch.utils.data import DataLoader

    from ..data import collate
    from ..training import resolve_device

    dev = resolve_device(device)
    model.to(dev)
    names = [t.name for t in tasks]
    sums = {n: 0.0 for n in names}
    counts = {n: 0 for n in names}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                preds = model(batch["image"].to(dev), tasks=names)
                for t in tasks:
                    per = t.loss(preds[t.name].float(), batch["labels"][t.name].to(dev),
                                 batch["present"][t.name].to(dev), reduction="none")
                    ok = torch.isfinite(per)
                    sums[t.name] += float(per[ok].double().sum())
                    counts[t.name] += int(ok.sum())
    finally:
        model.train(was_training)
    return {n: (sums[n] / counts[n] if counts[n] else math.nan) for n in names}


def normalised_objective(losses: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """``mean_t losses[t] / reference[t]`` over tasks with a finite positive reference
    (inf when a loss is not finite)."""
    ratios = []
    for name, ref in reference.items():
        if not (math.isfinite(ref) and ref > 0):
            continue
        value = losses.get(name, math.nan)
        if not math.isfinite(value):
            return math.inf
        ratios.append(value / ref)
    if not ratios:
        raise BranchnasError(
            "no task has a usable holdout loss to tune on; check that the holdout split has labels"
        )
    return sum(ratios) / len(ratios)


def suggest_settings(trial: Any, epochs: int, batch_sizes: Sequence[int]) -> Dict[str, Any]:
    """Draw one trial's training settings (TrainConfig field names) from the tuning space."""
    optimizer = trial.suggest_categorical("optimizer", list(TUNING_SPACE["optimizer"]))
    low, high = TUNING_SPACE["lr"][optimizer]
    settings: Dict[str, Any] = {
        "optimizer": optimizer,
        "lr": trial.suggest_float(f"lr_{optimizer}", low, high, log=True),
        "batch_size": int(trial.suggest_categorical("batch_size", list(batch_sizes))),
        "schedule": trial.suggest_categorical("schedule", list(TUNING_SPACE["schedule"])),
    }
    if settings["schedule"] == "step":
        settings["step_size"] = trial.suggest_int("step_size", 1, max(1, epochs - 1))
        settings["gamma"] = 0.1
    if optimizer == "sgd":
        settings["momentum"] = 0.9
    return settings


def _default_params(config: Any, batch_sizes: Sequence[int]) -> Optional[Dict[str, Any]]:
    """The untuned config as fixed optuna params (None when it lies outside the space)."""
    low, high = TUNING_SPACE["lr"].get(config.optimizer, (None, None))
    if low is None or not low <= config.lr <= high or config.batch_size not in batch_sizes \
            or config.schedule not in TUNING_SPACE["schedule"]:
        return None
    params = {"optimizer": config.optimizer, f"lr_{config.optimizer}": config.lr,
              "batch_size": config.batch_size, "schedule": config.schedule}
    if config.schedule == "step":
        if not 1 <= config.step_size <= max(1, config.epochs - 1):
            return None
        params["step_size"] = config.step_size
    return params


# ----------------------------------------------------------------------------- study


def _sampler_and_pruner(trials: int, seed: int, pruner_startup: int,
                        pruner_warmup: int) -> Tuple[Any, Any]:
    import optuna

    sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(2, min(10, trials // 2)), constant_liar=True
    )
    # steps are epochs counted from 1: warmup w means epochs 1..w are never pruned
    pruner = optuna.pruners.MedianPruner(n_startup_trials=pruner_startup,
                                         n_warmup_steps=pruner_warmup + 1)
    return sampler, pruner


def _load_study(storage: str, name: str, trials: int, seed: int,
                pruner_startup: int = PRUNER_STARTUP_TRIALS,
                pruner_warmup: int = PRUNER_WARMUP_EPOCHS) -> Any:
    import optuna

    from .queue import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler, pruner = _sampler_and_pruner(trials, seed, pruner_startup, pruner_warmup)
    return optuna.create_study(storage=open_storage(storage), study_name=name, direction="minimize",
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def _datasets(space: Any, tasks: Sequence[str], dataset_kwargs: Mapping[str, Any],
              holdout: float) -> Tuple[Any, Any]:
    """``(train part, holdout part)`` of the space's training split (the same seeded subset
    for every model)."""
    import torch
    from torch.utils.data import Subset

    from ..data import create_dataset

    if not 0 < holdout < 1:
        raise BranchnasError(f"holdout must be in (0, 1), got {holdout}")
    if not space.dataset_name:
        raise BranchnasError(
            f"search space {space.name!r} names no dataset; add [dataset] name = ... to its file"
        )
    kwargs = {**space.dataset_kwargs, **dict(dataset_kwargs)}
    full = create_dataset(space.dataset_name, split="train", tasks=list(tasks), **kwargs)
    n = len(full)
    n_hold = max(1, round(holdout * n))
    if n - n_hold < 1:
        raise BranchnasError(
            f"the training split has {n} item(s), too few to hold some out; use more"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    return Subset(full, sorted(order[n_hold:])), Subset(full, sorted(order[:n_hold]))


def _batch_sizes(n_train: int) -> List[int]:
    sizes = [b for b in TUNING_SPACE["batch_size"] if b <= n_train]
    return sizes or [min(TUNING_SPACE["batch_size"])]


# ----------------------------------------------------------------------------- the job


@register_job_kind("tune_trial")
def run_tune_trial(spec: JobSpec) -> Dict[str, Any]:
    """Executor of a ``tune_trial`` job: one optuna trial (ask, train with pruning, tell).

    Params: ``space``, ``model``, ``storage`` and ``study`` (the tuning study), ``trials``
    (the budget, for the sampler's settings), ``overrides`` (training settings under the
    tuned ones, e.g. epochs), ``dataset`` (dataset keyword arguments over the space's),
    ``holdout``, ``sampler_seed``, ``pruner_startup_trials``, ``pruner_warmup_epochs``,
    ``device``.

    Returns:
        ``{"value", "state" (COMPLETE | PRUNED | FAIL), "trial", "settings", "epochs_run",
        "metrics" (holdout metrics when complete), "error" (when failed)}``.
    """
    import optuna
    from optuna.trial import TrialState

    from ..spaces import load_space
    from ..training import TrainConfig, train

    p = spec["params"]
    out = Path(spec["out_dir"])
    study = _load_study(p["storage"], p["study"], int(p["trials"]), int(p.get("sampler_seed", 0)),
                        int(p.get("pruner_startup_trials", PRUNER_STARTUP_TRIALS)),
                        int(p.get("pruner_warmup_epochs", PRUNER_WARMUP_EPOCHS)))
    record_path = out / "trial.json"
    trial = None
    if record_path.is_file():  # a retry: the same optuna trial, if it is still open
        number = int(json.loads(record_path.read_text(encoding="utf-8"))["number"])
        frozen = study.get_trials(deepcopy=False)[number]
        if frozen.state.is_finished():
            return _trial_result(frozen)
        trial = optuna.trial.Trial(study, frozen._trial_id)
        log.info("tune: resuming trial %d of %s", number, p["study"])
    if trial is None:
        trial = study.ask()
        out.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps({"number": trial.number}) + "\n", encoding="utf-8")

    space = load_space(p["space"])
    base = TrainConfig.from_sources(space.training, p.get("overrides") or {})
    net, tasks = build_model(space, p["model"], seed=base.seed)
    train_set, hold_set = _datasets(space, [t.name for t in tasks], p.get("dataset") or {},
                                    float(p.get("holdout", HOLDOUT)))
    settings = suggest_settings(trial, base.epochs, _batch_sizes(len(train_set)))
    config = base.replace(**settings, eval_every=base.epochs, progress=False)
    device = p.get("device")
    ctx = current_job()
    eval_kw = {"device": device, "batch_size": config.eval_batch_size,
               "max_batches": config.max_val_batches}
    reference = validation_losses(net, tasks, hold_set, **eval_kw)
    values: List[float] = []

    def on_epoch_end(record: Mapping[str, Any]) -> None:
        if ctx is not None:
            ctx.check()
        value = normalised_objective(validation_losses(net, tasks, hold_set, **eval_kw), reference)
        values.append(value)
        if not math.isfinite(value):
            raise BranchnasError(f"the holdout loss is not finite after epoch {record['epoch']}")
        trial.report(value, int(record["epoch"]))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

    meta = {"stage": "tune", "space": space.name, "model": p["model"], "trial": trial.number}
    try:
        result = train(net, tasks, train_set, hold_set, config, out / "run", device,
                       meta=meta, on_epoch_end=on_epoch_end)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        log.info("tune %s: trial %d pruned", p["model"], trial.number)
        return _trial_result(study.get_trials(deepcopy=False)[trial.number])
    except BranchnasError as exc:
        study.tell(trial, state=TrialState.FAIL)
        log.warning("tune %s: trial %d failed: %s", p["model"], trial.number, exc)
        return {**_trial_result(study.get_trials(deepcopy=False)[trial.number]), "error": str(exc)}
    if not values:  # the run was done before (its epochs reported by an earlier attempt)
        frozen = study.get_trials(deepcopy=False)[trial.number]
        last = max(frozen.intermediate_values) if frozen.intermediate_values else None
        if last is not None:
            values.append(frozen.intermediate_values[last])
        else:
            values.append(normalised_objective(
                validation_losses(net, tasks, hold_set, **eval_kw), reference))
    study.tell(trial, values[-1])
    metrics = {t.name: result[t.name] for t in tasks}
    log.info("tune %s: trial %d objective %.4f with %s", p["model"], trial.number, values[-1],
             settings)
    return {**_trial_result(study.get_trials(deepcopy=False)[trial.number]), "metrics": metrics}


def _settings_of(frozen: Any) -> Dict[str, Any]:
    params = dict(frozen.params)
    optimizer = params.get("optimizer")
    settings: Dict[str, Any] = {}
    if optimizer is None:
        return settings
    settings["optimizer"] = optimizer
    settings["lr"] = params.get(f"lr_{optimizer}")
    settings["batch_size"] = params.get("batch_size")
    settings["schedule"] = params.get("schedule")
    if settings["schedule"] == "step":
        settings["step_size"] = params.get("step_size")
        settings["gamma"] = 0.1
    if optimizer == "sgd":
        settings["momentum"] = 0.9
    return settings


def _trial_result(frozen: Any) -> Dict[str, Any]:
    steps = sorted(frozen.intermediate_values)
    value = frozen.value if frozen.value is not None else (
        frozen.intermediate_values[steps[-1]] if steps else None)
    return {"value": value, "state": frozen.state.name, "trial": frozen.number,
            "settings": _settings_of(frozen), "epochs_run": steps[-1] if steps else 0}


# ----------------------------------------------------------------------------- driver


def tune_jobs(
    space: Any,
    model: str,
    trials: int = DEFAULT_TRIALS,
    out_dir: PathLike = "runs",
    *,
    storage: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    dataset: Optional[Mapping[str, Any]] = None,
    holdout: float = HOLDOUT,
    sampler_seed: int = 0,
    pruner_startup_trials: int = PRUNER_STARTUP_TRIALS,
    pruner_warmup_epochs: int = PRUNER_WARMUP_EPOCHS,
    device: Optional[str] = None,
) -> List[JobSpec]:
    """The ``tune_trial`` jobs of one model's tuning (creates its study, seeds the default).

    Args:
        space: a search-space name or TOML path (what workers load), or a ``SearchSpace``.
        model: a model id (:func:`build_model`).
        trials: the budget: trials per model, the same for every compared method.
        out_dir: the run's root; trials go to ``<out_dir>/tuned/<space>/<slug>/trial-<i>``.
        storage: the queue's storage URL (the tuning study is kept there); None: a journal
            file beside the result (jobs run in this process).
        overrides: training settings that are not tuned (e.g. ``{"epochs": 4}``).
        dataset: dataset keyword arguments over the space's (e.g. a smaller ``size``).
        holdout: fraction of the training split that scores the trials.
        sampler_seed: the TPE sampler's seed.
        pruner_startup_trials: finished trials before the median pruner may prune.
        pruner_warmup_epochs: epochs a trial always runs before it may be pruned.
        device: where trials train (None: CUDA when available).

    Returns:
        ``trials`` job specs.
    """
    from ..spaces import load_space
    from ..training import TrainConfig

    if trials < 1:
        raise BranchnasError(f"tuning needs at least 1 trial, got {trials}")
    ref, name = _space_ref(space)
    loaded = load_space(ref)
    overrides = dict(overrides or {})
    tuned_keys = {"optimizer", "lr", "batch_size", "schedule", "step_size", "gamma", "momentum"}
    clash = sorted(tuned_keys & set(overrides))
    if clash:
        raise BranchnasError(f"{', '.join(clash)} are tuned; do not fix them when tuning")
    base = TrainConfig.from_sources(loaded.training, overrides)
    url = tuning_storage_url(out_dir, name, model, storage)
    study_name = tuning_study_name(name, model)
    if pruner_startup_trials < 0 or pruner_warmup_epochs < 0:
        raise BranchnasError("pruner_startup_trials and pruner_warmup_epochs must be >= 0")
    study = _load_study(url, study_name, trials, sampler_seed)
    budget = {"trials": trials, "epochs": base.epochs, "overrides": overrides,
              "dataset": dict(dataset or {}), "holdout": holdout, "sampler_seed": sampler_seed,
              "pruner_startup_trials": pruner_startup_trials,
              "pruner_warmup_epochs": pruner_warmup_epochs}
    budget = json.loads(json.dumps(budget))
    stored = study.user_attrs.get("budget")
    if stored is None:
        study.set_user_attr("budget", budget)
    elif stored != budget:
        diff = sorted(k for k in set(stored) | set(budget) if stored.get(k) != budget.get(k))
        raise BranchnasError(
            f"the tuning of {model} in {redact_url(url)} was started with another budget "
            f"({', '.join(diff)} differ); tune again with the same settings or another out_dir"
        )
    if not study.get_trials(deepcopy=False):  # first time: try the untuned default first
        n_train = _tuning_train_size(loaded, model, dataset or {}, holdout)
        default = _default_params(base, _batch_sizes(n_train))
        if default is not None:
            study.enqueue_trial(default, user_attrs={"default": True})
    slug = model_slug(model)
    root = Path(out_dir) / "tuned" / name / slug
    params = {"space": ref, "model": model, "storage": url, "study": study_name, "trials": trials,
              "overrides": overrides, "dataset": dict(dataset or {}), "holdout": holdout,
              "sampler_seed": sampler_seed, "pruner_startup_trials": pruner_startup_trials,
              "pruner_warmup_epochs": pruner_warmup_epochs, "device": device}
    return [make_job("tune_trial", params, root / f"trial-{i:03d}") for i in range(trials)]


def _tuning_train_size(space: Any, model: str, dataset: Mapping[str, Any], holdout: float) -> int:
    from ..data import create_dataset

    kind, sep, arg = model.partition(":")
    tasks = [arg] if kind == "single" and sep else None
    kwargs = {**space.dataset_kwargs, **dict(dataset)}
    n = len(create_dataset(space.dataset_name, split="train", tasks=tasks, **kwargs))
    return n - max(1, round(holdout * n))


def summarise_tuning(
    space: Any, model: str, out_dir: PathLike = "runs", *,
    storage: Optional[str] = None, results: Optional[Sequence[Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """Write :func:`tuned_path` from the tuning study; return what was written.

    Args:
        space: as for :func:`tune_jobs`.
        model: the model id.
        out_dir: the run's root.
        storage: the queue's storage URL, when the study lives there.
        results: the trial jobs' results (to name a trial error when nothing completed).

    Raises:
        BranchnasError: when the study does not exist or no trial completed (the first
            trial error is named).
    """
    from optuna.trial import TrialState

    from ..spaces import load_space
    from ..training import TrainConfig

    ref, name = _space_ref(space)
    url = tuning_storage_url(out_dir, name, model, storage)
    study = _load_study(url, tuning_study_name(name, model), 1, 0)
    budget = study.user_attrs.get("budget")
    if budget is None:
        raise BranchnasError(f"{model} has no tuning study in {redact_url(url)}; tune it first")
    frozen = study.get_trials(deepcopy=False)
    counts = {label: sum(t.state == state for t in frozen) for label, state in
              (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED),
               ("failed", TrialState.FAIL))}
    complete = [t for t in frozen if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        errors = [r.get("error") for r in (results or []) if r.get("error")]
        first = f"; first error: {errors[0]}" if errors else ""
        raise BranchnasError(
            f"no tuning trial of {model} completed ({counts['pruned']} pruned, {counts['failed']} "
            f"failed{first}); fix the cause and tune again"
        )
    best = min(complete, key=lambda t: (t.value, t.number))
    base = TrainConfig.from_sources(load_space(ref).training, budget["overrides"])
    summary = {
        "space": name,
        "model": model,
        "settings": _settings_of(best),
        "objective": best.value,
        "objective_definition": OBJECTIVE,
        "trial": best.number,
        "budget": {**budget, **counts},
        "search_space": TUNING_SPACE,
        "study": tuning_study_name(name, model),
        "storage": redact_url(url),
        "base_config": base.to_dict(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = tuned_path(out_dir, name, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    log.info("tuned %s on %s: %s (objective %.4f, trial %d); written to %s", model, name,
             summary["settings"], best.value, best.number, path)
    return summary


def tune(
    space: Any,
    model: str,
    trials: int = DEFAULT_TRIALS,
    out_dir: PathLike = "runs",
    *,
    storage: Optional[str] = None,
    queue_study: str = DEFAULT_STUDY,
    overrides: Optional[Mapping[str, Any]] = None,
    dataset: Optional[Mapping[str, Any]] = None,
    holdout: float = HOLDOUT,
    sampler_seed: int = 0,
    pruner_startup_trials: int = PRUNER_STARTUP_TRIALS,
    pruner_warmup_epochs: int = PRUNER_WARMUP_EPOCHS,
    device: Optional[str] = None,
    **wait_kwargs: Any,
) -> Dict[str, Any]:
    """Tune ``model``'s training settings with ``trials`` trials; write and return the result.

    Runs the trials in this process (``storage`` None; an interrupted tuning resumes where
    it stopped) or enqueues them on the queue at ``storage`` and waits for workers
    (:func:`~branchnas.pipeline.queue.wait_for` keyword arguments pass through).
    See :func:`tune_jobs` for the arguments and the module docstring for what is tuned.

    Returns:
        The content of :func:`tuned_path` (``settings`` are the best trial's).
    """
    specs = tune_jobs(space, model, trials, out_dir, storage=storage, overrides=overrides,
                      dataset=dataset, holdout=holdout, sampler_seed=sampler_seed,
                      pruner_startup_trials=pruner_startup_trials,
                      pruner_warmup_epochs=pruner_warmup_epochs, device=device)
    results = run_jobs(specs, storage, queue_study, **wait_kwargs)
    return summarise_tuning(space, model, out_dir, storage=storage, results=results)


_BUDGET_KEYS = ("trials", "epochs", "overrides", "dataset", "holdout", "sampler_seed",
                "pruner_startup_trials", "pruner_warmup_epochs")


def check_equal_budgets(out_dir: PathLike, space: Any, models: Sequence[str]) -> Dict[str, Any]:
    """Check that every model in ``models`` was tuned, all with the same budget.

    Returns:
        The common budget (trials, epochs, overrides, dataset, holdout, sampler seed, pruner).

    Raises:
        BranchnasError: naming a model that was not tuned, or two models whose budgets differ.
    """
    common: Optional[Dict[str, Any]] = None
    first = ""
    for model in models:
        tuned = load_tuned(out_dir, space, model)
        if tuned is None:
            raise BranchnasError(
                f"{model} was not tuned ({tuned_path(out_dir, space, model)} is missing); tune "
                "every compared model with the same budget"
            )
        budget = {k: tuned["budget"].get(k) for k in _BUDGET_KEYS}
        if common is None:
            common, first = budget, model
        elif budget != common:
            diff = sorted(k for k in _BUDGET_KEYS if budget[k] != common[k])
            raise BranchnasError(
                f"{model} and {first} were tuned with different budgets ({', '.join(diff)}); "
                "tune them again with the same trials and settings"
            )
    return dict(common or {})
