"""``run_job``: one job, start to finish — the function every execution backend calls.

The Celery task and the embedded local runner both call it with a job id; nothing else is in
the message. It keeps only what is the service's, and leaves the job itself to
:func:`~mono_quant.pipeline.run.run_pipeline` (the same function ``mono-quant quantize``
calls):

0. **admit** it (:mod:`.admission`): its memory is estimated from the checkpoint headers and
   reserved on this worker's device; a job that fits but not now is left queued and offered
   again later (``OutcomeStatus.WAITING``, no attempt counted), one that fits no device is
   claimed and failed as ``bad_config`` with the numbers;
1. **claim** the job in the catalog (an atomic conditional UPDATE: two deliveries cannot both
   run it; a job that keeps killing its worker is failed as poison here), and rebuild its
   typed :class:`~mono_quant.pipeline.spec.JobSpec` from the stored payload (a payload this
   version cannot read fails the job as ``bad_config``);
2. start a **heartbeat** thread (also how a running job learns it was cancelled: the stage
   callback stops the pipeline between steps);
3. **run the pipeline** into this attempt's own path in the storage root, with layer and batch
   progress in the job row;
4. **record**: insert the artifact row and mark the job succeeded in one transaction; a file
   it replaced (a forced re-run) is deleted after the commit.

Failures are **classified**: bad input / bad config fail at once; transient ones (I/O, database
or broker unavailable, out of memory) go back to ``queued`` and the caller re-sends the job
after an exponential backoff with jitter, until ``max_attempts``. A failed attempt leaves no
file, no temporary and no artifact row; what a killed attempt left is removed by the next.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any

from mono_quant.catalog import Catalog, ErrorKind, JobStatus
from mono_quant.catalog import jobs as job_state
from mono_quant.config import Settings, get_settings
from mono_quant.errors import (
    BadConfigError,
    BadInputError,
    MonoQuantError,
    StorageError,
    TransientError,
)
from mono_quant.pipeline.allowlist import FactoryAllowList
from mono_quant.worker.storage import artifact_key, attempt_output, discard_key

__all__ = ["Outcome", "OutcomeStatus", "backoff", "classify", "run_job"]

log = logging.getLogger("mono_quant.job")


def _event(level: int, event: str, context: dict[str, Any], **fields: Any) -> None:
    """One log line per job event: a JSON object with the job, batch, attempt, node, device."""
    log.log(level, json.dumps({"event": event, **context, **fields}, default=str))


class OutcomeStatus(str, Enum):
    """How ``run_job`` ended, for its caller (the Celery task, the embedded runner)."""

    SUCCEEDED = "succeeded"
    #: failed for good (bad input or config, internal error, attempts exhausted)
    FAILED = "failed"
    #: a transient failure: the job is queued again; re-send it after ``retry_in``
    QUEUED = "queued"
    #: not claimed: the job is held by a live worker (look again after ``retry_in``)
    RUNNING = "running"
    #: not claimed: the job is in another state, or gone
    PENDING = "pending"
    CANCELLED = "cancelled"
    MISSING = "missing"
    #: cancelled or taken over while it ran: nothing recorded
    STOPPED = "stopped"
    #: the catalog did not answer: nothing recorded, try again later
    UNREACHABLE = "unreachable"
    #: not claimed: its memory is not available on this device now (admission); re-send it
    #: after ``retry_in`` (no attempt counted)
    WAITING = "waiting"


@dataclass(frozen=True)
class Outcome:
    """How ``run_job`` ended. ``retry_in``: re-send the job after this many seconds."""

    status: OutcomeStatus
    retry_in: float | None = None
    error: str | None = None


class _Stop(Exception):
    """The job was cancelled or taken over while it ran: stop without recording anything."""


@lru_cache(maxsize=4)
def _catalog(url: str) -> Catalog:
    return Catalog(url)


def backoff(attempt: int, settings: Settings) -> float:
    """Exponential backoff with full jitter in [d/2, d], d = base * 2**(attempt-1) (capped)."""
    delay = min(settings.retry_backoff_max, settings.retry_backoff * 2 ** max(0, attempt - 1))
    return delay * random.uniform(0.5, 1.0)


#: errno values that retrying cannot fix (permissions, read-only or missing storage).
_PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT,
                               errno.ENOTDIR, errno.EISDIR, errno.ELOOP})
def _oom_error() -> type[BaseException]:
    from mono_quant.pipeline.memory import oom_error as oom

    return oom()


def _is_transient_os_error(e: OSError) -> bool:
    """By the errno of the error or of the first OSError with one in its cause chain; our own
    StorageErrors without one (a path escaping the root, a file in the way) are permanent."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno is not None:
            return cause.errno not in _PERMANENT_ERRNOS
        cause = cause.__cause__
    return not isinstance(e, StorageError)


def classify(e: BaseException) -> tuple[ErrorKind, bool]:
    """(error kind, whether retrying can help) for an exception raised by a job."""
    if isinstance(e, BadConfigError):
        return ErrorKind.BAD_CONFIG, False
    if isinstance(e, BadInputError):
        return ErrorKind.BAD_INPUT, False
    if isinstance(e, (TransientError, _oom_error())):
        return ErrorKind.TRANSIENT, True
    if isinstance(e, OSError):  # includes StorageError
        transient = _is_transient_os_error(e)
        return (ErrorKind.TRANSIENT if transient else ErrorKind.INTERNAL), transient
    module = type(e).__module__.split(".")[0]
    if module in ("sqlalchemy", "psycopg", "redis", "kombu"):
        return ErrorKind.TRANSIENT, True
    return ErrorKind.INTERNAL, False


class _Heartbeat(threading.Thread):
    """Refreshes the job's heartbeat and progress; notices cancellation or takeover."""

    def __init__(self, catalog: Catalog, job_id: int, worker: str, interval: float,
                 context: dict[str, Any]) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.catalog, self.job_id, self.worker, self.interval = catalog, job_id, worker, interval
        self.context = context
        self.progress: dict[str, Any] = {}
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def step(self, stage: str, done: int, total: int) -> None:
        """Progress inside a stage (layers, batches): kept in memory, written by the next beat
        (a callback of the quantizer: it must stay cheap)."""
        self.progress = {"stage": stage, "done": done, "total": total}

    def stage(self, name: str, **extra: Any) -> None:
        """Enter a stage: record it, and stop here if the job is no longer ours."""
        self.progress = {"stage": name, **extra}
        _event(logging.INFO, "stage", self.context, stage=name, **extra)
        self._beat()
        if self.lost.is_set():
            raise _Stop("the job was cancelled or taken over by another worker")

    def _beat(self) -> None:
        try:
            with self.catalog.begin() as session:
                ok = job_state.heartbeat(session, self.job_id, self.worker, dict(self.progress))
            if not ok:
                self.lost.set()
        except Exception as e:  # a missed beat is not fatal; a stale one triggers reconcile
            _event(logging.WARNING, "heartbeat_failed", self.context, error=str(e))

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self._beat()

    def stop(self) -> None:
        self._stop_event.set()


@dataclass(frozen=True)
class _Claimed:
    """A job this worker now runs: its typed spec (or why it has none) and its context."""

    payload: dict[str, Any]
    key: str
    attempt: int
    context: dict[str, Any]


def _claim(catalog: Catalog, job_id: int, worker: str, device: str, s: Settings,
           task_id: str | None) -> _Claimed | Outcome:
    """Claim the job; an Outcome when it is not ours to run."""
    try:
        with catalog.begin() as session:
            got = job_state.claim(session, job_id, worker=worker, device=device,
                                  stale_before=job_state.stale_cutoff(s.stale_after),
                                  task_id=task_id)
            job = got.job if got.claimed else None
            claimed = job and (dict(job.spec), job.idempotency_key, job.batch_id)
    except MonoQuantError as e:  # the catalog is unreachable or misconfigured: later
        _event(logging.WARNING, "claim_failed", {"job": job_id, "node": worker}, error=str(e))
        return Outcome(OutcomeStatus.UNREACHABLE, error=str(e))
    context = {"job": job_id, "batch": claimed[2] if claimed else None, "attempt": got.attempt,
               "node": worker, "device": device}
    if not claimed:
        status = OutcomeStatus(got.status.value) if got.status else OutcomeStatus.MISSING
        _event(logging.INFO, "not_claimed", context, status=status.value)
        if got.status == JobStatus.RUNNING:  # held by a live worker: look again once it
            return Outcome(status, retry_in=s.stale_after)  # would count as stale
        return Outcome(status)
    return _Claimed(claimed[0], claimed[1], got.attempt, context)


def run_job(job_id: int, worker: str, *, settings: Settings | None = None,
            task_id: str | None = None) -> Outcome:
    """Run job ``job_id`` as ``worker`` (a unique node name); see the module docstring."""
    from mono_quant.worker.pinning import pick_device

    s = settings or get_settings()
    catalog = _catalog(s.catalog_url)
    device = pick_device()
    gate = _admit(catalog, job_id, s, device, worker)
    if isinstance(gate, Outcome):
        return gate
    claimed = _claim(catalog, job_id, worker, device, s, task_id)
    if isinstance(claimed, Outcome):
        gate.release()
        return claimed
    context, started = claimed.context, time.monotonic()
    _event(logging.INFO, "started", context)
    beat = _Heartbeat(catalog, job_id, worker, s.heartbeat_interval, context)
    beat.start()
    out = None
    pins = contextlib.ExitStack()  # the open (or scratch) folder this attempt writes into
    try:
        from mono_quant.pipeline import JobSpec, run_pipeline

        gate.check()  # a job that fits no device fails here, as bad_config
        # bad_config when this version cannot read it, or it names a factory the operator did
        # not allow (checked before anything is imported, and again when loading)
        factories = FactoryAllowList(s.allowed_factories)
        spec = JobSpec.from_payload(claimed.payload, factories)
        storage_key = artifact_key(claimed.key, spec.format, job_id, claimed.attempt)
        # what killed attempts left is removed here
        out = attempt_output(s.storage_root, storage_key, job_id, claimed.attempt, pins)
        # one progress folder per job, not per attempt: a retry resumes a sequential run (on
        # an object store, under the key's prefix there: a retry on another node resumes)
        work_dir = out.work_dir(job_id)
        result = run_pipeline(spec, out.path, on_stage=beat.stage, on_progress=beat.step,
                              device=device, factories=factories, work_dir=work_dir,
                              activation_offload_bytes=s.activation_offload_bytes)
        if out.store is not None:  # an object store: the upload is a stage of its own
            beat.stage("uploading")
        stored = out.publish(result.sha256, result.size_bytes)  # local: no symlink swapped in
        _record_success(catalog, job_id, worker, s, storage_key, spec, result, beat)
        _event(logging.INFO, "succeeded", context, artifact=storage_key,
               bytes=stored.size, seconds=round(time.monotonic() - started, 3))
        return Outcome(OutcomeStatus.SUCCEEDED)
    except _Stop as e:
        _remove_unrecorded(out)
        _event(logging.INFO, "stopped", context, reason=str(e))
        return Outcome(OutcomeStatus.STOPPED, error=str(e))
    except BaseException as e:  # the task boundary: record every failure
        if isinstance(e, (KeyboardInterrupt, SystemExit)) and _process_stopping():
            raise  # not the job's doing: the worker hands the job back (see release)
        _remove_unrecorded(out)
        return _record_failure(catalog, job_id, worker, e, context, claimed.attempt, started, s)
    finally:
        beat.stop()
        with contextlib.suppress(Exception):
            beat.join(timeout=5)
        pins.close()
        gate.release()


@dataclass
class _Gate:
    """Admission's answer for a job this worker may claim: a reservation to release, or a
    refusal to record once the job is claimed."""

    job_id: int
    ledger: Any = None
    never: str | None = None

    def check(self) -> None:
        if self.never is not None:
            raise BadConfigError(f"admission: {self.never}")

    def release(self) -> None:
        if self.ledger is not None:
            with contextlib.suppress(OSError):
                self.ledger.release(self.job_id)
            self.ledger = None


def _admit(catalog: Catalog, job_id: int, s: Settings, device: str,
           worker: str) -> _Gate | Outcome:
    """Admission before the claim (module docstring, step 0). Anything admission cannot
    judge (a factory model, an unreadable spec or checkpoint, a job not queued) passes: the
    claim and the pipeline report those."""
    from mono_quant.worker.admission import Verdict, device_memory, estimate_memory
    from mono_quant.worker.pinning import pinned_gpu
    from mono_quant.worker.reservations import Ledger

    if not s.admission:
        return _Gate(job_id)
    try:
        spec = _peek_spec(catalog, job_id, s)
        memory = device_memory(device, pinned_gpu()) if spec is not None else None
        estimate = None if memory is None else estimate_memory(
            spec, memory.total, device=device, offload_bytes=s.activation_offload_bytes)
    except (MonoQuantError, OSError) as e:
        _event(logging.INFO, "admission_skipped", {"job": job_id, "node": worker},
               error=str(e))
        return _Gate(job_id)
    if estimate is None:
        return _Gate(job_id)
    ledger = Ledger(s.data_dir / "admission", memory.key)
    decision = ledger.admit(estimate, memory, job_id)
    _event(logging.INFO, "admission", {"job": job_id, "node": worker, "device": device},
           verdict=decision.verdict.value, needed=decision.needed,
           available=decision.available, reason=decision.reason)
    if decision.verdict is Verdict.WAIT:
        return Outcome(OutcomeStatus.WAITING, retry_in=s.admission_retry, error=decision.reason)
    if decision.verdict is Verdict.NEVER:
        return _Gate(job_id, never=decision.reason)
    return _Gate(job_id, ledger=ledger)


def _peek_spec(catalog: Catalog, job_id: int, s: Settings) -> Any | None:
    """The typed spec of a queued job, read without claiming it (None: not queued)."""
    from mono_quant.catalog import Job
    from mono_quant.pipeline import JobSpec

    with catalog.begin() as session:
        job = session.get(Job, job_id)
        payload = dict(job.spec) if job is not None and job.status in (
            JobStatus.QUEUED, JobStatus.PENDING) else None
    if payload is None:
        return None
    return JobSpec.from_payload(payload, FactoryAllowList(s.allowed_factories))


def _record_success(catalog: Catalog, job_id: int, worker: str, s: Settings, storage_key: str,
                    spec: Any, result: Any, beat: _Heartbeat) -> None:
    """The artifact row and the job's success, in one transaction; then the file it replaced
    (a forced re-run of the same key) is deleted. The artifact's model source is the one the
    validated spec ran, never the row's separate label."""
    beat.stage("recording")
    with catalog.begin() as session:
        recorded = job_state.succeed(
            session, job_id, worker, storage_root=s.storage_root, storage_key=storage_key,
            fmt=spec.format, sha256=result.sha256, size_bytes=result.size_bytes,
            info=result.info, model_digest=result.model_digest, model_source=str(spec.model),
        )
    if recorded is None:
        raise _Stop("the job was cancelled or taken over before it could be recorded")
    _, replaced = recorded
    if replaced is not None and replaced != storage_key:  # a forced re-run took the key
        with contextlib.suppress(MonoQuantError, OSError):
            discard_key(s.storage_root, replaced)


def _process_stopping() -> bool:
    """Whether a SystemExit / KeyboardInterrupt means this process is being stopped.

    A Celery pool child is stopped by billiard's SIGTERM handler, which sets a flag before it
    raises SystemExit; both pools ignore SIGINT in their children. Any other SystemExit or
    KeyboardInterrupt came from the job's own code (a factory calling ``sys.exit``): that is
    the job failing, and recording it keeps the job from being left ``running`` forever.
    """
    try:
        from billiard.common import terminate_handler_fired
    except ImportError:  # an older billiard: it cannot tell, so keep Celery's own handling
        return True
    return terminate_handler_fired()


def _remove_unrecorded(out) -> None:
    """This attempt's file is nobody's artifact once the attempt failed (its key is unique)."""
    if out is not None:
        with contextlib.suppress(OSError, MonoQuantError):
            out.discard()


def _record_failure(catalog: Catalog, job_id: int, worker: str, e: BaseException,
                    context: dict[str, Any], attempt: int, started: float,
                    s: Settings) -> Outcome:
    kind, retry = classify(e)
    if type(e).__name__ == "SoftTimeLimitExceeded":
        kind, retry = ErrorKind.INTERNAL, False
        message = f"exceeded the time limit of {s.soft_time_limit} s"
    elif isinstance(e, (SystemExit, KeyboardInterrupt)):
        message = (f"the job's own code raised {type(e).__name__}"
                   f"({', '.join(map(repr, e.args))}) (a factory or data source exiting)")
    else:
        message = f"{type(e).__name__}: {e}" if kind == ErrorKind.INTERNAL else str(e)
    if kind == ErrorKind.INTERNAL:
        log.error("job %s: internal error", job_id, exc_info=e)  # the traceback, for a report
    try:
        with catalog.begin() as session:
            status = job_state.fail(session, job_id, worker, kind, message, retry=retry)
    except MonoQuantError as db_error:  # cannot record it: reconcile will find the job
        _event(logging.ERROR, "failure_not_recorded", context, error=message,
               catalog_error=str(db_error))
        return Outcome(OutcomeStatus.UNREACHABLE, error=message)
    _event(logging.WARNING, "failed", context, kind=kind.value, error=message,
           status=status.value if status else "not ours",
           seconds=round(time.monotonic() - started, 3))
    if status == JobStatus.QUEUED:
        return Outcome(OutcomeStatus.QUEUED, retry_in=backoff(attempt, s), error=message)
    return Outcome(OutcomeStatus(status.value) if status else OutcomeStatus.STOPPED,
                   error=message)
