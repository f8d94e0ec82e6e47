"""The affinity file (design.md): ``<stem>.npz`` plus a JSON sidecar ``<stem>.json``.

The npz holds ``affinity`` (float64, D x N x N, symmetric, unit diagonal, finite, within
[-1, 1]), ``tasks`` (N names) and ``locations`` (D names), as unicode arrays so that loading
never needs pickle. The sidecar says how it was made: ``backbone``, ``K``, ``seed``,
``dataset``, ``measure``, ``when`` (ISO 8601), plus whatever else the writer adds. Both files
are written to temporary names beside the target and renamed into place, so an error leaves
neither a half-written file nor a changed old one.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from .._atomic import atomic_write_bytes, atomic_write_text
from ..errors import BranchnasError

__all__ = [
    "SIDECAR_KEYS",
    "TOLERANCE",
    "AffinityFile",
    "affinity_paths",
    "check_affinity",
    "load_affinity",
    "save_affinity",
]

log = logging.getLogger(__name__)

#: Keys every sidecar carries (``None`` where the writer did not know them).
SIDECAR_KEYS = ("backbone", "K", "seed", "dataset", "measure", "when")

#: Absolute tolerance for symmetry, the unit diagonal and the [-1, 1] range.
TOLERANCE = 1e-6

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class AffinityFile:
    """A loaded affinity file.

    Attributes:
        affinity: float64 array ``(D, N, N)``.
        tasks: the N task names, in the matrices' order.
        locations: the D location names, shallow to deep.
        meta: the sidecar's contents (empty when there was none).
        path: the ``.npz`` it was read from, if any.
    """

    affinity: np.ndarray
    tasks: tuple[str, ...]
    locations: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def measure(self) -> str:
        """The measure named in the sidecar, or ``"affinity"`` when unknown."""
        return str(self.meta.get("measure") or "affinity")


def affinity_paths(path: PathLike) -> tuple[Path, Path]:
    """``(npz, sidecar)`` paths for ``path`` given with or without the ``.npz`` suffix."""
    p = Path(path)
    npz = p if p.suffix == ".npz" else p.with_name(p.name + ".npz")
    return npz, npz.with_suffix(".json")


def _names(values: Sequence[Any], kind: str, where: str) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)):
        raise BranchnasError(f"{where}: {kind} is a single string; give a list of names")
    names = tuple(str(v) for v in values)
    if any(not n for n in names):
        raise BranchnasError(f"{where}: {kind} contain an empty name; give every entry a name")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BranchnasError(f"{where}: {kind} repeat {', '.join(map(repr, dupes))}; give unique names")
    return names


def check_affinity(affinity: Any, tasks: Sequence[Any], locations: Sequence[Any], *,
                   where: str = "affinity") -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Validate an affinity tensor against its task and location names.

    Args:
        affinity: array-like ``(D, N, N)``.
        tasks: N names.
        locations: D names.
        where: prefix of error messages (a file name, say).

    Returns:
        ``(affinity as float64 array, tasks, locations)``.

    Raises:
        BranchnasError: one line naming ``where`` and the problem: wrong shape, names that do
            not match the shape or repeat, non-finite values, asymmetry, a diagonal that is
            not 1, or values outside [-1, 1].
    """
    try:
        arr = np.asarray(affinity, dtype=np.float64)
    except (TypeError, ValueError):
        raise BranchnasError(f"{where}: affinity is not a numeric array; give a float array (D, N, N)") from None
    tasks_t = _names(tasks, "tasks", where)
    locs_t = _names(locations, "locations", where)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BranchnasError(f"{where}: affinity has shape {arr.shape}; it must be D x N x N with D, N >= 1")
    d, n, _ = arr.shape
    if len(tasks_t) != n:
        raise BranchnasError(f"{where}: affinity is {d}x{n}x{n} but {len(tasks_t)} task names are given; "
                             "give one name per row")
    if len(locs_t) != d:
        raise BranchnasError(f"{where}: affinity is {d}x{n}x{n} but {len(locs_t)} location names are given; "
                             "give one name per location")
    from ..search import validate_affinity  # the search's own check: finite and symmetric

    try:
        validate_affinity(arr, tasks_t, atol=TOLERANCE, locations=locs_t)
    except BranchnasError as e:
        raise BranchnasError(f"{where}: {e}") from None
    diag = np.abs(np.diagonal(arr, axis1=1, axis2=2) - 1.0)
    if diag.max() > TOLERANCE:
        dd, ii = np.unravel_index(int(diag.argmax()), diag.shape)
        raise BranchnasError(f"{where}: affinity diagonal is {arr[dd, ii, ii]:.6g} for task {tasks_t[ii]!r} "
                             f"at location {locs_t[dd]!r}; a task's affinity with itself must be 1")
    if np.abs(arr).max() > 1.0 + TOLERANCE:
        raise BranchnasError(f"{where}: affinity has values outside [-1, 1] (max |A| = {np.abs(arr).max():.6g}); "
                             "give correlations or agreement rates")
    return arr, tasks_t, locs_t


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, _dt.datetime, _dt.date)):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def save_affinity(path: PathLike, affinity: Any, tasks: Sequence[str], locations: Sequence[str],
                  meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``<path>.npz`` and its sidecar ``<stem>.json`` atomically.

    Args:
        path: target, with or without the ``.npz`` suffix; parent folders are created.
        affinity: ``(D, N, N)`` tensor (validated as in :func:`check_affinity`).
        tasks: N task names.
        locations: D location names.
        meta: sidecar contents; the keys of :data:`SIDECAR_KEYS` are always written
            (``None`` where missing) and ``when`` defaults to now (UTC, ISO 8601).

    Returns:
        The ``.npz`` path written.

    Raises:
        BranchnasError: for an invalid tensor or names, or meta that is not JSON-serializable;
            nothing is written then.
    """
    npz_path, json_path = affinity_paths(path)
    arr, tasks_t, locs_t = check_affinity(affinity, tasks, locations, where=str(npz_path))
    side: dict[str, Any] = {key: None for key in SIDECAR_KEYS}
    side.update(dict(meta or {}))
    if side.get("when") is None:
        side["when"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    try:
        text = json.dumps(side, indent=2, default=_jsonable, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BranchnasError(f"{json_path}: metadata cannot be written as JSON ({exc}); "
                             "give plain numbers, strings, lists and dicts") from None
    buffer = io.BytesIO()  # the whole archive first: a failure here writes nothing
    np.savez(buffer, affinity=arr, tasks=np.array(tasks_t, dtype=str),
             locations=np.array(locs_t, dtype=str))
    # the sidecar first, then the tensor, each atomically (the one writer, branchnas._atomic)
    atomic_write_text(json_path, text + "\n")
    atomic_write_bytes(npz_path, buffer.getvalue())
    log.info("wrote affinity %s (%d locations x %d tasks)", npz_path, len(locs_t), len(tasks_t))
    return npz_path


def _npz_reason(exc: BaseException) -> str:
    """Why numpy could not read a file, without its advice to unpickle it (never safe here)."""
    text = str(exc)
    if "pickle" in text:  # a text file, or object arrays: numpy suggests allow_pickle=True
        return "not a NumPy .npz archive of plain arrays"
    return (text.splitlines() or [type(exc).__name__])[0]


def load_affinity(path: PathLike) -> AffinityFile:
    """Read and validate an affinity file.

    Args:
        path: the ``.npz`` (the suffix may be left off); the sidecar ``<stem>.json`` beside it
            is read when present (a warning is logged when it is missing).

    Returns:
        The :class:`AffinityFile`.

    Raises:
        BranchnasError: one line naming the file and the problem: missing or unreadable file,
            missing arrays, bad shape, asymmetry, non-unit diagonal, non-finite values, or a
            malformed sidecar.
    """
    npz_path, json_path = affinity_paths(path)
    if not npz_path.is_file():
        raise BranchnasError(f"{npz_path}: no such affinity file; run `branchnas affinity` or check the path")
    try:
        data = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BranchnasError(f"{npz_path}: cannot be read as an npz affinity file ({_npz_reason(exc)}); "
                             "rewrite it") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise BranchnasError(f"{npz_path}: holds a single array, not an npz archive; "
                             "write it with save_affinity (affinity, tasks, locations)")
    with data:
        missing = [k for k in ("affinity", "tasks", "locations") if k not in data.files]
        if missing:
            raise BranchnasError(f"{npz_path}: missing array(s) {', '.join(missing)}; "
                                 "an affinity file holds affinity, tasks and locations")
        try:
            raw = data["affinity"]
            tasks = data["tasks"].tolist()
            locations = data["locations"].tolist()
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise BranchnasError(f"{npz_path}: cannot be read as an npz affinity file ({_npz_reason(exc)}); "
                                 "rewrite it") from None
    if isinstance(tasks, str) or isinstance(locations, str):
        raise BranchnasError(f"{npz_path}: tasks and locations must be 1-D arrays of names; rewrite the file")
    arr, tasks_t, locs_t = check_affinity(raw, tasks, locations, where=str(npz_path))
    meta: dict[str, Any] = {}
    if json_path.is_file():
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise BranchnasError(f"{json_path}: sidecar is not valid JSON ({exc}); fix or delete it") from None
        if not isinstance(meta, dict):
            raise BranchnasError(f"{json_path}: sidecar must hold a JSON object; fix or delete it")
    else:
        log.warning("affinity file %s has no sidecar %s; its provenance is unknown", npz_path, json_path.name)
    return AffinityFile(affinity=arr, tasks=tasks_t, locations=locs_t, meta=meta, path=npz_path)
