"""A job queue on optuna storage: enqueue jobs, run workers anywhere, wait for the results.

Every job (:mod:`branchnas.pipeline.jobs`) is one optuna trial of a *queue study* on shared
storage. A trial's user attributes hold the job (``job``: the spec, ``job_key``,
``job_attempt``) and, when it finishes, ``job_result`` or ``job_error``; its state is the
job's state:

=========  =====================================================================
WAITING    enqueued, nobody runs it yet
RUNNING    a worker claimed it and sends heartbeats
COMPLETE   done: ``job_result`` holds the result (``job_duplicate_of`` marks a duplicate
           trial of a job another trial runs; it holds no result)
FAIL       the executor raised (``job_error``), or the worker stopped heartbeating
           (system attribute ``branchnas:stale``): then a new WAITING trial retries the job
=========  =====================================================================

Guarantees:

* **Claiming is exclusive.** A worker moves a WAITING trial to RUNNING with the storage's
  own atomic transition (a row lock on PostgreSQL/MySQL, the log order on a journal file;
  SQLite, whose driver does not lock rows, is serialised with a lock file beside the
  database).
* **A dead worker's job runs again.** A worker bumps a heartbeat counter on its trial every
  ``heartbeat_interval`` seconds. Every worker and every waiting driver watches the
  RUNNING trials; one whose counter has not moved for ``grace_period`` seconds (measured
  on the watcher's own clock, so machines' clocks need not agree) is failed, and the one
  process whose FAIL transition succeeds enqueues a retry (up to ``max_retries`` times).
* **No job runs to completion twice.** Jobs are de-duplicated by key when enqueued; a
  worker that claims a trial while another live trial of the same key exists (concurrent
  enqueues) marks its trial a duplicate instead of running it (the lowest-numbered live
  trial of a key is the one that runs); the job's result is committed once, exclusively,
  as a done marker in its ``out_dir`` (:func:`~branchnas.pipeline.jobs.run_job`), so a
  retry of a job that had finished reuses its result; and a worker whose trial was failed
  behind its back (its heartbeats stopped reaching the storage) learns it from its next
  heartbeat: ``JobContext.check()`` then stops the executor, and its COMPLETE transition is
  refused.

Storage URLs (:func:`parse_storage_url`):

* ``sqlite:///path/jobs.db`` (a local SQLite file; relative path; ``sqlite:////abs/jobs.db``
  absolute) or a bare ``*.db`` path: one machine, a few workers;
* ``journal:///abs/path/jobs.journal``, ``journal:rel/jobs.journal`` or a bare
  ``*.journal`` path: optuna's journal file (``JournalStorage`` + ``JournalFileBackend``);
  one machine or a shared file system with working locks;
* ``postgresql://user:password@host:5432/db`` (``postgresql+psycopg2://`` also works; needs
  ``psycopg2-binary``): many machines.

Job ``out_dir`` paths must name the same directory on every machine (a shared file system,
mounted at the same path, or relative paths with workers started in the same directory).

Example (one machine; workers may run in other processes or on other machines)::

    keys = enqueue("sqlite:///runs/jobs.db", "run-1", specs)
    # elsewhere: run_worker("sqlite:///runs/jobs.db", "run-1")
    results = wait_for("sqlite:///runs/jobs.db", "run-1", keys)
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..errors import BranchnasError
from .jobs import (
    JobContext,
    JobLeaseLost,
    JobSpec,
    job_key,
    load_job_kinds,
    result_value,
    run_job,
    validate_job,
)

__all__ = [
    "DEFAULT_STUDY",
    "HEARTBEAT_INTERVAL",
    "GRACE_PERIOD",
    "MAX_RETRIES",
    "IDLE_TIMEOUT",
    "StorageURL",
    "parse_storage_url",
    "open_storage",
    "redact_url",
    "JobQueue",
    "QueueStatus",
    "WorkerReport",
    "enqueue",
    "run_worker",
    "wait_for",
    "run_jobs",
    "queue_status",
    "open_queue",
    "close_queue",
]

log = logging.getLogger(__name__)

DEFAULT_STUDY = "branchnas-jobs"
HEARTBEAT_INTERVAL = 10.0  # seconds between two heartbeats of a running job
GRACE_PERIOD = 60.0  # seconds without a heartbeat after which a job's worker counts as dead
MAX_RETRIES = 3  # times a job whose worker died is run again
IDLE_TIMEOUT = 600.0  # seconds an idle worker waits for new jobs while the queue is open
POLL_INTERVAL = 2.0  # seconds between two looks at the queue

# trial user attributes (visible in optuna's dashboard)
_JOB = "job"
_KEY = "job_key"
_ATTEMPT = "job_attempt"
_RETRY_OF = "job_retry_of"
_RESULT = "job_result"
_ERROR = "job_error"
_DUPLICATE = "job_duplicate_of"
# trial system attributes (the lease)
_BEAT = "branchnas:heartbeat"
_WORKER = "branchnas:worker"
_STALE = "branchnas:stale"
# study user attributes
_CLOSED = "branchnas:closed"


# ----------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class StorageURL:
    """A parsed storage URL.

    Attributes:
        kind: ``"sqlite"``, ``"journal"`` or ``"rdb"`` (a database server).
        url: the SQLAlchemy URL (sqlite, rdb) or the journal file's path.
        path: the file (sqlite, journal), else None.
    """

    kind: str
    url: str
    path: Optional[Path] = None


_RDB_SCHEMES = ("postgresql", "postgres", "mysql", "mariadb")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_JOURNAL_SUFFIXES = (".journal", ".jsonl", ".log")


def parse_storage_url(url: str) -> StorageURL:
    """Parse a storage URL (see the module docstring for the accepted forms).

    Raises:
        BranchnasError: for an in-memory SQLite database, an unknown scheme or an empty path.
    """
    text = str(url).strip()
    usage = ("use sqlite:///path/jobs.db, journal:///path/jobs.journal or "
             "postgresql://user:password@host:port/database")
    if text.startswith("sqlite:"):
        rest = text[len("sqlite:"):]
        if not rest.startswith("///") or rest[3:] in ("", ":memory:"):
            raise BranchnasError(
                f"storage {text!r} is not a SQLite file that other processes can open; {usage}"
            )
        return StorageURL("sqlite", text, Path(rest[3:]))
    if text.startswith("journal:"):
        rest = text[len("journal:"):].removeprefix("//")
        if not rest:
            raise BranchnasError(f"storage {text!r} names no journal file; {usage}")
        return StorageURL("journal", rest, Path(rest))
    scheme = text.split("://", 1)[0].split("+", 1)[0].lower() if "://" in text else ""
    if scheme in _RDB_SCHEMES:
        if scheme == "postgres":  # SQLAlchemy knows only "postgresql"
            text = "postgresql" + text[len("postgres"):]
        return StorageURL("rdb", text)
    if scheme:
        raise BranchnasError(f"storage scheme {scheme!r} is not supported; {usage}")
    lower = text.lower()
    if lower.endswith(_SQLITE_SUFFIXES):
        return StorageURL("sqlite", f"sqlite:///{text}", Path(text))
    if lower.endswith(_JOURNAL_SUFFIXES):
        return StorageURL("journal", text, Path(text))
    raise BranchnasError(f"cannot tell what storage {text!r} is; {usage}")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and result files)."""
    text = str(url)
    if "://" not in text:
        return text
    scheme, rest = text.split("://", 1)
    creds, sep, host = rest.rpartition("@")
    if not sep or ":" not in creds:
        return text
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _postgres_url(url: str) -> str:
    """Pick an installed PostgreSQL driver for a plain ``postgresql://`` URL."""
    head = url.split("://", 1)[0]
    if not head.startswith("postgresql"):
        return url
    drivers = [("psycopg2", "postgresql+psycopg2"), ("psycopg", "postgresql+psycopg")]
    if "+" in head:
        wanted = [m for m, h in drivers if h == head] or [head.split("+", 1)[1]]
    else:
        wanted = [m for m, _ in drivers]
    for module in wanted:
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        if "+" in head:
            return url
        return dict(drivers)[module] + "://" + url.split("://", 1)[1]
    raise BranchnasError(
        "PostgreSQL storage needs a database driver; install one with "
        "`pip install psycopg2-binary`"
    )


_STORAGES: Dict[Tuple[str, int], Any] = {}
_STORAGES_LOCK = threading.Lock()


def open_storage(url: str) -> Any:
    """The optuna storage behind ``url`` (one object per URL and process).

    Raises:
        BranchnasError: for a bad URL, a missing driver, or a database that cannot be reached.
    """
    parsed = parse_storage_url(url)
    cache_key = (parsed.url, os.getpid())
    with _STORAGES_LOCK:
        if cache_key in _STORAGES:
            return _STORAGES[cache_key]
        storage = _open(parsed)
        _STORAGES[cache_key] = storage
        return storage


def _open(parsed: StorageURL) -> Any:
    import optuna

    if parsed.kind == "journal":
        from optuna.storages import JournalStorage

        assert parsed.path is not None
        parsed.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            from optuna.storages.journal import JournalFileBackend as _Backend
        except ImportError:  # optuna < 4
            from optuna.storages import JournalFileStorage as _Backend  # type: ignore[no-redef]
        return JournalStorage(_Backend(str(parsed.path)))
    if parsed.kind == "sqlite":
        assert parsed.path is not None
        parsed.path.parent.mkdir(parents=True, exist_ok=True)
        kwargs: Dict[str, Any] = {"connect_args": {"timeout": 120}}
        url = parsed.url
        lock: Any = _file_lock(parsed.path)
    else:
        kwargs = {"pool_pre_ping": True}
        url = _postgres_url(parsed.url)
        lock = contextlib.nullcontext()
    last: Optional[Exception] = None
    for attempt in range(6):  # several processes creating the tables at once may collide
        try:
            with lock:
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except ImportError as exc:
            raise BranchnasError(
                f"storage {redact_url(url)} needs a database driver ({exc}); install it "
                "(PostgreSQL: `pip install psycopg2-binary`)"
            ) from None
        except Exception as exc:  # SQLAlchemy's errors: retried, then reported
            last = exc
            time.sleep(0.2 * 2**attempt)
    raise BranchnasError(
        f"cannot open storage {redact_url(url)} ({type(last).__name__}: {last}); check that "
        "the database server runs and the URL is right"
    )


@contextlib.contextmanager
def _file_lock(db_path: Path) -> Iterator[None]:
    """An exclusive lock beside a SQLite database (serialises this queue's transitions)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock_path = db_path.with_name(db_path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- the queue


@dataclass
class QueueStatus:
    """Counts of a queue's trials and jobs.

    Attributes:
        waiting / running / complete / failed: trials in each state.
        jobs: distinct job keys.
        done: jobs with a result.
        broken: jobs that failed for good (an executor error, or retries used up).
        closed: whether the queue was closed (idle workers then exit at once).
    """

    waiting: int = 0
    running: int = 0
    complete: int = 0
    failed: int = 0
    jobs: int = 0
    done: int = 0
    broken: int = 0
    closed: bool = False

    @property
    def pending(self) -> int:
        """Jobs neither done nor broken."""
        return self.jobs - self.done - self.broken


@dataclass
class WorkerReport:
    """What one :func:`run_worker` call did (job keys per outcome)."""

    worker: str
    completed: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    duplicates: List[str] = field(default_factory=list)
    lost: List[str] = field(default_factory=list)


class _Heartbeat:
    """Bumps a running trial's heartbeat counter; sets ``lost`` when the trial was failed."""

    def __init__(self, storage: Any, trial_id: int, worker: str, interval: float,
                 lost: threading.Event) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._worker = worker
        self._interval = interval
        self._lost = lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self._interval))

    def _run(self) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        beat = 0
        while not self._stop.wait(self._interval):
            beat += 1
            try:
                self._storage.set_trial_system_attr(self._trial_id, _BEAT, [self._worker, beat])
            except UpdateFinishedTrialError:
                log.warning("worker %s: the queue failed our trial %d behind our back; the job "
                            "will stop at its next check", self._worker, self._trial_id)
                self._lost.set()
                return
            except Exception as exc:  # transient storage trouble: keep trying
                log.warning("worker %s: heartbeat failed (%s: %s)", self._worker,
                            type(exc).__name__, exc)


def _is_live(trial: Any) -> bool:
    from optuna.trial import TrialState

    if trial.state in (TrialState.WAITING, TrialState.RUNNING):
        return True
    return trial.state == TrialState.COMPLETE and _DUPLICATE not in trial.user_attrs


class JobQueue:
    """One queue study on one storage (the functions below are thin wrappers).

    Args:
        storage_url: see :func:`parse_storage_url`.
        study_name: the queue study (created when missing).
    """

    def __init__(self, storage_url: str, study_name: str = DEFAULT_STUDY) -> None:
        import optuna
        from optuna.exceptions import DuplicatedStudyError
        from optuna.study import StudyDirection

        if not study_name:
            raise BranchnasError("the queue study name is empty; give a name, e.g. --study run-1")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.url = storage_url
        self.parsed = parse_storage_url(storage_url)
        self.storage = open_storage(storage_url)
        self.study_name = study_name
        with self.lock():
            try:
                self.study_id = self.storage.get_study_id_from_name(study_name)
            except KeyError:
                try:
                    self.study_id = self.storage.create_new_study(
                        [StudyDirection.MINIMIZE], study_name
                    )
                except DuplicatedStudyError:
                    self.study_id = self.storage.get_study_id_from_name(study_name)
        self._seen: Dict[int, Tuple[Any, float]] = {}  # RUNNING trial id -> (beat, since)
        self._orphan_since: Dict[str, float] = {}  # key -> when first seen without a live trial

    def __repr__(self) -> str:
        return f"JobQueue({redact_url(self.url)!r}, {self.study_name!r})"

    # ------------------------------------------------------------------ basics
    def lock(self) -> Any:
        """A context serialising state transitions (SQLite only; others are atomic)."""
        if self.parsed.kind == "sqlite":
            assert self.parsed.path is not None
            return _file_lock(self.parsed.path)
        return contextlib.nullcontext()

    def trials(self) -> List[Any]:
        """The queue's job trials (FrozenTrial, not copied), by number."""
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        return sorted((t for t in trials if _KEY in t.user_attrs), key=lambda t: t.number)

    def _by_key(self) -> Dict[str, List[Any]]:
        out: Dict[str, List[Any]] = {}
        for t in self.trials():
            out.setdefault(t.user_attrs[_KEY], []).append(t)
        return out

    def is_closed(self) -> bool:
        return bool(self.storage.get_study_user_attrs(self.study_id).get(_CLOSED, False))

    def set_closed(self, closed: bool) -> None:
        self.storage.set_study_user_attr(self.study_id, _CLOSED, bool(closed))

    def _add(self, spec: JobSpec, key: str, attempt: int, retry_of: Optional[int] = None) -> None:
        from optuna.trial import TrialState, create_trial

        attrs: Dict[str, Any] = {_JOB: spec, _KEY: key, _ATTEMPT: attempt}
        if retry_of is not None:
            attrs[_RETRY_OF] = retry_of
        template = create_trial(state=TrialState.WAITING, user_attrs=attrs)
        self.storage.create_new_trial(self.study_id, template_trial=template)

    # ------------------------------------------------------------------ enqueue
    def enqueue(self, specs: Sequence[Mapping[str, Any]]) -> List[str]:
        """Add jobs not already waiting, running or done; re-add jobs that failed for good.

        Returns:
            The job keys, in the order of ``specs``; also re-opens a closed queue.
        """
        specs = [validate_job(s) for s in specs]
        keys = [job_key(s) for s in specs]
        added = 0
        with self.lock():
            by_key = self._by_key()
            live = {k for k, ts in by_key.items() if any(_is_live(t) for t in ts)}
            for spec, key in zip(specs, keys):
                if key in live:
                    continue
                self._add(spec, key, attempt=1)
                live.add(key)
                added += 1
            self.set_closed(False)
        log.info("queue %s: %d job(s) enqueued, %d already there", self.study_name, added,
                 len(set(keys)) - added)
        return keys

    # ------------------------------------------------------------------ claim and run
    def claim(self, worker: str) -> Optional[Any]:
        """Move the lowest-numbered WAITING job trial to RUNNING for ``worker``."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        with self.lock():
            waiting = [t for t in self.trials() if t.state == TrialState.WAITING]
            for t in waiting:
                try:
                    won = self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING)
                except UpdateFinishedTrialError:
                    continue
                if won:
                    self.storage.set_trial_system_attr(t._trial_id, _WORKER, worker)
                    self.storage.set_trial_system_attr(t._trial_id, _BEAT, [worker, 0])
                    return self.storage.get_trial(t._trial_id)
        return None

    def _finish(self, trial: Any, state: Any, attrs: Mapping[str, Any],
                value: Optional[float] = None) -> bool:
        """Set attributes, then finish ``trial``; False when it was finished by someone else."""
        from optuna.exceptions import UpdateFinishedTrialError

        with self.lock():
            try:
                for name, v in attrs.items():
                    self.storage.set_trial_user_attr(trial._trial_id, name, v)
                return bool(self.storage.set_trial_state_values(
                    trial._trial_id, state, values=None if value is None else [value]))
            except UpdateFinishedTrialError:
                return False

    def execute(self, trial: Any, worker: str, heartbeat_interval: float = HEARTBEAT_INTERVAL,
                max_retries: int = MAX_RETRIES) -> str:
        """Run a claimed trial's job; returns ``completed``, ``failed``, ``duplicate`` or ``lost``.

        Raises:
            KeyboardInterrupt, SystemExit: after handing the job back to the queue (retried).
        """
        from optuna.trial import TrialState

        spec, key = trial.user_attrs[_JOB], trial.user_attrs[_KEY]
        same = [t for t in self._by_key().get(key, []) if _is_live(t)]
        first = min(same, key=lambda t: t.number) if same else trial
        if first.number != trial.number:
            log.info("worker %s: job %s is already trial %d; trial %d is a duplicate",
                     worker, key, first.number, trial.number)
            self._finish(trial, TrialState.COMPLETE, {_DUPLICATE: first.number}, 0.0)
            return "duplicate"
        ctx = JobContext(spec=spec, key=key, attempt=int(trial.user_attrs.get(_ATTEMPT, 1)),
                         trial_number=trial.number, worker=worker)
        try:
            with _Heartbeat(self.storage, trial._trial_id, worker, heartbeat_interval, ctx.lost):
                result = run_job(spec, context=ctx)
        except (KeyboardInterrupt, SystemExit):
            self._hand_back(trial, worker, "the worker was interrupted", max_retries)
            raise
        except JobLeaseLost as exc:
            log.warning("worker %s: %s", worker, exc)
            return "lost"
        except Exception as exc:
            tail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            log.error("worker %s: job %s failed: %s", worker, key, tail,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            if not self._finish(trial, TrialState.FAIL, {_ERROR: tail}):
                return "lost"
            return "failed"
        if not self._finish(trial, TrialState.COMPLETE, {_RESULT: result}, result_value(result)):
            log.warning("worker %s: job %s finished after the queue gave it away; its result "
                        "stays in %s for the retry to reuse", worker, key, spec["out_dir"])
            return "lost"
        return "completed"

    # ------------------------------------------------------------------ failure handling
    def _fail_stale(self, trial: Any, reason: str) -> bool:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        with self.lock():
            try:
                self.storage.set_trial_system_attr(trial._trial_id, _STALE, reason)
                return bool(self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL))
            except UpdateFinishedTrialError:
                return False

    def _retry(self, trial: Any, max_retries: int) -> None:
        attempt = int(trial.user_attrs.get(_ATTEMPT, 1))
        key = trial.user_attrs[_KEY]
        if attempt > max_retries:
            log.error("queue %s: job %s lost its worker %d times; giving up on it",
                      self.study_name, key, attempt)
            return
        with self.lock():
            self._add(trial.user_attrs[_JOB], key, attempt + 1, retry_of=trial.number)
        log.warning("queue %s: job %s (trial %d) enqueued again (attempt %d)", self.study_name,
                    key, trial.number, attempt + 1)

    def _hand_back(self, trial: Any, worker: str, reason: str, max_retries: int) -> None:
        try:
            if self._fail_stale(trial, f"{reason} ({worker})"):
                self._retry(trial, max_retries)
        except Exception as exc:  # the storage may be what interrupted us
            log.warning("worker %s: could not hand job back (%s); it will be retried after the "
                        "grace period", worker, exc)

    def recover(self, grace_period: float = GRACE_PERIOD, max_retries: int = MAX_RETRIES,
                observer: str = "") -> int:
        """Fail RUNNING trials whose heartbeat stopped for ``grace_period`` seconds and retry
        their jobs; re-enqueue jobs left with no live trial after such a failure.

        Returns:
            The number of jobs enqueued again.
        """
        from optuna.trial import TrialState

        now = time.monotonic()
        by_key = self._by_key()
        running = {t._trial_id: t for ts in by_key.values() for t in ts
                   if t.state == TrialState.RUNNING}
        for tid in list(self._seen):
            if tid not in running:
                del self._seen[tid]
        retried = 0
        for tid, t in running.items():
            beat = t.system_attrs.get(_BEAT)
            seen = self._seen.get(tid)
            if seen is None or seen[0] != beat:
                self._seen[tid] = (beat, now)
                continue
            if now - seen[1] < grace_period:
                continue
            owner = t.system_attrs.get(_WORKER, "?")
            reason = f"no heartbeat from {owner} for {grace_period:g} s (seen by {observer or '?'})"
            if self._fail_stale(t, reason):
                log.warning("queue %s: job %s (trial %d): %s", self.study_name,
                            t.user_attrs[_KEY], t.number, reason)
                self._retry(t, max_retries)
                retried += 1
            self._seen.pop(tid, None)
        if retried:
            by_key = self._by_key()
        # a retry lost between a FAIL and its enqueue (the failing process died): redo it
        for key, ts in by_key.items():
            last = ts[-1]
            orphan = (not any(_is_live(t) for t in ts) and last.state == TrialState.FAIL
                      and _STALE in last.system_attrs
                      and int(last.user_attrs.get(_ATTEMPT, 1)) <= max_retries)
            if not orphan:
                self._orphan_since.pop(key, None)
                continue
            since = self._orphan_since.setdefault(key, now)
            if now - since >= grace_period:
                self._retry(last, max_retries)
                self._orphan_since.pop(key, None)
                retried += 1
        return retried

    # ------------------------------------------------------------------ reading
    def status(self, max_retries: int = MAX_RETRIES) -> QueueStatus:
        """Counts of trials and jobs."""
        from optuna.trial import TrialState

        st = QueueStatus(closed=self.is_closed())
        by_key = self._by_key()
        for ts in by_key.values():
            for t in ts:
                if t.state == TrialState.WAITING:
                    st.waiting += 1
                elif t.state == TrialState.RUNNING:
                    st.running += 1
                elif t.state == TrialState.COMPLETE:
                    st.complete += 1
                elif t.state == TrialState.FAIL:
                    st.failed += 1
            st.jobs += 1
            if any(_RESULT in t.user_attrs and t.state == TrialState.COMPLETE for t in ts):
                st.done += 1
            elif _failure(ts, max_retries) is not None:
                st.broken += 1
        return st

    def outcome(self, keys: Sequence[str], max_retries: int = MAX_RETRIES
                ) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, str], List[str]]:
        """``(results, errors, pending)`` for ``keys`` (results/errors by key).

        Raises:
            BranchnasError: for a key that was never enqueued here.
        """
        from optuna.trial import TrialState

        by_key = self._by_key()
        results: Dict[str, Dict[str, Any]] = {}
        errors: Dict[str, str] = {}
        pending: List[str] = []
        for key in keys:
            ts = by_key.get(key)
            if not ts:
                raise BranchnasError(
                    f"job {key} is not in queue {self.study_name!r} of {redact_url(self.url)}; "
                    "enqueue it first"
                )
            done = [t for t in ts if t.state == TrialState.COMPLETE and _RESULT in t.user_attrs]
            if done:
                results[key] = dict(done[0].user_attrs[_RESULT])
                continue
            failure = _failure(ts, max_retries)
            if failure is not None:
                errors[key] = failure
            else:
                pending.append(key)
        return results, errors, pending


def _failure(trials: Sequence[Any], max_retries: int) -> Optional[str]:
    """Why a job failed for good (None while it may still finish)."""
    from optuna.trial import TrialState

    if any(_is_live(t) for t in trials):
        return None
    last = trials[-1]
    if last.state != TrialState.FAIL:
        return None
    if _ERROR in last.user_attrs:
        return str(last.user_attrs[_ERROR])
    if int(last.user_attrs.get(_ATTEMPT, 1)) > max_retries:
        return (f"its worker died {last.user_attrs.get(_ATTEMPT, 1)} times "
                f"(last: {last.system_attrs.get(_STALE, 'no heartbeat')})")
    return None


# ----------------------------------------------------------------------------- functions


def enqueue(storage_url: str, study_name: str, specs: Sequence[Mapping[str, Any]]) -> List[str]:
    """Put jobs on the queue (de-duplicated by key: a job already waiting, running or done is
    not added again; one that failed for good is). Re-opens a closed queue.

    Args:
        storage_url: see :func:`parse_storage_url`.
        study_name: the queue study (created when missing).
        specs: job specs (:func:`~branchnas.pipeline.jobs.make_job`).

    Returns:
        The job keys, one per spec, for :func:`wait_for`.
    """
    return JobQueue(storage_url, study_name).enqueue(specs)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt (main thread only), so the job is handed back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_worker(
    storage_url: str,
    study_name: str = DEFAULT_STUDY,
    *,
    imports: Sequence[str] = (),
    max_jobs: Optional[int] = None,
    idle_timeout: Optional[float] = IDLE_TIMEOUT,
    poll_interval: float = POLL_INTERVAL,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    grace_period: float = GRACE_PERIOD,
    max_retries: int = MAX_RETRIES,
    worker_id: Optional[str] = None,
) -> WorkerReport:
    """Take jobs from the queue and run them until none remain.

    The worker exits when no job is waiting or running anywhere and either the queue is
    closed (:func:`close_queue`) or ``idle_timeout`` seconds have passed like that (so it
    outlives the gap between two stages of a pipeline). While other workers' jobs run it
    stays, to take over a job whose worker dies. SIGTERM and Ctrl-C hand the current job
    back to the queue (it is retried at once) and stop the worker.

    Args:
        storage_url: see :func:`parse_storage_url`.
        study_name: the queue study.
        imports: extra modules to import first (they register job kinds).
        max_jobs: stop after this many jobs (None: no limit).
        idle_timeout: seconds to wait for new jobs on an empty open queue (None: until closed).
        poll_interval: seconds between two looks at an empty queue.
        heartbeat_interval: seconds between two heartbeats of a running job.
        grace_period: seconds without a heartbeat after which a job's worker counts as dead
            (must exceed ``heartbeat_interval`` by a margin; all workers should agree).
        max_retries: times a job whose worker died is run again.
        worker_id: a name for logs (default ``host:pid:random``).

    Returns:
        A :class:`WorkerReport`.

    Raises:
        BranchnasError: for a bad storage URL or settings, or an import that fails.
    """
    if not grace_period > heartbeat_interval > 0:
        raise BranchnasError(
            f"grace period ({grace_period}) must exceed the heartbeat interval "
            f"({heartbeat_interval}) > 0; e.g. heartbeat 10 s, grace 60 s"
        )
    if max_jobs is not None and max_jobs < 1:
        raise BranchnasError(f"max_jobs must be >= 1 or unset, got {max_jobs}")
    load_job_kinds(imports)
    wid = worker_id or _worker_id()
    queue = JobQueue(storage_url, study_name)
    report = WorkerReport(worker=wid)
    log.info("worker %s: taking jobs from %s", wid, queue)
    idle_since = time.monotonic()
    last_recover = -float("inf")
    ran = 0
    with _sigterm_as_interrupt():
        while max_jobs is None or ran < max_jobs:
            now = time.monotonic()
            if now - last_recover >= min(heartbeat_interval, grace_period / 4):
                queue.recover(grace_period, max_retries, observer=wid)
                last_recover = now
            trial = queue.claim(wid)
            if trial is not None:
                key = trial.user_attrs[_KEY]
                outcome = queue.execute(trial, wid, heartbeat_interval, max_retries)
                getattr(report, {"completed": "completed", "failed": "failed",
                                 "duplicate": "duplicates", "lost": "lost"}[outcome]).append(key)
                if outcome != "duplicate":
                    ran += 1
                idle_since = time.monotonic()
                continue
            status = queue.status(max_retries)
            if status.waiting or status.running or status.pending:
                idle_since = time.monotonic()  # work in flight elsewhere: stay to take over
            elif status.closed:
                break
            if idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                log.info("worker %s: idle for %g s; exiting", wid, idle_timeout)
                break
            time.sleep(poll_interval)
    log.info("worker %s: %d completed, %d failed, %d duplicates, %d lost", wid,
             len(report.completed), len(report.failed), len(report.duplicates), len(report.lost))
    return report


def wait_for(
    storage_url: str,
    study_name: str,
    keys: Sequence[str],
    *,
    timeout: Optional[float] = None,
    poll_interval: float = POLL_INTERVAL,
    grace_period: float = GRACE_PERIOD,
    max_retries: int = MAX_RETRIES,
    log_every: float = 60.0,
) -> Dict[str, Dict[str, Any]]:
    """Wait until every job in ``keys`` is done; return their results.

    While waiting it also fails jobs whose worker died and re-enqueues them (as workers do).

    Args:
        storage_url: see :func:`parse_storage_url`.
        study_name: the queue study.
        keys: job keys from :func:`enqueue`.
        timeout: give up after this many seconds (None: wait as long as it takes).
        poll_interval: seconds between two looks.
        grace_period: as for :func:`run_worker`.
        max_retries: as for :func:`run_worker`.
        log_every: seconds between two progress lines in the log.

    Returns:
        ``{key: result}``.

    Raises:
        BranchnasError: when a job failed for good (its error is named; enqueue it again
            after fixing the cause), on timeout, or for a key not in the queue.
    """
    queue = JobQueue(storage_url, study_name)
    keys = list(dict.fromkeys(keys))
    start = time.monotonic()
    last_log = start
    observer = f"waiter {_worker_id()}"
    while True:
        queue.recover(grace_period, max_retries, observer=observer)
        results, errors, pending = queue.outcome(keys, max_retries)
        if errors:
            key, error = next(iter(errors.items()))
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise BranchnasError(
                f"job {key} failed{more}: {error}; fix the cause and run again (failed jobs are "
                "enqueued again, finished ones are kept)"
            )
        if not pending:
            return {k: results[k] for k in keys}
        now = time.monotonic()
        if timeout is not None and now - start >= timeout:
            raise BranchnasError(
                f"{len(pending)} of {len(keys)} job(s) not done after {timeout:g} s; start workers "
                f"with `branchnas worker --storage {redact_url(storage_url)} --study {study_name}`"
            )
        if now - last_log >= log_every:
            st = queue.status(max_retries)
            log.info("queue %s: %d/%d jobs done; %d trial(s) running, %d waiting", study_name,
                     len(results), len(keys), st.running, st.waiting)
            last_log = now
        time.sleep(poll_interval)


def run_jobs(
    specs: Sequence[Mapping[str, Any]],
    storage_url: Optional[str] = None,
    study_name: str = DEFAULT_STUDY,
    **wait_kwargs: Any,
) -> List[Dict[str, Any]]:
    """Run jobs in this process (``storage_url`` None) or through the queue, and return their
    results in the order of ``specs``.

    In-process, jobs run one after another (finished ones are read back, not run again);
    through the queue they are enqueued and waited for (:func:`wait_for` keyword arguments
    pass through), and workers run them.
    """
    if storage_url is None:
        if wait_kwargs:
            raise BranchnasError(
                f"{', '.join(wait_kwargs)} only apply to jobs run through a queue; "
                "give a storage URL"
            )
        return [run_job(spec) for spec in specs]
    keys = enqueue(storage_url, study_name, specs)
    results = wait_for(storage_url, study_name, keys, **wait_kwargs)
    return [results[k] for k in keys]


def queue_status(storage_url: str, study_name: str = DEFAULT_STUDY) -> QueueStatus:
    """Counts of the queue's trials and jobs."""
    return JobQueue(storage_url, study_name).status()


def open_queue(storage_url: str, study_name: str = DEFAULT_STUDY) -> None:
    """Mark the queue open: idle workers wait up to their idle timeout for new jobs."""
    JobQueue(storage_url, study_name).set_closed(False)


def close_queue(storage_url: str, study_name: str = DEFAULT_STUDY) -> None:
    """Mark the queue closed: workers exit as soon as no job is waiting or running."""
    JobQueue(storage_url, study_name).set_closed(True)
