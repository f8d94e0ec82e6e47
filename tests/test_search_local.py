"""Many-task search: the paper's beam, local search, its lower bound, auto, the frontier and selection rules."""

import numpy as np
import pytest

from branchnas.errors import BranchnasError
from branchnas.search import (
    RandomSearch,
    choose_strategy,
    clustering_cost,
    enumerate_trees,
    list_strategies,
    lower_bound,
    make_problem,
    search,
    strategy_meta,
)
from branchnas.search.frontier import frontier, frontier_plot_data, list_rules, non_dominated, select
from branchnas.search.local import TreeState, _start_labels
from branchnas.tree import Tree

from _search_instances import names, random_affinity


def brute_scored(a, bp, fixed=0, prefix=0):
    """(params, cost, tree) of every tree, from the lazy enumerator and the cost function."""
    n, depth = a.shape[1], a.shape[0]
    out = []
    for t in enumerate_trees(names(n), depth, shared_prefix=prefix):
        out.append((fixed + sum(c * b for c, b in zip(t.group_counts, bp)), clustering_cost(t, a), t))
    return out


# ---------------------------------------------------------------------- local search
@pytest.mark.parametrize("seed", range(8))
def test_local_finds_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    n, depth = (5, 3) if seed % 2 else (4, 4)
    a = random_affinity(n, depth, seed)
    bp = [int(x) for x in rng.integers(1, 20, depth)]
    prefix = seed % 3 == 2
    rows = brute_scored(a, bp, fixed=7, prefix=prefix)
    lo, hi = min(r[0] for r in rows), max(r[0] for r in rows)
    for budget in np.linspace(lo, hi, 4).astype(int):
        best = min(c for p, c, _ in rows if p <= budget)
        r = search(a, names(n), bp, int(budget), strategy="local", fixed_params=7, top_k=4,
                   shared_prefix=int(prefix))
        assert r.best.cost == pytest.approx(best, abs=1e-12)
        assert all(s.params <= budget for s in r.trees)
        assert len({s.tree for s in r.trees}) == len(r.trees)
        assert [s.cost for s in r.trees] == sorted(s.cost for s in r.trees)
        assert r.lower_bound is not None and r.lower_bound <= best + 1e-12
        assert 0.0 <= r.gap <= 1.0


def test_local_matches_exact_on_larger_instances():
    for seed in range(3):
        rng = np.random.default_rng(50 + seed)
        n, depth = 7, 4
        a = random_affinity(n, depth, seed + 10)
        bp = [int(x) for x in rng.integers(100, 3000, depth)]
        budget = int(rng.uniform(sum(bp), n * sum(bp)))
        ex = search(a, names(n), bp, budget, strategy="exact")
        loc = search(a, names(n), bp, budget, strategy="local")
        assert loc.best.params <= budget
        assert loc.best.cost == pytest.approx(ex.best.cost, abs=1e-9)
        assert loc.lower_bound <= ex.best.cost + 1e-12


def test_moves_are_scored_exactly():
    """Every relocation's predicted cost and resource equal the moved tree's, for random trees."""
    rng = np.random.default_rng(0)
    moves = 0
    for _ in range(25):
        n, depth = int(rng.integers(2, 7)), int(rng.integers(1, 5))
        a = random_affinity(n, depth, int(rng.integers(1000)))
        bp = [int(v) for v in rng.integers(1, 10, depth)]
        prefix = int(rng.integers(0, depth))
        p = make_problem(a, names(n), bp, None, fixed_params=3, shared_prefix=prefix)
        st = TreeState(p, _start_labels(p, RandomSearch.draw(p, rng)))
        for _ in range(15):
            e0 = int(rng.integers(0, depth + 1))
            m = st.best_move(e0, st.nodes(e0), p.limit, rng)
            if m is None:
                continue
            st.apply(e0, *m[2:])
            tree = st.tree()
            assert clustering_cost(tree, a) == pytest.approx(m[0], abs=1e-12)
            assert p.score(tree).params == m[1] == st.resource
            assert all(tree.num_groups(d) == 1 for d in range(prefix))
            moves += 1
    assert moves > 100


def test_local_many_tasks_within_budget_with_gap():
    n, depth = 20, 5
    a = random_affinity(n, depth, 3)
    bp = [1000, 2000, 3000, 4000, 500]
    budget = 4 * sum(bp)
    r = search(a, names(n), bp, budget, strategy="local", top_k=2)
    assert r.strategy == "local"
    assert all(s.params <= budget and s.tree.num_tasks == n for s in r.trees)
    assert r.lower_bound <= r.best.cost + 1e-12
    fa = search(a, names(n), bp, budget, strategy="fa")
    assert r.best.cost <= fa.best.cost + 1e-12  # fa is one of its starts


def test_local_options_are_validated():
    p = make_problem(random_affinity(3, 2, 0), names(3), [1, 1], 4)
    from branchnas.search import create_strategy

    with pytest.raises(BranchnasError, match="rounds"):
        create_strategy("local", rounds=-1).run(p)
    with pytest.raises(BranchnasError, match="unknown local-search start"):
        create_strategy("local", starts=("nope",)).run(p)


# ---------------------------------------------------------------------- lower bound
def test_lower_bound_never_exceeds_the_optimum():
    rng = np.random.default_rng(7)
    for seed in range(30):
        n, depth = int(rng.integers(2, 8)), int(rng.integers(1, 5))
        a = random_affinity(n, depth, seed)
        bp = [int(x) for x in rng.integers(1, 5000, depth)]
        prefix = int(rng.integers(0, depth + 1))
        fixed = int(rng.integers(0, 100))
        p = make_problem(a, names(n), bp, None, fixed, shared_prefix=prefix)
        budget = int(rng.uniform(p.min_resource, p.max_resource + 1))
        ex = search(a, names(n), bp, budget, strategy="exact", fixed_params=fixed, shared_prefix=prefix)
        lb = lower_bound(make_problem(a, names(n), bp, budget, fixed, shared_prefix=prefix))
        assert lb <= ex.best.cost + 1e-9


def test_lower_bound_is_exact_when_only_the_shared_tree_fits():
    a = random_affinity(5, 3, 1)
    p = make_problem(a, names(5), [10, 10, 10], budget=30)
    assert lower_bound(p) == pytest.approx(clustering_cost(Tree.fully_shared(names(5), 3), a))
    assert lower_bound(make_problem(a, names(5), [10, 10, 10], budget=None)) == 0.0


# ---------------------------------------------------------------------- the paper's beam
def test_paper_beam_on_a_hand_built_instance():
    # outermost location: {0,1} and {2,3} alike; the one before: {0,2} and {1,3} alike
    a = np.full((2, 4, 4), 0.1)
    a[1, 0, 1] = a[1, 1, 0] = a[1, 2, 3] = a[1, 3, 2] = 0.9
    a[0, 0, 2] = a[0, 2, 0] = a[0, 1, 3] = a[0, 3, 1] = 0.9
    for d in range(2):
        np.fill_diagonal(a[d], 1.0)
    # budget 4 copies of unit blocks: the outermost layer may use up to 3 groups
    narrow = search(a, names(4), [1, 1], budget=4, strategy="beam", beam_width=1)
    t = narrow.best.tree
    assert t.group_counts == (1, 3)  # the outer layer's least-cost grouping, then only m = 1 fits
    assert ("t0", "t1") in t.groupings[1] or ("t2", "t3") in t.groupings[1]
    wide = search(a, names(4), [1, 1], budget=4, strategy="beam", beam_width=10, top_k=10)
    for s in wide.trees:
        # {0,2},{1,3} at the first layer would split a branch of the outer layer: never eligible
        assert s.tree.groupings[0] != (("t0", "t2"), ("t1", "t3"))
        assert s.params <= 4
    assert wide.best.tree == t
    # with room for everything the outer layer is all-separate and so is the first
    free = search(a, names(4), [1, 1], budget=7, strategy="beam")
    assert free.best.tree.group_counts == (3, 4) or free.best.cost == 0.0


def test_paper_beam_never_beats_the_optimum_and_respects_the_budget():
    for seed in range(3):
        a = random_affinity(6, 3, seed)
        bp = [5, 10, 20]
        budget = 5 * 2 + 10 * 3 + 20 * 4
        opt = search(a, names(6), bp, budget, strategy="exact")
        r = search(a, names(6), bp, budget, strategy="beam", top_k=3)
        assert all(s.params <= budget for s in r.trees)
        assert r.best.cost >= opt.best.cost - 1e-12


# ---------------------------------------------------------------------- auto
def test_auto_picks_by_metadata_and_reports_the_strategy_used():
    assert choose_strategy(4, 4) == "exhaustive"
    assert choose_strategy(9, 4) == "exact"
    assert choose_strategy(40, 15) == "local"
    assert strategy_meta("local")["many_tasks"] and strategy_meta("exact")["exact"]
    r = search(random_affinity(4, 2, 0), names(4), [1, 1], budget=5, strategy="auto")
    assert r.strategy in list_strategies()
    big = search(random_affinity(12, 2, 0), names(12), [1, 1], budget=10, strategy="auto")
    assert big.strategy == "local"


# ---------------------------------------------------------------------- frontier and selection
@pytest.mark.parametrize("strategy", ["exact", "exhaustive"])
def test_frontier_equals_brute_force(strategy):
    a = random_affinity(4, 3, 5)
    bp = [3, 5, 2]
    rows = brute_scored(a, bp, fixed=4)
    expected = []
    for p, c, _ in sorted(rows, key=lambda x: (x[0], x[1])):
        if not expected or c < expected[-1][1] - 1e-12:
            expected.append((p, c))
    pts = frontier(a, names(4), bp, strategy=strategy, fixed_params=4)
    got = [(s.params, s.cost) for s in pts]
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert np.allclose([g[1] for g in got], [e[1] for e in expected])
    # non-dominated: no brute-force tree beats a frontier point on both axes
    for s in pts:
        assert not any(p <= s.params and c < s.cost - 1e-12 for p, c, _ in rows)
    # the extremes: the fully shared tree first, a zero-cost tree last
    assert pts[0].params == min(r[0] for r in rows) and pts[-1].cost == 0.0


def test_selection_rules():
    a = random_affinity(5, 3, 2)
    bp = [3, 5, 2]
    pts = frontier(a, names(5), bp)
    budget = pts[len(pts) // 2].params + 1
    paper = select(pts, budget, "least-cost")
    assert paper.cost == pytest.approx(search(a, names(5), bp, budget, strategy="exact").best.cost)
    assert select(pts, budget, "epsilon", eps=0.0).cost == pytest.approx(paper.cost)
    assert select(pts, budget, "epsilon", eps=1.0).params == pts[0].params
    knee = select(pts, budget, "knee")
    assert knee.params <= budget
    assert set(list_rules()) >= {"least-cost", "epsilon", "knee"}
    with pytest.raises(BranchnasError, match="does not take"):
        select(pts, budget, "knee", eps=0.1)
    with pytest.raises(BranchnasError, match="no frontier tree fits"):
        select(pts, 1, "least-cost")
    data = frontier_plot_data(pts, budget, chosen=knee)
    assert data["resource"] == [s.params for s in non_dominated(pts)] and data["budget"] == budget


def test_knee_on_a_hand_built_frontier():
    from branchnas.search._common import ScoredTree

    t = Tree.fully_shared(names(2), 1)
    pts = [ScoredTree(t, c, p) for p, c in ((10, 1.0), (20, 0.2), (30, 0.1), (40, 0.0))]
    assert select(pts, 40, "knee").params == 20
    assert select(pts, 40, "epsilon", eps=0.15).params == 30  # within 0.15 of the range above 0


def test_plot_draws(tmp_path):
    pytest.importorskip("matplotlib")
    from branchnas.search.frontier import write_frontier_plot

    pts = frontier(random_affinity(4, 2, 1), names(4), [3, 5])
    out = write_frontier_plot(frontier_plot_data(pts, 20), tmp_path / "f.png", "t")
    assert (tmp_path / "f.png").stat().st_size > 1000 and out.endswith("f.png")

