"""The whole pipeline (``branchnas run`` / ``branchnas demo``): every stage, cached and resumable.

single-task networks → affinity → search per budget → the recommended trees → baselines →
Pareto plot → report. Each stage lives in its own run directory under ``out`` and is skipped
when done, resumed from its checkpoint when interrupted; so a killed run, run again, ends with
the same results as an uninterrupted one.

Profiles (:data:`PROFILES`) scale the work: ``full`` uses the space's own settings, ``demo``
finishes in minutes on two CPU cores, ``tiny`` in seconds (for tests).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import BranchnasError
from ..training import TrainConfig
from ..training.rundir import atomic_write_text
from .affinity import affinity_stage
from .executors import baseline_job, single_job, tree_job
from .pareto import write_pareto
from .results import ModelResult, results_table
from .queue import close_queue, run_jobs
from .stages import run_baseline, run_singles, run_tree
from .tune import tuned_overrides

__all__ = ["PROFILES", "PipelineConfig", "profile_space", "default_budgets", "run_pipeline",
           "format_summary"]

log = logging.getLogger(__name__)

# Each profile overrides parts of the search space and the pipeline's own settings.
# Small profiles train on one thread: the small CNN's convolutions are too small to gain from
# more, and on a busy machine extra threads cost many times their work in contention.
#   dataset / input_size: merged into the space ([dataset] table, [input] size)
#   training: merged over the space's [training] table (then command-line overrides)
#   tasks: the tasks used when none are given (default: all of the space's)
#   k: held-out images for affinity; budgets: how many budgets when none are given
#   baselines: which baselines to train
PROFILES: Dict[str, Dict[str, Any]] = {
    "full": {"k": 500, "budgets": 3,
             "baselines": ["shared", "cross_stitch", "mtan", "nddr"]},
    "demo": {"tasks": ["semseg", "depth", "normals", "scene"],
             "dataset": {"size": 256, "resolution": [32, 32]}, "input_size": [32, 32],
             "training": {"epochs": 3, "batch_size": 32, "threads": 1}, "k": 128, "budgets": 3,
             "baselines": ["shared", "cross_stitch", "mtan", "nddr"]},
    "tiny": {"dataset": {"size": 12, "resolution": [32, 32]}, "input_size": [32, 32],
             "training": {"epochs": 2, "batch_size": 6, "eval_batch_size": 12, "threads": 1}, "k": 8,
             "budgets": 2, "baselines": ["shared"]},
}


@dataclass
class PipelineConfig:
    """What ``branchnas run`` does; defaults come from the profile."""

    space: str = "scenes"  # search-space name or TOML path
    out: Optional[str] = None  # output root (default: runs/<space>[-<profile>])
    profile: str = "full"  # a key of PROFILES
    tasks: Optional[List[str]] = None  # a subset of the space's tasks (default: all)
    budgets: Optional[List[str]] = None  # parameter budgets ("1.2M", ...); default: evenly spaced
    strategy: str = "auto"  # search strategy; auto = exact up to 10 tasks, beam beyond
    measure: str = "rsa"  # affinity measure
    k: Optional[int] = None  # held-out images for affinity (default: the profile's)
    baselines: Optional[List[str]] = None  # default: the profile's
    device: Optional[str] = None  # None: CUDA when available
    training: Dict[str, Any] = field(default_factory=dict)  # overrides of the training config
    storage: Optional[str] = None  # job-queue URL: training jobs go to `branchnas worker`s
    study: str = "branchnas"  # the queue's study name on that storage


def profile_space(space: Any, profile: str, tasks: Optional[Sequence[str]] = None) -> Any:
    """The space with the profile's dataset/input overrides applied (and restricted to ``tasks``)."""
    from ..spaces import SearchSpace

    if profile not in PROFILES:
        raise BranchnasError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    prof = PROFILES[profile]
    if "dataset" in prof or "input_size" in prof:
        d = space.to_dict()
        d["dataset"] = {**d["dataset"], **prof.get("dataset", {})}
        if "input_size" in prof:
            d["input"] = {**d["input"], "size": list(prof["input_size"])}
        space = SearchSpace.from_dict(d, name=space.name, source=space.source)
    return space.subset(list(tasks)) if tasks else space


def default_budgets(space: Any, n: int) -> List[int]:
    """``n`` parameter budgets evenly spaced strictly between fully shared and all single-task."""
    lo = space.tree_params(space.fully_shared_tree())
    hi = space.tree_params(space.single_task_tree())
    return [int(lo + (hi - lo) * i / (n + 1)) for i in range(1, n + 1)]


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def run_pipeline(cfg: PipelineConfig) -> Dict[str, Any]:
    """Run every stage; returns the summary (also written to ``<out>/summary.json``).

    Raises:
        BranchnasError: for bad settings (unknown space, profile, budget, baseline, ...).
    """
    from ..search import format_budget, parse_budget
    from ..spaces import load_space
    from .recommend import recommend

    base = load_space(cfg.space)
    prof = PROFILES.get(cfg.profile, {})
    space = profile_space(base, cfg.profile, cfg.tasks or prof.get("tasks"))
    out = Path(cfg.out) if cfg.out else Path("runs") / (
        space.name if cfg.profile == "full" else f"{space.name}-{cfg.profile}")
    space_training = {**space.training, **prof.get("training", {})}
    config = TrainConfig.from_sources(space_training, cfg.training)
    baselines = cfg.baselines if cfg.baselines is not None else prof["baselines"]
    budgets = [parse_budget(b) for b in cfg.budgets] if cfg.budgets else default_budgets(space, prof["budgets"])
    k = cfg.k or prof["k"]
    cheapest = space.tree_params(space.fully_shared_tree())
    if min(budgets) < cheapest:
        raise BranchnasError(
            f"budget {format_budget(min(budgets))} params is below the cheapest tree of {space.name} "
            f"(fully shared, {format_budget(cheapest)}); give budgets of at least {cheapest}")
    out.mkdir(parents=True, exist_ok=True)  # only once the settings are known to be valid
    _write_json(out / "pipeline.json", {**asdict(cfg), "resolved_budgets": budgets, "k": k,
                                        "space_resolved": space.to_dict()})

    stages = 5 + len(budgets) + len(baselines)
    step = iter(range(1, stages + 1))

    def stage(msg: str) -> None:
        log.info("[stage %d/%d] %s", next(step), stages, msg)

    def config_for(model: str) -> TrainConfig:
        # tuned settings (`branchnas tune --out <out>`) under the command line's
        return TrainConfig.from_sources(space_training, {**tuned_overrides(out, space, model), **cfg.training})

    def through_queue(specs: List[Dict[str, Any]]) -> None:
        # With a queue, workers train; the in-process stages below then find the runs done.
        if cfg.storage and specs:
            run_jobs(specs, cfg.storage, cfg.study)

    stage(f"single-task networks for {len(space.task_names)} tasks")
    through_queue([single_job(space, t, config_for(f"single:{t}"), out, cfg.device) for t in space.task_names])
    singles = {t: run_singles(space, out, config_for(f"single:{t}"), tasks=[t], device=cfg.device)[t]
               for t in space.task_names}

    stage(f"affinity ({cfg.measure}, K={k})")
    aff_path = affinity_stage(space, out, config, measure=cfg.measure, k=k, device=cfg.device)

    stage(f"search for {len(budgets)} budget(s)")
    picks: List[Dict[str, Any]] = []
    for b in budgets:
        rec = recommend(space=space, affinity=aff_path, budget=b, strategy=cfg.strategy, top_k=1)
        best = rec.result.best
        picks.append({"budget": b, "tree": best.tree, "cost": best.cost, "params": best.params,
                      "flops": best.flops, "note": rec.result.note, "strategy": rec.result.strategy})
    _write_json(out / "search.json", [{**p, "tree": p["tree"].to_json()} for p in picks])

    # One run per distinct tree (two budgets may pick the same), its tree file beside it.
    runs: Dict[Any, Dict[str, Any]] = {}
    for p in picks:
        if p["tree"] not in runs:
            name = f"budget-{format_budget(p['budget'])}"
            tree_file = out / "search" / f"{name}.json"
            tree_file.parent.mkdir(exist_ok=True)
            p["tree"].save(tree_file)
            runs[p["tree"]] = {"name": name, "config": config_for(f"tree:{tree_file}"),
                               "extra": {"budget": p["budget"], "cost": p["cost"], "strategy": p["strategy"]}}
    through_queue([tree_job(space, t, r["name"], r["config"], out, cfg.device, r["extra"]) for t, r in runs.items()]
                  + [baseline_job(space, n, config_for(n), out, cfg.device) for n in baselines])
    trained: Dict[Any, ModelResult] = {}
    for p in picks:
        stage(f"tree for budget {format_budget(p['budget'])}")
        r = runs[p["tree"]]
        if p["tree"] not in trained:
            trained[p["tree"]] = run_tree(space, p["tree"], out, r["config"], r["name"], device=cfg.device,
                                          extra=r["extra"])
        p["result"] = trained[p["tree"]]

    results: Dict[str, ModelResult] = {}
    for name in baselines:
        stage(f"baseline {name}")
        results[name] = run_baseline(space, name, out, config_for(name), device=cfg.device)
    if cfg.storage:
        close_queue(cfg.storage, cfg.study)

    stage("Pareto plot")
    path = [{"params": p["result"].params, "delta_m": p["result"].delta_m} for p in picks
            if p["result"].delta_m is not None]
    table = results_table(out, space=space.name)
    png, csv = write_pareto(table, out / "plots", budget_path=path,
                            title=f"{space.name}: parameters vs Δm")

    stage("report")
    from .report import write_report

    summary = {
        "space": space.name, "profile": cfg.profile, "out": str(out),
        "affinity": str(aff_path), "pareto_png": str(png), "pareto_csv": str(csv),
        "single_params": sum(r.params for r in singles.values()),
        "recommended": [{"budget": p["budget"], "tree": p["tree"].to_json(), "ascii": p["tree"].ascii(),
                         "cost": p["cost"], "params": p["params"], "flops": p["flops"],
                         "delta_m": p["result"].delta_m, "run": p["result"].name, "note": p["note"]}
                        for p in picks],
        "baselines": {n: {"params": r.params, "delta_m": r.delta_m} for n, r in results.items()},
    }
    _write_json(out / "summary.json", summary)
    html, md = write_report(out)
    summary.update({"report_html": str(html), "report_md": str(md)})
    _write_json(out / "summary.json", summary)
    return summary


def format_summary(summary: Dict[str, Any]) -> str:
    """The table printed at the end of a run: recommended tree per budget against the baselines."""
    from ..search import format_budget

    def dm(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:+.2f}%"

    lines = [f"space {summary['space']} (profile {summary['profile']}): results in {summary['out']}", "",
             f"{'model':<28}{'params':>10}{'Δm':>10}   tree / note"]
    lines.append(f"{'single-task networks':<28}{format_budget(summary['single_params']):>10}{dm(0.0):>10}")
    for name, b in summary["baselines"].items():
        lines.append(f"{name:<28}{format_budget(b['params']):>10}{dm(b['delta_m']):>10}")
    for r in summary["recommended"]:
        groups = " | ".join("/".join(",".join(g) for g in depth) for depth in r["tree"]["groupings"][-1:])
        lines.append(f"{'recommended @ ' + format_budget(r['budget']):<28}{format_budget(r['params']):>10}"
                     f"{dm(r['delta_m']):>10}   last block: {groups}")
    lines += ["", "recommended architectures:"]
    for r in summary["recommended"]:
        lines.append(f"  budget {format_budget(r['budget'])} (cost {r['cost']:.4f}):")
        lines.extend("    " + line for line in r["ascii"].splitlines())
    lines += ["", f"Pareto plot: {summary['pareto_png']}", f"report:      {summary.get('report_html')}"]
    return "\n".join(lines)
