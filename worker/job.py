"""``run_job``: one job, start to finish — the function every execution backend calls.

The Celery task and the embedded local runner both call it with a job id; nothing else is in
the message. In order:

1. **claim** the job in the catalog (an atomic conditional UPDATE: two deliveries cannot both
   run it; a job that keeps killing its worker is failed as poison here);
2. start a **heartbeat** thread (also how a running job learns it was cancelled);
3. **load** the model and calibration data, **calibrate, quantize, validate**
   (``quantize_model``, with layer and batch progress in the job row); on CUDA out-of-memory
   retry once with calibration batches halved;
4. **write** the artifact to this attempt's own path in the storage root (a temporary name,
   fsync, rename: ``save_model`` is atomic), **reload** it into the float architecture and
   check it reproduces the quantized outputs bit for bit, then **hash** it;
5. **record**: insert the artifact row and mark the job succeeded in one transaction; a file
   it replaced (a forced re-run) is deleted after the commit.

Failures are classified: bad input / bad config fail at once; transient ones (I/O, database
or broker unavailable, out of memory) go back to ``queued`` and the caller re-sends the job
after an exponential backoff with jitter, until ``max_attempts``. A failed attempt leaves no
file, no temporary and no artifact row; what a killed attempt left is removed by the next.
"""

from __future__ import annotations

import contextlib
import errno
import gc
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
from mono_quant.errors import (
    BadConfigError,
    BadInputError,
    MonoQuantError,
    StorageError,
    TransientError,
)
from mono_quant.worker.storage import artifact_key, remove, remove_earlier_attempts, resolve

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


#: errno values that retrying cannot fix (permissions, read-only or missing storage).
_PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT,
                               errno.ENOTDIR, errno.EISDIR})
#: Model weights larger than this are not hashed for the catalog's model digest.
DIGEST_LIMIT_BYTES = 2 << 30


def _oom_error() -> type[BaseException]:
    import torch

    # torch.OutOfMemoryError is new in 2.5; torch.cuda's alias is older
    return getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


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


def _load(payload: dict[str, Any], beat: _Heartbeat, device: str):
    from mono_quant.io.hashing import state_dict_digest
    from mono_quant.io.sources import parse_calibration_source, parse_model_source

    beat.stage("loading")
    source = parse_model_source(payload["model"])
    model = source.load().to(device)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    digest = state_dict_digest(model) if size <= DIGEST_LIMIT_BYTES else None  # "where cheap"
    batches = None
    if payload.get("calibration"):
        beat.stage("loading calibration data")
        calibration = parse_calibration_source(payload["calibration"])
        batches = calibration.load(source, payload.get("samples"))
    return model, batches, digest


def _evaluation(payload: dict[str, Any], beat: _Heartbeat) -> dict[str, Any]:
    """quantize_model's perplexity arguments for the job's ``evaluation`` text, if any."""
    if not payload.get("evaluation"):
        return {}
    from mono_quant.io.evaluation import parse_evaluation_source
    from mono_quant.io.sources import parse_model_source

    beat.stage("loading evaluation text")
    source = parse_evaluation_source(payload["evaluation"])
    tokens = source.token_ids(parse_model_source(payload["model"]).tokenizer())
    return {"eval_tokens": tokens, "eval_context": source.context}


def _quantize(model, config, batches, beat: _Heartbeat, device: str,
              evaluation: dict[str, Any] | None = None):
    """quantize_model; on out-of-memory, once more with calibration batches halved."""
    import torch

    from mono_quant import quantize_model

    beat.stage("quantizing")
    try:
        return quantize_model(model, config, batches, progress=False, on_progress=beat.step,
                              **(evaluation or {}))
    except _oom_error():
        if not batches:
            raise
    # Outside the except block: its traceback no longer pins the failed attempt's tensors.
    _event(logging.WARNING, "out_of_memory", beat.context,
           action="retrying once with calibration batches halved")
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    beat.stage("quantizing (smaller calibration batches)")
    return quantize_model(model, config, _halve(batches), progress=False, on_progress=beat.step,
                          **(evaluation or {}))


def _claim(catalog: Catalog, job_id: int, worker: str, device: str, s: Settings,
           task_id: str | None):
    with catalog.begin() as session:
        got = job_state.claim(session, job_id, worker=worker, device=device,
                              stale_before=job_state.stale_cutoff(s.stale_after),
                              task_id=task_id)
        if not got.claimed:
            return got, None
        job = got.job
        return got, (dict(job.config), job.idempotency_key, job.batch_id)


def run_job(job_id: int, worker: str, *, settings: Settings | None = None,
            task_id: str | None = None) -> Outcome:
    """Run job ``job_id`` as ``worker`` (a unique node name); see the module docstring."""
    from mono_quant import QuantConfig
    from mono_quant.io import save_model
    from mono_quant.io.hashing import sha256_path, size_path
    from mono_quant.validate.reload import reload_check
    from mono_quant.worker.pinning import pick_device

    s = settings or get_settings()
    catalog = _catalog(s.catalog_url)
    device = pick_device()
    try:
        got, claimed = _claim(catalog, job_id, worker, device, s, task_id)
    except MonoQuantError as e:  # the catalog is unreachable or misconfigured: later
        _event(logging.WARNING, "claim_failed", {"job": job_id, "node": worker}, error=str(e))
        return Outcome("unreachable", error=str(e))
    context = {"job": job_id, "batch": claimed[2] if claimed else None, "attempt": got.attempt,
               "node": worker, "device": device}
    if claimed is None:
        status = got.status.value if got.status else "missing"
        _event(logging.INFO, "not_claimed", context, status=status)
        if got.status == JobStatus.RUNNING:  # held by a live worker: look again once it
            return Outcome(status, retry_in=s.stale_after)  # would count as stale
        return Outcome(status)
    payload, key, _ = claimed
    attempt = got.attempt

    started = time.monotonic()
    _event(logging.INFO, "started", context)
    beat = _Heartbeat(catalog, job_id, worker, s.heartbeat_interval, context)
    beat.start()
    path = None
    try:
        fmt = payload.get("format", "safetensors")
        storage_key = artifact_key(key, fmt, job_id, attempt)
        path = resolve(s.storage_root, storage_key)
        remove_earlier_attempts(path, job_id, attempt)  # what killed attempts left behind
        model, batches, digest = _load(payload, beat, device)
        qmodel, info = _quantize(model, QuantConfig.from_dict(payload["quant"]), batches, beat,
                                 device, _evaluation(payload, beat))
        beat.stage("writing")
        save_model(qmodel, path, info=info, format=fmt)
        beat.stage("reloading")
        info.metrics["reload_check"] = reload_check(path, model, qmodel,
                                                    batches[0] if batches else None)
        del model, qmodel
        sha, size = sha256_path(path), size_path(path)
        beat.stage("recording")
        with catalog.begin() as session:
            recorded = job_state.succeed(
                session, job_id, worker, storage_root=s.storage_root, storage_key=storage_key,
                fmt=fmt, sha256=sha, size_bytes=size, info=info, model_digest=digest,
            )
        if recorded is None:
            raise _Stop("the job was cancelled or taken over before it could be recorded")
        _, replaced = recorded
        if replaced is not None and replaced != storage_key:  # a forced re-run took the key
            with contextlib.suppress(MonoQuantError, OSError):
                remove(resolve(s.storage_root, replaced))
        _event(logging.INFO, "succeeded", context, artifact=storage_key, bytes=size,
               seconds=round(time.monotonic() - started, 3))
        return Outcome("succeeded")
    except _Stop as e:
        _remove_unrecorded(path)
        _event(logging.INFO, "stopped", context, reason=str(e))
        return Outcome("stopped", error=str(e))
    except BaseException as e:  # the task boundary: record every failure
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        _remove_unrecorded(path)
        return _record_failure(catalog, job_id, worker, e, context, attempt, started, s)
    finally:
        beat.stop()
        with contextlib.suppress(Exception):
            beat.join(timeout=5)


def _remove_unrecorded(path) -> None:
    """This attempt's file is nobody's artifact once the attempt failed (its path is unique)."""
    if path is not None:
        with contextlib.suppress(OSError):
            remove(path)


def _record_failure(catalog: Catalog, job_id: int, worker: str, e: BaseException,
                    context: dict[str, Any], attempt: int, started: float,
                    s: Settings) -> Outcome:
    kind, retry = classify(e)
    if type(e).__name__ == "SoftTimeLimitExceeded":
        kind, retry = ErrorKind.INTERNAL, False
        message = f"exceeded the time limit of {s.soft_time_limit} s"
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
        return Outcome("unreachable", error=message)
    _event(logging.WARNING, "failed", context, kind=kind.value, error=message,
           status=status.value if status else "not ours",
           seconds=round(time.monotonic() - started, 3))
    if status == JobStatus.QUEUED:
        return Outcome("queued", retry_in=backoff(attempt, s), error=message)
    return Outcome(status.value if status else "stopped", error=message)
