"""The Ray executor on a real two-node Ray cluster on this machine (2 CPUs in all).

One module-scoped cluster serves every test (Ray takes seconds to start): a head node
(``ray start --head --num-cpus=1``) and a second node that joins it (``ray start
--address=...``), each in its own process session, stopped by signalling those sessions
(never a broad ``ray stop``, which would hit other Ray processes on the machine). Ray's
session files go to a temp dir. Ray is a dev dependency, so these tests run in CI; they
are not skipped when Ray is missing.

What they show: a tiny ``run --executor ray`` ends with the results of ``--executor local``
although a Ray worker was SIGKILLed in the middle of a training job (the job is retried and
resumes from its checkpoint); both nodes took jobs, and each job's run directory records
which node ran it; ``tune`` on Ray runs as many trials as locally.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import ray

from branchnas.cli import main
from branchnas.pipeline.executor import ExecutorConfig, RayExecutor, create_executor, run_all
from branchnas.pipeline.jobs import job_attempts, make_job
from branchnas.pipeline.results import results_table

TESTS = Path(__file__).resolve().parent
TASKS = ["semseg", "depth"]
ARGS = ["--profile", "tiny", "--tasks", *TASKS, "--budgets", "0.6M", "--baselines", "shared",
        "--progress", "false", "--threads", "1", "--epochs", "4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args, env, log):
    ray_bin = str(Path(sys.executable).with_name("ray"))
    ports = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--runtime-env-agent-port", "--metrics-export-port"]
    cmd = [ray_bin, "start", *args, "--num-cpus=1", "--node-ip-address=127.0.0.1",
           "--object-store-memory=80000000", "--disable-usage-stats", "--block",
           *[f"{p}={_free_port()}" for p in ports]]
    # its own session: the node's processes (raylet, workers) are stopped by signalling it
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(procs, temp: str) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for p in procs:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any(_alive_in_session(p.pid) for p in procs):
            time.sleep(0.2)
    for p in procs:
        p.wait(timeout=10)
    # anything still naming our session dir was started by this fixture (by id, not by name)
    for pid in _pids_mentioning(temp):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive_in_session(sid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[3]) == sid and stat[0] != "Z":  # field 6 of stat is the session id
                return True
    return False


def _pids_mentioning(text: str):
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node and a second node, 1 CPU each; this process is the driver."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are limited
    cache = str(tmp_path_factory.getbasetemp() / "scenes-cache")
    # a private cluster on 127.0.0.1 that this process alone joins: no auth token (Ray would
    # otherwise share one through ~/.ray, which other Ray instances of the machine also read)
    auth = {"RAY_AUTH_MODE": "disabled"}
    env = {**os.environ, **auth, "BRANCHNAS_CACHE": cache, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_AUTH_MODE", "disabled")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    log = open(Path(temp) / "nodes.log", "w")
    procs = [_ray_start(["--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
                         f"--ray-client-server-port={_free_port()}"], env, log)]
    try:
        deadline = time.time() + 120
        while True:  # the head's GCS takes seconds to listen
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
                break
            except Exception:
                if time.time() > deadline or procs[0].poll() is not None:
                    raise
                time.sleep(1)
        procs.append(_ray_start([f"--address={address}"], env, log))
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.time() < deadline and procs[1].poll() is None, "the second node did not join"
            time.sleep(0.5)
        yield {"address": address, "nodes": {n["NodeID"] for n in ray.nodes() if n["Alive"]},
               "cache": cache}
    finally:
        ray.shutdown()
        patch.undo()
        _stop(procs, temp)
        log.close()
        shutdown_left = _pids_mentioning(temp)
        shutil.rmtree(temp, ignore_errors=True)
        assert not shutdown_left, f"Ray processes left behind: {shutdown_left}"


def _results(out: Path) -> dict:
    table = results_table(out)
    cols = [c for c in table.columns if "/" in c] + ["params", "delta_m"]
    return {row["name"]: tuple(None if row[c] != row[c] else row[c] for c in cols)
            for _, row in table.iterrows()}


class _Killer(threading.Thread):
    """SIGKILLs the Ray worker of the first training job seen after its first epoch."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.killed, self.stop = root, None, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            for attempts in self.root.glob("*/*/attempts.jsonl"):
                run = attempts.parent
                rec = job_attempts(run)
                metrics = run / "metrics.jsonl"
                if (rec and rec[-1]["executor"] == "ray" and not (run / "done").exists()
                        and metrics.is_file() and metrics.read_text().count("\n") >= 1):
                    os.kill(rec[-1]["pid"], signal.SIGKILL)
                    self.killed = {"run": run, "pid": rec[-1]["pid"]}
                    return
            time.sleep(0.01)


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The same tiny run with --executor local and --executor ray (one Ray worker killed)."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("BRANCHNAS_CACHE", cluster["cache"])  # the rendered images the nodes use too
        assert main(["run", "--out", str(root / "local"), *ARGS]) == 0
        killer = _Killer(root / "ray")
        killer.start()
        try:
            assert main(["run", "--out", str(root / "ray"), "--executor", "ray", "--ray-address",
                         cluster["address"], *ARGS]) == 0
        finally:
            killer.stop.set()
            killer.join()
    return {"local": root / "local", "ray": root / "ray", "killed": killer.killed}


def test_ray_run_ends_with_the_local_runs_results(runs):
    ray_results = _results(runs["ray"])
    assert len(ray_results) == 2 + 1 + 1  # two single-task nets, one tree, the shared baseline
    assert ray_results == _results(runs["local"])
    every = [a for d in runs["ray"].glob("*/*") for a in job_attempts(d)]
    assert {a["executor"] for a in every} == {"ray"}


def test_a_killed_ray_worker_is_retried_and_its_job_resumes(runs):
    killed = runs["killed"]
    assert killed is not None, "no training job was caught between two epochs"
    attempts = job_attempts(killed["run"])
    assert len(attempts) >= 2 and attempts[0]["pid"] == killed["pid"] != attempts[-1]["pid"]
    epochs = [line for line in (killed["run"] / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 4  # resumed from its checkpoint: no epoch logged twice
    assert (killed["run"] / "done").is_file()


def test_the_second_node_takes_jobs_and_each_run_records_its_node(runs, cluster):
    nodes = {d.name: [a["node"] for a in job_attempts(d)] for d in runs["ray"].glob("*/*")
             if job_attempts(d)}
    ran = {n for attempts in nodes.values() for n in attempts}
    assert ran <= cluster["nodes"]
    assert len(ran) == 2, nodes  # both nodes ran jobs (two one-CPU jobs at once need both)


def test_jobs_ask_ray_for_their_resources(cluster, tmp_path):
    jobs = [make_job("toy_square", {"x": i, "sleep": 0.5}, tmp_path / f"j{i}", {"cpus": 1})
            for i in range(2)]
    ex = create_executor("ray", address=cluster["address"], imports=["_jobkinds"])
    assert isinstance(ex, RayExecutor) and ex.parallelism == 2 and ex.gpus_per_job == 0.0
    assert [r["value"] for r in run_all(ex, jobs)] == [0, 1]
    # two one-CPU jobs on two one-CPU nodes run side by side, one per node
    assert len({job_attempts(j["out_dir"])[0]["node"] for j in jobs}) == 2
    ex.shutdown()
    assert ray.is_initialized()  # a cluster it joined is not stopped by it


def test_tune_on_ray_runs_the_same_number_of_trials_as_local(cluster, tmp_path):
    from branchnas.pipeline.tune import tune

    data = {"size": 44, "resolution": [32, 32], "cache_dir": False}
    tiny = {"epochs": 2, "max_train_batches": 1, "eval_batch_size": 8, "progress": False,
            "threads": 1}
    local = tune("scenes", "single:scene", trials=3, out_dir=tmp_path / "local", overrides=tiny,
                 dataset=data)
    on_ray = tune("scenes", "single:scene", trials=3, out_dir=tmp_path / "ray", overrides=tiny,
                  dataset=data, executor=ExecutorConfig(name="ray", address=cluster["address"]))
    count = lambda s: sum(s["budget"][k] for k in ("complete", "pruned", "failed"))  # noqa: E731
    assert count(local) == count(on_ray) == 3
    trial_dirs = sorted((tmp_path / "ray" / "tuned" / "scenes" / "single-scene").glob("trial-*"))
    assert len(trial_dirs) == 3
    assert all(job_attempts(d)[-1]["executor"] == "ray" for d in trial_dirs)
