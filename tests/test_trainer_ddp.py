"""trainer.train() under data parallelism: 2 gloo processes on the CPU with batch b each end
with the weights of 1 process with batch 2b, and only rank 0 writes the run directory.

The model is a tiny two-depth task tree with BranchedNet's structure (so memory-bounded
backprop runs on it) and ``shared_parameters``/``task_parameters`` (so asynchronous updates
do). It normalises with GroupNorm, which treats each sample on its own: BatchNorm in
training mode would normalise over each process's b samples rather than the 2b of the
one-process run (PyTorch's SyncBatchNorm, which fixes that, runs on CUDA only), so the
comparison could not be exact. The model is float64; the task losses are computed in float32
(the trainer's ``pred.float()``), hence the tolerance. The classification task is labelled
on two thirds of the samples only, so the processes' batches hold different numbers of
labels: the trainer weighs each process's task mean by its share of the global batch's labels.

The processes are started with ``torch.multiprocessing`` as torchrun would start them (RANK,
WORLD_SIZE, LOCAL_RANK set), meet through a file rendezvous and talk gloo over loopback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest
import torch
from torch import Tensor, nn

from branchnas.errors import BranchnasError
from branchnas.tasks import create_task
from branchnas.training import TrainConfig, train
from branchnas.training.ddp import init_distributed, teardown
from branchnas.tree import Tree

from _distributed import spawn_and_wait

C = 4  # channels
HW = 6  # image size
N = 24  # training items: 4 global batches of 6
B = 3  # batch per process (2 processes: global batch 6)
TREE = {"tasks": ["seg", "cls"], "groupings": [[["seg", "cls"]], [["seg"], ["cls"]]]}

# name -> (TrainConfig fields for one process of the two, fields that differ for the
# one-process run with batch 2B); all SGD (Adam's normalisation would magnify rounding)
CASES: Dict[str, Any] = {
    "sync": ({"weighting": "uncertainty", "schedule": "poly"}, {}),
    "memory": ({"memory_bounded": True}, {}),
    # group batch sizes are per process too: 2 x 5 samples -> 10 in one process; the
    # classification group accumulates over batches (pending gradients across steps)
    "async": ({"async_updates": True, "task_batch_size": 5}, {"task_batch_size": 10}),
}


def _tasks() -> List[Any]:
    return [create_task("seg", "segmentation", num_classes=3),
            create_task("cls", "classification", num_classes=3)]


class _Block(nn.Sequential):
    def __init__(self, cin: int) -> None:
        super().__init__(nn.Conv2d(cin, C, 3, padding=1), nn.GroupNorm(2, C), nn.ReLU())


class _SegHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Conv2d(C, 3, 1)

    def forward(self, x: Tensor, out_hw: Sequence[int]) -> Tensor:
        return self.out(x)  # the blocks keep the input size


class _ClassHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(C, 3)

    def forward(self, x: Tensor, out_hw: Sequence[int]) -> Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class _TreeNet(nn.Module):
    """Shared block, then one block per task, then the heads."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.tree = Tree.from_json(TREE)
        self.nodes = nn.ModuleList(
            nn.ModuleList(_Block(3 if d == 0 else C) for _ in range(self.tree.num_groups(d)))
            for d in range(self.tree.depth)
        )
        self.heads = nn.ModuleDict({"seg": _SegHead(), "cls": _ClassHead()})
        self.double()

    def forward(self, image: Tensor, tasks: Optional[Sequence[str]] = None) -> Dict[str, Tensor]:
        shared = self.nodes[0][0](image)
        out = {}
        for g, group in enumerate(self.tree.groupings[1]):
            y = self.nodes[1][g](shared)
            for t in group:
                out[t] = self.heads[t](y, out_hw=image.shape[-2:])
        return {t: out[t] for t in (tasks or self.tree.tasks)}

    def shared_parameters(self) -> List[nn.Parameter]:
        return list(self.nodes[0].parameters())

    def task_parameters(self, task: str) -> List[nn.Parameter]:
        g = next(i for i, group in enumerate(self.tree.groupings[1]) if task in group)
        return [*self.nodes[1][g].parameters(), *self.heads[task].parameters()]


def _data(n: int, seed: int) -> List[Dict[str, Any]]:
    """seg = the argmax channel per pixel; cls = the argmax mean channel, on 2 of 3 items."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        image = torch.rand(3, HW, HW, generator=g, dtype=torch.float64)
        has_cls = i % 3 != 0
        items.append({
            "image": image,
            "labels": {"seg": image.argmax(0),
                       "cls": image.mean((1, 2)).argmax() if has_cls else torch.tensor(-1)},
            "present": {"seg": True, "cls": has_cls},
        })
    return items


def _config(batch: int, **kw: Any) -> TrainConfig:
    base = {"epochs": 2, "batch_size": batch, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
            "progress": False, "eval_batch_size": 8, "threads": 1}
    return TrainConfig(**{**base, **kw})


def _train(run_dir: Path, config: TrainConfig, seed: int = 0,
           on_epoch_end: Any = None) -> Dict[str, Any]:
    model = _TreeNet(seed)
    result = train(model, _tasks(), _data(N, 1), _data(8, 2), config, run_dir, device="cpu",
                   command=["test"], on_epoch_end=on_epoch_end)
    return {"result": result,
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


class _Stop(KeyboardInterrupt):
    pass


def _stop_on_rank1(record: Dict[str, Any]) -> None:
    if record["epoch"] == 1 and int(os.environ["RANK"]) == 1:
        raise _Stop()


def _worker(rank: int, world: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    init_distributed(backend="gloo", init_method=f"file://{tmp}/rendezvous")
    runs = Path(tmp) / f"rank{rank}"  # every rank its own path: rank 1's must stay unwritten
    try:
        # each rank initialises its model differently: the trainer broadcasts rank 0's
        out = {name: _train(runs / name, _config(B, **kw), seed=rank)
               for name, (kw, _) in CASES.items()}
        # a callback raising on one rank stops every rank; the run then resumes from the
        # checkpoint rank 0 wrote (and broadcast)
        try:
            _train(runs / "resume", _config(B, **CASES["sync"][0]), on_epoch_end=_stop_on_rank1)
        except (_Stop, BranchnasError) as exc:
            out["stopped"] = type(exc).__name__
        out["resume"] = _train(runs / "resume", _config(B, **CASES["sync"][0]))
        torch.save(out, Path(tmp) / f"out-{rank}.pt")
    finally:
        teardown()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("trainer_ddp")
    spawn_and_wait(_worker, 2, tmp)
    return tmp


def _assert_close(a: Dict[str, Tensor], b: Dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_process_with_doubled_batch(
        two_processes: Path, tmp_path: Path, name: str) -> None:
    kw, single_kw = CASES[name]
    single = _train(tmp_path / "single", _config(2 * B, **{**kw, **single_kw}))
    ranks = [torch.load(two_processes / f"out-{r}.pt")[name] for r in (0, 1)]
    start = _TreeNet(0).state_dict()
    assert all(not torch.allclose(single["weights"][k], start[k]) for k in start), "untrained"
    for out in ranks:
        _assert_close(out["weights"], single["weights"])
    assert ranks[0]["result"] == ranks[1]["result"]  # every rank returns rank 0's result
    for task in ("seg", "cls"):
        for metric, value in single["result"][task].items():
            assert ranks[0]["result"][task][metric] == pytest.approx(value, rel=1e-5, abs=1e-7)

    # the run directory: written by rank 0 only, logging the global batches
    run = two_processes / "rank0" / name
    assert json.loads((run / "done").read_text()) == ranks[0]["result"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(line)
           for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    # the convergence rule holds out 2 of the N = 24 items: 22 left, 3 global batches of 6
    assert [r["images"] for r in records] == [18, 18]
    for r, s in zip(records, one):
        for task in ("seg", "cls"):
            assert r["train_loss"][task] == pytest.approx(s["train_loss"][task], rel=1e-5)
    assert not (two_processes / "rank1").exists()

    if name == "sync":  # a smaller global batch changes the result: the comparison can fail
        other = _train(tmp_path / "half", _config(B, **kw))
        assert not all(torch.allclose(other["weights"][k], single["weights"][k], atol=1e-4)
                       for k in start)


def test_stop_on_one_rank_stops_all_and_resumes(two_processes: Path) -> None:
    outs = [torch.load(two_processes / f"out-{r}.pt") for r in (0, 1)]
    assert [o["stopped"] for o in outs] == ["BranchnasError", "_Stop"]
    for o in outs:  # resumed after epoch 1: as the uninterrupted run
        _assert_close(o["resume"]["weights"], outs[0]["sync"]["weights"])
    records = (two_processes / "rank0" / "resume" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [1, 2]
