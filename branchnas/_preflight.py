"""Early checks of a parsed command line: every option and input file, before any work starts.

:func:`check_args` is called first thing by each ``branchnas`` command. It reads only what it
must to decide (the search space, a tree or affinity file, a run directory's JSON) and writes
nothing, so a typo costs a second and leaves no files, rather than hours of training followed
by "unknown baseline". Each problem is one :class:`~branchnas.errors.BranchnasError` line that
names the option and the fix. The checks key on the option names a command has, so a command
that gains an option gains its check.

Limits (stated in the messages): :data:`MAX_BUDGET`, :data:`MAX_K`, :data:`MAX_SEED`,
:data:`MAX_JOBS`, :data:`MAX_TOP`, :data:`MAX_TRIALS`, :data:`MAX_RANDOM_DRAWS` and the caps on
training sizes in :data:`TRAINING_MAXIMA`.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from ._fs import check_writable_dir
from .errors import BranchnasError

__all__ = [
    "check_args",
    "check_budget",
    "check_budgets",
    "check_device",
    "check_run_name",
    "MAX_BUDGET",
    "MAX_K",
    "MIN_K",
    "MAX_SEED",
    "MAX_JOBS",
    "MAX_TOP",
    "MAX_TRIALS",
    "MAX_RANDOM_DRAWS",
    "TRAINING_MAXIMA",
]

MAX_BUDGET = 10**15  # parameters or FLOPs: far above any network that fits a device
MIN_K = 3  # an RDM of fewer images has no off-diagonal ranks to correlate
MAX_K = 100_000  # held-out images: K x K RDMs per task and depth must fit in memory
MAX_SEED = 2**32 - 1  # numpy's SeedSequence and torch.manual_seed both take this range
MAX_JOBS = 256  # training processes at once on one machine
MAX_TOP = 10_000  # trees shown by `search`
MAX_TRIALS = 100_000  # optuna trials
MAX_RANDOM_DRAWS = 10_000  # seeds of the random strategy per budget (validate)
TRAINING_MAXIMA: Dict[str, int] = {
    "epochs": 1_000_000, "batch_size": 1_000_000, "eval_batch_size": 1_000_000,
    "shared_batch_size": 1_000_000, "task_batch_size": 1_000_000, "step_size": 1_000_000,
    "eval_every": 1_000_000, "num_workers": 256, "threads": 4096,
    "max_train_batches": 10**9, "max_val_batches": 10**9,
}

# Commands that train or write into --out (the default output is under ./runs).
_WRITES_OUT = ("train-single", "train", "baseline", "affinity", "run", "demo", "tune", "validate")
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=@-]{0,127}")


def _fail(msg: str) -> BranchnasError:
    return BranchnasError(msg)


# ---------------------------------------------------------------------------- single values


def _int_range(option: str, value: Optional[int], lo: int, hi: int, why: str = "") -> None:
    if value is None:
        return
    if not lo <= value <= hi:
        raise _fail(f"{option} must be between {lo} and {hi}{why}, got {value}")


def check_budget(value: str, option: str = "--budget") -> int:
    """Parse one budget; must be positive, finite and at most :data:`MAX_BUDGET`.

    Raises:
        BranchnasError: for text that is not a budget, 0, or a value beyond the maximum
            (``1e400`` included).
    """
    from .search import parse_budget

    try:
        budget = parse_budget(value)
    except (OverflowError, ArithmeticError, ValueError) as exc:
        if isinstance(exc, BranchnasError):
            raise BranchnasError(f"{option}: {exc}") from None
        budget = MAX_BUDGET + 1
    if not 0 < budget <= MAX_BUDGET:
        raise _fail(f"{option} {value!r} is out of range; give a budget between 1 and "
                    f"{MAX_BUDGET:.0e} (e.g. 12M or 1.5G)")
    return budget


def check_budgets(text: Optional[str], option: str = "--budgets") -> Optional[List[int]]:
    """Parse a comma-separated budget list; an empty list (``,``) is an error, not "the default"."""
    if text is None:
        return None
    parts = [b.strip() for b in text.split(",")]
    if not any(parts):
        raise _fail(f"{option} {text!r} names no budget; give comma-separated budgets such as "
                    "0.8M,1.2M, or leave the option out for evenly spaced ones")
    if not all(parts):
        raise _fail(f"{option} {text!r} has an empty entry; write budgets separated by single commas")
    return [check_budget(b, option) for b in parts]


def check_device(device: Optional[str]) -> None:
    """``cpu``, ``cuda``, ``cuda:N`` (an existing GPU) or ``mps`` (where available)."""
    if device is not None:
        from ._device import resolve_device

        resolve_device(device)


def check_run_name(name: str, option: str = "--name") -> None:
    """A run name is one path component (letters, digits, ``_.+=@-``), so it stays under --out."""
    if not _RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise _fail(f"{option} {name!r} is not a plain run name (it must stay inside --out); use "
                    "letters, digits and _ . + = @ - (at most 128), e.g. --name budget-1M")


def _seed(option: str, value: Optional[int]) -> None:
    _int_range(option, value, 0, MAX_SEED)


# ---------------------------------------------------------------------------- composite checks


def _space(args: argparse.Namespace) -> Any:
    from .spaces import load_space

    return load_space(getattr(args, "space", None) or "scenes")


def _training(args: argparse.Namespace, space: Any) -> None:
    """The space's [training] table and the command line's training options, as the trainer sees them."""
    from .training import TrainConfig, overrides_from_args

    overrides = overrides_from_args(args)
    for key, value in overrides.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(f"--{key.replace('_', '-')} must be a finite number, got {value}")
        cap = TRAINING_MAXIMA.get(key)
        if cap is not None and isinstance(value, int) and value > cap:
            raise _fail(f"--{key.replace('_', '-')} must be at most {cap}, got {value}")
    try:
        TrainConfig.from_sources(space.training, None)
    except BranchnasError as exc:
        raise _fail(f"search space {space.name!r} ({space.source or 'built in'}) [training]: {exc}") from None
    TrainConfig.from_sources(space.training, overrides)
    sizes = overrides.get("task_batch_sizes") or {}
    unknown = sorted(set(sizes) - set(space.task_names))
    if unknown:
        raise _fail(f"--task-batch-size-for names unknown task(s) {', '.join(unknown)}; "
                    f"tasks of {space.name}: {', '.join(space.task_names)}")
    for task, n in sizes.items():
        _int_range(f"--task-batch-size-for {task}", n, 1, TRAINING_MAXIMA["task_batch_size"])


def _tasks(option: str, tasks: Optional[Sequence[str]], space: Any) -> None:
    if tasks is None:
        return
    unknown = [t for t in tasks if t not in space.task_names]
    if unknown:
        raise _fail(f"{option}: search space {space.name!r} has no task(s) {', '.join(unknown)}; "
                    f"choose from: {', '.join(space.task_names)}")
    dup = sorted({t for t in tasks if list(tasks).count(t) > 1})
    if dup:
        raise _fail(f"{option} lists {', '.join(dup)} more than once; give each task once")
    if not tasks:
        raise _fail(f"{option} is empty; name at least one task")


def _choice(option: str, value: Optional[str], choices: Iterable[str]) -> None:
    if value is None:
        return
    choices = list(choices)
    if value not in choices:
        raise _fail(f"{option} {value!r} is unknown; choose one of: {', '.join(choices)}")


def _existing_file(option: str, path: Optional[str], what: str) -> Path:
    if not path:
        raise _fail(f"{option} is required: give the {what}")
    p = Path(path).expanduser()
    if not p.exists():
        raise _fail(f"{option} {path}: no such file; check the path of the {what}")
    if not p.is_file():
        raise _fail(f"{option} {path} is not a regular file; give the {what}")
    return p


def _json_object(path: Path, fix: str) -> Dict[str, Any]:
    import json

    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(f"{path} is missing; {fix}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(f"{path} is damaged ({type(exc).__name__}); {fix}") from None
    except OSError as exc:
        from ._fs import fs_error

        raise fs_error(exc, path) from None
    if not isinstance(obj, dict):
        raise _fail(f"{path} does not hold a JSON object; {fix}")
    return obj


def _tree_file(option: str, file: Optional[str], space: Any) -> Path:
    """A tree file over some of the space's tasks, with one grouping per cut point."""
    from .tree import Tree

    path = _existing_file(option, file, "tree JSON file")
    tree = Tree.load(path)
    _tasks(f"{option} {file}", list(tree.tasks), space)
    if tree.depth != space.depth:
        raise _fail(f"{option} {file} has {tree.depth} depths but search space {space.name!r} "
                    f"has {space.depth} cut points; give one grouping per cut point")
    return path


def _tree(args: argparse.Namespace, space: Any) -> None:
    path = _tree_file("--tree", args.tree, space)
    check_run_name(args.name if args.name is not None else path.stem,
                   "--name" if args.name is not None else "the tree file's stem (the default --name)")


def _dataset(args: argparse.Namespace, space: Any) -> None:
    """The dataset the command would train on opens with the profile's options (a wrong root, a
    missing split or an option the dataset does not take fails here, not after the first stage).

    The embedded ``scenes`` dataset renders on construction, so only its options are checked."""
    import inspect

    from .data import get_dataset
    from .pipeline.resolve import profile_space
    from .training.single import space_dataset

    profile = getattr(args, "profile", None)
    try:
        profiled = profile_space(space, profile) if profile else space
    except BranchnasError:
        raise
    if not profiled.dataset_name:
        return
    cls = get_dataset(profiled.dataset_name)
    if profiled.dataset_name == "scenes":
        try:
            inspect.signature(cls).bind(split="train", tasks=None, **profiled.dataset_kwargs)
        except TypeError as exc:
            raise _fail(f"search space {space.name!r} [dataset]: {exc}; see the scenes dataset's "
                        "options") from None
        return
    for split in ("train", "val"):
        space_dataset(profiled, split)


def _out(args: argparse.Namespace) -> None:
    out = getattr(args, "out", None)
    check_writable_dir(out if out else "runs", "--out")


def _model(args: argparse.Namespace, space: Any) -> None:
    from .models.baselines import list_baselines

    model = args.model
    if model.startswith("single:"):
        _tasks("--model single:<task>", [model[len("single:"):]], space)
    elif model.startswith("tree:"):
        _tree_file("--model tree:<file>", model[len("tree:"):], space)
    elif model not in list_baselines():
        raise _fail(f"--model {model!r} is unknown; give single:<task>, tree:<file.json> or a baseline "
                    f"({', '.join(list_baselines())})")


def _report(args: argparse.Namespace) -> None:
    root = Path(args.run_dir).expanduser()
    if not root.is_dir():
        raise _fail(f"{args.run_dir} is not a directory; give a run directory written by `branchnas run`")
    fix = f"run `branchnas run --out {args.run_dir}` again to rewrite it"
    _json_object(root / "summary.json", fix)
    _json_object(root / "pipeline.json", fix)
    check_writable_dir(root, "RUN_DIR")


# ---------------------------------------------------------------------------- the entry point


def check_args(args: argparse.Namespace) -> None:
    """Check every option of a parsed ``branchnas`` command line before any work.

    Args:
        args: the namespace from ``build_parser().parse_args``; ``args._command`` names the
            command.

    Raises:
        BranchnasError: one line naming the first bad option or input and the fix.
    """
    command = getattr(args, "_command", None)
    get = lambda name: getattr(args, name, None)  # noqa: E731

    if command == "report":
        _report(args)
        return
    if command in ("plot", "pareto"):
        if command == "plot" and args.what == "affinity":
            from .affinity import load_affinity

            load_affinity(_existing_file("plot affinity FILE", args.file, "affinity .npz file"))
            check_writable_dir(args.out or Path(args.file).expanduser().parent, "--out")
            return
        if command == "plot" and args.file:
            raise _fail("`plot pareto` takes no FILE; give the runs with --runs")
        runs = get("runs")
        if runs and not Path(runs).expanduser().is_dir():
            raise _fail(f"--runs {runs} is not a directory; give the output directory of your runs")
        _space(args)
        check_writable_dir(args.out or Path(runs or "runs"), "--out")
        return

    space = _space(args) if command != "search" or get("block_params") is None else None
    if space is not None:
        _training(args, space)
    check_device(get("device"))

    # names from registries
    if get("strategy") is not None:
        from .search import list_strategies

        _choice("--strategy", args.strategy, ["auto", *list_strategies()])
    if get("measure") is not None:
        from .affinity import list_measures

        _choice("--measure", args.measure, list_measures())
    if get("baselines") is not None:
        from .models.baselines import list_baselines

        for b in args.baselines:
            _choice("--baselines", b, list_baselines())
    if command == "baseline":
        from .models.baselines import list_baselines

        _choice("baseline", args.name, list_baselines())

    # tasks, sizes, limits
    if space is not None:
        _tasks("--tasks", get("tasks"), space)
    if command in ("run", "demo"):
        check_budgets(args.budgets)
    for option in ("budget", "budget_flops"):
        if get(option) is not None:
            check_budget(get(option), "--" + option.replace("_", "-"))
    if get("k") is not None:
        _int_range("--k", args.k, MIN_K, MAX_K, " held-out images")
    _seed("--image-seed", get("image_seed"))
    _seed("--seed", get("seed"))
    for s in get("seeds") or ():
        _seed("--seeds", s)
    if get("seeds") is not None and len(set(args.seeds)) != len(args.seeds):
        raise _fail("--seeds lists a seed twice; give each seed once")
    if isinstance(get("jobs"), int):
        _int_range("--jobs", args.jobs, 1, MAX_JOBS)
    if get("random_draws") is not None:
        _int_range("--random-draws", args.random_draws, 1, MAX_RANDOM_DRAWS)
    if get("top") is not None:
        _int_range("--top", args.top, 1, MAX_TOP)
    if get("trials") is not None:
        _int_range("--trials", args.trials, 1, MAX_TRIALS)
    if get("max_branches") is not None:
        _int_range("--max-branches", args.max_branches, 2, 10**6)
    if get("shared_prefix") is not None:
        depth = space.depth if space is not None else None
        # search may share every block (the fully shared tree); a study needs one to branch
        hi = 10**6 if depth is None else depth if command == "search" else depth - 1
        _int_range("--shared-prefix", args.shared_prefix, 0, hi,
                   f" (the space has {depth} blocks)" if depth is not None else "")
    for option in ("max_retries",):
        if get(option) is not None:
            _int_range("--max-retries", get(option), 0, 100)
    for option in ("cpus_per_job", "gpus_per_job", "idle_timeout"):
        value = get(option)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise _fail(f"--{option.replace('_', '-')} must be a finite number >= 0, got {value}")
    if get("max_jobs") is not None:
        _int_range("--max-jobs", args.max_jobs, 1, 10**9)

    # input files
    if command == "train":
        _tree(args, space)
    if command == "describe" and get("tree"):
        _tree_file("--tree", args.tree, space)
    if command == "tune":
        _model(args, space)
    if get("affinity"):
        from .affinity import load_affinity

        load_affinity(_existing_file("--affinity", args.affinity, "affinity .npz file"))

    if command == "search" and get("runs") and not Path(args.runs).expanduser().is_dir():
        raise _fail(f"--runs {args.runs} is not a directory; give the output directory of a run "
                    "(it holds affinity-<measure>.npz), or leave it out")
    if get("baselines"):
        dup = sorted({b for b in args.baselines if args.baselines.count(b) > 1})
        if dup:
            raise _fail(f"--baselines lists {', '.join(dup)} more than once; give each baseline once")

    # the data and the backbone's pretrained weights, then the outputs
    if command in _WRITES_OUT and space is not None:
        _dataset(args, space)
        # a declared weights file missing offline is refused here, not inside the first job
        space.backbone.weights_file()
    if command in _WRITES_OUT:
        _out(args)
    if command == "affinity" and get("output"):
        out = Path(args.output).expanduser()
        if out.is_dir():
            raise _fail(f"--output {args.output} is a directory; give the .npz file to write")
        check_writable_dir(out.parent, "--output")
    if command == "validate" and get("results_dir"):
        check_writable_dir(args.results_dir, "--results-dir")
