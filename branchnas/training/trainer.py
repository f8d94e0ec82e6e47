"""The trainer every stage uses: any multi-task model, partial labels, checkpoints, resume.

:func:`train` fits a model whose ``forward(image, tasks=None)`` returns ``{task: pred}``:

* device: CUDA when present (mixed precision there: bf16, or fp16 with a ``GradScaler``),
  the CPU otherwise (fp32, seeded and deterministic);
* losses from each :class:`~branchnas.tasks.Task`'s ``loss`` with the batch's ``present``
  masks (a sample counts only for the tasks it is labelled for), combined by the
  configured loss weighting (``equal``, ``dwa``, ``uncertainty``);
* optionally UberNet's asynchronous per-group updates (:mod:`.async_updates`) and its
  memory-bounded backward pass (``branchnas.training.memory``);
* Adam or SGD with momentum, learning rate constant, step-decayed per epoch, or poly-decayed
  per iteration (a pure function of the position in training, so nothing to restore);
* the run directory contract (:class:`~branchnas.training.rundir.RunDir`): a metrics line
  and an atomic checkpoint after every epoch, a ``done`` marker last. A run that finds a
  checkpoint resumes from it; on the CPU the result equals an uninterrupted run's exactly
  (each epoch's data order comes from a generator seeded with ``(seed, epoch)``, and the
  checkpoint holds the model, optimizer, weighting, pending asynchronous gradients and
  every RNG state);
* the convergence rule (:mod:`.convergence`, ``TrainConfig.patience``): a slice of the
  training split is held out and evaluated after every epoch; training stops after
  ``patience`` epochs without a better held-out result (``epochs`` caps it), and the best
  epoch's weights (``checkpoints/best.pt``, read with ``weights_only=True``) are restored
  and reported; the validation set is never used for stopping;
* validation with each task's ``meter()`` over the whole validation set;
* data parallelism under ``torchrun`` (:mod:`.ddp`): K processes with ``batch_size`` b each
  train like one process with K·b (sharded batches of the same order, gradients and sample
  counts all-reduced); rank 0 alone writes the run directory and evaluates.

Example (with any model, tasks and datasets following docs/internals.md)::

    result = train(model, space.tasks, train_set, val_set, TrainConfig(epochs=2), "runs/x")
    result["seg"]["miou"], result["images_per_s"]
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from .._device import resolve_device  # the one device resolver (re-exported here)
from ..errors import BranchnasError
from . import _step, ddp
from .async_updates import SHARED, AsyncUpdater
from .config import RUNTIME_FIELDS, TrainConfig
from .convergence import Convergence, holdout_split
from .rundir import RunDir, atomic_write_with
from .tensorboard import TensorBoardLog
from .weighting import ScaledWeighting, Weighting, create_weighting

__all__ = [
    "train",
    "evaluate",
    "resolve_device",
    "resolve_amp",
    "lr_factor",
    "seed_everything",
]

log = logging.getLogger(__name__)

Batch = Dict[str, Any]
EpochCallback = Callable[[Dict[str, Any]], None]

CHECKPOINT_FORMAT = 1
BEST_FORMAT = 1  # checkpoints/best.pt: {"format", "epoch", "model", "weighting"}


# ----------------------------------------------------------------------------- helpers


def resolve_amp(
    mode: str, device: torch.device, needs_plain_backward: bool = False
) -> Optional[torch.dtype]:
    """The autocast dtype for ``mode`` on ``device`` (None: fp32).

    Args:
        mode: ``auto``, ``off``, ``bf16`` or ``fp16`` (``TrainConfig.amp``).
        device: the training device; mixed precision is used on CUDA only.
        needs_plain_backward: True for asynchronous updates or memory-bounded backprop,
            which cannot use fp16's dynamic loss scaling; ``auto`` then avoids fp16.

    Raises:
        BranchnasError: for fp16 together with ``needs_plain_backward``.
    """
    if mode == "off":
        return None
    if device.type != "cuda":
        if mode != "auto":
            log.warning("amp=%s ignored: mixed precision is for CUDA only; training in fp32", mode)
        return None
    bf16_ok = torch.cuda.is_bf16_supported()
    if mode == "auto":
        if bf16_ok:
            return torch.bfloat16
        return None if needs_plain_backward else torch.float16
    if mode == "bf16":
        if not bf16_ok:
            raise BranchnasError("amp=bf16 requested but this GPU lacks bf16; use amp=fp16 or off")
        return torch.bfloat16
    if needs_plain_backward:
        raise BranchnasError(
            "amp=fp16 needs loss scaling, which asynchronous updates and memory-bounded backprop "
            "do not support; use amp=bf16 or amp=off"
        )
    return torch.float16


def lr_factor(config: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the initial learning rate at ``step`` of ``epoch`` (both 0-based).

    ``none``: 1. ``step``: ``gamma ** (epoch // step_size)``. ``poly``:
    ``(1 - i / I) ** poly_power`` with ``i`` the iteration and ``I`` the total iterations.
    """
    if config.schedule == "step":
        return config.gamma ** (epoch // config.step_size)
    if config.schedule == "poly":
        total = max(1, config.epochs * steps_per_epoch)
        done = epoch * steps_per_epoch + step
        return max(0.0, 1.0 - done / total) ** config.poly_power
    return 1.0


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data-order generator of one epoch: a function of (seed, epoch) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy's and python's from it
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _default_collate() -> Callable[[List[Any]], Batch]:
    from ..data import collate

    return collate


def _to_device(batch: Batch, device: torch.device, names: Sequence[str]) -> Batch:
    """The image and the labels of ``names`` on ``device`` (other tasks' labels dropped)."""
    nb = device.type == "cuda"
    return {
        "image": batch["image"].to(device, non_blocking=nb),
        "labels": {t: batch["labels"][t].to(device, non_blocking=nb) for t in names},
        "present": {t: batch["present"][t].to(device, non_blocking=nb) for t in names},
    }


def _task_names(tasks: Sequence[Any]) -> List[str]:
    names = [t.name for t in tasks]
    if not names:
        raise BranchnasError("train() got no tasks; give at least one Task")
    if len(set(names)) != len(names):
        raise BranchnasError(f"train() got duplicate task names {names}; give each task once")
    return names


def _check_batch(batch: Batch, names: Sequence[str]) -> None:
    missing = [t for t in names if t not in batch["labels"] or t not in batch["present"]]
    if missing:
        raise BranchnasError(
            f"the dataset gives no labels for task(s) {', '.join(missing)}; "
            f"it labels: {', '.join(batch['labels'])} "
            "(use a dataset, or UnionDataset, that covers them)"
        )


def _make_optimizer(config: TrainConfig) -> Callable[[List[Dict[str, Any]]], torch.optim.Optimizer]:
    def make(groups: List[Dict[str, Any]]) -> torch.optim.Optimizer:
        for g in groups:
            g.setdefault("base_lr", g.get("lr", config.lr))  # the schedule scales base_lr
        if config.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)

    return make


def _model_groups(model: nn.Module, lr: float) -> List[Dict[str, Any]]:
    """The model's optimizer param groups: its own ``param_groups(lr)`` when it has one
    (e.g. cross-stitch units at 100× the rate), else one group of every trainable parameter."""
    if callable(getattr(model, "param_groups", None)):
        groups = [dict(g, params=[p for p in g["params"] if p.requires_grad])
                  for g in model.param_groups(lr)]
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    return [g for g in groups if g["params"]]


def _split_by_lr(params: Sequence[nn.Parameter], lrs: Mapping[int, float],
                 lr: float) -> List[Dict[str, Any]]:
    by_lr: Dict[float, List[nn.Parameter]] = {}
    for p in params:
        by_lr.setdefault(lrs.get(id(p), lr), []).append(p)
    return [{"params": ps, "lr": value} for value, ps in by_lr.items()]


def _async_groups(
    model: nn.Module, weighting: Weighting, names: Sequence[str], lr: float
) -> Dict[str, List[Dict[str, Any]]]:
    """Parameter groups for asynchronous updates: shared + one per task (weighting's own
    per-task parameters join their task, without weight decay); each split by the
    learning rate the model's ``param_groups`` gives its parameters."""
    if not (hasattr(model, "shared_parameters") and hasattr(model, "task_parameters")):
        raise BranchnasError(
            "asynchronous updates need a model with shared_parameters() and task_parameters(task); "
            f"{type(model).__name__} has not; set async_updates = false"
        )
    lrs = {id(p): float(g.get("lr", lr)) for g in _model_groups(model, lr) for p in g["params"]}
    groups: Dict[str, List[Dict[str, Any]]] = {}
    assigned = set()
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    assigned.update(id(p) for p in shared)
    for t in names:
        own = [p for p in model.task_parameters(t) if p.requires_grad and id(p) not in assigned]
        assigned.update(id(p) for p in own)
        groups[t] = _split_by_lr(own, lrs, lr) + [
            {"params": weighting.task_parameters(t), "weight_decay": 0.0}]
    leftover = [p for p in model.parameters() if p.requires_grad and id(p) not in assigned]
    if leftover:
        log.info("asynchronous updates: %d parameter tensor(s) in no group are updated as shared",
                 len(leftover))
    w_own = {id(p) for t in names for p in weighting.task_parameters(t)}
    w_rest = [p for p in weighting.parameters() if id(p) not in w_own]
    groups[SHARED] = _split_by_lr(shared + leftover, lrs, lr) + [
        {"params": w_rest, "weight_decay": 0.0}]
    return {SHARED: groups.pop(SHARED), **groups}


# ----------------------------------------------------------------------------- evaluate


def evaluate(
    model: nn.Module,
    tasks: Sequence[Any],
    dataset: Any,
    device: Union[None, str, torch.device] = None,
    batch_size: int = 64,
    *,
    collate_fn: Optional[Callable[[List[Any]], Batch]] = None,
    max_batches: Optional[int] = None,
    amp: str = "auto",
    num_workers: int = 0,
) -> Dict[str, Dict[str, float]]:
    """Each task's metrics over ``dataset`` (exact, from ``Task.meter()``).

    Args:
        model: a multi-task model (``forward(image, tasks) -> {task: pred}``).
        tasks: the :class:`Task` objects to evaluate.
        dataset: items as in docs/internals.md (Data).
        device: where to run (None: CUDA when available).
        batch_size: images per step.
        collate_fn: batches items (default: ``branchnas.data.collate``).
        max_batches: evaluate only the first batches (tiny profiles); None: all.
        amp: mixed-precision mode on CUDA (``TrainConfig.amp``).
        num_workers: DataLoader workers.

    Returns:
        ``{task: {metric: value}}``.
    """
    dev = resolve_device(device)
    metrics, _ = _eval_pass(model, tasks, dataset, dev, batch_size, collate_fn, max_batches, amp,
                            num_workers, with_loss=False)
    return metrics


def _eval_pass(
    model: nn.Module, tasks: Sequence[Any], dataset: Any, dev: torch.device, batch_size: int,
    collate_fn: Optional[Callable[[List[Any]], Batch]], max_batches: Optional[int], amp: str,
    num_workers: int, with_loss: bool,
) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Optional[float]]]:
    """One pass over ``dataset`` in eval mode: each task's metrics and, with ``with_loss``,
    its mean loss over the labelled samples (None for a task labelled nowhere)."""
    names = _task_names(tasks)
    amp_dtype = resolve_amp(amp, dev)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=collate_fn or _default_collate(), pin_memory=dev.type == "cuda",
        generator=torch.Generator().manual_seed(0),  # keeps workers off the global RNG
    )
    meters = {t.name: t.meter() for t in tasks}
    loss_sum = {t: 0.0 for t in names}
    loss_n = {t: 0 for t in names}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                _check_batch(batch, names)
                batch = _to_device(batch, dev, names)
                with _step.autocast(dev, amp_dtype):
                    preds = model(batch["image"], tasks=names)
                for task in tasks:
                    t = task.name
                    meters[t].update(preds[t].float(), batch["labels"][t], batch["present"][t])
                    n = int(batch["present"][t].sum()) if with_loss else 0
                    if n:  # the loss is a mean over the batch's labelled samples
                        loss = task.loss(preds[t].float(), batch["labels"][t], batch["present"][t])
                        loss_sum[t] += float(loss) * n
                        loss_n[t] += n
    finally:
        model.train(was_training)
    metrics = {t: {k: float(v) for k, v in meters[t].compute().items()} for t in names}
    return metrics, {t: (loss_sum[t] / loss_n[t] if loss_n[t] else None) for t in names}


# ----------------------------------------------------------------------------- train


def _restores_torch_threads(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``config.threads`` applies to one training run: the process's thread count is put back
    afterwards, so a caller training several models (or a test session) is left as it was."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)

    return wrapper


@_restores_torch_threads
def train(
    model: nn.Module,
    tasks: Sequence[Any],
    train_set: Any,
    val_set: Any,
    config: TrainConfig,
    run_dir: Union[str, Path, RunDir],
    device: Union[None, str, torch.device] = None,
    *,
    collate_fn: Optional[Callable[[List[Any]], Batch]] = None,
    meta: Optional[Mapping[str, Any]] = None,
    command: Optional[Sequence[str]] = None,
    on_epoch_end: Optional[EpochCallback] = None,
    finalize: Optional[Callable[[Dict[str, Any]], Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """Train ``model`` on ``tasks``, resuming ``run_dir`` if it holds a checkpoint.

    A finished run (``done`` present) is not trained again: its stored result is returned.

    Args:
        model: a multi-task model: ``forward(image, tasks=None) -> {task: pred}``; for
            asynchronous updates also ``shared_parameters()`` and ``task_parameters(task)``.
        tasks: the :class:`~branchnas.tasks.Task` objects to train (loss and meter).
        train_set: training items (docs/internals.md, Data); samples without a task's label
            (``present`` False) do not count for that task.
        val_set: validation items; metrics come from the whole set.
        config: the resolved :class:`TrainConfig`.
        run_dir: the run directory (path or :class:`RunDir`).
        device: None picks CUDA when available, else the CPU.
        collate_fn: batches items (default: ``branchnas.data.collate``).
        meta: extra JSON-able facts stored in ``config.json`` (space, tree, ...); they must
            match on resume.
        command: the command line for ``command.txt`` (default: ``sys.argv``).
        on_epoch_end: called with each epoch's metrics record after its checkpoint is
            written (raising from it stops training; the run resumes from that epoch).
        finalize: turns the result below into what ``done`` stores and this returns (the
            pipeline stores its ModelResult there, so a run has one completion marker).

    Returns:
        ``{task: {metric: value}}``, the validation metrics of the weights the run ends with
        (the convergence rule's best epoch, else the last), plus ``"epochs"`` (trained),
        ``"max_epochs"``, ``"best_epoch"``, ``"stop_reason"`` (``"plateau"`` or
        ``"max_epochs"``), ``"monitor"``, ``"holdout_size"`` and the training cost:
        ``"images_seen"``, ``"seconds"`` (training and evaluation), ``"device"``,
        ``"images_per_s"`` (training throughput over all epochs).

    Raises:
        BranchnasError: on bad input (unknown weighting, tasks the data does not label,
            a run directory started with another config, ...).
    """
    ctx = ddp.current_context()
    main = ctx is None or ctx.is_main
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    # rank 0 alone reads and writes the run directory (other machines may not share it)
    run_config = {**config.to_dict(), "tasks": _task_names(tasks), "model": type(model).__name__,
                  "parameters": sum(p.numel() for p in model.parameters()), **dict(meta or {})}
    if ctx is not None:
        run_config["world_size"] = ctx.world_size  # K·b is the batch: resume with the same K

    def stored() -> Tuple[bool, Any]:
        if not run.is_done():
            return False, None
        # a finished run made with another config is refused, not silently returned
        run.check_config(run_config, ignore_keys=RUNTIME_FIELDS)
        return True, run.read_result()

    done = _on_main(ctx, stored)
    if done[0]:
        log.info("%s is done; skipping training", run.path)
        return done[1]
    if len(train_set) == 0:
        raise BranchnasError("the training set is empty; check the dataset and its split")
    if len(val_set) == 0:  # its metrics would be NaN, and the run marked done with them
        raise BranchnasError("the validation set is empty; check the dataset and its split")
    # the convergence rule watches a held-out slice of the training split (never val_set)
    conv: Optional[Convergence] = None
    holdout_set: Any = None
    if config.patience > 0:
        keep, held = holdout_split(len(train_set), config.holdout_fraction, config.seed)
        train_set, holdout_set = Subset(train_set, keep), Subset(train_set, held)
        conv = Convergence(config.patience, config.min_delta, config.monitor)
    if config.threads is not None and torch.get_num_threads() != config.threads:
        log.info("using %d torch CPU thread(s)", config.threads)
        torch.set_num_threads(config.threads)
    if ctx is not None:
        if device is not None and torch.device(device) != ctx.device:
            log.warning("device %s ignored: distributed rank %d trains on %s",
                        device, ctx.rank, ctx.device)
        dev = ctx.device
    else:
        dev = resolve_device(device)
    session = _Session(model, tasks, config, dev, collate_fn or _default_collate(), ctx)
    names = session.names

    def start() -> Optional[Dict[str, Any]]:
        run.start(run_config, seed=config.seed, command=command, device=str(session.device),
                  ignore_keys=RUNTIME_FIELDS)
        return run.load_checkpoint(map_location="cpu")

    ckpt = _on_main(ctx, start)  # distributed: rank 0's checkpoint reaches every rank
    if ckpt is not None:
        try:
            session.load_state_dict(ckpt)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            raise run.damaged_checkpoint(exc) from None  # a checkpoint of another model
        start_epoch = int(ckpt["epoch"])
        if conv is not None:
            conv.load_state_dict(ckpt["convergence"])
            if conv.best_epoch == start_epoch:  # killed between last.pt and best.pt
                _on_main(ctx, lambda: _repair_best(run, session, conv))
        log.info("%s: resuming after epoch %d of %d", run.path, start_epoch, config.epochs)
    else:
        seed_everything(config.seed)
        start_epoch = 0
    # distributed: the caller may have initialised the model differently per process
    session.sync.broadcast(session.model, session.weighting)
    if main:
        run.truncate_metrics(start_epoch)  # epochs logged after the checkpoint are trained again
    # TensorBoard (when installed): the epochs kept so far, then each new one; rank 0 only
    board = TensorBoardLog(run.path, history=run.read_metrics()) if main else None

    steps = session.sync.steps(len(train_set), config.batch_size)
    if config.max_train_batches is not None:
        steps = min(steps, config.max_train_batches)
    trained = start_epoch
    for epoch in range(start_epoch, config.epochs):
        if conv is not None and conv.stopped:
            break  # also on resuming a run that had stopped but not yet written `done`
        loader = session.sync.epoch_loader(
            train_set, config.batch_size, config.seed, epoch,
            _epoch_generator(config.seed, epoch), collate_fn=session.collate,
            num_workers=config.num_workers, worker_init_fn=_seed_worker,
            pin_memory=session.device.type == "cuda",
        )
        record: Dict[str, Any] = {"epoch": epoch + 1, **session.train_epoch(loader, epoch, steps)}
        session.sync.end_epoch(session.model)  # distributed: BatchNorm statistics averaged
        improved = False
        if conv is not None:
            t1 = time.perf_counter()
            held_metrics, held_losses = _on_main(ctx, lambda: session.evaluate(holdout_set,
                                                                               with_loss=True))
            curve = conv.score(session.tasks, held_metrics, held_losses, session.loss_weights)
            improved, gain = conv.observe(epoch + 1, session.tasks, held_metrics, held_losses,
                                          session.loss_weights)
            record.update(holdout=held_metrics, holdout_loss=held_losses, holdout_score=curve,
                          holdout_gain=gain,
                          best_epoch=conv.best_epoch,
                          holdout_time_s=round(time.perf_counter() - t1, 4))
        t1 = time.perf_counter()
        val = None
        if epoch + 1 == config.epochs or (epoch + 1) % config.eval_every == 0:
            val = _on_main(ctx, lambda: session.evaluate(val_set))
        record.update(val=val, eval_time_s=round(time.perf_counter() - t1, 4))
        # distributed: rank 0 writes, and the others wait for it (the barrier after a checkpoint)
        _on_main(ctx, functools.partial(_save_epoch, run, session, config, record, conv,
                                        improved))
        trained = epoch + 1
        if board is not None:
            board.log_epoch(record)
        if main:
            log.info(
                "%s epoch %d/%d: loss %.4f, %.1f img/s%s", run.path.name, epoch + 1,
                config.epochs, record["train_total"], record["images_per_s"] or 0.0,
                "" if val is None else ", val " + _short(val),
            )
        if on_epoch_end is not None:
            _call_everywhere(ctx, on_epoch_end, record)

    def finish() -> Dict[str, Any]:
        records = run.read_metrics()
        best_epoch = trained
        if conv is not None and conv.best_epoch:
            _restore_best(run, session, conv.best_epoch)
            best_epoch = conv.best_epoch
        # the reported metrics are the validation set's at the epoch whose weights are kept
        final = next((r["val"] for r in records
                      if r.get("epoch") == best_epoch and r.get("val") is not None), None)
        if final is None:  # not evaluated that epoch (eval_every), or metrics.jsonl lost it
            final = session.evaluate(val_set)
        total_images = sum(r.get("images", 0) for r in records)
        total_time = sum(r.get("time_s", 0.0) for r in records)
        seconds = total_time + sum(r.get("eval_time_s", 0.0) + r.get("holdout_time_s", 0.0)
                                   for r in records)
        result: Dict[str, Any] = {t: final[t] for t in names}
        result["epochs"] = trained  # epochs trained (the rule may stop before max_epochs)
        result["max_epochs"] = config.epochs
        result["best_epoch"] = best_epoch  # the epoch whose weights the run ends with
        result["stop_reason"] = "plateau" if conv is not None and conv.stopped else "max_epochs"
        result["monitor"] = config.monitor if conv is not None else None
        result["holdout_size"] = len(holdout_set) if holdout_set is not None else 0
        result["images_seen"] = total_images  # training cost: images through a training step
        result["seconds"] = round(seconds, 3)  # training cost: train + evaluation wall time
        result["device"] = str(session.device)
        result["images_per_s"] = total_images / total_time if total_time > 0 else None
        if finalize is not None:
            result = dict(finalize(result))
        run.mark_done(result)
        log.info("%s done: %s", run.path, _short(final))
        return result

    if board is not None:
        board.close()
    result = _on_main(ctx, finish)  # every rank returns rank 0's result
    if conv is not None:  # distributed: every rank ends with rank 0's restored best
        session.sync.broadcast(session.model)
    return result


def _save_epoch(run: RunDir, session: "_Session", config: TrainConfig, record: Dict[str, Any],
                conv: Optional[Convergence] = None, improved: bool = False) -> None:
    """Append one epoch's metrics record, then write its checkpoint, then (when the epoch
    is the convergence rule's new best) its weights as ``checkpoints/best.pt``.

    That order makes a kill between the two files repairable: on resume the checkpoint
    says the best epoch is its own, and :func:`_repair_best` rewrites ``best.pt`` from it.
    """
    run.append_metrics(record)
    state = {"format": CHECKPOINT_FORMAT, "epoch": record["epoch"], **session.state_dict(),
             "config": config.to_dict()}
    if conv is not None:
        state["convergence"] = conv.state_dict()
    run.save_checkpoint(state)
    if improved:
        _save_best(run, session, record["epoch"])


def best_checkpoint_path(run: RunDir) -> Path:
    """``checkpoints/best.pt`` of ``run``: the convergence rule's best weights so far."""
    return run.checkpoint_path.parent / "best.pt"


def _save_best(run: RunDir, session: "_Session", epoch: int) -> None:
    # tensors and plain data only: it is read back with weights_only=True
    state = {"format": BEST_FORMAT, "epoch": int(epoch),
             "model": session.model.state_dict(), "weighting": session.weighting.state_dict()}
    atomic_write_with(best_checkpoint_path(run), lambda f: torch.save(state, f))


def load_best(run: RunDir, map_location: Any = "cpu") -> Optional[Dict[str, Any]]:
    """The run's ``checkpoints/best.pt`` (loaded with ``weights_only=True``), or None."""
    path = best_checkpoint_path(run)
    if not path.is_file():
        return None
    return run.read_checkpoint_file(path, map_location)  # a damaged file: one line naming it


def _repair_best(run: RunDir, session: "_Session", conv: Convergence) -> None:
    best = load_best(run)
    if best is None or int(best["epoch"]) != conv.best_epoch:
        log.info("%s: rewriting best.pt from the epoch-%d checkpoint", run.path, conv.best_epoch)
        _save_best(run, session, conv.best_epoch)


def _restore_best(run: RunDir, session: "_Session", epoch: int) -> None:
    best = load_best(run)
    if best is None or int(best["epoch"]) != epoch:
        found = "none" if best is None else f"epoch {best['epoch']}"
        raise BranchnasError(
            f"{best_checkpoint_path(run)} should hold epoch {epoch} (the best), found {found}; "
            "delete the run directory to retrain it"
        )
    session.model.load_state_dict(best["model"])
    session.weighting.load_state_dict(best["weighting"])
    log.info("%s: restored the best epoch, %d", run.path, epoch)


def _on_main(ctx: Optional[ddp.DistributedContext], fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 (in a single process: just ``fn()``); its value on every rank.

    The broadcast doubles as a barrier (other ranks wait until rank 0 has finished, e.g.
    writing a checkpoint), and an exception on rank 0 becomes a :class:`BranchnasError` on
    the others instead of leaving them blocked in their next collective.
    """
    if ctx is None:
        return fn()
    if ctx.is_main:
        try:
            value = fn()
        except BaseException as exc:
            ctx.broadcast_object((False, f"{type(exc).__name__}: {exc}"))
            raise
        ctx.broadcast_object((True, value))
        return value
    ok, value = ctx.broadcast_object(None)
    if not ok:
        raise BranchnasError(f"distributed training stopped: rank 0 failed ({value})")
    return value


def _call_everywhere(ctx: Optional[ddp.DistributedContext], fn: EpochCallback,
                     record: Dict[str, Any]) -> None:
    """``fn(record)`` on every rank; when it raises on any rank, every rank stops."""
    if ctx is None:
        fn(record)
        return
    error: Optional[BaseException] = None
    try:
        fn(record)
    except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the others
        error = exc
    failed = ctx.all_reduce_sum({"failed": float(error is not None)})["failed"]
    if error is not None:
        raise error
    if failed:
        raise BranchnasError(f"distributed training stopped: on_epoch_end raised on "
                             f"{int(failed)} other rank(s)")


class _Session:
    """The moving parts of one training run: model, weighting, and the step's strategies.

    The step's backward (standard or memory-bounded), update (one optimizer or
    asynchronous per-task updates) and gradient sync (one process or all-reduced over
    ``torchrun``'s processes) are chosen here, once (:mod:`._step`); :meth:`_step` only
    calls them.
    """

    def __init__(self, model: nn.Module, tasks: Sequence[Any], config: TrainConfig,
                 device: torch.device, collate: Callable[[List[Any]], Batch],
                 ctx: Optional[ddp.DistributedContext] = None) -> None:
        self.model, self.tasks, self.config, self.device = model, list(tasks), config, device
        self.names = _task_names(tasks)
        self.collate = collate
        # the paper's fixed task weights are for multi-task models; a one-task run ignores them
        self.loss_weights = ({t: w for t, w in config.task_weights.items() if t in self.names}
                             if len(self.names) > 1 else {})
        plain_backward = config.async_updates or config.memory_bounded
        self.amp_dtype = resolve_amp(config.amp, device, needs_plain_backward=plain_backward)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.backward: _step.Backward = (
            _step.MemoryBoundedBackward(self.tasks, device, self.amp_dtype)
            if config.memory_bounded
            else _step.StandardBackward(self.tasks, device, self.amp_dtype, self.scaler))
        model.to(device)
        self.weighting = create_weighting(config.weighting, self.names,
                                          **config.weighting_kwargs()).to(device)
        self.sync = _step.make_sync(ctx, seed_everything)
        make_optimizer = _make_optimizer(config)
        if config.async_updates:
            # per-process sizes, as batch_size; the updater counts the global batch's samples
            sizes = {k: v * self.sync.world_size
                     for k, v in config.effective_batch_sizes(self.names).items()}
            self.update: Any = _step.AsyncUpdate(AsyncUpdater(
                _async_groups(model, self.weighting, self.names, config.lr),
                sizes, make_optimizer,
            ))
        else:
            groups = _model_groups(model, config.lr) + [
                {"params": list(self.weighting.parameters()), "weight_decay": 0.0}]
            self.update = _step.OptimizerUpdate(
                make_optimizer([g for g in groups if g["params"]]), self.scaler)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            **self.update.state_dict(),  # "optimizer" and "updater" (one of them None)
            "weighting": self.weighting.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": _rng_state(),
        }

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.weighting.load_state_dict(ckpt["weighting"])
        self.update.load_state_dict(ckpt)
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------ training
    def _set_lr(self, factor: float) -> None:
        # looked up every step: load_state_dict replaces an optimizer's group dicts
        for g in self.update.param_groups():
            g["lr"] = g["base_lr"] * factor

    def _step(self, batch: Batch, n_present: Dict[str, int]) -> Dict[str, Tensor]:
        """One batch: gradients, then the update; returns per-task losses."""
        bsz = int(batch["image"].shape[0])
        batch = _to_device(batch, self.device, self.names)
        counts = self.sync.global_counts({SHARED: bsz, **n_present})
        scales = self.update.loss_scales(n_present, counts, self.sync.world_size)
        objective = ScaledWeighting(self.weighting, scales=scales, loss_weights=self.loss_weights)
        with self.sync.reduced(self.update):
            losses = self.backward(self.model, batch, objective, n_present)
        self.update.step(counts)
        return losses

    def train_epoch(self, loader: DataLoader, epoch: int, steps: int) -> Dict[str, Any]:
        """Train one epoch of ``steps`` batches; returns its part of the metrics record."""
        config, names = self.config, self.names
        self.model.train()
        self.weighting.train()
        sums = {t: 0.0 for t in names}
        counts = {t: 0 for t in names}
        total_sum, images = 0.0, 0
        lr_first = config.lr * lr_factor(config, epoch, 0, steps)
        weights_used = self.weighting.current_weights()
        bar = _progress(loader, steps, f"epoch {epoch + 1}/{config.epochs}", config.progress)
        t0 = time.perf_counter()
        try:
            for step, batch in enumerate(bar):
                if step >= steps:
                    break
                _check_batch(batch, names)
                self._set_lr(lr_factor(config, epoch, step, steps))
                n_present = {t: int(batch["present"][t].sum()) for t in names}
                bsz = int(batch["image"].shape[0])
                losses = self._step(batch, n_present)
                with torch.no_grad():
                    detached = {t: loss.detach().float() for t, loss in losses.items()}
                    objective = (ScaledWeighting(self.weighting, loss_weights=self.loss_weights)
                                 if self.loss_weights else self.weighting)
                    batch_total = float(objective.combine(detached, present=n_present))
                if not math.isfinite(batch_total):
                    raise BranchnasError(
                        f"training diverged at epoch {epoch + 1}, step {step + 1} "
                        f"(loss {batch_total}); lower the learning rate (--lr) and rerun "
                        "with --force, or into a fresh --out"
                    )
                for t in names:
                    if n_present[t]:
                        sums[t] += float(detached[t]) * n_present[t]
                        counts[t] += n_present[t]
                total_sum += batch_total * bsz
                images += bsz
                if config.progress and (step % 5 == 0 or step == steps - 1):
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{batch_total:.4f}", img_s=f"{images / elapsed:.1f}")
        finally:
            bar.close()
        train_time = time.perf_counter() - t0
        # the global batches' statistics (distributed): the weighting (DWA) must see the same
        # epoch losses on every rank, or the ranks' loss weights and models drift apart
        summed = self.sync.sum({
            **{f"sum:{t}": sums[t] for t in names}, **{f"n:{t}": counts[t] for t in names},
            "total": total_sum, "images": images})
        sums = {t: summed[f"sum:{t}"] for t in names}
        counts = {t: round(summed[f"n:{t}"]) for t in names}
        total_sum, images = summed["total"], round(summed["images"])
        mean_losses = {t: (sums[t] / counts[t] if counts[t] else None) for t in names}
        self.weighting.end_epoch({t: v for t, v in mean_losses.items() if v is not None})
        return {
            "train_loss": mean_losses,
            "train_total": total_sum / max(images, 1),
            "weights": weights_used,
            "lr": lr_first,
            "time_s": round(train_time, 4),
            "images": images,
            "images_per_s": images / train_time if train_time > 0 else None,
        }

    def evaluate(self, dataset: Any, with_loss: bool = False) -> Any:
        """``dataset``'s metrics; with ``with_loss``, ``(metrics, mean losses)``."""
        c = self.config
        metrics, losses = _eval_pass(self.model, self.tasks, dataset, self.device,
                                     c.eval_batch_size, self.collate, c.max_val_batches, c.amp,
                                     c.num_workers, with_loss=with_loss)
        return (metrics, losses) if with_loss else metrics


def _progress(loader: DataLoader, total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(loader, total=total, desc=desc, disable=not enabled, leave=False,
                dynamic_ncols=True)


def _short(metrics: Mapping[str, Mapping[str, float]]) -> str:
    return "; ".join(
        f"{t}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()) for t, m in metrics.items()
    )
