"""`branchnas search`: frontier from the shipped affinity, strategy naming, tree output for train, bad options."""

import json

import numpy as np
import pytest

from branchnas.cli import main
from branchnas.search import clustering_cost, enumerate_trees
from branchnas.tree import Tree


def test_frontier_from_the_shipped_affinity(capsys, tmp_path):
    plot = tmp_path / "frontier.png"
    assert main(["search", "--space", "scenes", "--budget", "918k", "--frontier", "--plot", str(plot),
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["strategy"] in ("exhaustive", "exact")  # auto, resolved
    front = out["frontier"]
    params = [p["params"] for p in front]
    costs = [p["cost"] for p in front]
    assert params == sorted(params) and all(a > b for a, b in zip(costs, costs[1:]))  # non-dominated
    assert front[0]["groupings"] == [[list(out["trees"][0]["tasks"])]] * len(front[0]["groupings"])
    assert costs[-1] == pytest.approx(0.0)  # the all-separate end
    assert out["selected"]["params"] == out["trees"][0]["params"] <= 918_000  # the paper's rule
    assert out["selected"] in front
    assert plot.stat().st_size > 1000 and str(plot) in out["written"]


def test_frontier_table_marks_budget_and_selection(capsys, tmp_path):
    assert main(["search", "--space", "scenes", "--budget", "918k", "--frontier", "--plot",
                 str(tmp_path / "f.png")]) == 0
    text = capsys.readouterr().out
    assert "Pareto frontier" in text and "over budget" in text and "selected (least-cost)" in text


def test_frontier_matches_brute_force_on_the_shipped_space(capsys, tmp_path):
    from branchnas.affinity import load_affinity
    from branchnas.pipeline.recommend import shipped_affinity_dir
    from branchnas.spaces import load_space

    assert main(["search", "--space", "scenes", "--frontier", "--plot", str(tmp_path / "f.png"),
                 "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)["frontier"]
    aff = load_affinity(shipped_affinity_dir() / "scenes.npz")
    space = load_space("scenes").subset(list(aff.tasks))
    heads = sum(space.head_params.values())
    best = {}
    for t in enumerate_trees(list(aff.tasks), aff.affinity.shape[0]):
        p = heads + int(np.dot(t.group_counts, space.block_params))
        c = clustering_cost(t, aff.affinity)
        best[p] = min(best.get(p, np.inf), c)
    expected = []
    for p in sorted(best):
        if not expected or best[p] < expected[-1][1] - 1e-12:
            expected.append((p, best[p]))
    assert [(f["params"], pytest.approx(f["cost"])) for f in front] == expected


def test_select_rule_and_eps(capsys):
    assert main(["search", "--space", "scenes", "--budget", "918k", "--select", "epsilon", "--eps", "0.2",
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rule"] == "epsilon" and out["selected"]["params"] <= out["trees"][0]["params"]
    assert main(["search", "--space", "scenes", "--eps", "0.2"]) == 2
    assert "--select epsilon" in capsys.readouterr().err


def test_tree_output_is_what_train_reads(capsys, tmp_path):
    assert main(["search", "--space", "scenes", "--budget", "1M", "--format", "tree", "--top", "3"]) == 2
    assert "--out-dir" in capsys.readouterr().err
    out = tmp_path / "trees"
    assert main(["search", "--space", "scenes", "--budget", "1M", "--format", "tree", "--top", "3",
                 "--out-dir", str(out)]) == 0
    files = sorted(out.glob("tree-*.json"))
    assert [f.name for f in files] == ["tree-1.json", "tree-2.json", "tree-3.json"]
    trees = [Tree.load(f) for f in files]
    assert len(set(trees)) == 3
    assert main(["search", "--space", "scenes", "--budget", "1M", "--format", "tree"]) == 0
    assert Tree.from_json(json.loads(capsys.readouterr().out)) == trees[0]


@pytest.mark.parametrize("argv, fragment", [
    (["--beam-width", "1000000", "--strategy", "beam"], "--beam-width: 1000000 is out of range; use 1..1000"),
    (["--budget=1e400"], "too large"),
    (["--top", "0"], "--top"),
    (["--select", "nope"], "invalid choice"),
])
def test_bad_options_are_one_line_errors(capsys, argv, fragment):
    try:
        code = main(["search", "--space", "scenes", *argv])
    except SystemExit as e:  # refused by the parser, before anything is loaded
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error") and fragment in err[0]


def test_auto_beyond_exact_uses_local_and_says_so(capsys, tmp_path):
    rng = np.random.default_rng(0)
    n, depth = 12, 3
    x = rng.uniform(-1, 1, (depth, n, n))
    a = (x + x.transpose(0, 2, 1)) / 2
    for d in range(depth):
        np.fill_diagonal(a[d], 1.0)
    path = tmp_path / "aff.npz"
    np.savez(path, affinity=a, tasks=np.array([f"t{i}" for i in range(n)]),
             locations=np.array([f"b{i}" for i in range(depth)]))
    assert main(["search", "--block-params", "1k,2k,3k", "--affinity", str(path), "--budget", "40k",
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["strategy"] == "local"
    assert out["lower_bound"] <= out["trees"][0]["cost"] and 0.0 <= out["gap"] <= 1.0
