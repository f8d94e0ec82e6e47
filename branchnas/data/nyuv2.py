"""NYUv2 (Silberman et al., 2012) as preprocessed by MTAN (Liu et al., 2019).

Layout (what MTAN's ``im2im_pred/create_dataset.py`` reads; the commonly shared
``nyuv2.zip`` unpacks to it)::

    <root>/train/image/<i>.npy    (H, W, 3) float in [0, 1]       (288 x 384 in MTAN's copy)
    <root>/train/label/<i>.npy    (H, W) 13-class ids, -1 = ignore
    <root>/train/depth/<i>.npy    (H, W, 1) metres, 0 = invalid
    <root>/train/normal/<i>.npy   (H, W, 3) in [-1, 1], zero vectors = invalid
    <root>/val/...                 same (the 654 official test images)

with i = 0 .. N-1. ``split="test"`` reads ``test/`` if present, else ``val/`` (MTAN
evaluates on it). Any label folder may be absent; the dataset then labels the others.

Tasks: ``semantic`` (segmentation, 13 classes), ``depth``, ``normals``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor

from ._npyfolders import NpyFolderDataset, to_depth, to_normals, to_segmentation
from .base import register_dataset

__all__ = ["NYUV2_TASKS", "NYUv2Dataset"]

NYUV2_TASKS: Dict[str, Dict[str, Any]] = {
    "semantic": {"type": "segmentation", "num_classes": 13},
    "depth": {"type": "depth"},
    "normals": {"type": "normals"},
}
"""Tasks NYUv2 can label (name -> spec)."""


@register_dataset("nyuv2")
class NYUv2Dataset(NpyFolderDataset):
    """NYUv2 in MTAN's preprocessed layout (see the module docstring).

    Args:
        split: "train", "val" or "test" (= val unless a test folder exists).
        tasks: tasks to label (default: those whose folders exist).
        root: the directory holding ``train/`` and ``val/``.
        resolution: None (native size) or an int / (H, W) to resize to.

    Raises:
        BranchnasError: for a missing or malformed directory, naming the expected layout.
    """

    name = "nyuv2"
    layout = "<root>/{train,val}/{image,label,depth,normal}/<i>.npy, i = 0..N-1 (MTAN)"
    splits: ClassVar[Mapping[str, Sequence[str]]] = {
        "train": ("train",), "val": ("val",), "test": ("test", "val")
    }

    def __init__(
        self,
        split: str = "train",
        tasks: Optional[Sequence[str]] = None,
        root: Union[str, Path, None] = None,
        resolution: Union[None, int, Sequence[int]] = None,
    ) -> None:
        super().__init__(root, split, tasks, resolution)

    def _folders(self) -> Dict[str, Tuple[str, Dict[str, Any]]]:
        return {
            "semantic": ("label", NYUV2_TASKS["semantic"]),
            "depth": ("depth", NYUV2_TASKS["depth"]),
            "normals": ("normal", NYUV2_TASKS["normals"]),
        }

    def _convert(self, task: str, arr: np.ndarray, hw: Tuple[int, int], where: str) -> Tensor:
        if task == "semantic":
            return to_segmentation(arr, hw, 13, where)
        if task == "depth":
            return to_depth(arr, hw, where)
        return to_normals(arr, hw, where)
