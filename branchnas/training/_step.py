"""The trainer's step as three strategies, chosen once per run and passed to the loop.

One step of :func:`branchnas.training.train` is::

    counts = sync.global_counts({SHARED: batch_size, **labelled_per_task})
    objective = ScaledWeighting(weighting, scales=update.loss_scales(n_present, counts, K))
    with sync.reduced(update):
        losses = backward(model, batch, objective, n_present)
    update.step(counts)

with no branch on the backend inside it:

* **backward** (:class:`StandardBackward`, :class:`MemoryBoundedBackward`): fills ``.grad``
  for one batch, under autocast when mixed precision is on;
* **update** (:class:`OptimizerUpdate`, :class:`AsyncUpdate`): turns gradients into
  parameter updates: one optimizer stepping every batch (with fp16's ``GradScaler`` when
  there is one), or UberNet's asynchronous per-group updates (:mod:`.async_updates`);
  it also says how each task's loss term is scaled (means for an optimizer, sums over
  labelled samples for the asynchronous updater) and owns the learning-rate groups and the
  checkpointed optimizer state;
* **data parallelism** (``sync``: :class:`SingleProcess`, :class:`DataParallel`): in one
  process the batch is the global batch; under ``torchrun`` the global batch's sample
  counts and the all-reduce of the gradients after the backward pass (see
  :class:`DataParallel` for why this is a hand-written all-reduce and not
  ``DistributedDataParallel``). It also gives the loop its epoch's loader (sharded per
  rank), the start-of-run broadcast, the epoch statistics' sums and the BatchNorm buffers'
  average, so the training loop has no backend branches either.

The trainer picks the three once per run, from its :class:`~.config.TrainConfig` and
the distributed context (:func:`make_sync`).
"""

from __future__ import annotations

import contextlib
from typing import (Any, Callable, ContextManager, Dict, Iterator, List, Mapping, Optional, Sequence,
                    Tuple)

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..errors import BranchnasError
from . import ddp
from .async_updates import AsyncUpdater

__all__ = [
    "StandardBackward",
    "MemoryBoundedBackward",
    "OptimizerUpdate",
    "AsyncUpdate",
    "SingleProcess",
    "DataParallel",
    "autocast",
]

Batch = Dict[str, Any]


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> Any:
    """``torch.autocast`` on ``device`` with ``dtype`` (a no-op context for None: fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------- backward


class StandardBackward:
    """The model's ``forward`` on the batch, each task's loss, ``combine`` and one backward.

    Args:
        tasks: the Task objects trained (``name``, ``loss``).
        device: the training device (for autocast).
        amp_dtype: the autocast dtype (None: fp32).
        scaler: fp16's ``GradScaler`` (scales the total before backward), or None.
    """

    def __init__(self, tasks: Sequence[Any], device: torch.device,
                 amp_dtype: Optional[torch.dtype],
                 scaler: Optional["torch.amp.GradScaler"] = None) -> None:
        self.tasks = list(tasks)
        self.names = [t.name for t in self.tasks]
        self.device, self.amp_dtype, self.scaler = device, amp_dtype, scaler

    def __call__(self, model: nn.Module, batch: Batch, weighting: Any,
                 n_present: Mapping[str, int]) -> Dict[str, Tensor]:
        with autocast(self.device, self.amp_dtype):
            preds = model(batch["image"], tasks=list(self.names))
        losses = {
            t.name: t.loss(preds[t.name].float(), batch["labels"][t.name],
                           batch["present"][t.name])
            for t in self.tasks
        }
        total = weighting.combine(losses, present=n_present)
        (self.scaler.scale(total) if self.scaler is not None else total).backward()
        return losses


class MemoryBoundedBackward:
    """UberNet's memory-bounded backward (:func:`~.memory.memory_bounded_backward`).

    Raises:
        BranchnasError: when the memory module cannot be imported.
    """

    def __init__(self, tasks: Sequence[Any], device: torch.device,
                 amp_dtype: Optional[torch.dtype]) -> None:
        try:
            from .memory import memory_bounded_backward
        except ImportError as exc:
            raise BranchnasError(
                f"memory-bounded backprop is unavailable ({exc}); set memory_bounded = false"
            ) from None
        self.fn = memory_bounded_backward
        self.tasks = list(tasks)
        self.device, self.amp_dtype = device, amp_dtype

    def __call__(self, model: nn.Module, batch: Batch, weighting: Any,
                 n_present: Mapping[str, int]) -> Dict[str, Tensor]:
        # the weighting's combine() receives the labelled counts from memory.py itself
        with autocast(self.device, self.amp_dtype):
            return self.fn(model, batch, self.tasks, weighting)


# ----------------------------------------------------------------------------- update


class OptimizerUpdate:
    """One optimizer over every trainable parameter, stepping after every batch.

    Args:
        optimizer: the optimizer (its groups carry ``base_lr`` for the schedule).
        scaler: fp16's ``GradScaler`` (steps through it), or None.
    """

    accumulates = False  # .grad is cleared after every step
    mean_gradients = True  # gradients are means over the (global) batch

    def __init__(self, optimizer: torch.optim.Optimizer,
                 scaler: Optional["torch.amp.GradScaler"] = None) -> None:
        self.optimizer, self.scaler = optimizer, scaler

    @staticmethod
    def loss_scales(n_present: Mapping[str, int], counts: Mapping[str, int],
                    world_size: int) -> Dict[str, float]:
        """Each task's term multiplier: its mean over the global batch's labelled samples.

        A process's task mean weighs ``n_t / N_t`` of the global mean, times K to undo the
        all-reduce's average; in one process (K = 1, N_t = n_t) it is 1.0 for a labelled
        task and 0.0 for a task without labels, which leaves that task out.
        """
        return {t: world_size * n / counts[t] if counts[t] else 0.0
                for t, n in n_present.items()}

    def step(self, counts: Mapping[str, int]) -> None:
        """Step the optimizer (through the scaler under fp16) and clear the gradients."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def param_groups(self) -> List[Dict[str, Any]]:
        """The optimizer's groups (looked up each time: load_state_dict replaces them)."""
        return self.optimizer.param_groups

    def parameters(self) -> List[nn.Parameter]:
        """Every stepped parameter, in a fixed order."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def state_dict(self) -> Dict[str, Any]:
        """The checkpoint entries (``optimizer``; ``updater`` None)."""
        return {"optimizer": self.optimizer.state_dict(), "updater": None}

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(ckpt["optimizer"])


class AsyncUpdate:
    """UberNet's asynchronous per-group updates (:class:`~.async_updates.AsyncUpdater`)."""

    accumulates = True  # groups that did not step keep their summed gradients in .grad
    mean_gradients = False  # gradients are sums over samples; the updater averages

    def __init__(self, updater: AsyncUpdater) -> None:
        self.updater = updater

    @staticmethod
    def loss_scales(n_present: Mapping[str, int], counts: Mapping[str, int],
                    world_size: int) -> Dict[str, float]:
        """Each task's term times its labelled samples: gradients summed over samples."""
        return {t: float(n) for t, n in n_present.items()}

    def step(self, counts: Mapping[str, int]) -> None:
        """Count the (global) batch's samples; step the groups whose count is reached."""
        self.updater.step(counts)

    def param_groups(self) -> List[Dict[str, Any]]:
        return self.updater.param_groups()

    def parameters(self) -> List[nn.Parameter]:
        return [p for g in self.updater.groups for p in self.updater.parameters(g)]

    def state_dict(self) -> Dict[str, Any]:
        """The checkpoint entries (``updater``, with pending gradients; ``optimizer`` None)."""
        return {"optimizer": None, "updater": self.updater.state_dict()}

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        self.updater.load_state_dict(ckpt["updater"])


Update = Any  # OptimizerUpdate or AsyncUpdate (same methods)


# ----------------------------------------------------------------------------- data parallelism


class SingleProcess:
    """One process: the batch's counts are the global ones, gradients stay as they are."""

    world_size = 1
    _nothing = contextlib.nullcontext()

    @staticmethod
    def steps(n: int, batch_size: int) -> int:
        """Steps per epoch over ``n`` items (the last incomplete batch dropped)."""
        return n // batch_size if n >= batch_size else 1

    @staticmethod
    def epoch_loader(dataset: Any, batch_size: int, seed: int, epoch: int,
                     generator: torch.Generator, **kwargs: Any) -> DataLoader:
        """The epoch's shuffled loader, its order drawn from ``generator``."""
        drop_last = len(dataset) >= batch_size  # no ragged last batch (BatchNorm)
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                          generator=generator, **kwargs)

    @staticmethod
    def broadcast(*modules: nn.Module) -> None:
        pass

    @staticmethod
    def global_counts(counts: Dict[str, int]) -> Dict[str, int]:
        return counts

    def reduced(self, update: Update) -> ContextManager[None]:
        return self._nothing

    @staticmethod
    def sum(values: Dict[str, float]) -> Dict[str, float]:
        return values

    def end_epoch(self, model: nn.Module) -> None:
        pass


class DataParallel:
    """K processes under ``torchrun``: global counts, gradients all-reduced after backward.

    Why a hand-written all-reduce (:meth:`.ddp.DistributedContext.all_reduce_gradients`)
    rather than ``DistributedDataParallel`` (:meth:`~.ddp.DistributedContext.wrap`):

    * memory-bounded backprop (:mod:`.memory`) never calls the model's ``forward``: it runs
      blocks and heads one at a time, each with its own backward pass. DDP's reducer is armed
      by the wrapper's ``forward`` (``prepare_for_backward``) and tracks one backward per
      forward, so those passes would not be reduced at all (``no_sync`` does not help: there
      is no wrapped forward whose backward could all-reduce "on the last"). Measured with
      2 gloo processes on the scenes CNN wrapped in DDP: after ``memory_bounded_backward``
      the ranks' gradients still differ (max 11.1; 22.3 with ``no_sync`` around an earlier
      pass), while after ``ddp_model(image)`` and ``backward()`` they are equal;
    * the loss weighting's own parameters (uncertainty weighting's log-variances) live
      outside the model, so DDP would not reduce them;
    * asynchronous updates keep groups' summed gradients in ``.grad`` across batches and
      need the *sum* over processes of this batch's gradients only; DDP averages whatever
      ``.grad`` holds when its hooks fire, i.e. it would reduce the pending accumulators
      K times over;
    * partial labels alone would not need it: the per-task scale ``K·n_t/N_t`` (see
      :meth:`OptimizerUpdate.loss_scales`) turns DDP's average into each task's mean over
      the global batch's labelled samples as well.

    One reduction serves every backward/update pair and is exact (equal to one process with
    the global batch up to summation order; ``tests/test_trainer_ddp.py``); DDP's only gain,
    overlapping communication with the standard backward, is not worth a second code path.
    """

    def __init__(self, ctx: ddp.DistributedContext, reseed: Callable[[int], None]) -> None:
        self.ctx = ctx
        self.world_size = ctx.world_size
        self.reseed = reseed

    def steps(self, n: int, batch_size: int) -> int:
        """Steps per epoch: global batches of K·b, the last incomplete one dropped (raises
        when ``n`` < K·b)."""
        return len(self.ctx.batch_sampler(n, batch_size))

    def epoch_loader(self, dataset: Any, batch_size: int, seed: int, epoch: int,
                     generator: torch.Generator, **kwargs: Any) -> DataLoader:
        """This rank's share of each global batch of the epoch (:class:`.ddp.ShardedBatchSampler`)."""
        # dropout etc. differ per rank, and a resumed epoch draws as an uninterrupted one
        # (the checkpoint holds rank 0's RNG state only)
        self.reseed(_rank_seed(seed, epoch, self.ctx.rank))
        # `generator` also draws the loader's base seed first, as in one process, so the
        # sampler sees the generator in the same state as one process's DataLoader
        return DataLoader(dataset, batch_sampler=self.ctx.batch_sampler(len(dataset), batch_size,
                                                                        generator),
                          generator=generator, **kwargs)

    def broadcast(self, *modules: nn.Module) -> None:
        """Rank 0's parameters and buffers into every rank's ``modules``."""
        for module in modules:
            self.ctx.broadcast_module(module)

    def global_counts(self, counts: Dict[str, int]) -> Dict[str, int]:
        """The global batch's sample counts (shared: images; task: labelled samples)."""
        return {k: round(v) for k, v in self.ctx.all_reduce_sum(counts).items()}

    @contextlib.contextmanager
    def reduced(self, update: Update) -> Iterator[None]:
        """Around the backward pass: afterwards ``.grad`` holds the all-reduced gradients.

        Pending (already reduced) accumulators of an asynchronous update are set aside
        first and added back after, so that only this batch's gradients are reduced.
        """
        params = update.parameters()
        pending: List[Tuple[nn.Parameter, Tensor]] = []
        if update.accumulates:
            for p in params:
                if p.grad is not None:
                    pending.append((p, p.grad))
                    p.grad = None
        yield
        self.ctx.all_reduce_gradients(params, average=update.mean_gradients)
        with torch.no_grad():
            for p, old in pending:
                p.grad = old if p.grad is None else old.add_(p.grad)

    def sum(self, values: Dict[str, float]) -> Dict[str, float]:
        """Named numbers summed over processes (the epoch's loss sums and counts)."""
        return self.ctx.all_reduce_sum(values)

    def end_epoch(self, model: nn.Module) -> None:
        """Average BatchNorm statistics over every process's batches."""
        self.ctx.average_buffers(model)


def _rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The global RNGs' seed of one rank and epoch in distributed training."""
    return (seed * 1_000_003 + epoch * 1009 + rank + 1) % 2**63


def make_sync(ctx: Optional[ddp.DistributedContext],
              reseed: Callable[[int], None]) -> Any:
    """:class:`SingleProcess` in one process, else :class:`DataParallel`
    (``reseed(seed)`` seeds the global RNGs, at each rank's epoch start)."""
    return SingleProcess() if ctx is None else DataParallel(ctx, reseed)


Backward = Callable[[nn.Module, Batch, Any, Mapping[str, int]], Dict[str, Tensor]]
