"""The executor seam: every training job goes through ``executor.submit(job) -> Future``.

``run``, ``validate``, ``tune`` and ``train-single`` build job specs
(:mod:`branchnas.pipeline.jobs`) and submit them to an executor; no stage knows which backend
runs them. Executors are shaped like :mod:`concurrent.futures` (``submit`` returns a
:class:`concurrent.futures.Future`, usable with ``concurrent.futures.wait``), and are
registered with metadata (:func:`list_executors`, :func:`executor_info`):

- ``local`` (the default): in this process (``jobs=1``), or ``jobs`` worker processes on this
  machine (a spawn-context :class:`~concurrent.futures.ProcessPoolExecutor`).
- ``ray``: each job a Ray task (``pip install -e .[ray]``), on a cluster (``address``:
  ``auto`` or ``HOST:PORT``) or on a Ray instance started here (no address). Each task asks
  for the job's CPUs and the executor's GPUs per job (fractions let several small models
  share one GPU). A task whose worker process or node dies is retried (``max_retries``) and
  the job resumes from its run directory's checkpoint.

Whatever the backend, a job whose run directory is done is not sent anywhere: ``submit``
returns a finished future holding the stored result, so a driver that is run again picks up
every finished job from disk and submits only the rest. Every execution records where it
ran in the job's ``attempts.jsonl`` (executor, Ray node id, host, pid).

Example:
    >>> with create_executor("local") as ex:  # doctest: +SKIP
    ...     results = run_all(ex, [single_job(space, t, config, out) for t in tasks])
"""

from __future__ import annotations

import abc
import importlib.util
import logging
import multiprocessing
import os
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence

from .._registry import Registry
from ..errors import BranchnasError
from .jobs import JobSpec, job_result, run_job, validate_job

__all__ = [
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "ExecutorConfig",
    "register_executor",
    "list_executors",
    "executor_info",
    "create_executor",
    "run_all",
    "submit_all",
    "gather",
    "abandon",
]

log = logging.getLogger(__name__)


class Executor(abc.ABC):
    """Runs job specs; ``submit(job) -> Future`` of the job's result dict.

    Subclasses implement :meth:`_submit` (only called for jobs not done yet) and
    :attr:`parallelism`; they are context managers (``shutdown`` on exit).
    """

    name = "executor"

    def submit(self, job: JobSpec) -> "Future[Dict[str, Any]]":
        """Start ``job``; its future holds the job's result (its stored result when done).

        Raises:
            BranchnasError: for a malformed spec (before anything runs).
        """
        spec = validate_job(job)
        done = job_result(spec)
        if done is not None:
            future: "Future[Dict[str, Any]]" = Future()
            future.set_result(done)
            return future
        return self._submit(spec)

    @abc.abstractmethod
    def _submit(self, spec: JobSpec) -> "Future[Dict[str, Any]]":
        """Start a job that is not done."""

    @property
    @abc.abstractmethod
    def parallelism(self) -> int:
        """How many jobs of one CPU run at once (drivers keep this many in flight)."""

    @classmethod
    def from_config(cls, cfg: "ExecutorConfig") -> "Executor":
        """The executor built from the settings it uses (its registry ``options``)."""
        return cls()

    def shutdown(self, wait: bool = True) -> None:  # noqa: B027  (optional: nothing to release)
        """Release the backend's workers (an executor is not used after this)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def submit_all(executor: Executor, jobs: Sequence[JobSpec]) -> List["Future[Dict[str, Any]]"]:
    """Submit every job; their futures, in the jobs' order (collect them with :func:`gather`)."""
    return [executor.submit(j) for j in jobs]


def gather(futures: Sequence["Future[Dict[str, Any]]"],
           in_flight: Sequence["Future[Dict[str, Any]]"] = ()) -> List[Dict[str, Any]]:
    """Wait for ``futures``; their results, in order.

    Args:
        futures: the jobs to wait for.
        in_flight: other jobs submitted meanwhile; on an error they are cancelled or waited
            for too, so no run directory is left half-written by the caller.

    Raises:
        Exception: the first job error (after every job above has stopped or finished).
    """
    finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
    failed = [f for f in futures if f in finished and f.exception() is not None]
    if failed:
        abandon(list(futures) + list(in_flight))
        raise failed[0].exception()  # type: ignore[misc]
    return [f.result() for f in futures]


def abandon(futures: Sequence["Future[Dict[str, Any]]"]) -> None:
    """Cancel the jobs not started yet and wait for the running ones (a driver's error path:
    nothing it submitted is left writing once it has raised)."""
    for f in futures:
        f.cancel()
    wait(futures)


def run_all(executor: Executor, jobs: Sequence[JobSpec]) -> List[Dict[str, Any]]:
    """Submit every job and wait; the results in the jobs' order.

    Raises:
        Exception: the first job error (after the jobs still running have stopped or finished,
            so no run directory is left half-written by this call).
    """
    return gather(submit_all(executor, jobs))


# ----------------------------------------------------------------------------- local


class LocalExecutor(Executor):
    """Jobs on this machine: in this process (``jobs=1``) or in ``jobs`` worker processes.

    Args:
        jobs: worker processes (1: run each job in this process when it is submitted).
        imports: modules registering extra job kinds, imported by each worker.
    """

    name = "local"

    def __init__(self, jobs: int = 1, imports: Sequence[str] = ()) -> None:
        if not isinstance(jobs, int) or jobs < 1:
            raise BranchnasError(f"jobs must be a whole number >= 1, got {jobs!r}")
        self.jobs = jobs
        self.imports = list(imports)
        # spawn, not fork: torch (and its thread pools) in a forked child is unsafe
        self._pool = (ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
                      if jobs > 1 else None)

    @classmethod
    def from_config(cls, cfg: "ExecutorConfig") -> "LocalExecutor":
        return cls(jobs=cfg.jobs)

    @property
    def parallelism(self) -> int:
        return self.jobs

    def _submit(self, spec: JobSpec) -> "Future[Dict[str, Any]]":
        where = {"executor": "local", "node": None}
        if self._pool is not None:
            return self._pool.submit(run_job, spec, where, self.imports)
        future: "Future[Dict[str, Any]]" = Future()
        try:
            future.set_result(run_job(spec, where, self.imports))
        except Exception as exc:  # the future carries it, as a pool's would
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)


# ----------------------------------------------------------------------------- ray


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BranchnasError(
            "the ray executor needs Ray; install it with: pip install -e .[ray] "
            "(or pip install 'ray>=2.9')"
        ) from None
    return ray


def _ray_task(spec: JobSpec, imports: Sequence[str]) -> Dict[str, Any]:
    """The body of a job's Ray task (runs on a worker of any node)."""
    import ray

    ctx = ray.get_runtime_context()
    where = {"executor": "ray", "node": ctx.get_node_id(), "ray_task": ctx.get_task_id(),
             "gpus": [str(g) for g in ray.get_gpu_ids()]}
    return run_job(spec, where, imports)


class RayExecutor(Executor):
    """Each job a Ray task (``ray`` is imported here, lazily).

    Args:
        address: a running cluster's address (``auto``, ``HOST:PORT``, ``ray://...``); None:
            start a Ray instance on this machine (stopped again by :meth:`shutdown`).
        num_cpus: CPUs of the instance started here (None: all of this machine's).
        cpus_per_job: CPUs a job asks for when its spec does not say (its ``resources``).
        gpus_per_job: GPUs a job asks for (fractions share a GPU: 0.25 puts four small models
            on one); None: 1 when the cluster has GPUs, else 0.
        max_retries: how often a job whose worker process or node died is run again (it
            resumes from its checkpoint); errors the job raises itself are not retried.
        imports: modules registering extra job kinds, imported by each task.
        temp_dir: Ray's session directory for the instance started here (default Ray's).

    Workers' output is not streamed to this process (the progress bars of parallel jobs would
    interleave): Ray keeps it in its session's logs (``/tmp/ray/session_latest/logs``); a job's
    error comes back as the exception of its future.
    """

    name = "ray"

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None,
                 cpus_per_job: float = 1.0, gpus_per_job: Optional[float] = None,
                 max_retries: int = 3, imports: Sequence[str] = (),
                 temp_dir: Optional[str] = None) -> None:
        if cpus_per_job <= 0 or (gpus_per_job is not None and gpus_per_job < 0) or max_retries < 0:
            raise BranchnasError("cpus_per_job must be > 0, gpus_per_job and max_retries >= 0")
        ray = _import_ray()
        self._ray = ray
        self._owner = False
        if not ray.is_initialized():
            kwargs: Dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_cpus, _temp_dir=temp_dir, **kwargs)
            self._owner = True
        elif address:
            log.info("ray is initialised already; using that connection, not %s", address)
        cluster = ray.cluster_resources()
        if gpus_per_job is None:
            gpus_per_job = 1.0 if cluster.get("GPU", 0) > 0 else 0.0
        self.cpus_per_job, self.gpus_per_job = float(cpus_per_job), float(gpus_per_job)
        self.max_retries = int(max_retries)
        self.imports = list(imports)
        self._cluster_cpus = float(cluster.get("CPU", 1))
        # worker death (system failure) is retried; exceptions the job raises are not
        self._remote = ray.remote(max_retries=self.max_retries, retry_exceptions=False)(_ray_task)

    @classmethod
    def from_config(cls, cfg: "ExecutorConfig") -> "RayExecutor":
        return cls(address=cfg.address, cpus_per_job=cfg.cpus_per_job,
                   gpus_per_job=cfg.gpus_per_job, max_retries=cfg.max_retries,
                   num_cpus=None if cfg.address else _local_cpus())

    @property
    def parallelism(self) -> int:
        return max(1, int(self._cluster_cpus // self.cpus_per_job))

    def _submit(self, spec: JobSpec) -> "Future[Dict[str, Any]]":
        res = spec.get("resources", {})
        task = self._remote.options(num_cpus=float(res.get("cpus", self.cpus_per_job)),
                                    num_gpus=float(res.get("gpus", self.gpus_per_job)))
        return task.remote(spec, self.imports).future()

    def shutdown(self, wait: bool = True) -> None:
        if self._owner and self._ray.is_initialized():
            self._ray.shutdown()
        self._owner = False


# ----------------------------------------------------------------------------- registry

_EXECUTORS: Registry[type] = Registry("executor")


def register_executor(name: str, cls: type, **meta: Any) -> type:
    """Register an :class:`Executor` subclass as ``name``, with metadata (``description``,
    ``distributed``: runs jobs on other machines, ``extra``: the pip extra it needs,
    ``options``: the :class:`ExecutorConfig` fields it reads in ``from_config``, ``requires``:
    the module it imports, checked by :meth:`ExecutorConfig.validate`)."""
    return _EXECUTORS.register(name, cls, **meta)


def list_executors() -> List[str]:
    """Names of the registered executors, sorted."""
    return _EXECUTORS.names()


def executor_info(name: str) -> Dict[str, Any]:
    """The metadata of executor ``name``."""
    return _EXECUTORS.meta(name)


def create_executor(name: str = "local", **kwargs: Any) -> Executor:
    """The executor ``name`` built with ``kwargs`` (checked against its constructor).

    Raises:
        BranchnasError: for an unknown name or keyword, or a missing optional dependency.
    """
    return _EXECUTORS.create(name, **kwargs)


register_executor("local", LocalExecutor, distributed=False, extra=None, options=("jobs",),
                  description="this process, or N worker processes on this machine (--jobs N)")
register_executor("ray", RayExecutor, distributed=True, extra="ray", requires="ray",
                  options=("address", "cpus_per_job", "gpus_per_job", "max_retries"),
                  description="a Ray task per job, on a Ray cluster or a Ray instance started here")


@dataclass
class ExecutorConfig:
    """How jobs run (the command line's ``--executor``, ``--jobs``, ``--ray-address``, ...)."""

    name: str = "local"  # a registered executor: local | ray
    jobs: int = 1  # local: worker processes on this machine
    address: Optional[str] = None  # ray: cluster address (auto | HOST:PORT); None starts one here
    cpus_per_job: float = 1.0  # ray: CPUs a job asks for when its spec does not say
    gpus_per_job: Optional[float] = None  # ray: GPUs per job (0.25: four share one); None: auto
    max_retries: int = 3  # ray: reruns of a job whose worker or node died

    def validate(self) -> "ExecutorConfig":
        """Check the settings before any work starts; returns self.

        Raises:
            BranchnasError: for an unknown executor, or a setting it does not use.
        """
        _EXECUTORS.check_choice(self.name)
        module = executor_info(self.name).get("requires")
        if module and importlib.util.find_spec(module) is None:
            raise BranchnasError(
                f"--executor {self.name} needs {module}, which is not installed; install it with: "
                f"pip install -e .[{executor_info(self.name)['extra']}]")
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise BranchnasError(f"--jobs must be a whole number >= 1, got {self.jobs!r}")
        uses = set(executor_info(self.name).get("options", ()))
        default = ExecutorConfig()
        unused = [f.name for f in fields(self) if f.name != "name" and f.name not in uses
                  and getattr(self, f.name) != getattr(default, f.name)]
        if unused:
            flag = _FLAGS.get(unused[0], "--" + unused[0].replace("_", "-"))
            users = [n for n in list_executors() if unused[0] in executor_info(n).get("options", ())]
            raise BranchnasError(
                f"{flag} is not a setting of executor {self.name!r}; "
                f"it is one of: {', '.join(users) or 'none'} (use --executor {users[0] if users else '...'})")
        return self

    def create(self) -> Executor:
        """The executor these settings describe."""
        self.validate()
        return _EXECUTORS.get(self.name).from_config(self)


_FLAGS = {"address": "--ray-address"}  # command-line names that differ from the field's


def _local_cpus() -> Optional[int]:
    """CPUs of a Ray instance started here: the ones this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()
