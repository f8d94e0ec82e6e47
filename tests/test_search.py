"""Tree search: counts, costs, strategies against an independent brute force, errors."""

import itertools

import numpy as np
import pytest

from branchnas.errors import BranchnasError
from branchnas.search import (
    ExactSolver,
    budget_path,
    clustering_cost,
    count_trees,
    create_strategy,
    enumerate_trees,
    list_strategies,
    make_problem,
    parse_budget,
    search,
)
from branchnas.search.beam import spectral_split
from branchnas.search.greedy import best_coarsening
from branchnas.tree import Tree

from _search_instances import names, random_affinity


# ---------------------------------------------------------------------- independent brute force
def brute_partitions(n):
    """Set partitions of range(n) from all label assignments (no shared code with the package)."""
    seen = set()
    for labels in itertools.product(range(n), repeat=n):
        blocks = {}
        for i, lab in enumerate(labels):
            blocks.setdefault(lab, set()).add(i)
        key = frozenset(frozenset(b) for b in blocks.values())
        seen.add(key)
    return sorted(seen, key=lambda p: sorted(sorted(b) for b in p))


def refines(fine, coarse):
    return all(any(b <= c for c in coarse) for b in fine)


def brute_trees(n, depth, shared_prefix=0):
    parts = brute_partitions(n)
    root = frozenset([frozenset(range(n))])
    for chain in itertools.product(parts, repeat=depth - shared_prefix):
        full = (root,) * shared_prefix + chain
        if all(refines(full[d + 1], full[d]) for d in range(depth - 1)):
            yield full


def brute_cost(chain, affinity):
    total = 0.0
    for d, part in enumerate(chain):
        s = 0.0
        for block in part:
            worst = 0.0
            for i in block:
                for j in block:
                    if i != j:
                        worst = max(worst, 1.0 - affinity[d, i, j])
            s += worst
        total += s / len(part)
    return total


# ---------------------------------------------------------------------- counting / enumeration
@pytest.mark.parametrize("n,depth,prefix", [(1, 3, 0), (3, 2, 0), (3, 4, 0), (4, 3, 0), (4, 3, 1),
                                            (5, 2, 0), (4, 2, 2)])
def test_tree_counts_match_brute_force(n, depth, prefix):
    expected = sum(1 for _ in brute_trees(n, depth, prefix))
    assert count_trees(n, depth, prefix) == expected
    trees = list(enumerate_trees(names(n), depth, shared_prefix=prefix))
    assert len(trees) == expected
    assert len(set(trees)) == expected
    assert all(t.depth == depth for t in trees)
    assert all(t.num_groups(d) == 1 for t in trees for d in range(prefix))


def test_known_counts():
    assert [count_trees(n, 1) for n in range(1, 8)] == [1, 2, 5, 15, 52, 203, 877]  # Bell
    assert count_trees(6, 4) == 44_590
    assert count_trees(8, 4) == 11_035_095
    assert count_trees(10, 4) == 4_183_174_520


def test_enumerate_is_lazy():
    gen = enumerate_trees(names(12), 6)
    first = next(gen)
    assert first.depth == 6 and first.num_tasks == 12


# ---------------------------------------------------------------------- cost
def test_clustering_cost_matches_definition():
    for n, depth in ((4, 3), (5, 2)):
        a = random_affinity(n, depth, seed=n)
        for chain in brute_trees(n, depth):
            parts = [[sorted(b) for b in p] for p in chain]
            tree = Tree.from_index_partitions(names(n), parts)
            assert clustering_cost(tree, a) == pytest.approx(brute_cost(chain, a), abs=1e-12)


def test_clustering_cost_example_and_singletons():
    a = np.array([[[1, .8, .2], [.8, 1, .4], [.2, .4, 1]]] * 2, dtype=float)
    t = Tree(("a", "b", "c"), [[["a", "b", "c"]], [["a", "b"], ["c"]]])
    assert clustering_cost(t, a) == pytest.approx(0.8 + 0.2 / 2)
    assert clustering_cost(Tree.single_task(("a", "b", "c"), 2), a) == 0.0
    with pytest.raises(BranchnasError, match="shape"):
        clustering_cost(t, a[:1])


# ---------------------------------------------------------------------- exactness
def brute_ranking(a, block_params, budget, fixed=0, prefix=0):
    n, depth = a.shape[1], a.shape[0]
    rows = []
    for chain in brute_trees(n, depth, prefix):
        params = fixed + sum(len(p) * b for p, b in zip(chain, block_params))
        if params <= budget:
            rows.append((brute_cost(chain, a), params))
    return sorted(rows)


@pytest.mark.parametrize("seed", range(6))
def test_exhaustive_and_exact_equal_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    n, depth = (4, 3) if seed % 2 else (5, 2)
    a = random_affinity(n, depth, seed)
    bp = [int(x) for x in rng.integers(1, 50, size=depth)]
    fixed = int(rng.integers(0, 20))
    prefix = int(seed == 4)
    lo = fixed + sum(bp)
    hi = fixed + sum(bp[:prefix]) + n * sum(bp[prefix:])
    for budget in np.linspace(lo, hi - 1, 4).astype(int):
        expect = brute_ranking(a, bp, budget, fixed, prefix)
        k = min(5, len(expect))
        for strategy in ("exhaustive", "exact"):
            r = search(a, names(n), bp, int(budget), strategy=strategy, top_k=5,
                       fixed_params=fixed, shared_prefix=prefix)
            assert len(r.trees) == k
            assert [s.cost for s in r.trees] == pytest.approx([c for c, _ in expect[:k]], abs=1e-12)
            assert all(s.params <= budget for s in r.trees)
            assert len({s.tree for s in r.trees}) == k
            for s in r.trees:
                assert all(s.tree.num_groups(d) == 1 for d in range(prefix))
        ex = search(a, names(n), bp, int(budget), strategy="exhaustive", fixed_params=fixed,
                    shared_prefix=prefix)
        assert ex.feasible == len(expect)
        assert ex.enumerated == count_trees(n, depth, prefix)


def test_exact_matches_exhaustive_on_larger_instances():
    for seed, (n, depth) in enumerate([(6, 4), (7, 3)]):
        a = random_affinity(n, depth, seed)
        bp = [30, 10, 20, 5][:depth]
        for frac in (0.3, 0.6, 0.9):
            budget = int(sum(bp) * (1 + frac * (n - 1)))
            ex = search(a, names(n), bp, budget, strategy="exhaustive", top_k=3)
            dp = search(a, names(n), bp, budget, strategy="exact", top_k=3)
            assert [s.cost for s in dp.trees] == pytest.approx([s.cost for s in ex.trees], abs=1e-12)
            assert dp.best.params <= budget


def test_exact_with_flops_budget():
    a = random_affinity(4, 3, seed=7)
    bp, bf = [10, 20, 30], [300, 20, 1]
    budget = 500
    r = search(a, names(4), bp, budget, strategy="exact", block_flops=bf, budget_kind="flops",
               fixed_flops=5, top_k=3)
    expect = brute_ranking(a, bf, budget, fixed=5)
    assert [s.cost for s in r.trees] == pytest.approx([c for c, _ in expect[:3]])
    assert all(s.flops <= budget for s in r.trees)
    assert r.best.params == sum(k * p for k, p in zip(r.best.tree.group_counts, bp))


# ---------------------------------------------------------------------- budgets
def test_budget_below_cheapest_tree():
    a = random_affinity(4, 2, 0)
    with pytest.raises(BranchnasError) as e:
        search(a, names(4), [100, 50], budget=149, fixed_params=10)
    msg = str(e.value)
    assert "smallest feasible budget is 160" in msg and "\n" not in msg


def test_budget_at_or_above_all_separate():
    a = random_affinity(4, 2, 0)
    for budget in (4 * 150 + 10, 10**9):
        r = search(a, names(4), [100, 50], budget=budget, fixed_params=10, strategy="beam")
        assert r.note and "all-separate" in r.note
        assert r.trees[0].tree == Tree.single_task(names(4), 2)
        assert r.trees[0].params == 610
    r = search(a, names(4), [100, 50], budget=609, fixed_params=10)
    assert r.note is None and r.best.params <= 609


@pytest.mark.parametrize("text,value", [("12M", 12_000_000), ("1.5G", 1_500_000_000),
                                        ("3e6", 3_000_000), ("250k", 250_000), ("12_000", 12_000),
                                        (" 7 m ", 7_000_000), ("2.09M", 2_090_000), (42, 42)])
def test_parse_budget(text, value):
    assert parse_budget(text) == value


@pytest.mark.parametrize("bad", ["", "abc", "12X", "-5", "1.2.3M", True, -1, float("nan")])
def test_parse_budget_errors(bad):
    with pytest.raises(BranchnasError):
        parse_budget(bad)


def test_search_accepts_budget_string():
    a = random_affinity(4, 2, 0)
    r = search(a, names(4), [1_000_000, 500_000], budget="3M")
    assert r.budget == 3_000_000 and r.best.params <= 3_000_000


def test_budget_path_exact_equals_exhaustive():
    a = random_affinity(5, 3, seed=3)
    bp = [40, 25, 10]
    every = sorted((params, cost) for cost, params in brute_ranking(a, bp, 10**9))

    def brute_best(budget):
        return min(c for p, c in every if p <= budget)

    p_exact = budget_path(a, names(5), bp, strategy="exact")
    p_exh = budget_path(a, names(5), bp, strategy="exhaustive")
    assert [p.budget for p in p_exact] == [p.budget for p in p_exh]
    assert [p.best.cost for p in p_exact] == pytest.approx([p.best.cost for p in p_exh])
    costs = [p.best.cost for p in p_exact]
    assert all(x > y for x, y in zip(costs, costs[1:]))  # strictly improving steps
    assert p_exact[0].budget == sum(bp) and p_exact[-1].best.cost == 0.0
    for p in p_exact:  # each point is the optimum at its budget, and a step happens there
        assert p.best.params == p.budget
        assert p.best.cost == pytest.approx(brute_best(p.budget))
        assert p.budget == sum(bp) or brute_best(p.budget - 1) > p.best.cost
    given = budget_path(a, names(5), bp, budgets=[80, "100", 200], strategy="exact")
    assert [p.budget for p in given] == [80, 100, 200]
    for p in given:
        assert p.best.cost == pytest.approx(brute_best(p.budget))
    with pytest.raises(BranchnasError, match="smallest feasible budget is 75"):
        budget_path(a, names(5), bp, budgets=[10], strategy="exact")


def test_budget_path_heuristic_strategy():
    a = random_affinity(5, 3, seed=3)
    pts = budget_path(a, names(5), [40, 25, 10], strategy="random", num_budgets=4, seed=1)
    assert len(pts) == 4 and all(p.best.params <= p.budget for p in pts)


# ---------------------------------------------------------------------- beam
def block_affinity(labels, depth, strength=0.9, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.asarray(labels)
    same = (lab[:, None] == lab[None, :]).astype(float)
    a = np.empty((depth, lab.size, lab.size))
    for d in range(depth):
        x = same * strength + rng.uniform(-noise, noise, size=same.shape)
        a[d] = (x + x.T) / 2
        np.fill_diagonal(a[d], 1.0)
    return a


def test_spectral_split_recovers_blocks():
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2]
    a = block_affinity(labels, 1)[0]
    part = spectral_split(a, tuple(range(9)), 3)
    assert part == ((0, 3, 6), (1, 4, 7), (2, 5, 8))
    assert spectral_split(a, (2, 5), 1) == ((2, 5),)
    assert spectral_split(a, (2, 5, 8), 3) == ((2,), (5,), (8,))


def test_beam_search_feasible_and_deterministic():
    n, depth = 12, 3
    a = block_affinity([i % 3 for i in range(n)], depth, strength=0.7, noise=0.3, seed=2)
    bp = [100, 100, 100]
    budget = 100 * (1 + 3 + 6)
    r1 = search(a, names(n), bp, budget, strategy="beam", top_k=3, beam_width=5)
    r2 = search(a, names(n), bp, budget, strategy="beam", top_k=3, beam_width=5)
    assert [s.tree for s in r1.trees] == [s.tree for s in r2.trees]
    assert all(s.params <= budget for s in r1.trees)
    assert [s.cost for s in r1.trees] == sorted(s.cost for s in r1.trees)
    assert len({s.tree for s in r1.trees}) == 3


def test_beam_finds_clear_clusters():
    n = 12
    a = block_affinity([i % 3 for i in range(n)], 2, strength=0.9, noise=0.05, seed=0)
    r = search(a, names(n), [100, 100], budget=600, strategy="beam")
    clusters = [[k for k in range(n) if k % 3 == c] for c in range(3)]
    assert r.best.tree == Tree.from_index_partitions(names(n), [clusters, clusters])


def test_beam_never_beats_the_optimum():
    for seed in range(3):
        n, depth = 7, 3
        a = random_affinity(n, depth, seed)
        bp = [10, 20, 5]
        budget = 10 + 20 * 3 + 5 * 5
        opt = search(a, names(n), bp, budget, strategy="exact")
        beam = search(a, names(n), bp, budget, strategy="beam", beam_width=10)
        assert beam.best.params <= budget
        assert beam.best.cost >= opt.best.cost - 1e-12


def test_beam_max_branches_and_prefix():
    n, depth = 8, 3
    a = random_affinity(n, depth, seed=5)
    r = search(a, names(n), [1, 1, 1], budget=12, strategy="beam-split", max_branches=2,
               shared_prefix=1)
    t = r.best.tree
    assert t.num_groups(0) == 1
    for d in range(1, depth):
        for g in range(t.num_groups(d)):
            assert sum(1 for h in range(t.num_groups(d)) if t.parent(d, h) == t.parent(d, g)) <= 2
    assert r.best.params <= 12


def test_beam_handles_forty_tasks():
    n = 40
    a = block_affinity([i % 5 for i in range(n)], 4, strength=0.6, noise=0.4, seed=1)
    bp = [1000, 2000, 3000, 400]
    budget = 40_000
    r = search(a, names(n), bp, budget, strategy="beam", beam_width=4)
    assert r.best.params <= budget and r.best.tree.num_tasks == n


# ---------------------------------------------------------------------- fa / random
def test_fa_is_locally_greedy_not_global():
    # greedy spends the budget at the deepest cut point; the optimum shares it out
    a = np.ones((2, 3, 3))
    a[0, 0, 2] = a[0, 2, 0] = -0.8  # a and c clash at location 1
    a[0, 1, 2] = a[0, 2, 1] = -0.8
    a[1] = 0.5
    np.fill_diagonal(a[1], 1.0)
    fa = search(a, ["a", "b", "c"], [1, 1], budget=4, strategy="fa")
    assert fa.best.tree.group_counts == (1, 3)
    opt = search(a, ["a", "b", "c"], [1, 1], budget=4, strategy="exact")
    assert opt.best.tree.group_counts == (2, 2)
    assert opt.best.cost < fa.best.cost


def test_best_coarsening_exact_and_agglomerative():
    rng = np.random.default_rng(0)
    a = random_affinity(7, 1, seed=11)[0]
    dis = 1 - a
    branches = [(0, 1), (2,), (3,), (4, 5), (6,)]
    for cap in (1, 2, 3, 5):
        groups, cost, _ = best_coarsening(dis, branches, cap, exact_branches=10)
        # brute force over every grouping of the branches with <= cap groups
        best = min(
            (sum(max([0.0] + [dis[i, j] for i in g for j in g if i != j]) for g in
                 [[t for bi in blk for t in branches[bi]] for blk in p]) / len(p), len(p))
            for p in ([sorted(b) for b in part] for part in brute_partitions(len(branches)))
            if len(p) <= cap
        )
        assert cost == pytest.approx(best[0])
        assert len(groups) <= cap
        assert sorted(t for g in groups for t in g) == list(range(7))
        g2, c2, _ = best_coarsening(dis, branches, cap, exact_branches=0)  # agglomerative
        assert len(g2) <= cap and c2 >= cost - 1e-12
    del rng


def test_random_strategy_seeded_and_within_budget():
    a = random_affinity(6, 3, seed=2)
    bp = [5, 5, 5]
    r1 = search(a, names(6), bp, 40, strategy="random", top_k=5, seed=3)
    r2 = search(a, names(6), bp, 40, strategy="random", top_k=5, seed=3)
    r3 = search(a, names(6), bp, 40, strategy="random", top_k=5, seed=4)
    assert [s.tree for s in r1.trees] == [s.tree for s in r2.trees]
    assert [s.tree for s in r1.trees] != [s.tree for s in r3.trees]
    assert len({s.tree for s in r1.trees}) == 5
    assert all(s.params <= 40 for s in r1.trees)
    tight = search(a, names(6), bp, 15, strategy="random", top_k=3)
    assert [s.tree for s in tight.trees] == [Tree.fully_shared(names(6), 3)]  # only one fits


# ---------------------------------------------------------------------- registry / errors
def test_registry():
    assert set(list_strategies()) >= {"exhaustive", "exact", "beam", "fa", "random"}
    assert create_strategy("beam", beam_width=3).beam_width == 3
    with pytest.raises(BranchnasError, match="choose one of: beam, beam-split, exact, exhaustive, fa, local, random"):
        search(random_affinity(3, 2, 0), names(3), [1, 1], strategy="nope")


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda a: a[:, :3, :3], "shape (2, 3, 3) but 4 tasks"),
        (lambda a: a[0], "shape (4, 4) but 4 tasks"),
        (lambda a: np.where(np.eye(4, k=1, dtype=bool), 0.123, a), "not symmetric"),
        (lambda a: np.where(np.eye(4, dtype=bool), np.nan, a), "non-finite"),
        (lambda a: np.where(np.eye(4, dtype=bool), np.inf, a), "non-finite"),
    ],
)
def test_affinity_errors(mutate, fragment):
    a = mutate(random_affinity(4, 2, 0))
    with pytest.raises(BranchnasError) as e:
        search(a, names(4), [1, 1], budget=5)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_input_errors():
    a = random_affinity(4, 2, 0)
    cases = [
        (dict(block_params=[1, 2, 3]), "one number per cut point"),
        (dict(block_params=[1, -2]), "non-negative"),
        (dict(budget_kind="latency"), "unknown budget kind"),
        (dict(budget_kind="flops"), "pass block_flops"),
        (dict(shared_prefix=3), "shared_prefix 3 exceeds"),
        (dict(top_k=0), "top_k"),
        (dict(tasks=["a", "a", "b", "c"]), "listed twice"),
        (dict(budget="lots"), "invalid budget"),
    ]
    for kw, fragment in cases:
        args = dict(affinity=a, tasks=names(4), block_params=[1, 1], budget=5)
        args.update(kw)
        with pytest.raises(BranchnasError, match=fragment):
            search(**args)


def test_size_limits_are_errors():
    a = random_affinity(8, 4, 0)
    problem = make_problem(a, names(8), [1, 1, 1, 1], budget=20)
    with pytest.raises(BranchnasError, match="use strategy 'exact' or 'local'"):
        create_strategy("exhaustive", max_trees=1000).run(problem)
    with pytest.raises(BranchnasError, match="use strategy 'local'"):
        ExactSolver(problem, max_entries=1000)


def test_shared_prefix_everything():
    a = random_affinity(4, 2, 0)
    for strategy in list_strategies():
        r = search(a, names(4), [1, 1], budget=3, strategy=strategy, shared_prefix=2)
        assert r.best.tree == Tree.fully_shared(names(4), 2)


@pytest.mark.parametrize("strategy", list_strategies())
@pytest.mark.parametrize("n,depth", [(1, 3), (3, 1)])
def test_degenerate_sizes(strategy, n, depth):
    a = np.ones((depth, n, n))
    r = search(a, names(n), [10] * depth, budget=10 * depth, strategy=strategy, top_k=2)
    assert r.best.tree == Tree.fully_shared(names(n), depth)
    assert r.best.cost == 0.0 and r.best.params == 10 * depth
