"""The one config resolver: every command's options, merged in one order and checked up front.

A run's settings come from five layers, lowest priority first (design.md)::

    defaults < search space < profile < tuned settings < command line

- **defaults**: :class:`~branchnas.training.TrainConfig`'s field defaults and the constants
  below (``DEFAULT_*``); the command line's defaults are read from them too.
- **search space**: the space file's ``[training]`` table (and its dataset and input size).
- **profile**: one of :data:`PROFILES` (how much work: dataset size, input size, epochs, K,
  how many budgets, which baselines).
- **tuned settings**: what ``branchnas tune`` found for the model being trained
  (``<out>/tuned/<space>/<slug>.json``), per model.
- **command line**: the options given (``--lr 0.01`` ...); unset options are skipped.

:func:`resolve_run` builds a :class:`RunSpec` (the profiled space, the run layout, the
command-line layer) from which :meth:`RunSpec.train_config` resolves a model's training
config; :func:`resolve_pipeline` adds the pipeline's own options (budgets, K, baselines,
strategy, measure) and resolves every model's config before anything is trained, so a bad
option or a bad tuned file stops the run with a one-line error before any work starts.
``train``, ``baseline``, ``train-single``, ``run``, ``demo``, ``validate`` and ``tune`` all
come through here.

Example:
    >>> spec = resolve_run("scenes", profile="tiny", overrides={"lr": 0.01}, out="/tmp/x")
    >>> cfg = spec.train_config()
    >>> (cfg.epochs, cfg.lr)  # the profile's epochs, the command line's lr
    (2, 0.01)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import BranchnasError
from .layout import RunLayout, default_out

__all__ = [
    "LAYERS",
    "PROFILES",
    "DEFAULT_SPACE",
    "DEFAULT_PROFILE",
    "DEFAULT_STRATEGY",
    "DEFAULT_MEASURE",
    "DEFAULT_K",
    "DEFAULT_BUDGET_COUNT",
    "DEFAULT_BASELINES",
    "DEFAULT_IMAGE_SEED",
    "DEFAULT_TRIALS",
    "DEFAULT_STUDY_PROFILE",
    "DEFAULT_STUDY_SHARED_PREFIX",
    "DEFAULT_STUDY_SEEDS",
    "DEFAULT_RANDOM_DRAWS",
    "DEFAULT_RESULTS_DIR",
    "list_profiles",
    "get_profile",
    "profile_space",
    "resolve_training",
    "read_tuned",
    "check_device",
    "RunSpec",
    "resolve_run",
    "PipelineSpec",
    "resolve_pipeline",
    "default_budgets",
]

log = logging.getLogger(__name__)

LAYERS: Tuple[str, ...] = ("defaults", "search space", "profile", "tuned settings", "command line")
"""The layers of a run's settings, lowest priority first."""

DEFAULT_SPACE = "scenes"  # the embedded benchmark
DEFAULT_PROFILE = "full"  # the space's own settings
DEFAULT_STRATEGY = "auto"  # an exact strategy where it finishes in seconds, local search beyond
DEFAULT_MEASURE = "rsa"  # the paper's affinity
DEFAULT_K = 500  # held-out images for the affinity (the paper's K)
DEFAULT_BUDGET_COUNT = 3  # budgets evenly spaced between fully shared and all separate
DEFAULT_BASELINES: Tuple[str, ...] = ("shared", "cross_stitch", "mtan", "nddr")
MIN_K = 3  # RDMs of fewer images have no off-diagonal ranks to correlate
DEFAULT_IMAGE_SEED = 0  # seed of the affinity's image subset
DEFAULT_TRIALS = 20  # tuning trials per model: the same for every compared method
# the validation study (`branchnas validate`)
DEFAULT_STUDY_PROFILE = "study"
DEFAULT_STUDY_SHARED_PREFIX = 1  # blocks shared by all tasks; branching over the rest
DEFAULT_STUDY_SEEDS: Tuple[int, ...] = (0, 1, 2)  # seed 0 trains every tree, the others a subset
DEFAULT_RANDOM_DRAWS = 20  # seeds of the random strategy per budget
DEFAULT_RESULTS_DIR = "runs/validation/results"  # the study's tables and plots (git-ignored; the
# committed studies under results/validation/ name --results-dir explicitly)

# Profiles scale the work; each key is optional (a missing one leaves the layer below):
#   tasks: the tasks used when none are given (default: all of the space's)
#   dataset / input_size: merged into the space ([dataset] table, [input] size)
#   training: merged over the space's [training] table (below tuned settings and the command line)
#   k: held-out images for affinity; budgets: how many budgets when none are given
#   baselines: which baselines `run` trains
# Small profiles train on one thread: the small CNN's convolutions are too small to gain from
# more, and on a busy machine extra threads cost many times their work in contention.
PROFILES: Dict[str, Dict[str, Any]] = {
    "full": {"k": DEFAULT_K, "budgets": DEFAULT_BUDGET_COUNT, "baselines": list(DEFAULT_BASELINES)},
    # the demo: ~4 min on 2 cores (`--jobs 2`) for networks trained to convergence (issue 11:
    # 3 epochs of 256 images gave untrained nets whose affinity lost the benchmark's
    # structure). 1000 images at 32x32 (at 640 the affinity loses the structure). Measured with
    # `branchnas demo --out D [--epochs N --patience P --poly-power X]` on 2 cores:
    # * a cap of 15 or 25 binds the normals network: a poly decay to zero at the cap keeps it
    #   gaining until the cap; at 30 every single-task net stops by the rule (10-19 epochs);
    # * poly power 2 (the space's 0.9 keeps the rate high for longer): at 0.9 the scene branch
    #   swings (held-out top-1 98 -> 35 -> 96 %) and a 4-task tree hit a lucky peak at epoch 5
    #   and was stopped at epoch 8 (Δm -16 %); at 2 it trains on (30 epochs, Δm -1.9 %);
    # * patience 3: 5 let the multi-task nets run to the cap (6 min 17 s in all, over budget);
    # * the validation split is evaluated once, for the restored best epoch (eval_every = the
    #   cap): the rule watches the held-out slice, and per-epoch validation cost ~40 %.
    # MTAN is left out to spend the time on training: cross-stitch and NDDR (the paper's
    # soft-sharing baselines, started from the single-task nets) and the shared network stay.
    # Two budgets: with three, the lowest (a third of the way from fully shared) cannot afford
    # a second block 4 and picks the fully shared tree, the shared baseline trained again.
    "demo": {"tasks": ["semseg", "depth", "normals", "scene"],
             "dataset": {"size": 1000, "resolution": [32, 32]}, "input_size": [32, 32],
             "training": {"epochs": 30, "patience": 3, "poly_power": 2.0, "eval_every": 30,
                          "batch_size": 32, "threads": 1},
             "k": 128, "budgets": 2, "baselines": ["shared", "cross_stitch", "nddr"]},
    "tiny": {"dataset": {"size": 12, "resolution": [32, 32]}, "input_size": [32, 32],
             "training": {"epochs": 2, "batch_size": 6, "eval_batch_size": 12, "threads": 1}, "k": 8,
             "budgets": 2, "baselines": ["shared"]},
    # The validation study (`branchnas validate`), networks trained to convergence by the rule
    # (issue 11: the earlier 5-epoch study was capacity-limited). Full size, for one GPU:
    #   branchnas validate --profile study --shared-prefix 2 --seeds 0 1 2 --noise-trees all --jobs 8
    # (4 tasks incl. the scene class, the 60 trees branching over blocks 3-4, 3 seeds each), on
    # the demo's data and schedule (where every single-task network stops by the rule).
    "study": {"tasks": ["semseg", "depth", "normals", "scene"],
              "dataset": {"size": 1000, "resolution": [32, 32]}, "input_size": [32, 32],
              "training": {"epochs": 30, "patience": 3, "poly_power": 2.0, "eval_every": 30,
                           "batch_size": 32, "eval_batch_size": 128},
              "k": 200},
    # reduced, for 2 CPU cores: 3 dense tasks; --shared-prefix 1 gives the 22 trees over blocks
    # 2-4 (results/validation/study-cpu-prefix1/), --shared-prefix 3 the 5 trees branching at
    # block 4. The demo's schedule (at most 30 epochs, poly power 2, validation once at the
    # restored best epoch), so the rule, not the cap, ends the runs: at a cap of 15 (the
    # earlier studies) 32 of 38 tree runs ended at the cap.
    "study-cpu": {"tasks": ["semseg", "depth", "normals"],
                  "dataset": {"size": 640, "resolution": [32, 32]}, "input_size": [32, 32],
                  "training": {"epochs": 30, "patience": 3, "poly_power": 2.0, "eval_every": 30,
                               "batch_size": 32, "eval_batch_size": 128, "threads": 1},
                  "k": 200},
}
_PROFILE_KEYS = frozenset({"tasks", "dataset", "input_size", "training", "k", "budgets", "baselines"})


# ---------------------------------------------------------------------------- profiles


def list_profiles() -> List[str]:
    """The profile names, in :data:`PROFILES` order."""
    return list(PROFILES)


def get_profile(name: Optional[str]) -> Dict[str, Any]:
    """The profile ``name`` (None: :data:`DEFAULT_PROFILE`).

    Raises:
        BranchnasError: for an unknown profile, listing the choices.
    """
    name = DEFAULT_PROFILE if name is None else name
    if name not in PROFILES:
        raise BranchnasError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    prof = PROFILES[name]
    unknown = sorted(set(prof) - _PROFILE_KEYS)
    if unknown:  # a programming error in the table above, caught where it is read
        raise BranchnasError(f"profile {name!r} has unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(_PROFILE_KEYS))}")
    return prof


def profile_space(space: Any, profile: Optional[str], tasks: Optional[Sequence[str]] = None) -> Any:
    """The space with the profile's dataset and input size applied, restricted to ``tasks``.

    Args:
        space: a ``SearchSpace``, or its name or TOML path.
        profile: a key of :data:`PROFILES` (None: :data:`DEFAULT_PROFILE`).
        tasks: a subset of the space's tasks (None: the profile's ``tasks``, else all).

    Raises:
        BranchnasError: for an unknown profile or task.
    """
    from ..spaces import SearchSpace, load_space

    if not isinstance(space, SearchSpace):
        space = load_space(space)
    prof = get_profile(profile)
    if "dataset" in prof or "input_size" in prof:
        d = space.to_dict()
        d["dataset"] = {**d["dataset"], **prof.get("dataset", {})}
        if "input_size" in prof:
            d["input"] = {**d["input"], "size": list(prof["input_size"])}
        space = SearchSpace.from_dict(d, name=space.name, source=space.source)
    tasks = list(tasks) if tasks else prof.get("tasks")
    if tasks:
        unknown = [t for t in tasks if t not in space.task_names]
        if unknown:
            raise BranchnasError(f"search space {space.name!r} has no task(s) {', '.join(unknown)}; "
                                 f"choose from: {', '.join(space.task_names)}")
        space = space.subset(list(tasks))
    return space


# ---------------------------------------------------------------------------- training


def resolve_training(space: Any, profile: Optional[str] = None, *,
                     tuned: Optional[Mapping[str, Any]] = None, tuned_from: str = "",
                     overrides: Optional[Mapping[str, Any]] = None,
                     protocol: Optional[Mapping[str, Any]] = None) -> Any:
    """A model's training config: defaults < space < profile < the model's protocol < tuned
    < command line.

    Args:
        space: the ``SearchSpace`` (its ``training`` table).
        profile: a key of :data:`PROFILES` (None: :data:`DEFAULT_PROFILE`).
        tuned: the tuned settings of the model (``{}``/None: not tuned).
        tuned_from: where ``tuned`` was read (for error messages).
        overrides: the command line's settings (None values: not given).
        protocol: what the paper's protocol fixes for this model (a baseline's registered
            ``training`` metadata, e.g. SGD for cross-stitch; see :func:`model_protocol`).

    Returns:
        The validated :class:`~branchnas.training.TrainConfig`.

    Raises:
        BranchnasError: one line naming the key, the layer that set it and the fix.
    """
    from ..training import TrainConfig

    name = DEFAULT_PROFILE if profile is None else profile
    tuned_layer = f"tuned settings ({tuned_from})" if tuned_from else "tuned settings"
    return TrainConfig.from_layers((
        (f"search space {space.name!r} [training]", space.training),
        (f"profile {name!r}", get_profile(name).get("training")),
        ("paper's protocol for the model", protocol),
        (tuned_layer, tuned),
        ("command line", overrides),
    ))


def model_protocol(model: Any) -> Dict[str, Any]:
    """The training settings the paper's protocol fixes for ``model`` (a model id): a
    baseline's registered ``training`` metadata (cross-stitch and NDDR-CNN: SGD, lr 1e-3,
    momentum 0.9, appendix A); ``{}`` for every other model."""
    from ..models.baselines import baseline_meta, list_baselines

    if not isinstance(model, str) or model not in list_baselines():
        return {}
    return dict(baseline_meta(model).get("training") or {})


def _is_tree_model(model: Any) -> bool:
    return (isinstance(model, str) and model.startswith("tree:")) or \
        type(model).__name__ == "Tree"


def check_device(device: Optional[str]) -> Optional[str]:
    """``device`` checked (a torch device string, CUDA only where there is one); None stays None.

    Raises:
        BranchnasError: for a device torch does not know or CUDA without a GPU.
    """
    if device is None:
        return None
    from .._device import resolve_device

    resolve_device(device)
    return str(device)


def _positive_int(name: str, value: Any, minimum: int = 1, fix: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        hint = f"; {fix}" if fix else ""
        raise BranchnasError(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    return value


def read_tuned(path: Any) -> Optional[Dict[str, Any]]:
    """The tuning result stored at ``path`` (``branchnas tune``'s JSON), or None when absent.

    Raises:
        BranchnasError: when the file is not a JSON object.
    """
    import json

    p = Path(path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise BranchnasError(f"{p} is not valid JSON; delete it and tune again") from None
    if not isinstance(data, dict):
        raise BranchnasError(f"{p} is not a tuning result (a JSON object); delete it and tune again")
    return data


# ---------------------------------------------------------------------------- one run


@dataclass
class RunSpec:
    """A run resolved once: the profiled space, its layout and the command-line layer.

    Attributes:
        space: the ``SearchSpace`` with the profile applied and restricted to the run's tasks.
        profile: the profile's name.
        layout: the run's :class:`~branchnas.pipeline.layout.RunLayout`.
        overrides: the command line's training settings.
        device: the checked device string (None: CUDA when available).
        force: retrain runs that are done (their directories are cleared first).
    """

    space: Any
    profile: str
    layout: RunLayout
    overrides: Dict[str, Any] = field(default_factory=dict)
    device: Optional[str] = None
    force: bool = False

    @property
    def out(self) -> Path:
        """The output directory."""
        return self.layout.root

    def tuned_settings(self, model: Any) -> Tuple[Dict[str, Any], str]:
        """``(settings, file)`` tuned for ``model`` (a model id or a ``Tree``) in this run
        (``({}, "")`` when it was not tuned)."""
        if not model:
            return {}, ""
        path = self.layout.tuned(self.space.name, model)
        tuned = read_tuned(path)
        if tuned is None:
            return {}, ""
        settings = tuned.get("settings")
        if not isinstance(settings, Mapping):
            raise BranchnasError(f"{path} has no 'settings' table; delete it and tune again")
        return dict(settings), str(path)

    def train_config(self, model: Optional[str] = None, **fixed: Any) -> Any:
        """The training config of ``model`` (a tune model id: ``single:<task>``,
        ``tree:<file>``, a baseline name; None: no tuned settings).

        ``fixed`` are settings the command itself sets, as part of its command line
        (``validate``'s seeds).
        """
        tuned, source = self.tuned_settings(model)
        if not source and _is_tree_model(model):
            # appendix A: "Branched multi-task network: We reuse the hyperparameter setting
            # with the best result for the baseline multi-task network"
            tuned, source = self.tuned_settings("shared")
        return resolve_training(self.space, self.profile, tuned=tuned, tuned_from=source,
                                overrides={**self.overrides, **fixed},
                                protocol=model_protocol(model))


def resolve_run(space: Any, *, profile: Optional[str] = None, tasks: Optional[Sequence[str]] = None,
                out: Optional[Any] = None, overrides: Optional[Mapping[str, Any]] = None,
                device: Optional[str] = None, force: bool = False,
                out_kind: Optional[str] = None) -> RunSpec:
    """Resolve a run's space, layout and command-line layer, checking them.

    Args:
        space: a ``SearchSpace`` or its name / TOML path.
        profile: a key of :data:`PROFILES` (None: :data:`DEFAULT_PROFILE`).
        tasks: a subset of the space's tasks (None: the profile's, else all).
        out: the output directory (None: :func:`~branchnas.pipeline.layout.default_out`).
        overrides: the command line's training settings.
        device: a torch device string (None: CUDA when available).
        force: retrain runs that are done.
        out_kind: the default output directory's kind (``"validation"``).

    Raises:
        BranchnasError: for an unknown space, profile, task or device, or a bad training
            setting (the config without tuned settings is resolved here once).
    """
    name = DEFAULT_PROFILE if profile is None else profile
    sp = profile_space(space, name, tasks)
    root = Path(out) if out else default_out(sp.name, name, out_kind)
    spec = RunSpec(space=sp, profile=name, layout=RunLayout(root),
                   overrides={k: v for k, v in dict(overrides or {}).items() if v is not None},
                   device=check_device(device), force=bool(force))
    spec.train_config()  # every setting checked before any work starts
    return spec


# ---------------------------------------------------------------------------- the pipeline


@dataclass
class PipelineSpec(RunSpec):
    """A resolved pipeline run: :class:`RunSpec` plus the pipeline's own options."""

    budgets: List[int] = field(default_factory=list)  # explicit, or evenly spaced (resolved)
    k: int = DEFAULT_K
    baselines: List[str] = field(default_factory=list)
    strategy: str = DEFAULT_STRATEGY
    measure: str = DEFAULT_MEASURE
    config: Any = None  # the PipelineConfig it was resolved from


def default_budgets(space: Any, n: int) -> List[int]:
    """``n`` parameter budgets evenly spaced strictly between fully shared and all single-task."""
    lo = space.tree_params(space.fully_shared_tree())
    hi = space.tree_params(space.single_task_tree())
    return [int(lo + (hi - lo) * i / (n + 1)) for i in range(1, n + 1)]


def resolve_pipeline(cfg: Any) -> PipelineSpec:
    """Resolve and check every option of a pipeline run before any work starts.

    Args:
        cfg: a :class:`~branchnas.pipeline.run.PipelineConfig` (the options as given).

    Raises:
        BranchnasError: one line for a bad space, profile, task, budget, strategy, measure,
            K, baseline, device or training setting (any model's, tuned settings included).
    """
    from ..affinity import list_measures
    from ..models.baselines import list_baselines
    from ..search import format_budget, list_strategies, parse_budget

    base = resolve_run(cfg.space, profile=cfg.profile, tasks=cfg.tasks, out=cfg.out,
                       overrides=cfg.training, device=cfg.device,
                       force=getattr(cfg, "force", False))
    prof = get_profile(base.profile)
    space = base.space
    if cfg.strategy != "auto" and cfg.strategy not in list_strategies():
        raise BranchnasError(f"unknown search strategy {cfg.strategy!r}; choose auto or one of: "
                             f"{', '.join(list_strategies())}")
    if cfg.measure not in list_measures():
        raise BranchnasError(f"unknown affinity measure {cfg.measure!r}; choose one of: "
                             f"{', '.join(list_measures())}")
    baselines = list(cfg.baselines) if cfg.baselines is not None else \
        list(prof.get("baselines", DEFAULT_BASELINES))
    unknown = [b for b in baselines if b not in list_baselines()]
    if unknown:
        raise BranchnasError(f"unknown baseline(s) {', '.join(unknown)}; choose from: "
                             f"{', '.join(list_baselines())}")
    k = _positive_int("k (held-out images for the affinity)",
                      cfg.k if cfg.k is not None else prof.get("k", DEFAULT_K), MIN_K,
                      "give --k 3 or more")
    if cfg.budgets:
        budgets = [parse_budget(b) for b in cfg.budgets]
    else:
        budgets = default_budgets(space, _positive_int(
            "budgets", prof.get("budgets", DEFAULT_BUDGET_COUNT)))
    cheapest = space.tree_params(space.fully_shared_tree())
    if min(budgets) < cheapest:
        raise BranchnasError(
            f"budget {format_budget(min(budgets))} params is below the cheapest tree of {space.name} "
            f"(fully shared, {format_budget(cheapest)}); give budgets of at least {cheapest}")
    spec = PipelineSpec(space=space, profile=base.profile, layout=base.layout,
                        overrides=base.overrides, device=base.device, force=base.force,
                        budgets=budgets, k=k, baselines=baselines, strategy=cfg.strategy,
                        measure=cfg.measure, config=cfg)
    # every model's settings (tuned files included) checked before anything trains
    for model in [*(f"single:{t}" for t in space.task_names), *baselines]:
        spec.train_config(model)
    return spec
