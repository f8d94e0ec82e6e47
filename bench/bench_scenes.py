"""Generation speed of the embedded ``scenes`` benchmark, side by side in one run.

For each resolution it reports, in images per second:

* ``render``: ray casting + shading + edges (``render_scenes`` on pre-drawn factors),
* ``generate``: a whole dataset built from scratch (factor sampling, attributes, rendering),
* ``cached``: items read back through ``ScenesDataset.__getitem__`` from the disk cache
  (all tasks, i.e. 5 dense + 53 image-level labels per item),
* ``batched``: batches of 32 through a DataLoader with ``collate`` (single process),

and the ratio cached / generate (how much the cache buys per epoch). ``generate(cpu)`` is
the generation rate from process CPU time, which stays meaningful on a busy machine.

Run: ``PYTHONPATH=. python bench/bench_scenes.py [--n 256] [--res 32 64 128]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from branchnas.data import ScenesDataset, collate
from branchnas.data.scenes import render_scenes, sample_scene


def _rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="images per measurement")
    ap.add_argument("--res", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (collate, resize)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"scenes benchmark: {args.n} images per measurement, 1 process, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} (wall-clock rates)")
    print(f"{'res':>5} {'render':>9} {'generate':>9} {'generate(cpu)':>14} {'cached':>9} "
          f"{'batched':>9} {'cached/generate':>16}")
    with tempfile.TemporaryDirectory() as cache:
        for res in args.res:
            specs = [sample_scene(0, "train", i) for i in range(args.n)]
            t = time.perf_counter()
            render_scenes(specs, (res, res))
            render = _rate(args.n, time.perf_counter() - t)

            t, c = time.perf_counter(), time.process_time()
            ds = ScenesDataset("train", size=args.n, resolution=res, seed=1, cache_dir=cache)
            generate = _rate(args.n, time.perf_counter() - t)
            generate_cpu = _rate(args.n, time.process_time() - c)

            ds = ScenesDataset("train", size=args.n, resolution=res, seed=1, cache_dir=cache)
            t = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            cached = _rate(args.n, time.perf_counter() - t)

            loader = DataLoader(ds, batch_size=32, collate_fn=collate)
            t = time.perf_counter()
            for _ in loader:
                pass
            batched = _rate(args.n, time.perf_counter() - t)
            print(f"{res:>5} {render:>9.0f} {generate:>9.0f} {generate_cpu:>14.0f} "
                  f"{cached:>9.0f} {batched:>9.0f} {cached / generate:>15.1f}x")


if __name__ == "__main__":
    main()
