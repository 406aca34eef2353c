"""What the CLI's job commands do: submit, wait, status, retry, cancel, reconcile.

Each function takes a :class:`~mono_quant.catalog.Catalog` (and a Celery app where it
publishes), so tests and the embedded runner call them directly. The catalog is the source of
truth; Redis only carries job ids.
"""

from __future__ import annotations

import gc
import getpass
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from mono_quant.catalog import Artifact, Catalog, Job, JobStatus, job_status_counts
from mono_quant.catalog import jobs as job_state
from mono_quant.catalog.batches import (
    KeyList,
    SerializedRows,
    add_jobs,
    create_batch,
    existing_artifacts,
    jobs_in_flight,
)
from mono_quant.catalog.bulk import SETTLE_MIN_ROWS, settle
from mono_quant.catalog.models import FINAL_STATUSES
from mono_quant.catalog.types import utcnow
from mono_quant.config import Settings, get_settings
from mono_quant.errors import BadInputError, TransientError
from mono_quant.pipeline.allowlist import FactoryAllowList
from mono_quant.pipeline.content_cache import CACHE_FILE, ContentHashCache
from mono_quant.scheduler.broker import broker_job_ids
from mono_quant.scheduler.manifest import ScheduledJob, stream_manifest
from mono_quant.scheduler.resolve import latest_batch, resolve_batch

__all__ = [
    "BatchStatus",
    "SubmitResult",
    "batch_status",
    "cancel",
    "hash_cache",
    "reconcile",
    "retry",
    "select_jobs",
    "submit",
    "wait_for_batch",
]


@dataclass
class SubmitResult:
    batch_id: int
    job_ids: list[int]
    queues: list[str]
    skipped: list[tuple[str, int]] = field(default_factory=list)  # (job name, artifact id)
    duplicates: list[str] = field(default_factory=list)  # same key twice in one manifest
    in_flight: list[tuple[str, int]] = field(default_factory=list)  # (job name, live job id)
    published: int = 0


def hash_cache(settings: Settings) -> ContentHashCache:
    """The content hashes of ``hf:`` weight files, kept next to the catalog (in the data
    folder): a submit re-reads only the weight files whose ``stat`` changed."""
    return ContentHashCache(settings.data_dir / CACHE_FILE)


def _rows(jobs: Iterable[ScheduledJob]) -> SerializedRows:
    """The catalog rows of ``jobs``, their JSON columns as the specs' cached texts."""
    return SerializedRows([(j.name, j.model_source, texts[2], texts[1], texts[0], j.queue,
                            j.max_attempts) for j in jobs for texts in (j.spec.texts,)])


_gc_lock = threading.Lock()
_gc_pauses = [0, False]  # submits running with the collector paused; whether it was on


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off during a submit. Its specs, rows and messages are
    freed by reference counting; what the collector would do is walk the heap again and
    again while tens of thousands of them are alive (a third of a 10,000-job submit's CPU
    time, measured). Counted, so overlapping submits in threads turn it back on once, and
    only if it was on."""
    with _gc_lock:
        if _gc_pauses[0] == 0:
            _gc_pauses[1] = gc.isenabled()
            gc.disable()
        _gc_pauses[0] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses[0] -= 1
            if _gc_pauses[0] == 0 and _gc_pauses[1]:
                gc.enable()


#: Jobs per chunk of a submit: expanded, checked against the catalog, written, then dropped,
#: so a 100,000-job manifest never holds all its specs at once.
SUBMIT_CHUNK = 10_000


def submit(
    manifest_path: str | Path,
    catalog: Catalog,
    *,
    app: Any | None = None,
    force: bool = False,
    requested_by: str | None = None,
    settings: Settings | None = None,
    only: Sequence[str] | None = None,
    check: Callable[[ScheduledJob], None] | None = None,
) -> SubmitResult:
    """Validate the manifest, write the batch and its jobs in one transaction, then publish.

    Jobs whose artifact already exists (same idempotency key) are skipped unless ``force``;
    jobs whose key another job is still working on (pending, queued, running) are skipped
    always: two jobs racing for one artifact would waste a GPU.
    The manifest's jobs stream through expansion, these checks and the insert in chunks of
    ``SUBMIT_CHUNK``, all in one transaction: an invalid job anywhere rolls everything back.
    With ``app=None`` nothing is published (the embedded runner runs the jobs itself). When
    publishing fails the unsent jobs stay ``pending`` and ``reconcile`` publishes them
    later; the TransientError says so. ``only`` keeps just the jobs of the manifest with
    these names (``--job NAME``; with ``force`` it redoes one job, not the whole manifest).
    ``check`` is called with each job as it streams by, before it is written (the CLI's
    ``--strict`` serveability check): what it raises rolls the whole batch back.

    On SQLite the submit returns once the batch is committed and published; copying the
    write-ahead log into the database file (the checkpoint its commit would otherwise run
    itself) goes on in a thread of the catalog (:meth:`Catalog.checkpoint_later`), which
    the process lets finish before it exits.
    """
    with _gc_paused():
        return _submit(Path(manifest_path), catalog, app=app, force=force,
                       requested_by=requested_by, settings=settings or get_settings(),
                       only=only, check=check)


def _submit(path: Path, catalog: Catalog, *, app: Any | None, force: bool,
            requested_by: str | None, settings: Settings, only: Sequence[str] | None,
            check: Callable[[ScheduledJob], None] | None) -> SubmitResult:
    s = settings
    manifest, specs, digest = stream_manifest(
        path, default_attempts=s.max_attempts, max_jobs=s.max_jobs_per_batch,
        factories=FactoryAllowList(s.allowed_factories), hash_cache=hash_cache(s),
    )
    if only:
        specs = select_jobs(specs, only, path)
    if check is not None:
        specs = _checked(specs, check)
    result = SubmitResult(0, [], [])
    seen: set[str] = set()
    with catalog.begin_bulk() as session:  # SQLite's checkpoint left for after the publish
        batch, _ = create_batch(
            session, [], name=manifest.name or path.stem, manifest_digest=digest,
            requested_by=requested_by or _user(), labels=dict(manifest.labels),
        )
        result.batch_id = batch.id
        for chunk in _chunked(specs, SUBMIT_CHUNK):
            todo = _screen(session, chunk, seen, force, result)
            result.job_ids += add_jobs(session, batch.id, _rows(todo), queued=app is not None)
            result.queues += [sp.queue for sp in todo]
    try:
        if app is not None and result.job_ids:
            result.published = publish_new(catalog, app, list(zip(
                result.job_ids, result.queues, strict=True)))
    finally:  # SQLite's log copied into the database file on a thread of its own (after
        # the publish, which it would slow down: both want a core besides Redis)
        catalog.checkpoint_later()
    if len(result.job_ids) >= SETTLE_MIN_ROWS:
        settle(catalog.engine, Job.__table__)  # status counts read the index alone
    return result


def select_jobs(specs: Iterable[ScheduledJob], names: Sequence[str], path: Path
                ) -> Iterator[ScheduledJob]:
    """The specs named ``names``, streamed; once the manifest is read, BadInputError naming
    any name it does not have (raised inside submit's transaction: nothing is written)."""
    wanted, found, some = set(names), set(), []
    for spec in specs:
        if len(some) < 20:
            some.append(spec.name)
        if spec.name in wanted:
            found.add(spec.name)
            yield spec
    missing = [n for n in names if n not in found]
    if missing:
        raise BadInputError(f"{path}: no job named {', '.join(map(repr, missing))}; its jobs "
                            f"are: {', '.join(some)}{' ...' if len(some) == 20 else ''}")


def _checked(specs: Iterable[ScheduledJob], check: Callable[[ScheduledJob], None]
             ) -> Iterator[ScheduledJob]:
    for spec in specs:
        check(spec)
        yield spec


def _chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _screen(session: Any, chunk: list[ScheduledJob], seen: set[str], force: bool,
            result: SubmitResult) -> list[ScheduledJob]:
    """The specs of ``chunk`` to write; records duplicates and skipped ones in ``result``."""
    unique = []  # (key, spec): the key read once (a property of the spec)
    for spec in chunk:
        key = spec.idempotency_key
        (result.duplicates.append(spec.name) if key in seen else unique.append((key, spec)))
        seen.add(key)
    keys = KeyList(key for key, _ in unique)  # sorted and bound once for both lookups
    existing = {} if force else existing_artifacts(session, keys)
    live = jobs_in_flight(session, keys)
    if not existing and not live:  # the common case: every key is new
        return [sp for _, sp in unique]
    result.skipped += [(sp.name, existing[key]) for key, sp in unique if key in existing]
    result.in_flight += [(sp.name, live[key]) for key, sp in unique
                         if key in live and key not in existing]
    return [sp for key, sp in unique if key not in existing and key not in live]


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return None


def publish(catalog: Catalog, app: Any, jobs: list[tuple[int, str]]) -> int:
    """Publish job messages; each chunk's jobs are marked ``queued`` once the broker has them.

    Returns how many were published. On a broker failure the jobs not yet sent stay
    ``pending`` (and ``reconcile`` publishes them); those already sent are ``queued``, so
    nothing is lost and nothing is sent twice.
    """
    from mono_quant.scheduler.publish import publish_jobs

    def queued(ids: list[int]) -> None:
        with catalog.begin() as session:
            job_state.mark_queued(session, ids)

    try:
        return publish_jobs(app, jobs, on_sent=queued)
    except TransientError as e:
        raise TransientError(
            f"{e}; the job(s) not sent stay pending in the catalog and `mono-quant "
            "reconcile` will publish them once the broker is back"
        ) from e


def publish_new(catalog: Catalog, app: Any, jobs: list[tuple[int, str]]) -> int:
    """Publish the messages of jobs a submit wrote ``queued``; returns how many were sent.

    On a broker failure the jobs not yet sent go back to ``pending`` (one conditional
    UPDATE per run of ids) and ``reconcile`` publishes them; those sent stay ``queued``, so
    nothing is lost and nothing is sent twice.
    """
    from mono_quant.scheduler.publish import publish_jobs

    sent: list[int] = []
    try:
        return publish_jobs(app, jobs, on_sent=sent.extend)
    except Exception as e:
        done = set(sent)
        with catalog.begin() as session:
            job_state.unsend(session, [job_id for job_id, _ in jobs if job_id not in done])
        if not isinstance(e, TransientError):
            raise
        raise TransientError(
            f"{e}; the job(s) not sent stay pending in the catalog and `mono-quant "
            "reconcile` will publish them once the broker is back"
        ) from e


@dataclass
class BatchStatus:
    batch_id: int
    name: str
    counts: dict[str, int]
    failures: list[dict[str, Any]]
    artifacts: int
    total: int
    running: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return sum(self.counts.get(s.value, 0) for s in FINAL_STATUSES) == self.total

    @property
    def failed(self) -> int:
        return self.counts.get(JobStatus.FAILED.value, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch_id, "name": self.name, "total": self.total,
                "counts": self.counts, "artifacts": self.artifacts, "failures": self.failures,
                "running": self.running, "done": self.done}


def _model_of(payload: Any) -> str:
    """The model source a job's payload names, as one string: what ``status`` shows is what
    the worker runs, never the row's separate ``model_source`` label. Nothing is imported."""
    from mono_quant.errors import MonoQuantError
    from mono_quant.pipeline import parse_model_source

    try:
        return str(parse_model_source(payload["model"]))
    except (MonoQuantError, KeyError, TypeError):
        return "(invalid job payload)"


def latest_batch_id(catalog: Catalog) -> int:
    """The newest batch that has jobs (see :func:`~mono_quant.scheduler.resolve.latest_batch`)."""
    with catalog.begin() as session:
        return latest_batch(session).id


#: Failed and running jobs listed in full by ``status`` (the first ones by id; the counts
#: cover all of them, ``list_jobs`` pages through the rest).
SHOWN = 100


def _heartbeat(job: Job, stale_after: float) -> dict[str, Any]:
    """A running job's heartbeat time, its age in seconds, and whether it is stale (older
    than MONO_QUANT_STALE_AFTER: its worker is presumed dead and the job is re-run)."""
    if job.heartbeat_at is None:
        return {"heartbeat_at": None, "heartbeat_age_s": None, "stale": True}
    age = max(0.0, (utcnow() - job.heartbeat_at).total_seconds())
    return {"heartbeat_at": job.heartbeat_at.isoformat(), "heartbeat_age_s": round(age, 1),
            "stale": age > stale_after}


def batch_status(catalog: Catalog, batch_id: int | str | None = None, *,
                 settings: Settings | None = None) -> BatchStatus:
    """Counts per status and the first failed and running jobs (with their heartbeat age):
    indexed queries only (``ix_jobs_batch_id_status_id``), so a 100,000-job batch answers in
    milliseconds. ``batch_id``: an id or a name (default: the newest batch with jobs);
    BadInputError if it does not exist."""
    stale_after = (settings or get_settings()).stale_after
    with catalog.begin() as session:
        batch = latest_batch(session) if batch_id is None else resolve_batch(session, batch_id)
        batch_id = batch.id
        counts = {s.value: n for s, n in job_status_counts(session, batch_id).items() if n}
        failures = [
            {"job": j.id, "name": j.name, "kind": j.error_kind.value if j.error_kind else None,
             "error": j.last_error, "attempts": j.attempts, "model": _model_of(j.spec)}
            for j in session.scalars(
                select(Job).where(Job.batch_id == batch_id, Job.status == JobStatus.FAILED)
                .order_by(Job.id).limit(SHOWN)
            )
        ]
        artifacts = session.scalar(
            select(func.count()).select_from(Artifact).join(Job).where(Job.batch_id == batch_id)
        ) or 0
        running = [
            {"job": j.id, "name": j.name, "worker": j.worker, "device": j.device,
             "attempt": j.attempts, "progress": j.progress, "model": _model_of(j.spec),
             **_heartbeat(j, stale_after)}
            for j in session.scalars(
                select(Job).where(Job.batch_id == batch_id, Job.status == JobStatus.RUNNING)
                .order_by(Job.id).limit(SHOWN)
            )
        ]
        return BatchStatus(batch_id, batch.name, counts, failures, artifacts,
                           sum(counts.values()), running)


def wait_for_batch(
    catalog: Catalog, batch_id: int, *, poll: float = 0.5, timeout: float | None = None,
    on_update: Callable[[BatchStatus], None] | None = None,
) -> BatchStatus:
    """Poll until every job of the batch is final (or ``timeout`` seconds passed)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = batch_status(catalog, batch_id)
        if on_update:
            on_update(status)
        if status.done or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(poll)


def retry(catalog: Catalog, app: Any | None, *, batch_id: int | None = None,
          job_ids: list[int] | None = None, all_failed: bool = False,
          include_bad_input: bool = False) -> list[int]:
    """Re-enqueue failed jobs (a fresh attempt budget); returns their ids.

    Jobs that failed with bad input or a bad config stay failed unless ``include_bad_input``:
    the same input fails the same way.
    """
    from mono_quant.scheduler.explain import PERMANENT_KINDS

    with catalog.begin() as session:
        todo = job_state.retry_jobs(session, batch_id=batch_id, job_ids=job_ids,
                                    all_failed=all_failed,
                                    skip_kinds=() if include_bad_input else PERMANENT_KINDS)
    if app is not None and todo:
        publish(catalog, app, todo)
    return [job_id for job_id, _ in todo]


def cancel(catalog: Catalog, app: Any | None, *, batch_id: int | None = None,
           job_ids: list[int] | None = None) -> list[int]:
    """Cancel non-final jobs; running ones are also revoked (their process is terminated)."""
    with catalog.begin() as session:
        ids, running = job_state.cancel_jobs(session, batch_id=batch_id, job_ids=job_ids)
    if app is not None and running:
        app.control.revoke(running, terminate=True, signal="SIGTERM")
    return ids


def reconcile(catalog: Catalog, app: Any, *, settings: Settings | None = None) -> list[int]:
    """Re-publish jobs whose messages were lost; returns their ids (see jobs.reconcile)."""
    s = settings or get_settings()
    with catalog.begin() as session:
        queues = list(session.scalars(  # (status, queue) index: no scan of old jobs
            select(Job.queue).where(Job.status == JobStatus.QUEUED).distinct()))
    on_broker = broker_job_ids(app, queues)
    cutoff = job_state.stale_cutoff(s.stale_after)
    with catalog.begin() as session:
        todo = job_state.reconcile_jobs(
            session, stale_before=cutoff, pending_before=cutoff, queued_before=cutoff,
            on_broker=on_broker,
        )
    if todo:
        from mono_quant.scheduler.publish import publish_jobs

        publish_jobs(app, todo)
    return [job_id for job_id, _ in todo]
