"""Benchmark: the trainer's step throughput against a bare forward/backward/step loop.

The same model (the scenes space's CNN as a ``BranchedNet``, every task on one fully
shared trunk), the same pre-collated batches and the same optimizer (SGD with momentum,
constant learning rate, equal loss weighting), trained two ways from the same weights:

* trainer: one epoch of the trainer's own loop (``_Session.train_epoch``: the per-step
  checks, learning-rate schedule, labelled counts, the step's backward and update
  strategies, the loss bookkeeping and the divergence check);
* bare: ``preds = model(image)``; ``sum(task.loss(...)).backward()``; ``opt.step()``;
  ``opt.zero_grad()``; ``float(loss)`` (the loss read that any training loop logs).

Trials alternate (trainer first on even trials, bare first on odd ones) so that the
machine's load drifts alike over both; each trial's ratio is bare time / trainer time,
i.e. the trainer's throughput as a fraction of the bare loop's. The bench prints the
median ratio, its spread (min, quartiles, max), the ratio of the two best trials (the
least disturbed by other load), the same ratio measured in process CPU time (on a shared
machine it moves less with other processes' load; meaningful on the CPU only), both
throughputs, and checks that both loops end with the same weights (same computation).

Run::

    PYTHONPATH=. python bench/bench_trainer.py                      # CPU, about 30 s
    PYTHONPATH=. python bench/bench_trainer.py --device cuda --batch 32 --steps 20
    PYTHONPATH=. python bench/bench_trainer.py --json out.json       # also write the figures
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from branchnas.models import BranchedNet  # noqa: E402
from branchnas.spaces import SearchSpace, load_space  # noqa: E402
from branchnas.training import TrainConfig  # noqa: E402
from branchnas.training.trainer import _Session  # noqa: E402
from branchnas.tree import Tree  # noqa: E402


def make_space(size: int) -> SearchSpace:
    """The scenes space at ``size``×``size`` input."""
    raw = load_space("scenes").to_dict()
    raw["input"] = {"size": [size, size]}
    return SearchSpace.from_dict(raw, name=f"bench-trainer-{size}")


def make_batches(space: SearchSpace, n: int, batch: int, size: int,
                 device: torch.device) -> List[Dict[str, Any]]:
    """``n`` batches of random images and labels in each task's format, all labelled."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        labels: Dict[str, Tensor] = {}
        for t in space.tasks:
            if t.type == "segmentation":
                labels[t.name] = torch.randint(0, t.params["num_classes"], (batch, size, size),
                                               generator=gen)
            elif t.type == "classification":
                labels[t.name] = torch.randint(0, t.params["num_classes"], (batch,),
                                               generator=gen)
            elif t.type == "normals":
                labels[t.name] = F.normalize(torch.randn(batch, 3, size, size, generator=gen),
                                             dim=1)
            elif t.type == "edges":
                labels[t.name] = (torch.rand(batch, 1, size, size, generator=gen) > 0.8).float()
            else:  # depth
                labels[t.name] = torch.rand(batch, 1, size, size, generator=gen) + 0.5
        out.append({
            "image": torch.randn(batch, 3, size, size, generator=gen).to(device),
            "labels": {k: v.to(device) for k, v in labels.items()},
            "present": {k: torch.ones(batch, dtype=torch.bool, device=device) for k in labels},
        })
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_trainer(model: nn.Module, tasks: Sequence[Any], config: TrainConfig,
                batches: List[Dict[str, Any]], device: torch.device) -> Tuple[float, float]:
    """Wall and process CPU seconds for one epoch of the trainer's loop over ``batches`` (setup not timed)."""
    session = _Session(model, tasks, config, device, collate=lambda items: items)
    torch.manual_seed(0)
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    session.train_epoch(batches, epoch=0, steps=len(batches))
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def run_bare(model: nn.Module, tasks: Sequence[Any], config: TrainConfig,
             batches: List[Dict[str, Any]], device: torch.device) -> Tuple[float, float]:
    """Wall and process CPU seconds for the bare forward/backward/step loop over ``batches``."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    names = [t.name for t in tasks]
    torch.manual_seed(0)
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        preds = model(b["image"], tasks=names)
        loss = sum(t.loss(preds[t.name], b["labels"][t.name], b["present"][t.name])
                   for t in tasks)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv: Sequence[str] = ()) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=32, help="input height and width")
    ap.add_argument("--steps", type=int, default=12, help="batches per trial")
    ap.add_argument("--trials", type=int, default=15, help="timed trials of each loop")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(list(argv))
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    space = make_space(args.size)
    tasks = list(space.tasks)
    names = [t.name for t in tasks]
    torch.manual_seed(0)
    model = BranchedNet(Tree.fully_shared(names, space.depth), space).to(device)
    start = copy.deepcopy(model.state_dict())
    config = TrainConfig(optimizer="sgd", lr=0.01, schedule="none", weighting="equal",
                         epochs=1, patience=0, amp="off", progress=False,
                         batch_size=args.batch)
    batches = make_batches(space, args.steps, args.batch, args.size, device)

    def fresh() -> nn.Module:
        model.load_state_dict(start)
        for p in model.parameters():
            p.grad = None
        return model

    loops = {"trainer": run_trainer, "bare": run_bare}
    for name in loops:  # warm-up (allocator, kernels), and the equivalence check
        loops[name](fresh(), tasks, config, batches, device)
        if name == "trainer":
            after = {k: v.detach().clone() for k, v in model.state_dict().items()}
    diff = max(float((after[k].double() - v.double()).abs().max())
               for k, v in model.state_dict().items() if v.is_floating_point())
    times: Dict[str, List[float]] = {"trainer": [], "bare": []}
    ratios, cpu_ratios = [], []
    for i in range(args.trials):
        order = ["trainer", "bare"] if i % 2 == 0 else ["bare", "trainer"]
        trial = {name: loops[name](fresh(), tasks, config, batches, device) for name in order}
        for name, (wall, _) in trial.items():
            times[name].append(wall)
        ratios.append(trial["bare"][0] / trial["trainer"][0])
        cpu_ratios.append(trial["bare"][1] / trial["trainer"][1])
    ratios_sorted = sorted(ratios)
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    images = args.steps * args.batch
    result = {
        "device": str(device), "threads": args.threads, "batch": args.batch,
        "size": args.size, "steps": args.steps, "trials": args.trials,
        "ratio_median": statistics.median(ratios),
        "ratio_min": ratios_sorted[0], "ratio_q1": q[0], "ratio_q3": q[2],
        "ratio_max": ratios_sorted[-1],
        "trainer_img_s_median": images / statistics.median(times["trainer"]),
        "bare_img_s_median": images / statistics.median(times["bare"]),
        "ratio_of_best": min(times["bare"]) / min(times["trainer"]),
        "cpu_ratio_median": statistics.median(cpu_ratios),
        "cpu_ratio_min": min(cpu_ratios), "cpu_ratio_max": max(cpu_ratios),
        "max_weight_diff": diff,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
    }
    print(f"trainer step vs bare loop on {device} ({args.threads} thread(s)), scenes CNN, "
          f"{len(tasks)} tasks, batch {args.batch} at {args.size}x{args.size}, "
          f"{args.steps} steps x {args.trials} interleaved trials")
    print(f"  trainer: {result['trainer_img_s_median']:.1f} img/s (median)")
    print(f"  bare:    {result['bare_img_s_median']:.1f} img/s (median)")
    print(f"  throughput ratio trainer/bare: median {result['ratio_median']:.3f} "
          f"(min {result['ratio_min']:.3f}, q1 {q[0]:.3f}, q3 {q[2]:.3f}, "
          f"max {result['ratio_max']:.3f})")
    print(f"  ratio of the best trials (least disturbed by load): {result['ratio_of_best']:.3f}")
    print(f"  same ratio in process CPU time (less sensitive to other processes' load): median "
          f"{result['cpu_ratio_median']:.3f} (min {result['cpu_ratio_min']:.3f}, "
          f"max {result['cpu_ratio_max']:.3f})")
    print(f"  same weights after one epoch: max |diff| = {diff:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
