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

**Execution** (optuna's ask-and-tell): the driver asks the study for a trial, draws its
settings, and submits a ``tune_trial`` job (:mod:`branchnas.pipeline.jobs`) to the executor
(:mod:`branchnas.pipeline.executor`: this process, local processes, or Ray tasks spread over
a cluster); when the job returns, the driver tells the study. It keeps as many trials in
flight as the executor runs jobs (the TPE sampler's ``constant_liar`` spreads them out).
*Pruning* happens inside the job, mid-training: after each epoch it reports the objective
(``trial.report``) and asks ``trial.should_prune()`` through the study's storage, which
every job can reach (a journal file beside the results, on the shared file system of a
cluster, or the database). We chose that over returning the curve and letting the driver
replay it, because a replayed curve can only prune a trial that has already spent its
epochs. The study (``tune:<space>:<model>``) lives in ``--storage`` when given (SQLite,
PostgreSQL: optuna's RDB storage with its heartbeat and ``RetryFailedTrialCallback``, so
several drivers can share it and a dead driver's trials are re-run), else in a journal file
beside the results (one driver at a time). Each trial trains in its own run directory,
``trial-<n>``, shared by the retries of trial n, so a job whose worker died, or a tuning run
again after its driver died, resumes the trial from its checkpoint.

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

import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import BranchnasError
from ..training.rundir import atomic_write_text
from .layout import RunLayout, model_slug
from .resolve import DEFAULT_PROFILE, DEFAULT_TRIALS, profile_space, read_tuned, resolve_training
from .jobs import JobSpec, make_job, register_job_kind

__all__ = [
    "DEFAULT_TRIALS",
    "TUNING_SPACE",
    "HOLDOUT",
    "PRUNER_STARTUP_TRIALS",
    "PRUNER_WARMUP_EPOCHS",
    "OBJECTIVE",
    "tune",
    "run_tune_trial",
    "open_storage",
    "redact_url",
    "HEARTBEAT_INTERVAL",
    "GRACE_PERIOD",
    "TRIAL_RETRIES",
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

# DEFAULT_TRIALS (trials per model, the same for every compared method) is the resolver's
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


def tuned_path(out_dir: PathLike, space: Any, model: Any) -> Path:
    """``<out_dir>/tuned/<space name>/<model slug>.json``.

    Args:
        out_dir: the run's root directory.
        space: a ``SearchSpace``, its name, or its TOML path.
        model: a model id (:func:`build_model`).
    """
    return RunLayout(out_dir).tuned(_space_name(space), model)


def load_tuned(out_dir: PathLike, space: Any, model: Any) -> Optional[Dict[str, Any]]:
    """The tuning result of ``model`` (the JSON written by :func:`tune`), or None."""
    return read_tuned(tuned_path(out_dir, space, model))


def tuned_overrides(out_dir: PathLike, space: Any, model: Any) -> Dict[str, Any]:
    """The tuned training settings of ``model`` ({} when it was not tuned). Commands merge
    them through :func:`branchnas.pipeline.resolve.resolve_training` (space < profile <
    tuned < command line)."""
    tuned = load_tuned(out_dir, space, model)
    return dict(tuned["settings"]) if tuned else {}


def tuning_study_name(space_name: str, model: str) -> str:
    """The optuna study of one model's tuning."""
    return f"tune:{space_name}:{model_slug(model)}"


def tuning_storage_url(out_dir: PathLike, space_name: str, model: str,
                       storage: Optional[str] = None) -> str:
    """Where the tuning study lives: ``storage`` when given, else a journal file beside the result."""
    if storage is not None:
        return storage
    return f"journal:{RunLayout(Path(out_dir).resolve()).tuning_journal(space_name, model)}"


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


HEARTBEAT_INTERVAL = 60  # seconds: a database storage's heartbeat of each trial in flight
GRACE_PERIOD = 300  # seconds without a heartbeat after which a trial's driver counts as dead
TRIAL_RETRIES = 3  # optuna's RetryFailedTrialCallback: reruns of a trial whose driver died


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and result files)."""
    text = str(url)
    if "://" not in text:
        return text
    scheme, rest = text.split("://", 1)
    creds, sep, host = rest.rpartition("@")
    if not sep or ":" not in creds:
        return text
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


_STORAGES: Dict[Tuple[str, int], Any] = {}


def open_storage(url: str) -> Any:
    """The optuna storage behind ``url`` (one object per URL and process).

    ``journal:<path>`` is a journal file (the default, beside the results; on a cluster it
    lies on the shared file system). ``sqlite:///path.db`` and ``postgresql://...`` are
    optuna's RDB storage with its heartbeat (:data:`HEARTBEAT_INTERVAL`,
    :data:`GRACE_PERIOD`) and ``RetryFailedTrialCallback``, so several drivers may share one
    study and the trials of a driver that died are run again by another.

    Raises:
        BranchnasError: for an unknown scheme, a missing driver or an unreachable database.
    """
    import optuna

    key = (str(url), os.getpid())
    if key in _STORAGES:
        return _STORAGES[key]
    text = str(url)
    if text.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(text[len("journal:"):].removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        storage: Any = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    elif text.startswith(("sqlite:///", "postgresql", "postgres://", "mysql")):
        if text.startswith("postgres://"):  # SQLAlchemy knows only "postgresql"
            text = "postgresql" + text[len("postgres"):]
        if text.startswith("sqlite:///"):
            Path(text[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        retry_cls, retry_kw = _retry_callback()
        try:
            with warnings.catch_warnings():  # optuna marks the heartbeat experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    text, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                    **{retry_kw: retry_cls(max_retry=TRIAL_RETRIES)},
                    engine_kwargs={"pool_pre_ping": True} if not text.startswith("sqlite") else
                    {"connect_args": {"timeout": 120}})
        except ImportError as exc:
            raise BranchnasError(f"storage {redact_url(text)} needs a database driver ({exc}); "
                                 "for PostgreSQL: pip install -e .[postgres]") from None
        except Exception as exc:  # SQLAlchemy's errors
            raise BranchnasError(f"cannot open storage {redact_url(text)} ({type(exc).__name__}: "
                                 f"{exc}); check that the database runs and the URL is right") from None
    else:
        raise BranchnasError(f"storage {redact_url(text)!r} is not supported; use "
                             "sqlite:///path.db or postgresql://user:password@host/database")
    _STORAGES[key] = storage
    return storage


def _retry_callback() -> Tuple[Any, str]:
    """optuna's callback re-enqueueing a stale trial, and the RDBStorage argument taking it
    (``RetryHeartbeatStaleTrialCallback`` since optuna 4.9, ``RetryFailedTrialCallback`` before)."""
    import optuna

    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        return optuna.storages.RetryHeartbeatStaleTrialCallback, "heartbeat_stale_trial_callback"
    return optuna.storages.RetryFailedTrialCallback, "failed_trial_callback"


def _sampler_and_pruner(trials: int, seed: int, pruner_startup: int,
                        pruner_warmup: int) -> Tuple[Any, Any]:
    import optuna

    # constant_liar: trials in flight count as bad guesses, so parallel trials spread out
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

    from ..training.single import space_dataset

    if not 0 < holdout < 1:
        raise BranchnasError(f"holdout must be in (0, 1), got {holdout}")
    full = space_dataset(space, "train", tasks, dataset_kwargs)
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


def _worker_trial(storage: Any, study: Any, name: str, number: int) -> Tuple[Any, int]:
    """The driver's trial ``number`` as a :class:`optuna.trial.Trial` in a job's process, and
    its id (through the storage's public lookups: study id by name, trial id by number)."""
    import optuna

    study_id = storage.get_study_id_from_name(name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    return optuna.trial.Trial(study, trial_id), trial_id


@register_job_kind("tune_trial")
def run_tune_trial(spec: JobSpec) -> Dict[str, Any]:
    """A ``tune_trial`` job: train one trial's settings, reporting each epoch's objective.

    The driver asked the study for the trial and drew its ``settings``; this trains them into
    the job's run directory and, after each epoch, reports the objective to the study
    (``trial.report``) and stops when the pruner says so (``trial.should_prune``), through the
    study's storage (the journal file on the shared file system, or the database), so a trial
    on any node is pruned mid-training. The driver tells the study the outcome.

    Params: ``space``, ``model``, ``storage`` and ``study``, ``trial`` (its number),
    ``settings``, ``overrides``, ``dataset``, ``holdout``, ``trials``, ``sampler_seed``,
    ``pruner_startup_trials``, ``pruner_warmup_epochs``, ``device``.

    Returns:
        ``{"state": COMPLETE | PRUNED | FAIL, "value", "curve" (objective per epoch from 1),
        "trial", "settings", "epochs_run", "metrics" (when complete), "error" (when failed)}``;
        a complete trial's result is its run directory's ``done``.
    """
    import optuna

    from ..spaces import load_space
    from ..training import train

    p = spec["params"]
    storage = open_storage(p["storage"])
    _, pruner = _sampler_and_pruner(int(p["trials"]), int(p["sampler_seed"]),
                                    int(p["pruner_startup_trials"]), int(p["pruner_warmup_epochs"]))
    study = optuna.load_study(study_name=p["study"], storage=storage, pruner=pruner)
    trial, trial_id = _worker_trial(storage, study, p["study"], int(p["trial"]))
    settings = dict(p["settings"])
    profile = p.get("profile")
    space = profile_space(load_space(p["space"]), profile)
    base = resolve_training(space, profile, overrides=p.get("overrides") or {})
    net, tasks = build_model(space, p["model"], seed=base.seed)
    train_set, hold_set = _datasets(space, [t.name for t in tasks], p.get("dataset") or {},
                                    float(p["holdout"]))
    # every trial trains the same epochs on the same train part (its own held-out part is
    # the objective's): the convergence rule, which would hold out and stop, stays off here
    config = base.replace(**settings, eval_every=base.epochs, progress=False, patience=0)
    device = p.get("device")
    eval_kw = {"device": device, "batch_size": config.eval_batch_size,
               "max_batches": config.max_val_batches}
    reference = validation_losses(net, tasks, hold_set, **eval_kw)
    curve: Dict[int, float] = {}
    reported = set(storage.get_trial(trial_id).intermediate_values)  # by an attempt that died

    def on_epoch_end(record: Mapping[str, Any]) -> None:
        epoch = int(record["epoch"])
        value = normalised_objective(validation_losses(net, tasks, hold_set, **eval_kw), reference)
        curve[epoch] = value
        if not math.isfinite(value):
            raise BranchnasError(f"the holdout loss is not finite after epoch {epoch}")
        if epoch not in reported:  # a resumed attempt trains the epochs after the checkpoint
            trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    def outcome(state: str, **extra: Any) -> Dict[str, Any]:
        # the epochs an earlier attempt reported before its worker died, then this attempt's
        full = {**{int(k): v for k, v in storage.get_trial(trial_id).intermediate_values.items()},
                **curve}
        steps = sorted(full)
        return {"state": state, "value": full[steps[-1]] if steps else None,
                "curve": [full[s] for s in steps], "trial": int(p["trial"]), "settings": settings,
                "epochs_run": steps[-1] if steps else 0, **extra}

    def complete(raw: Mapping[str, Any]) -> Dict[str, Any]:
        last = config.epochs
        if last not in curve and last not in storage.get_trial(trial_id).intermediate_values:
            # an attempt stopped between the last checkpoint and its report: score it now
            curve[last] = normalised_objective(
                validation_losses(net, tasks, hold_set, **eval_kw), reference)
            trial.report(curve[last], last)
        return outcome("COMPLETE", metrics={t.name: raw[t.name] for t in tasks})

    meta = {"stage": "tune", "space": space.name, "model": p["model"], "run": Path(spec["out_dir"]).name}
    try:
        return train(net, tasks, train_set, hold_set, config, spec["out_dir"], device, meta=meta,
                     on_epoch_end=on_epoch_end, finalize=complete)
    except optuna.TrialPruned:
        log.info("tune %s: trial %s pruned", p["model"], p["trial"])
        return outcome("PRUNED")
    except BranchnasError as exc:
        log.warning("tune %s: trial %s failed: %s", p["model"], p["trial"], exc)
        return outcome("FAIL", error=str(exc))


# ----------------------------------------------------------------------------- driver


@dataclass
class _Tuning:
    """One model's tuning as the driver runs it: the study, its budget and the trial jobs' params."""

    study: Any
    trials: int
    epochs: int
    batch_sizes: List[int]
    params: Dict[str, Any]
    layout: Any
    space_name: str
    resources: Dict[str, float]


def _prepare(space: Any, model: str, trials: int, out_dir: PathLike, storage: Optional[str],
             overrides: Optional[Mapping[str, Any]], dataset: Optional[Mapping[str, Any]],
             holdout: float, sampler_seed: int, pruner_startup_trials: int,
             pruner_warmup_epochs: int, device: Optional[str],
             profile: Optional[str] = None) -> _Tuning:
    """Check the settings, open (or create) the study, check its budget, seed the default."""
    from ..spaces import load_space
    from .executors import job_resources

    if trials < 1:
        raise BranchnasError(f"tuning needs at least 1 trial, got {trials}")
    if pruner_startup_trials < 0 or pruner_warmup_epochs < 0:
        raise BranchnasError("pruner_startup_trials and pruner_warmup_epochs must be >= 0")
    ref, name = _space_ref(space)
    loaded = profile_space(load_space(ref), profile)  # the resolver's profile layer
    overrides = dict(overrides or {})
    tuned_keys = {"optimizer", "lr", "batch_size", "schedule", "step_size", "gamma", "momentum"}
    clash = sorted(tuned_keys & set(overrides))
    if clash:
        raise BranchnasError(f"{', '.join(clash)} are tuned; do not fix them when tuning")
    base = resolve_training(loaded, profile, overrides=overrides)  # the resolver's order and checks
    build_model(loaded, model)  # an unknown model id fails here, before any work
    url = tuning_storage_url(out_dir, name, model, storage)
    study_name = tuning_study_name(name, model)
    study = _load_study(url, study_name, trials, sampler_seed, pruner_startup_trials,
                        pruner_warmup_epochs)
    budget = json.loads(json.dumps({
        "trials": trials, "epochs": base.epochs, "overrides": overrides,
        "dataset": dict(dataset or {}), "holdout": holdout, "sampler_seed": sampler_seed,
        "pruner_startup_trials": pruner_startup_trials,
        "pruner_warmup_epochs": pruner_warmup_epochs,
        **({"profile": profile} if profile not in (None, DEFAULT_PROFILE) else {})}))
    stored = study.user_attrs.get("budget")
    if stored is None:
        study.set_user_attr("budget", budget)
    elif stored != budget:
        diff = sorted(k for k in set(stored) | set(budget) if stored.get(k) != budget.get(k))
        raise BranchnasError(
            f"the tuning of {model} in {redact_url(url)} was started with another budget "
            f"({', '.join(diff)} differ); tune again with the same settings or another out_dir"
        )
    batch_sizes = _batch_sizes(_tuning_train_size(loaded, model, dataset or {}, holdout))
    if not study.get_trials(deepcopy=False):  # first time: try the untuned default first
        default = _default_params(base, batch_sizes)
        if default is not None:
            study.enqueue_trial(default, user_attrs={"default": True})
    params = {"space": ref, "model": model, "storage": url, "study": study_name,
              "trials": trials, "overrides": overrides, "dataset": dict(dataset or {}),
              "holdout": holdout, "sampler_seed": sampler_seed,
              "pruner_startup_trials": pruner_startup_trials,
              "pruner_warmup_epochs": pruner_warmup_epochs, "device": device, "profile": profile}
    return _Tuning(study=study, trials=trials, epochs=base.epochs, batch_sizes=batch_sizes,
                   params=params, layout=RunLayout(out_dir), space_name=name,
                   resources=job_resources(base, device))


def _root_number(frozen: Any) -> int:
    """The trial a trial re-runs (optuna's RetryFailedTrialCallback), else its own number:
    retries of one trial share its run directory, so they resume its checkpoint."""
    import optuna

    with warnings.catch_warnings():  # "experimental" since optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        root = _retry_callback()[0].retried_trial_number(frozen)
    return frozen.number if root is None else int(root)


def _trial_job(t: _Tuning, number: int, root: int, settings: Mapping[str, Any]) -> JobSpec:
    return make_job("tune_trial", {**t.params, "trial": number, "settings": dict(settings)},
                    t.layout.tuning_trial(t.space_name, t.params["model"], root), t.resources)


def _latest_attempts(frozen: Sequence[Any]) -> Dict[int, Any]:
    """Per root trial, its latest attempt (the trial the budget counts)."""
    latest: Dict[int, Any] = {}
    for f in sorted(frozen, key=lambda f: f.number):
        latest[_root_number(f)] = f
    return latest


def _drive(t: _Tuning, executor: Any) -> List[Dict[str, Any]]:
    """Ask, submit, tell until the budget's trials are done; returns the jobs' results.

    Keeps ``executor.parallelism`` trials in flight. A trial left running by a driver that
    died is submitted again (journal storage: one driver per study, so every running trial
    is an orphan; database storage: optuna's heartbeat fails stale trials and its
    RetryFailedTrialCallback enqueues them again); its run directory resumes or is done.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    study = t.study
    storage = open_storage(t.params["storage"])
    beating = isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval()
    in_flight: Dict[Any, Tuple[int, int]] = {}  # future -> (trial number, trial id)
    results: List[Dict[str, Any]] = []
    study_id = storage.get_study_id_from_name(t.params["study"])

    def submit(frozen_or_trial: Any, settings: Mapping[str, Any]) -> None:
        number = frozen_or_trial.number
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        if beating:
            storage.record_heartbeat(trial_id)
        root = _root_number(study.get_trials(deepcopy=False)[number])
        in_flight[executor.submit(_trial_job(t, number, root, settings))] = (number, trial_id)

    if not beating:  # journal: running trials were asked by a driver that is gone
        for f in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            log.info("tune: trial %d was left running; submitting it again", f.number)
            submit(f, _settings_of(f))
    while True:
        if beating:
            with warnings.catch_warnings():  # "experimental" since optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(study)  # optuna's: stale trials fail, their retries are enqueued
            for _number, trial_id in in_flight.values():
                storage.record_heartbeat(trial_id)
        frozen = study.get_trials(deepcopy=False)
        waiting = sum(f.state == TrialState.WAITING for f in frozen)
        to_ask = waiting + max(0, t.trials - len(_latest_attempts(frozen)))
        while to_ask > 0 and len(in_flight) < executor.parallelism:
            with warnings.catch_warnings():
                # optuna warns that heartbeats are meant for Study.optimize; here the driver
                # records them itself for every trial it has in flight
                warnings.simplefilter("ignore")
                trial = study.ask()
            submit(trial, suggest_settings(trial, t.epochs, t.batch_sizes))
            to_ask -= 1
        if not in_flight:
            return results
        finished, _ = wait(list(in_flight), timeout=HEARTBEAT_INTERVAL if beating else None,
                           return_when=FIRST_COMPLETED)
        for future in finished:
            number, _ = in_flight.pop(future)
            try:
                result = future.result()
            except Exception as exc:  # the job crashed (not a diverged trial: that is FAIL below)
                log.warning("tune: trial %d failed: %s", number, exc)
                result = {"state": "FAIL", "trial": number, "error": f"{type(exc).__name__}: {exc}"}
            results.append(result)
            _tell(study, number, result)


def _tell(study: Any, number: int, result: Mapping[str, Any]) -> None:
    from optuna.trial import TrialState

    state = result.get("state")
    try:
        if state == "COMPLETE":
            study.tell(number, float(result["value"]))
        elif state == "PRUNED":
            study.tell(number, state=TrialState.PRUNED)
        else:
            study.tell(number, state=TrialState.FAIL)
    except (ValueError, RuntimeError) as exc:  # finished already (e.g. failed as stale meanwhile)
        log.warning("tune: cannot record trial %d (%s); keeping the study's record", number, exc)


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


def _tuning_train_size(space: Any, model: str, dataset: Mapping[str, Any], holdout: float) -> int:
    from ..training.single import space_dataset

    kind, sep, arg = model.partition(":")
    tasks = [arg] if kind == "single" and sep else None
    n = len(space_dataset(space, "train", tasks, dataset))
    return n - max(1, round(holdout * n))


def summarise_tuning(
    space: Any, model: str, out_dir: PathLike = "runs", *,
    storage: Optional[str] = None, results: Optional[Sequence[Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """Write :func:`tuned_path` from the tuning study; return what was written.

    Args:
        space: as for :func:`tune`.
        model: the model id.
        out_dir: the run's root.
        storage: the storage URL, when the study lives in a database.
        results: the trial jobs' results (to name a trial error when nothing completed).

    Raises:
        BranchnasError: when the study does not exist or no trial completed (the first
            trial error is named).
    """
    from optuna.trial import TrialState

    from ..spaces import load_space

    ref, name = _space_ref(space)
    url = tuning_storage_url(out_dir, name, model, storage)
    study = _load_study(url, tuning_study_name(name, model), 1, 0)
    budget = study.user_attrs.get("budget")
    if budget is None:
        raise BranchnasError(f"{model} has no tuning study in {redact_url(url)}; tune it first")
    counted = list(_latest_attempts(study.get_trials(deepcopy=False)).values())
    counts = {label: sum(t.state == state for t in counted) for label, state in
              (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED),
               ("failed", TrialState.FAIL))}
    complete = [t for t in counted if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        errors = [r.get("error") for r in (results or []) if r.get("error")]
        first = f"; first error: {errors[0]}" if errors else ""
        raise BranchnasError(
            f"no tuning trial of {model} completed ({counts['pruned']} pruned, {counts['failed']} "
            f"failed{first}); fix the cause and tune again"
        )
    best = min(complete, key=lambda t: (t.value, t.number))
    profile = budget.get("profile")
    base = resolve_training(profile_space(load_space(ref), profile), profile,
                            overrides=budget["overrides"])
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
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
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
    overrides: Optional[Mapping[str, Any]] = None,
    dataset: Optional[Mapping[str, Any]] = None,
    holdout: float = HOLDOUT,
    sampler_seed: int = 0,
    pruner_startup_trials: int = PRUNER_STARTUP_TRIALS,
    pruner_warmup_epochs: int = PRUNER_WARMUP_EPOCHS,
    device: Optional[str] = None,
    executor: Any = None,
    profile: Optional[str] = None,
) -> Dict[str, Any]:
    """Tune ``model``'s training settings with ``trials`` trials; write and return the result.

    The driver (this call) asks the study for each trial and draws its settings, runs it as a
    ``tune_trial`` job on ``executor`` (several at once when the executor runs several jobs;
    on Ray they spread over the cluster) and tells the study the outcome. An interrupted
    tuning, run again, resumes where it stopped: finished trials are kept, trials that were
    running resume from their checkpoints.

    Args:
        space: a search-space name or TOML path (what jobs load), or a ``SearchSpace``.
        model: a model id (:func:`build_model`).
        trials: the budget: trials per model, the same for every compared method.
        out_dir: the run's root; trials train in ``<out_dir>/tuned/<space>/<slug>/trial-<i>``.
        storage: an optuna storage URL for the study (sqlite:///..., postgresql://...); None:
            a journal file beside the result.
        overrides: training settings that are not tuned (e.g. ``{"epochs": 4}``).
        dataset: dataset keyword arguments over the space's (e.g. a smaller ``size``).
        holdout: fraction of the training split that scores the trials.
        sampler_seed: the TPE sampler's seed.
        pruner_startup_trials: finished trials before the median pruner may prune.
        pruner_warmup_epochs: epochs a trial always runs before it may be pruned.
        device: where trials train (None: CUDA when available).
        executor: an :class:`~branchnas.pipeline.executor.ExecutorConfig` or an executor
            (None: trials one after another in this process).
        profile: a :data:`~branchnas.pipeline.resolve.PROFILES` key applied to the space and
            the untuned settings, as ``run --profile`` does (None: the space's own settings);
            part of the budget.

    Returns:
        The content of :func:`tuned_path` (``settings`` are the best trial's).
    """
    from .executor import Executor, ExecutorConfig

    cfg = executor if isinstance(executor, ExecutorConfig) else None
    if cfg is not None:
        cfg.validate()
    t = _prepare(space, model, trials, out_dir, storage, overrides, dataset, holdout,
                 sampler_seed, pruner_startup_trials, pruner_warmup_epochs, device, profile)
    if isinstance(executor, Executor):
        results = _drive(t, executor)
    else:
        with (cfg or ExecutorConfig()).create() as ex:
            results = _drive(t, ex)
    return summarise_tuning(space, model, out_dir, storage=storage, results=results)


_BUDGET_KEYS = ("trials", "epochs", "overrides", "dataset", "holdout", "sampler_seed",
                "pruner_startup_trials", "pruner_warmup_epochs", "profile")


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
