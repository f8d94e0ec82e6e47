"""Data-parallel helpers (branchnas.training.ddp): 2 gloo processes on the CPU train to the
weights of 1 process with the doubled batch.

The model is a tiny two-depth task tree with BranchedNet's structure (``.tree``,
``.nodes[d][g]``, ``.heads[task]``), so memory-bounded backprop runs on it too. It uses
GroupNorm, which normalises each sample on its own: BatchNorm in training mode would
normalise over each process's b samples instead of the K·b of the one-process run (PyTorch's
SyncBatchNorm, which fixes that, runs on CUDA only), so the comparison would not be exact.
Both runs are in float64, so the tolerance only absorbs summation order.

The processes are started with ``torch.multiprocessing`` (as torchrun would: RANK,
WORLD_SIZE, LOCAL_RANK set), meet through a file rendezvous and talk gloo over loopback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from branchnas.data import collate
from branchnas.errors import BranchnasError
from branchnas.tasks import create_task
from branchnas.training.ddp import (
    DistributedContext,
    ShardedBatchSampler,
    current_context,
    init_distributed,
    teardown,
    unwrap_model,
)
from branchnas.training.memory import memory_bounded_backward
from branchnas.tree import Tree

from _distributed import spawn_and_wait

C = 4  # channels
HW = 8  # image size
N = 24  # training items
B = 3  # batch per process (2 processes: global batch 6)
EPOCHS = 2
TREE = {"tasks": ["depth", "cls"], "groupings": [[["depth", "cls"]], [["depth"], ["cls"]]]}


class _Block(nn.Sequential):
    def __init__(self, cin: int) -> None:
        super().__init__(nn.Conv2d(cin, C, 3, padding=1), nn.GroupNorm(2, C), nn.ReLU())


class _DenseHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Conv2d(C, 1, 1)

    def forward(self, x: Tensor, out_hw: Sequence[int]) -> Tensor:
        return F.interpolate(self.out(x), size=tuple(out_hw), mode="bilinear", align_corners=False)


class _ClassHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(C, 3)

    def forward(self, x: Tensor, out_hw: Sequence[int]) -> Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class _TreeNet(nn.Module):
    def __init__(self, tree: Tree) -> None:
        super().__init__()
        self.tree = tree
        self.nodes = nn.ModuleList(
            nn.ModuleList(_Block(3 if d == 0 else C) for _ in range(tree.num_groups(d)))
            for d in range(tree.depth)
        )
        self.heads = nn.ModuleDict({"depth": _DenseHead(), "cls": _ClassHead()})

    def forward(self, image: Tensor, tasks: Optional[Sequence[str]] = None) -> Dict[str, Tensor]:
        shared = self.nodes[0][0](image)
        out = {}
        for g, group in enumerate(self.tree.groupings[1]):
            y = self.nodes[1][g](shared)
            for t in group:
                out[t] = self.heads[t](y, out_hw=image.shape[-2:])
        return {t: out[t] for t in (tasks or self.tree.tasks)}


def _data() -> List[Dict[str, Any]]:
    g = torch.Generator().manual_seed(7)
    items = []
    for _ in range(N):
        image = torch.randn(3, HW, HW, generator=g, dtype=torch.float64)
        noise = torch.rand(1, HW, HW, generator=g, dtype=torch.float64)
        depth = 1.0 + image[:1].abs() + 0.1 * noise
        cls = torch.randint(0, 3, (), generator=g)
        items.append({"image": image, "labels": {"depth": depth, "cls": cls},
                      "present": {"depth": True, "cls": True}})
    return items


def _train(ctx: Optional[DistributedContext], batch: int, mode: str) -> Dict[str, Tensor]:
    """The trainer's loop, reduced: SGD with momentum, 2 epochs, per-epoch seeded order."""
    tasks = [create_task("depth", "depth"), create_task("cls", "classification", num_classes=3)]
    torch.manual_seed(0)
    model = _TreeNet(Tree.from_json(TREE)).double()
    net: nn.Module = model
    if ctx is not None:
        if mode == "ddp":
            net = ctx.wrap(model)
        else:
            ctx.broadcast_module(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = _data()
    for epoch in range(EPOCHS):
        gen = torch.Generator().manual_seed(1000 + epoch)
        if ctx is not None:
            sampler = ctx.batch_sampler(len(data), batch, gen)
        else:
            sampler = BatchSampler(RandomSampler(range(len(data)), generator=gen), batch, True)
        for b in DataLoader(data, batch_sampler=sampler, collate_fn=collate):
            if mode == "memory":
                memory_bounded_backward(model, b, tasks, None)
            else:
                preds = net(b["image"])
                sum(t.loss(preds[t.name], b["labels"][t.name], b["present"][t.name])
                    for t in tasks).backward()
            if ctx is not None and mode == "memory":
                ctx.all_reduce_gradients(model.parameters())
            opt.step()
            opt.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in unwrap_model(net).state_dict().items()}


def _collectives(ctx: DistributedContext) -> Dict[str, Any]:
    """Gradients missing on some ranks, sums, broadcasts."""
    a, b, c = (nn.Parameter(torch.zeros(3, dtype=torch.float64)) for _ in range(3))
    a.grad = torch.full((3,), float(ctx.rank + 1), dtype=torch.float64)
    if ctx.rank == 1:
        b.grad = torch.full((3,), 4.0, dtype=torch.float64)
    ctx.all_reduce_gradients([a, b, c])
    bn = nn.BatchNorm1d(2).double()
    bn.running_mean.fill_(float(ctx.rank))
    ctx.average_buffers(bn)
    return {
        "a": a.grad.tolist(), "b": b.grad.tolist(), "c": c.grad,
        "sum": ctx.all_reduce_sum({"x": ctx.rank + 1.0, "n": 1}),
        "obj": ctx.broadcast_object({"from": ctx.rank}),
        "bn": bn.running_mean.tolist(),
    }


def _worker(rank: int, world: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    ctx = init_distributed(backend="gloo", init_method=f"file://{tmp}/rendezvous")
    assert ctx is not None and current_context() is ctx
    try:
        out = {mode: _train(ctx, B, mode) for mode in ("ddp", "memory")}
        torch.save(out, Path(tmp) / f"weights-{rank}.pt")
        (Path(tmp) / f"collectives-{rank}.json").write_text(json.dumps(_collectives(ctx)))
        ctx.barrier()
    finally:
        teardown()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    spawn_and_wait(_worker, 2, tmp)
    return tmp


@pytest.mark.parametrize("mode", ["ddp", "memory"])
def test_two_processes_equal_one_process_with_doubled_batch(two_processes: Path, mode: str) -> None:
    single = _train(None, 2 * B, "plain")
    ranks = [torch.load(two_processes / f"weights-{r}.pt")[mode] for r in (0, 1)]
    start = _TreeNet(Tree.from_json(TREE)).double().state_dict()
    for name, ref in single.items():
        assert not torch.allclose(ref, start[name].to(ref)), f"{name} did not train"
        for weights in ranks:
            torch.testing.assert_close(weights[name], ref, rtol=1e-9, atol=1e-11)
    # half the batch per step changes the result: the comparison can fail
    other = _train(None, B, "plain")
    assert not all(torch.allclose(other[k], single[k], atol=1e-6) for k in single)


def test_collectives(two_processes: Path) -> None:
    out = [json.loads((two_processes / f"collectives-{r}.json").read_text()) for r in (0, 1)]
    for o in out:
        assert o["a"] == [1.5] * 3  # averaged
        assert o["b"] == [2.0] * 3  # a zero gradient where a rank had none
        assert o["c"] is None  # no gradient anywhere: stays None
        assert o["sum"] == {"x": 3.0, "n": 2.0}
        assert o["obj"] == {"from": 0}
        assert o["bn"] == [0.5, 0.5]


def test_sharded_batches_equal_one_process_batches() -> None:
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        one = list(BatchSampler(RandomSampler(range(20), generator=gen), 6, drop_last=True))
        parts = [list(ShardedBatchSampler(20, 3, r, 2, torch.Generator().manual_seed(seed)))
                 for r in (0, 1)]
        assert [a + b for a, b in zip(*parts)] == one and len(parts[0]) == 3
    assert list(ShardedBatchSampler(8, 2, 1, 2, shuffle=False)) == [[2, 3], [6, 7]]
    with pytest.raises(BranchnasError, match="smaller than one global batch"):
        ShardedBatchSampler(5, 3, 0, 2)
    with pytest.raises(BranchnasError, match="rank 2 is not in"):
        ShardedBatchSampler(50, 3, 2, 2)


def test_single_process_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() is None and current_context() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(BranchnasError, match="RANK is not"):
        init_distributed()
