"""End to end on the tiny profile: every stage, the report, and resume after a kill."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from branchnas.cli import main
from branchnas.pipeline.results import results_table

TASKS = ["semseg", "depth"]
ARGS = ["--profile", "tiny", "--tasks", *TASKS, "--budgets", "0.6M", "--baselines", "shared",
        "--progress", "false", "--threads", "1"]


@pytest.fixture(autouse=True)
def _scene_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BRANCHNAS_CACHE", str(tmp_path_factory.getbasetemp() / "scenes-cache"))


def _results(out: Path) -> dict:
    table = results_table(out)
    cols = [c for c in table.columns if "/" in c] + ["params", "delta_m"]
    # NaN marks a metric of another task's run: make it comparable.
    return {row["name"]: tuple(None if row[c] != row[c] else row[c] for c in cols)
            for _, row in table.iterrows()}


def test_run_writes_every_stage_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "recommended architectures" in printed and "Pareto plot" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [r["budget"] for r in summary["recommended"]] == [600_000]
    for rel in ("affinity-rsa.npz", "affinity-rsa.json", "search.json", "plots/pareto.png",
                "plots/pareto.csv", "report.html", "report.md", "single/semseg/done",
                "baselines/shared/done"):
        assert (out / rel).exists(), rel
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "Recommended trees" in html
    table = results_table(out)
    assert set(table["model"]) == {"single", "tree", "shared"}
    assert table[table["model"] == "tree"]["params"].iloc[0] <= 600_000

    # A second run finds every stage done and trains nothing.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("done")}
    assert main(["run", "--out", str(out), *ARGS]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("done")} == before

    # Another setting on a done run: refused in one line naming it, nothing rewritten.
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["run", "--out", str(out), *ARGS, "--weight-decay", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "weight_decay" in err and "--force" in err and "\n" not in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files

    # Paths in summary.json are relative, so a moved run directory still reports (issue #16).
    summary = json.loads((out / "summary.json").read_text())
    assert not any(Path(summary[k]).is_absolute() for k in ("affinity", "pareto_png", "report_html"))
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    assert main(["report", str(moved)]) == 0
    assert "data:image/png;base64" in (moved / "report.html").read_text()


def test_killed_run_resumes_to_identical_results(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "branchnas", "run", *ARGS]

    reference = tmp_path / "reference"
    subprocess.run([*cmd, "--out", str(reference)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Kill it once the tree's training has written a checkpoint but not finished.
    tree_runs = killed / "trees"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ckpts = list(tree_runs.glob("*/checkpoints/last.pt")) if tree_runs.exists() else []
        if ckpts:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not list(tree_runs.glob("*/done"))

    subprocess.run([*cmd, "--out", str(killed)], check=True, env=env, capture_output=True)
    assert _results(killed) == _results(reference)


@pytest.mark.parametrize("budget", ["lots", "10k"])
def test_bad_budget_is_one_line_error(budget, tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "x"), "--profile", "tiny", "--budgets", budget]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_run_on_two_local_worker_processes_matches_in_process(tmp_path):
    """`run --jobs 2` trains the jobs in two worker processes; same results as in-process."""
    from branchnas.pipeline.jobs import job_attempts

    reference = tmp_path / "reference"
    assert main(["run", "--out", str(reference), *ARGS]) == 0
    pooled = tmp_path / "pooled"
    assert main(["run", "--out", str(pooled), "--jobs", "2", *ARGS]) == 0
    assert _results(pooled) == _results(reference)
    attempts = [a for d in pooled.glob("*/*") for a in job_attempts(d)]
    assert len(attempts) == 2 + 1 + 1  # two single-task nets, one tree, one baseline
    assert os.getpid() not in {a["pid"] for a in attempts}


def test_demo_prints_task_table_preview_and_recommendations(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "input 32x32" in printed and "semseg      segmentation" in printed
    assert (out / "plots" / "scenes-preview.png").stat().st_size > 1000
    assert "recommended architectures" in printed and str(out / "report.html") in printed


def test_every_baseline_lands_in_the_pareto_plot(tmp_path):
    out = tmp_path / "all"
    i = ARGS.index("--baselines") + 1
    args = [*ARGS[:i], "shared", "cross_stitch", "mtan", "nddr", *ARGS[i + 1:]]
    assert main(["run", "--out", str(out), *args]) == 0
    names = {row["model"] for row in csv.DictReader(open(out / "plots" / "pareto.csv"))}
    assert names == {"single", "tree", "shared", "cross_stitch", "mtan", "nddr"}


def test_jobs_are_submitted_as_soon_as_their_inputs_exist(tmp_path, monkeypatch):
    """Cross-stitch (started from the single-task nets) is sent before the affinity is computed,
    the trees once the search picked them, largest first, and the from-scratch baseline last."""
    from branchnas.pipeline import run as run_module
    from branchnas.pipeline.executor import ExecutorConfig, LocalExecutor

    events = []

    class Recording(LocalExecutor):
        def _submit(self, spec):
            p = spec["params"]
            label = {"train_single": lambda: f"single:{p['task']}",
                     "train_tree": lambda: f"tree:{p['name']}",
                     "train_baseline": lambda: f"baseline:{p['name']}"}[spec["kind"]]()
            events.append(label)
            return super()._submit(spec)

    real_affinity = run_module.affinity_stage

    def recorded_affinity(*args, **kwargs):
        events.append("affinity")
        return real_affinity(*args, **kwargs)

    monkeypatch.setattr(ExecutorConfig, "create", lambda self: Recording())
    monkeypatch.setattr(run_module, "affinity_stage", recorded_affinity)
    args = [a for a in ARGS]
    args[args.index("--budgets") + 1] = "0.6M,0.9M"
    args[args.index("--baselines") + 1:args.index("--baselines") + 2] = ["shared", "cross_stitch"]
    assert main(["run", "--out", str(tmp_path / "run"), *args]) == 0
    assert events[:3] == ["single:semseg", "single:depth", "baseline:cross_stitch"]
    assert events[3] == "affinity"
    trees = [e for e in events if e.startswith("tree:")]
    assert events[4:4 + len(trees)] == trees and events[-1] == "baseline:shared"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    by_name = {r["run"]: r["params"] for r in summary["recommended"]}
    sizes = [by_name[t.split(":", 1)[1]] for t in trees]
    assert sizes == sorted(sizes, reverse=True)
