"""Data-parallel training over K processes (``torchrun``, DistributedDataParallel).

``torchrun --nproc-per-node K -m branchnas train ...`` starts K processes with the
environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. :func:`init_distributed` reads them and joins the process group (NCCL
with one GPU per process when CUDA is there, gloo on the CPU); afterwards
:func:`current_context` gives every module the :class:`DistributedContext`, and
:func:`teardown` leaves the group. With ``WORLD_SIZE`` unset or 1 nothing is initialised
and :func:`current_context` is None: single-process code paths stay as they are.

**Equivalence.** ``batch_size`` is per process: K processes with batch b train like one
process with batch K·b. :class:`ShardedBatchSampler` draws the epoch's order exactly as a
one-process ``DataLoader(shuffle=True, generator=g)`` would (same generator, same
``RandomSampler``), cuts it into global batches of K·b and gives process r the r-th slice
of b samples of each; gradients are then averaged over processes, which for losses that
are means over samples is the gradient of the global batch. Exactly equal up to
floating-point summation order, when:

* every sample weighs the same in each task's loss (image-level tasks; dense tasks with
  the same number of valid pixels per image); with partial labels a process's task mean
  covers fewer samples, which ``training.train`` corrects by scaling each process's task
  loss by K·n_t/N_t (its labelled samples over the global batch's);
* normalisation does not mix samples: GroupNorm/LayerNorm, BatchNorm in eval mode, or
  BatchNorm converted to ``SyncBatchNorm`` (:func:`sync_batchnorm`; CUDA only — PyTorch's
  SyncBatchNorm does not run on the CPU, so gloo runs keep per-process BatchNorm
  statistics over b samples, and :meth:`DistributedContext.average_buffers` averages the
  running statistics: exact for the running means, close for the variances).

**Gradients.** Two ways, both exact:

* :meth:`DistributedContext.wrap` wraps the model in ``DistributedDataParallel``, which
  overlaps the all-reduce with the backward pass (for scripts with the ordinary
  ``loss.backward()`` path);
* :meth:`DistributedContext.all_reduce_gradients` averages (or sums) ``.grad`` after the
  backward pass has finished. The trainer uses this one for every backward and update
  (``training._step.DataParallel`` says why: memory-bounded backprop never calls the
  model's ``forward``, the loss weighting's parameters sit outside the model, and
  asynchronous updates keep accumulated gradients in ``.grad`` that must not be reduced
  again).

Example (inside a script started by ``torchrun --nproc-per-node 2``)::

    ctx = init_distributed()
    sampler = ctx.batch_sampler(len(train_set), batch_size=16, generator=g)
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate)
    for batch in loader:
        loss = ...; loss.backward()
        ctx.all_reduce_gradients(model.parameters())
        optimizer.step(); optimizer.zero_grad()
    if ctx.is_main:
        torch.save(model.state_dict(), "model.pt")
    teardown()
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import RandomSampler, Sampler

from ..errors import BranchnasError

__all__ = [
    "DistributedContext",
    "ShardedBatchSampler",
    "init_distributed",
    "current_context",
    "teardown",
    "distributed",
    "is_main_process",
    "world_size_from_env",
    "sync_batchnorm",
    "unwrap_model",
]

log = logging.getLogger(__name__)

_CONTEXT: Optional["DistributedContext"] = None
_BUCKET_BYTES = 25 * 2**20  # all-reduce gradients in buckets of about this size


# ----------------------------------------------------------------------------- sampler


class ShardedBatchSampler(Sampler[List[int]]):
    """Process ``rank``'s share of each global batch: K processes × batch b = 1 × batch K·b.

    The epoch's order is a one-process ``RandomSampler(range(n), generator=generator)``'s
    (or ``range(n)`` without shuffling), cut into global batches of ``world_size ×
    batch_size`` indices (an incomplete last one is dropped, as with ``drop_last=True``);
    process ``rank`` gets indices ``[rank·b, (rank+1)·b)`` of every global batch.

    Args:
        n: the dataset's length.
        batch_size: b, samples per process and step.
        rank: this process's rank.
        world_size: K.
        generator: the epoch's data-order generator (the same on every process).
        shuffle: False keeps the dataset order.

    Raises:
        BranchnasError: when the dataset is smaller than one global batch, or for a rank
            outside ``[0, world_size)``.

    Example:
        >>> g = lambda: torch.Generator().manual_seed(0)
        >>> from torch.utils.data import BatchSampler
        >>> one = list(BatchSampler(RandomSampler(range(8), generator=g()), 4, True))
        >>> two = [list(ShardedBatchSampler(8, 2, r, 2, generator=g())) for r in (0, 1)]
        >>> [a + b for a, b in zip(*two)] == one
        True
    """

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int,
                 generator: Optional[torch.Generator] = None, shuffle: bool = True) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise BranchnasError(
                f"rank {rank} is not in [0, {world_size}); check RANK and WORLD_SIZE"
            )
        if batch_size < 1:
            raise BranchnasError(f"batch size must be >= 1, got {batch_size}")
        if n < batch_size * world_size:
            raise BranchnasError(
                f"the training set ({n} items) is smaller than one global batch ({world_size} "
                f"processes x batch {batch_size}); lower batch_size or use fewer processes"
            )
        self.n = n
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.generator = generator
        self.shuffle = shuffle

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[List[int]]:
        if self.shuffle:
            order = list(RandomSampler(range(self.n), generator=self.generator))
        else:
            order = list(range(self.n))
        step = self.batch_size * self.world_size
        lo = self.rank * self.batch_size
        for i in range(len(self)):
            yield order[i * step + lo: i * step + lo + self.batch_size]


# ----------------------------------------------------------------------------- context


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the process group and the collective operations it needs.

    Attributes:
        rank: this process's global rank (0 writes files).
        world_size: the number of processes, K.
        local_rank: the rank on this machine (selects the GPU).
        backend: ``"nccl"`` or ``"gloo"``.
        device: this process's device (``cuda:<local_rank>`` with NCCL, else the CPU).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes run directories and prints."""
        return self.rank == 0

    def global_batch_size(self, batch_size: int) -> int:
        """Samples per optimisation step over all processes (K·b)."""
        return batch_size * self.world_size

    def batch_sampler(self, n: int, batch_size: int, generator: Optional[torch.Generator] = None,
                      shuffle: bool = True) -> ShardedBatchSampler:
        """This process's :class:`ShardedBatchSampler` (``DataLoader(batch_sampler=...)``)."""
        return ShardedBatchSampler(n, batch_size, self.rank, self.world_size, generator, shuffle)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()

    def wrap(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        """``DistributedDataParallel(model)`` on this process's device (kwargs pass through)."""
        from torch.nn.parallel import DistributedDataParallel

        model.to(self.device)
        if self.device.type == "cuda":
            kwargs.setdefault("device_ids", [self.device.index or 0])
            kwargs.setdefault("output_device", self.device.index or 0)
        return DistributedDataParallel(model, **kwargs)

    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        """Copy ``src``'s parameters and buffers into every process's ``module`` (what DDP
        does on construction; use it when gradients are averaged without :meth:`wrap`)."""
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src)

    def all_reduce_gradients(self, parameters: Iterable[nn.Parameter],
                             average: bool = True) -> None:
        """Sum (``average``: mean) every parameter's ``.grad`` over processes, in buckets.

        A parameter without a gradient on some processes takes a zero gradient there when
        another process has one; one without a gradient anywhere keeps ``None`` (so an
        optimizer skips it everywhere alike). Call it on every process with the same
        parameters in the same order.
        """
        params = [p for p in parameters if p.requires_grad]
        if not params:
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32,
                           device=self.device)
        dist.all_reduce(has)
        todo = []
        for p, count in zip(params, has.tolist()):
            if count == 0:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            todo.append(p)
        bucket: List[nn.Parameter] = []
        size = 0
        for p in todo:
            if bucket and (p.grad.dtype != bucket[0].grad.dtype or size >= _BUCKET_BYTES):
                self._reduce_bucket(bucket, average)
                bucket, size = [], 0
            bucket.append(p)
            size += p.grad.numel() * p.grad.element_size()
        if bucket:
            self._reduce_bucket(bucket, average)

    def _reduce_bucket(self, params: List[nn.Parameter], average: bool) -> None:
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.device)
        dist.all_reduce(flat)
        if average:
            flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset: offset + n].view_as(g))
            offset += n

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over processes."""
        with torch.no_grad():
            for buf in module.buffers():
                if buf.is_floating_point():
                    dist.all_reduce(buf)
                    buf /= self.world_size

    def all_reduce_sum(self, values: Mapping[str, float]) -> Dict[str, float]:
        """Sum named numbers over processes (e.g. loss sums and sample counts for logging)."""
        names = list(values)
        if not names:
            return {}
        dtype = torch.float64 if self.backend != "nccl" else torch.float32
        t = torch.tensor([float(values[k]) for k in names], dtype=dtype, device=self.device)
        dist.all_reduce(t)
        return dict(zip(names, t.tolist()))

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``src``'s ``obj`` on every process (pickled; for small things like metrics)."""
        box = [obj if self.rank == src else None]
        device = self.device if self.backend == "nccl" else None
        dist.broadcast_object_list(box, src=src, device=device)
        return box[0]


# ----------------------------------------------------------------------------- setup


def world_size_from_env() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise BranchnasError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; start with torchrun"
        ) from None


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise BranchnasError(
            f"WORLD_SIZE is set but {name} is not; start the processes with "
            "`torchrun --nproc-per-node K -m branchnas ...`"
        )
    try:
        return int(value)
    except ValueError:
        raise BranchnasError(f"{name}={value!r} is not an integer") from None


def init_distributed(
    backend: Optional[str] = None,
    device: Union[None, str, torch.device] = None,
    init_method: str = "env://",
    timeout_s: float = 1800.0,
) -> Optional[DistributedContext]:
    """Join the process group described by torchrun's environment variables.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; None picks NCCL when CUDA is available (and
            ``device`` is not the CPU), else gloo.
        device: None: ``cuda:<LOCAL_RANK>`` with NCCL, else the CPU.
        init_method: the rendezvous (``env://`` reads MASTER_ADDR/MASTER_PORT; a
            ``file://`` URL needs no network).
        timeout_s: how long collectives wait for the slowest process.

    Returns:
        The context, or None when ``WORLD_SIZE`` is unset or 1 (nothing initialised).

    Raises:
        BranchnasError: for inconsistent environment variables or an unavailable backend.
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = world_size_from_env()
    if world <= 1:
        return None
    rank, local_rank = _env_int("RANK"), int(os.environ.get("LOCAL_RANK", "0"))
    want_cpu = device is not None and torch.device(device).type == "cpu"
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and not want_cpu else "gloo"
    if backend not in ("nccl", "gloo"):
        raise BranchnasError(f"distributed backend {backend!r} is not supported; use nccl or gloo")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise BranchnasError("the nccl backend needs CUDA; use gloo on the CPU")
        dev = torch.device(device) if device is not None else torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
    if not dist.is_available():
        raise BranchnasError("this PyTorch build has no torch.distributed; install a full build")
    if not dist.is_initialized():
        kwargs: Dict[str, Any] = {"backend": backend, "init_method": init_method,
                                  "timeout": datetime.timedelta(seconds=timeout_s)}
        if not init_method.startswith("env://"):
            kwargs.update(rank=rank, world_size=world)
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    _CONTEXT = DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                                  local_rank=local_rank, backend=backend, device=dev)
    log.info("distributed: rank %d of %d (%s on %s)", _CONTEXT.rank, _CONTEXT.world_size,
             backend, dev)
    return _CONTEXT


def current_context() -> Optional[DistributedContext]:
    """The context set up by :func:`init_distributed` (None in a single process)."""
    return _CONTEXT


def is_main_process() -> bool:
    """True in a single process and on rank 0."""
    return _CONTEXT is None or _CONTEXT.is_main


def teardown() -> None:
    """Leave the process group (no-op when none was joined)."""
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


@contextlib.contextmanager
def distributed(**kwargs: Any) -> Iterator[Optional[DistributedContext]]:
    """``with distributed() as ctx:`` :func:`init_distributed` then :func:`teardown`."""
    ctx = init_distributed(**kwargs)
    try:
        yield ctx
    finally:
        if ctx is not None:
            teardown()


def sync_batchnorm(model: nn.Module, ctx: Optional[DistributedContext]) -> nn.Module:
    """BatchNorm layers as ``SyncBatchNorm`` on CUDA (statistics over the global batch).

    On the CPU (gloo) PyTorch's SyncBatchNorm cannot run: the model is returned unchanged
    and a warning says that BatchNorm statistics come from each process's b samples.
    """
    if ctx is None:
        return model
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not has_bn:
        return model
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if ctx.is_main:
        log.warning("distributed on the CPU: BatchNorm statistics come from each process's "
                    "own batch, so results differ slightly from one process with the global batch")
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (else ``model``)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
