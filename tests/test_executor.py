"""The executor seam (pipeline.executor) and job specs (pipeline.jobs), on the local backend.

Ray's backend is tested on a real two-node Ray cluster in test_ray.py.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest

import _jobkinds  # noqa: F401  (registers toy_square / toy_fail in this process)
from branchnas.errors import BranchnasError
from branchnas.pipeline.executor import (
    Executor,
    ExecutorConfig,
    LocalExecutor,
    create_executor,
    executor_info,
    list_executors,
    run_all,
)
from branchnas.pipeline.jobs import (
    job_attempts,
    job_result,
    list_job_kinds,
    make_job,
    run_job,
    validate_job,
)


def _jobs(root: Path, n: int, sleep: float = 0.0):
    return [make_job("toy_square", {"x": i, "sleep": sleep}, root / f"j{i}") for i in range(n)]


@pytest.mark.parametrize("spec, match", [
    ({"kind": "k", "params": {}}, "missing out_dir"),
    ({"kind": "k", "params": {}, "out_dir": "d", "key": "x"}, "unknown field"),
    ({"kind": "", "params": {}, "out_dir": "d"}, "non-empty string"),
    ({"kind": "k", "params": [], "out_dir": "d"}, "params must be a JSON object"),
    ({"kind": "k", "params": {"x": object()}, "out_dir": "d"}, "not plain JSON"),
    ({"kind": "k", "params": {}, "out_dir": "d", "resources": {"tpus": 1}}, "resources"),
    ({"kind": "k", "params": {}, "out_dir": "d", "resources": {"gpus": -1}}, "resources"),
])
def test_bad_job_specs_are_one_line_errors(spec, match):
    with pytest.raises(BranchnasError, match=match):
        validate_job(spec)


def test_built_in_job_kinds_are_registered():
    assert {"train_single", "train_tree", "train_baseline", "tune_trial"} <= set(list_job_kinds())


def test_a_done_job_is_read_back_not_run_again(tmp_path):
    spec = make_job("toy_square", {"x": 3}, tmp_path / "j")
    assert job_result(spec) is None
    first = run_job(spec, {"executor": "test"})
    assert first["value"] == 9 and job_result(spec) == first
    (tmp_path / "j" / "done").write_text('{"value": 10, "pid": 0}')  # what is stored wins
    assert run_job(spec)["value"] == 10
    attempts = job_attempts(tmp_path / "j")
    assert len(attempts) == 1 and attempts[0]["executor"] == "test"
    assert attempts[0]["pid"] == os.getpid() and attempts[0]["host"]


@pytest.mark.parametrize("name", list_executors())
def test_every_executor_declares_its_metadata(name):
    info = executor_info(name)
    assert info["description"] and isinstance(info["distributed"], bool)
    assert set(info["options"]) <= {f for f in ExecutorConfig.__dataclass_fields__ if f != "name"}
    assert issubclass(create_executor.__globals__["_EXECUTORS"].get(name), Executor)


@pytest.mark.parametrize("cfg, match", [
    (ExecutorConfig(name="slurm"), "unknown executor 'slurm'; choose one of: local, ray"),
    (ExecutorConfig(name="ray", jobs=2), "--jobs is not a setting of executor 'ray'"),
    (ExecutorConfig(address="auto"), "--ray-address is not a setting of executor 'local'.*--executor ray"),
    (ExecutorConfig(gpus_per_job=0.5), "--gpus-per-job is not a setting"),
    (ExecutorConfig(jobs=0), "--jobs must be"),
])
def test_bad_executor_settings_are_caught_before_any_work(cfg, match):
    with pytest.raises(BranchnasError, match=match):
        cfg.validate()


def test_ray_missing_is_a_one_line_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(BranchnasError, match=r"pip install -e \.\[ray\]"):
        create_executor("ray")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(BranchnasError, match=r"--executor ray needs ray.*pip install -e \.\[ray\]"):
        ExecutorConfig(name="ray").validate()  # before any work starts


def test_in_process_executor_runs_each_job_when_submitted(tmp_path):
    with LocalExecutor() as ex:
        assert ex.parallelism == 1
        futures = [ex.submit(j) for j in _jobs(tmp_path, 3)]
        assert all(isinstance(f, Future) and f.done() for f in futures)
        assert [f.result()["value"] for f in futures] == [0, 1, 4]
        assert {f.result()["pid"] for f in futures} == {os.getpid()}
        bad = ex.submit(make_job("toy_fail", {"x": 1}, tmp_path / "bad"))
        with pytest.raises(BranchnasError, match="failed on purpose"):
            bad.result()


def test_process_pool_runs_jobs_in_workers_and_skips_done_ones(tmp_path):
    jobs = _jobs(tmp_path, 4)
    run_job(jobs[0])  # done before: not sent to a worker
    with create_executor("local", jobs=2, imports=["_jobkinds"]) as ex:
        results = run_all(ex, jobs)
    assert [r["value"] for r in results] == [0, 1, 4, 9]
    assert results[0]["pid"] == os.getpid()
    assert all(r["pid"] != os.getpid() for r in results[1:])
    assert [len(job_attempts(j["out_dir"])) for j in jobs] == [1, 1, 1, 1]


def test_run_all_raises_the_first_error_after_the_others_stop(tmp_path):
    jobs = _jobs(tmp_path, 2) + [make_job("toy_fail", {"x": 7}, tmp_path / "bad")]
    with LocalExecutor() as ex, pytest.raises(BranchnasError, match="toy job 7"):
        run_all(ex, jobs)
    assert all(job_result(j) is not None for j in jobs[:2])


@pytest.mark.parametrize("argv, match", [
    (["run", "--profile", "tiny", "--executor", "slurm"], "(invalid choice|unknown executor): 'slurm'"),
    (["train-single", "--executor", "ray", "--jobs", "2"], "--jobs is not a setting of executor 'ray'"),
    (["validate", "--profile", "tiny", "--ray-address", "auto"], "--ray-address is not a setting"),
    (["tune", "--model", "single:depth", "--gpus-per-job", "0.5"], "--gpus-per-job is not a setting"),
])
def test_bad_executor_options_on_the_command_line_write_nothing(argv, match, tmp_path, capsys):
    from branchnas.cli import main

    out = tmp_path / "out"
    try:
        rc = main([*argv, "--out", str(out)])
    except SystemExit as exc:  # argparse's own choices check
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and __import__("re").search(match, err), err
    assert not out.exists()


def test_train_single_sends_one_job_per_task_to_the_executor(tmp_path, monkeypatch, capsys):
    from branchnas.cli import main

    monkeypatch.setenv("BRANCHNAS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["train-single", "--profile", "tiny", "--tasks", "semseg", "depth", "--jobs", "2",
                 "--epochs", "1", "--threads", "1", "--progress", "false", "--out", str(out)]) == 0
    for task in ("semseg", "depth"):
        attempts = job_attempts(out / "single" / task)
        assert len(attempts) == 1 and attempts[0]["pid"] != os.getpid()  # a worker process
        assert (out / "single" / task / "done").is_file()
    assert "single/semseg" in capsys.readouterr().out


def test_a_done_run_of_other_settings_is_refused_before_it_is_reused(tmp_path):
    """The executor's shortcut for done jobs checks the config as the stages do."""
    from branchnas.pipeline.executors import single_job
    from branchnas.pipeline.resolve import profile_space
    from branchnas.spaces import load_space
    from branchnas.training import TrainConfig
    from branchnas.training.rundir import RunDir

    space = profile_space(load_space("scenes"), "tiny", ["depth"])
    config = TrainConfig.from_sources(space.training, {"epochs": 1})
    job = single_job(space, "depth", config, tmp_path)
    run = RunDir(job["out_dir"])
    run.start({**config.to_dict(), "lr": config.lr * 10})  # a run made with another lr
    run.mark_done({"depth": {}, "epochs": 1})
    with pytest.raises(BranchnasError, match="different config.*lr"):
        LocalExecutor().submit(job)
