"""On-disk array caches keyed by a configuration hash, written atomically.

A cache entry is a directory ``<root>/<namespace>/<key>/`` holding one ``.npy`` file per
array and a ``meta.json`` written last, which records each file's size, shape, dtype and a
BLAKE2b checksum of its bytes. It is built in a temporary sibling directory and renamed into
place, so a reader never sees a half-written entry; an entry that fails to load (missing or
truncated file, wrong shape, a checksum that does not match: pixels or labels overwritten in
place, different config) is deleted, logged and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import numpy as np

from ..errors import BranchnasError

__all__ = ["cached_arrays", "config_key", "default_cache_dir"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def default_cache_dir() -> Path:
    """``$BRANCHNAS_CACHE`` if set, else ``~/.cache/branchnas``."""
    env = os.environ.get("BRANCHNAS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "branchnas"


def config_key(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable configuration."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


_VERIFIED: set = set()  # (file, mtime_ns, checksum) already verified by this process


def _checksum(path: Path) -> str:
    """BLAKE2b of a file's bytes (fast enough to verify every read: ~1 GB/s)."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _load(entry: Path, config: Mapping[str, Any]) -> Optional[Dict[str, np.ndarray]]:
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("config") != json.loads(json.dumps(config)):
            raise ValueError("config mismatch")
        arrays = {}
        for name, info in meta["arrays"].items():
            path = entry / f"{name}.npy"
            if path.stat().st_size != info["bytes"]:
                raise ValueError(f"{path.name} has the wrong size")
            stamp = (str(path), path.stat().st_mtime_ns, info["blake2b"])
            if stamp not in _VERIFIED:  # once per file version and process (hashing costs ~1 s/GB)
                if _checksum(path) != info["blake2b"]:
                    raise ValueError(f"{path.name} does not match its checksum")
                _VERIFIED.add(stamp)
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if list(arr.shape) != info["shape"] or str(arr.dtype) != info["dtype"]:
                raise ValueError(f"{path.name} has the wrong shape or dtype")
            arrays[name] = arr
        return arrays
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        logger.warning("cache entry %s is corrupt (%s); regenerating it", entry, exc)
        shutil.rmtree(entry, ignore_errors=True)
        return None


_STALE_S = 24 * 3600  # a build directory untouched this long belongs to a killed process


def _sweep_stale(namespace_dir: Path) -> None:
    """Delete build directories (``.<key>.*``) that killed processes left behind."""
    import time

    if not namespace_dir.is_dir():
        return
    now = time.time()
    for p in namespace_dir.glob(".*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > _STALE_S:
                shutil.rmtree(p, ignore_errors=True)
                logger.info("removed the stale cache build directory %s", p)
        except OSError:
            pass


def cached_arrays(
    namespace: str,
    config: Mapping[str, Any],
    build: Callable[[], Dict[str, np.ndarray]],
    cache_dir: Optional[PathLike] = None,
) -> Dict[str, np.ndarray]:
    """Return the arrays for ``config``, building and caching them on a miss.

    Args:
        namespace: subdirectory of the cache root (e.g. ``"scenes"``).
        config: JSON-serialisable configuration; its hash names the entry.
        build: computes the arrays (name → numpy array) on a miss.
        cache_dir: cache root; defaults to :func:`default_cache_dir`.

    Returns:
        name → array; read-only memory maps when served from disk.

    Raises:
        BranchnasError: if the cache directory cannot be created or written.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entry = root / namespace / config_key(config)
    hit = _load(entry, config)
    if hit is not None:
        logger.debug("cache hit %s", entry)
        return hit
    arrays = build()
    _sweep_stale(entry.parent)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    except OSError as exc:
        raise BranchnasError(
            f"cannot write the cache under {root} ({exc.strerror}); "
            "pass cache_dir=<writable dir> or set BRANCHNAS_CACHE"
        ) from None
    try:
        meta: Dict[str, Any] = {"config": config, "arrays": {}}
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            path = tmp / f"{name}.npy"
            np.save(path, arr, allow_pickle=False)
            meta["arrays"][name] = {
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
                "bytes": path.stat().st_size,
                "blake2b": _checksum(path),
            }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, entry)
        except OSError:
            # another process won the race (or a stale entry is in the way): keep theirs
            # if it loads, else replace it
            if _load(entry, config) is None:
                shutil.rmtree(entry, ignore_errors=True)
                os.replace(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("cached %s", entry)
    loaded = _load(entry, config)
    return loaded if loaded is not None else arrays
