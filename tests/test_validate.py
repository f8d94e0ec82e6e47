"""The validation study on a tiny setting: 3 tasks branching over the last block only (5 trees),
the pipeline's tiny profile, seeds 0 and 1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import permutation_test, spearmanr

from branchnas.errors import BranchnasError
from branchnas.pipeline import validate as V


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    cfg = V.ValidationConfig(profile="tiny", shared_prefix=3, seeds=(0, 1), random_draws=5,
                             k=8, out=str(root / "runs"), results_dir=str(root / "results"),
                             training={"progress": False, "threads": 1})
    return cfg, V.run_validation(cfg)


def test_tables_have_every_tree_and_the_expected_columns(study):
    cfg, r = study
    trees = r["trees"]
    assert len(trees) == 5  # Bell(3): the partitions of 3 tasks at the last block
    assert trees["name"].tolist() == [f"t{i:03d}" for i in range(5)]
    assert trees["params"].is_monotonic_increasing
    for col in ("groups", "params", "cost_rsa", "cost_cka", "cost_fa", "delta_m", "delta_m_mean",
                "delta_m_std", "n_seeds", "tree", "dm/semseg", "depth/abs_err", "delta_m_all",
                "delta_m_all_mean", "epochs"):
        assert col in trees.columns, col
    assert np.isfinite(trees["delta_m"]).all()
    # noise subset: shared, separate, least-RSA-cost tree of the 3 two-group trees
    subset = r["setup"]["noise_trees"]
    assert subset[0] == "t000" and subset[-1] == "t004" and len(subset) == 3
    assert sorted(trees.loc[trees.n_seeds == 2, "name"]) == subset
    seeds = r["seeds"]
    assert len(seeds) == 5 + 3 and set(seeds["seed"]) == {0, 1}
    for name in ("trees.csv", "seeds.csv", "correlation.csv", "regret.csv",
                 "cost_vs_delta_m.png", "regret.png", "learning_curves.png", "SUMMARY.md"):
        assert (tmp := (V.Path(cfg.results_dir) / name)).is_file() and tmp.stat().st_size > 0
    back = pd.read_csv(V.Path(cfg.results_dir) / "trees.csv")
    assert back["name"].tolist() == trees["name"].tolist()


def test_regret_is_never_negative_and_picks_are_feasible(study):
    _, r = study
    reg = r["regret"]
    budgets = sorted(r["trees"]["params"].unique())
    assert sorted(reg["budget"].unique()) == budgets
    assert set(reg["strategy"]) == {"rsa", "cka", "fa", "greedy_rsa", "random", "random_equal"}
    assert (reg["regret"] >= 0).all()
    assert (reg["pick_params"] <= reg["budget"]).all()
    # the best tree of a budget is the best Δm among trees within it
    trees = r["trees"]
    for b, g in reg.groupby("budget"):
        assert g["best_delta_m"].iloc[0] == trees.loc[trees.params <= b, "delta_m"].max()
    # the exact search's pick is the least-cost trained tree within the budget
    cost = dict(zip(trees["name"], trees["cost_rsa"]))
    for _, row in reg[reg.strategy == "rsa"].iterrows():
        assert cost[row["pick"]] == pytest.approx(trees.loc[trees.params <= row["budget"], "cost_rsa"].min())
    # at the smallest budget only the fully shared tree fits: no regret for anyone
    assert (reg.loc[reg.budget == budgets[0], "regret"] == 0).all()


def test_summary_lines_name_the_numbers(study):
    _, r = study
    text = V.format_validation(r)
    pooled = r["correlation"].query("measure == 'rsa' and group == 'pooled'")["spearman"].iloc[0]
    assert f"ρ={pooled:>7.3f}" in text
    mean = r["regret"].query("strategy == 'cka'")["regret"].mean()
    assert f"cka          {mean:>7.3f}" in text


def test_spearman_matches_scipy(study):
    _, r = study
    trees, corr = r["trees"], r["correlation"]
    for m in ("rsa", "cka"):
        g = trees[trees.params == trees.params.iloc[1]]  # the three two-group trees
        row = corr[(corr.measure == m) & (corr.params == g.params.iloc[0])]
        expected = spearmanr(g[f"cost_{m}"], g["delta_m"])[0]
        assert row["spearman"].iloc[0] == pytest.approx(expected)
        assert row["n"].iloc[0] == 3
        cost = g[f"cost_{m}"].to_numpy()
        exact = permutation_test((g["delta_m"].to_numpy(),),
                                 lambda y, cost=cost: spearmanr(cost, y)[0],
                                 permutation_type="pairings", n_resamples=np.inf)
        assert row["p_value"].iloc[0] == pytest.approx(exact.pvalue)
        everything = corr[(corr.measure == m) & (corr.group == "all")]
        assert everything["spearman"].iloc[0] == pytest.approx(
            spearmanr(trees[f"cost_{m}"], trees["delta_m"])[0])


def test_seed_noise_is_the_pooled_within_tree_std():
    seeds = pd.DataFrame({"name": ["a", "a", "b", "b", "b", "c"], "seed": [0, 1, 0, 1, 2, 0],
                          "delta_m": [1.0, 3.0, 0.0, 1.0, 2.0, 5.0], "params": 0})
    noise = V.seed_noise(seeds)
    # squares 2 + 2 over 1 + 2 degrees of freedom
    assert noise["sigma"] == pytest.approx(np.sqrt(4 / 3))
    assert noise["sigma_diff"] == pytest.approx(np.sqrt(8 / 3))
    assert noise["trees"] == 2 and noise["runs"] == 6


def test_rerun_reuses_finished_runs(study):
    cfg, r = study
    runs = sorted(V.Path(cfg.out).glob("trees/*/done"))
    assert len(runs) == 8
    stamps = {p: p.stat().st_mtime_ns for p in runs}
    again = V.run_validation(cfg)
    assert {p: p.stat().st_mtime_ns for p in runs} == stamps
    pd.testing.assert_frame_equal(again["trees"], r["trees"])


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(BranchnasError, match="profile"):
        V.study_space(V.ValidationConfig(profile="nope"))
    with pytest.raises(BranchnasError, match="shared_prefix"):
        V.study_space(V.ValidationConfig(profile="tiny", shared_prefix=4))
    with pytest.raises(BranchnasError, match="at least 2 tasks"):
        V.study_space(V.ValidationConfig(profile="tiny", tasks=["depth"]))


def test_all_seeds_for_every_tree_adds_the_mean_analysis(study, tmp_path):
    cfg, _ = study
    from dataclasses import replace

    cfg2 = replace(cfg, noise_trees=["all"], results_dir=str(tmp_path / "results"))
    r = V.run_validation(cfg2)
    assert (r["trees"]["n_seeds"] == 2).all()
    assert len(sorted(V.Path(cfg.out).glob("trees/*/done"))) == 10
    assert set(r["correlation"]["on"]) == {"delta_m", "delta_m_mean", "delta_m_all"}
    mean = r["regret"][r["regret"]["on"] == "delta_m_mean"]
    assert (mean["regret"] >= 0).all()
    assert mean["sigma_diff"].iloc[0] == pytest.approx(r["noise"]["sigma_diff"] / np.sqrt(2))
    trees = r["trees"]
    for _, row in mean.iterrows():
        assert row["best_delta_m"] == pytest.approx(
            trees.loc[trees.params <= row["budget"], "delta_m_mean"].max())


def test_delta_m_is_on_the_primary_measures_and_all_metrics_beside_it(study):
    """trees.csv's Δm, recomputed by hand from its metric columns and the single-task ones."""
    from branchnas.pipeline.results import read_result

    cfg, r = study
    trees = r["trees"]
    ref = {t: read_result(V.Path(cfg.out) / "single" / t).metrics[t]
           for t in ("semseg", "depth", "normals")}
    row = trees.iloc[2]
    terms = [(row["semseg/miou"] - ref["semseg"]["miou"]) / ref["semseg"]["miou"],
             -(row["depth/abs_err"] - ref["depth"]["abs_err"]) / ref["depth"]["abs_err"],
             -(row["normals/mean"] - ref["normals"]["mean"]) / ref["normals"]["mean"]]
    assert row["delta_m"] == pytest.approx(100 * sum(terms) / 3, rel=1e-9)
    depth_all = -((row["depth/abs_err"] - ref["depth"]["abs_err"]) / ref["depth"]["abs_err"]
                  + (row["depth/rel_err"] - ref["depth"]["rel_err"]) / ref["depth"]["rel_err"]) / 2
    assert row["dm/depth"] == pytest.approx(100 * terms[1], rel=1e-9)
    assert row["delta_m_all"] != pytest.approx(row["delta_m"])
    assert np.isfinite(depth_all)
    corr = r["correlation"]
    assert set(corr["on"]) >= {"delta_m", "delta_m_all"}
    text = (V.Path(cfg.results_dir) / "SUMMARY.md").read_text()
    assert "## Convergence" in text and "stop reasons:" in text
    curves = V.learning_curves(cfg.out, list(trees["name"]), 0)
    assert set(curves["runs"]) == set(trees["name"])
    assert all(len(c["epochs"]) == row_ep for c, row_ep in
               zip(curves["runs"].values(), trees["epochs"]))
