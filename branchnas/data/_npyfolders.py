"""Datasets preprocessed into one ``.npy`` file per index and modality (MTAN's layout).

``<root>/<split>/<folder>/<i>.npy`` for i = 0 .. N-1, one folder per modality (``image``
plus one per label). Arrays are channel-last as MTAN's ``create_dataset.py`` reads them:
image (H, W, 3) float in [0, 1], segmentation (H, W) with -1 = ignore, depth (H, W, 1) with
0 = invalid, normals (H, W, 3) with zero vectors = invalid.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import BranchnasError
from .base import Item, TaskDataset, resize_item

__all__ = [
    "NpyFolderDataset",
    "instance_offsets",
    "npy_reason",
    "to_depth",
    "to_image",
    "to_normals",
    "to_segmentation",
]

logger = logging.getLogger(__name__)

_INDEX = re.compile(r"^(\d+)\.npy$")


def to_image(arr: np.ndarray, where: str) -> Tensor:
    """(H, W, 3) float [0, 1] or uint8 -> float32 (3, H, W).

    Raises:
        BranchnasError: for another shape, or NaN/inf pixels (bad data, named by file).
    """
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise BranchnasError(f"{where}: expected an (H, W, 3) image, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise BranchnasError(f"{where}: image of dtype {arr.dtype}; store numbers (float in [0, 1] or uint8)")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise BranchnasError(f"{where}: bad data: the image holds {bad} NaN/inf value(s); "
                             "re-create this file or remove the sample")
    x = arr.astype(np.float32)
    if arr.dtype == np.uint8:
        x /= 255.0
    return torch.from_numpy(np.ascontiguousarray(np.clip(x, 0, 1).transpose(2, 0, 1)))


def npy_reason(path: Path, exc: BaseException) -> str:
    """Why a ``.npy`` file did not load, in a few words (never numpy's advice to unpickle it)."""
    try:
        if path.stat().st_size == 0:
            return "the file is empty (0 bytes)"
    except OSError:
        pass
    text = str(exc)
    if isinstance(exc, EOFError) or "pickle" in text:
        return "not a NumPy .npy array file (truncated, or another format)"
    return (text.splitlines() or [type(exc).__name__])[0]


def _hw(arr: np.ndarray, hw: Tuple[int, int], where: str, channels: Optional[int]) -> np.ndarray:
    """Check a label's spatial size (and trailing channel count) against the image."""
    ok = arr.shape[:2] == hw and (
        (channels is None and arr.ndim == 2)
        or (channels is not None and ((arr.ndim == 3 and arr.shape[2] == channels)
                                      or (channels == 1 and arr.ndim == 2)))
    )
    if not ok:
        want = f"({hw[0]}, {hw[1]})" if channels is None else f"({hw[0]}, {hw[1]}, {channels})"
        raise BranchnasError(f"{where}: expected shape {want} to match the image, got {arr.shape}")
    return arr


def to_segmentation(arr: np.ndarray, hw: Tuple[int, int], num_classes: int, where: str) -> Tensor:
    """(H, W) class ids, negative = ignore -> int64 (H, W) with 255 = ignore."""
    arr = _hw(np.squeeze(arr, axis=-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr,
              hw, where, None)
    if np.issubdtype(arr.dtype, np.floating) and (
        not np.isfinite(arr).all() or not np.all(arr == np.round(arr))
    ):
        raise BranchnasError(f"{where}: segmentation labels must be whole numbers")
    lab = arr.astype(np.int64)
    if lab.max(initial=-1) >= num_classes and not np.all((lab < num_classes) | (lab == 255)):
        raise BranchnasError(
            f"{where}: class id {int(lab.max())} >= num_classes={num_classes}; "
            "check the dataset's class setting"
        )
    lab[lab < 0] = 255
    return torch.from_numpy(lab)


def to_depth(arr: np.ndarray, hw: Tuple[int, int], where: str) -> Tensor:
    """(H, W, 1) or (H, W), 0 or non-finite = invalid -> float32 (1, H, W), NaN invalid."""
    arr = _hw(arr, hw, where, 1).astype(np.float32).reshape(hw)
    arr = np.where(np.isfinite(arr) & (arr > 0), arr, np.nan).astype(np.float32)
    return torch.from_numpy(arr[None])


def to_normals(arr: np.ndarray, hw: Tuple[int, int], where: str) -> Tensor:
    """(H, W, 3) in [-1, 1], zero = invalid -> unit float32 (3, H, W), NaN invalid."""
    arr = _hw(arr, hw, where, 3).astype(np.float32).transpose(2, 0, 1)
    norm = np.linalg.norm(arr, axis=0, keepdims=True)
    valid = np.isfinite(norm) & (norm > 1e-6)
    out = np.where(valid, arr / np.where(valid, norm, 1), np.nan).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(out))


def instance_offsets(ids: np.ndarray, min_id: int = 1) -> Tensor:
    """Offsets (dy, dx) in pixels from each instance pixel to its instance's pixel centroid.

    Args:
        ids: (H, W) integer instance ids; pixels with id < ``min_id`` are no instance.
        min_id: smallest id that denotes an instance (1000 for Cityscapes instanceIds).

    Returns:
        float32 (2, H, W), NaN on non-instance pixels.
    """
    h, w = ids.shape
    flat = ids.reshape(-1).astype(np.int64)
    inst = flat >= min_id
    out = np.full((2, h * w), np.nan, np.float32)
    if inst.any():
        uniq, inv = np.unique(flat[inst], return_inverse=True)
        idx = np.nonzero(inst)[0]
        yy, xx = np.divmod(idx, w)
        count = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
        cy = np.bincount(inv, weights=yy, minlength=len(uniq)) / count
        cx = np.bincount(inv, weights=xx, minlength=len(uniq)) / count
        out[0, idx] = cy[inv] - yy
        out[1, idx] = cx[inv] - xx
    return torch.from_numpy(out.reshape(2, h, w))


class NpyFolderDataset(TaskDataset):
    """Base of datasets stored as ``<root>/<split>/<folder>/<i>.npy``.

    Subclasses set ``name``, ``layout`` (the one-line layout description used in errors),
    ``splits`` (split -> folder candidates) and implement :meth:`_folders` (task -> folder and
    spec) and :meth:`_convert`.

    Args:
        root: dataset directory.
        split: which split folder.
        tasks: tasks to label (default: every task whose folder exists).
        resolution: None (native) or an int / (H, W) to resize to.

    Raises:
        BranchnasError: for a missing or malformed directory (naming the expected layout)
            or a requested task whose folder is missing.
    """

    name: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    splits: ClassVar[Mapping[str, Sequence[str]]] = {}

    def __init__(self, root: Union[str, Path, None], split: str,
                 tasks: Optional[Sequence[str]], resolution: Union[None, int, Sequence[int]]):
        if root is None:
            raise BranchnasError(f"{self.name} needs root=<dir>; expected layout: {self.layout}")
        self.root = Path(root).expanduser()
        if split not in self.splits:
            raise BranchnasError(
                f"unknown {self.name} split {split!r}; choose one of: {', '.join(self.splits)}"
            )
        self.split = split
        folder = next((self.root / c for c in self.splits[split] if (self.root / c).is_dir()),
                      None)
        if folder is None:
            raise BranchnasError(
                f"{self.name}: no {'/'.join(self.splits[split])} folder under {self.root}; "
                f"expected layout: {self.layout}"
            )
        self.split_dir = folder
        self.size = self._count(folder / "image")
        available = {t: spec for t, (sub, spec) in self._folders().items()
                     if (folder / sub).is_dir()}
        catalogue = {t: spec for t, (sub, spec) in self._folders().items()}
        if tasks is not None:
            requested = [tasks] if isinstance(tasks, str) else list(tasks)
            missing = [t for t in requested if t in catalogue and t not in available]
            if missing:
                t = missing[0]
                raise BranchnasError(
                    f"{self.name}: task {t!r} needs {folder / self._folders()[t][0]}/<i>.npy, "
                    f"which is missing; expected layout: {self.layout}"
                )
        if not available:
            raise BranchnasError(
                f"{self.name}: no label folders under {folder}; expected layout: {self.layout}"
            )
        super().__init__(available if tasks is None else catalogue, tasks, dataset=self.name)
        for t in self.tasks:
            n = self._count(folder / self._folders()[t][0])
            if n != self.size:
                raise BranchnasError(
                    f"{self.name}: {folder / self._folders()[t][0]} holds {n} files but "
                    f"{folder / 'image'} holds {self.size}; expected layout: {self.layout}"
                )
        self.resolution = resolution
        self._types = {t: s["type"] for t, s in self.tasks.items()}
        logger.info("%s %s: %d items, tasks %s", self.name, split, self.size, list(self.tasks))

    def _count(self, folder: Path) -> int:
        if not folder.is_dir():
            raise BranchnasError(
                f"{self.name}: missing folder {folder}; expected layout: {self.layout}"
            )
        idx = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _INDEX.match(p.name)))
        if not idx:
            raise BranchnasError(
                f"{self.name}: no <i>.npy files in {folder}; expected layout: {self.layout}"
            )
        if idx != list(range(len(idx))):
            gap = next(i for i, j in enumerate(idx) if i != j)
            raise BranchnasError(
                f"{self.name}: {folder} lacks {gap}.npy (files must be numbered 0..N-1); "
                f"expected layout: {self.layout}"
            )
        return len(idx)

    def _folders(self) -> Dict[str, Tuple[str, Dict[str, Any]]]:
        """task -> (folder name, task spec)."""
        raise NotImplementedError

    def _convert(self, task: str, arr: np.ndarray, hw: Tuple[int, int], where: str) -> Tensor:
        """Turn the stored array of ``task`` into its label tensor."""
        raise NotImplementedError

    def _load(self, sub: str, index: int) -> Tuple[np.ndarray, str]:
        path = self.split_dir / sub / f"{index}.npy"
        try:
            return np.load(path, allow_pickle=False), str(path)
        except (OSError, ValueError, EOFError) as exc:
            raise BranchnasError(f"{self.name}: cannot read {path} ({npy_reason(path, exc)}); "
                                 "re-create it") from None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Item:
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of {self.size}")
        arr, where = self._load("image", index)
        image = to_image(arr, where)
        hw = (int(image.shape[1]), int(image.shape[2]))
        labels: Dict[str, Tensor] = {}
        folders = self._folders()
        for t in self.tasks:
            arr, where = self._load(folders[t][0], index)
            labels[t] = self._convert(t, arr, hw, where)
        image, labels = resize_item(image, labels, self._types, self.resolution)
        return self.make_item(image, labels)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
                f"size={self.size}, tasks={list(self.tasks)})")

