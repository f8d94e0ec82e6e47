"""Search spaces: a backbone with cut points, tasks with their heads, input size, dataset.

A search space is data. It is written as a TOML file (``search_spaces/<name>.toml``) and
loaded with :func:`load_space`; a branched network is built from it and a task tree by
:class:`branchnas.models.BranchedNet`. File format (every key is checked; a malformed file
fails with a one-line error naming the file and the key)::

    description = "what this space is for"   # optional

    [backbone]
    name = "resnet50"            # a registered backbone (list_backbones()), or "timm:<model>"
    output_stride = 8            # any other key is an option of that backbone
    weights = "IMAGENET1K_V1"    # resnet*: torchvision weights; timm:<model>: pretrained = true
    cuts = ["layer2", "layer4"]  # optional: branch only after these blocks (default: all)

    [input]
    size = [256, 512]            # [H, W] the network sees (and the labels' resolution)

    [dataset]
    name = "cityscapes"          # any other key is passed to create_dataset

    [heads]                      # optional defaults by task kind
    dense = "psp"                # for pixel-wise tasks (default: the task type's head)
    image = "mlp"                # for image-level tasks

    [[tasks]]                    # one table per task, in task-index order
    name = "semantic"
    type = "segmentation"        # a registered task type (branchnas.tasks)
    params = { num_classes = 19 }
    head = "psp"                 # optional: overrides [heads]
    head_params = { channels = 512 }   # optional options of the head
    primary = "miou"             # optional: the metric Δm uses (default: the type's)

    [training]                   # optional flat table of training defaults (read by the
    optimizer = "sgd"            # trainer; values are strings, numbers, booleans or lists,
    lr = 0.01                    # or a table of those: task_weights = { keypoints = 10 })

    [search]                     # optional
    shared_prefix = 1            # blocks every tree shares; branching only over the rest
                                 # (the paper's Cityscapes trees branch in blocks 2-4 only)

``cuts`` lists the backbone blocks after which tasks may branch; the last block is always
a cut. Consecutive backbone blocks between two cuts form one block of the space, so the
space's depth D is the number of cuts and a tree over it has D groupings.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from ..accounting import tree_flops, tree_params
from ..errors import BranchnasError
from .._resources import shipped_resource_dir
from ..tasks import Task, create_task
from ..tree import Tree
from ._common import option_names
from .backbones import Backbone, BlockInfo, CutBackbone, create_backbone, get_backbone
from .heads import create_head, get_head, head_flops, head_params

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

__all__ = [
    "SearchSpace",
    "load_space",
    "list_spaces",
    "space_dirs",
    "describe_space",
    "format_description",
]

logger = logging.getLogger(__name__)

_TOP_KEYS = ("description", "backbone", "input", "dataset", "heads", "tasks", "training",
             "search")
_TASK_KEYS = ("name", "type", "params", "head", "head_params", "primary")


def space_dirs() -> List[Path]:
    """Directories searched for ``<name>.toml`` by :func:`load_space`, in order.

    The shipped spaces are package data (``branchnas/resources/search_spaces/``), found with
    :mod:`importlib.resources` so an installed wheel finds them as an editable install does.
    """
    return [shipped_resource_dir("search_spaces")]


MAX_INPUT_SIDE = 8192
"""Largest input height or width a space may declare."""


def list_spaces() -> List[str]:
    """Names of the search spaces shipped with branchnas, sorted."""
    names = set()
    for d in space_dirs():
        names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def load_space(name_or_path: Union[str, Path]) -> "SearchSpace":
    """Load a search space by name (a shipped ``search_spaces/<name>.toml``) or from a file.

    Args:
        name_or_path: a bare name such as ``"scenes"``, or a path to a ``.toml`` file.

    Returns:
        The validated :class:`SearchSpace`.

    Raises:
        BranchnasError: for an unknown name (listing the shipped ones), a missing or
            unreadable file, invalid TOML, or any invalid key (named in the message).

    Example:
        >>> space = load_space("scenes")
        >>> space.depth, space.input_size
        (4, (64, 64))
    """
    text = str(name_or_path)
    path = Path(text)
    looks_like_path = path.suffix == ".toml" or "/" in text or "\\" in text or path.is_file()
    if not looks_like_path:
        for d in space_dirs():
            candidate = d / f"{text}.toml"
            if candidate.is_file():
                path = candidate
                break
        else:
            raise BranchnasError(
                f"unknown search space {text!r}; choose one of: {', '.join(list_spaces())} "
                "or give a path to a .toml file"
            )
    if not path.is_file():
        raise BranchnasError(f"search-space file {str(path)!r} does not exist; check the path")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise BranchnasError(f"{path}: invalid TOML: {e}; fix the file's syntax") from None
    except (UnicodeDecodeError, RecursionError) as e:  # a binary file, or absurd nesting
        raise BranchnasError(f"{path}: not a TOML text file ({type(e).__name__}); "
                             "give a UTF-8 search-space file") from None
    except OSError as e:
        raise BranchnasError(f"cannot read search-space file {str(path)!r}: {e.strerror}") from None
    return SearchSpace.from_dict(raw, name=path.stem, source=str(path))


# ---------------------------------------------------------------------- validation helpers
class _Checker:
    """Builds one-line errors of the form ``<source>: key 'a.b': problem; fix``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> BranchnasError:
        return BranchnasError(f"{self.source}: key {key!r}: {problem}")

    def table(self, obj: Any, key: str, required: bool = True) -> Dict[str, Any]:
        if obj is None:
            if required:
                raise self.fail(key, "is missing; add this table")
            return {}
        if not isinstance(obj, Mapping):
            raise self.fail(key, f"must be a table, got {type(obj).__name__}")
        return dict(obj)

    def only(self, obj: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
        for k in obj:
            if k not in allowed:
                where = f"{prefix}.{k}" if prefix else k
                raise self.fail(where, f"is not a known key; use one of: {', '.join(allowed)}")

    def string(self, obj: Mapping[str, Any], k: str, prefix: str, required: bool = True) -> Any:
        key = f"{prefix}.{k}" if prefix else k
        if k not in obj:
            if required:
                raise self.fail(key, "is missing; add it (a string)")
            return None
        v = obj[k]
        if not isinstance(v, str) or not v:
            raise self.fail(key, f"must be a non-empty string, got {v!r}")
        return v


def _plain_value(v: Any) -> bool:
    if isinstance(v, (str, bool, int, float)):
        return True
    if isinstance(v, Mapping):  # e.g. task_weights = { keypoints = 10 }: one level of scalars
        return all(isinstance(k, str) and isinstance(x, (str, bool, int, float))
                   for k, x in v.items())
    return isinstance(v, list) and all(isinstance(x, (str, bool, int, float)) for x in v)


# ---------------------------------------------------------------------- the space
class SearchSpace:
    """A backbone with cut points, tasks with heads, input size, dataset and training defaults.

    Usually made by :func:`load_space` / :meth:`from_dict`.

    Args:
        name: the space's name.
        backbone: the backbone description, already restricted to the space's cut points
            (``create_backbone(...).with_cuts(cuts)``), so ``backbone.blocks`` are the
            space's D blocks.
        tasks: the tasks, in task-index order.
        input_size: ``(H, W)`` of the network input and of dense labels.
        heads: task name → head kind (default: the task type's ``default_head``).
        head_kwargs: task name → head options.
        dataset: ``{"name": ..., **kwargs}``.
        training: flat dict of training defaults.
        shared_prefix: blocks every tree of the space shares (``[search] shared_prefix``);
            the search, the pipeline and the validation study branch over the rest only.
        description: free text.
        source: where the space came from (a file path), for messages.

    Attributes:
        blocks: :class:`BlockInfo` per block of the space (``backbone.blocks``).
        depth: D, the number of blocks (= cut points).
        locations: block names (where features are taken for the affinity).

    Raises:
        BranchnasError: for duplicate task names, a head that does not fit a task, or a
            dense task on a backbone whose last block outputs vectors.
    """

    def __init__(
        self,
        name: str,
        backbone: Backbone,
        tasks: Sequence[Task],
        input_size: Sequence[int],
        heads: Optional[Mapping[str, str]] = None,
        head_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
        dataset: Optional[Mapping[str, Any]] = None,
        training: Optional[Mapping[str, Any]] = None,
        description: str = "",
        source: Optional[str] = None,
        shared_prefix: int = 0,
    ) -> None:
        self.name = name
        self.description = description
        self.source = source
        self.backbone = backbone
        self.tasks: List[Task] = list(tasks)
        if not self.tasks:
            raise BranchnasError(f"search space {name!r} has no tasks; add at least one task")
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise BranchnasError(
                f"search space {name!r} lists task(s) {', '.join(dup)} twice; give each task once"
            )
        h, w = (int(v) for v in input_size)
        self.input_size: Tuple[int, int] = (h, w)
        self.dataset: Dict[str, Any] = dict(dataset or {})
        self.training: Dict[str, Any] = dict(training or {})
        depth = len(backbone.blocks)
        if isinstance(shared_prefix, bool) or not isinstance(shared_prefix, int) \
                or not 0 <= shared_prefix < depth:
            raise BranchnasError(
                f"search space {name!r}: [search] shared_prefix must be an integer in "
                f"0..{depth - 1} (branching needs a free block), got {shared_prefix!r}")
        self.shared_prefix = int(shared_prefix)
        heads = dict(heads or {})
        for what, given in (("heads", heads), ("head_kwargs", head_kwargs or {})):
            stray = sorted(set(given) - set(names))
            if stray:
                raise BranchnasError(
                    f"search space {name!r}: {what} name task(s) {', '.join(stray)} that it "
                    f"does not have; use tasks from: {', '.join(names)}"
                )
        self.heads: Dict[str, str] = {t.name: heads.get(t.name, t.default_head) for t in self.tasks}
        self.head_kwargs: Dict[str, Dict[str, Any]] = {
            t.name: dict((head_kwargs or {}).get(t.name, {})) for t in self.tasks
        }
        self.blocks: List[BlockInfo] = backbone.blocks
        for t in self.tasks:
            if t.dense and not backbone.spatial:
                raise BranchnasError(
                    f"task {t.name!r} predicts per pixel but backbone {backbone.name!r} ends "
                    "with vector (fc) blocks; drop its fc blocks or make the task image-level"
                )
            # validates kind, fit and options once, with a message naming the task
            try:
                head_params(
                    self.heads[t.name],
                    self.feature_channels,
                    t.out_channels,
                    t.dense,
                    **self.head_kwargs[t.name],
                )
            except BranchnasError as e:
                raise BranchnasError(f"task {t.name!r}: {e}") from None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(
        cls, raw: Mapping[str, Any], name: str = "space", source: Optional[str] = None
    ) -> "SearchSpace":
        """Validate a parsed TOML document (see the module docstring) and build the space.

        Raises:
            BranchnasError: one line naming the source and the offending key.
        """
        chk = _Checker(source or f"search space {name!r}")
        chk.only(raw, _TOP_KEYS, "")
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise chk.fail("description", "must be a string")

        # [backbone]
        bb_raw = chk.table(raw.get("backbone"), "backbone")
        bb_name = chk.string(bb_raw, "name", "backbone")
        bb_kwargs = {k: v for k, v in bb_raw.items() if k not in ("name", "cuts")}
        try:
            known = option_names(get_backbone(bb_name))
        except BranchnasError as e:
            raise chk.fail("backbone.name", str(e)) from None
        for k in bb_kwargs:
            if known is not None and k not in known:
                raise chk.fail(
                    f"backbone.{k}",
                    f"is not an option of backbone {bb_name!r}; "
                    f"choose from: {', '.join(known + ['cuts'])}",
                )
        try:
            base = create_backbone(bb_name, **bb_kwargs)
            base.blocks  # measure now so bad options fail here  # noqa: B018
        except BranchnasError as e:
            raise chk.fail("backbone", str(e)) from None
        except (TypeError, ValueError, OverflowError) as e:  # an option of the wrong type
            raise chk.fail("backbone", f"an option has a value of the wrong type ({e}); "
                           f"options given: {', '.join(bb_kwargs) or '(none)'}") from None
        cuts = None
        if "cuts" in bb_raw:
            names = [b.name for b in base.blocks]
            raw_cuts = bb_raw["cuts"]
            if not isinstance(raw_cuts, list) or not raw_cuts:
                raise chk.fail(
                    "backbone.cuts", f"must be a list of block names from: {', '.join(names)}"
                )
            cuts = []
            for c in raw_cuts:
                if c not in names:
                    raise chk.fail(
                        "backbone.cuts",
                        f"{c!r} is not a block of {bb_name}; use names from: {', '.join(names)}",
                    )
                cuts.append(names.index(c))
            if cuts != sorted(set(cuts)):
                raise chk.fail("backbone.cuts", "must list blocks once each, in network order")
        backbone = base.with_cuts(cuts)

        # [input]
        inp = chk.table(raw.get("input"), "input")
        chk.only(inp, ("size",), "input")
        size = inp.get("size")
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise chk.fail("input.size", f"must be [H, W], two positive integers, got {size!r}")
        # below the backbone's output stride the last blocks see padding only; above the
        # maximum a single image no longer fits any device (both are typos in practice)
        min_side = max([b.stride for b in base.blocks if b.spatial] + [1])
        if min(size) < min_side or max(size) > MAX_INPUT_SIDE:
            raise chk.fail("input.size", f"must be between {min_side} (the output stride of "
                           f"{bb_name}) and {MAX_INPUT_SIDE} per side, got {size!r}")
        try:
            backbone.block_flops(size)
        except BranchnasError as e:
            raise chk.fail("input.size", str(e)) from None

        # [dataset]
        ds = chk.table(raw.get("dataset"), "dataset")
        ds_name = chk.string(ds, "name", "dataset")
        from ..data import list_datasets  # same layer; imported here to keep `import` light

        if ds_name not in list_datasets():
            raise chk.fail("dataset.name", f"unknown dataset {ds_name!r}; choose one of: "
                           f"{', '.join(list_datasets())}")

        # [heads]
        hd = chk.table(raw.get("heads"), "heads", required=False)
        chk.only(hd, ("dense", "image"), "heads")
        default_dense = chk.string(hd, "dense", "heads", required=False)
        default_image = chk.string(hd, "image", "heads", required=False)

        # [[tasks]]
        tasks_raw = raw.get("tasks")
        if not isinstance(tasks_raw, list) or not tasks_raw:
            raise chk.fail("tasks", "must be a non-empty array of tables ([[tasks]] entries)")
        tasks: List[Task] = []
        heads: Dict[str, str] = {}
        head_kwargs: Dict[str, Dict[str, Any]] = {}
        seen = set()
        for i, tr in enumerate(tasks_raw):
            key = f"tasks[{i}]"
            tr = chk.table(tr, key)
            chk.only(tr, _TASK_KEYS, key)
            tname = chk.string(tr, "name", key)
            if tname in seen:
                raise chk.fail(
                    f"{key}.name", f"task {tname!r} is listed twice; give each task once"
                )
            seen.add(tname)
            ttype = chk.string(tr, "type", key)
            params = chk.table(tr.get("params"), f"{key}.params", required=False)
            primary = chk.string(tr, "primary", key, required=False)
            try:
                task = create_task(tname, ttype, primary=primary, **params)
            except BranchnasError as e:
                raise chk.fail(key, str(e)) from None
            tasks.append(task)
            kind = chk.string(tr, "head", key, required=False)
            if kind is None:
                kind = (default_dense if task.dense else default_image) or task.default_head
            heads[tname] = kind
            hkw = chk.table(tr.get("head_params"), f"{key}.head_params", required=False)
            head_kwargs[tname] = hkw
            if task.dense and not backbone.spatial:
                raise chk.fail(
                    f"{key}.type",
                    f"task {tname!r} predicts per pixel but backbone {bb_name!r} ends with vector "
                    "(fc) blocks; drop the fc blocks or use an image-level task",
                )
            feat_ch = backbone.blocks[-1].out_channels
            if "head" in tr:
                kind_key = f"{key}.head"
            else:
                kind_key = (
                    ("heads.dense" if task.dense else "heads.image")
                    if (default_dense if task.dense else default_image)
                    else f"{key}.type"
                )
            try:
                head_params(kind, feat_ch, task.out_channels, task.dense)
            except BranchnasError as e:
                raise chk.fail(kind_key, str(e)) from None
            known = option_names(get_head(kind), reserved=("in_channels", "out_channels"))
            for k in hkw:
                if known is not None and k not in known:
                    raise chk.fail(
                        f"{key}.head_params.{k}",
                        f"is not an option of head {kind!r}; "
                        f"choose from: {', '.join(known) or '(none)'}",
                    )
            try:
                head_params(kind, feat_ch, task.out_channels, task.dense, **hkw)
            except BranchnasError as e:
                raise chk.fail(f"{key}.head_params", str(e)) from None

        # [training]
        tr_raw = chk.table(raw.get("training"), "training", required=False)
        for k, v in tr_raw.items():
            if not _plain_value(v):
                raise chk.fail(
                    f"training.{k}",
                    "must be a string, number, boolean, list or table of those",
                )
        for k in ("task_weights", "task_batch_sizes"):  # per-task tables name the space's tasks
            given = tr_raw.get(k)
            stray = sorted(set(given) - {t.name for t in tasks}) if isinstance(given, Mapping) else []
            if stray:
                raise chk.fail(f"training.{k}", f"names task(s) {', '.join(stray)} that the space "
                               f"does not have; use: {', '.join(t.name for t in tasks)}")

        # [search]
        se_raw = chk.table(raw.get("search"), "search", required=False)
        chk.only(se_raw, ("shared_prefix",), "search")
        prefix = se_raw.get("shared_prefix", 0)
        if isinstance(prefix, bool) or not isinstance(prefix, int) \
                or not 0 <= prefix < len(backbone.blocks):
            raise chk.fail("search.shared_prefix", f"must be an integer in "
                           f"0..{len(backbone.blocks) - 1} (blocks every tree shares; at least "
                           f"one must stay free to branch), got {prefix!r}")

        return cls(
            name=name,
            backbone=backbone,
            tasks=tasks,
            input_size=size,
            heads=heads,
            head_kwargs=head_kwargs,
            dataset=ds,
            training=tr_raw,
            description=description,
            source=source,
            shared_prefix=prefix,
        )

    def to_dict(self) -> Dict[str, Any]:
        """The space as a TOML-shaped dict (resolved: every task's head written out).

        ``SearchSpace.from_dict(space.to_dict())`` gives an equal space.
        """
        base = self.backbone.base if isinstance(self.backbone, CutBackbone) else self.backbone
        if base.spec is None:
            raise BranchnasError(
                f"backbone {base.name!r} was not made by create_backbone, so it cannot be "
                "written as a search-space file; register it and create it by name"
            )
        bb = dict(base.spec)
        if isinstance(self.backbone, CutBackbone):
            bb["cuts"] = [base.blocks[c].name for c in self.backbone.cuts]
        out: Dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        out["backbone"] = bb
        out["input"] = {"size": list(self.input_size)}
        out["dataset"] = dict(self.dataset)
        tasks = []
        for t in self.tasks:
            entry: Dict[str, Any] = {"name": t.name, "type": t.type}
            given = {k: v for k, v in t.params.items() if v is not None}
            if given:
                entry["params"] = given
            entry["head"] = self.heads[t.name]
            if t.primary != type(t).primary_metric:
                entry["primary"] = t.primary
            if self.head_kwargs[t.name]:
                entry["head_params"] = dict(self.head_kwargs[t.name])
            tasks.append(entry)
        out["tasks"] = tasks
        if self.training:
            out["training"] = dict(self.training)
        if self.shared_prefix:
            out["search"] = {"shared_prefix": self.shared_prefix}
        return out

    def subset(self, tasks: Sequence[str]) -> "SearchSpace":
        """The same space restricted to ``tasks`` (in the given order).

        Raises:
            BranchnasError: for a task the space does not have.
        """
        by_name = {t.name: t for t in self.tasks}
        missing = [t for t in tasks if t not in by_name]
        if missing:
            raise BranchnasError(
                f"search space {self.name!r} has no task(s) {', '.join(missing)}; "
                f"choose from: {', '.join(self.task_names)}"
            )
        return SearchSpace(
            name=self.name,
            backbone=self.backbone,
            tasks=[by_name[t] for t in tasks],
            input_size=self.input_size,
            heads={t: self.heads[t] for t in tasks},
            head_kwargs={t: self.head_kwargs[t] for t in tasks},
            dataset=self.dataset,
            training=self.training,
            description=self.description,
            source=self.source,
            shared_prefix=self.shared_prefix,
        )

    # ------------------------------------------------------------------ structure
    @property
    def task_names(self) -> List[str]:
        """Task names in task-index order."""
        return [t.name for t in self.tasks]

    def task(self, name: str) -> Task:
        """The task called ``name``.

        Raises:
            BranchnasError: for an unknown task, listing the space's tasks.
        """
        for t in self.tasks:
            if t.name == name:
                return t
        raise BranchnasError(
            f"search space {self.name!r} has no task {name!r}; "
            f"choose from: {', '.join(self.task_names)}"
        )

    @property
    def depth(self) -> int:
        """D: the number of sharable blocks (cut points) of the space."""
        return len(self.blocks)

    @property
    def locations(self) -> List[str]:
        """Names of the cut points (block outputs), block 1 first."""
        return [b.name for b in self.blocks]

    @property
    def dataset_name(self) -> str:
        """The dataset's registered name."""
        return str(self.dataset.get("name", ""))

    @property
    def dataset_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``create_dataset`` besides the name."""
        return {k: v for k, v in self.dataset.items() if k != "name"}

    @property
    def feature_channels(self) -> int:
        """Channels of the last block's output, the input of every head."""
        return self.blocks[-1].out_channels

    def make_block(self, d: int) -> nn.Module:
        """A fresh copy of block ``d`` (0-based) of the space.

        Raises:
            BranchnasError: for ``d`` outside ``0..D-1``.
        """
        if not 0 <= d < self.depth:
            raise BranchnasError(
                f"search space {self.name!r} has blocks 0..{self.depth - 1}, not {d}; "
                "use a 0-based index"
            )
        return self.backbone.make_block(d)

    def make_head(self, task: str) -> nn.Module:
        """A fresh head for ``task``, reading the last block's features."""
        t = self.task(task)
        return create_head(
            self.heads[t.name],
            self.feature_channels,
            t.out_channels,
            t.dense,
            **self.head_kwargs[t.name],
        )

    # ------------------------------------------------------------------ accounting
    @property
    def block_params(self) -> List[int]:
        """Parameters of one copy of each block of the space."""
        return [b.params for b in self.blocks]

    @property
    def block_flops(self) -> List[int]:
        """FLOPs of one copy of each block for one image at :attr:`input_size`."""
        return self.backbone.block_flops(self.input_size)

    @property
    def block_shapes(self) -> List[Tuple[int, ...]]:
        """Output shape of each block (no batch dimension) at :attr:`input_size`."""
        return self.backbone.block_shapes(self.input_size)

    @property
    def head_params(self) -> Dict[str, int]:
        """Task → parameters of its head."""
        return {
            t.name: head_params(
                self.heads[t.name],
                self.feature_channels,
                t.out_channels,
                t.dense,
                **self.head_kwargs[t.name],
            )
            for t in self.tasks
        }

    @property
    def head_flops(self) -> Dict[str, int]:
        """Task → FLOPs of its head for one image at :attr:`input_size` (output at that size)."""
        feat = self.block_shapes[-1]
        return {
            t.name: head_flops(
                self.heads[t.name],
                self.feature_channels,
                t.out_channels,
                t.dense,
                feat,
                self.input_size if t.dense else None,
                **self.head_kwargs[t.name],
            )
            for t in self.tasks
        }

    def check_tree(self, tree: Tree) -> None:
        """Raise :class:`BranchnasError` unless ``tree`` fits: D depths, this space's tasks."""
        if tree.depth != self.depth:
            raise BranchnasError(
                f"the tree has {tree.depth} depths but search space {self.name!r} has {self.depth} "
                "cut points; give one grouping per cut point"
            )
        unknown = [t for t in tree.tasks if t not in self.task_names]
        if unknown:
            raise BranchnasError(
                f"the tree has task(s) {', '.join(unknown)} that search space {self.name!r} lacks; "
                f"use tasks from: {', '.join(self.task_names)}"
            )

    def tree_params(self, tree: Tree) -> int:
        """Exact parameters of the branched network for ``tree`` (heads of its tasks included).

        Raises:
            BranchnasError: when the tree does not fit the space.
        """
        self.check_tree(tree)
        return tree_params(tree, self.block_params, head_params=self.head_params)

    def tree_flops(self, tree: Tree) -> int:
        """FLOPs of one forward pass of the branched network for ``tree``, one image.

        Raises:
            BranchnasError: when the tree does not fit the space.
        """
        self.check_tree(tree)
        return tree_flops(tree, self.block_flops, head_flops=self.head_flops)

    def single_task_tree(self) -> Tree:
        """The tree that shares nothing (N single-task networks)."""
        return Tree.single_task(self.task_names, self.depth)

    def fully_shared_tree(self) -> Tree:
        """The tree that shares every block (the MTL baseline)."""
        return Tree.fully_shared(self.task_names, self.depth)

    def __repr__(self) -> str:
        return (
            f"SearchSpace({self.name!r}, backbone={self.backbone.name!r}, D={self.depth}, "
            f"tasks={self.task_names}, input_size={self.input_size})"
        )


# ---------------------------------------------------------------------- describe
def describe_space(space: SearchSpace, tree: Optional[Tree] = None) -> Dict[str, Any]:
    """Plain-data summary of a space: blocks, heads and the cost of key trees.

    Args:
        space: the search space.
        tree: optionally a tree to cost as well.

    Returns:
        ``{"name", "backbone", "input_size", "depth", "tasks",
        "blocks": [{"name", "in_channels", "out_channels", "stride", "params", "flops"}],
        "heads": [{"task", "kind", "params", "flops"}],
        "totals": {"single_task": {"params", "flops"}, "fully_shared": {...}, "tree": {...}}}``;
        ``"tree"`` (and ``"tree_json"``) only when a tree is given. FLOPs are for one image
        at the space's input size.

    Raises:
        BranchnasError: when ``tree`` does not fit the space.
    """
    flops = space.block_flops
    hp, hf = space.head_params, space.head_flops
    desc: Dict[str, Any] = {
        "name": space.name,
        "backbone": space.backbone.name,
        "input_size": list(space.input_size),
        "depth": space.depth,
        "tasks": space.task_names,
        "blocks": [
            {
                "name": b.name,
                "in_channels": b.in_channels,
                "out_channels": b.out_channels,
                "stride": b.stride,
                "params": b.params,
                "flops": f,
            }
            for b, f in zip(space.blocks, flops)
        ],
        "heads": [
            {"task": t, "kind": space.heads[t], "params": hp[t], "flops": hf[t]}
            for t in space.task_names
        ],
    }
    totals: Dict[str, Dict[str, int]] = {}
    for key, tr in (
        ("single_task", space.single_task_tree()),
        ("fully_shared", space.fully_shared_tree()),
    ):
        totals[key] = {"params": space.tree_params(tr), "flops": space.tree_flops(tr)}
    if tree is not None:
        totals["tree"] = {"params": space.tree_params(tree), "flops": space.tree_flops(tree)}
        desc["tree_json"] = tree.to_json()
    desc["totals"] = totals
    return desc


def _human(n: float) -> str:
    if n == 0:
        return "0"
    units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
    for scale, unit in units:
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n)) if float(n).is_integer() else f"{n:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        )

    return [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]


def format_description(desc: Mapping[str, Any]) -> str:
    """Render :func:`describe_space`'s dict as text tables (blocks, heads, totals)."""
    h, w = desc["input_size"]
    lines = [
        f"search space {desc['name']}: backbone {desc['backbone']}, D={desc['depth']}, "
        f"input {h}x{w}, tasks: {', '.join(desc['tasks'])}",
        "",
    ]
    lines += _table(
        ["block", "in", "out", "stride", "params", "FLOPs"],
        [
            [
                b["name"],
                b["in_channels"],
                b["out_channels"],
                b["stride"] or "-",
                _human(b["params"]),
                _human(b["flops"]),
            ]
            for b in desc["blocks"]
        ],
    )
    lines.append("")
    lines += _table(
        ["head", "kind", "params", "FLOPs"],
        [[x["task"], x["kind"], _human(x["params"]), _human(x["flops"])] for x in desc["heads"]],
    )
    lines.append("")
    labels = {"single_task": "all single-task", "fully_shared": "fully shared", "tree": "this tree"}
    lines += _table(
        ["network", "params", "FLOPs"],
        [
            [labels.get(k, k), f"{_human(v['params'])} ({v['params']:,})", _human(v["flops"])]
            for k, v in desc["totals"].items()
        ],
    )
    return "\n".join(lines)
