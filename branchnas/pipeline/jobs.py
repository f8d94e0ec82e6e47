"""Jobs: JSON-serialisable units of training work, the registry of their kinds, and their execution.

Every training job of a pipeline (a single-task network, a tree, a baseline, a tuning
trial) is described by a *job spec*, a plain JSON object::

    {"kind": "train_tree", "params": {...}, "out_dir": "runs/scenes/trees/t3",
     "resources": {"cpus": 1}}

* ``kind`` names a function registered with :func:`register_job_kind`, ``fn(spec) -> dict``
  returning a JSON-serialisable result;
* ``params`` is whatever that function needs (JSON only: names and paths, never objects), so
  a process on another machine rebuilds exactly what the driver would have trained;
* ``out_dir`` is the job's run directory (:class:`~branchnas.training.rundir.RunDir`): the
  function trains into it, and the trainer's ``done`` marker, written last, holds the
  result. That marker is the job's only completion record: :func:`run_job` returns a done
  job's stored result without running it, and a job that was interrupted resumes from the
  run directory's checkpoint, so any job may be run again, anywhere, any number of times;
* an optional ``resources`` (``cpus``, ``gpus``; fractions allowed) is what one run of the
  job takes from an executor that schedules resources (:mod:`branchnas.pipeline.executor`).

Every execution appends one line to ``<out_dir>/attempts.jsonl`` (:func:`job_attempts`):
where it ran (executor, node, host, pid) and when, so a run records which node ran each
job and how often it was retried.

Example:
    >>> import tempfile
    >>> from branchnas.training.rundir import RunDir
    >>> @register_job_kind("doc_square")
    ... def _square(spec):
    ...     run = RunDir(spec["out_dir"])
    ...     run.mark_done({"value": spec["params"]["x"] ** 2})
    ...     return run.read_result()
    >>> spec = make_job("doc_square", {"x": 3}, tempfile.mkdtemp())
    >>> run_job(spec)["value"]
    9
    >>> run_job(spec)["value"]  # done: read back from the run directory, not run again
    9
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from .._registry import Registry
from ..errors import BranchnasError
from ..training.rundir import RunDir

__all__ = [
    "JobSpec",
    "JobFunction",
    "ATTEMPTS_FILE",
    "JOB_KIND_MODULES",
    "register_job_kind",
    "list_job_kinds",
    "get_job_kind",
    "load_job_kinds",
    "make_job",
    "validate_job",
    "job_result",
    "job_attempts",
    "run_job",
]

log = logging.getLogger(__name__)

JobSpec = Dict[str, Any]
JobFunction = Callable[[JobSpec], Dict[str, Any]]

ATTEMPTS_FILE = "attempts.jsonl"
"""One JSON line per execution of the job: executor, node, host, pid, start time."""

_KINDS: Registry[JobFunction] = Registry("job kind")
_SPEC_FIELDS = ("kind", "params", "out_dir", "resources")
_RESOURCES = ("cpus", "gpus")

JOB_KIND_MODULES: List[str] = ["branchnas.pipeline.executors", "branchnas.pipeline.tune"]
"""Modules whose import registers the built-in job kinds (imported by :func:`load_job_kinds`)."""


# ----------------------------------------------------------------------------- registry


def register_job_kind(name: str, fn: Optional[JobFunction] = None) -> Any:
    """Register ``fn(spec) -> result dict`` as job kind ``name`` (also usable as a decorator).

    Raises:
        BranchnasError: if ``name`` is taken.
    """
    return _KINDS.register(name, fn)


def list_job_kinds() -> List[str]:
    """Names of the registered job kinds, sorted (built-in kinds imported first)."""
    load_job_kinds()
    return _KINDS.names()


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


def get_job_kind(name: str) -> JobFunction:
    """The function of job kind ``name`` (built-in kinds are imported on first use).

    Raises:
        BranchnasError: for an unknown kind, listing the known ones.
    """
    if name not in _KINDS:
        load_job_kinds()
    return _KINDS.get(name)


# ----------------------------------------------------------------------------- specs


def validate_job(spec: Mapping[str, Any]) -> JobSpec:
    """Check a job spec and return it normalised (a JSON round trip: tuples become lists).

    Raises:
        BranchnasError: for a missing or unknown field, a non-JSON value, an empty out_dir or
            a bad resource request.
    """
    if not isinstance(spec, Mapping):
        raise BranchnasError(f"a job spec must be a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(_SPEC_FIELDS))
    missing = [k for k in ("kind", "params", "out_dir") if k not in spec]
    if unknown or missing:
        what = ("unknown field(s) " + ", ".join(unknown) if unknown
                else "missing " + ", ".join(missing))
        raise BranchnasError(
            f"job spec has {what}; a job is {{\"kind\", \"params\", \"out_dir\"[, \"resources\"]}}"
        )
    if not isinstance(spec["kind"], str) or not spec["kind"]:
        raise BranchnasError(f"job kind must be a non-empty string, got {spec['kind']!r}")
    if not isinstance(spec["params"], Mapping):
        raise BranchnasError(
            f"job params must be a JSON object, got {type(spec['params']).__name__}"
        )
    if not isinstance(spec["out_dir"], (str, os.PathLike)) or not str(spec["out_dir"]):
        raise BranchnasError(f"job out_dir must be a non-empty path, got {spec['out_dir']!r}")
    resources = spec.get("resources", {})
    if not isinstance(resources, Mapping) or set(resources) - set(_RESOURCES) or any(
            not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0
            for v in resources.values()):
        raise BranchnasError(
            f"job resources must map {' / '.join(_RESOURCES)} to numbers >= 0, got {resources!r}"
        )
    data = {k: spec[k] for k in _SPEC_FIELDS if k in spec}
    data["out_dir"] = str(data["out_dir"])
    try:
        return json.loads(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BranchnasError(
            f"job {spec['kind']!r} has params that are not plain JSON ({exc}); pass names and "
            "paths, not objects or NaN"
        ) from None


def make_job(
    kind: str,
    params: Mapping[str, Any],
    out_dir: Union[str, os.PathLike],
    resources: Optional[Mapping[str, float]] = None,
) -> JobSpec:
    """Build and validate a job spec.

    Args:
        kind: a registered job kind (checked when the job runs, so a driver can build kinds
            only its workers import).
        params: the job function's parameters (plain JSON).
        out_dir: the job's run directory (on a file system every machine sees when jobs
            run on a cluster).
        resources: what one run takes (``cpus``, ``gpus``); None: the executor's default.
    """
    spec: Dict[str, Any] = {"kind": kind, "params": dict(params), "out_dir": str(out_dir)}
    if resources:
        spec["resources"] = dict(resources)
    return validate_job(spec)


def job_result(spec: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The stored result of a finished job (its run directory's ``done``), else None.

    Raises:
        BranchnasError: for a training job (its params carry a ``config``) whose run is done
            with other training settings: a stored result is reused only for its own config.
    """
    spec = validate_job(spec)
    run = RunDir(spec["out_dir"])
    if not run.is_done():
        return None
    config = spec["params"].get("config")
    if isinstance(config, Mapping):
        from ..training.config import RUNTIME_FIELDS

        run.check_config(config, ignore_keys=RUNTIME_FIELDS, partial=True)
    return run.read_result()


def job_attempts(out_dir: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """The executions recorded in ``<out_dir>/attempts.jsonl`` (oldest first; a torn last
    line, from a process killed while writing it, is skipped)."""
    path = Path(out_dir) / ATTEMPTS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _record_attempt(out_dir: Path, where: Mapping[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"executor": "local", "node": None, **dict(where), "host": socket.gethostname(),
              "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with open(out_dir / ATTEMPTS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- execution


def run_job(spec: Mapping[str, Any], where: Optional[Mapping[str, Any]] = None,
            imports: Sequence[str] = ()) -> Dict[str, Any]:
    """Run a job in this process unless it is done; return its result.

    A job whose run directory is done is not run: its stored result is returned. Otherwise
    the attempt is recorded (:func:`job_attempts`) and the kind's function runs; it trains
    into the run directory (resuming its checkpoint, if any) and returns the result.

    Args:
        spec: the job spec (:func:`make_job`).
        where: what the executor knows about this execution (``executor``, ``node``, ...),
            recorded in ``attempts.jsonl``.
        imports: modules registering extra job kinds, imported first.

    Returns:
        The job's result dict.

    Raises:
        BranchnasError: for an unknown kind, a malformed spec or a result that is not a JSON
            object; whatever the job function raises.
    """
    spec = validate_job(spec)
    done = job_result(spec)
    if done is not None:
        log.info("job %s in %s is done; not running it again", spec["kind"], spec["out_dir"])
        return done
    load_job_kinds(imports)
    fn = get_job_kind(spec["kind"])
    _record_attempt(Path(spec["out_dir"]), where or {})
    log.info("job %s starting in %s", spec["kind"], spec["out_dir"])
    result = fn(spec)
    if not isinstance(result, Mapping):
        raise BranchnasError(f"job kind {spec['kind']!r} returned {type(result).__name__}, not "
                             "a dict; job functions return a JSON object")
    try:
        return json.loads(json.dumps(dict(result), allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise BranchnasError(f"job kind {spec['kind']!r} returned a result that is not JSON "
                             f"({exc}); return plain values") from None
