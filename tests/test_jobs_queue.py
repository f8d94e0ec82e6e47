"""Jobs and the optuna-storage job queue (SQLite and journal file).

The multi-process test starts 3 worker processes on 12 toy jobs, SIGKILLs the worker that
runs one of them mid-job, and checks that the job is retried, every job completes exactly
once (each executor appends to a completion log only when it finishes), and the results
equal a single-process run. The toy kind is registered when this module is imported, so
the worker processes import it too (``imports=["test_jobs_queue"]``);
tests/test_postgres_queue.py reuses the harness on a real PostgreSQL server.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from branchnas.errors import BranchnasError
from branchnas.pipeline.jobs import (
    JOB_DONE_FILE,
    current_job,
    get_job_kind,
    job_key,
    list_job_kinds,
    make_job,
    read_job_result,
    register_job_kind,
    run_job,
    validate_job,
)
from branchnas.pipeline.queue import (
    JobQueue,
    close_queue,
    enqueue,
    parse_storage_url,
    queue_status,
    redact_url,
    run_jobs,
    run_worker,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

HEARTBEAT = 0.2  # fast lease timings for the tests
GRACE = 2.0

# ----------------------------------------------------------------------------- toy kinds


def _toy(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Sleeps, then returns numbers derived from x only; logs its completion.

    With ``hang_first``, the first attempt writes its pid to ``hang-<x>`` and waits (up to
    60 s, checking its lease) to be killed.
    """
    p = spec["params"]
    ctx = current_job()
    attempt = ctx.attempt if ctx is not None else 1
    log_dir = Path(p["log_dir"])
    if p.get("hang_first") and attempt == 1:
        (log_dir / f"hang-{p['x']}").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if ctx is not None:
                ctx.check()
        raise RuntimeError("the hanging job was not killed")
    time.sleep(float(p.get("sleep", 0.0)))
    x = int(p["x"])
    digest = hashlib.sha256(str(x).encode()).hexdigest()[:12]
    with open(log_dir / "completions.log", "a", encoding="utf-8") as f:
        f.write(f"{x} {os.getpid()}\n")
    return {"value": float(x * x), "x": x, "cube": x ** 3, "digest": digest}


def _toy_fail(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Fails while the file ``params.flag`` is missing."""
    if not Path(spec["params"]["flag"]).exists():
        raise ValueError("flag file missing")
    return {"ok": True}


def _toy_wait_lost(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Checks its lease until it is lost (at most 20 s)."""
    ctx = current_job()
    assert ctx is not None
    Path(spec["params"]["started"]).write_text("1")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ctx.check()
        time.sleep(0.05)
    return {"never": True}


for _name, _fn in (("toy_square", _toy), ("toy_fail", _toy_fail),
                   ("toy_wait_lost", _toy_wait_lost)):
    if _name not in list_job_kinds():
        register_job_kind(_name, _fn)


def toy_specs(root: Path, log_dir: Path, n: int = 12, hang: Optional[int] = None) -> List[dict]:
    return [
        make_job("toy_square", {"x": i, "sleep": 0.15, "log_dir": str(log_dir),
                                "hang_first": i == hang}, root / f"job-{i:02d}")
        for i in range(n)
    ]


# ----------------------------------------------------------------------------- worker processes


def start_worker(url: str, study: str, log_path: Path) -> subprocess.Popen:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')\n"
        "from branchnas.pipeline.queue import run_worker\n"
        f"r = run_worker(sys.argv[1], sys.argv[2], imports=['test_jobs_queue'], "
        f"heartbeat_interval={HEARTBEAT}, grace_period={GRACE}, poll_interval=0.1, "
        "idle_timeout=30)\n"
        "print('REPORT', len(r.completed), len(r.failed), len(r.duplicates), len(r.lost))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    with open(log_path, "w") as out:
        return subprocess.Popen([sys.executable, "-c", code, url, study], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=str(REPO))


def run_distributed_with_kill(url: str, study: str, tmp: Path, n_jobs: int = 12,
                              n_workers: int = 3) -> None:
    """The acceptance scenario, shared with the PostgreSQL test (asserts inside)."""
    log_dir = tmp / "logs"
    log_dir.mkdir()
    hang = 5
    specs = toy_specs(tmp / "dist", log_dir, n_jobs, hang=hang)
    keys = enqueue(url, study, specs)
    assert len(set(keys)) == n_jobs
    workers = [start_worker(url, study, tmp / f"worker-{i}.log") for i in range(n_workers)]
    try:
        # kill the worker that runs the hanging job, mid-job
        marker = log_dir / f"hang-{hang}"
        deadline = time.monotonic() + 90
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline, "the hanging job never started"
            assert all(w.poll() is None for w in workers), _logs(tmp)
            time.sleep(0.05)
        pid = int(marker.read_text())
        victim = next(w for w in workers if w.pid == pid)  # only ever kill our own process
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        close_queue(url, study)  # the survivors exit once nothing is waiting or running
        results = wait_for(url, study, keys, timeout=120, poll_interval=0.2, grace_period=GRACE)
        for w in workers:
            if w is not victim:
                assert w.wait(timeout=60) == 0, _logs(tmp)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(timeout=10)

    # every job completed exactly once; the killed job by another worker
    lines = (log_dir / "completions.log").read_text().split()
    xs = sorted(int(v) for v in lines[0::2])
    assert xs == list(range(n_jobs))
    finisher = dict(zip(lines[0::2], lines[1::2]))[str(hang)]
    assert finisher != str(victim.pid)
    # the killed job was failed as stale and retried; no other job ran twice
    queue = JobQueue(url, study)
    trials = queue.trials()
    by_key: Dict[str, list] = {}
    for t in trials:
        by_key.setdefault(t.user_attrs["job_key"], []).append(t)
    killed = keys[hang]
    states = [t.state.name for t in by_key[killed]]
    assert states == ["FAIL", "COMPLETE"], states
    assert "branchnas:stale" in by_key[killed][0].system_attrs
    assert by_key[killed][1].user_attrs["job_attempt"] == 2
    for key in keys:
        if key != killed:
            assert [t.state.name for t in by_key[key]] == ["COMPLETE"]
    st = queue_status(url, study)
    assert (st.jobs, st.done, st.broken, st.waiting, st.running) == (n_jobs, n_jobs, 0, 0, 0)
    # ... and the results equal a single-process run of the same jobs
    local_log = tmp / "local-logs"
    local_log.mkdir()
    local = run_jobs(toy_specs(tmp / "local", local_log, n_jobs))
    assert [results[k] for k in keys] == local
    for spec in specs:
        assert (Path(spec["out_dir"]) / JOB_DONE_FILE).is_file()


def _logs(tmp: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                     for p in sorted(tmp.glob("worker-*.log")))


# ----------------------------------------------------------------------------- jobs


def test_job_key_is_canonical_and_explicit_keys_win(tmp_path: Path) -> None:
    a = make_job("toy_square", {"x": 1, "y": [1, 2]}, tmp_path / "a")
    b = validate_job({"out_dir": str(tmp_path / "a"), "params": {"y": (1, 2), "x": 1},
                      "kind": "toy_square"})
    assert job_key(a) == job_key(b) and job_key(a).startswith("toy_square-")
    assert job_key(make_job("toy_square", {"x": 1, "y": [1, 2]}, tmp_path / "b")) != job_key(a)
    assert job_key(make_job("toy_square", {"x": 2}, tmp_path / "a", key="mine")) == "mine"


@pytest.mark.parametrize("bad, match", [
    ({"kind": "k", "params": {}}, "missing out_dir"),
    ({"kind": "k", "params": {}, "out_dir": "x", "extra": 1}, "unknown field"),
    ({"kind": "k", "params": {"f": object()}, "out_dir": "x"}, "not plain JSON"),
    ({"kind": "k", "params": {"f": float("nan")}, "out_dir": "x"}, "not plain JSON"),
    ({"kind": "", "params": {}, "out_dir": "x"}, "non-empty"),
])
def test_bad_job_specs_are_rejected(bad: dict, match: str) -> None:
    with pytest.raises(BranchnasError, match=match):
        validate_job(bad)


def test_run_job_is_idempotent(tmp_path: Path) -> None:
    calls = []

    def count(spec: dict) -> dict:
        calls.append(spec["params"]["x"])
        return {"value": 2.0 * spec["params"]["x"]}

    register_job_kind("test_count_once", count)
    spec = make_job("test_count_once", {"x": 4}, tmp_path / "j")
    assert run_job(spec) == {"value": 8.0}
    assert run_job(spec) == {"value": 8.0}
    assert calls == [4]
    assert read_job_result(spec) == {"value": 8.0}
    assert json.loads((tmp_path / "j" / "job.json").read_text())["key"] == job_key(spec)
    other = make_job("test_count_once", {"x": 5}, tmp_path / "j")
    with pytest.raises(BranchnasError, match="give each job its own out_dir"):
        run_job(other)


def test_a_racing_execution_keeps_the_first_committed_result(tmp_path: Path) -> None:
    def racer(spec: dict) -> dict:
        # another execution of the same job commits while this one is still running
        marker = {"key": job_key(spec), "kind": spec["kind"], "result": {"who": "first"}}
        (Path(spec["out_dir"]) / JOB_DONE_FILE).write_text(json.dumps(marker))
        return {"who": "second"}

    register_job_kind("test_race", racer)
    spec = make_job("test_race", {}, tmp_path / "r")
    assert run_job(spec) == {"who": "first"}
    assert read_job_result(spec) == {"who": "first"}


def test_unknown_kind_and_bad_results_are_errors(tmp_path: Path) -> None:
    with pytest.raises(BranchnasError, match="unknown job kind 'nope'.*toy_square"):
        get_job_kind("nope")
    register_job_kind("test_returns_list", lambda spec: [1])
    with pytest.raises(BranchnasError, match="not a dict"):
        run_job(make_job("test_returns_list", {}, tmp_path / "l"))
    assert not (tmp_path / "l" / JOB_DONE_FILE).exists()


def test_tune_trial_kind_is_built_in() -> None:
    assert callable(get_job_kind("tune_trial"))


# ----------------------------------------------------------------------------- storage URLs


def test_storage_urls(tmp_path: Path) -> None:
    assert parse_storage_url("sqlite:///runs/q.db").path == Path("runs/q.db")
    assert parse_storage_url("sqlite:////abs/q.db").path == Path("/abs/q.db")
    assert parse_storage_url("runs/q.db").url == "sqlite:///runs/q.db"
    j = parse_storage_url("journal:///abs/q.journal")
    assert (j.kind, j.path) == ("journal", Path("/abs/q.journal"))
    assert parse_storage_url("journal:rel/q.journal").path == Path("rel/q.journal")
    assert parse_storage_url("runs/q.journal").kind == "journal"
    pg = parse_storage_url("postgres://u:pw@h:5432/db")
    assert (pg.kind, pg.url) == ("rdb", "postgresql://u:pw@h:5432/db")
    for bad in ("sqlite:///:memory:", "sqlite://", "redis://h/0", "runs/q.txt", "journal:"):
        with pytest.raises(BranchnasError):
            parse_storage_url(bad)
    assert redact_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("sqlite:///q.db") == "sqlite:///q.db"


# ----------------------------------------------------------------------------- queue, in-process


def test_enqueue_deduplicates_and_a_worker_drains_the_queue(tmp_path: Path) -> None:
    url, study = f"journal:{tmp_path / 'q.journal'}", "s"
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    specs = toy_specs(tmp_path / "jobs", log_dir, n=4)
    keys = enqueue(url, study, specs + specs[:2])
    assert keys[:4] == [job_key(s) for s in specs] and keys[4:] == keys[:2]
    assert enqueue(url, study, specs) == keys[:4]
    assert queue_status(url, study).waiting == 4
    close_queue(url, study)
    report = run_worker(url, study, poll_interval=0.05, heartbeat_interval=HEARTBEAT,
                        grace_period=GRACE)
    assert sorted(report.completed) == sorted(keys[:4])
    results = wait_for(url, study, keys, timeout=5)
    assert [results[k]["x"] for k in keys[:4]] == [0, 1, 2, 3]
    enqueue(url, study, specs)  # done jobs are not enqueued again
    st = queue_status(url, study)
    assert (st.jobs, st.done, st.waiting, st.complete) == (4, 4, 0, 4)


def test_a_failed_job_is_reported_and_can_be_enqueued_again(tmp_path: Path) -> None:
    url, study = f"sqlite:///{tmp_path / 'q.db'}", "s"
    flag = tmp_path / "flag"
    spec = make_job("toy_fail", {"flag": str(flag)}, tmp_path / "f")
    keys = enqueue(url, study, [spec])
    close_queue(url, study)
    report = run_worker(url, study, poll_interval=0.05, heartbeat_interval=HEARTBEAT,
                        grace_period=GRACE)
    assert report.failed == keys
    with pytest.raises(BranchnasError,
                       match=r"job toy_fail-\w+ failed: ValueError: flag file missing"):
        wait_for(url, study, keys, timeout=5)
    assert queue_status(url, study).broken == 1
    flag.write_text("")
    enqueue(url, study, [spec])
    close_queue(url, study)
    run_worker(url, study, poll_interval=0.05, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
    assert wait_for(url, study, keys, timeout=5) == {keys[0]: {"ok": True}}


def test_a_duplicate_trial_of_a_job_is_not_run(tmp_path: Path) -> None:
    url, study = f"journal:{tmp_path / 'q.journal'}", "s"
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    spec = toy_specs(tmp_path / "jobs", log_dir, n=1)[0]
    queue = JobQueue(url, study)
    queue._add(spec, job_key(spec), attempt=1)  # as two drivers enqueueing at once would
    queue._add(spec, job_key(spec), attempt=1)
    queue.set_closed(True)
    report = run_worker(url, study, poll_interval=0.05, heartbeat_interval=HEARTBEAT,
                        grace_period=GRACE)
    assert len(report.completed) == 1 and len(report.duplicates) == 1
    assert (log_dir / "completions.log").read_text().count("\n") == 1
    assert wait_for(url, study, [job_key(spec)], timeout=5)[job_key(spec)]["x"] == 0


def test_a_job_without_heartbeat_is_failed_and_retried_up_to_max_retries(tmp_path: Path) -> None:
    url, study = f"sqlite:///{tmp_path / 'q.db'}", "s"
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    spec = toy_specs(tmp_path / "jobs", log_dir, n=1)[0]
    key = enqueue(url, study, [spec])[0]
    queue = JobQueue(url, study)
    for _attempt in (1, 2):  # a worker claims the job and dies (no heartbeat), twice
        assert queue.claim("dead-worker") is not None
        assert queue.recover(grace_period=0.3, max_retries=1) == 0  # first look
        time.sleep(0.4)
        queue.recover(grace_period=0.3, max_retries=1)
    states = [(t.state.name, t.user_attrs["job_attempt"]) for t in queue.trials()]
    assert states == [("FAIL", 1), ("FAIL", 2)]
    with pytest.raises(BranchnasError, match="its worker died 2 times"):
        wait_for(url, study, [key], timeout=5, grace_period=0.3, max_retries=1)
    assert not (log_dir / "completions.log").exists()


def test_a_worker_that_lost_its_lease_stops_and_commits_nothing(tmp_path: Path) -> None:
    url, study = f"journal:{tmp_path / 'q.journal'}", "s"
    started = tmp_path / "started"
    spec = make_job("toy_wait_lost", {"started": str(started)}, tmp_path / "w")
    enqueue(url, study, [spec])
    queue = JobQueue(url, study)
    trial = queue.claim("w1")
    assert trial is not None

    def fail_behind_its_back() -> None:
        while not started.exists():
            time.sleep(0.02)
        assert queue._fail_stale(trial, "test: given away")

    thread = threading.Thread(target=fail_behind_its_back)
    thread.start()
    outcome = queue.execute(trial, "w1", heartbeat_interval=0.1)
    thread.join()
    assert outcome == "lost"
    assert not (tmp_path / "w" / JOB_DONE_FILE).exists()


def test_bad_worker_settings_are_errors(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'q.journal'}"
    with pytest.raises(BranchnasError, match="grace period"):
        run_worker(url, "s", heartbeat_interval=10, grace_period=5)
    with pytest.raises(BranchnasError, match="cannot import job-kind module"):
        run_worker(url, "s", imports=["no_such_module_xyz"])
    with pytest.raises(BranchnasError, match="not in queue"):
        wait_for(url, "s", ["nope"], timeout=1)


# ----------------------------------------------------------------------------- processes


@pytest.mark.parametrize("backend", ["journal", "sqlite"])
def test_three_workers_one_killed_every_job_completes_once(tmp_path: Path, backend: str) -> None:
    url = (f"journal:{tmp_path / 'q.journal'}" if backend == "journal"
           else f"sqlite:///{tmp_path / 'q.db'}")
    run_distributed_with_kill(url, "kill-test", tmp_path)
