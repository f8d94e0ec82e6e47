"""Benchmark the tree search strategies side by side (CPU, one core per search).

Run: ``PYTHONPATH=. python bench/bench_search.py [--quick] [--instances N] [--only SECTION]``

Reports, in one run:
1. exact DP vs exhaustive enumeration at N tasks × 4 cut points: time, trees/s, ratio, and
   whether the optima agree; exact alone where enumeration would take too long (with the
   enumeration time extrapolated from its measured trees/s);
2. on random instances with 6-10 tasks and 4-7 cut points (random block costs and budgets)
   where the exact optimum is known: how often each strategy finds it, the mean and largest
   relative cost gap, the time; local search (``local``) beside the paper's beam
   (``beam``), our earlier beam reading (``beam-split``) and Lu et al.'s greedy (``fa``), and
   whether local's lower bound ever exceeds the optimum;
3. 40 tasks × 15 cut points: time, cost, lower bound and certified gap at three budgets;
4. which strategy ``--strategy auto`` runs at each size;
5. the selection rules on the validation study's trained trees (results/validation/*/):
   regret per budget against the paper's least-cost rule.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from branchnas.search import count_trees, search

# thin-32 VGG-16 block params (conv1..conv5, fc6, fc7) and per-task linear head, used when
# the search space cannot be loaded (values of branchnas.spaces at the time of writing)
THIN32_BLOCKS = [10208, 18560, 27840, 27840, 27840, 100416, 4160]
THIN32_HEAD = 65


def thin32_space():
    try:
        from branchnas.spaces import load_space

        space = load_space("celeba-thin32")
        heads = list(space.head_params.values())
        return list(space.block_params), int(heads[0]), "celeba-thin32 space"
    except Exception as e:  # noqa: BLE001 - bench falls back to recorded numbers
        return THIN32_BLOCKS, THIN32_HEAD, f"recorded numbers ({type(e).__name__})"


def synthetic_affinity(n: int, depth: int, rng: np.random.Generator) -> np.ndarray:
    """Task affinities with latent clusters that drift apart with depth (like real RSA)."""
    k = max(2, n // 3)
    labels = rng.integers(0, k, n)
    centers = rng.normal(size=(k, 16))
    common = rng.normal(size=16)
    own = rng.normal(size=(n, 16))
    a = np.empty((depth, n, n))
    for d in range(depth):
        share = 1.0 - d / depth
        z = 2.0 * share * common + centers[labels] + (0.5 + d / depth) * own
        z = z + 0.5 * rng.normal(size=z.shape)
        a[d] = np.corrcoef(z)
    a = (a + a.transpose(0, 2, 1)) / 2
    for d in range(depth):
        np.fill_diagonal(a[d], 1.0)
    return a


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def cpu_timed(fn):
    """(result, wall s, CPU s of this process): CPU time is "one core" on a shared machine."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def names(n):
    return [f"t{i}" for i in range(n)]


def bench_exact_vs_exhaustive(sizes, exact_only, rng):
    print("\n== exact DP vs exhaustive enumeration (4 cut points, budget = half way) ==")
    print(f"{'N':>3} {'trees':>15} {'exhaustive s':>13} {'trees/s':>12} {'exact s':>9} "
          f"{'speed-up':>9} {'same optimum':>13}")
    bp = [3000, 6000, 12000, 24000]
    rate = None
    for n in sizes + exact_only:
        a = synthetic_affinity(n, 4, rng)
        budget = int(sum(bp) * (1 + n) / 2)
        total = count_trees(n, 4)
        dp, t_dp = timed(lambda: search(a, names(n), bp, budget, strategy="exact"))
        if n in sizes:
            ex, t_ex = timed(lambda: search(a, names(n), bp, budget, strategy="exhaustive"))
            rate = total / t_ex
            same = abs(ex.best.cost - dp.best.cost) < 1e-9
            print(f"{n:>3} {total:>15,} {t_ex:>13.2f} {rate:>12,.0f} {t_dp:>9.2f} "
                  f"{t_ex / t_dp:>8.1f}x {same!s:>13}")
        else:
            est = total / rate if rate else float("nan")
            print(f"{n:>3} {total:>15,} {'~' + format(est, ',.0f'):>13} {'(extrap.)':>12} "
                  f"{t_dp:>9.2f} {est / t_dp:>8.0f}x {'-':>13}")


def random_instance(rng, max_entries=32_000_000):
    """6-10 tasks, 4-7 cut points (sizes the exact solver can answer), random costs and budget."""
    from branchnas.search.exact import estimate_entries

    while True:
        n, depth = int(rng.integers(6, 11)), int(rng.integers(4, 8))
        if estimate_entries(n, depth) <= max_entries:
            break
    a = synthetic_affinity(n, depth, rng)
    bp = [int(x) for x in rng.integers(1000, 30000, depth)]
    budget = int(rng.uniform(sum(bp), n * sum(bp)))  # between fully shared and all-separate
    return a, bp, budget


def bench_optimality(instances, rng, strategies):
    print(f"\n== strategies vs the exact optimum on {instances} random instances "
          "(6-10 tasks x 4-7 cut points, random block costs and budgets) ==")
    stats = {s: [] for s in strategies}
    t_all = {s: 0.0 for s in strategies}
    t_ex, lb_rel, lb_bad, sizes = 0.0, [], 0, []
    for i in range(instances):
        if i and i % 50 == 0:
            print(f"  ... {i} instances", flush=True)
        a, bp, budget = random_instance(rng)
        n = a.shape[1]
        sizes.append((n, a.shape[0]))
        ex, t = timed(lambda: search(a, names(n), bp, budget, strategy="exact"))
        t_ex += t
        opt = ex.best.cost
        for s in strategies:
            r, t = timed(lambda: search(a, names(n), bp, budget, strategy=s))
            t_all[s] += t
            assert r.best.params <= budget
            stats[s].append((r.best.cost - opt, opt))
            if r.lower_bound is not None and s == "local":
                lb_bad += r.lower_bound > opt + 1e-9
                lb_rel.append((opt - r.lower_bound) / opt if opt > 0 else 0.0)
    counts = {}
    for sz in sizes:
        counts[sz[0]] = counts.get(sz[0], 0) + 1
    print("instances per task count: " + ", ".join(f"{k} tasks: {v}" for k, v in sorted(counts.items())))
    print(f"{'strategy':>10} {'optimal':>9} {'mean rel. gap':>14} {'max rel. gap':>13} {'mean time s':>12}")
    print(f"{'exact':>10} {'100%':>9} {'0.00%':>14} {'0.00%':>13} {t_ex / instances:>12.3f}")
    for s, rows in stats.items():
        gaps = np.array([g for g, _ in rows])
        rel = np.array([g / c if c > 0 else 0.0 for g, c in rows])
        opt = np.mean(gaps < 1e-9)
        print(f"{s:>10} {opt:>9.1%} {rel.mean():>13.2%} {rel.max():>12.1%} {t_all[s] / instances:>12.3f}")
    if lb_rel:
        print(f"local's lower bound: never above the optimum in {instances - lb_bad}/{instances}; "
              f"mean (optimum - bound) / optimum = {np.mean(lb_rel):.1%}")


def bench_many_tasks(rng, n=40, depth=15):
    blocks = [int(x) for x in rng.integers(5000, 60000, depth)]
    a = synthetic_affinity(n, depth, rng)
    fixed = 65 * n
    lo, hi = fixed + sum(blocks), fixed + n * sum(blocks)
    print(f"\n== {n} tasks x {depth} cut points (synthetic affinity, random block costs), "
          "three budgets, one core ==")
    print(f"{'budget':>10} {'strategy':>10} {'wall s':>8} {'CPU s':>7} {'cost':>8} {'lower bound':>12} "
          f"{'certified gap':>14} {'params':>11}")
    for frac in (0.1, 0.3, 0.6):
        budget = int(lo + frac * (hi - lo))
        for strategy in ("local", "beam"):
            r, t, cpu = cpu_timed(lambda: search(a, names(n), blocks, budget, strategy=strategy,
                                                 fixed_params=fixed))
            lb = r.lower_bound
            if lb is None:  # the bound does not depend on the strategy: report local's gap
                from branchnas.search import lower_bound, make_problem

                lb = lower_bound(make_problem(a, names(n), blocks, budget, fixed))
            gap = (r.best.cost - lb) / r.best.cost if r.best.cost > 0 else 0.0
            print(f"{budget:>10,} {strategy:>10} {t:>8.2f} {cpu:>7.2f} {r.best.cost:>8.4f} {lb:>12.4f} "
                  f"{gap:>13.1%} {r.best.params:>11,}")


def bench_auto():
    from branchnas.search import choose_strategy

    print("\n== what --strategy auto runs ==")
    for n, depth in ((4, 4), (6, 4), (8, 5), (9, 6), (10, 4), (10, 7), (20, 7), (40, 15)):
        print(f"{n:>3} tasks x {depth:>2} cut points: {choose_strategy(n, depth)}")


def bench_selection(root):
    """Selection rules on the trained trees of the validation study: regret per budget."""
    import glob

    import pandas as pd

    from branchnas.search.frontier import select
    from branchnas.search._common import ScoredTree
    from branchnas.tree import Tree

    rules = [("least-cost", {}), ("epsilon", {"eps": 0.05}), ("epsilon", {"eps": 0.1}),
             ("epsilon", {"eps": 0.2}), ("epsilon", {"eps": 0.3}), ("knee", {})]
    studies = sorted(glob.glob(os.path.join(root, "*", "trees.csv")))
    print(f"\n== selection rules on the validation study's trained trees ({root}) ==")
    if not studies:
        print("no trees.csv found; run `branchnas validate` first")
        return
    print("regret = best Δm among the trained trees within the budget - Δm of the rule's pick "
          "(pp, seed mean; lower is better)")
    for path in studies:
        trees = pd.read_csv(path)
        regret = pd.read_csv(os.path.join(os.path.dirname(path), "regret.csv"))
        budgets = sorted(set(int(b) for b in regret["budget"]))
        dm = trees["delta_m_mean"] if "delta_m_mean" in trees else trees["delta_m"]
        pts = [ScoredTree(Tree.from_json(json.loads(t)), float(c), int(p)) for t, c, p in
               zip(trees["tree"], trees["cost_rsa"], trees["params"])]
        dm_of = {pt.tree: float(v) for pt, v in zip(pts, dm)}
        name = os.path.basename(os.path.dirname(path))
        print(f"\n{name}: {len(pts)} trees, {len(budgets)} budgets")
        header = f"{'rule':>14}" + "".join(f"{b // 1000:>8}k" for b in budgets) + f"{'mean':>8}"
        print(header)
        for rule, opts in rules:
            row = []
            for b in budgets:
                feas = [p for p in pts if p.params <= b]
                best = max(dm_of[p.tree] for p in feas)
                pick = select(pts, b, rule, **opts)
                row.append(best - dm_of[pick.tree])
            label = rule + (f" {opts['eps']}" if opts else "")
            print(f"{label:>14}" + "".join(f"{v:>9.2f}" for v in row) + f"{np.mean(row):>8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    ap.add_argument("--instances", type=int, default=200, help="random instances (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["exact", "optimality", "many", "auto", "selection"],
                    help="run one section")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    quick = args.quick
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results", "validation")
    sections = {
        "exact": lambda: bench_exact_vs_exhaustive([6, 7] if quick else [6, 7, 8], [9] if quick else [9, 10], rng),
        "optimality": lambda: bench_optimality(10 if quick else args.instances, rng,
                                               ["local", "beam", "beam-split", "fa"]),
        "many": lambda: bench_many_tasks(rng),
        "auto": bench_auto,
        "selection": lambda: bench_selection(root),
    }
    for name, fn in sections.items():
        if args.only in (None, name):
            fn()


if __name__ == "__main__":
    main()
