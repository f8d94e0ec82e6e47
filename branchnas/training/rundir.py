"""Run directories: the pipeline's unit of caching and resumption (design.md's contract).

A run directory holds::

    config.json         the resolved configuration (JSON object)
    command.txt         the command line of every invocation that worked on the run, one a line
    environment.json    python/torch/numpy versions, device, hostname, CUDA (latest invocation)
    seed                the seed (one integer)
    git_revision        the source revision ("<sha>", "<sha>-dirty" or "unknown")
    metrics.jsonl       one JSON object per epoch, appended
    checkpoints/last.pt the latest checkpoint (written atomically: temp file + os.replace)
    done                written last, atomically; JSON of the run's final result
    .lock               the lock a training process holds (``flock``) while it works on the run

A run whose ``done`` exists is finished and is skipped; one without it is resumed from
``checkpoints/last.pt``.

Safety. A checkpoint holds tensors and plain data only (numpy arrays, e.g. numpy's RNG
state, are stored as tensors and turned back on load) and is read with
``torch.load(weights_only=True)``, so a crafted file cannot run code; a damaged or foreign
checkpoint is a one-line :class:`BranchnasError` naming the file and the fix. :meth:`RunDir.start`
takes an exclusive lock on the directory, so a second process refuses to train into it at
once, and removes the temp files a killed process left behind (``.<name>.*.tmp``).

Example:
    >>> import tempfile
    >>> run = RunDir(tempfile.mkdtemp())
    >>> run.is_done()
    False
"""

from __future__ import annotations

import errno
import json
import logging
import os
import weakref
import platform
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .._atomic import atomic_write_text, atomic_write_with
from ..errors import BranchnasError

__all__ = [
    "RunDir",
    "atomic_write_text",
    "atomic_write_with",
    "discard_fresh_runs",
    "forget_fresh_runs",
    "git_revision",
    "environment_info",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


# atomic_write_with / atomic_write_text live in branchnas._atomic (one implementation for every
# layer) and are re-exported here, where the run directory uses them.


_NDARRAY = "__ndarray__"


def _to_plain(obj: Any) -> Any:
    """``obj`` with numpy arrays as tagged tensors and numpy scalars as Python numbers, so
    ``torch.load(weights_only=True)`` reads it back (it refuses numpy's pickled objects)."""
    import numpy as np
    import torch

    if isinstance(obj, np.ndarray):
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_to_plain(v) for v in obj)
    if isinstance(obj, list):
        return [_to_plain(v) for v in obj]
    return obj


def _from_plain(obj: Any) -> Any:
    """Undo :func:`_to_plain`."""
    if isinstance(obj, dict):
        if len(obj) == 1 and _NDARRAY in obj:
            return obj[_NDARRAY].numpy()
        return {k: _from_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_from_plain(v) for v in obj)
    if isinstance(obj, list):
        return [_from_plain(v) for v in obj]
    return obj


def _reason(exc: BaseException) -> str:
    """The first line of an exception, short enough for a one-line error."""
    first = (str(exc).strip().splitlines() or [""])[0].strip()
    if len(first) > 120:
        first = first[:117] + "..."
    return type(exc).__name__ + (f": {first}" if first else "")


# ---------------------------------------------------------------------- run-directory locks

# Locks this process holds: resolved directory -> (lock file descriptor, owners). flock locks
# belong to an open file, so a second open in the same process would conflict with the first;
# a process reopening a directory it already works on (a retry after an exception, a test)
# shares the one lock instead. The OS drops the lock when the process dies, even by SIGKILL.
_HELD: Dict[str, Tuple[int, "weakref.WeakSet[RunDir]"]] = {}


def _release(key: str, owner: Optional["RunDir"] = None) -> None:
    entry = _HELD.get(key)
    if entry is None:
        return
    fd, owners = entry
    if owner is not None:
        owners.discard(owner)
    if len(owners):
        return
    del _HELD[key]
    try:
        os.close(fd)  # closing the file releases the flock
    except OSError:
        pass


# Runs this process began (start() made config.json) that have no checkpoint yet. When a
# command then fails on bad input (bad data, a divergence in the first epoch, a full disk), the
# CLI removes them (discard_fresh_runs), so a failed command leaves no half-made run directory
# and the rerun with other settings is not refused as "a different config".
_FRESH: Dict[str, "RunDir"] = {}


def forget_fresh_runs() -> None:
    """Stop tracking the runs begun so far (the CLI calls it when a command starts)."""
    _FRESH.clear()


def discard_fresh_runs(root: Optional[PathLike] = None) -> List[Path]:
    """Remove every run directory this process began that holds no checkpoint yet.

    Args:
        root: a directory that existed before the command; parents of a removed run
            directory strictly inside it are removed too while empty (``out/single/``, ...).

    Returns:
        The removed run directories.
    """
    removed = []
    top = Path(root).resolve() if root is not None else None
    for run in list(_FRESH.values()):
        if run.discard_if_fresh():
            removed.append(run.path)
            parent = run.path.resolve().parent
            while top is not None and parent != top and top in parent.parents:
                try:
                    parent.rmdir()  # only while empty
                except OSError:
                    break
                parent = parent.parent
    _FRESH.clear()
    if removed:
        log.info("removed %d run directory(ies) that failed before their first checkpoint", len(removed))
    return removed


def _release_if_unowned(key: str) -> None:
    """Called when a RunDir is garbage-collected (its weak reference is gone already)."""
    _release(key)


def git_revision(directory: Optional[PathLike] = None) -> str:
    """The git commit of ``directory`` (default: this package's source), ``-dirty`` appended
    when tracked files differ from it; ``"unknown"`` outside git or without git."""
    where = str(directory or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not sha:
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def environment_info(device: Optional[str] = None) -> Dict[str, Any]:
    """Versions and hardware a run executed with (for ``environment.json``)."""
    info: Dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "device": device,
        "cpu_count": os.cpu_count(),
    }
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover - numpy is a dependency
        info["numpy"] = None
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = torch.cuda.is_available()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        info["gpus"] = (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else []
        )
    except ImportError:  # pragma: no cover - torch is a dependency
        info["torch"] = None
    return info


class RunDir:
    """One run's directory (see the module docstring for its files).

    Args:
        path: the directory; created by :meth:`start`.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._lock_key: Optional[str] = None
        self._created: List[Path] = []  # directories lock() made (deepest first), for discard
        self._fresh = False  # start() began the run (rather than reopening it)

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def command_path(self) -> Path:
        return self.path / "command.txt"

    @property
    def environment_path(self) -> Path:
        return self.path / "environment.json"

    @property
    def seed_path(self) -> Path:
        return self.path / "seed"

    @property
    def revision_path(self) -> Path:
        return self.path / "git_revision"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def done_path(self) -> Path:
        return self.path / "done"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ state
    def is_done(self) -> bool:
        """True once :meth:`mark_done` has completed."""
        return self.done_path.is_file()

    def is_started(self) -> bool:
        """True once :meth:`start` has written ``config.json``."""
        return self.config_path.is_file()

    def start(
        self,
        config: Mapping[str, Any],
        seed: Optional[int] = None,
        command: Optional[Sequence[str]] = None,
        device: Optional[str] = None,
        ignore_keys: Iterable[str] = (),
    ) -> bool:
        """Create or reopen the run: write its description files.

        The first call writes ``config.json``, ``seed`` and ``git_revision``; every call
        appends the command line to ``command.txt`` and rewrites ``environment.json``.

        Args:
            config: the resolved configuration (JSON-serialisable).
            seed: the run's seed (default: ``config["seed"]`` when present).
            command: the command line (default: ``sys.argv``).
            device: the device the run uses, for ``environment.json``.
            ignore_keys: config keys allowed to differ from the stored config on reopening.

        Returns:
            True when the run existed already (a resume), False for a fresh run.

        Raises:
            BranchnasError: when reopening with a config that differs from the stored one
                (other than in ``ignore_keys``).
        """
        config = json.loads(json.dumps(dict(config)))  # normalise (tuples -> lists, ...)
        self.lock()
        try:
            return self._start(config, seed, command, device, ignore_keys)
        except BaseException:
            self.unlock()
            raise

    def _start(self, config: Dict[str, Any], seed: Optional[int], command: Optional[Sequence[str]],
               device: Optional[str], ignore_keys: Iterable[str]) -> bool:
        self.sweep_temp_files()
        existed = self.is_started()
        if existed:
            self.check_config(config, ignore_keys)
        else:
            self._fresh = True
            _FRESH[str(self.path.resolve())] = self
            if seed is None and "seed" in config:
                seed = int(config["seed"])
            if seed is not None:
                atomic_write_text(self.seed_path, f"{int(seed)}\n")
            atomic_write_text(self.revision_path, git_revision() + "\n")
            atomic_write_text(self.config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
        line = shlex.join(list(command if command is not None else sys.argv))
        with open(self.command_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        atomic_write_text(
            self.environment_path, json.dumps(environment_info(device), indent=2) + "\n"
        )
        return existed

    def config_diff(self, config: Mapping[str, Any], ignore_keys: Iterable[str] = (),
                    partial: bool = False) -> List[str]:
        """The keys whose value in ``config`` differs from the stored ``config.json``.

        Args:
            config: the configuration a caller would run with.
            ignore_keys: keys allowed to differ (runtime settings).
            partial: compare only the keys ``config`` has (a caller that knows the
                training settings but not, say, the model's parameter count).
        """
        config = json.loads(json.dumps(dict(config)))  # normalise (tuples -> lists, ...)
        stored = self.read_config()
        ignore = set(ignore_keys)
        keys = set(config) if partial else set(stored) | set(config)
        return sorted(k for k in keys if k not in ignore and stored.get(k) != config.get(k))

    def check_config(self, config: Mapping[str, Any], ignore_keys: Iterable[str] = (),
                     partial: bool = False) -> None:
        """Refuse ``config`` when this run (started or done) was made with another one.

        Reads only; a run without ``config.json`` passes. Called on every reuse of a run:
        resuming it, and returning the stored result of a finished one.

        Raises:
            BranchnasError: one line naming the differing keys and the fix.
        """
        if not self.is_started():
            return
        diffs = self.config_diff(config, ignore_keys, partial)
        if diffs:
            stored = self.read_config()
            config = json.loads(json.dumps(dict(config)))
            k = diffs[0]
            state = "finished" if self.is_done() else "started"
            raise BranchnasError(
                f"run directory {self.path} was {state} with a different config "
                f"({', '.join(diffs)}; e.g. {k}: {stored.get(k)!r} there, {config.get(k)!r} now); "
                "rerun with the same settings, give a new --out, or pass --force to retrain"
            )

    def clear(self) -> None:
        """Remove this run directory (``--force``), refusing a folder that is no run.

        Raises:
            BranchnasError: when the folder holds files but neither ``config.json`` nor
                ``done`` (not something this package wrote: it is left alone).
        """
        if not self.path.exists():
            return
        ours = self.path.is_dir() and (self.is_started() or self.is_done() or all(
            p.name == self.lock_path.name for p in self.path.iterdir()))
        if not ours:
            raise BranchnasError(
                f"{self.path} is not a run directory (no config.json or done); not removing it "
                "for --force: delete it yourself or give another --out"
            )
        self.lock()  # not while another process trains in it
        try:
            shutil.rmtree(self.path)
        finally:
            self.unlock()
        log.info("removed %s (--force)", self.path)

    def read_config(self) -> Dict[str, Any]:
        """The stored ``config.json``.

        Raises:
            BranchnasError: when it is not a JSON object (a damaged run directory).
        """
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BranchnasError(
                f"{self.config_path} is damaged ({_reason(exc)}); delete the run directory "
                f"{self.path} to retrain it"
            ) from None
        if not isinstance(config, dict):
            raise BranchnasError(
                f"{self.config_path} is not a JSON object; delete the run directory "
                f"{self.path} to retrain it"
            )
        return config

    # ------------------------------------------------------------------ lock and temp files
    def lock(self) -> None:
        """Take the run directory's exclusive lock (created if needed), or fail at once.

        The lock lasts until :meth:`mark_done`, :meth:`unlock`, the object's collection or
        the process's end (the OS drops it even on SIGKILL). Reentrant within a process.

        Raises:
            BranchnasError: when another process holds it.
        """
        import fcntl

        if self._lock_key is not None:
            return
        missing = []
        probe = self.path
        while not probe.exists() and probe.parent != probe:
            missing.append(probe)
            probe = probe.parent
        self.path.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1].add(self)
            self._lock_key = key
            weakref.finalize(self, _release_if_unowned, key)
            return
        fd = os.open(str(self.lock_path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            except OSError:
                pass
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BranchnasError(
                    f"run directory {self.path} is in use by another process"
                    f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to finish, "
                    "or train into another --out"
                ) from None
            raise
        try:  # the holder's pid, for the message above (advisory: the flock is the lock)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        owners: "weakref.WeakSet[RunDir]" = weakref.WeakSet([self])
        _HELD[key] = (fd, owners)
        self._lock_key = key
        weakref.finalize(self, _release_if_unowned, key)

    def discard_if_fresh(self) -> bool:
        """Remove the run directory (and the parents it created) if this process created it in
        :meth:`start` and it holds no checkpoint yet: a run that failed on bad input before its
        first epoch ended leaves nothing behind, and the rerun starts with the new settings.

        Returns:
            True when it was removed.
        """
        if not self._fresh or self.checkpoint_path.exists() or self.is_done():
            return False
        import shutil

        self.unlock()
        # nothing in it can be resumed (start() began it, no checkpoint): all of it goes
        shutil.rmtree(self.path, ignore_errors=True)
        for d in self._created[1:]:
            try:
                d.rmdir()  # only while empty
            except OSError:
                break
        self._created, self._fresh = [], False
        return True

    def unlock(self) -> None:
        """Release the lock taken by :meth:`lock` (a no-op when not held)."""
        if self._lock_key is not None:
            key, self._lock_key = self._lock_key, None
            _release(key, self)

    def sweep_temp_files(self) -> List[Path]:
        """Delete the temp files of atomic writes a killed process left (``.<name>.*.tmp``).

        Only call it while holding the lock: a live writer's temp file would go too.

        Returns:
            The deleted paths.
        """
        removed = []
        for folder in (self.path, self.checkpoint_path.parent):
            if not folder.is_dir():
                continue
            for p in folder.glob(".*.tmp"):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
        if removed:
            log.info("%s: removed %d stale temp file(s) of a killed run", self.path, len(removed))
        return removed

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (flushed and fsynced)."""
        self.path.mkdir(parents=True, exist_ok=True)
        line = json.dumps(dict(record), sort_keys=False, allow_nan=True)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> List[Dict[str, Any]]:
        """The records of ``metrics.jsonl``; a torn last line (a kill mid-write) is skipped."""
        if not self.metrics_path.is_file():
            return []
        records = []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    log.warning("%s: skipping a torn last line", self.metrics_path)
                    continue
                raise BranchnasError(
                    f"{self.metrics_path} line {i + 1} is not JSON; "
                    "delete the run directory to restart"
                ) from None
        return records

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep only records with ``epoch <= last_epoch`` (rewritten atomically).

        Used on resume: epochs logged after the last checkpoint are trained again.
        """
        if not self.metrics_path.is_file():
            return
        kept = [r for r in self.read_metrics() if int(r.get("epoch", 0)) <= last_epoch]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Write ``checkpoints/last.pt`` atomically (``torch.save`` of ``state``).

        ``state`` may hold tensors, Python scalars, strings, None, lists, tuples, dicts and
        numpy arrays/scalars (stored as tensors / numbers: plain data only).
        """
        import torch

        plain = _to_plain(dict(state))
        atomic_write_with(self.checkpoint_path, lambda f: torch.save(plain, f))
        _FRESH.pop(str(self.path.resolve()), None)  # it has a state to resume from now

    def damaged_checkpoint(self, exc: BaseException, path: Optional[Path] = None) -> BranchnasError:
        """The one-line error for a checkpoint that cannot be read or does not fit the model."""
        return BranchnasError(
            f"checkpoint {path or self.checkpoint_path} is damaged or not this run's ({_reason(exc)}); "
            f"delete it to retrain the run from scratch (or restore it from a backup)"
        )

    def read_checkpoint_file(self, path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
        """A checkpoint file of this run (``last.pt``, ``best.pt``) holding a model state.

        Read with ``weights_only=True``: tensors and plain data only, nothing executes.

        Raises:
            BranchnasError: for a truncated, empty, foreign or malicious file, naming it.
        """
        import torch

        path = Path(path)
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except MemoryError:
            raise
        except Exception as exc:  # torch raises many types for damaged files; all mean the same
            raise self.damaged_checkpoint(exc, path) from None
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
            raise self.damaged_checkpoint(ValueError("no model state in it"), path)
        return _from_plain(ckpt)

    def load_checkpoint(self, map_location: Any = "cpu") -> Optional[Dict[str, Any]]:
        """The last checkpoint, or None when there is none.

        Read with ``weights_only=True``: tensors and plain data only, nothing executes.

        Raises:
            BranchnasError: for a truncated, empty, foreign or malicious file.
        """
        if not self.checkpoint_path.is_file():
            return None
        return self.read_checkpoint_file(self.checkpoint_path, map_location)

    def model_state(self, map_location: Any = "cpu") -> Dict[str, Any]:
        """The model ``state_dict`` the run ends with: the convergence rule's best epoch
        (``checkpoints/best.pt``, tensors only, read with ``weights_only=True``) when the run
        keeps one, else the last checkpoint's.

        Raises:
            BranchnasError: when the run has no checkpoint yet, or it is damaged.
        """
        best = self.checkpoint_path.parent / "best.pt"
        if best.is_file():
            return self.read_checkpoint_file(best, map_location)["model"]
        ckpt = self.load_checkpoint(map_location)
        if ckpt is None:
            raise BranchnasError(f"run directory {self.path} has no checkpoint; train it first")
        return ckpt["model"]

    def load_model(self, model: Any, map_location: Any = "cpu") -> None:
        """Load the last checkpoint's weights into ``model`` (``load_state_dict``, strict).

        Raises:
            BranchnasError: when there is no checkpoint, or it does not fit ``model``.
        """
        state = self.model_state(map_location)
        try:
            model.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            best = self.checkpoint_path.parent / "best.pt"
            raise self.damaged_checkpoint(exc, best if best.is_file() else None) from None

    # ------------------------------------------------------------------ done marker
    def mark_done(self, result: Mapping[str, Any]) -> None:
        """Write the ``done`` marker (JSON of ``result``) atomically; call it last.

        Releases the run's lock (the run is finished)."""
        atomic_write_text(self.done_path, json.dumps(dict(result), indent=2) + "\n")
        self.unlock()

    def read_result(self) -> Dict[str, Any]:
        """The result stored by :meth:`mark_done`.

        Raises:
            BranchnasError: when the run is not done.
        """
        if not self.is_done():
            raise BranchnasError(f"run directory {self.path} is not finished; train it first")
        try:
            result = json.loads(self.done_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BranchnasError(
                f"{self.done_path} is damaged ({_reason(exc)}); delete it to retrain the run"
            ) from None
        if not isinstance(result, dict):
            raise BranchnasError(f"{self.done_path} is not a JSON object; delete it to retrain the run")
        return result
