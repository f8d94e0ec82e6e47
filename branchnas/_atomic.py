"""Atomic file writes: the one implementation (run directories, results, tuning, affinity files).

A reader, or a process killed half-way, sees either the old file or the new one, never a torn
one: the content goes into a temp file beside the destination (``.<name>.<random>.tmp``), is
fsynced, and replaces the destination with ``os.replace``; the folder is fsynced after.
A file-system failure (full disk, missing permission, ...) is one line naming the path
(:func:`branchnas._fs.fs_error`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Union

from ._fs import fs_error, is_fs_failure

__all__ = ["atomic_write_with", "atomic_write_text", "atomic_write_bytes"]

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write_with(path: PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Write a file atomically: ``write(fileobj)`` into a temp file beside it, fsync, replace.

    A reader (or a process killed half-way) sees either the old file or the new one,
    never a torn one.

    Args:
        path: the destination.
        write: called with the open temp file.
        binary: open the temp file in binary mode.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    except OSError as exc:
        raise fs_error(exc) from None
    try:
        mode_kw: Dict[str, Any] = {"mode": "wb"} if binary else {"mode": "w", "encoding": "utf-8"}
        with os.fdopen(fd, **mode_kw) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if is_fs_failure(exc):  # a full disk, a vanished directory, torch's writer failing
            raise fs_error(exc, path) from None
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_with(path, lambda f: f.write(text), binary=False)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- plain-data checkpoints


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write_with(path, lambda f: f.write(data), binary=True)
