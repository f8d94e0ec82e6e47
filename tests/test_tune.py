"""Tuning (branchnas.pipeline.tune) on a tiny slice of the embedded scenes benchmark.

Trials train the single-task network of the image-level ``scene`` task on 44 rendered
images of 32x32 (35 to train, 9 held out) for 2-3 epochs of one batch each.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest

from branchnas.errors import BranchnasError
from branchnas.pipeline.jobs import JobContext, job_key, run_job
from branchnas.pipeline.queue import open_storage
from branchnas.pipeline.tune import (
    build_model,
    check_equal_budgets,
    load_tuned,
    model_slug,
    normalised_objective,
    suggest_settings,
    tune,
    tune_jobs,
    tuned_overrides,
    tuned_path,
    tuning_storage_url,
    tuning_study_name,
)
from branchnas.spaces import load_space
from branchnas.training import TrainConfig

DATA = {"size": 44, "resolution": [32, 32], "cache_dir": False}
TINY = {"epochs": 2, "max_train_batches": 1, "eval_batch_size": 8, "progress": False}
MODEL = "single:scene"


def _study(out: Path, model: str = MODEL) -> optuna.Study:
    return optuna.load_study(study_name=tuning_study_name("scenes", model),
                             storage=open_storage(tuning_storage_url(out, "scenes", model)))


def test_tune_writes_the_best_settings_where_train_picks_them_up(tmp_path: Path) -> None:
    summary = tune("scenes", MODEL, trials=3, out_dir=tmp_path, overrides=TINY, dataset=DATA)
    path = tuned_path(tmp_path, "scenes", MODEL)
    assert path == tmp_path / "tuned" / "scenes" / "single-scene.json"
    assert json.loads(path.read_text()) == summary == load_tuned(tmp_path, "scenes", MODEL)
    assert summary["budget"]["trials"] == 3 and summary["budget"]["epochs"] == 2
    assert sum(summary["budget"][k] for k in ("complete", "pruned", "failed")) == 3
    trials = _study(tmp_path).get_trials()
    assert len(trials) == 3
    # the first trial is the untuned default; the best is never worse than it
    default = TrainConfig()
    assert trials[0].user_attrs.get("default") is True
    assert trials[0].params == {"optimizer": default.optimizer, "lr_adam": default.lr,
                                "batch_size": default.batch_size, "schedule": default.schedule}
    best = min(t.value for t in trials if t.value is not None)
    assert summary["objective"] == best <= trials[0].value
    # the settings merge into a TrainConfig between the space's table and the command line
    settings = tuned_overrides(tmp_path, "scenes", MODEL)
    assert settings == summary["settings"]
    cfg = TrainConfig.from_sources(load_space("scenes").training, {**settings, "epochs": 1})
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.schedule) == (
        settings["optimizer"], settings["lr"], settings["batch_size"], settings["schedule"])
    # tuning again runs nothing new; another budget is refused
    tune("scenes", MODEL, trials=3, out_dir=tmp_path, overrides=TINY, dataset=DATA)
    assert len(_study(tmp_path).get_trials()) == 3
    with pytest.raises(BranchnasError, match="another budget.*trials"):
        tune("scenes", MODEL, trials=4, out_dir=tmp_path, overrides=TINY, dataset=DATA)
    assert check_equal_budgets(tmp_path, "scenes", [MODEL])["trials"] == 3
    with pytest.raises(BranchnasError, match="single:depth was not tuned"):
        check_equal_budgets(tmp_path, "scenes", [MODEL, "single:depth"])


def test_a_hopeless_trial_is_pruned(tmp_path: Path) -> None:
    overrides = {**TINY, "epochs": 3}
    specs = tune_jobs("scenes", MODEL, trials=2, out_dir=tmp_path, overrides=overrides,
                      dataset=DATA, pruner_startup_trials=1, pruner_warmup_epochs=1)
    study = _study(tmp_path)
    # the default (adam 2e-3) first, then a learning rate too small to move the loss
    study.enqueue_trial({"optimizer": "adam", "lr_adam": 1e-4, "batch_size": 32,
                         "schedule": "none"})
    first, second = (run_job(s) for s in specs)
    assert first["state"] == "COMPLETE" and first["epochs_run"] == 3
    assert second["state"] == "PRUNED" and second["epochs_run"] == 2
    assert second["value"] > study.get_trials()[0].intermediate_values[2]


def test_a_retried_trial_job_resumes_the_same_trial(tmp_path: Path) -> None:
    spec = tune_jobs("scenes", MODEL, trials=1, out_dir=tmp_path, overrides=TINY, dataset=DATA)[0]
    lost = JobContext(spec=spec, key=job_key(spec))
    lost.lost.set()  # the worker loses its job after the first epoch's checkpoint
    with pytest.raises(RuntimeError, match="given to another worker"):
        run_job(spec, context=lost)
    trial = _study(tmp_path).get_trials()[0]
    assert trial.state.name == "RUNNING" and list(trial.intermediate_values) == []
    result = run_job(spec)  # the retry
    trials = _study(tmp_path).get_trials()
    assert len(trials) == 1 and trials[0].state.name == "COMPLETE"
    assert result["trial"] == 0 and result["epochs_run"] == 2
    assert result["settings"]["lr"] == TrainConfig().lr
    metrics = [json.loads(line) for line in
               (Path(spec["out_dir"]) / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]  # epoch 1 was not trained again


def test_objective_and_search_space() -> None:
    assert normalised_objective({"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 3.0}) == pytest.approx(0.75)
    assert normalised_objective({"a": 1.0, "b": 5.0}, {"a": 2.0, "b": math.nan}) == 0.5
    assert normalised_objective({"a": math.nan}, {"a": 2.0}) == math.inf
    with pytest.raises(BranchnasError, match="no task has a usable holdout loss"):
        normalised_objective({"a": 1.0}, {"a": 0.0})
    fixed = optuna.trial.FixedTrial({"optimizer": "sgd", "lr_sgd": 0.05, "batch_size": 8,
                                     "schedule": "step", "step_size": 2})
    settings = suggest_settings(fixed, epochs=6, batch_sizes=[8, 16])
    assert settings == {"optimizer": "sgd", "lr": 0.05, "batch_size": 8, "schedule": "step",
                        "step_size": 2, "gamma": 0.1, "momentum": 0.9}
    TrainConfig(**settings)  # valid TrainConfig fields and values


def test_model_ids(tmp_path: Path) -> None:
    space = load_space("scenes")
    _, tasks = build_model(space, "single:depth", seed=0)
    assert [t.name for t in tasks] == ["depth"]
    tree = {"tasks": ["depth", "normals"],
            "groupings": [[["depth", "normals"]]] * 2 + [[["depth"], ["normals"]]] * 2}
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(json.dumps(tree))
    _, tasks = build_model(space, f"tree:{tmp_path / 'a.json'}", seed=0)
    assert [t.name for t in tasks] == ["depth", "normals"]
    slug = model_slug(f"tree:{tmp_path / 'a.json'}")
    assert slug == model_slug(f"tree:{tmp_path / 'b.json'}") and slug.startswith("tree-")
    assert model_slug("cross_stitch") == "cross_stitch"
    with pytest.raises(BranchnasError, match="has no task 'nope'"):
        build_model(space, "single:nope")
    with pytest.raises(BranchnasError, match="not understood"):
        build_model(space, "what:ever")
    with pytest.raises(BranchnasError, match="are tuned"):
        tune_jobs("scenes", MODEL, trials=1, out_dir=tmp_path, overrides={"lr": 0.1})
    assert tuned_overrides(tmp_path, "scenes", "shared") == {}
