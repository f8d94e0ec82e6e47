"""CelebA (Liu et al., 2015) in its official layout: 40 binary face attributes.

Either the layout of the official download (Google Drive folders) or the flat one
torchvision uses::

    <root>/Img/img_align_celeba/000001.jpg ...      or   <root>/img_align_celeba/000001.jpg
    <root>/Anno/list_attr_celeba.txt                or   <root>/list_attr_celeba.txt
    <root>/Eval/list_eval_partition.txt             or   <root>/list_eval_partition.txt

(``<root>/celeba/`` holding the flat layout is found too.) ``list_attr_celeba.txt``: a line
with the image count, a line with the attribute names, then ``<file> <±1 × 40>`` per image.
``list_eval_partition.txt``: ``<file> <0|1|2>`` per image (train / val / test).

Tasks: one ``binary`` task per attribute, named as in the file but lower-cased
(``smiling``, ``5_o_clock_shadow``, ...), label 1 where the file says 1, 0 where it says -1.
Images are the aligned 178 × 218 crops, float in [0, 1]; ``resolution`` resizes them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import BranchnasError
from .base import Item, TaskDataset, register_dataset, resize_item

__all__ = ["CelebADataset", "read_attributes", "read_partition"]

logger = logging.getLogger(__name__)

LAYOUT = ("<root>/[Img/]img_align_celeba/*.jpg, <root>/[Anno/]list_attr_celeba.txt, "
          "<root>/[Eval/]list_eval_partition.txt (official CelebA)")
_SPLITS = {"train": 0, "val": 1, "test": 2}


def _find(root: Path, sub: str, name: str) -> Optional[Path]:
    for base in (root, root / "celeba"):
        for cand in (base / sub / name, base / name):
            if cand.exists():
                return cand
    return None


def read_attributes(path: Union[str, Path]) -> Tuple[List[str], List[str], np.ndarray]:
    """Parse ``list_attr_celeba.txt``.

    Returns:
        (attribute names, file names, uint8 array (N, A) with 1 where the file says 1).

    Raises:
        BranchnasError: for a malformed file, naming the line.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise BranchnasError(f"{path}: expected a count line and a names line; {LAYOUT}")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise BranchnasError(f"{path}: line 1 must be the image count; {LAYOUT}") from None
    names = lines[1].split()
    rows = [ln.split() for ln in lines[2:] if ln.strip()]
    if len(rows) != count:
        raise BranchnasError(f"{path}: line 1 says {count} images but {len(rows)} follow")
    files: List[str] = []
    values = np.zeros((count, len(names)), np.uint8)
    for i, row in enumerate(rows):
        if len(row) != len(names) + 1 or any(v not in ("1", "-1") for v in row[1:]):
            raise BranchnasError(
                f"{path}: line {i + 3} must be a file name and {len(names)} values of 1 or -1"
            )
        files.append(row[0])
        values[i] = [v == "1" for v in row[1:]]
    return names, files, values


def read_partition(path: Union[str, Path]) -> Dict[str, int]:
    """Parse ``list_eval_partition.txt`` into file name -> 0 (train) / 1 (val) / 2 (test)."""
    path = Path(path)
    out: Dict[str, int] = {}
    for i, line in enumerate(path.read_text().splitlines()):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise BranchnasError(f"{path}: line {i + 1} must be '<file> <0|1|2>'; {LAYOUT}")
        out[parts[0]] = int(parts[1])
    return out


@register_dataset("celeba")
class CelebADataset(TaskDataset):
    """CelebA attributes (see the module docstring for the layout).

    Args:
        split: "train", "val" or "test" (from the official partition file).
        tasks: attribute names to label (default: all 40).
        root: the CelebA directory.
        resolution: None (native 218 × 178) or an int / (H, W) to resize to.

    Raises:
        BranchnasError: for a missing or malformed directory, naming the expected layout.
    """

    def __init__(
        self,
        split: str = "train",
        tasks: Optional[Sequence[str]] = None,
        root: Union[str, Path, None] = None,
        resolution: Union[None, int, Sequence[int]] = None,
    ) -> None:
        if root is None:
            raise BranchnasError(f"celeba needs root=<dir>; expected layout: {LAYOUT}")
        if split not in _SPLITS:
            raise BranchnasError(f"unknown celeba split {split!r}; choose one of: train, val, test")
        self.root = Path(root).expanduser()
        attr = _find(self.root, "Anno", "list_attr_celeba.txt")
        part = _find(self.root, "Eval", "list_eval_partition.txt")
        images = _find(self.root, "Img", "img_align_celeba")
        for what, found in (("list_attr_celeba.txt", attr), ("list_eval_partition.txt", part),
                            ("img_align_celeba/", images)):
            if found is None:
                raise BranchnasError(
                    f"celeba: {what} not found under {self.root}; expected layout: {LAYOUT}"
                )
        assert attr is not None and part is not None and images is not None
        if not images.is_dir():
            raise BranchnasError(f"celeba: {images} is not a directory; expected layout: {LAYOUT}")
        names, files, values = read_attributes(attr)
        names = [n.lower() for n in names]
        partition = read_partition(part)
        missing = [f for f in files if f not in partition]
        if missing:
            raise BranchnasError(
                f"celeba: {missing[0]} is in {attr.name} but not in {part.name}; use matching files"
            )
        super().__init__({n: {"type": "binary"} for n in names}, tasks, dataset="celeba")
        keep = [i for i, f in enumerate(files) if partition[f] == _SPLITS[split]]
        if not keep:  # an empty split would train or evaluate on nothing (NaN metrics)
            raise BranchnasError(
                f"celeba: the {split} split is empty ({part} assigns no image to "
                f"{_SPLITS[split]}); use the official partition file"
            )
        self.split = split
        self.image_dir = images
        self.files = [files[i] for i in keep]
        cols = [names.index(t) for t in self.tasks]
        self.attributes = values[keep][:, cols].astype(np.float32)
        self.resolution = resolution
        logger.info("celeba %s: %d images, %d attributes", split, len(self.files), len(cols))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Item:
        from PIL import Image  # torchvision's dependency; imported on use

        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        path = self.image_dir / self.files[index]
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        except OSError as exc:
            raise BranchnasError(
                f"celeba: cannot read {path} ({exc}); expected layout: {LAYOUT}"
            ) from None
        image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        image, _ = resize_item(image, {}, {}, self.resolution)
        row = self.attributes[index]
        labels = {t: torch.tensor(row[j]) for j, t in enumerate(self.tasks)}
        return self.make_item(image, labels)

    def __repr__(self) -> str:
        return (f"CelebADataset(root={str(self.root)!r}, split={self.split!r}, "
                f"size={len(self)}, tasks={len(self.tasks)})")
