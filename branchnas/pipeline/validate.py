"""Validation study (the paper's Fig. 2b on our benchmark): does the least-cost tree win?

Every tree over a few tasks is trained (branching allowed over the last blocks only, so
the count stays small), a subset again with more seeds to measure the noise, and then:

- **correlation**: Spearman's ρ between a tree's clustering cost (RSA and CKA affinity)
  and its measured Δm, among trees of equal parameter count (a lower cost should mean a
  higher Δm, so the method predicts ρ < 0);
- **regret**: for every budget (each distinct parameter count of the trees), the Δm of the
  best trained tree within the budget minus the Δm of the tree a strategy picks: the exact
  search on the RSA and on the CKA affinity, Lu et al.'s method (their FA affinity and their
  greedy layer-by-layer grouping, the paper's "FA" rows), that greedy on the RSA affinity,
  the ``random`` strategy (mean over seeds) and a random tree with the same parameter count
  as the RSA pick (exact mean over those trees). Regret is ≥ 0 by construction (every tree
  is trained); it is set against the seed noise of Δm.

Δm is on each task's primary measure (as the paper's tables); the all-metrics Δm is kept
beside it (``delta_m_all``, and a correlation row on it). Every network trains under the
convergence rule; the stopping epochs and the held-out learning curves are written too
(``learning_curves.png``, the "Convergence" section of ``SUMMARY.md``).

:func:`run_validation` trains (cached and resumable: one run directory per tree and seed
under ``<out>/trees/``, reused when done), analyses and writes ``trees.csv``, ``seeds.csv``,
``correlation.csv``, ``regret.csv``, ``cost_vs_delta_m.png``, ``regret.png``,
``learning_curves.png`` and ``SUMMARY.md`` into ``results_dir``. :func:`analyse` does the analysis alone on a trees
table, so a partly trained study can be summarised too.

Example:
    >>> cfg = ValidationConfig(space="scenes", profile="tiny", shared_prefix=3,
    ...                        seeds=(0, 1), out="/tmp/val", results_dir="/tmp/val/results")
    >>> summary = run_validation(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .._figure import agg_figure
from ..errors import BranchnasError
from ..training.config import RUNTIME_FIELDS
from ..training.rundir import RunDir, atomic_write_text
from ..tree import Tree
from .executor import ExecutorConfig
from .layout import RunLayout, ValidationFiles
from .resolve import (DEFAULT_K, DEFAULT_RANDOM_DRAWS, DEFAULT_RESULTS_DIR, DEFAULT_SPACE,
                      DEFAULT_STUDY_PROFILE, DEFAULT_STUDY_SEEDS, DEFAULT_STUDY_SHARED_PREFIX, MIN_K,
                      PROFILES, get_profile, profile_space, resolve_run)
from .results import read_result

__all__ = [
    "STRATEGIES",
    "VALIDATION_PROFILES",
    "ValidationConfig",
    "analyse",
    "correlation_table",
    "cost_vs_delta_m_data",
    "noise_subset",
    "plot_cost_vs_delta_m",
    "plot_regret",
    "regret_plot_data",
    "regret_table",
    "run_validation",
    "seed_noise",
    "study_space",
    "study_trees",
    "trees_table",
    "write_validation",
    "format_validation",
    "learning_curves",
    "plot_learning_curves",
]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

# The study's profile ("study", what results/validation/ was made with) lives with every other
# profile in branchnas.pipeline.resolve.PROFILES; this name is kept for code that read it here.
VALIDATION_PROFILES = PROFILES

# (label, search strategy, affinity measure) compared in the regret table.
STRATEGIES: Tuple[Tuple[str, str, str], ...] = (
    ("rsa", "exact", "rsa"),  # the paper's method
    ("cka", "exact", "cka"),  # same search, CKA affinity
    ("fa", "fa", "fa"),  # Lu et al. (the paper's "FA" rows): their affinity, their greedy
    ("greedy_rsa", "fa", "rsa"),  # Lu et al.'s greedy on the RSA affinity (greedy vs global)
)


@dataclass
class ValidationConfig:
    """What ``branchnas validate`` does."""

    space: str = DEFAULT_SPACE  # search-space name or TOML path
    tasks: Optional[List[str]] = None  # default: the space's first 3 dense tasks
    shared_prefix: int = DEFAULT_STUDY_SHARED_PREFIX  # blocks shared by all tasks; branching over the rest
    profile: str = DEFAULT_STUDY_PROFILE  # a key of pipeline.resolve.PROFILES
    seeds: Tuple[int, ...] = DEFAULT_STUDY_SEEDS  # seed 0 trains every tree; the others the noise subset
    noise_trees: Optional[List[str]] = None  # trees for extra seeds (default: noise_subset; ["all"])
    random_draws: int = DEFAULT_RANDOM_DRAWS  # seeds of the random strategy per budget
    k: Optional[int] = None  # held-out images for affinity (default: the profile's)
    out: Optional[str] = None  # run root (default: runs/validation/<space>-<profile>)
    results_dir: str = DEFAULT_RESULTS_DIR  # where the CSV/PNG/SUMMARY.md go
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # where tree runs train
    device: Optional[str] = None  # None: CUDA when available
    training: Dict[str, Any] = field(default_factory=dict)  # overrides of the training config
    train: bool = True  # False: analyse only the runs already done
    force: bool = False  # retrain: the study's runs and affinity files are removed first


def study_space(cfg: ValidationConfig) -> Any:
    """The search space with the profile applied, restricted to the study's tasks."""
    space = profile_space(cfg.space, cfg.profile, cfg.tasks)  # the resolver's one copy
    if cfg.tasks:
        tasks = list(cfg.tasks)
    elif get_profile(cfg.profile).get("tasks"):  # the study profile names its tasks
        tasks = space.task_names
    else:
        tasks = [t.name for t in space.tasks if t.dense][:3]
    if len(tasks) < 2:
        raise BranchnasError(f"the study needs at least 2 tasks, got {tasks}; pass --tasks A B C")
    if not 0 <= cfg.shared_prefix < space.depth:
        raise BranchnasError(f"shared_prefix must be in 0..{space.depth - 1}, got "
                             f"{cfg.shared_prefix}; branching needs at least one free block")
    return space.subset(tasks)


def study_trees(space: Any, shared_prefix: int) -> Dict[str, Tree]:
    """Every tree of the study, named ``t000``, ``t001``, ... by (parameters, JSON)."""
    from ..search import enumerate_trees

    trees = list(enumerate_trees(space.task_names, space.depth, shared_prefix))
    trees.sort(key=lambda t: (space.tree_params(t), t.dumps()))
    return {f"t{i:03d}": t for i, t in enumerate(trees)}


def noise_subset(space: Any, trees: Mapping[str, Tree], affinity: np.ndarray) -> List[str]:
    """The trees trained with every seed: fully shared, all separate, and the least-cost
    tree (under ``affinity``) of every parameter count held by several trees."""
    from ..search import clustering_cost

    by_params: Dict[int, List[str]] = {}
    for name, tree in trees.items():
        by_params.setdefault(space.tree_params(tree), []).append(name)
    names = list(trees)
    chosen = {names[0], names[-1]}
    for group in by_params.values():
        if len(group) > 1:
            chosen.add(min(group, key=lambda n: (clustering_cost(trees[n], affinity), n)))
    return sorted(chosen)


def _run_name(tree_name: str, seed: int) -> str:
    return f"{tree_name}-s{seed}"


def _check_reused(run_path: Path, tree: Tree, seed: int, config: Any) -> None:
    run = RunDir(run_path)
    if run.is_done():
        r = read_result(run_path)
        if r.tree is None or Tree.from_json(r.tree) != tree or r.seed != seed:
            raise BranchnasError(f"{run_path} holds another tree or seed than the study's; "
                                 "give a new --out, or pass --force to retrain")
        # a finished run with other training settings is refused before anything trains
        run.check_config(config.to_dict(), ignore_keys=RUNTIME_FIELDS, partial=True)


def _train_all(space: Any, jobs_list: List[Tuple[str, Tree, int]], out: Path,
               config_for: Callable[[Tree, int], Any], executor: Any, device: Optional[str]) -> None:
    """Every (tree, seed) run as a ``train_tree`` job on ``executor`` (done runs come back at
    once; a reused run must hold the study's tree and seed)."""
    from .executor import run_all
    from .executors import tree_job

    specs = []
    for name, tree, seed in jobs_list:
        config = config_for(tree, seed)
        _check_reused(RunLayout(out).tree(_run_name(name, seed)), tree, seed, config)
        specs.append(tree_job(space, tree, _run_name(name, seed), config, out, device))
    todo = sum(not RunDir(s["out_dir"]).is_done() for s in specs)
    log.info("validation: %d of %d tree runs to train", todo, len(specs))
    t0 = time.perf_counter()
    run_all(executor, specs)
    log.info("validation: trained %d tree runs in %.0f s", todo, time.perf_counter() - t0)


def trees_table(space: Any, trees: Mapping[str, Tree], out: PathLike,
                affinities: Mapping[str, np.ndarray], seeds: Sequence[int],
                reference: Mapping[str, Mapping[str, float]]) -> Tuple[Any, Any]:
    """The trained trees as tables: ``(trees, seeds)`` pandas DataFrames.

    ``trees``: one row per tree: name, groups (readable), params, ``groups_per_depth``,
    ``cost_<measure>`` per affinity, ``delta_m`` (first seed), ``delta_m_mean`` / ``delta_m_std``
    / ``n_seeds`` over the seeds trained, all on each task's primary measure (recomputed here
    from the stored metrics, so older runs read the same), ``delta_m_all`` / ``delta_m_all_mean``
    over all metrics, ``epochs`` (first seed), per-task Δm (``dm/<task>``) and metrics
    (``<task>/<metric>``) of the first seed, and the tree's JSON. Trees not yet trained with
    the first seed have NaN there. ``seeds``: one row per (tree, seed) run done.
    ``reference``: the single-task networks' metrics (task → metric → value).
    """
    import pandas as pd

    from ..search import clustering_cost
    from ..tasks import task_delta_m, task_delta_m_per_task

    def dm_of(metrics: Mapping[str, Mapping[str, float]], on: str) -> float:
        try:
            return task_delta_m(metrics, reference, space.tasks, on)
        except BranchnasError:  # e.g. a zero reference value: Δm undefined
            return float("nan")
    rows, seed_rows = [], []
    for name, tree in trees.items():
        row: Dict[str, Any] = {
            "name": name, "groups": _readable(tree), "params": space.tree_params(tree),
            "groups_per_depth": "-".join(str(c) for c in tree.group_counts),
        }
        for measure, aff in affinities.items():
            row[f"cost_{measure}"] = clustering_cost(tree, aff)
        dms, dms_all = [], []
        for i, seed in enumerate(seeds):
            path = RunLayout(out).tree(_run_name(name, seed))
            if not RunDir(path).is_done():
                continue
            r = read_result(path)
            dm, dm_all = dm_of(r.metrics, "primary"), dm_of(r.metrics, "all")
            dms.append(dm)
            dms_all.append(dm_all)
            seed_rows.append({"name": name, "seed": seed, "params": row["params"], "delta_m": dm,
                              "delta_m_all": dm_all, "epochs": r.extra.get("epochs"),
                              "stop_reason": r.extra.get("stop_reason"),
                              "seconds": r.extra.get("seconds")})
            if i == 0:
                row["delta_m"] = dm
                row["delta_m_all"] = dm_all
                row["epochs"] = r.extra.get("epochs")
                for task, v in task_delta_m_per_task(r.metrics, reference, space.tasks).items():
                    row[f"dm/{task}"] = v
                for task, ms in r.metrics.items():
                    for metric, v in ms.items():
                        row[f"{task}/{metric}"] = v
        row.setdefault("delta_m", float("nan"))
        row.setdefault("delta_m_all", float("nan"))
        row["n_seeds"] = len(dms)
        row["delta_m_all_mean"] = float(np.mean(dms_all)) if dms_all else float("nan")
        row["delta_m_mean"] = float(np.mean(dms)) if dms else float("nan")
        row["delta_m_std"] = float(np.std(dms, ddof=1)) if len(dms) > 1 else float("nan")
        row["tree"] = tree.dumps()
        rows.append(row)
    seed_cols = ["name", "seed", "params", "delta_m", "delta_m_all", "epochs", "stop_reason", "seconds"]
    return pd.DataFrame(rows), pd.DataFrame(seed_rows, columns=seed_cols)


def _readable(tree: Tree) -> str:
    """Depth by depth, groups separated by ``|`` and tasks by ``+`` (``/`` between depths)."""
    return " / ".join(" | ".join("+".join(g) for g in part) for part in tree.groupings)


EXACT_P_MAX_N = 8  # up to this many points the p-value is exact (every permutation)


def _spearman(x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    """Spearman's ρ (scipy) and a two-sided p-value: exact over every permutation of ``y``
    for n ≤ :data:`EXACT_P_MAX_N` (scipy's t approximation says p = 0 for ρ = ±1 at n = 3,
    where the truth is 1/3), scipy's otherwise."""
    from itertools import permutations

    from scipy.stats import rankdata, spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    res = spearmanr(x, y)
    rho, p = float(res[0]), float(res[1])
    if len(x) <= EXACT_P_MAX_N:
        rx, ry = rankdata(x), rankdata(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()
        perms = ry[np.array(list(permutations(range(len(y)))))]
        rhos = perms @ rx / (np.linalg.norm(rx) * np.linalg.norm(ry))
        p = float(np.mean(np.abs(rhos) >= abs(rho) - 1e-9))
    return rho, p


def correlation_table(table: Any, measures: Sequence[str], column: str = "delta_m") -> Any:
    """Spearman's ρ between ``cost_<measure>`` and Δm (``column``) among trees of equal params.

    One row per (measure, parameter count held by ≥ 3 trained trees), then per measure a
    ``pooled`` row (ρ of cost and Δm after subtracting each equal-parameter group's means,
    groups of ≥ 2 trees), a ``mean`` row (mean of the per-group ρ) and an ``all`` row (every
    tree, parameter counts ignored). The method predicts ρ < 0 (lower cost, higher Δm).
    ``column``: ``delta_m`` (first seed) or ``delta_m_mean`` (mean over seeds); the table's
    ``on`` column names it.
    """
    import pandas as pd

    done = table[np.isfinite(table[column].to_numpy(dtype=float))]
    rows = []
    for m in measures:
        col = f"cost_{m}"
        group_rho, dx, dy = [], [], []
        for params, g in done.groupby("params", sort=True):
            x = g[col].to_numpy(dtype=float)
            y = g[column].to_numpy(dtype=float)
            if len(g) >= 2:
                dx.extend(x - x.mean())
                dy.extend(y - y.mean())
            if len(g) >= 3:
                rho, p = _spearman(x, y)
                group_rho.append(rho)
                rows.append({"on": column, "measure": m, "group": f"params={int(params)}",
                             "params": int(params),
                             "n": len(g), "spearman": rho, "p_value": p})
        rho, p = _spearman(np.asarray(dx), np.asarray(dy))
        rows.append({"on": column, "measure": m, "group": "pooled", "params": None, "n": len(dx),
                     "spearman": rho, "p_value": p})
        finite = [r for r in group_rho if np.isfinite(r)]
        rows.append({"on": column, "measure": m, "group": "mean", "params": None, "n": len(finite),
                     "spearman": float(np.mean(finite)) if finite else float("nan"),
                     "p_value": float("nan")})
        rho, p = _spearman(done[col].to_numpy(dtype=float), done[column].to_numpy(dtype=float))
        rows.append({"on": column, "measure": m, "group": "all", "params": None, "n": len(done),
                     "spearman": rho, "p_value": p})
    return pd.DataFrame(rows, columns=["on", "measure", "group", "params", "n", "spearman",
                                       "p_value"])


def seed_noise(seeds: Any) -> Dict[str, float]:
    """Seed noise of Δm: ``sigma`` (pooled within-tree standard deviation over seeds, trees
    with ≥ 2 seeds), ``sigma_diff`` (σ·√2, the noise of a difference of two single-seed Δm),
    ``trees`` and ``runs`` counted."""
    var, dof, trees = 0.0, 0, 0
    for _, g in seeds.groupby("name"):
        v = g["delta_m"].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if len(v) >= 2:
            var += float(((v - v.mean()) ** 2).sum())
            dof += len(v) - 1
            trees += 1
    sigma = math.sqrt(var / dof) if dof else float("nan")
    return {"sigma": sigma, "sigma_diff": sigma * math.sqrt(2), "trees": trees,
            "runs": int(sum(np.isfinite(seeds["delta_m"].to_numpy(dtype=float))))}


def regret_table(space: Any, table: Any, affinities: Mapping[str, np.ndarray], shared_prefix: int,
                 random_draws: int = 20, noise: Optional[Mapping[str, float]] = None,
                 column: str = "delta_m") -> Any:
    """Per budget and strategy: the pick, its Δm and its regret (best Δm within budget − its Δm).

    Budgets are the distinct parameter counts of the trees. Strategies: :data:`STRATEGIES`,
    ``random`` (the random strategy, mean over ``random_draws`` seeds) and ``random_equal``
    (mean over every tree with the RSA pick's parameter count). Uses ``column``: the first
    seed's Δm (``delta_m``) or the mean over seeds (``delta_m_mean``); every tree must have it.
    ``sigma_diff`` is the seed noise of a difference of two such values.

    Raises:
        BranchnasError: when some tree has no Δm yet (train it first).
    """
    import pandas as pd

    from ..search import search

    dm = dict(zip(table["tree"], table[column].astype(float)))
    if not all(np.isfinite(v) for v in dm.values()):
        raise BranchnasError("regret needs every tree's Δm; some trees are not trained yet "
                             "(run the study to the end, then analyse again)")
    params = dict(zip(table["tree"], table["params"].astype(int)))
    names = dict(zip(table["tree"], table["name"]))
    fixed = space.tree_params(space.fully_shared_tree()) - sum(space.block_params)
    tasks = space.task_names
    sigma_diff = (noise or {}).get("sigma_diff", float("nan"))
    if column == "delta_m_mean":  # a mean over n seeds: noise / sqrt(n)
        sigma_diff /= math.sqrt(float(table["n_seeds"].min()))

    def pick(strategy: str, measure: str, budget: int, seed: int = 0) -> Tree:
        res = search(affinities[measure], tasks, space.block_params, budget=budget,
                     strategy=strategy, fixed_params=fixed, shared_prefix=shared_prefix, seed=seed)
        return res.best.tree

    rows = []
    for budget in sorted(set(params.values())):
        feasible = [t for t, p in params.items() if p <= budget]
        best = max(feasible, key=lambda t: dm[t])
        base = {"on": column, "budget": budget, "n_feasible": len(feasible), "best": names[best],
                "best_delta_m": dm[best], "sigma_diff": sigma_diff}
        rsa_pick = None
        for label, strategy, measure in STRATEGIES:
            if measure not in affinities:
                continue
            t = pick(strategy, measure, budget).dumps()
            rsa_pick = t if label == "rsa" else rsa_pick
            rows.append({**base, "strategy": label, "pick": names[t], "pick_params": params[t],
                         "pick_delta_m": dm[t], "regret": dm[best] - dm[t], "n_picks": 1})
        draws = [pick("random", "rsa" if "rsa" in affinities else next(iter(affinities)),
                      budget, seed).dumps() for seed in range(random_draws)]
        rows.append({**base, "strategy": "random", "pick": "", "pick_params":
                     float(np.mean([params[t] for t in draws])),
                     "pick_delta_m": float(np.mean([dm[t] for t in draws])),
                     "regret": float(np.mean([dm[best] - dm[t] for t in draws])),
                     "n_picks": len(draws)})
        if rsa_pick is not None:
            same = [t for t in feasible if params[t] == params[rsa_pick]]
            rows.append({**base, "strategy": "random_equal", "pick": "", "pick_params":
                         params[rsa_pick], "pick_delta_m": float(np.mean([dm[t] for t in same])),
                         "regret": float(np.mean([dm[best] - dm[t] for t in same])),
                         "n_picks": len(same)})
    cols = ["on", "budget", "n_feasible", "strategy", "pick", "pick_params", "pick_delta_m", "best",
            "best_delta_m", "regret", "n_picks", "sigma_diff"]
    return pd.DataFrame(rows, columns=cols)


def analyse(space: Any, table: Any, seeds: Any, affinities: Mapping[str, np.ndarray],
            shared_prefix: int, random_draws: int = 20) -> Dict[str, Any]:
    """Correlation, noise and (when every tree has a Δm) regret tables of a study.

    Everything is on the primary-measure Δm (``delta_m``, and ``delta_m_mean`` when every tree
    has every seed); the correlation is also given on the all-metrics Δm (``delta_m_all``) as
    the second figure."""
    import pandas as pd

    noise = seed_noise(seeds)
    columns = ["delta_m"]
    n = table["n_seeds"].to_numpy()
    if len(n) and n.min() > 1 and n.min() == n.max():  # every tree has every seed
        columns.append("delta_m_mean")
    corr_columns = columns + (["delta_m_all"] if "delta_m_all" in table else [])
    corr = pd.concat([correlation_table(table, list(affinities), c) for c in corr_columns],
                     ignore_index=True)
    out: Dict[str, Any] = {"correlation": corr, "noise": noise, "regret": None}
    if np.isfinite(table["delta_m"].to_numpy(dtype=float)).all():
        out["regret"] = pd.concat(
            [regret_table(space, table, affinities, shared_prefix, random_draws, noise, c)
             for c in columns], ignore_index=True)
    return out


# ---------------------------------------------------------------------------- plots


def cost_vs_delta_m_data(table: Any, measure: str, column: Optional[str] = None) -> Dict[str, Any]:
    """Plain data of the cost-vs-Δm scatter: per parameter count, the trees' costs and Δm
    (``column``; default: the mean over seeds when every tree has several, else the first
    seed's), with the standard deviation over seeds where several were trained."""
    n = table["n_seeds"].to_numpy()
    if column is None:
        column = "delta_m_mean" if len(n) and n.min() > 1 else "delta_m"
    done = table[np.isfinite(table[column].to_numpy(dtype=float))]
    groups = []
    for params, g in done.groupby("params", sort=True):
        std = g["delta_m_std"].fillna(0.0) if column == "delta_m_mean" else 0.0 * g["params"]
        groups.append({"params": int(params), "cost": g[f"cost_{measure}"].tolist(),
                       "delta_m": g[column].tolist(), "names": g["name"].tolist(),
                       "std": std.tolist(), "n_seeds": g["n_seeds"].tolist()})
    return {"measure": measure, "column": column, "groups": groups}


def plot_cost_vs_delta_m(data: Mapping[str, Any], ax: Any = None) -> Any:
    """Draw :func:`cost_vs_delta_m_data` into ``ax`` (a new figure when None); returns it.

    Trees of equal parameter count share a colour and are joined in cost order.
    """
    import matplotlib

    if ax is None:
        ax = agg_figure(figsize=(6, 4.5)).subplots()
    cmap = matplotlib.colormaps["viridis"]
    n = max(1, len(data["groups"]) - 1)
    for i, g in enumerate(data["groups"]):
        colour = cmap(i / n)
        order = np.argsort(g["cost"])
        x = np.asarray(g["cost"])[order]
        ax.plot(x, np.asarray(g["delta_m"])[order], "-o", color=colour, ms=5, lw=0.8,
                label=f"{g['params'] / 1e3:.0f}k")
        spread = [j for j in range(len(x)) if g["std"][j] > 0]
        if spread:
            ax.errorbar([g["cost"][j] for j in spread], [g["delta_m"][j] for j in spread],
                        yerr=[g["std"][j] for j in spread], fmt="none", ecolor=colour,
                        capsize=3, lw=0.8, alpha=0.6)
    ax.set_xlabel(f"clustering cost ({data['measure'].upper()})")
    mean = data.get("column") == "delta_m_mean"
    ax.set_ylabel("Δm (%), mean ± std over seeds" if mean else "Δm (%), first seed")
    ax.set_title(f"{data['measure'].upper()} cost vs Δm (colour: parameters)")
    ax.legend(fontsize=7, ncol=2, title="params", title_fontsize=7)
    ax.grid(alpha=0.3)
    return ax


def regret_plot_data(regret: Any, on: Optional[str] = None) -> Dict[str, Any]:
    """Plain data of the regret bars: budgets, strategies and regret[strategy][budget].

    ``on``: which Δm the regret used (``delta_m`` or ``delta_m_mean``); default: the mean
    over seeds when the table has it, else the first seed.
    """
    if on is None:
        on = "delta_m_mean" if (regret["on"] == "delta_m_mean").any() else "delta_m"
    regret = regret[regret["on"] == on]
    budgets = sorted(regret["budget"].unique().tolist())
    strategies = list(dict.fromkeys(regret["strategy"].tolist()))
    values = {s: [float(regret[(regret.strategy == s) & (regret.budget == b)]["regret"].iloc[0])
                  if ((regret.strategy == s) & (regret.budget == b)).any() else float("nan")
                  for b in budgets] for s in strategies}
    sigma = float(regret["sigma_diff"].iloc[0]) if len(regret) else float("nan")
    return {"budgets": budgets, "strategies": strategies, "regret": values, "sigma_diff": sigma,
            "on": on}


def plot_regret(data: Mapping[str, Any], ax: Any = None) -> Any:
    """Draw :func:`regret_plot_data` as grouped bars per budget with the seed-noise band."""
    if ax is None:
        ax = agg_figure(figsize=(8, 4)).subplots()
    budgets, strategies = data["budgets"], data["strategies"]
    width = 0.8 / max(1, len(strategies))
    x = np.arange(len(budgets))
    for i, s in enumerate(strategies):
        ax.bar(x + (i - (len(strategies) - 1) / 2) * width, data["regret"][s], width, label=s)
    if np.isfinite(data["sigma_diff"]):
        ax.axhspan(0, data["sigma_diff"], color="grey", alpha=0.2,
                   label="seed noise of a difference of two such Δm")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{b / 1e3:.0f}k" for b in budgets], rotation=45, fontsize=8)
    ax.set_xlabel("parameter budget")
    what = "mean over seeds" if data.get("on") == "delta_m_mean" else "first seed"
    ax.set_ylabel(f"regret (pp of Δm, {what})")
    ax.set_title("regret = best Δm within budget − Δm of the pick")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return ax


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


def _md_table(df: Any) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def learning_curves(out: PathLike, names: Sequence[str], seed: int) -> Dict[str, Any]:
    """Held-out score per epoch of every study run of ``seed`` (from its ``metrics.jsonl``), and
    each run's stopping facts: the plain data of :func:`plot_learning_curves`.

    Returns:
        ``{"seed", "runs": {name: {"epochs": [...], "score": [...], "best_epoch",
        "stop_reason"}}}``; runs without a metrics file are left out.
    """
    runs: Dict[str, Any] = {}
    for name in names:
        run = RunLayout(out).tree(_run_name(name, seed))
        path = run / "metrics.jsonl"
        if not path.is_file():
            continue
        epochs, score = [], []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("holdout_score") is not None:
                epochs.append(int(rec["epoch"]))
                score.append(float(rec["holdout_score"]))
        facts: Dict[str, Any] = {}
        if RunDir(run).is_done():
            facts = read_result(run).extra
        runs[name] = {"epochs": epochs, "score": score, "best_epoch": facts.get("best_epoch"),
                      "stop_reason": facts.get("stop_reason")}
    return {"seed": seed, "runs": runs}


def plot_learning_curves(data: Mapping[str, Any], ax: Any = None) -> Any:
    """Draw :func:`learning_curves` (held-out score vs epoch, best epoch marked); returns the Axes."""
    if ax is None:
        ax = agg_figure(figsize=(7, 4.5)).subplots()
    for r in data["runs"].values():
        if not r["epochs"]:
            continue
        line, = ax.plot(r["epochs"], r["score"], lw=0.8, alpha=0.7)
        if r["best_epoch"] in r["epochs"]:
            i = r["epochs"].index(r["best_epoch"])
            ax.plot([r["best_epoch"]], [r["score"][i]], "o", ms=4, color=line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out score (Δm % vs the first held-out evaluation)")
    ax.set_title(f"convergence of every tree, seed {data['seed']} (dot: best epoch, restored)")
    ax.grid(alpha=0.3)
    return ax


def _epochs_md(seeds: Any, singles: Optional[Mapping[str, Mapping[str, Any]]]) -> List[str]:
    """Markdown lines: how long the runs trained and why they stopped."""
    lines = ["## Convergence (epochs trained, why runs stopped)", ""]
    if singles:
        lines += ["single-task networks: " + "; ".join(
            f"{t} {f.get('epochs')} epochs ({f.get('stop_reason')}, best {f.get('best_epoch')})"
            for t, f in singles.items()), ""]
    if "epochs" in seeds and len(seeds):
        ep = seeds["epochs"].dropna().astype(int)
        if len(ep):
            lines.append(f"tree runs: epochs min {ep.min()}, median {int(ep.median())}, max {ep.max()} "
                         f"over {len(ep)} runs")
    if "stop_reason" in seeds and len(seeds):
        counts = seeds["stop_reason"].fillna("unknown").value_counts()
        lines.append("stop reasons: " + ", ".join(f"{k} {int(v)}" for k, v in counts.items()))
    return lines + [""]


def write_validation(results_dir: PathLike, table: Any, seeds: Any, analysis: Mapping[str, Any],
                     setup: Mapping[str, Any]) -> List[Path]:
    """Write the CSV tables, the PNG plots and ``SUMMARY.md`` (numbers only) into ``results_dir``."""
    files = ValidationFiles(results_dir)
    d = files.root
    d.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in (("trees", table), ("seeds", seeds), ("correlation", analysis["correlation"]),
                     ("regret", analysis["regret"])):
        if df is not None:
            df.to_csv(files.table(name), index=False, float_format="%.6g")
            written.append(files.table(name))
    measures = [c[len("cost_"):] for c in table.columns if c.startswith("cost_")]
    fig = agg_figure(figsize=(6 * len(measures), 4.5))
    axes = fig.subplots(1, len(measures), squeeze=False)
    for ax, m in zip(axes[0], measures):
        plot_cost_vs_delta_m(cost_vs_delta_m_data(table, m), ax)
    fig.tight_layout()
    fig.savefig(files.cost_vs_delta_m_png, dpi=120)
    written.append(files.cost_vs_delta_m_png)
    if analysis["regret"] is not None:
        ons = list(dict.fromkeys(analysis["regret"]["on"]))
        fig = agg_figure(figsize=(9, 4 * len(ons)))
        axes = fig.subplots(len(ons), 1, squeeze=False)
        for ax, on in zip(axes[:, 0], ons):
            plot_regret(regret_plot_data(analysis["regret"], on), ax)
        fig.tight_layout()
        fig.savefig(files.regret_png, dpi=120)
        written.append(files.regret_png)
    if analysis.get("curves") and analysis["curves"]["runs"]:
        fig = agg_figure(figsize=(8, 4.5))
        plot_learning_curves(analysis["curves"], fig.subplots())
        fig.tight_layout()
        curves_png = files.root / "learning_curves.png"
        fig.savefig(curves_png, dpi=120)
        written.append(curves_png)
    noise = analysis["noise"]
    lines = ["# Validation study: numbers (generated by `branchnas validate`)", "",
             "```", json.dumps(dict(setup), indent=2, default=str), "```", "",
             (f"Trees trained (first seed): {int(np.isfinite(table['delta_m']).sum())} of "
              f"{len(table)}; seed noise of Δm: σ = {_fmt(noise['sigma'])} pp over "
              f"{noise['trees']} trees ({noise['runs']} runs); σ√2 = {_fmt(noise['sigma_diff'])} pp."),
             "",
             *_epochs_md(seeds, analysis.get("singles")),
             "## Spearman ρ(cost, Δm) (method predicts ρ < 0)", "",
             _md_table(analysis["correlation"]), ""]
    if analysis["regret"] is not None:
        r = analysis["regret"]
        keys = ["on", "strategy"]
        mean = r.groupby(keys, sort=False)["regret"].agg(["mean", "max"]).reset_index()
        zero = r.groupby(keys, sort=False)["regret"].apply(lambda s: int((s == 0).sum()))
        mean["budgets_with_zero_regret"] = [int(zero[(o, s)]) for o, s in
                                            zip(mean["on"], mean["strategy"])]
        mean["sigma_diff"] = [float(r[r["on"] == o]["sigma_diff"].iloc[0]) for o in mean["on"]]
        lines += ["## Regret per strategy over budgets (pp of Δm)", "", _md_table(mean), "",
                  "## Regret per budget", "",
                  _md_table(r[["on", "budget", "strategy", "pick", "pick_delta_m", "best",
                               "best_delta_m", "regret"]]), ""]
    lines += ["## Trees", "", _md_table(table[["name", "groups", "params"] + [
        f"cost_{m}" for m in measures] + [c for c in ("delta_m", "delta_m_mean", "delta_m_std", "n_seeds",
                                                     "delta_m_all", "epochs") if c in table]]), ""]
    atomic_write_text(files.summary_md, "\n".join(lines))
    written.append(files.summary_md)
    return written


def run_validation(cfg: ValidationConfig) -> Dict[str, Any]:
    """Train every tree of the study (cached), analyse, and write the results.

    Returns:
        ``{"out", "results_dir", "trees", "seeds", "correlation", "regret", "noise", "files",
        "setup"}`` (pandas tables where tables).

    Raises:
        BranchnasError: for bad settings (space, tasks, profile, prefix), or a run directory
            holding another study's tree.
    """
    from ..affinity import load_affinity
    from ..search import count_trees
    from .affinity import affinity_stage
    from .stages import run_singles, single_metrics

    # resolved once (defaults < space < profile < tuned < command line), checked before any work
    space = study_space(cfg)
    if getattr(space, "shared_prefix", 0) > cfg.shared_prefix:
        # a space that always shares its first blocks (the paper's Cityscapes: block 1) is
        # studied the same way: no tree branches there
        log.info("validation: the space shares its first %d block(s); --shared-prefix %d raised to it",
                 space.shared_prefix, cfg.shared_prefix)
        cfg = replace(cfg, shared_prefix=space.shared_prefix)
    if not cfg.seeds:
        raise BranchnasError("give at least one seed (e.g. --seeds 0 1 2)")
    if cfg.random_draws < 1:
        raise BranchnasError(f"random_draws must be >= 1, got {cfg.random_draws}; give --random-draws 1 or more")
    spec = resolve_run(space, profile=cfg.profile, tasks=space.task_names, out=cfg.out,
                       overrides=cfg.training,
                       device=cfg.device, force=cfg.force, out_kind="validation")
    cfg.executor.validate()
    out, layout = spec.out, spec.layout
    seed0 = cfg.seeds[0]
    config = spec.train_config(seed=seed0)  # the affinity's and the reference's
    singles_config = {t: spec.train_config(f"single:{t}", seed=seed0) for t in space.task_names}

    def config_for(tree: Tree, seed: int) -> Any:
        return spec.train_config(tree, seed=seed)  # tuned settings of the tree, if any

    if cfg.noise_trees and cfg.noise_trees != ["all"]:  # names are known before any training
        names = study_trees(space, cfg.shared_prefix)
        unknown = [n for n in cfg.noise_trees if n not in names]
        if unknown:
            raise BranchnasError(f"unknown noise trees {unknown}; names run t000..t{len(names) - 1:03d} "
                                 "(or give `all`)")
    k = cfg.k or get_profile(cfg.profile).get("k", DEFAULT_K)
    if k < MIN_K:
        raise BranchnasError(f"k (held-out images for the affinity) must be >= {MIN_K}, got {k}")
    out.mkdir(parents=True, exist_ok=True)
    if spec.force and cfg.train:
        layout.clear_outputs()
    n_trees = count_trees(len(space.task_names), space.depth, cfg.shared_prefix)
    log.info("validation: %d tasks, %d trees, seeds %s, out %s", len(space.task_names), n_trees,
             list(cfg.seeds), out)
    t0 = time.perf_counter()
    # every training job (single-task networks, then the trees) goes through the executor
    executor = cfg.executor.create() if cfg.train else None
    if executor is not None:
        from .executor import run_all
        from .executors import single_job

        run_all(executor, [single_job(space, t, singles_config[t], out, spec.device)
                           for t in space.task_names])
    measures = [m for m in dict.fromkeys(s[2] for s in STRATEGIES)]
    affinities = {}
    for m in measures:
        path = affinity_stage(space, out, config, measure=m, k=k, device=spec.device) if cfg.train \
            else layout.affinity(m)
        affinities[m] = load_affinity(path).affinity
    trees = study_trees(space, cfg.shared_prefix)
    if cfg.noise_trees == ["all"]:
        subset = list(trees)
    elif cfg.noise_trees:
        subset = list(cfg.noise_trees)
    else:
        subset = noise_subset(space, trees, affinities["rsa"])
    unknown = [n for n in subset if n not in trees]
    if unknown:
        raise BranchnasError(f"unknown noise trees {unknown}; names run t000..t{len(trees) - 1:03d}")
    if cfg.train:
        jobs_list = [(n, t, cfg.seeds[0]) for n, t in trees.items()]
        jobs_list += [(n, trees[n], s) for s in cfg.seeds[1:] for n in subset]
        _train_all(space, jobs_list, out, config_for, executor, spec.device)
    if executor is not None:
        executor.shutdown()
    reference = single_metrics(space, out, config, device=spec.device)
    table, seeds = trees_table(space, trees, out, affinities, cfg.seeds, reference)
    analysis = analyse(space, table, seeds, affinities, cfg.shared_prefix, cfg.random_draws)
    analysis["curves"] = learning_curves(out, list(trees), seed0)
    analysis["singles"] = {t: r.extra for t, r in run_singles(
        space, out, config, device=spec.device, check=False).items()}
    setup = {"space": space.name, "tasks": space.task_names, "shared_prefix": cfg.shared_prefix,
             "depth": space.depth, "trees": len(trees), "profile": cfg.profile,
             "dataset": space.dataset_kwargs, "input_size": list(space.input_size),
             "training": {k_: v for k_, v in config.to_dict().items()
                          if k_ in ("optimizer", "lr", "epochs", "batch_size", "schedule",
                                    "weight_decay", "weighting", "patience", "holdout_fraction",
                                    "monitor", "min_delta")},
             "affinity_k": k, "seeds": list(cfg.seeds), "noise_trees": subset,
             "random_draws": cfg.random_draws, "out": str(out),
             "train_seconds_this_call": round(time.perf_counter() - t0, 1)}
    files = write_validation(cfg.results_dir, table, seeds, analysis, setup)
    return {"out": str(out), "results_dir": str(cfg.results_dir), "trees": table, "seeds": seeds,
            "correlation": analysis["correlation"], "regret": analysis["regret"],
            "noise": analysis["noise"], "files": [str(f) for f in files], "setup": setup}


def format_validation(summary: Mapping[str, Any]) -> str:
    """The lines ``branchnas validate`` prints: noise, pooled/all ρ, mean regret, files."""
    noise = summary["noise"]
    setup = summary["setup"]
    lines = [f"validation of {setup['space']} ({', '.join(setup['tasks'])}; "
             f"{setup['trees']} trees, profile {setup['profile']}): runs in {summary['out']}",
             f"seed noise of Δm: σ = {_fmt(noise['sigma'])} pp ({noise['trees']} trees with "
             f"several seeds, {noise['runs']} runs)", "",
             "Spearman ρ(cost, Δm) (the method predicts ρ < 0):"]
    corr = summary["correlation"]
    for _, r in corr[corr["group"].isin(["pooled", "all"])].iterrows():
        lines.append(f"  {r['on']:<13}{r['measure']:<5}{r['group']:<8}n={int(r['n']):<4}"
                     f"ρ={_fmt(r['spearman']):>7}  p={r['p_value']:.2g}")
    if summary["regret"] is not None:
        lines += ["", "mean regret over budgets (pp of Δm; best within budget − pick):"]
        reg = summary["regret"]
        for (on, strategy), g in reg.groupby(["on", "strategy"], sort=False):
            lines.append(f"  {on:<13}{strategy:<13}{_fmt(float(g['regret'].mean())):>7}"
                         f"  max {_fmt(float(g['regret'].max()))}"
                         f"  (noise of a difference {_fmt(float(g['sigma_diff'].iloc[0]))})")
    else:
        lines += ["", "regret: not every tree is trained yet (run again to finish)"]
    lines += ["", f"tables and plots in {summary['results_dir']}"]
    return "\n".join(lines)
