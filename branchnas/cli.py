"""The ``branchnas`` command: parses arguments, calls the library, prints and writes.

Each subcommand is a function ``_cmd_<name>(args) -> int`` registered in :func:`build_parser`.
Library modules are imported inside the command functions so that ``branchnas --help``
does not pay for importing torch. Bad input surfaces as a :class:`BranchnasError`, printed
as one ``error:`` line with exit status 2; an interrupt exits 130 and the same command
resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from .errors import BranchnasError

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)

DEFAULT_SPACE = "scenes"


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


def _out_dir(args: argparse.Namespace, space_name: str) -> Path:
    return Path(args.out) if args.out else Path("runs") / space_name


def _train_config(args: argparse.Namespace, space: Any, model: Optional[str] = None) -> Any:
    """The space's training table, then settings tuned for ``model`` (if any), then the command line."""
    from .pipeline.tune import tuned_overrides
    from .training import TrainConfig, overrides_from_args

    tuned = tuned_overrides(_out_dir(args, space.name), space, model) if model else {}
    return TrainConfig.from_sources(space.training, {**tuned, **overrides_from_args(args)})


def _cmd_train_single(args: argparse.Namespace) -> int:
    from .pipeline.stages import run_singles
    from .spaces import load_space

    space = load_space(args.space)
    out = _out_dir(args, space.name)
    results = [run_singles(space, out, _train_config(args, space, f"single:{t}"), tasks=[t], device=args.device)[t]
               for t in (args.tasks or space.task_names)]
    _print(_format_results(results))
    _print(f"\nrun directories: {out / 'single'}")
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

    space, tree = _space_and_tree(args)
    out = _out_dir(args, space.name)
    name = args.name or Path(args.tree).stem
    result = run_tree(space, tree, out, _train_config(args, space, f"tree:{args.tree}"), name, device=args.device)
    _print(tree.ascii())
    _print(_format_results([result]))
    _print(f"\nrun directory: {out / 'trees' / name}")
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from .pipeline.stages import run_baseline
    from .spaces import load_space

    space = load_space(args.space)
    out = _out_dir(args, space.name)
    result = run_baseline(space, args.name, out, _train_config(args, space, args.name), device=args.device)
    _print(_format_results([result]))
    return 0


def _cmd_affinity(args: argparse.Namespace) -> int:
    from .pipeline.affinity import affinity_stage
    from .spaces import load_space

    space = load_space(args.space)
    out = _out_dir(args, space.name)
    path = affinity_stage(space, out, _train_config(args, space), measure=args.measure, k=args.k,
                          seed=args.image_seed, device=args.device, path=args.output)
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

    root = Path(args.runs) if args.runs else Path("runs") / args.space
    table = results_table(root, space=args.space)
    if not len(table):
        raise BranchnasError(f"no trained models under {root}; train some first "
                             f"(branchnas run --space {args.space})")
    out = Path(args.out) if args.out else root / "plots"
    png, csv = write_pareto(table, out, title=f"{args.space}: parameters vs Δm")
    _print(f"wrote {png}\nwrote {csv}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from .pipeline.recommend import recommend

    report = recommend(
        space=args.space, affinity=args.affinity, block_params=args.block_params,
        budget=args.budget, budget_flops=args.budget_flops, strategy=args.strategy,
        top_k=args.top, beam_width=args.beam_width, max_branches=args.max_branches,
        shared_prefix=args.shared_prefix, seed=args.seed, runs=args.runs,
    )
    if args.format == "json":
        _write_json(report.to_json())
    elif args.format == "tree":
        for scored in report.result.trees:
            _print(scored.tree.dumps())
    else:
        _print(report.format_table())
    return 0


def _pipeline_config(args: argparse.Namespace, profile: str) -> Any:
    from .pipeline.run import PipelineConfig
    from .training import overrides_from_args

    budgets = [b for b in args.budgets.split(",") if b.strip()] if args.budgets else None
    return PipelineConfig(space=args.space, out=args.out, profile=profile, tasks=args.tasks,
                          budgets=budgets, strategy=args.strategy, measure=args.measure, k=args.k,
                          baselines=args.baselines, device=args.device,
                          training=overrides_from_args(args), storage=args.storage, study=args.study)


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline.run import format_summary, run_pipeline

    summary = run_pipeline(_pipeline_config(args, args.profile))
    _print(format_summary(summary))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .data import create_dataset, render_preview
    from .pipeline.run import PROFILES, format_summary, profile_space, run_pipeline
    from .spaces import load_space

    cfg = _pipeline_config(args, args.profile)
    out = Path(cfg.out) if cfg.out else Path("runs") / f"{cfg.space}-{cfg.profile}"
    cfg.out = str(out)
    space = profile_space(load_space(cfg.space), cfg.profile, cfg.tasks or PROFILES[cfg.profile].get("tasks"))
    preview = render_preview(create_dataset("scenes", split="val", size=4, resolution=64), n=4,
                             path=out / "plots" / "scenes-preview.png")
    _print(_task_table(space))
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


def _cmd_worker(args: argparse.Namespace) -> int:
    from .pipeline.queue import run_worker

    report = run_worker(args.storage, args.study, imports=args.imports or (), max_jobs=args.max_jobs,
                        idle_timeout=args.idle_timeout)
    _print(f"worker {report.worker}: {len(report.completed)} completed, {len(report.failed)} failed, "
           f"{len(report.lost)} handed back, {len(report.duplicates)} duplicates skipped")
    return 1 if report.failed else 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from .pipeline.tune import tune
    from .spaces import load_space
    from .training import overrides_from_args

    space = load_space(args.space)
    out = _out_dir(args, space.name)
    result = tune(args.space, args.model, trials=args.trials, out_dir=out, storage=args.storage,
                  queue_study=args.study, overrides=overrides_from_args(args), device=args.device)
    _print(json.dumps(result, indent=2))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .pipeline.validate import ValidationConfig, format_validation, run_validation
    from .training import overrides_from_args

    cfg = ValidationConfig(space=args.space, tasks=args.tasks, shared_prefix=args.shared_prefix,
                           profile=args.profile, seeds=tuple(args.seeds), noise_trees=args.noise_trees,
                           random_draws=args.random_draws, k=args.k, out=args.out,
                           results_dir=args.results_dir, jobs=args.jobs, device=args.device,
                           training=overrides_from_args(args), train=not args.analyse_only)
    _print(format_validation(run_validation(cfg)))
    return 0


# --------------------------------------------------------------------------- parser

_COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {}


def _add(sub: "argparse._SubParsersAction", name: str, func: Callable[[argparse.Namespace], int],
         help: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(_command=name)
    _COMMANDS[name] = func
    return parser


def _space_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default=DEFAULT_SPACE, help="search-space name or TOML path (default: %(default)s)")


def _run_args(p: argparse.ArgumentParser) -> None:
    from .training.config import add_train_arguments

    p.add_argument("--out", help="output directory of the runs (default: runs/<space>)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    add_train_arguments(p)


def _queue_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--storage", required=required,
                   help="job queue: sqlite:///path.db, journal:///abs/path.journal or postgresql://user:pw@host/db"
                   + ("" if required else " (training jobs then run on `branchnas worker`s)"))
    p.add_argument("--study", default="branchnas", help="queue name on that storage (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
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
    p.add_argument("--format", choices=["table", "json"], default="table")

    p = _add(sub, "train-single", _cmd_train_single,
             "train one single-task network per task (skips finished runs, resumes interrupted ones)")
    _space_arg(p)
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks to train (default: all)")
    _run_args(p)

    p = _add(sub, "affinity", _cmd_affinity,
             "task affinity at every cut point from the single-task networks (trains missing ones)")
    _space_arg(p)
    p.add_argument("--measure", default="rsa", help="rsa (the paper's), cka or fa (default: %(default)s)")
    p.add_argument("--k", type=int, default=500, help="held-out images (default: %(default)s)")
    p.add_argument("--image-seed", type=int, default=0, help="seed of the image subset (default: %(default)s)")
    p.add_argument("--output", help="affinity file to write (default: <out>/affinity-<measure>.npz)")
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
    p.add_argument("--strategy", default="auto",
                   help="exhaustive, exact, beam, fa, random, or auto: exhaustive up to 2M trees, exact up to 10 tasks, "
                   "else beam (default: %(default)s)")
    p.add_argument("--beam-width", type=int, default=10, help="beam: partial trees kept per depth (paper: 10)")
    p.add_argument("--max-branches", type=int, help="beam: most subgroups a group splits into")
    p.add_argument("--shared-prefix", type=int, default=None,
                   help="force the first k blocks to be shared (default: the space's "
                        "[search] shared_prefix, else 0)")
    p.add_argument("--top", type=int, default=3, help="trees to show (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for random/beam (default: %(default)s)")
    p.add_argument("--format", choices=["table", "json", "tree"], default="table")

    p = _add(sub, "train", _cmd_train, "train the BranchedNet of a tree and compare it with the single-task networks")
    _space_arg(p)
    p.add_argument("--tree", required=True, help="tree JSON file (e.g. from `branchnas search --format tree`)")
    p.add_argument("--name", help="run name (default: the tree file's stem)")
    _run_args(p)

    p = _add(sub, "baseline", _cmd_baseline, "train a baseline: single, shared, cross_stitch, mtan or nddr")
    p.add_argument("name", help="baseline name")
    _space_arg(p)
    _run_args(p)

    p = _add(sub, "pareto", _cmd_pareto, "plot parameters vs Δm of every trained model (PNG + CSV)")
    _space_arg(p)
    p.add_argument("--runs", help="directory of runs (default: runs/<space>)")
    p.add_argument("--out", help="output directory (default: <runs>/plots)")

    p = _add(sub, "plot", _cmd_plot, "plots: `plot affinity FILE` (heatmaps, affinity vs depth) or `plot pareto`")
    p.add_argument("what", choices=["affinity", "pareto"])
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
        p.add_argument("--profile", default=profile, choices=["full", "demo", "tiny"],
                       help="how much work: full (the space's settings), demo, tiny (default: %(default)s)")
        p.add_argument("--budgets", help="comma-separated parameter budgets, e.g. 0.8M,1.2M (default: evenly spaced)")
        p.add_argument("--tasks", nargs="+", metavar="TASK", help="a subset of the space's tasks")
        p.add_argument("--strategy", default="auto", help="search strategy (default: %(default)s)")
        p.add_argument("--measure", default="rsa", help="affinity measure: rsa, cka, fa (default: %(default)s)")
        p.add_argument("--k", type=int, help="held-out images for affinity (default: the profile's)")
        p.add_argument("--baselines", nargs="*", metavar="NAME",
                       help="baselines to train (default: shared cross_stitch mtan nddr)")
        _queue_args(p, required=False)
        _run_args(p)

    p = _add(sub, "report", _cmd_report, "write report.html (self-contained) and report.md for a run directory")
    p.add_argument("run_dir", help="a directory written by `branchnas run`")



    p = _add(sub, "worker", _cmd_worker, "take training jobs from a queue until none remain")
    _queue_args(p, required=True)
    p.add_argument("--max-jobs", type=int, help="stop after this many jobs")
    p.add_argument("--idle-timeout", type=float, default=600.0,
                   help="seconds to wait on an empty open queue (default: %(default)s)")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                   help="module registering extra job kinds (repeatable)")

    p = _add(sub, "tune", _cmd_tune, "tune a model's optimiser, learning rate, batch size and schedule with optuna")
    _space_arg(p)
    p.add_argument("--model", required=True,
                   help="single:<task>, tree:<file.json>, or a baseline (shared, cross_stitch, mtan, nddr)")
    p.add_argument("--trials", type=int, default=20, help="trials, the same for every compared model (default: %(default)s)")
    _queue_args(p, required=False)
    _run_args(p)


    p = _add(sub, "validate", _cmd_validate,
             "validation study: train every tree, then correlate clustering cost with Δm and "
             "measure the regret of the search's pick per budget (CSV, PNG, SUMMARY.md)")
    _space_arg(p)
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks of the study (default: 3 dense tasks)")
    p.add_argument("--shared-prefix", type=int, default=1,
                   help="blocks always shared; branching over the rest (default: %(default)s)")
    p.add_argument("--profile", default="study", help="training profile (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seed 0 trains every tree, the others a subset for noise (default: 0 1 2)")
    p.add_argument("--noise-trees", nargs="+", metavar="TREE",
                   help="trees trained with every seed: `all`, or names such as t003 (default: fully "
                   "shared, all separate, and each parameter group's least-cost tree)")
    p.add_argument("--random-draws", type=int, default=20,
                   help="seeds of the random strategy per budget (default: %(default)s)")
    p.add_argument("--k", type=int, help="held-out images for affinity (default: the profile's)")
    p.add_argument("--results-dir", default="results/validation", help="where tables and plots go (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="trainings in parallel (default: %(default)s)")
    p.add_argument("--analyse-only", action="store_true", help="only analyse the runs already done")
    _run_args(p)

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
    try:
        if distributed:
            _start_distributed(args._command)
        from ._preflight import check_args

        check_args(args)  # every option and input checked before any work (writes nothing)
        return _COMMANDS[args._command](args)
    except BranchnasError as exc:
        discard_fresh_runs()  # run directories begun by this command with nothing in them yet
        return _error(exc)
    except (OSError, RuntimeError) as exc:  # the file system's failures: one line, the path, the fix
        from ._fs import fs_error, is_fs_failure

        if not is_fs_failure(exc):
            raise
        discard_fresh_runs()
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
