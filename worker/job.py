"""``run_job``: one job, start to finish — the function every execution backend calls.

The Celery task and the embedded local runner both call it with a job id; nothing else is in
the message. In order:

1. **claim** the job in the catalog (an atomic conditional UPDATE: two deliveries cannot both
   run it; a job that keeps killing its worker is failed as poison here);
2. start a **heartbeat** thread (also how a running job learns it was cancelled);
3. **load** the model and calibration data, **calibrate, quantize, validate**
   (``quantize_model``); on CUDA out-of-memory retry once with calibration batches halved;
4. **write** the artifact to a temporary name in the storage root, fsync, rename into place
   (``save_model`` is atomic), then **hash** it;
5. **record**: insert the artifact row and mark the job succeeded in one transaction.

Failures are classified: bad input / bad config fail at once; transient ones (I/O, database
or broker unavailable, out of memory) go back to ``queued`` and the caller re-sends the job
after an exponential backoff with jitter, until ``max_attempts``. A failed attempt leaves no
temporary file and no artifact row.
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
from functools import lru_cache
from typing import Any

from mono_quant.catalog import Catalog, ErrorKind, JobStatus
from mono_quant.catalog import jobs as job_state
from mono_quant.config import Settings, get_settings
from mono_quant.errors import BadConfigError, BadInputError, MonoQuantError, TransientError
from mono_quant.worker.storage import artifact_key, clean_temporaries, resolve

__all__ = ["Outcome", "backoff", "classify", "run_job"]

log = logging.getLogger("mono_quant.job")


def _event(level: int, event: str, context: dict[str, Any], **fields: Any) -> None:
    """One log line per job event: a JSON object with the job, batch, attempt, node, device."""
    log.log(level, json.dumps({"event": event, **context, **fields}, default=str))


@dataclass(frozen=True)
class Outcome:
    """How ``run_job`` ended. ``retry_in``: re-send the job after this many seconds."""

    status: str
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


def _is_transient_os_error(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, OSError):
            return e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT)
        e = e.__cause__
    return True


def classify(e: BaseException) -> tuple[ErrorKind, bool]:
    """(error kind, whether retrying can help) for an exception raised by a job."""
    import torch

    if isinstance(e, BadConfigError):
        return ErrorKind.BAD_CONFIG, False
    if isinstance(e, BadInputError):
        return ErrorKind.BAD_INPUT, False
    if isinstance(e, (TransientError, torch.OutOfMemoryError)):
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


def _halve(batches: list[Any]) -> list[Any]:
    """The same samples in batches half as large (for an out-of-memory retry)."""
    import torch

    def split(item: Any) -> list[Any]:
        if isinstance(item, torch.Tensor):
            return list(item.chunk(2)) if item.ndim and item.shape[0] > 1 else [item]
        if isinstance(item, dict):
            parts = {k: split(v) for k, v in item.items()}
            n = min(len(p) for p in parts.values()) if parts else 1
            return [{k: p[i] if len(p) == n else p[0] for k, p in parts.items()} for i in range(n)]
        if isinstance(item, (list, tuple)):
            parts = [split(v) for v in item]
            n = min(len(p) for p in parts) if parts else 1
            return [type(item)(p[i] if len(p) == n else p[0] for p in parts) for i in range(n)]
        return [item]

    return [half for item in batches for half in split(item)]


def _quantize(job_payload: dict[str, Any], beat: _Heartbeat, device: str):
    import torch

    from mono_quant import QuantConfig, quantize_model
    from mono_quant.io.hashing import state_dict_digest
    from mono_quant.io.sources import parse_calibration_source, parse_model_source

    beat.stage("loading")
    source = parse_model_source(job_payload["model"])
    config = QuantConfig.from_dict(job_payload["quant"])
    model = source.load().to(device)
    digest = state_dict_digest(model)
    batches = None
    if job_payload.get("calibration"):
        beat.stage("loading calibration data")
        calibration = parse_calibration_source(job_payload["calibration"])
        batches = calibration.load(source, job_payload.get("samples"))
    beat.stage("quantizing")
    try:
        qmodel, info = quantize_model(model, config, batches, progress=False)
    except torch.OutOfMemoryError:
        if not batches:
            raise
        _event(logging.WARNING, "out_of_memory", beat.context,
               action="retrying once with calibration batches halved")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        beat.stage("quantizing (smaller calibration batches)")
        qmodel, info = quantize_model(model, config, _halve(batches), progress=False)
    return qmodel, info, digest


def run_job(job_id: int, worker: str, *, settings: Settings | None = None,
            task_id: str | None = None) -> Outcome:
    """Run job ``job_id`` as ``worker`` (a unique node name); see the module docstring."""
    from mono_quant.io import save_model
    from mono_quant.io.hashing import sha256_path, size_path
    from mono_quant.worker.pinning import pick_device

    s = settings or get_settings()
    catalog = _catalog(s.catalog_url)
    device = pick_device()
    try:
        with catalog.begin() as session:
            got = job_state.claim(session, job_id, worker=worker, device=device,
                                  stale_before=job_state.stale_cutoff(s.stale_after),
                                  task_id=task_id)
            payload = dict(got.job.config) if got.claimed else None
            key = got.job.idempotency_key if got.claimed else None
            batch = got.job.batch_id if got.claimed else None
            attempt = got.attempt
    except MonoQuantError as e:  # the catalog is unreachable: try again later
        _event(logging.WARNING, "claim_failed", {"job": job_id, "node": worker}, error=str(e))
        return Outcome("unknown", retry_in=backoff(1, s), error=str(e))
    context = {"job": job_id, "batch": batch, "attempt": attempt, "node": worker,
               "device": device}
    if not got.claimed:
        status = got.status.value if got.status else "missing"
        _event(logging.INFO, "not_claimed", context, status=status)
        if got.status == JobStatus.RUNNING:  # held by a live worker: look again once it
            return Outcome(status, retry_in=s.stale_after)  # would count as stale
        return Outcome(status)

    started = time.monotonic()
    _event(logging.INFO, "started", context)
    beat = _Heartbeat(catalog, job_id, worker, s.heartbeat_interval, context)
    beat.start()
    try:
        qmodel, info, digest = _quantize(payload, beat, device)
        beat.stage("writing")
        fmt = payload.get("format", "safetensors")
        storage_key = artifact_key(key, fmt)
        path = resolve(s.storage_root, storage_key)
        clean_temporaries(path)  # left by an attempt that was killed mid-write
        save_model(qmodel, path, info=info, format=fmt)
        sha, size = sha256_path(path), size_path(path)
        beat.stage("recording")
        with catalog.begin() as session:
            artifact = job_state.succeed(
                session, job_id, worker, storage_root=s.storage_root, storage_key=storage_key,
                fmt=fmt, sha256=sha, size_bytes=size, info=info, model_digest=digest,
            )
        if artifact is None:
            raise _Stop("the job was cancelled or taken over before it could be recorded")
        _event(logging.INFO, "succeeded", context, artifact=storage_key, bytes=size,
               seconds=round(time.monotonic() - started, 3))
        return Outcome("succeeded")
    except _Stop as e:
        _event(logging.INFO, "stopped", context, reason=str(e))
        return Outcome("stopped", error=str(e))
    except BaseException as e:  # the task boundary: record every failure
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        kind, retry = classify(e)
        if type(e).__name__ == "SoftTimeLimitExceeded":
            kind, retry = ErrorKind.INTERNAL, False
            message = f"exceeded the time limit of {s.soft_time_limit} s"
        else:
            message = f"{type(e).__name__}: {e}" if kind == ErrorKind.INTERNAL else str(e)
        if kind == ErrorKind.INTERNAL:
            log.exception("job %s: internal error", job_id)  # the traceback, for a bug report
        try:
            with catalog.begin() as session:
                status = job_state.fail(session, job_id, worker, kind, message, retry=retry)
        except MonoQuantError as db_error:  # cannot record it: reconcile will find the job
            _event(logging.ERROR, "failure_not_recorded", context, error=message,
                   catalog_error=str(db_error))
            return Outcome("unknown", error=message)
        _event(logging.WARNING, "failed", context, kind=kind.value, error=message,
               status=status.value if status else "not ours",
               seconds=round(time.monotonic() - started, 3))
        if status == JobStatus.QUEUED:
            return Outcome("queued", retry_in=backoff(attempt, s), error=message)
        return Outcome(status.value if status else "stopped", error=message)
    finally:
        beat.stop()
        with contextlib.suppress(Exception):
            beat.join(timeout=5)
