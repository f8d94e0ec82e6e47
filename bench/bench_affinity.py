"""Benchmark: branchnas RSA affinity versus rsatoolbox on identical features.

Both compute, for N tasks at D locations on K images, correlation-distance RDMs and the
Spearman correlation between every pair of RDMs (rsatoolbox: ``calc_rdm(..., method=
'correlation')`` and ``compare(..., method='spearman')``). The bench checks that the two
affinity tensors agree to 1e-6 and prints the time of each and their ratio, measured side by
side in one run.

rsatoolbox is not a dependency of branchnas; install it for the bench only::

    pip install rsatoolbox

Run::

    python bench/bench_affinity.py            # K=500, N=5, D=4
    python bench/bench_affinity.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from branchnas.affinity import rsa_affinity

#: Features per image at each location (shrinking with depth, like a CNN's blocks).
FEATURES_PER_LOCATION = (4096, 2048, 1024, 512)


def make_features(k: int, n: int, d: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Related tasks: a shared signal per location plus task noise that grows with depth."""
    rng = np.random.default_rng(seed)
    sizes = [FEATURES_PER_LOCATION[i % len(FEATURES_PER_LOCATION)] for i in range(d)]
    feats: dict[str, list[np.ndarray]] = {f"task{t}": [] for t in range(n)}
    for loc, f in enumerate(sizes):
        shared = rng.normal(size=(k, f))
        for t in range(n):
            noise = (0.25 + 0.25 * loc) * (1.0 + 0.25 * t)
            feats[f"task{t}"].append(shared + noise * rng.normal(size=(k, f)))
    return feats


def rsatoolbox_affinity(features: dict[str, list[np.ndarray]]) -> np.ndarray:
    """The same affinity with rsatoolbox (one RDMs object per location)."""
    import rsatoolbox

    names = list(features)
    depth = len(features[names[0]])
    out = np.empty((depth, len(names), len(names)))
    for d in range(depth):
        datasets = [rsatoolbox.data.Dataset(features[t][d]) for t in names]
        rdms = rsatoolbox.rdm.calc_rdm(datasets, method="correlation")
        out[d] = rsatoolbox.rdm.compare(rdms, rdms, method="spearman")
    return out


def timed(fn: Callable[[], np.ndarray], repeats: int, sync: bool) -> tuple[np.ndarray, list[float]]:
    """Run ``fn`` once to warm up, then ``repeats`` times; return the last result and times."""
    result = fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return result, times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=500, help="images (default 500)")
    parser.add_argument("--tasks", type=int, default=5, help="tasks N (default 5)")
    parser.add_argument("--locations", type=int, default=4, help="locations D (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (default 3)")
    parser.add_argument("--device", default=None, help="branchnas device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch and numpy's BLAS alike (default 1: stable on a shared "
                             "machine; 0 keeps the libraries' defaults)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        import rsatoolbox  # noqa: F401
    except ImportError:
        print("rsatoolbox is not installed, so there is nothing to compare against; "
              "install it for the bench only: pip install rsatoolbox", file=sys.stderr)
        return 2

    if args.threads > 0:
        torch.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            print("threadpoolctl is missing: numpy's BLAS threads are not limited", file=sys.stderr)
        else:
            threadpool_limits(args.threads)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    feats = make_features(args.k, args.tasks, args.locations, args.seed)
    sizes = [feats["task0"][d].shape[1] for d in range(args.locations)]
    print(f"K={args.k} N={args.tasks} D={args.locations} features/image per location={sizes} "
          f"float64; branchnas device={device}; torch threads={torch.get_num_threads()}")

    ours, t_ours = timed(lambda: rsa_affinity(feats, device=device), args.repeats, sync=device.startswith("cuda"))
    theirs, t_theirs = timed(lambda: rsatoolbox_affinity(feats), args.repeats, sync=False)

    diff = float(np.abs(ours - theirs).max())
    agree = diff <= 1e-6
    m_ours, m_theirs = statistics.median(t_ours), statistics.median(t_theirs)
    print(f"branchnas rsa_affinity : median {m_ours * 1e3:9.1f} ms  (runs: {', '.join(f'{t * 1e3:.1f}' for t in t_ours)})")
    print(f"rsatoolbox             : median {m_theirs * 1e3:9.1f} ms  (runs: "
          f"{', '.join(f'{t * 1e3:.1f}' for t in t_theirs)})")
    print(f"max |difference|       : {diff:.2e}  ({'agree' if agree else 'DISAGREE'} within 1e-6)")
    print(f"speed ratio            : {m_theirs / m_ours:.1f}x (rsatoolbox time / branchnas time)")
    print(f"mean off-diagonal affinity per location: "
          f"{[round(float(ours[d][np.triu_indices(args.tasks, 1)].mean()), 3) for d in range(args.locations)]}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
