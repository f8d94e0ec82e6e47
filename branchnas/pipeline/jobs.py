"""Jobs: JSON-serialisable units of work, the registry of their kinds, and idempotent execution.

Every training job of a pipeline (a single-task network, a tree, a baseline, a tuning
trial) is described by a *job spec*, a plain JSON object::

    {"kind": "train_tree", "params": {...}, "out_dir": "runs/scenes/trees/t3"}

* ``kind`` names an executor registered with :func:`register_job_kind`; an executor is a
  function ``executor(spec) -> dict`` returning a JSON-serialisable result (a numeric
  ``"value"`` in it, when present, becomes the job trial's objective value in the queue);
* ``params`` is whatever that executor needs (JSON only: names and paths, never objects);
* ``out_dir`` is the job's own directory: its outputs, ``job.json`` (the spec) and, last,
  the ``job_done.json`` marker holding the result.
* an optional ``key`` overrides the job key (by default a hash of kind, params and out_dir,
  see :func:`job_key`); the queue de-duplicates jobs by key.

:func:`run_job` makes a job's completion idempotent: a job whose ``out_dir`` holds its done
marker is not executed again (its stored result is returned), and the marker is created
exclusively (a hard link of a finished temporary file), so even two executions racing on
one job commit exactly one result. Executors are expected to be resumable too (the
trainer's run directories are), so a job retried after its worker died picks up where it
stopped.

While a job runs inside a queue worker, :func:`current_job` gives the executor its
:class:`JobContext`; long executors should call ``ctx.check()`` now and then (e.g. from the
trainer's ``on_epoch_end``), which raises :class:`JobLeaseLost` when the queue has given the
job to another worker, so two workers never keep training the same job.

Example:
    >>> import tempfile
    >>> @register_job_kind("doc_square")
    ... def _square(spec):
    ...     x = spec["params"]["x"]
    ...     return {"value": x * x}
    >>> spec = make_job("doc_square", {"x": 3}, tempfile.mkdtemp())
    >>> run_job(spec)["value"]
    9
    >>> run_job(spec)["value"]  # done: read back, not executed again
    9
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import json
import logging
import math
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from .._registry import Registry
from ..errors import BranchnasError

__all__ = [
    "JobSpec",
    "Executor",
    "JOB_FILE",
    "JOB_DONE_FILE",
    "register_job_kind",
    "list_job_kinds",
    "get_job_kind",
    "load_job_kinds",
    "JOB_KIND_MODULES",
    "make_job",
    "validate_job",
    "job_key",
    "job_done_path",
    "read_job_result",
    "run_job",
    "JobContext",
    "JobLeaseLost",
    "current_job",
    "result_value",
]

log = logging.getLogger(__name__)

JobSpec = Dict[str, Any]
Executor = Callable[[JobSpec], Dict[str, Any]]

JOB_FILE = "job.json"
"""The spec of the job, written into its ``out_dir`` when it starts."""

JOB_DONE_FILE = "job_done.json"
"""The done marker: ``{"key": ..., "kind": ..., "result": {...}}``, created exclusively, last."""

_KINDS: Registry[Executor] = Registry("job kind")
_SPEC_FIELDS = ("kind", "params", "out_dir", "key")


# ----------------------------------------------------------------------------- registry


def register_job_kind(name: str, executor: Optional[Executor] = None) -> Any:
    """Register ``executor(spec) -> result dict`` as job kind ``name``.

    Usable as ``register_job_kind("name", fn)`` or as a decorator ``@register_job_kind("name")``.

    Raises:
        BranchnasError: if ``name`` is taken.
    """
    return _KINDS.register(name, executor)


def list_job_kinds() -> List[str]:
    """Names of the registered job kinds, sorted."""
    return _KINDS.names()


JOB_KIND_MODULES: List[str] = ["branchnas.pipeline.tune", "branchnas.pipeline.executors"]
"""Modules whose import registers the built-in job kinds (imported by :func:`load_job_kinds`)."""


def load_job_kinds(extra: Sequence[str] = ()) -> None:
    """Import :data:`JOB_KIND_MODULES` and ``extra`` (modules registering job kinds).

    Raises:
        BranchnasError: when a module cannot be imported (named, with the reason).
    """
    for name in [*JOB_KIND_MODULES, *extra]:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise BranchnasError(
                f"cannot import job-kind module {name!r} ({exc}); check the name and PYTHONPATH"
            ) from None


def get_job_kind(name: str) -> Executor:
    """The executor of job kind ``name`` (built-in kinds are imported on first use).

    Raises:
        BranchnasError: for an unknown kind, listing the known ones.
    """
    if name not in _KINDS:
        load_job_kinds()
    return _KINDS.get(name)


# ----------------------------------------------------------------------------- specs


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def validate_job(spec: Mapping[str, Any]) -> JobSpec:
    """Check a job spec and return it normalised (a JSON round trip: tuples become lists).

    Raises:
        BranchnasError: for a missing or unknown field, a non-JSON value or an empty out_dir.
    """
    if not isinstance(spec, Mapping):
        raise BranchnasError(f"a job spec must be a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(_SPEC_FIELDS))
    missing = [k for k in ("kind", "params", "out_dir") if k not in spec]
    if unknown or missing:
        what = ("unknown field(s) " + ", ".join(unknown) if unknown
                else "missing " + ", ".join(missing))
        raise BranchnasError(
            f"job spec has {what}; a job is {{\"kind\", \"params\", \"out_dir\"[, \"key\"]}}"
        )
    if not isinstance(spec["kind"], str) or not spec["kind"]:
        raise BranchnasError(f"job kind must be a non-empty string, got {spec['kind']!r}")
    if not isinstance(spec["params"], Mapping):
        raise BranchnasError(
            f"job params must be a JSON object, got {type(spec['params']).__name__}"
        )
    if not isinstance(spec["out_dir"], (str, os.PathLike)) or not str(spec["out_dir"]):
        raise BranchnasError(f"job out_dir must be a non-empty path, got {spec['out_dir']!r}")
    if "key" in spec and (not isinstance(spec["key"], str) or not spec["key"]):
        raise BranchnasError(f"job key must be a non-empty string, got {spec['key']!r}")
    data = {k: spec[k] for k in _SPEC_FIELDS if k in spec}
    data["out_dir"] = str(data["out_dir"])
    try:
        return json.loads(_canonical(data))
    except (TypeError, ValueError) as exc:
        raise BranchnasError(
            f"job {spec['kind']!r} has params that are not plain JSON ({exc}); pass names and "
            "paths, not objects or NaN"
        ) from None


def make_job(
    kind: str,
    params: Mapping[str, Any],
    out_dir: Union[str, os.PathLike],
    key: Optional[str] = None,
) -> JobSpec:
    """Build and validate a job spec.

    Args:
        kind: a registered job kind (checked when the job runs, not here, so a driver can
            enqueue kinds only its workers import).
        params: the executor's parameters (plain JSON).
        out_dir: the job's directory (shared by all machines when jobs run distributed).
        key: an explicit job key (default: :func:`job_key` hashes kind, params and out_dir).
    """
    spec: Dict[str, Any] = {"kind": kind, "params": dict(params), "out_dir": str(out_dir)}
    if key is not None:
        spec["key"] = key
    return validate_job(spec)


def job_key(spec: Mapping[str, Any]) -> str:
    """The job's identity: its ``key`` field, else ``<kind>-<16 hex digits>`` hashing
    kind, params and out_dir (equal specs give equal keys, whatever their key order)."""
    spec = validate_job(spec)
    if "key" in spec:
        return spec["key"]
    body = {k: spec[k] for k in ("kind", "params", "out_dir")}
    digest = hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()[:16]
    return f"{spec['kind']}-{digest}"


def job_done_path(spec: Mapping[str, Any]) -> Path:
    """``<out_dir>/job_done.json``."""
    return Path(validate_job(spec)["out_dir"]) / JOB_DONE_FILE


def read_job_result(spec: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The stored result of a finished job, or None when it has not finished.

    Raises:
        BranchnasError: when the out_dir holds the done marker of a different job.
    """
    path = job_done_path(spec)
    marker = _read_marker(path)
    if marker is None:
        return None
    key = job_key(spec)
    if marker.get("key") != key:
        raise BranchnasError(
            f"{path} belongs to job {marker.get('key')!r}, not {key!r}; "
            "give each job its own out_dir"
        )
    return dict(marker["result"])


def _read_marker(path: Path) -> Optional[Dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        marker = json.loads(text)
    except json.JSONDecodeError:
        raise BranchnasError(
            f"{path} is not valid JSON; delete it to run the job again"
        ) from None
    if not isinstance(marker, dict) or "result" not in marker:
        raise BranchnasError(f"{path} is not a job done marker; delete it to run the job again")
    return marker


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _commit_marker(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` if it does not exist yet, atomically.

    Returns:
        True when this call created it, False when it existed already.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # fails if path exists: exclusive, and the content is complete
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some network/FUSE file systems): exclusive create
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return True
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- context


class JobLeaseLost(RuntimeError):
    """The queue gave this job to another worker (this worker's heartbeats stopped reaching
    the storage for longer than the grace period); stop working on it."""


@dataclass
class JobContext:
    """What an executor may know about the job it runs inside a queue worker.

    Attributes:
        spec: the job spec.
        key: the job key.
        attempt: 1 for the first run of the job, 2 for the first retry, ...
        trial_number: the job's trial number in the queue study (None outside a queue).
        worker: the worker's id (host:pid:random).
        lost: set when the queue has given the job to another worker.
    """

    spec: JobSpec
    key: str
    attempt: int = 1
    trial_number: Optional[int] = None
    worker: Optional[str] = None
    lost: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        """Raise :class:`JobLeaseLost` when the job has been given to another worker."""
        if self.lost.is_set():
            raise JobLeaseLost(
                f"job {self.key} was given to another worker (heartbeats from {self.worker} "
                "stopped reaching the storage); stopping"
            )


_CURRENT: contextvars.ContextVar[Optional[JobContext]] = contextvars.ContextVar(
    "branchnas_current_job", default=None
)


def current_job() -> Optional[JobContext]:
    """The context of the job being executed by :func:`run_job` (None outside a job)."""
    return _CURRENT.get()


# ----------------------------------------------------------------------------- execution


def _check_result(kind: str, result: Any) -> Dict[str, Any]:
    if not isinstance(result, Mapping):
        raise BranchnasError(
            f"job kind {kind!r} returned {type(result).__name__}, not a dict; executors return "
            "a JSON object"
        )
    try:
        return json.loads(json.dumps(dict(result), allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise BranchnasError(
            f"job kind {kind!r} returned a result that is not JSON ({exc}); return plain values"
        ) from None


def run_job(spec: Mapping[str, Any], context: Optional[JobContext] = None) -> Dict[str, Any]:
    """Execute a job unless it is done; return its result.

    A job whose ``out_dir`` holds its done marker is not executed: the stored result is
    returned. Otherwise the spec is written to ``<out_dir>/job.json``, the executor runs,
    and its result is committed to ``<out_dir>/job_done.json`` exclusively: if another
    execution of the same job committed first, that result is returned instead.

    Args:
        spec: the job spec (:func:`make_job`).
        context: the queue's context for the job (workers pass it; default: a plain one).

    Returns:
        The job's result dict.

    Raises:
        BranchnasError: for an unknown kind, a malformed spec or result, or an out_dir that
            holds another job's result; whatever the executor raises.
    """
    spec = validate_job(spec)
    key = job_key(spec)
    done = read_job_result(spec)
    if done is not None:
        log.info("job %s is done (%s); not running it again", key, job_done_path(spec))
        return done
    executor = get_job_kind(spec["kind"])
    ctx = context if context is not None else JobContext(spec=spec, key=key)
    out_dir = Path(spec["out_dir"])
    _atomic_write(out_dir / JOB_FILE, json.dumps({"key": key, **spec}, indent=2) + "\n")
    token = _CURRENT.set(ctx)
    try:
        log.info("job %s (%s) starting in %s", key, spec["kind"], out_dir)
        result = _check_result(spec["kind"], executor(spec))
    finally:
        _CURRENT.reset(token)
    marker = {"key": key, "kind": spec["kind"], "result": result}
    if ctx.worker is not None:
        marker["worker"] = ctx.worker
    if not _commit_marker(job_done_path(spec), json.dumps(marker, indent=2, allow_nan=True) + "\n"):
        log.warning("job %s was committed by another execution first; keeping that result", key)
        stored = read_job_result(spec)
        assert stored is not None
        return stored
    log.info("job %s done", key)
    return result


def result_value(result: Mapping[str, Any]) -> float:
    """The objective value a result carries (its finite numeric ``"value"``), else 0.0."""
    value = result.get("value")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0
