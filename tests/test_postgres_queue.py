"""The job queue on a real PostgreSQL server (Debian's ``postgresql`` package binaries).

The fixture runs ``initdb`` into a temporary directory and starts ``postgres`` on a free
loopback port (unix sockets in the same directory, fsync off), creates a database and
stops the server afterwards. As root, the server runs as the ``postgres`` user (PostgreSQL
refuses to run as root). The tests skip, saying why, only when the server binaries or the
psycopg2 driver are missing: CI installs them (``apt-get install -y postgresql``, and
``psycopg2-binary`` from setup.cfg).

The acceptance scenario is tests/test_jobs_queue.py's: 3 worker processes, 12 toy jobs,
the worker running one of them SIGKILLed mid-job; every job completes exactly once and the
results equal a single-process run.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest
from test_jobs_queue import GRACE, HEARTBEAT, run_distributed_with_kill, toy_specs

from branchnas.pipeline.jobs import job_key
from branchnas.pipeline.queue import (
    JobQueue,
    close_queue,
    enqueue,
    parse_storage_url,
    run_worker,
    wait_for,
)

APT_HINT = "install the server with `apt-get install -y postgresql`"


def _bindir() -> Optional[Path]:
    """The newest Debian PostgreSQL bin directory, or one on PATH, holding initdb and postgres."""
    def version(bin_dir: str) -> list:
        return [int(x) for x in Path(bin_dir).parent.name.split(".") if x.isdigit()]

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for d in candidates:
        if (Path(d) / "initdb").is_file() and (Path(d) / "postgres").is_file():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bindir = _bindir()
    if bindir is None:
        pytest.skip(f"PostgreSQL server binaries (initdb, postgres) not found; {APT_HINT}")
    psycopg2 = pytest.importorskip("psycopg2", reason="needs `pip install psycopg2-binary`")
    root = Path(tempfile.mkdtemp(prefix="branchnas-pg-"))
    as_user: Dict[str, Any] = {}
    if os.geteuid() == 0:  # postgres will not run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        os.chown(root, account.pw_uid, account.pw_gid)
    data, log_path = root / "data", root / "server.log"
    proc: Optional[subprocess.Popen] = None
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "branchnas", "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True, timeout=180, cwd=str(root), **as_user,
        )
        port = _free_port()
        with open(log_path, "w") as log:
            if as_user:
                os.chown(log_path, as_user["user"], as_user["group"])
            proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data), "-k", str(root), "-h", "127.0.0.1",
                 "-p", str(port), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=100"],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(root), **as_user,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="branchnas",
                                        dbname="postgres", connect_timeout=2)
                break
            except psycopg2.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("postgres did not start:\n" + log_path.read_text()[-3000:]) from None
                time.sleep(0.2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE jobs")
        conn.close()
        yield f"postgresql://branchnas@127.0.0.1:{port}/jobs"
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: disconnects clients, stops
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_storage_url_and_deduplication(postgres_url: str, tmp_path: Path) -> None:
    assert parse_storage_url(postgres_url).kind == "rdb"
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    specs = toy_specs(tmp_path / "jobs", log_dir, n=3)
    keys = enqueue(postgres_url, "dedup", specs)
    assert enqueue(postgres_url, "dedup", specs[::-1]) == keys[::-1]
    assert len(JobQueue(postgres_url, "dedup").trials()) == 3
    close_queue(postgres_url, "dedup")
    report = run_worker(postgres_url, "dedup", poll_interval=0.05, heartbeat_interval=HEARTBEAT,
                        grace_period=GRACE)
    assert sorted(report.completed) == sorted(keys)
    results = wait_for(postgres_url, "dedup", keys, timeout=10)
    assert [results[job_key(s)]["x"] for s in specs] == [0, 1, 2]


def test_three_workers_one_killed_every_job_completes_once(postgres_url: str,
                                                          tmp_path: Path) -> None:
    run_distributed_with_kill(postgres_url, "kill-test", tmp_path, n_jobs=12, n_workers=3)
