"""The command line: help for every command, JSON contracts, and one-line errors that write nothing."""

import json

import numpy as np
import pytest

from branchnas.cli import build_parser, main
from branchnas.pipeline.recommend import shipped_affinity_dir

COMMANDS = ["describe", "train-single", "affinity", "search", "train", "baseline", "pareto", "plot",
            "run", "demo", "report", "tune", "validate"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(f"    {c} " in out or f"    {c}\n" in out for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"usage: branchnas {command}" in capsys.readouterr().out


def test_parser_knows_exactly_these_commands():
    sub = next(a for a in build_parser()._actions if a.dest == "==SUPPRESS==" or a.choices)
    assert sorted(sub.choices) == sorted(COMMANDS)


def test_describe_json_has_params_and_flops(capsys):
    assert main(["describe", "--space", "scenes", "--format", "json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    for key in ("single_task", "fully_shared"):
        assert desc["totals"][key]["params"] > 0 and desc["totals"][key]["flops"] > 0
    assert desc["totals"]["single_task"]["params"] > desc["totals"]["fully_shared"]["params"]


def test_search_json_contract(capsys):
    assert main(["search", "--space", "scenes", "--budget", "1M", "--top", "3", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"trees", "enumerated", "feasible"} <= out.keys()
    assert 1 <= len(out["trees"]) <= 3 and out["feasible"] >= len(out["trees"])
    costs = [t["cost"] for t in out["trees"]]
    assert costs == sorted(costs)
    for t in out["trees"]:
        assert {"tasks", "groupings", "cost", "params", "flops"} <= t.keys()
        assert t["params"] <= 1_000_000


def test_search_tree_format_feeds_train(capsys, tmp_path):
    assert main(["search", "--space", "scenes", "--budget", "1M", "--top", "1", "--format", "tree"]) == 0
    path = tmp_path / "t.json"
    path.write_text(capsys.readouterr().out)
    assert main(["describe", "--space", "scenes", "--tree", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["tree"]["params"] <= 1_000_000


def test_search_what_if_with_block_params(capsys):
    aff = str(shipped_affinity_dir() / "scenes.npz")
    assert main(["search", "--block-params", "1M,2M,3M,4M", "--affinity", aff, "--budget", "25M",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["trees"][0]["params"] <= 25_000_000


def _bad_affinity(tmp_path, name, affinity, tasks=("semseg", "depth", "normals", "edges", "scene")):
    path = tmp_path / f"{name}.npz"
    np.savez(path, affinity=affinity, tasks=np.array(tasks), locations=np.array([f"block{i + 1}" for i in range(affinity.shape[0])]))
    return str(path)


def _good():
    return np.load(shipped_affinity_dir() / "scenes.npz")["affinity"].copy()


@pytest.mark.parametrize("case", ["asymmetric", "nonfinite", "wrong_shape", "foreign_tasks", "budget"])
def test_search_bad_input_is_one_line_error_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["search", "--space", "scenes", "--budget", "1M"]
    a = _good()
    if case == "asymmetric":
        a[2, 0, 1] += 0.3
        args += ["--affinity", _bad_affinity(tmp_path, case, a)]
    elif case == "nonfinite":
        a[1, 0, 1] = a[1, 1, 0] = np.nan
        args += ["--affinity", _bad_affinity(tmp_path, case, a)]
    elif case == "wrong_shape":
        args += ["--affinity", _bad_affinity(tmp_path, case, a[:3])]
    elif case == "foreign_tasks":
        args += ["--affinity", _bad_affinity(tmp_path, case, a, ("a", "b", "c", "d", "e"))]
    else:
        args[-1] = "10k"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unknown_space_lists_the_choices(capsys):
    assert main(["describe", "--space", "nosuchspace"]) == 2
    err = capsys.readouterr().err
    assert "scenes" in err and "cityscapes-resnet50" in err
