"""Starting a small gloo process group from a test (shared by the DDP tests)."""

import time
from pathlib import Path
from typing import Callable

import torch.multiprocessing as mp


def spawn_and_wait(worker: Callable[..., None], nprocs: int, tmp: Path, timeout_s: float = 300) -> None:
    """Run ``worker(rank, nprocs, str(tmp))`` in ``nprocs`` processes; kill them past the timeout."""
    procs = mp.spawn(worker, args=(nprocs, str(tmp)), nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not procs.join(timeout=2):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {nprocs} gloo processes did not finish in {timeout_s:.0f} s")
    finally:
        for p in procs.processes:  # only the processes this call started
            if p.is_alive():
                p.kill()
                p.join(10)
