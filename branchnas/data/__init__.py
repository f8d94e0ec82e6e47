"""Datasets: the embedded ``scenes`` benchmark, real-dataset loaders, partial labels.

Registry: ``create_dataset(name, split="train", tasks=None, root=None, **kw)`` with the
datasets ``scenes`` (embedded, rendered), ``nyuv2`` and ``cityscapes`` (MTAN's preprocessed
``.npy`` layout), ``celeba`` (official layout) and ``taskonomy`` (per-domain, per-building
folders). Items and batches follow docs/internals.md ("Data").
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
from .celeba import CelebADataset
from .cityscapes import CityscapesDataset
from .nyuv2 import NYUv2Dataset
from .partial import HiddenLabels, UnionDataset, collate
from .preview import render_preview
from .scenes import ATTRIBUTES, SCENE_CLASSES, SCENES_TASKS, SEMSEG_CLASSES, ScenesDataset
from .taskonomy import TaskonomyDataset

__all__ = [
    "ATTRIBUTES",
    "SCENES_TASKS",
    "SCENE_CLASSES",
    "SEMSEG_CLASSES",
    "CelebADataset",
    "CityscapesDataset",
    "HiddenLabels",
    "Item",
    "NYUv2Dataset",
    "ScenesDataset",
    "TaskDataset",
    "TaskonomyDataset",
    "UnionDataset",
    "collate",
    "create_dataset",
    "get_dataset",
    "list_datasets",
    "register_dataset",
    "render_preview",
    "resize_item",
]
