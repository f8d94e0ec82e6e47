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

A run whose ``done`` exists is finished and is skipped; one without it is resumed from
``checkpoints/last.pt``.

Example:
    >>> import tempfile
    >>> run = RunDir(tempfile.mkdtemp())
    >>> run.is_done()
    False
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ..errors import BranchnasError

__all__ = [
    "RunDir",
    "atomic_write_text",
    "atomic_write_with",
    "git_revision",
    "environment_info",
]

log = logging.getLogger(__name__)

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        mode_kw: Dict[str, Any] = {"mode": "wb"} if binary else {"mode": "w", "encoding": "utf-8"}
        with os.fdopen(fd, **mode_kw) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
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
        existed = self.is_started()
        if existed:
            stored = self.read_config()
            ignore = set(ignore_keys)
            diffs = sorted(
                k for k in set(stored) | set(config)
                if k not in ignore and stored.get(k) != config.get(k)
            )
            if diffs:
                k = diffs[0]
                raise BranchnasError(
                    f"run directory {self.path} was started with a different config "
                    f"({', '.join(diffs)}; e.g. {k}: {stored.get(k)!r} there, "
                    f"{config.get(k)!r} now); "
                    "rerun with the same settings or use another output directory"
                )
        else:
            self.path.mkdir(parents=True, exist_ok=True)
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

    def read_config(self) -> Dict[str, Any]:
        """The stored ``config.json``."""
        return json.loads(self.config_path.read_text(encoding="utf-8"))

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
        """Write ``checkpoints/last.pt`` atomically (``torch.save`` of ``state``)."""
        import torch

        atomic_write_with(self.checkpoint_path, lambda f: torch.save(dict(state), f))

    def load_checkpoint(self, map_location: Any = "cpu") -> Optional[Dict[str, Any]]:
        """The last checkpoint, or None when there is none."""
        if not self.checkpoint_path.is_file():
            return None
        import torch

        return torch.load(self.checkpoint_path, map_location=map_location, weights_only=False)

    def model_state(self, map_location: Any = "cpu") -> Dict[str, Any]:
        """The model ``state_dict`` of the last checkpoint (the final weights once done).

        Raises:
            BranchnasError: when the run has no checkpoint yet.
        """
        ckpt = self.load_checkpoint(map_location)
        if ckpt is None:
            raise BranchnasError(f"run directory {self.path} has no checkpoint; train it first")
        return ckpt["model"]

    # ------------------------------------------------------------------ done marker
    def mark_done(self, result: Mapping[str, Any]) -> None:
        """Write the ``done`` marker (JSON of ``result``) atomically; call it last."""
        atomic_write_text(self.done_path, json.dumps(dict(result), indent=2) + "\n")

    def read_result(self) -> Dict[str, Any]:
        """The result stored by :meth:`mark_done`.

        Raises:
            BranchnasError: when the run is not done.
        """
        if not self.is_done():
            raise BranchnasError(f"run directory {self.path} is not finished; train it first")
        return json.loads(self.done_path.read_text(encoding="utf-8"))
