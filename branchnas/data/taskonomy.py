"""Taskonomy (Zamir et al., 2018): per-task, per-building folders of PNG / NPY files.

Layout (the released per-domain archives unpacked side by side, as Standley et al.'s
``taskonomy_loader`` and the omnidata tools read them)::

    <root>/rgb/<building>/point_<p>_view_<v>_domain_rgb.png
    <root>/depth_zbuffer/<building>/point_<p>_view_<v>_domain_depth_zbuffer.png
    <root>/segment_semantic/<building>/point_<p>_view_<v>_domain_segmentsemantic.png
    <root>/class_scene/<building>/point_<p>_view_<v>_domain_class_scene.npy
    <root>/edge_texture/<building>/point_<p>_view_<v>_domain_edge_texture.png
    <root>/keypoints2d/<building>/point_<p>_view_<v>_domain_keypoints2d.png
    <root>/train_val_test_<size>.csv   (or <root>/splits/...): header ``id,train,val,test``,
                                         one row per building with 0/1 flags

Files are matched by (building, point, view); the ``domain_`` suffix is not checked (the
release spells segmentation both ``segmentsemantic`` and ``segment_semantic``). A view
without a file for some task has that label marked absent (``present`` False), as the
release has holes.

Tasks (the paper's D, S, C, E, K) and encodings:

=============  ==========================  ===============================================
task           type                        stored as
=============  ==========================  ===============================================
``depth``      depth (metres)              16-bit PNG, units of 1/512 m; >= 64500 = invalid
``semantic``   segmentation (17 classes)   8-bit PNG: 0 and 1 background, 2..17 the 16 COCO
                                           classes (-> 0..16); other ids -> ignore
``scene``      classification (365)        NPY: Places365 scores (argmax) or one class id;
                                           ``scene_subset`` keeps some classes (e.g. the
                                           63 indoor ones), renumbered 0..len-1
``edges``      edges                       16-bit PNG texture edges; value / 65535 (soft
                                           target), or binary with ``edge_threshold``
``keypoints``  keypoints                   16-bit PNG 2-D keypoint heatmap; value / 65535
=============  ==========================  ===============================================
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import BranchnasError
from ._npyfolders import npy_reason
from .base import Item, TaskDataset, register_dataset, resize_item

__all__ = ["TASKONOMY_DOMAINS", "TaskonomyDataset", "taskonomy_tasks"]

logger = logging.getLogger(__name__)

LAYOUT = ("<root>/<domain>/<building>/point_<p>_view_<v>_domain_<domain>.png|npy with domains "
          "rgb, depth_zbuffer, segment_semantic, class_scene, edge_texture, keypoints2d, plus "
          "<root>/[splits/]train_val_test_<size>.csv (Taskonomy)")

TASKONOMY_DOMAINS: Dict[str, str] = {
    "depth": "depth_zbuffer",
    "semantic": "segment_semantic",
    "scene": "class_scene",
    "edges": "edge_texture",
    "keypoints": "keypoints2d",
}
"""Task name -> Taskonomy domain folder."""

_NAME = re.compile(r"^point_(\d+)_view_(\d+)_domain_\w+\.(png|npy)$")
_SPLITS = ("train", "val", "test")
_SEG_CLASSES = 17  # background + 16 COCO classes
_DEPTH_INVALID = 64500  # 16-bit depth at or above this is no return (~126 m)


def taskonomy_tasks(seg_classes: int = 17, scene_classes: int = 365) -> Dict[str, Dict[str, Any]]:
    """Tasks Taskonomy can label (name -> spec)."""
    return {
        "depth": {"type": "depth"},
        "semantic": {"type": "segmentation", "num_classes": seg_classes},
        "scene": {"type": "classification", "num_classes": scene_classes},
        "edges": {"type": "edges"},
        "keypoints": {"type": "keypoints"},
    }


def _index(folder: Path) -> Dict[Tuple[int, int], Path]:
    out: Dict[Tuple[int, int], Path] = {}
    if folder.is_dir():
        for p in folder.iterdir():
            m = _NAME.match(p.name)
            if m:
                out[(int(m.group(1)), int(m.group(2)))] = p
    return out


def _read_split_file(path: Path, split: str) -> List[str]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "id" not in fields or split not in fields:
            raise BranchnasError(
                f"taskonomy: {path} must have columns id,train,val,test; found {fields}"
            )
        rows = [{k.strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return [r["id"] for r in rows if r[split] == "1"]


@register_dataset("taskonomy")
class TaskonomyDataset(TaskDataset):
    """Taskonomy views (see the module docstring for layout and encodings).

    Args:
        split: "train", "val" or "test" (buildings from the split file).
        tasks: tasks to label (default: those whose domain folder exists).
        root: the directory holding one folder per domain.
        buildings: explicit building names (overrides the split file).
        split_file: CSV of building splits (default: the one
            ``<root>/[splits/]train_val_test_*.csv``).
        resolution: None (native 512 × 512) or an int / (H, W) to resize to.
        edge_threshold: None for soft edge targets (value / 65535); a number in (0, 1) for
            binary targets (value / 65535 >= threshold).
        scene_subset: indices into the stored scene scores (a sequence, or a text file with
            one index per line) that form the ``scene`` classes, in order; the label is the
            best-scoring of them. None: all stored classes (365).

    Raises:
        BranchnasError: for a missing or malformed directory, naming the expected layout.
    """

    def __init__(
        self,
        split: str = "train",
        tasks: Optional[Sequence[str]] = None,
        root: Union[str, Path, None] = None,
        buildings: Optional[Sequence[str]] = None,
        split_file: Union[str, Path, None] = None,
        resolution: Union[None, int, Sequence[int]] = None,
        edge_threshold: Optional[float] = None,
        scene_subset: Union[None, str, Path, Sequence[int]] = None,
    ) -> None:
        if root is None:
            raise BranchnasError(f"taskonomy needs root=<dir>; expected layout: {LAYOUT}")
        if split not in _SPLITS:
            raise BranchnasError(f"unknown taskonomy split {split!r}; choose one of: "
                                 + ", ".join(_SPLITS))
        if edge_threshold is not None and not 0 < float(edge_threshold) < 1:
            raise BranchnasError(f"edge_threshold must be None or in (0, 1), got {edge_threshold}")
        self.root = Path(root).expanduser()
        if not (self.root / "rgb").is_dir():
            raise BranchnasError(
                f"taskonomy: {self.root / 'rgb'} not found; expected layout: {LAYOUT}"
            )
        self.scene_subset = self._subset(scene_subset)
        scene_classes = 365 if self.scene_subset is None else len(self.scene_subset)
        catalogue = taskonomy_tasks(_SEG_CLASSES, scene_classes)
        available = {t: s for t, s in catalogue.items()
                     if (self.root / TASKONOMY_DOMAINS[t]).is_dir()}
        if tasks is not None:
            for t in [tasks] if isinstance(tasks, str) else tasks:
                if t in catalogue and t not in available:
                    raise BranchnasError(
                        f"taskonomy: task {t!r} needs {self.root / TASKONOMY_DOMAINS[t]}/, which "
                        f"is missing; expected layout: {LAYOUT}"
                    )
        if not available:
            raise BranchnasError(f"taskonomy: no label domains under {self.root}; "
                                 f"expected layout: {LAYOUT}")
        super().__init__(available if tasks is None else catalogue, tasks, dataset="taskonomy")
        self.split = split
        self.buildings = self._buildings(split, buildings, split_file)
        self.edge_threshold = edge_threshold
        self.resolution = resolution
        self._types = {t: s["type"] for t, s in self.tasks.items()}
        self.views: List[Tuple[str, int, int]] = []
        self.files: Dict[str, Dict[Tuple[str, int, int], Path]] = {t: {} for t in self.tasks}
        self._rgb: Dict[Tuple[str, int, int], Path] = {}
        for b in self.buildings:
            rgb = _index(self.root / "rgb" / b)
            if not rgb:
                raise BranchnasError(
                    f"taskonomy: building {b!r} has no rgb views in {self.root / 'rgb' / b}; "
                    f"expected layout: {LAYOUT}"
                )
            for key in sorted(rgb):
                self.views.append((b, *key))
                self._rgb[(b, *key)] = rgb[key]
            for t in self.tasks:
                for key, p in _index(self.root / TASKONOMY_DOMAINS[t] / b).items():
                    self.files[t][(b, *key)] = p
        self._task_objs: Optional[Dict[str, Any]] = None
        logger.info("taskonomy %s: %d views from %d buildings", split, len(self.views),
                    len(self.buildings))

    @staticmethod
    def _subset(subset: Union[None, str, Path, Sequence[int]]) -> Optional[np.ndarray]:
        if subset is None:
            return None
        if isinstance(subset, (str, Path)):
            path = Path(subset).expanduser()
            try:
                subset = [int(x) for x in path.read_text().split()]
            except (OSError, ValueError):
                raise BranchnasError(
                    f"taskonomy: scene_subset file {path} must list one class index per line"
                ) from None
        idx = np.asarray(list(subset), dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0 or (idx < 0).any() or len(set(idx.tolist())) != idx.size:
            raise BranchnasError("taskonomy: scene_subset must be distinct non-negative indices")
        return idx

    def _buildings(self, split: str, buildings: Optional[Sequence[str]],
                   split_file: Union[str, Path, None]) -> List[str]:
        if buildings is not None:
            names = [buildings] if isinstance(buildings, str) else list(buildings)
        else:
            if split_file is None:
                cands = sorted(self.root.glob("train_val_test_*.csv")) + sorted(
                    (self.root / "splits").glob("train_val_test_*.csv"))
                if not cands:
                    raise BranchnasError(
                        f"taskonomy: no train_val_test_*.csv under {self.root} or its splits/; "
                        "pass buildings=[...] or split_file=...; expected layout: " + LAYOUT
                    )
                if len(cands) > 1:
                    raise BranchnasError(
                        "taskonomy: several split files ("
                        + ", ".join(p.name for p in cands) + "); pass split_file=<one of them>"
                    )
                split_file = cands[0]
            path = Path(split_file).expanduser()
            if not path.is_file():
                raise BranchnasError(f"taskonomy: split file {path} not found")
            names = [b for b in _read_split_file(path, split)
                     if (self.root / "rgb" / b).is_dir()]
            if not names:
                raise BranchnasError(
                    f"taskonomy: none of the {split} buildings in {path.name} has a folder under "
                    f"{self.root / 'rgb'}; expected layout: {LAYOUT}"
                )
        if not names:
            raise BranchnasError("taskonomy: the building list is empty; name some buildings")
        return names

    def __len__(self) -> int:
        return len(self.views)

    def _read_png(self, path: Path) -> np.ndarray:
        from PIL import Image  # torchvision's dependency; imported on use

        try:
            with Image.open(path) as im:
                return np.array(im)
        except OSError as exc:
            raise BranchnasError(f"taskonomy: cannot read {path} ({exc})") from None

    def _label(self, task: str, path: Path, hw: Tuple[int, int]) -> Tensor:
        if task == "scene":
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise BranchnasError(f"taskonomy: cannot read {path} ({npy_reason(path, exc)}); "
                                     "re-create it") from None
            scores = arr.reshape(-1)
            if self.scene_subset is not None:
                if scores.size == 1:
                    hit = np.nonzero(self.scene_subset == int(scores[0]))[0]
                    cls = int(hit[0]) if hit.size else -1
                elif scores.size > self.scene_subset.max():
                    cls = int(np.argmax(scores[self.scene_subset]))
                else:
                    raise BranchnasError(f"taskonomy: {path} holds {scores.size} scores; "
                                         "scene_subset indexes beyond them")
            else:
                cls = int(scores[0]) if scores.size == 1 else int(np.argmax(scores))
            if not 0 <= cls < self.tasks[task]["num_classes"]:
                raise BranchnasError(f"taskonomy: {path} holds class {cls} outside "
                                     f"0..{self.tasks[task]['num_classes'] - 1}")
            return torch.tensor(cls, dtype=torch.int64)
        arr = self._read_png(path)
        if arr.ndim == 3:  # some releases store single-channel labels as RGB(A)
            arr = arr[..., 0]
        if arr.shape != hw:
            raise BranchnasError(f"taskonomy: {path} is {arr.shape}, the rgb view is {hw}")
        if task == "semantic":
            raw = arr.astype(np.int64)
            lab = np.where(raw <= 1, 0, raw - 1)
            lab[(raw < 0) | (lab >= _SEG_CLASSES)] = 255
            return torch.from_numpy(lab)
        x = arr.astype(np.float32)
        if task == "depth":
            return torch.from_numpy(np.where(arr >= _DEPTH_INVALID, np.nan, x / 512.0)
                                    .astype(np.float32)[None])
        x /= 65535.0
        if task == "edges" and self.edge_threshold is not None:
            x = (x >= self.edge_threshold).astype(np.float32)
        return torch.from_numpy(x[None])

    def __getitem__(self, index: int) -> Item:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        key = self.views[index]
        rgb = self._read_png(self._rgb[key])
        if rgb.ndim != 3 or rgb.shape[2] < 3:
            raise BranchnasError(f"taskonomy: {self._rgb[key]} is not an RGB image")
        image = torch.from_numpy(np.ascontiguousarray(
            rgb[..., :3].astype(np.float32).transpose(2, 0, 1) / 255.0))
        hw = (int(image.shape[1]), int(image.shape[2]))
        labels: Dict[str, Tensor] = {}
        present: Dict[str, bool] = {}
        for t in self.tasks:
            path = self.files[t].get(key)
            if path is None:
                if self._task_objs is None:
                    from .partial import make_tasks

                    self._task_objs = make_tasks(self.tasks)
                labels[t] = self._task_objs[t].empty_target(hw)
                present[t] = False
            else:
                labels[t] = self._label(t, path, hw)
                present[t] = True
        image, labels = resize_item(image, labels, self._types, self.resolution)
        return {"image": image, "labels": labels, "present": present}

    def __repr__(self) -> str:
        return (f"TaskonomyDataset(root={str(self.root)!r}, split={self.split!r}, "
                f"views={len(self)}, buildings={len(self.buildings)}, tasks={list(self.tasks)})")
