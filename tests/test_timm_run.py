"""A search space written with a timm backbone is described and trained end to end."""

from __future__ import annotations

import json

import pytest

from branchnas.cli import main
from branchnas.pipeline.results import results_table
from branchnas.spaces import load_space

pytest.importorskip("timm")


@pytest.fixture(autouse=True)
def _scene_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BRANCHNAS_CACHE", str(tmp_path_factory.getbasetemp() / "scenes-cache"))


def test_describe_a_timm_space(capsys):
    assert main(["describe", "--space", "scenes-timm"]) == 0
    out = capsys.readouterr().out
    assert "backbone timm:test_convnext, D=4" in out
    for name in ("stages.0", "stages.1", "stages.2", "stages.3"):
        assert name in out
    space = load_space("scenes-timm")
    total = space.tree_params(space.single_task_tree())
    assert f"({total:,})" in out


def test_tiny_run_trains_a_timm_backbone(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--space", "scenes-timm", "--out", str(out), "--profile", "tiny",
            "--tasks", "semseg", "depth", "--baselines", "shared", "--progress", "false",
            "--threads", "1"]
    assert main(args) == 0
    assert "recommended architectures" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["space"] == "scenes-timm"
    table = results_table(out)
    assert {"single", "tree", "shared"} <= set(table["model"])
    space = load_space("scenes-timm").subset(["semseg", "depth"])
    shared = table[table["model"] == "shared"]["params"].iloc[0]
    # the fully shared network's size at the tiny profile's input size is the accounting's
    assert shared == space.tree_params(space.fully_shared_tree())
    for rel in ("single/semseg/done", "baselines/shared/done", "report.html"):
        assert (out / rel).exists(), rel
