"""Cityscapes (Cordts et al., 2016) as preprocessed by MTAN (Liu et al., 2019).

Layout (what MTAN's ``create_dataset.py`` reads for CityScapes)::

    <root>/train/image/<i>.npy      (H, W, 3) float in [0, 1]      (128 x 256 in MTAN's copy)
    <root>/train/label_7/<i>.npy    (H, W) 7-class ids, -1 = ignore
    <root>/train/label_19/<i>.npy   (H, W) 19-class ids, -1 = ignore
    <root>/train/depth/<i>.npy      (H, W, 1) depth as stored (MTAN's copy: from disparity),
                                    0 = invalid
    <root>/train/instance/<i>.npy   optional: (H, W) integer Cityscapes instanceIds
                                    (class·1000 + k for instances, < 1000 = no instance)
    <root>/val/...                   same

with i = 0 .. N-1. ``split="test"`` reads ``test/`` if present, else ``val/``.

Tasks: ``semantic`` (segmentation; 19 classes from ``label_19`` by default, ``classes=7`` for
``label_7``), ``depth``, and ``instance`` (offsets to each instance's pixel centroid, the
paper's proxy task after Kendall et al., 2018) when the ``instance`` folder exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor

from ..errors import BranchnasError
from ._npyfolders import NpyFolderDataset, instance_offsets, to_depth, to_segmentation
from .base import register_dataset

__all__ = ["CityscapesDataset", "cityscapes_tasks"]


def cityscapes_tasks(classes: int = 19) -> Dict[str, Dict[str, Any]]:
    """Tasks Cityscapes can label (name -> spec) for the given class set."""
    return {
        "semantic": {"type": "segmentation", "num_classes": classes},
        "depth": {"type": "depth"},
        "instance": {"type": "instance"},
    }


@register_dataset("cityscapes")
class CityscapesDataset(NpyFolderDataset):
    """Cityscapes in MTAN's preprocessed layout (see the module docstring).

    Args:
        split: "train", "val" or "test" (= val unless a test folder exists).
        tasks: tasks to label (default: those whose folders exist).
        root: the directory holding ``train/`` and ``val/``.
        classes: 19 (``label_19``) or 7 (``label_7``).
        resolution: None (native size) or an int / (H, W) to resize to.

    Raises:
        BranchnasError: for a missing or malformed directory (naming the expected layout)
            or a class count other than 7 or 19.
    """

    name = "cityscapes"
    layout = ("<root>/{train,val}/{image,label_19 or label_7,depth[,instance]}/<i>.npy, "
              "i = 0..N-1 (MTAN)")
    splits: ClassVar[Mapping[str, Sequence[str]]] = {
        "train": ("train",), "val": ("val",), "test": ("test", "val")
    }

    def __init__(
        self,
        split: str = "train",
        tasks: Optional[Sequence[str]] = None,
        root: Union[str, Path, None] = None,
        classes: int = 19,
        resolution: Union[None, int, Sequence[int]] = None,
    ) -> None:
        if classes not in (7, 19):
            raise BranchnasError(f"cityscapes classes must be 7 or 19, got {classes!r}")
        self.classes = classes
        super().__init__(root, split, tasks, resolution)

    def _folders(self) -> Dict[str, Tuple[str, Dict[str, Any]]]:
        specs = cityscapes_tasks(self.classes)
        return {"semantic": (f"label_{self.classes}", specs["semantic"]),
                "depth": ("depth", specs["depth"]), "instance": ("instance", specs["instance"])}

    def _convert(self, task: str, arr: np.ndarray, hw: Tuple[int, int], where: str) -> Tensor:
        if task == "semantic":
            return to_segmentation(arr, hw, self.classes, where)
        if task == "depth":
            return to_depth(arr, hw, where)
        whole = np.issubdtype(arr.dtype, np.integer) or (
            np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))
        )
        if arr.shape != hw or not whole:
            raise BranchnasError(
                f"{where}: expected (H, W) = {hw} integer instance ids, got {arr.dtype} "
                f"{arr.shape}"
            )
        return instance_offsets(arr.astype(np.int64), min_id=1000)
