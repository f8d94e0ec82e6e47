"""Run directories: the files of design.md's contract, atomic writes, resume checks."""

import json
import os

import pytest
import torch

from branchnas.errors import BranchnasError
from branchnas.training.rundir import RunDir, atomic_write_with, git_revision


def test_start_writes_the_contract_files(tmp_path):
    run = RunDir(tmp_path / "r")
    assert not run.is_started() and not run.is_done()
    existed = run.start({"lr": 0.1, "seed": 7, "tasks": ("a", "b")}, command=["branchnas", "x y"],
                        device="cpu")
    assert existed is False
    assert json.loads(run.config_path.read_text()) == {"lr": 0.1, "seed": 7, "tasks": ["a", "b"]}
    assert run.command_path.read_text() == "branchnas 'x y'\n"
    assert run.seed_path.read_text().strip() == "7"
    rev = run.revision_path.read_text().strip()
    assert rev == "unknown" or len(rev.split("-")[0]) == 40
    env = json.loads(run.environment_path.read_text())
    for key in ("python", "torch", "numpy", "hostname", "device", "cuda_available", "cuda"):
        assert key in env
    assert env["device"] == "cpu"


def test_git_revision_outside_git(tmp_path):
    assert git_revision(tmp_path) == "unknown"


def test_reopen_checks_config(tmp_path):
    run = RunDir(tmp_path)
    run.start({"lr": 0.1, "progress": True}, command=["a"])
    assert run.start({"lr": 0.1, "progress": False}, command=["b"], ignore_keys={"progress"})
    assert run.command_path.read_text().splitlines() == ["a", "b"]
    with pytest.raises(BranchnasError, match="lr"):
        run.start({"lr": 0.2, "progress": True}, command=["c"])
    assert json.loads(run.config_path.read_text())["lr"] == 0.1


def test_metrics_append_read_truncate(tmp_path):
    run = RunDir(tmp_path)
    for e in (1, 2, 3):
        run.append_metrics({"epoch": e, "loss": 1.0 / e})
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 4, "lo')  # killed mid-write
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    run.truncate_metrics(2)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    run.metrics_path.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(BranchnasError, match="line 2"):
        run.read_metrics()


def test_checkpoint_roundtrip_and_atomicity(tmp_path):
    run = RunDir(tmp_path)
    assert run.load_checkpoint() is None
    with pytest.raises(BranchnasError, match="no checkpoint"):
        run.model_state()
    run.save_checkpoint({"epoch": 1, "model": {"w": torch.ones(3)}})
    assert torch.equal(run.model_state()["w"], torch.ones(3))

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_with(run.checkpoint_path, fail)
    assert run.load_checkpoint()["epoch"] == 1  # old file intact
    assert os.listdir(run.checkpoint_path.parent) == ["last.pt"]  # no temp file left


def test_done_marker(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(BranchnasError, match="not finished"):
        run.read_result()
    run.mark_done({"a": {"acc": 0.5}, "epochs": 2})
    assert run.is_done()
    assert run.read_result() == {"a": {"acc": 0.5}, "epochs": 2}
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []
