"""The one config resolver, the run layout, and the refusal of a done run with another config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from branchnas.cli import build_parser, main
from branchnas.errors import BranchnasError
from branchnas.pipeline import resolve as R
from branchnas.pipeline.layout import RunLayout, model_slug
from branchnas.training import TrainConfig
from branchnas.tree import Tree

TINY_SINGLE = ["train-single", "--profile", "tiny", "--tasks", "depth", "--epochs", "1",
               "--progress", "false", "--threads", "1"]


@pytest.fixture(autouse=True)
def _scene_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BRANCHNAS_CACHE", str(tmp_path_factory.getbasetemp() / "scenes-cache"))


def _write_tuned(layout: RunLayout, space: str, model, settings) -> Path:
    path = layout.tuned(space, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"space": space, "model": str(model), "settings": settings}))
    return path


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# ---------------------------------------------------------------------------- the layers


def test_layers_merge_in_the_documented_order(tmp_path):
    """defaults < space < profile < tuned < command line, each layer seen where it is the top."""
    from branchnas.spaces import load_space

    space = load_space("scenes")
    layout = RunLayout(tmp_path)
    # the tiny profile sets epochs 2, batch_size 6, eval_batch_size 12, threads 1
    _write_tuned(layout, "scenes", "single:depth", {"batch_size": 4, "lr": 0.05, "epochs": 3})
    spec = R.resolve_run("scenes", profile="tiny", out=tmp_path,
                         overrides={"lr": 0.01, "seed": None})
    cfg = spec.train_config("single:depth")
    defaults = TrainConfig()
    assert cfg.momentum == defaults.momentum  # defaults (neither the space nor the others set it)
    assert cfg.weight_decay == space.training.get("weight_decay", defaults.weight_decay)
    assert cfg.eval_batch_size == 12  # profile over the space
    assert cfg.batch_size == 4 and cfg.epochs == 3  # tuned over the profile
    assert cfg.lr == 0.01  # the command line over tuned
    assert cfg.seed == defaults.seed  # None on the command line: not given
    # another model was not tuned: the profile's values
    other = spec.train_config("single:semseg")
    assert (other.batch_size, other.epochs, other.lr) == (6, 2, 0.01)
    # a tree's tuned settings are found by the tree itself, wherever its file lies
    tree = Tree.fully_shared(space.task_names, space.depth)
    _write_tuned(layout, "scenes", tree, {"lr": 0.003})
    tree_file = tmp_path / "elsewhere" / "t.json"
    tree_file.parent.mkdir()
    tree.save(tree_file)
    assert model_slug(tree) == model_slug(f"tree:{tree_file}")
    assert R.resolve_run("scenes", profile="tiny", out=tmp_path).train_config(tree).lr == 0.003


def test_profiles_live_in_one_table():
    from branchnas.pipeline import run, validate

    assert run.PROFILES is R.PROFILES and validate.VALIDATION_PROFILES is R.PROFILES
    assert {"full", "demo", "tiny", "study"} <= set(R.list_profiles())


@pytest.mark.parametrize("option, words", [
    ({"strategy": "nope"}, ["strategy", "nope"]),
    ({"measure": "nope"}, ["measure", "nope"]),
    ({"baselines": ["nope"]}, ["baseline", "nope"]),
    ({"k": 2}, ["k ", ">= 3"]),
    ({"budgets": ["lots"]}, ["budget", "lots"]),
    ({"budgets": ["10k"]}, ["budget", "cheapest"]),
    ({"tasks": ["nope"]}, ["task", "nope"]),
    ({"profile": "nope"}, ["profile", "nope"]),
    ({"training": {"lr": -1}}, ["lr", "command line"]),
    ({"training": {"lrr": 1}}, ["lrr", "known settings"]),
    ({"training": {"epochs": "many"}}, ["epochs", "expects"]),
    ({"device": "gpu7"}, ["device", "gpu7"]),
])
def test_every_option_is_checked_before_any_work(option, words, tmp_path):
    from branchnas.pipeline.run import PipelineConfig

    out = tmp_path / "never"
    with pytest.raises(BranchnasError) as exc:
        R.resolve_pipeline(PipelineConfig(**{"profile": "tiny", "out": str(out), **option}))
    message = str(exc.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert not out.exists()


def test_a_bad_tuned_file_is_named_before_any_work(tmp_path):
    from branchnas.pipeline.run import PipelineConfig

    path = _write_tuned(RunLayout(tmp_path), "scenes", "shared", {"learning_rate": 0.1})
    with pytest.raises(BranchnasError, match="learning_rate.*tuned settings") as exc:
        R.resolve_pipeline(PipelineConfig(profile="tiny", out=str(tmp_path), baselines=["shared"]))
    assert str(path) in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tuned"]


def test_cli_defaults_are_the_library_constants():
    from branchnas.pipeline.validate import ValidationConfig

    parser = build_parser()
    v = parser.parse_args(["validate"])
    lib = ValidationConfig()
    assert (v.profile, tuple(v.seeds), v.shared_prefix, v.random_draws, v.results_dir) == \
        (lib.profile, lib.seeds, lib.shared_prefix, lib.random_draws, lib.results_dir)
    r = parser.parse_args(["run"])
    assert (r.space, r.profile, r.strategy, r.measure) == \
        (R.DEFAULT_SPACE, R.DEFAULT_PROFILE, R.DEFAULT_STRATEGY, R.DEFAULT_MEASURE)
    assert parser.parse_args(["demo"]).profile == "demo"
    a = parser.parse_args(["affinity"])
    assert (a.k, a.measure, a.image_seed) == (None, R.DEFAULT_MEASURE, R.DEFAULT_IMAGE_SEED)
    assert R.PROFILES["full"]["k"] == R.DEFAULT_K  # --k unset: the profile's K
    assert parser.parse_args(["tune", "--model", "shared"]).trials == R.DEFAULT_TRIALS
    for command in (["train", "--tree", "t.json"], ["baseline", "shared"], ["train-single"],
                    ["run"], ["demo"], ["validate"]):
        assert parser.parse_args(command).force is False, command


# ---------------------------------------------------------------------------- the layout


def test_layout_paths_and_relative_storage(tmp_path):
    layout = RunLayout(tmp_path / "run")
    assert layout.single("depth") == tmp_path / "run" / "single" / "depth"
    assert layout.tree("t1") == tmp_path / "run" / "trees" / "t1"
    assert layout.baseline("mtan") == tmp_path / "run" / "baselines" / "mtan"
    assert layout.relative(layout.pareto_png) == "plots/pareto.png"
    assert layout.resolve("plots/pareto.png") == layout.pareto_png
    outside = tmp_path / "mine.npz"
    assert layout.relative(outside) == str(outside)
    # an older summary's path, stored as given under a root that has since moved
    assert layout.resolve("old/place/affinity-rsa.npz", stored_root="old/place") == \
        layout.affinity("rsa")


# ---------------------------------------------------------------------------- done runs


def test_done_run_with_another_config_is_refused_and_force_retrains(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main([*TINY_SINGLE, "--out", str(out)]) == 0
    run = out / "single" / "depth"
    assert (run / "done").is_file()
    before = _snapshot(out)
    capsys.readouterr()

    # the same command again: reused, nothing rewritten but the command log
    assert main([*TINY_SINGLE, "--out", str(out)]) == 0
    assert (run / "done").read_bytes() == before["single/depth/done"]

    # another learning rate: a one-line error naming the key and the fix; nothing written
    before = _snapshot(out)
    capsys.readouterr()
    assert main([*TINY_SINGLE, "--out", str(out), "--lr", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert "lr" in err and "--out" in err and "--force" in err and "finished" in err
    assert _snapshot(out) == before

    # --force retrains with the new settings
    assert main([*TINY_SINGLE, "--out", str(out), "--lr", "0.01", "--force"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 0.01 and (run / "done").is_file()
    assert len((run / "command.txt").read_text().splitlines()) == 1  # a fresh run directory


def test_trainer_refuses_a_done_run_with_another_config(tmp_path):
    """The library's train(): a finished run is returned only for the config it was made with."""
    from branchnas.data import create_dataset
    from branchnas.training import single_task_model, train

    space = R.profile_space("scenes", "tiny", ["depth"])
    data = [create_dataset("scenes", split=s, tasks=["depth"], size=6, resolution=32)
            for s in ("train", "val")]
    cfg = TrainConfig(epochs=1, batch_size=3, progress=False, threads=1)
    model = single_task_model(space, "depth", seed=0)
    first = train(model, [space.task("depth")], *data, cfg, tmp_path / "r")
    assert train(model, [space.task("depth")], *data, cfg.replace(eval_every=2),
                 tmp_path / "r") == first  # a runtime setting may differ
    before = _snapshot(tmp_path)
    with pytest.raises(BranchnasError, match=r"weight_decay.*--force"):
        train(model, [space.task("depth")], *data, cfg.replace(weight_decay=0.5), tmp_path / "r")
    assert _snapshot(tmp_path) == before


def test_force_refuses_to_remove_a_folder_that_is_no_run(tmp_path):
    from branchnas.training.rundir import RunDir

    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("x")
    with pytest.raises(BranchnasError, match="not a run directory"):
        RunDir(folder).clear()
    assert (folder / "thesis.tex").is_file()


def test_plots_leave_the_users_matplotlib_backend_alone(tmp_path):
    """validate's, the Pareto plot's and the preview's figures draw on their own Agg canvas (no matplotlib.use)."""
    import matplotlib

    from branchnas.data import create_dataset, render_preview
    from branchnas.pipeline import validate as V

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        group = {"params": 1000, "cost": [0.1, 0.2], "delta_m": [1.0, 0.5], "names": ["a", "b"],
                 "std": [0.0, 0.3], "n_seeds": [1, 2]}
        ax = V.plot_cost_vs_delta_m({"measure": "rsa", "column": "delta_m_mean", "groups": [group]})
        assert ax.lines and ax.figure.canvas.get_default_filetype() == "png"
        V.plot_regret({"budgets": [1000], "strategies": ["rsa"], "regret": {"rsa": [0.1]},
                       "sigma_diff": 0.2, "on": "delta_m"})
        from branchnas.pipeline.pareto import plot_pareto

        ax = plot_pareto({"column": "delta_m", "front": ["shared"], "path": [],
                          "points": [{"model": "shared", "name": "shared", "params": 10, "delta_m": -1.0}]})
        assert ax.figure.canvas.get_default_filetype() == "png"
        png = render_preview(create_dataset("scenes", split="val", size=2, resolution=32), 2,
                             tmp_path / "p.png")
        assert png.stat().st_size > 1000
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


@pytest.mark.parametrize("option, words", [
    ({"noise_trees": ["t999"]}, ["noise trees", "t999"]),
    ({"seeds": ()}, ["seed"]),
    ({"random_draws": 0}, ["random_draws"]),
    ({"k": 2}, ["k ", ">= 3"]),
    ({"profile": "nope"}, ["profile", "nope"]),
    ({"shared_prefix": 4}, ["shared_prefix"]),
    ({"training": {"lr": 0}}, ["lr", "command line"]),
])
def test_validate_checks_its_options_before_any_work(option, words, tmp_path):
    from branchnas.pipeline import validate as V

    cfg = V.ValidationConfig(**{"profile": "tiny", "shared_prefix": 3, "out": str(tmp_path / "o"),
                                "results_dir": str(tmp_path / "r"), **option})
    with pytest.raises(BranchnasError) as exc:
        V.run_validation(cfg)
    assert all(w in str(exc.value) for w in words), str(exc.value)
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_tune_goes_through_the_profile_layer(tmp_path):
    """`tune --profile tiny` tunes on the tiny profile's space and settings, as `run` trains."""
    from branchnas.pipeline.tune import tune

    summary = tune("scenes", "single:depth", trials=1, out_dir=tmp_path, profile="tiny",
                   overrides={"epochs": 1, "progress": False})
    assert summary["budget"]["profile"] == "tiny"
    assert summary["base_config"]["eval_batch_size"] == 12  # the tiny profile's
    with pytest.raises(BranchnasError, match="profile"):  # another profile: another budget
        tune("scenes", "single:depth", trials=1, out_dir=tmp_path, profile="demo",
             overrides={"epochs": 1, "progress": False})
