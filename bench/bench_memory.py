"""Benchmark: peak memory and time of one training step, ordinary vs memory-bounded backprop.

For 2, 5, 10, 20 and 40 dense tasks on the scenes space's small CNN (fcn heads, labels at
input resolution) and two trees where ordinary backprop keeps every branch's activations
alive until ``backward()`` -- ``heads`` (a fully shared trunk branching into the heads)
and ``last-block`` (the trunk shared up to the last block, which every task owns) -- one
training step is run both ways from the same state:

* ordinary: ``weighting.combine({t: loss}).backward()`` over ``BranchedNet(image)``,
* memory-bounded: :func:`branchnas.training.memory.memory_bounded_backward`.

The bench prints each step's peak memory above the model, its (pre-allocated) gradients
and the batch, the ratio memory-bounded / ordinary, each step's time (best of a few) and the time
ratio, and checks that both steps produced the same gradients.

Measuring memory. On a GPU: ``torch.cuda.max_memory_allocated``. On the CPU, tracemalloc
does not see tensors, so the bench replays the allocation events of torch's profiler
(``profile_memory=True``: every allocation and free of torch's CPU allocator, with
timestamps) and takes the running maximum. It first checks that this tracks tensor
memory: a calibration step allocating known tensors must read back exactly, and for the
largest task count the profiler's peaks are compared with the process's peak resident
memory (Linux ``VmHWM`` after ``clear_refs``, with glibc's mmap threshold pinned so
freed tensors leave the resident set).

Run::

    PYTHONPATH=. python bench/bench_memory.py                  # CPU, a few minutes on 2 cores
    PYTHONPATH=. python bench/bench_memory.py --device cuda --batch 32 --size 128
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from branchnas.models import BranchedNet
from branchnas.spaces import SearchSpace, load_space
from branchnas.training.memory import memory_bounded_backward
from branchnas.training.weighting import create_weighting
from branchnas.tree import Tree

#: Task types cycled through to make N dense tasks (fcn heads, full-resolution outputs).
TASK_TYPES: Tuple[Tuple[str, Dict[str, int]], ...] = (
    ("segmentation", {"num_classes": 6}),
    ("depth", {}),
    ("normals", {}),
    ("edges", {}),
)

MiB = 2**20
MODES = ("ordinary", "bounded")


def make_space(n_tasks: int, size: int) -> SearchSpace:
    """The scenes space (small CNN) with ``n_tasks`` dense tasks at ``size``×``size``."""
    raw = load_space("scenes").to_dict()
    tasks = []
    for i in range(n_tasks):
        kind, params = TASK_TYPES[i % len(TASK_TYPES)]
        entry = {"name": f"t{i:02d}_{kind}", "type": kind}
        if params:
            entry["params"] = dict(params)
        tasks.append(entry)
    raw["tasks"] = tasks
    raw["input"] = {"size": [size, size]}
    return SearchSpace.from_dict(raw, name=f"bench-{n_tasks}")


def make_tree(kind: str, names: Sequence[str], depth: int) -> Tree:
    """``heads``: fully shared blocks; ``last-block``: every task owns the last block."""
    if kind == "heads":
        return Tree.fully_shared(names, depth)
    return Tree(names, [[list(names)]] * (depth - 1) + [[[t] for t in names]])


def make_batch(space: SearchSpace, batch: int, size: int, device: torch.device) -> dict:
    """Random labels in each task's format, every sample labelled."""
    gen = torch.Generator().manual_seed(0)
    labels: Dict[str, Tensor] = {}
    for t in space.tasks:
        shape = (batch, 1, size, size)
        if t.type == "segmentation":
            classes = t.params["num_classes"]
            labels[t.name] = torch.randint(0, classes, (batch, size, size), generator=gen)
        elif t.type == "normals":
            labels[t.name] = F.normalize(torch.randn(batch, 3, size, size, generator=gen), dim=1)
        elif t.type == "edges":
            labels[t.name] = (torch.rand(shape, generator=gen) > 0.8).float()
        else:
            labels[t.name] = torch.rand(shape, generator=gen) + 0.5
    return {
        "image": torch.randn(batch, 3, size, size, generator=gen).to(device),
        "labels": {t: v.to(device) for t, v in labels.items()},
        "present": {t: torch.ones(batch, dtype=torch.bool, device=device) for t in labels},
    }


# ---------------------------------------------------------------------------- the two steps
def ordinary_step(model: nn.Module, batch: dict, tasks: Sequence, weighting) -> None:
    preds = model(batch["image"])
    losses = {
        t.name: t.loss(preds[t.name], batch["labels"][t.name], batch["present"][t.name])
        for t in tasks
    }
    weighting.combine(losses).backward()


def bounded_step(model: nn.Module, batch: dict, tasks: Sequence, weighting) -> None:
    memory_bounded_backward(model, batch, tasks, weighting)


# ---------------------------------------------------------------------------- memory probes
def cpu_peak(fn: Callable[[], None]) -> int:
    """Peak bytes held by torch's CPU allocator during ``fn()``, above what was held before."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    current = peak = 0
    for _, nbytes in sorted(events):
        current += nbytes
        peak = max(peak, current)
    return peak


def cuda_peak(fn: Callable[[], None]) -> int:
    """Peak bytes allocated on the current GPU during ``fn()``, above what was held before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


class RssProbe:
    """Peak resident memory of this process during ``fn()`` (Linux ``VmHWM``)."""

    def __init__(self, mmap_threshold: int) -> None:
        libc_name = ctypes.util.find_library("c")
        if not (sys.platform.startswith("linux") and libc_name):
            raise SystemExit("the resident-memory cross-check needs Linux with glibc")
        # A small fixed mmap threshold: nearly every tensor is mmapped and unmapped when
        # freed, so the resident set follows the tensors instead of reusing freed heap pages.
        ctypes.CDLL(libc_name).mallopt(-3, int(mmap_threshold))  # M_MMAP_THRESHOLD

    @staticmethod
    def _read(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    def peak(self, fn: Callable[[], None]) -> int:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
        base = self._read("VmRSS")
        fn()
        return self._read("VmHWM") - base


def calibrate_cpu() -> None:
    """The profiler replay must read back known tensor allocations exactly."""
    def known() -> None:
        a = torch.empty(6 * MiB, dtype=torch.uint8)
        b = torch.empty(2 * MiB, dtype=torch.uint8)
        del a
        c = torch.empty(5 * MiB, dtype=torch.uint8)
        del b, c

    got = cpu_peak(known)
    if got != 8 * MiB:
        raise SystemExit(f"memory probe calibration failed: expected 8 MiB, read {got / MiB:.3f}")
    print("memory probe: profiler replay reads back a known 8 MiB peak exactly")


# ---------------------------------------------------------------------------- one setting
class Setting:
    """Model, weighting, batch and tasks of one (tree, number of tasks) setting."""

    def __init__(self, n_tasks: int, kind: str, args: argparse.Namespace, device: torch.device):
        self.space = make_space(n_tasks, args.size)
        tree = make_tree(kind, self.space.task_names, self.space.depth)
        torch.manual_seed(0)
        self.model = BranchedNet(tree, self.space).to(device).train()
        self.weighting = create_weighting("uncertainty", self.space.task_names).to(device)
        self.batch = make_batch(self.space, args.batch, args.size, device)
        self.tasks = list(self.space.tasks)
        self.params = list(self.model.parameters()) + list(self.weighting.parameters())
        self.device = device

    def prepare(self) -> None:
        """Zero gradients that already exist (so they are not step memory); fix the RNG."""
        for p in self.params:
            p.grad = torch.zeros_like(p)
        torch.manual_seed(1)  # same dropout masks in both steps (the heads run in one order)

    def step(self, name: str) -> Callable[[], None]:
        fn = ordinary_step if name == "ordinary" else bounded_step
        return lambda: fn(self.model, self.batch, self.tasks, self.weighting)

    def timed(self, name: str) -> float:
        self.prepare()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        self.step(name)()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def measure(
    n_tasks: int, kind: str, args: argparse.Namespace, device: torch.device
) -> Dict[str, float]:
    """Peak memory, time and gradient agreement of both steps in one setting."""
    s = Setting(n_tasks, kind, args, device)
    peak_fn = cuda_peak if device.type == "cuda" else cpu_peak
    out: Dict[str, float] = {
        "params_mib": sum(p.numel() * p.element_size() for p in s.params) / MiB
    }
    state = copy.deepcopy(s.model.state_dict())
    grads = {}
    for name in MODES:
        s.model.load_state_dict(state)
        s.prepare()
        s.step(name)()  # warm-up (allocator, kernels); its gradients are compared below
        grads[name] = [p.grad.clone() for p in s.params]
        s.prepare()
        out[f"{name}_peak_mib"] = peak_fn(s.step(name)) / MiB
    out["max_grad_diff"] = max(
        float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
        for a, b in zip(grads["bounded"], grads["ordinary"])
    )
    times: Dict[str, List[float]] = {name: [] for name in MODES}
    for _ in range(args.repeats):  # interleaved, so a busy machine slows both alike
        for name in MODES:
            times[name].append(s.timed(name))
    for name in MODES:  # the best of the repeats: the least disturbed by other processes
        out[f"{name}_s"] = min(times[name])
    return out


def rss_peaks(n_tasks: int, kind: str, args: argparse.Namespace) -> Dict[str, float]:
    """Peak resident memory of each step, measured in a fresh process (see RssProbe)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-only", "--tasks", str(n_tasks),
           "--trees", kind, "--batch", str(args.batch), "--size", str(args.size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_only(args: argparse.Namespace) -> None:
    """The child of :func:`rss_peaks`: print {mode: peak RSS MiB} as JSON."""
    probe = RssProbe(mmap_threshold=4096)
    s = Setting(args.tasks[0], args.trees[0], args, torch.device("cpu"))
    out = {}
    for name in MODES:
        s.prepare()
        s.step(name)()  # warm-up
        s.prepare()
        out[name] = probe.peak(s.step(name)) / MiB
    print(json.dumps(out))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 5, 10, 20, 40])
    parser.add_argument("--trees", nargs="+", default=["heads", "last-block"],
                        choices=["heads", "last-block"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=48, help="input and label size (pixels)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per mode and setting")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a shared machine, OpenMP threads that "
                             "wait on each other make step times erratic)")
    parser.add_argument("--no-rss", action="store_true",
                        help="skip the resident-memory cross-check")
    parser.add_argument("--rss-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_only:
        rss_only(args)
        return
    device = torch.device(args.device)

    if device.type == "cuda":
        probe = f"torch.cuda.max_memory_allocated on {torch.cuda.get_device_name(device)}"
    else:
        calibrate_cpu()
        probe = "replay of torch profiler allocation events (CPU)"
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.size}x{args.size}, torch {torch.__version__}\n"
          f"peak memory = {probe}, above model + gradients + batch; "
          f"time = best of {args.repeats} steps\n")
    print(f"{'tree':<11}{'tasks':>6}{'params':>9}{'ordinary':>10}{'bounded':>9}{'mem ratio':>10}"
          f"{'ordinary':>10}{'bounded':>9}{'time ratio':>11}{'grad diff':>11}")
    print(f"{'':<11}{'':>6}{'MiB':>9}{'MiB':>10}{'MiB':>9}{'bnd/ord':>10}{'s':>10}{'s':>9}"
          f"{'bnd/ord':>11}{'rel max':>11}")
    largest: Dict[str, Dict[str, float]] = {}
    for kind in args.trees:
        for n in args.tasks:
            r = measure(n, kind, args, device)
            mem_ratio = r["bounded_peak_mib"] / r["ordinary_peak_mib"]
            time_ratio = r["bounded_s"] / r["ordinary_s"]
            print(f"{kind:<11}{n:>6}{r['params_mib']:>9.1f}{r['ordinary_peak_mib']:>10.1f}"
                  f"{r['bounded_peak_mib']:>9.1f}{mem_ratio:>10.3f}"
                  f"{r['ordinary_s']:>10.3f}{r['bounded_s']:>9.3f}{time_ratio:>11.2f}"
                  f"{r['max_grad_diff']:>11.1e}", flush=True)
            if n == max(args.tasks):
                largest[kind] = r
    if device.type == "cpu" and not args.no_rss:
        print("\ncross-check with the peak resident set "
              "(VmHWM, fresh process, 4 KiB mmap threshold):")
        for kind, r in largest.items():
            rss = rss_peaks(max(args.tasks), kind, args)
            rss_ratio = rss["bounded"] / rss["ordinary"]
            print(f"  {kind}, {max(args.tasks)} tasks: ordinary {rss['ordinary']:.1f} MiB "
                  f"(profiler {r['ordinary_peak_mib']:.1f}), bounded {rss['bounded']:.1f} MiB "
                  f"(profiler {r['bounded_peak_mib']:.1f}); ratio {rss_ratio:.3f} "
                  f"(profiler {r['bounded_peak_mib'] / r['ordinary_peak_mib']:.3f})", flush=True)


if __name__ == "__main__":
    main()
