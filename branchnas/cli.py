"""The ``branchnas`` command: parses arguments, calls the library, prints and writes.

Each subcommand is a function ``_cmd_<name>(args) -> int`` registered in :func:`build_parser`.
Library modules are imported inside the command functions so that ``branchnas --help``
does not pay for importing torch. Bad input surfaces as a :class:`BranchnasError`, printed
as one ``error:`` line with exit status 2; an interrupt exits 130 and the same command
resumes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Dict, NoReturn, Optional, Sequence

from ._choices import LazyChoices
from .errors import BranchnasError

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)

# Option defaults are the library's constants (the resolver's; a light import, no torch).
from .pipeline.resolve import (  # noqa: E402
    DEFAULT_IMAGE_SEED, DEFAULT_K, DEFAULT_MEASURE, DEFAULT_PROFILE, DEFAULT_RANDOM_DRAWS,
    DEFAULT_RESULTS_DIR, DEFAULT_SPACE, DEFAULT_STRATEGY, DEFAULT_STUDY_PROFILE,
    DEFAULT_STUDY_SEEDS, DEFAULT_STUDY_SHARED_PREFIX, DEFAULT_TRIALS, list_profiles,
)


# Under torchrun only rank 0 prints (set in main).
_QUIET = False

# Commands that may run under torchrun (one network trained by several processes).
_DISTRIBUTED_COMMANDS = ("train", "baseline", "train-single")


def _print(text: str = "") -> None:
    if not _QUIET:
        print(text, flush=True)


def _write_json(obj: object) -> None:
    _print(json.dumps(obj, indent=2, sort_keys=False))


# --------------------------------------------------------------------------- commands


def _space_and_tree(args: argparse.Namespace) -> Any:
    from .spaces import load_space
    from .tree import Tree

    space = load_space(args.space)
    tree = Tree.load(args.tree, tasks=space.task_names, depth=space.depth) if getattr(args, "tree", None) else None
    return space, tree


def _cmd_describe(args: argparse.Namespace) -> int:
    from .spaces import describe_space, format_description

    space, tree = _space_and_tree(args)
    desc = describe_space(space, tree=tree)
    if args.format == "json":
        _write_json(desc)
    else:
        _print(format_description(desc))
    return 0


def _run_spec(args: argparse.Namespace, tasks: Optional[Sequence[str]] = None) -> Any:
    """The command's run, resolved once (space, profile, --out, training options, device)."""
    from .pipeline.resolve import resolve_run
    from .training import overrides_from_args

    return resolve_run(args.space, profile=getattr(args, "profile", None), tasks=tasks,
                       out=args.out, overrides=overrides_from_args(args), device=args.device,
                       force=getattr(args, "force", False))


def _cleared(spec: Any, run_dir: Path) -> Path:
    """``run_dir``, removed first when --force asks to retrain it."""
    if spec.force:
        from .training.rundir import RunDir

        RunDir(run_dir).clear()
    return run_dir


def _cmd_train_single(args: argparse.Namespace) -> int:
    from .pipeline.executor import run_all
    from .pipeline.executors import single_job
    from .pipeline.results import model_result

    spec = _run_spec(args)
    tasks = args.tasks or spec.space.task_names
    unknown = [t for t in tasks if t not in spec.space.task_names]
    if unknown:
        raise BranchnasError(f"search space {spec.space.name!r} has no task(s) {', '.join(unknown)}; "
                             f"choose from: {', '.join(spec.space.task_names)}")
    configs = {t: spec.train_config(f"single:{t}") for t in tasks}  # all checked before training
    executor_cfg = _executor_config(args).validate()
    for t in tasks:
        _cleared(spec, spec.layout.single(t))
    # one job per task, on the executor (this process, --jobs processes, or Ray)
    with executor_cfg.create() as executor:
        results = [model_result(r) for r in run_all(
            executor, [single_job(spec.space, t, configs[t], spec.out, spec.device) for t in tasks])]
    _print(_format_results(results))
    _print(f"\nrun directories: {spec.layout.singles}")
    return 0


def _format_results(results: Any) -> str:
    from .search import format_budget

    lines = []
    for r in results:
        metrics = "  ".join(f"{t}.{m}={v:.4g}" for t, ms in r.metrics.items() for m, v in ms.items())
        dm = "" if r.delta_m is None else f"  Δm={r.delta_m:+.2f}%"
        lines.append(f"{r.name:<24} params={format_budget(r.params):>8}{dm}  {metrics}")
    return "\n".join(lines)


def _cmd_train(args: argparse.Namespace) -> int:
    from .pipeline.stages import run_tree
    from .tree import Tree

    spec = _run_spec(args, tasks=Tree.load(args.tree).tasks)  # the profiled space of the tree's tasks
    tree = Tree.load(args.tree, tasks=spec.space.task_names, depth=spec.space.depth)
    name = args.name or Path(args.tree).stem
    config = spec.train_config(f"tree:{args.tree}")
    run_dir = _cleared(spec, spec.layout.tree(name))
    result = run_tree(spec.space, tree, spec.out, config, name, device=spec.device)
    _print(tree.ascii())
    _print(_format_results([result]))
    _print(f"\nrun directory: {run_dir}")
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from .pipeline.stages import run_baseline

    spec = _run_spec(args)
    config = spec.train_config(args.name)
    _cleared(spec, spec.layout.baseline(args.name))
    result = run_baseline(spec.space, args.name, spec.out, config, device=spec.device)
    _print(_format_results([result]))
    return 0


def _cmd_affinity(args: argparse.Namespace) -> int:
    from .pipeline.affinity import affinity_stage

    spec = _run_spec(args)
    from .pipeline.resolve import get_profile

    k = args.k if args.k is not None else get_profile(spec.profile).get("k", DEFAULT_K)
    path = affinity_stage(spec.space, spec.out, spec.train_config(), measure=args.measure, k=k,
                          seed=args.image_seed, device=spec.device, path=args.output)
    _print(f"wrote {path} (+ {path.with_suffix('.json').name})")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    if args.what == "affinity":
        from .affinity import write_affinity_plots

        out = Path(args.out) if args.out else Path(args.file).parent
        for p in write_affinity_plots(args.file, out):
            _print(f"wrote {p}")
        return 0
    return _cmd_pareto(args)


def _cmd_pareto(args: argparse.Namespace) -> int:
    from .pipeline.pareto import write_pareto
    from .pipeline.results import results_table

    from .pipeline.layout import RunLayout, default_out

    layout = RunLayout(args.runs if args.runs else default_out(args.space))
    root = layout.root
    table = results_table(root, space=args.space)
    if not len(table):
        raise BranchnasError(f"no trained models under {root}; train some first "
                             f"(branchnas run --space {args.space})")
    out = Path(args.out) if args.out else layout.plots
    png, csv = write_pareto(table, out, title=f"{args.space}: parameters vs Δm")
    _print(f"wrote {png}\nwrote {csv}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from .pipeline.recommend import recommend

    top = args.top if args.top is not None else (1 if args.format == "tree" else 3)
    if args.format == "tree" and top > 1 and not args.out_dir:
        raise BranchnasError(f"--format tree writes one tree (what `branchnas train --tree` reads) but --top is "
                             f"{top}; use --top 1, or --out-dir DIR to write one tree file per tree")
    rule_options = {"eps": args.eps} if args.eps is not None else {}
    if args.eps is not None and args.select != "epsilon":
        raise BranchnasError("--eps belongs to --select epsilon; add --select epsilon or drop --eps")
    report = recommend(
        space=args.space, affinity=args.affinity, block_params=args.block_params,
        budget=args.budget, budget_flops=args.budget_flops, strategy=args.strategy,
        top_k=top, beam_width=args.beam_width, max_branches=args.max_branches,
        shared_prefix=args.shared_prefix, seed=args.seed, runs=args.runs,
        frontier=args.frontier, rule=args.select, rule_options=rule_options,
    )
    written = []
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        trees = [report.chosen] + [s for s in report.result.trees if s.tree != report.chosen.tree]
        for rank, scored in enumerate(trees[:top], 1):
            path = out / f"tree-{rank}.json"
            path.write_text(scored.tree.dumps() + "\n")
            written.append(str(path))
    if args.frontier:
        from .pipeline.layout import RunLayout, default_out
        from .search.frontier import frontier_plot_data, write_frontier_plot

        plot = Path(args.plot) if args.plot else RunLayout(args.runs or default_out(
            report.space_name or "search")).frontier_png(report.result.budget_kind)
        data = frontier_plot_data(report.frontier, report.result.budget, report.result.budget_kind,
                                  chosen=report.chosen)
        written.append(write_frontier_plot(data, plot, title=f"{report.space_name or 'search'}: "
                                           f"cost vs {report.result.budget_kind}"))
    if args.format == "json":
        _write_json({**report.to_json(), "written": written})
    elif args.format == "tree":
        if not args.out_dir:
            _print(report.chosen.tree.dumps())
        for path in written:
            log.info("wrote %s", path)
    else:
        _print(report.format_table())
        if args.frontier:
            _print("")
            _print(report.format_frontier())
        for path in written:
            _print(f"wrote {path}")
    return 0


def _pipeline_config(args: argparse.Namespace, profile: str) -> Any:
    from .pipeline.run import PipelineConfig
    from .training import overrides_from_args

    budgets = [b for b in args.budgets.split(",") if b.strip()] if args.budgets else None
    return PipelineConfig(space=args.space, out=args.out, profile=profile, tasks=args.tasks,
                          budgets=budgets, strategy=args.strategy, measure=args.measure, k=args.k,
                          baselines=args.baselines, device=args.device,
                          training=overrides_from_args(args), executor=_executor_config(args),
                          force=args.force)


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline.run import format_summary, run_pipeline

    summary = run_pipeline(_pipeline_config(args, args.profile))
    _print(format_summary(summary))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .data import create_dataset, render_preview
    from .pipeline.resolve import resolve_pipeline
    from .pipeline.run import format_summary, run_pipeline

    cfg = _pipeline_config(args, args.profile)
    spec = resolve_pipeline(cfg)  # every option checked before the preview is drawn
    cfg.out = str(spec.out)
    _print(_task_table(spec.space))
    spec.out.mkdir(parents=True, exist_ok=True)
    preview = render_preview(create_dataset("scenes", split="val", size=4, resolution=64), n=4,
                             path=spec.layout.preview_png)
    _print(f"\nembedded benchmark preview: {preview}\n")
    summary = run_pipeline(cfg)
    _print(format_summary(summary))
    return 0


def _task_table(space: Any) -> str:
    lines = [f"search space {space.name}: {space.backbone.name}, {space.depth} cut points, "
             f"input {space.input_size[0]}x{space.input_size[1]}", "",
             f"{'task':<12}{'type':<16}{'head':<6}metrics (↑ higher / ↓ lower is better)"]
    for t in space.tasks:
        metrics = ", ".join(f"{m} {'↑' if up else '↓'}" for m, up in t.metrics.items())
        lines.append(f"{t.name:<12}{t.type:<16}{space.heads[t.name]:<6}{metrics}")
    return "\n".join(lines)


def _cmd_report(args: argparse.Namespace) -> int:
    from .pipeline.report import write_report

    for p in write_report(args.run_dir):
        _print(f"wrote {p}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from .pipeline.tune import tune

    spec = _run_spec(args)  # the space, --out and the untuned settings, checked first
    result = tune(args.space, args.model, trials=args.trials, out_dir=spec.out, storage=args.storage,
                  overrides=spec.overrides, device=spec.device, profile=spec.profile,
                  executor=_executor_config(args))
    _print(json.dumps(result, indent=2))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .pipeline.validate import ValidationConfig, format_validation, run_validation
    from .training import overrides_from_args

    cfg = ValidationConfig(space=args.space, tasks=args.tasks, shared_prefix=args.shared_prefix,
                           profile=args.profile, seeds=tuple(args.seeds), noise_trees=args.noise_trees,
                           random_draws=args.random_draws, k=args.k, out=args.out,
                           results_dir=args.results_dir, executor=_executor_config(args),
                           device=args.device,
                           training=overrides_from_args(args), train=not args.analyse_only,
                           force=args.force)
    _print(format_validation(run_validation(cfg)))
    return 0


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with the command line's error convention: one ``error:`` line (for an unknown
    choice it lists the choices), exit status 2; subcommands' parsers are of this class too."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _listed(module: str, function: str, extra: Sequence[str] = ()) -> LazyChoices:
    """A registry's names as an option's choices, read when argparse first needs them
    (checking a value, printing --help or an error): most registries import torch. Such an
    option takes a metavar and lists ``%(choices)s`` in its help (argparse would read the
    choices at once to build a metavar)."""
    return LazyChoices(lambda: getattr(importlib.import_module(module, __package__), function)(), extra)


_MEASURES = _listed(".affinity.measures", "list_measures")
_STRATEGIES = _listed(".search", "list_strategies", extra=("auto",))  # auto: chosen by size
_RULES = _listed(".search.frontier", "list_rules")


def _int_in(lo: int, hi: Optional[int]) -> Callable[[str], int]:
    """argparse type: an integer in lo..hi (hi None: no maximum), refused before any work."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"{v} is out of range; use {lo}..{hi}" if hi is not None else f"{v} is below {lo}")
        return v
    return parse
_BASELINES = _listed(".models.baselines", "list_baselines")
_EXECUTORS = _listed(".pipeline.executor", "list_executors")

_COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {}


def _add(sub: "argparse._SubParsersAction", name: str, func: Callable[[argparse.Namespace], int],
         help: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(_command=name)
    _COMMANDS[name] = func
    return parser


def _space_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default=DEFAULT_SPACE, help="search-space name or TOML path (default: %(default)s)")


def _run_args(p: argparse.ArgumentParser, force: bool = False) -> None:
    from .training.config import add_train_arguments

    p.add_argument("--out", help="output directory of the runs (default: runs/<space>[-<profile>])")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    if force:
        p.add_argument("--force", action="store_true",
                       help="retrain: remove the run directories this command would reuse first "
                       "(a finished run with other settings is refused without it)")
    add_train_arguments(p)


def _profile_arg(p: argparse.ArgumentParser, default: str = DEFAULT_PROFILE) -> None:
    p.add_argument("--profile", default=default, choices=list_profiles(),
                   help="how much work: full (the space's settings), demo, tiny, study; settings "
                   "resolve as defaults < space < profile < tuned < command line (default: %(default)s)")


def _executor_args(p: argparse.ArgumentParser) -> None:
    """Where the training jobs run (pipeline.executor.ExecutorConfig; checked there)."""
    g = p.add_argument_group("execution (where training jobs run)")
    g.add_argument("--executor", default="local", choices=_EXECUTORS, metavar="EXECUTOR",
                   help="%(choices)s. local: this machine (--jobs processes); ray: a Ray task per job, on a Ray "
                   "cluster (--ray-address) or a Ray instance started here; needs pip install -e .[ray] "
                   "(default: %(default)s)")
    g.add_argument("--jobs", type=int, default=1,
                   help="local: training jobs at once, each in its own process (default: %(default)s)")
    g.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="ray: the cluster to join (`ray start --head` prints it); default: start Ray here")
    g.add_argument("--cpus-per-job", type=float, default=1.0,
                   help="ray: CPUs a job asks for unless its config sets threads (default: %(default)s)")
    g.add_argument("--gpus-per-job", type=float,
                   help="ray: GPUs per job; fractions share a GPU, e.g. 0.25 (default: 1 on a cluster "
                   "with GPUs, else 0)")
    g.add_argument("--max-retries", type=int, default=3,
                   help="ray: reruns of a job whose worker or node died; it resumes from its "
                   "checkpoint (default: %(default)s)")


def _executor_config(args: argparse.Namespace) -> Any:
    from .pipeline.executor import ExecutorConfig

    return ExecutorConfig(name=args.executor, jobs=args.jobs, address=args.ray_address,
                          cpus_per_job=args.cpus_per_job, gpus_per_job=args.gpus_per_job,
                          max_retries=args.max_retries)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from . import __version__

    parser = _Parser(
        prog="branchnas",
        description="Design branched multi-task networks: which layers should tasks share?",
    )
    parser.add_argument("--version", action="version", version=f"branchnas {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = _add(sub, "describe", _cmd_describe,
             "print a search space's blocks (channels, stride, params, FLOPs) and tree totals")
    _space_arg(p)
    p.add_argument("--tree", help="a tree JSON file to total")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="table to read, or JSON for scripts (default: %(default)s)")

    p = _add(sub, "train-single", _cmd_train_single,
             "train one single-task network per task (skips finished runs, resumes interrupted ones)")
    _space_arg(p)
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks to train (default: all)")
    _profile_arg(p)
    _executor_args(p)
    _run_args(p, force=True)

    p = _add(sub, "affinity", _cmd_affinity,
             "task affinity at every cut point from the single-task networks (trains missing ones)")
    _space_arg(p)
    p.add_argument("--measure", default=DEFAULT_MEASURE, choices=_MEASURES, metavar="MEASURE",
                   help="affinity measure: %(choices)s; rsa is the paper's (default: %(default)s)")
    p.add_argument("--k", type=int, help=f"held-out images (default: the profile's; {DEFAULT_K} for full)")
    p.add_argument("--image-seed", type=int, default=DEFAULT_IMAGE_SEED,
                   help="seed of the image subset (default: %(default)s)")
    p.add_argument("--output", help="affinity file to write (default: <out>/affinity-<measure>.npz)")
    _profile_arg(p)
    _run_args(p)

    p = _add(sub, "search", _cmd_search,
             "recommend task trees within a budget from an affinity file")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--space", help=f"search-space name or TOML path (default: {DEFAULT_SPACE})")
    src.add_argument("--block-params", metavar="P1,...,PD",
                     help="what-if: parameters of one copy of each block, instead of --space")
    p.add_argument("--affinity", help="affinity .npz (default: the current run's, else the one shipped for the space)")
    p.add_argument("--runs", help="run directory holding a computed affinity (default: runs/<space>)")
    bud = p.add_mutually_exclusive_group()
    bud.add_argument("--budget", help="parameter budget, e.g. 12M, 1.5G, 3e6 (default: none)")
    bud.add_argument("--budget-flops", help="FLOPs budget instead, e.g. 1.5G")
    p.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=_STRATEGIES, metavar="STRATEGY",
                   help="%(choices)s; auto: an exact strategy where it finishes in seconds "
                   "(exhaustive, exact), else local search (default: %(default)s)")
    p.add_argument("--beam-width", type=_int_in(1, 1000), default=10,
                   help="beam: partial trees kept per depth, 1..1000 (paper: 10)")
    p.add_argument("--max-branches", type=_int_in(1, None), help="beam-split: most subgroups a group splits into")
    p.add_argument("--shared-prefix", type=int, default=None,
                   help="force the first k blocks to be shared (default: the space's "
                        "[search] shared_prefix, else 0)")
    p.add_argument("--top", type=_int_in(1, 1000), default=None,
                   help="trees to show, 1..1000 (default: 3; 1 with --format tree)")
    p.add_argument("--seed", type=int, default=0, help="seed for random/beam/local (default: %(default)s)")
    p.add_argument("--format", choices=["table", "json", "tree"], default="table",
                   help="table to read, JSON for scripts, or tree: the selected tree's JSON, what "
                   "`branchnas train --tree` reads (default: %(default)s)")
    p.add_argument("--out-dir", metavar="DIR", help="also write each tree to DIR/tree-<rank>.json "
                   "(rank 1 = the selected tree), each readable by `branchnas train --tree`")
    p.add_argument("--frontier", action="store_true",
                   help="also list every tree on the (params, cost) Pareto frontier and plot cost vs params "
                   "with the budget marked")
    p.add_argument("--plot", metavar="PNG", help="where --frontier draws (default: <runs>/plots/frontier-<kind>.png)")
    p.add_argument("--select", default=None, choices=_RULES, metavar="RULE",
                   help="which tree within the budget to pick: %(choices)s (default: least-cost, the paper's "
                   "rule; bench/bench_search.py --only selection measures the others on the validation study)")
    p.add_argument("--eps", type=float, help="--select epsilon: the smallest tree within this share of the "
                   "budget's cost range above the optimum (e.g. 0.1)")

    p = _add(sub, "train", _cmd_train, "train the BranchedNet of a tree and compare it with the single-task networks")
    _space_arg(p)
    p.add_argument("--tree", required=True, help="tree JSON file (e.g. from `branchnas search --format tree`)")
    p.add_argument("--name", help="run name (default: the tree file's stem)")
    _profile_arg(p)
    _run_args(p, force=True)

    p = _add(sub, "baseline", _cmd_baseline, "train a baseline (the single-task networks, the fully shared one, or a soft-sharing network)")
    p.add_argument("name", choices=_BASELINES, metavar="NAME",
                   help="the baseline to train: %(choices)s")
    _space_arg(p)
    _profile_arg(p)
    _run_args(p, force=True)

    p = _add(sub, "pareto", _cmd_pareto, "plot parameters vs Δm of every trained model (PNG + CSV)")
    _space_arg(p)
    p.add_argument("--runs", help="directory of runs (default: runs/<space>)")
    p.add_argument("--out", help="output directory (default: <runs>/plots)")

    p = _add(sub, "plot", _cmd_plot, "plots: `plot affinity FILE` (heatmaps, affinity vs depth) or `plot pareto`")
    p.add_argument("what", choices=["affinity", "pareto"],
                   help="affinity: heatmaps and affinity vs depth of FILE; pareto: parameters vs Δm "
                   "of the trained models")
    p.add_argument("file", nargs="?", help="affinity .npz (for `plot affinity`)")
    p.add_argument("--space", default=DEFAULT_SPACE, help="for `plot pareto` (default: %(default)s)")
    p.add_argument("--runs", help="for `plot pareto`: directory of runs (default: runs/<space>)")
    p.add_argument("--out", help="output directory")

    for name, func, help_text, profile in (
        ("run", _cmd_run, "the whole pipeline: single-task nets, affinity, search per budget, "
         "trees, baselines, Pareto plot, report (cached; rerun to resume)", "full"),
        ("demo", _cmd_demo, "the pipeline on the embedded scenes benchmark with a small profile "
         "(a few minutes on 2 CPU cores)", "demo"),
    ):
        p = _add(sub, name, func, help_text)
        _space_arg(p)
        _profile_arg(p, profile)
        p.add_argument("--budgets", help="comma-separated parameter budgets, e.g. 0.8M,1.2M (default: evenly spaced)")
        p.add_argument("--tasks", nargs="+", metavar="TASK", help="a subset of the space's tasks")
        p.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=_STRATEGIES, metavar="STRATEGY",
                       help="tree search: %(choices)s; auto: exhaustive while small, exact up "
                       "to 10 tasks, else beam (default: %(default)s)")
        p.add_argument("--measure", default=DEFAULT_MEASURE, choices=_MEASURES, metavar="MEASURE",
                       help="affinity measure: %(choices)s; rsa is the paper's (default: %(default)s)")
        p.add_argument("--k", type=int, help="held-out images for affinity (default: the profile's)")
        p.add_argument("--baselines", nargs="*", metavar="NAME", choices=_BASELINES,
                       help="baselines to train, from: %(choices)s (default: the profile's)")
        _executor_args(p)
        if name == "demo":  # the demo's 5 minutes assume two jobs at once on two cores
            p.set_defaults(jobs=2)
        _run_args(p, force=True)

    p = _add(sub, "report", _cmd_report, "write report.html (self-contained) and report.md for a run directory")
    p.add_argument("run_dir", help="a directory written by `branchnas run`")



    p = _add(sub, "tune", _cmd_tune, "tune a model's optimiser, learning rate, batch size and schedule with optuna")
    _space_arg(p)
    p.add_argument("--model", required=True,
                   help="single:<task>, tree:<file.json>, or a baseline name (as `branchnas baseline` takes)")
    p.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="trials, the same for every compared model (default: %(default)s)")
    p.add_argument("--storage", help="optuna storage to keep the study in: sqlite:///path.db or "
                   "postgresql://user:pw@host/db (default: a journal file beside the results)")
    _executor_args(p)
    _profile_arg(p)
    _run_args(p)


    p = _add(sub, "validate", _cmd_validate,
             "validation study: train every tree, then correlate clustering cost with Δm and "
             "measure the regret of the search's pick per budget (CSV, PNG, SUMMARY.md)")
    _space_arg(p)
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks of the study (default: 3 dense tasks)")
    p.add_argument("--shared-prefix", type=int, default=DEFAULT_STUDY_SHARED_PREFIX,
                   help="blocks always shared; branching over the rest (default: %(default)s)")
    _profile_arg(p, DEFAULT_STUDY_PROFILE)
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_STUDY_SEEDS),
                   help="seed 0 trains every tree, the others a subset for noise (default: "
                   + " ".join(map(str, DEFAULT_STUDY_SEEDS)) + ")")
    p.add_argument("--noise-trees", nargs="+", metavar="TREE",
                   help="trees trained with every seed: `all`, or names such as t003 (default: fully "
                   "shared, all separate, and each parameter group's least-cost tree)")
    p.add_argument("--random-draws", type=int, default=DEFAULT_RANDOM_DRAWS,
                   help="seeds of the random strategy per budget (default: %(default)s)")
    p.add_argument("--k", type=int, help="held-out images for affinity (default: the profile's)")
    p.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, help="where tables and plots go (default: %(default)s)")
    p.add_argument("--analyse-only", action="store_true", help="only analyse the runs already done")
    _executor_args(p)
    _run_args(p, force=True)

    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_command", None):
        parser.print_help()
        return 2
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    previous_sigterm = _sigterm_as_interrupt()
    from .training.rundir import discard_fresh_runs, forget_fresh_runs

    forget_fresh_runs()
    out_root = _existing_ancestor(getattr(args, "out", None) or "runs")
    try:
        if distributed:
            _start_distributed(args._command)
        from ._preflight import check_args

        check_args(args)  # every option and input checked before any work (writes nothing)
        return _COMMANDS[args._command](args)
    except BranchnasError as exc:
        discard_fresh_runs(out_root)  # run directories begun by this command with nothing in them yet
        return _error(exc)
    except (OSError, RuntimeError) as exc:  # the file system's failures: one line, the path, the fix
        from ._fs import fs_error, is_fs_failure

        if not is_fs_failure(exc):
            raise
        discard_fresh_runs(out_root)
        return _error(fs_error(exc))
    except KeyboardInterrupt as exc:
        print("interrupted; run the same command again to resume", file=sys.stderr, flush=True)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        if previous_sigterm is not _NOT_INSTALLED:
            signal.signal(signal.SIGTERM, previous_sigterm or signal.SIG_DFL)
        if distributed:
            from .training.ddp import teardown

            teardown()


def _existing_ancestor(path: str) -> Path:
    """The deepest directory of ``path`` (or above it) that exists now."""
    p = Path(path).expanduser().absolute()
    while not p.is_dir() and p.parent != p:
        p = p.parent
    return p


def _error(exc: BaseException) -> int:
    # one line whatever the message holds (the contract of BranchnasError)
    print("error: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)
    return 2


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it stops like on Ctrl-C: temp files
    removed, the checkpoint intact, the resume hint printed."""


def _sigterm_as_interrupt() -> Any:
    """Handle SIGTERM like SIGINT (in the main thread); returns the handler to restore."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _NOT_INSTALLED

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return _NOT_INSTALLED


_NOT_INSTALLED = object()


def _start_distributed(command: str) -> None:
    """Join torchrun's process group; only rank 0 prints and logs below warnings."""
    global _QUIET
    if command not in _DISTRIBUTED_COMMANDS:
        raise BranchnasError(f"`{command}` does not run under torchrun; only "
                             f"{', '.join(_DISTRIBUTED_COMMANDS)} do")
    from .training.ddp import init_distributed, is_main_process

    init_distributed()
    if not is_main_process():
        _QUIET = True
        logging.getLogger().setLevel(logging.WARNING)
