"""Training hyperparameters: the one place their defaults live.

:class:`TrainConfig` is a dataclass whose field defaults are the defaults (each commented
once, below). A search-space file's ``[training]`` table and the command line override
them, in that order, through :meth:`TrainConfig.from_sources`; the trainer reads the
resolved object and nothing else. :func:`add_train_arguments` and
:func:`overrides_from_args` are the command line's side of that seam.

The defaults are chosen for the embedded ``scenes`` space (a small CNN on 64x64 images):
they train a single-task network to a sensible result on 2 CPU cores in a couple of minutes.

Example:
    >>> cfg = TrainConfig.from_sources({"lr": 0.01, "optimizer": "sgd"}, {"epochs": 3})
    >>> (cfg.optimizer, cfg.lr, cfg.epochs)
    ('sgd', 0.01, 3)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from .._choices import LazyChoices
from ..errors import BranchnasError

__all__ = [
    "TrainConfig",
    "OPTIMIZERS",
    "SCHEDULES",
    "AMP_MODES",
    "MONITORS",
    "RUNTIME_FIELDS",
    "add_train_arguments",
    "overrides_from_args",
]

OPTIMIZERS: Tuple[str, ...] = ("adam", "sgd")
SCHEDULES: Tuple[str, ...] = ("none", "step", "poly")
AMP_MODES: Tuple[str, ...] = ("auto", "off", "bf16", "fp16")
MONITORS: Tuple[str, ...] = ("metric", "loss")  # the convergence rule's held-out score

RUNTIME_FIELDS = frozenset({"eval_batch_size", "eval_every", "num_workers", "progress", "threads"})
"""Fields that change how a run executes but not the weights it ends with; a run may be
resumed with different values for them (every other field must match the run's config).
(On the CPU, bitwise-equal results after a resume also assume the same thread count.)"""


@dataclass
class TrainConfig:
    """Everything the trainer needs to know besides the model, the tasks and the data.

    Build it with :meth:`from_sources` (space-file defaults + overrides); constructing it
    directly is fine too. Values are validated on construction.

    Raises:
        BranchnasError: on a value out of range or not among the choices.
    """

    optimizer: str = "adam"  # "adam" or "sgd" (SGD with `momentum`)
    lr: float = 2e-3  # initial learning rate
    momentum: float = 0.9  # SGD momentum; Adam ignores it
    weight_decay: float = 1e-4  # L2 penalty on model parameters (never on loss-weighting ones)
    epochs: int = 8  # the most passes over the training set (the convergence rule may stop sooner)
    # The convergence rule (training.convergence), the same for every model the pipeline trains:
    patience: int = 3  # epochs without a better held-out score before stopping (0: off, train all)
    holdout_fraction: float = 0.1  # share of the TRAINING split held out, not trained on, watched
    monitor: str = "metric"  # held-out score: "metric" (primary measures, as Δm) or "loss"
    min_delta: float = 0.0  # smallest rise of that score that counts (Δm points, or loss units)
    task_weights: Dict[str, float] = field(default_factory=dict)  # fixed loss weights, multi-task
    batch_size: int = 32  # images per training step
    schedule: str = "poly"  # learning-rate decay: "none", "step" or "poly"
    step_size: int = 30  # "step": epochs between two decays
    gamma: float = 0.1  # "step": factor applied at each decay
    poly_power: float = 0.9  # "poly": lr * (1 - iteration / total iterations) ** poly_power
    seed: int = 0  # seeds model initialisation (where the caller builds it), data order, RNGs
    weighting: str = "equal"  # loss weighting: "equal", "dwa" or "uncertainty"
    dwa_temperature: float = 2.0  # DWA's temperature T (Liu et al. use 2)
    memory_bounded: bool = False  # UberNet's memory-bounded backprop (training.memory)
    async_updates: bool = False  # UberNet's asynchronous SGD: groups step at their own batch sizes
    shared_batch_size: Optional[int] = None  # async: samples per shared update (None: batch_size)
    task_batch_size: Optional[int] = None  # async: labelled samples per task update (None: batch_size)
    task_batch_sizes: Dict[str, int] = field(default_factory=dict)  # async: per-task overrides
    amp: str = "auto"  # "auto" (CUDA: bf16, or fp16 without bf16; CPU: off), "off", "bf16", "fp16"
    eval_batch_size: int = 64  # images per evaluation step
    eval_every: int = 1  # validate every n epochs (the last epoch always)
    num_workers: int = 0  # DataLoader worker processes
    threads: Optional[int] = None  # torch CPU threads for the process (None: torch's default)
    max_train_batches: Optional[int] = None  # cap on training steps per epoch (tiny profiles)
    max_val_batches: Optional[int] = None  # cap on validation batches (None: the whole set)
    progress: bool = True  # show a tqdm progress bar

    def __post_init__(self) -> None:
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("amp", self.amp, AMP_MODES)
        _check_choice("monitor", self.monitor, MONITORS)
        if self.patience < 0:
            raise BranchnasError(f"training patience must be >= 0 (0: no early stopping), "
                                 f"got {self.patience!r}")
        if not 0 < self.holdout_fraction <= 0.5:
            raise BranchnasError(f"training holdout_fraction must be in (0, 0.5], "
                                 f"got {self.holdout_fraction!r}")
        if not self.min_delta >= 0:
            raise BranchnasError(f"training min_delta must be >= 0, got {self.min_delta!r}")
        for task, value in self.task_weights.items():
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0):
                raise BranchnasError(
                    f"training task_weights[{task!r}] must be a number >= 0, got {value!r}")
        self.task_weights = {t: float(v) for t, v in self.task_weights.items()}
        for name in ("lr", "dwa_temperature", "poly_power"):
            if not getattr(self, name) > 0:
                raise BranchnasError(f"training {name} must be > 0, got {getattr(self, name)!r}")
        for name in ("momentum", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise BranchnasError(f"training {name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.gamma <= 1:
            raise BranchnasError(f"training gamma must be in (0, 1], got {self.gamma!r}")
        for name in ("epochs", "batch_size", "step_size", "eval_batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise BranchnasError(f"training {name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("shared_batch_size", "task_batch_size", "max_train_batches", "max_val_batches",
                     "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BranchnasError(f"training {name} must be >= 1 or unset, got {value!r}")
        if self.num_workers < 0:
            raise BranchnasError(f"training num_workers must be >= 0, got {self.num_workers!r}")
        for task, value in self.task_batch_sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BranchnasError(
                    f"training task_batch_sizes[{task!r}] must be an integer >= 1, got {value!r}"
                )
        from .weighting import list_weightings  # the registry lists the choices

        _check_choice("weighting", self.weighting, tuple(list_weightings()))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_layers(cls, layers: Sequence[Tuple[str, Optional[Mapping[str, Any]]]]) -> "TrainConfig":
        """Merge named layers of settings over the defaults, later layers winning.

        This is the one merge every command uses (through
        :func:`branchnas.pipeline.resolve.resolve_training`, which supplies the layers in
        the documented order: search space < profile < tuned settings < command line).
        A ``None`` value means "not set here" and is skipped.

        Args:
            layers: ``(name, settings)`` pairs, lowest priority first; ``name`` says where
                the settings come from in error messages (e.g. ``"command line"``).

        Returns:
            The resolved, validated config.

        Raises:
            BranchnasError: one line naming the key, the layer that set it and the fix: an
                unknown key (with the known ones), a value of the wrong type, or one out of
                range.
        """
        values: Dict[str, Any] = {}
        origin: Dict[str, str] = {}
        for source_name, source in layers:
            if source is not None and not isinstance(source, Mapping):
                raise BranchnasError(
                    f"training settings from the {source_name} must be a table of key = value, "
                    f"got {type(source).__name__}"
                )
            for key, value in (source or {}).items():
                if value is None:
                    continue
                values[key] = _coerce(key, value, source_name)
                origin[key] = source_name
        try:
            return cls(**values)
        except BranchnasError as exc:
            # name the layer that set the offending value (the field is named in the message)
            culprit = next((k for k in origin if f"training {k} " in f"{exc} "
                            or f"training {k}[" in str(exc)), None)
            if culprit is None:
                raise
            raise BranchnasError(f"{exc} (set by the {origin[culprit]}; fix it there)") from None

    @classmethod
    def from_sources(
        cls,
        space_training: Optional[Mapping[str, Any]] = None,
        overrides: Optional[Mapping[str, Any]] = None,
    ) -> "TrainConfig":
        """Defaults, then the search space's ``[training]`` table, then ``overrides``.

        A shorthand of :meth:`from_layers` for code that has no profile or tuned settings;
        commands resolve through :func:`branchnas.pipeline.resolve.resolve_training`.

        Args:
            space_training: the space file's training defaults (``SearchSpace.training``).
            overrides: e.g. from the command line (:func:`overrides_from_args`); None values
                mean "not given" and are skipped.

        Returns:
            The resolved, validated config.

        Raises:
            BranchnasError: for an unknown key (named, with the known ones) or a value of the
                wrong type.
        """
        return cls.from_layers((("search space [training]", space_training),
                                ("override", overrides)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Rebuild a config from :meth:`to_dict` output (e.g. a run's ``config.json``)."""
        return cls.from_layers((("stored config", data),))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ derived values
    def weighting_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``create_weighting(self.weighting, tasks, **kw)``."""
        return {"temperature": self.dwa_temperature} if self.weighting == "dwa" else {}

    def effective_batch_sizes(self, tasks: Any) -> Dict[str, int]:
        """Asynchronous updates' batch size per group: ``"shared"`` and each task name.

        Args:
            tasks: the task names being trained.

        Raises:
            BranchnasError: if ``task_batch_sizes`` names a task not being trained.
        """
        names = list(tasks)
        unknown = sorted(set(self.task_batch_sizes) - set(names))
        if unknown:
            raise BranchnasError(
                f"training task_batch_sizes names unknown task(s) {', '.join(unknown)}; "
                f"tasks being trained: {', '.join(names)}"
            )
        default_task = self.task_batch_size or self.batch_size
        sizes = {"shared": self.shared_batch_size or self.batch_size}
        for name in names:
            sizes[name] = self.task_batch_sizes.get(name, default_task)
        return sizes


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _check_choice(name: str, value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise BranchnasError(
            f"training {name} {value!r} is not supported; choose one of: {', '.join(choices)}"
        )


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check ``value`` against the type of field ``key``; ints are accepted for floats."""
    if key not in _FIELDS:
        raise BranchnasError(
            f"unknown training setting {key!r} ({source}); known settings: {', '.join(_FIELDS)}"
        )
    annotation = str(_FIELDS[key].type)
    optional = annotation.startswith("Optional[")
    if value is None:
        if optional:
            return None
        raise BranchnasError(f"training setting {key!r} cannot be empty; give a value")
    expected = annotation.replace("Optional[", "").rstrip("]")
    bad = BranchnasError(f"training setting {key!r} ({source}) expects {expected}, got {value!r}")
    if "bool" in annotation:
        if isinstance(value, bool):
            return value
        raise bad
    if "Dict" in annotation:
        if isinstance(value, Mapping):
            return dict(value)
        raise bad
    if isinstance(value, bool):
        raise bad
    if "float" in annotation:
        if isinstance(value, (int, float)):
            return float(value)
        raise bad
    if "int" in annotation:
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        raise bad
    if isinstance(value, str):
        return value
    raise bad


# ---------------------------------------------------------------------- command line


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_task_size(text: str) -> Tuple[str, int]:
    task, sep, size = text.partition("=")
    if not sep or not task or not size.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected TASK=SIZE (e.g. seg=10), got {text!r}")
    return task, int(size)


def _parse_task_weight(text: str) -> Tuple[str, float]:
    task, sep, weight = text.partition("=")
    try:
        value = float(weight)
    except ValueError:
        value = -1.0
    if not sep or not task or not value >= 0:
        raise argparse.ArgumentTypeError(f"expected TASK=WEIGHT (e.g. keypoints=10), got {text!r}")
    return task, value


@functools.lru_cache(maxsize=None)
def _field_descriptions() -> Dict[str, str]:
    """Each :class:`TrainConfig` field's comment in its source: the one description of a
    setting, so ``--help`` says what the class says (empty without the source file)."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    try:
        source = textwrap.dedent(inspect.getsource(TrainConfig))
    except (OSError, TypeError):  # e.g. a build without .py files: help shows defaults only
        return {}
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    out: Dict[str, str] = {}
    for node in next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            text = " ".join(comments[i] for i in lines if i in comments)
            if text:
                out[node.target.id] = text
    return out


def _option_help(name: str, default: Any, boolean: bool, listed: bool = False) -> Optional[str]:
    """``--help`` text of one setting: its description, its choices when ``listed`` (lazy
    choices, shown through argparse's ``%(choices)s``), then its default."""
    text = _field_descriptions().get(name)
    if text is None:
        return None  # tests/test_cli_help.py fails on an option without help: comment the field
    text = text.replace("%", "%%")  # argparse %-formats help
    if listed:
        text += " (one of: %(choices)s)"
    if boolean:
        text += f" (true or false; default: {str(default).lower()})"
    elif default is not None:
        text += f" (default: {default})".replace("%", "%%")
    return text


def _weighting_names() -> Any:
    from .weighting import list_weightings  # the registry lists the choices (imports torch)

    return list_weightings()


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--<setting>`` option per :class:`TrainConfig` field (all default to unset).

    Booleans take ``true``/``false``; ``--task-batch-size-for TASK=N`` may repeat.
    Use :func:`overrides_from_args` on the parsed namespace.
    """
    group = parser.add_argument_group("training (overrides the search space's [training] table)")
    for name, f in _FIELDS.items():
        annotation = str(f.type)
        flag = "--" + name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = _option_help(name, default, "bool" in annotation)
        if name == "task_batch_sizes":
            group.add_argument("--task-batch-size-for", dest="train_task_batch_sizes",
                               action="append", type=_parse_task_size, metavar="TASK=N",
                               help="async: labelled samples per update of one task (repeatable)")
        elif name == "task_weights":
            group.add_argument("--task-weight", dest="train_task_weights", action="append",
                               type=_parse_task_weight, metavar="TASK=W",
                               help="fixed loss weight of one task in multi-task models "
                                    "(repeatable; others: 1)")
        elif "bool" in annotation:
            group.add_argument(flag, dest="train_" + name, type=_parse_bool, metavar="BOOL",
                               help=help_text)
        elif name in ("optimizer", "schedule", "amp", "monitor", "weighting"):
            choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "amp": AMP_MODES,
                       "monitor": MONITORS,
                       "weighting": LazyChoices(_weighting_names)}[name]
            if isinstance(choices, LazyChoices):  # a metavar: argparse reads them only when needed
                group.add_argument(flag, dest="train_" + name, choices=choices, metavar="NAME",
                                   help=_option_help(name, default, False, listed=True))
            else:
                group.add_argument(flag, dest="train_" + name, choices=choices, help=help_text)
        elif "float" in annotation:
            group.add_argument(flag, dest="train_" + name, type=float, metavar="X", help=help_text)
        elif "int" in annotation:
            group.add_argument(flag, dest="train_" + name, type=int, metavar="N", help=help_text)
        else:
            group.add_argument(flag, dest="train_" + name, help=help_text)


def overrides_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The training settings given on the command line (see :func:`add_train_arguments`)."""
    out: Dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(args, "train_" + name, None)
        if value is None:
            continue
        out[name] = dict(value) if name in ("task_batch_sizes", "task_weights") else value
    return out
