"""Partial labels (UberNet): items that lack some tasks' labels, and batches that say so.

Every item carries ``present[task]``; a missing label is stored as the task's
``empty_target`` (its invalid marker everywhere) so that batches stack, and losses and meters
skip it through the batch's ``present`` mask (docs/internals.md, "Tasks").

* :func:`collate` stacks items into a batch with a bool ``(B,)`` presence mask per task.
* :class:`UnionDataset` concatenates datasets that label different tasks into one training
  set (e.g. a segmentation set and a depth set), as UberNet trains on a union of datasets.
* :class:`HiddenLabels` hides a deterministic fraction of a dataset's labels per task, to
  study partial supervision on a fully labelled benchmark.

Example:
    >>> from branchnas.data import ScenesDataset
    >>> a = ScenesDataset("val", size=2, resolution=16, tasks=["semseg"], cache_dir=False)
    >>> b = ScenesDataset("test", size=3, resolution=16, tasks=["depth"], cache_dir=False)
    >>> u = UnionDataset([a, b])
    >>> batch = collate([u[0], u[3]])
    >>> batch["present"]["semseg"].tolist(), batch["present"]["depth"].tolist()
    ([True, False], [False, True])
"""

from __future__ import annotations

import bisect
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import BranchnasError
from .base import Item

__all__ = ["HiddenLabels", "UnionDataset", "collate", "make_tasks"]

logger = logging.getLogger(__name__)


def make_tasks(specs: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Task objects (``branchnas.tasks.create_task``) for a ``.tasks`` catalogue."""
    from ..tasks import create_task  # same layer; imported on use

    return {name: create_task(name, **dict(spec)) for name, spec in specs.items()}


def _empty(task: Any, image: Tensor) -> Tensor:
    return task.empty_target(image)


def collate(items: Sequence[Item],
            tasks: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, Any]:
    """Stack items into a batch.

    Args:
        items: dataset items (``{"image", "labels", "present"}``).
        tasks: task catalogue (name -> {"type", ...}); needed only when some item has no
            label tensor at all for a task another item has (the label is then filled with
            the task's ``empty_target``). Items from :class:`UnionDataset` and
            :class:`HiddenLabels` already carry filled labels.

    Returns:
        ``{"image": (B, 3, H, W), "labels": {task: (B, ...)}, "present": {task: bool (B,)}}``.
        A task appears if any item has it.

    Raises:
        BranchnasError: for an empty list, images of different sizes, or a missing label
            that cannot be filled.
    """
    if not items:
        raise BranchnasError("collate got no items; use a batch size of at least 1")
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) > 1:
        raise BranchnasError(
            f"cannot batch images of different sizes {sorted(shapes)}; give every dataset the "
            "same resolution"
        )
    for i, it in enumerate(items):  # NaN/inf pixels are bad data, not a divergence
        if it["image"].is_floating_point() and not bool(torch.isfinite(it["image"]).all()):
            raise BranchnasError(
                f"bad data: batch item {i} has NaN/inf image values; fix or remove that sample "
                "(the dataset yields it)"
            )
    names: List[str] = list(dict.fromkeys(t for it in items for t in it["labels"]))
    task_objs: Optional[Dict[str, Any]] = None
    labels: Dict[str, Tensor] = {}
    present: Dict[str, Tensor] = {}
    for name in names:
        column: List[Tensor] = []
        flags: List[bool] = []
        for it in items:
            if name in it["labels"]:
                column.append(it["labels"][name])
                flags.append(bool(it["present"].get(name, True)))
                continue
            if tasks is None or name not in tasks:
                raise BranchnasError(
                    f"an item has no label for task {name!r}; combine datasets with "
                    "UnionDataset or pass collate(..., tasks=dataset.tasks)"
                )
            if task_objs is None:
                task_objs = make_tasks({t: tasks[t] for t in names if t in tasks})
            column.append(_empty(task_objs[name], it["image"]))
            flags.append(False)
        try:
            labels[name] = torch.stack(column)
        except RuntimeError as exc:
            raise BranchnasError(
                f"labels of task {name!r} have different shapes or types ({exc}); give every "
                "dataset the same resolution and task definitions"
            ) from None
        present[name] = torch.tensor(flags, dtype=torch.bool)
    return {"image": torch.stack([it["image"] for it in items]), "labels": labels,
            "present": present}


class UnionDataset(Dataset):
    """Concatenation of datasets that label different (possibly overlapping) tasks.

    Item ``i`` comes from the dataset holding it; tasks that dataset does not label get
    ``empty_target`` labels and ``present`` False, so every item has every task of the union.

    Args:
        datasets: datasets with a ``.tasks`` catalogue (branchnas datasets).

    Attributes:
        tasks: union of the catalogues, in order of first appearance.
        datasets: the members.

    Raises:
        BranchnasError: for an empty list, a member without ``.tasks``, or a task that two
            members define differently.
    """

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        if not datasets:
            raise BranchnasError("UnionDataset needs at least one dataset")
        self.datasets = list(datasets)
        self.tasks: Dict[str, Dict[str, Any]] = {}
        owner: Dict[str, int] = {}
        for k, ds in enumerate(self.datasets):
            cat = getattr(ds, "tasks", None)
            if not isinstance(cat, Mapping):
                raise BranchnasError(
                    f"dataset {k} ({type(ds).__name__}) has no .tasks catalogue; use branchnas "
                    "datasets or give it a .tasks dict name -> {'type': ...}"
                )
            for name, spec in cat.items():
                spec = dict(spec)
                if name in self.tasks and self.tasks[name] != spec:
                    raise BranchnasError(
                        f"task {name!r} is {self.tasks[name]} in dataset {owner[name]} but "
                        f"{spec} in dataset {k}; rename one or select matching tasks"
                    )
                self.tasks.setdefault(name, spec)
                owner.setdefault(name, k)
        self._ends = np.cumsum([len(ds) for ds in self.datasets]).tolist()
        self._task_objs: Optional[Dict[str, Any]] = None

    def __len__(self) -> int:
        return self._ends[-1]

    def locate(self, index: int) -> Tuple[int, int]:
        """(member, index inside that member) of union item ``index``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        k = bisect.bisect_right(self._ends, index)
        return k, index - (self._ends[k - 1] if k else 0)

    def __getitem__(self, index: int) -> Item:
        k, j = self.locate(index)
        item = self.datasets[k][j]
        if self._task_objs is None:
            self._task_objs = make_tasks(self.tasks)
        labels = dict(item["labels"])
        present = {t: bool(item["present"].get(t, True)) for t in labels}
        for name in self.tasks:
            if name not in labels:
                labels[name] = _empty(self._task_objs[name], item["image"])
                present[name] = False
        order = list(self.tasks)
        return {"image": item["image"], "labels": {t: labels[t] for t in order},
                "present": {t: present[t] for t in order}}

    def collate(self, items: Sequence[Item]) -> Dict[str, Any]:
        """:func:`collate` with this union's task catalogue (a DataLoader ``collate_fn``)."""
        return collate(items, self.tasks)


class HiddenLabels(Dataset):
    """A view of a dataset in which a fixed fraction of each task's labels is hidden.

    Which labels are hidden depends only on (seed, task, index), so it is the same in every
    epoch and every worker. A hidden label becomes the task's ``empty_target`` with
    ``present`` False.

    Args:
        dataset: a branchnas dataset.
        hidden: task -> fraction in [0, 1] of items whose label is hidden (tasks not named
            keep all labels).
        seed: seed of the choice.

    Raises:
        BranchnasError: for a task the dataset does not label or a fraction outside [0, 1].
    """

    def __init__(self, dataset: Dataset, hidden: Mapping[str, float], seed: int = 0) -> None:
        cat = getattr(dataset, "tasks", None)
        if not isinstance(cat, Mapping):
            raise BranchnasError("HiddenLabels needs a dataset with a .tasks catalogue")
        for name, frac in hidden.items():
            if name not in cat:
                raise BranchnasError(
                    f"cannot hide labels of {name!r}: the dataset labels {', '.join(cat)}"
                )
            if not 0.0 <= float(frac) <= 1.0:
                raise BranchnasError(f"hidden fraction for {name!r} must be in [0, 1], got {frac}")
        self.dataset = dataset
        self.tasks: Dict[str, Dict[str, Any]] = {k: dict(v) for k, v in cat.items()}
        self.hidden = {k: float(v) for k, v in hidden.items()}
        self.seed = int(seed)
        n = len(dataset)
        self._mask: Dict[str, np.ndarray] = {}
        for i, name in enumerate(self.tasks):
            if name in self.hidden:
                rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(i,)))
                order = rng.permutation(n)
                mask = np.zeros(n, bool)
                mask[order[: round(self.hidden[name] * n)]] = True
                self._mask[name] = mask
        self._task_objs: Optional[Dict[str, Any]] = None

    def __len__(self) -> int:
        return len(self.dataset)

    def is_hidden(self, task: str, index: int) -> bool:
        """Whether the label of ``task`` is hidden for item ``index``."""
        m = self._mask.get(task)
        return bool(m is not None and m[index])

    def __getitem__(self, index: int) -> Item:
        if index < 0:
            index += len(self)
        item = self.dataset[index]
        hide = [t for t in self._mask if self._mask[t][index]]
        if not hide:
            return item
        if self._task_objs is None:
            self._task_objs = make_tasks({t: self.tasks[t] for t in self._mask})
        labels, present = dict(item["labels"]), dict(item["present"])
        for t in hide:
            labels[t] = _empty(self._task_objs[t], item["image"])
            present[t] = False
        return {"image": item["image"], "labels": labels, "present": present}
