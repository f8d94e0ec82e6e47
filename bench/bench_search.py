"""Benchmark the tree search strategies side by side (CPU; a few minutes on 2 cores).

Run: ``PYTHONPATH=. python bench/bench_search.py [--quick]``

Reports, in one run:
1. exact DP vs exhaustive enumeration at N tasks × 4 cut points: time, trees/s, ratio, and
   whether the optima agree; exact alone where enumeration would take too long (with the
   enumeration time extrapolated from its measured trees/s);
2. beam search time for 10, 20 and 40 tasks over the thin-32 VGG-16 of the CelebA space
   (7 cut points) at the paper's 2.09M-parameter budget, with FA and random for reference;
3. on random small instances where exhaustive search runs: how often beam search (and FA,
   random) finds the exhaustive optimum, and the mean cost gap.
"""

from __future__ import annotations

import argparse
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


def bench_beam_many_tasks(rng):
    blocks, head, source = thin32_space()
    _, t_import = timed(lambda: __import__("sklearn.cluster"))
    print(f"\n== beam search over thin-32 VGG-16 ({len(blocks)} cut points, {source}), "
          f"budget 2.09M params, n = 10 (scikit-learn import {t_import:.1f} s, not counted) ==")
    print(f"{'N':>3} {'strategy':>8} {'time s':>8} {'cost':>8} {'params':>10} {'group counts'}")
    for n in (10, 20, 40):
        a = synthetic_affinity(n, len(blocks), rng)
        fixed = head * n
        budget = 2_090_000
        if fixed + n * sum(blocks) <= budget:  # 10 tasks: all-separate fits; use 60 %
            budget = int(0.6 * (fixed + n * sum(blocks)))
        for strategy in ("beam", "fa", "random"):
            r, t = timed(lambda: search(a, names(n), blocks, budget, strategy=strategy,
                                        fixed_params=fixed, beam_width=10))
            print(f"{n:>3} {strategy:>8} {t:>8.2f} {r.best.cost:>8.3f} {r.best.params:>10,} "
                  f"{r.best.tree.group_counts}")


def bench_beam_optimality(instances, rng):
    print(f"\n== heuristics vs exhaustive optimum on {instances} random instances "
          "(6 tasks × 4 cut points, random block costs and budgets) ==")
    stats = {s: [] for s in ("beam", "fa", "random")}
    t_all = {s: 0.0 for s in stats}
    t_ex = 0.0
    for _ in range(instances):
        n, depth = 6, 4
        a = synthetic_affinity(n, depth, rng)
        bp = [int(x) for x in rng.integers(1000, 30000, depth)]
        lo, hi = sum(bp), n * sum(bp)
        budget = int(rng.uniform(lo, hi))
        ex, t = timed(lambda: search(a, names(n), bp, budget, strategy="exhaustive"))
        t_ex += t
        for s in stats:
            r, t = timed(lambda: search(a, names(n), bp, budget, strategy=s, beam_width=10))
            t_all[s] += t
            stats[s].append((r.best.cost - ex.best.cost, ex.best.cost))
    print(f"{'strategy':>10} {'optimal':>9} {'mean gap':>9} {'mean rel. gap':>14} {'mean time s':>12}")
    print(f"{'exhaustive':>10} {'100%':>9} {0.0:>9.4f} {'0.0%':>14} {t_ex / instances:>12.3f}")
    for s, rows in stats.items():
        gaps = np.array([g for g, _ in rows])
        rel = np.array([g / c if c > 0 else 0.0 for g, c in rows])
        opt = np.mean(gaps < 1e-9)
        print(f"{s:>10} {opt:>9.0%} {gaps.mean():>9.4f} {rel.mean():>13.1%} "
              f"{t_all[s] / instances:>12.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.quick:
        bench_exact_vs_exhaustive([6, 7], [9], rng)
        bench_beam_many_tasks(rng)
        bench_beam_optimality(10, rng)
    else:
        bench_exact_vs_exhaustive([6, 7, 8], [9, 10], rng)
        bench_beam_many_tasks(rng)
        bench_beam_optimality(40, rng)


if __name__ == "__main__":
    main()
