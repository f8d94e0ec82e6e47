"""Benchmark: the per-job overhead of the ``ray`` executor against ``local``, in one run.

Every training job pays the executor's cost on top of its training: the local executor runs
it in this process (``--jobs 1``) or hands it to a spawned worker process (``--jobs N``); the
ray executor sends it to a Ray task. The bench runs jobs that do almost nothing (record the
attempt, write the ``done`` marker: what every job does besides training) and measures

- latency: one job at a time, submit to result (the overhead one job pays);
- throughput: N jobs submitted at once (the overhead per job when the executor is full);

for ``local`` in-process, ``local --jobs 2`` and ``ray`` (a Ray instance started here with
2 CPUs, or ``--ray-address`` of a running cluster), and prints each against ``local``. The run
directories go to ``/dev/shm`` (a RAM disk) by default: on a disk, the three fsyncs of every
job (attempt record, done marker, its directory) take 5-20 ms and vary more than the
executors differ (``--dir`` to measure there). One
tiny training job (the ``tiny`` profile's single-task network) is timed too, to set the
overhead against the work it carries. Ray's start-up (seconds) is reported apart: it is paid
once per run, not per job.

Run::

    python bench/bench_executor.py                 # 3 rounds of 40 jobs
    python bench/bench_executor.py --jobs 100 --ray-address auto
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":  # Ray workers import this module (by name) for the job kind
    sys.path.insert(0, str(HERE))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])

from branchnas.pipeline.jobs import _KINDS, make_job, register_job_kind  # noqa: E402
from branchnas.training.rundir import RunDir  # noqa: E402

if "bench_noop" not in _KINDS:
    @register_job_kind("bench_noop")
    def _noop(spec: Mapping[str, Any]) -> Dict[str, Any]:
        """A job without training: its run directory's done marker, written as a stage does."""
        run = RunDir(spec["out_dir"])
        run.mark_done({"value": spec["params"]["i"]})
        return run.read_result()


def _jobs(root: Path, n: int) -> List[Dict[str, Any]]:
    return [make_job("bench_noop", {"i": i}, root / f"j{i:04d}", {"cpus": 1}) for i in range(n)]


def _latency(executor: Any, root: Path, n: int) -> List[float]:
    out = []
    for spec in _jobs(root, n):
        t0 = time.perf_counter()
        executor.submit(spec).result()
        out.append(time.perf_counter() - t0)
    return out


def _per_job(executor: Any, root: Path, n: int) -> float:
    from branchnas.pipeline.executor import run_all

    t0 = time.perf_counter()
    run_all(executor, _jobs(root, n))
    return (time.perf_counter() - t0) / n


def _tiny_training_s(root: Path) -> float:
    from branchnas.pipeline.executor import LocalExecutor
    from branchnas.pipeline.executors import single_job
    from branchnas.pipeline.resolve import profile_space
    from branchnas.spaces import load_space
    from branchnas.training import TrainConfig

    space = profile_space(load_space("scenes"), "tiny", ["depth"])
    config = TrainConfig.from_sources(space.training, {"epochs": 2, "batch_size": 6,
                                                       "eval_batch_size": 12, "threads": 1,
                                                       "progress": False})
    with LocalExecutor() as ex:
        t0 = time.perf_counter()
        ex.submit(single_job(space, "depth", config, root / "tiny")).result()
        return time.perf_counter() - t0


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs per measurement (default: 40)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                        help="where the jobs' run directories go (default: /dev/shm, a RAM disk, "
                        "so the disk's fsync time does not drown the executors' own cost)")
    parser.add_argument("--ray-address", help="a running Ray cluster (default: start one, 2 CPUs)")
    args = parser.parse_args(argv)

    from branchnas.pipeline.executor import create_executor

    rows: Dict[str, Dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        executors = {
            "local": create_executor("local", imports=["bench_executor"]),
            "local --jobs 2": create_executor("local", jobs=2, imports=["bench_executor"]),
        }
        t0 = time.perf_counter()
        executors["ray"] = create_executor("ray", address=args.ray_address,
                                           num_cpus=None if args.ray_address else 2,
                                           imports=["bench_executor"])
        start_s = time.perf_counter() - t0
        lat: Dict[str, List[float]] = {k: [] for k in executors}
        per: Dict[str, List[float]] = {k: [] for k in executors}
        try:
            for name, ex in executors.items():  # workers started, modules imported
                _latency(ex, root / "warmup" / name, 2)
            # rounds interleave the executors, so a busy moment of the machine hits all of them
            for r in range(args.rounds):
                for name, ex in executors.items():
                    lat[name] += _latency(ex, root / f"lat{r}" / name, args.jobs)
                    per[name].append(_per_job(ex, root / f"thr{r}" / name, args.jobs))
        finally:
            for ex in executors.values():
                ex.shutdown()
        rows = {k: {"latency_ms": 1e3 * statistics.median(lat[k]),
                    "per_job_ms": 1e3 * statistics.median(per[k])} for k in executors}
        training_s = _tiny_training_s(root)

    base = rows["local"]
    print(f"per-job overhead: {args.rounds} rounds of {args.jobs} jobs that only write their done "
          f"marker in {args.dir or tempfile.gettempdir()} (median latency, one job at a time; "
          "per job with all submitted at once)")
    print(f"{'executor':<16}{'latency ms':>12}{'x local':>9}{'per job ms':>12}{'x local':>9}")
    for name, r in rows.items():
        print(f"{name:<16}{r['latency_ms']:>12.2f}{r['latency_ms'] / base['latency_ms']:>9.1f}"
              f"{r['per_job_ms']:>12.2f}{r['per_job_ms'] / base['per_job_ms']:>9.1f}")
    print(f"ray start-up (once per run): {start_s:.1f} s")
    print(f"one tiny training job (scenes depth, 2 epochs on 12 images, local): {training_s:.2f} s; "
          f"ray's latency is {100 * rows['ray']['latency_ms'] / 1e3 / training_s:.1f} % of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
