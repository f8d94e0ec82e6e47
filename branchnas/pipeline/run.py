"""The whole pipeline (``branchnas run`` / ``branchnas demo``): every stage, cached and resumable.

single-task networks → affinity → search per budget → the recommended trees → baselines →
Pareto plot → report. Each stage lives in its own run directory under ``out`` and is skipped
when done, resumed from its checkpoint when interrupted; so a killed run, run again, ends with
the same results as an uninterrupted one.

Profiles (:data:`~branchnas.pipeline.resolve.PROFILES`) scale the work: ``full`` uses the
space's own settings, ``demo`` finishes in minutes on two CPU cores, ``tiny`` in seconds (for
tests). Every option is resolved and checked first, by
:func:`~branchnas.pipeline.resolve.resolve_pipeline`; every path comes from the run's
:class:`~branchnas.pipeline.layout.RunLayout`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..training import TrainConfig
from ..training.rundir import atomic_write_text
from .affinity import affinity_stage
from .executor import ExecutorConfig, abandon, gather, run_all, submit_all
from .executors import baseline_job, single_job, tree_job
from .pareto import write_pareto
from .results import ModelResult, model_result, results_table
from .stages import check_reusable
from .resolve import (DEFAULT_MEASURE, DEFAULT_PROFILE, DEFAULT_SPACE, DEFAULT_STRATEGY, PROFILES,
                      default_budgets, profile_space, resolve_pipeline)

__all__ = ["PROFILES", "PipelineConfig", "profile_space", "default_budgets", "run_pipeline",
           "format_summary", "displayed_summary"]

log = logging.getLogger(__name__)

@dataclass
class PipelineConfig:
    """What ``branchnas run`` does; defaults come from the profile."""

    space: str = DEFAULT_SPACE  # search-space name or TOML path
    out: Optional[str] = None  # output root (default: runs/<space>[-<profile>])
    profile: str = DEFAULT_PROFILE  # a key of PROFILES
    tasks: Optional[List[str]] = None  # a subset of the space's tasks (default: all)
    budgets: Optional[List[str]] = None  # parameter budgets ("1.2M", ...); default: evenly spaced
    strategy: str = DEFAULT_STRATEGY  # search strategy; auto = an exact strategy where it finishes in seconds, local search beyond
    measure: str = DEFAULT_MEASURE  # affinity measure
    k: Optional[int] = None  # held-out images for affinity (default: the profile's)
    baselines: Optional[List[str]] = None  # default: the profile's
    device: Optional[str] = None  # None: CUDA when available
    training: Dict[str, Any] = field(default_factory=dict)  # overrides of the training config
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # where training jobs run
    force: bool = False  # retrain every stage: the run's cached work is removed first


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _tree_run_name(budget: int, format_budget: Any) -> str:
    return f"budget-{format_budget(budget)}"


def _check_done_runs(spec: Any, format_budget: Any) -> None:
    """Refuse (one line, naming the keys) any done run of this pipeline made with other
    settings: single-task networks, baselines, and the trees of these budgets."""
    from ..models.baselines import baseline_meta

    layout = spec.layout
    checks = [(layout.single(t), spec.train_config(f"single:{t}")) for t in spec.space.task_names]
    checks += [(layout.baseline(n), spec.train_config(n)) for n in spec.baselines
               if not baseline_meta(n).get("reuses_single")]  # those are the singles above
    for b in spec.budgets:
        name = _tree_run_name(b, format_budget)
        tree_file = layout.search_tree(name)
        checks.append((layout.tree(name),
                       spec.train_config(f"tree:{tree_file}" if tree_file.is_file() else None)))
    for run_dir, config in checks:
        check_reusable(run_dir, config)


def _affinity_and_search(spec: Any, cfg: PipelineConfig, stage: Any) -> Any:
    """The affinity, the search per budget and the recommended trees' run settings:
    ``(affinity path, picks, {tree: run})``."""
    from ..search import format_budget
    from .recommend import recommend

    space, layout, out, budgets, k = spec.space, spec.layout, spec.out, spec.budgets, spec.k
    stage(f"affinity ({cfg.measure}, K={k})")
    aff_path = affinity_stage(space, out, spec.train_config(), measure=cfg.measure, k=k,
                              device=cfg.device)

    stage(f"search for {len(budgets)} budget(s)")
    picks: List[Dict[str, Any]] = []
    for b in budgets:
        rec = recommend(space=space, affinity=aff_path, budget=b, strategy=cfg.strategy, top_k=1)
        best = rec.result.best
        picks.append({"budget": b, "tree": best.tree, "cost": best.cost, "params": best.params,
                      "flops": best.flops, "note": rec.result.note, "strategy": rec.result.strategy})
    _write_json(layout.search_json, [{**p, "tree": p["tree"].to_json()} for p in picks])

    # One run per distinct tree (two budgets may pick the same), its tree file beside it.
    runs: Dict[Any, Dict[str, Any]] = {}
    for p in picks:
        if p["tree"] not in runs:
            name = _tree_run_name(p["budget"], format_budget)
            tree_file = layout.search_tree(name)
            tree_file.parent.mkdir(exist_ok=True)
            p["tree"].save(tree_file)
            runs[p["tree"]] = {"name": name, "config": spec.train_config(f"tree:{tree_file}"),
                               "extra": {"budget": p["budget"], "cost": p["cost"], "strategy": p["strategy"]}}
    return aff_path, picks, runs


def run_pipeline(cfg: PipelineConfig) -> Dict[str, Any]:
    """Run every stage; returns the summary (also written to ``<out>/summary.json``).

    Raises:
        BranchnasError: for bad settings (unknown space, profile, budget, baseline, ...).
    """
    from ..search import format_budget

    spec = resolve_pipeline(cfg)  # every option checked before any work starts
    space, layout, out = spec.space, spec.layout, spec.out
    budgets, baselines, k = spec.budgets, spec.baselines, spec.k
    cfg.executor.validate()
    if spec.force:
        layout.clear_outputs()
    else:  # a done stage run with other settings is refused before anything is written
        _check_done_runs(spec, format_budget)
    out.mkdir(parents=True, exist_ok=True)  # only once the settings are known to be valid
    _write_json(layout.pipeline_json, {**asdict(cfg), "resolved_budgets": budgets, "k": k,
                                       "baselines_resolved": baselines,
                                       "space_resolved": space.to_dict()})

    stages = 5 + len(budgets) + len(baselines)
    step = iter(range(1, stages + 1))

    def stage(msg: str) -> None:
        log.info("[stage %d/%d] %s", next(step), stages, msg)

    def config_for(model: str) -> TrainConfig:
        # the resolver's order: space < profile < tuned (`branchnas tune --out <out>`) < command line
        return spec.train_config(model)

    # Every training job goes through the executor (in this process, local processes or Ray);
    # jobs whose run directory is done come back at once with their stored result. (Shut down
    # after the last training job; on an error the process's exit releases its workers.)
    executor = cfg.executor.create()

    # Every job needs the single-task networks done (they are its Δm reference). After them each
    # job is submitted as soon as its inputs exist, larger models first, so the workers are not
    # left idle while the affinity and the search run, nor behind one long job at the end: the
    # baselines started from the single-task networks (cross-stitch, NDDR-CNN) at once, then
    # the trees the search picked, then the baselines trained from scratch.
    from ..models.baselines import baseline_meta, baseline_params

    stage(f"single-task networks for {len(space.task_names)} tasks")
    done = run_all(executor, [single_job(space, t, config_for(f"single:{t}"), out, cfg.device)
                              for t in space.task_names])
    singles = {t: model_result(r) for t, r in zip(space.task_names, done)}

    def by_size(names: List[str]) -> List[str]:
        return sorted(names, key=lambda n: -baseline_params(n, space))

    from_singles = by_size([n for n in baselines if baseline_meta(n).get("init_from_single")])
    base_futures = dict(zip(from_singles, submit_all(
        executor, [baseline_job(space, n, config_for(n), out, cfg.device) for n in from_singles])))

    try:
        aff_path, picks, runs = _affinity_and_search(spec, cfg, stage)
    except Exception:  # (Ctrl-C reaches the workers too: their jobs checkpoint and stop)
        abandon(list(base_futures.values()))  # the baselines in flight end before this raises
        raise
    for p in picks:
        stage(f"tree for budget {format_budget(p['budget'])}: {runs[p['tree']]['name']}")
    for name in baselines:
        stage(f"baseline {name}")
    trees = sorted(runs, key=lambda t: -space.tree_params(t))
    tree_futures = submit_all(executor, [tree_job(space, t, runs[t]["name"], runs[t]["config"], out,
                                                  cfg.device, runs[t]["extra"]) for t in trees])
    rest = by_size([n for n in baselines if n not in base_futures])
    base_futures.update(zip(rest, submit_all(
        executor, [baseline_job(space, n, config_for(n), out, cfg.device) for n in rest])))
    done = gather(tree_futures + [base_futures[n] for n in baselines])
    trained: Dict[Any, ModelResult] = {t: model_result(r) for t, r in zip(trees, done)}
    for p in picks:
        p["result"] = trained[p["tree"]]
    results: Dict[str, ModelResult] = {n: model_result(r) for n, r in zip(baselines, done[len(trees):])}
    executor.shutdown()  # no training after this point

    stage("Pareto plot")
    path = [{"params": p["result"].params, "delta_m": p["result"].delta_m,
             "delta_m_all": p["result"].delta_m_all} for p in picks if p["result"].delta_m is not None]
    table = results_table(out, space=space.name)
    png, csv = write_pareto(table, layout.plots, budget_path=path,
                            title=f"{space.name}: parameters vs Δm")

    stage("report")
    from .demo import pipeline_notes
    from .report import write_report

    summary = {
        # paths relative to the run directory, so a moved or copied run still reports
        "space": space.name, "profile": spec.profile,
        "affinity": layout.relative(aff_path), "pareto_png": layout.relative(png),
        "pareto_csv": layout.relative(csv),
        "single_params": sum(r.params for r in singles.values()),
        "recommended": [{"budget": p["budget"], "tree": p["tree"].to_json(), "ascii": p["tree"].ascii(),
                         "cost": p["cost"], "params": p["params"], "flops": p["flops"],
                         "delta_m": p["result"].delta_m, "delta_m_all": p["result"].delta_m_all,
                         "epochs": p["result"].extra.get("epochs"), "run": p["result"].name,
                         "note": p["note"]}
                        for p in picks],
        "baselines": {n: {"params": r.params, "delta_m": r.delta_m, "delta_m_all": r.delta_m_all,
                          "epochs": r.extra.get("epochs")} for n, r in results.items()},
        "single_epochs": {t: r.extra.get("epochs") for t, r in singles.items()},
        "primary": {t.name: t.primary for t in space.tasks},
        # how to read the numbers, and whether the affinity shows the designed structure
        **pipeline_notes(space, aff_path, singles, results, layout),
    }
    _write_json(layout.summary_json, summary)
    html, md = write_report(out)
    summary.update({"report_html": layout.relative(html), "report_md": layout.relative(md)})
    _write_json(layout.summary_json, summary)
    return displayed_summary(summary, layout)


def displayed_summary(summary: Dict[str, Any], layout: Any) -> Dict[str, Any]:
    """``summary.json``'s content with ``out`` and its paths joined to the run directory
    (what :func:`format_summary` prints)."""
    shown = {**summary, "out": str(layout.root)}
    for key in ("affinity", "pareto_png", "pareto_csv", "report_html", "report_md"):
        if shown.get(key) is not None:
            shown[key] = str(layout.resolve(shown[key]))
    return shown


def format_summary(summary: Dict[str, Any]) -> str:
    """The table printed at the end of a run: recommended tree per budget against the baselines.

    Two Δm columns: on each task's primary measure (the paper's tables) and over all metrics.
    """
    from ..search import format_budget

    def dm(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:+.2f}%"

    def ep(v: Any) -> str:
        return "" if v is None else str(v)

    def row(name: str, params: int, d: Optional[float], d_all: Optional[float], epochs: Any,
            rest: str = "") -> str:
        return f"{name:<28}{format_budget(params):>10}{dm(d):>10}{dm(d_all):>10}{ep(epochs):>9}{rest}"

    singles_ep = summary.get("single_epochs") or {}
    lines = [f"space {summary['space']} (profile {summary['profile']}): results in {summary['out']}", "",
             f"{'model':<28}{'params':>10}{'Δm':>10}{'Δm all':>10}{'epochs':>9}   tree / note"]
    eps = [e for e in singles_ep.values() if e is not None]
    lines.append(row("single-task networks", summary["single_params"], 0.0, 0.0,
                     (f"{min(eps)}-{max(eps)}" if min(eps) != max(eps) else str(eps[0])) if eps else None))
    for name, b in summary["baselines"].items():
        lines.append(row(name, b["params"], b["delta_m"], b.get("delta_m_all"), b.get("epochs")))
    for r in summary["recommended"]:
        groups = " | ".join("/".join(",".join(g) for g in depth) for depth in r["tree"]["groupings"][-1:])
        lines.append(row("recommended @ " + format_budget(r["budget"]), r["params"], r["delta_m"],
                         r.get("delta_m_all"), r.get("epochs"), f"   last block: {groups}"))
    primary = summary.get("primary")
    if primary and not summary.get("reading"):
        lines += ["", "Δm: mean over tasks of the relative change against the single-task networks, "
                  "positive = better, on each task's primary measure ("
                  + ", ".join(f"{t} {m}" for t, m in primary.items()) + "); 'Δm all' averages "
                  "every metric of a task first."]
    lines += summary.get("reading", [])
    lines += ["", "recommended architectures:"]
    for r in summary["recommended"]:
        lines.append(f"  budget {format_budget(r['budget'])} (cost {r['cost']:.4f}):")
        lines.extend("    " + line for line in r["ascii"].splitlines())
    lines += ["", f"Pareto plot: {summary['pareto_png']}", f"report:      {summary.get('report_html')}"]
    return "\n".join(lines)
