"""Datasets: the embedded ``scenes`` benchmark, real-dataset loaders, partial labels.

Registry: ``create_dataset(name, split="train", tasks=None, root=None, **kw)``; items and
batches follow docs/internals.md ("Data").
"""

from .base import (
    Item,
    TaskDataset,
    create_dataset,
    get_dataset,
    list_datasets,
    register_dataset,
    resize_item,
)
from .partial import HiddenLabels, UnionDataset, collate
from .preview import render_preview
from .scenes import ATTRIBUTES, SCENE_CLASSES, SCENES_TASKS, SEMSEG_CLASSES, ScenesDataset

__all__ = [
    "Item",
    "TaskDataset",
    "create_dataset",
    "get_dataset",
    "list_datasets",
    "register_dataset",
    "resize_item",
    "ScenesDataset",
    "SCENES_TASKS",
    "SCENE_CLASSES",
    "SEMSEG_CLASSES",
    "ATTRIBUTES",
    "collate",
    "UnionDataset",
    "HiddenLabels",
    "render_preview",
]
