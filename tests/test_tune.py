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
import branchnas.pipeline.tune as T
from branchnas.pipeline.executor import LocalExecutor
from branchnas.pipeline.jobs import job_attempts
from branchnas.pipeline.tune import (
    build_model,
    check_equal_budgets,
    load_tuned,
    model_slug,
    normalised_objective,
    open_storage,
    suggest_settings,
    tune,
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


def _prepare(out: Path, trials: int, **kw):
    kw = {"storage": None, "overrides": TINY, "dataset": DATA, "holdout": 0.2, "sampler_seed": 0,
          "pruner_startup_trials": 4, "pruner_warmup_epochs": 1, "device": None, **kw}
    return T._prepare("scenes", MODEL, trials, out, kw.pop("storage"), kw.pop("overrides"),
                      kw.pop("dataset"), kw.pop("holdout"), kw.pop("sampler_seed"),
                      kw.pop("pruner_startup_trials"), kw.pop("pruner_warmup_epochs"),
                      kw.pop("device"))


def test_a_hopeless_trial_is_pruned_mid_training(tmp_path: Path) -> None:
    t = _prepare(tmp_path, 2, overrides={**TINY, "epochs": 3}, pruner_startup_trials=1)
    # the default (adam 2e-3) first, then a learning rate too small to move the loss
    t.study.enqueue_trial({"optimizer": "adam", "lr_adam": 1e-4, "batch_size": 32,
                           "schedule": "none"})
    first, second = sorted(T._drive(t, LocalExecutor()), key=lambda r: r["trial"])
    assert first["state"] == "COMPLETE" and first["epochs_run"] == 3 and len(first["curve"]) == 3
    assert second["state"] == "PRUNED" and second["epochs_run"] == 2
    trials = _study(tmp_path).get_trials()
    assert [tr.state.name for tr in trials] == ["COMPLETE", "PRUNED"]
    assert second["value"] > trials[0].intermediate_values[2]
    # the pruned trial stopped inside its job: two epochs trained, no done marker
    run = tmp_path / "tuned" / "scenes" / "single-scene" / "trial-001"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2 and not (run / "done").exists()


def test_a_tuning_whose_driver_died_resumes_the_running_trial(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def dies_after_epoch_1(*args, **kwargs):  # Ctrl-C after epoch 1's checkpoint, before its report
        calls.append(1)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(T, "normalised_objective", dies_after_epoch_1)
        with pytest.raises(KeyboardInterrupt):
            tune("scenes", MODEL, trials=1, out_dir=tmp_path, overrides=TINY, dataset=DATA)
    trial = _study(tmp_path).get_trials()[0]
    assert trial.state.name == "RUNNING" and list(trial.intermediate_values) == []
    summary = tune("scenes", MODEL, trials=1, out_dir=tmp_path, overrides=TINY, dataset=DATA)
    trials = _study(tmp_path).get_trials()
    assert len(trials) == 1 and trials[0].state.name == "COMPLETE"
    assert summary["trial"] == 0 and summary["settings"]["lr"] == TrainConfig().lr
    assert sorted(trials[0].intermediate_values) == [2]  # epoch 1 was never reported
    run = tmp_path / "tuned" / "scenes" / "single-scene" / "trial-000"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]  # epoch 1 was not trained again
    assert len(job_attempts(run)) == 2


def test_a_database_storage_has_optunas_heartbeat_and_retry(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'tune.db'}")
    assert storage.get_heartbeat_interval() == T.HEARTBEAT_INTERVAL
    cls, _ = T._retry_callback()  # optuna's RetryHeartbeatStaleTrialCallback (>= 4.9) or its old name
    callback = (storage.get_heartbeat_stale_trial_callback() if hasattr(storage, "get_heartbeat_stale_trial_callback")
                else storage.get_failed_trial_callback())
    assert isinstance(callback, cls)
    with pytest.raises(BranchnasError, match="not supported"):
        open_storage("redis://host/0")


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
        tune("scenes", MODEL, trials=1, out_dir=tmp_path, overrides={"lr": 0.1})
    assert tuned_overrides(tmp_path, "scenes", "shared") == {}


def test_a_dead_drivers_trial_in_a_database_is_retried_by_optunas_heartbeat(tmp_path: Path,
                                                                             monkeypatch) -> None:
    monkeypatch.setattr(T, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(T, "GRACE_PERIOD", 1)
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    with monkeypatch.context() as m:
        m.setattr(T, "normalised_objective", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            tune("scenes", MODEL, trials=1, out_dir=tmp_path, storage=url, overrides=TINY, dataset=DATA)
    import time

    time.sleep(2.5)  # the dead driver's heartbeat goes stale
    summary = tune("scenes", MODEL, trials=1, out_dir=tmp_path, storage=url, overrides=TINY,
                   dataset=DATA)
    trials = optuna.load_study(study_name=tuning_study_name("scenes", MODEL),
                               storage=open_storage(url)).get_trials()
    # optuna failed the stale trial and enqueued its retry, which resumed trial 0's run directory
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert summary["budget"]["complete"] == 1 and summary["budget"]["failed"] == 0
    run = tmp_path / "tuned" / "scenes" / "single-scene" / "trial-000"
    assert len(job_attempts(run)) == 2 and (run / "done").is_file()
    assert not (run.parent / "trial-001").exists()
