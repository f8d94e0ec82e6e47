"""The dataset registry, the item format and what every dataset shares.

An item is ``{"image": float32 (3, H, W), "labels": {task: tensor}, "present": {task: bool}}``
(docs/internals.md, "Data"); label formats per task type follow the "Tasks" table there.
Every dataset exposes ``.tasks``: task name -> ``{"type": ..., **params}`` for the tasks it
labels, which a search space checks its task list against.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .._registry import Registry
from ..errors import BranchnasError

__all__ = [
    "Item",
    "TaskDataset",
    "create_dataset",
    "get_dataset",
    "list_datasets",
    "register_dataset",
    "resize_item",
]

logger = logging.getLogger(__name__)

Item = Dict[str, Any]
"""``{"image": Tensor, "labels": {task: Tensor}, "present": {task: bool}}``."""

_DATASETS: Registry = Registry("dataset")


def register_dataset(name: str):
    """Class decorator registering a dataset under ``name``.

    The class is called as ``cls(split=..., tasks=..., root=..., **kw)`` by
    :func:`create_dataset`.
    """
    return _DATASETS.register(name)


def list_datasets() -> list:
    """Names of the registered datasets, sorted."""
    return _DATASETS.names()


def get_dataset(name: str):
    """The dataset class registered as ``name``.

    Raises:
        BranchnasError: for an unknown name, listing the known ones.
    """
    return _DATASETS.get(name)


def create_dataset(
    name: str,
    split: str = "train",
    tasks: Optional[Sequence[str]] = None,
    root: Optional[Any] = None,
    **kw: Any,
) -> TaskDataset:
    """Build a registered dataset.

    Args:
        name: registered name (``scenes``, ``nyuv2``, ``cityscapes``, ``celeba``,
            ``taskonomy``).
        split: which split.
        tasks: task names to label (default: every task the dataset has).
        root: data directory (for ``scenes``: the cache directory).
        **kw: dataset-specific options (e.g. ``size``, ``resolution``, ``seed``).

    Returns:
        The dataset.

    Example:
        >>> ds = create_dataset("scenes", split="val", size=4, resolution=16,
        ...                     cache_dir=False, tasks=["depth", "scene"])
        >>> sorted(ds.tasks)
        ['depth', 'scene']
    """
    cls = get_dataset(name)
    try:
        return cls(split=split, tasks=tasks, root=root, **kw)
    except TypeError as exc:
        raise BranchnasError(f"bad options for dataset {name!r}: {exc}") from None


class TaskDataset(Dataset):
    """Base of every dataset: the task catalogue, task selection and the item format.

    Args:
        catalogue: every task this dataset can label, name -> {"type": ..., **params}.
        tasks: the names to label (None: all), in the order given.
        dataset: the dataset's name, for error messages.

    Raises:
        BranchnasError: for a task name not in ``catalogue`` or an empty selection.
    """

    def __init__(
        self,
        catalogue: Mapping[str, Mapping[str, Any]],
        tasks: Optional[Sequence[str]],
        dataset: str,
    ) -> None:
        self.catalogue: Dict[str, Dict[str, Any]] = {k: dict(v) for k, v in catalogue.items()}
        if tasks is None:
            names = list(self.catalogue)
        else:
            if isinstance(tasks, str):
                tasks = [tasks]
            names = list(dict.fromkeys(tasks))
            unknown = [t for t in names if t not in self.catalogue]
            if unknown:
                raise BranchnasError(
                    f"dataset {dataset!r} has no task(s) {', '.join(map(repr, unknown))}; "
                    f"choose from: {', '.join(self.catalogue)}"
                )
        if not names:
            raise BranchnasError(f"dataset {dataset!r}: the task list is empty; name a task")
        self.tasks: Dict[str, Dict[str, Any]] = {t: self.catalogue[t] for t in names}

    def make_item(self, image: Tensor, labels: Dict[str, Tensor]) -> Item:
        """Assemble an item; every selected task is present."""
        return {"image": image, "labels": labels, "present": dict.fromkeys(labels, True)}


# ----------------------------------------------------------------------- resize helpers


def _size(resolution: Union[None, int, Sequence[int]]) -> Optional[Tuple[int, int]]:
    if resolution is None:
        return None
    if isinstance(resolution, (int, np.integer)) and not isinstance(resolution, bool):
        return int(resolution), int(resolution)
    if isinstance(resolution, (tuple, list)) and len(resolution) == 2:
        return int(resolution[0]), int(resolution[1])
    raise BranchnasError(
        f"resolution must be None, an int or (height, width), got {resolution!r}"
    )


def resize_item(
    image: Tensor,
    labels: Dict[str, Tensor],
    types: Mapping[str, str],
    resolution: Union[None, int, Sequence[int]],
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Resize an image (bilinear, antialiased) and its dense labels (nearest) to ``resolution``.

    Nearest resampling keeps label values (class ids, NaN markers, unit normals) exact.
    Instance offsets are scaled with the image. Image-level labels are returned unchanged.

    Args:
        image: (3, H, W).
        labels: task -> label tensor.
        types: task -> task type.
        resolution: None (no change), an int or (H, W).

    Returns:
        (image, labels) at the new size.
    """
    size = _size(resolution)
    if size is None or tuple(image.shape[-2:]) == size:
        return image, labels
    h0, w0 = image.shape[-2:]
    img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                        antialias=True)[0].clamp_(0, 1)
    out: Dict[str, Tensor] = {}
    for name, lab in labels.items():
        if lab.dim() < 2:
            out[name] = lab
            continue
        x = lab if lab.dim() == 3 else lab[None]
        dtype = x.dtype
        y = F.interpolate(x[None].double(), size=size, mode="nearest")[0].to(dtype)
        if types.get(name) == "instance":
            y = y * torch.tensor([size[0] / h0, size[1] / w0], dtype=y.dtype).view(2, 1, 1)
        out[name] = y if lab.dim() == 3 else y[0]
    return img, out
