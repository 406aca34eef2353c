"""The embedded executor: ``mono-quant run MANIFEST`` with no broker and no server.

The batch is written to the catalog (SQLite under the data folder unless configured) exactly
as ``submit`` writes it, then every job runs through the same :func:`run_job` the Celery
worker calls, in a local process pool started with ``spawn`` (no state leaks from this
process into the jobs; CUDA, if any, is initialised only in the children). Transient
failures are retried after their backoff, like the worker does.

The runner outlives its jobs: a job that raises ``SystemExit`` or ``KeyboardInterrupt`` is
recorded as failed by ``run_job``, and one that kills its process (``os._exit``, a segfault)
breaks the pool, loses that attempt and runs again (``poison`` only when it keeps doing so).
With no broker, nothing but ``run`` ever runs a job, so ``run`` also picks up the jobs of
its manifest that earlier runs left behind: ``pending`` ones (``retry``, a run stopped by
Ctrl-C), ``queued`` ones, and ``running`` ones whose runner died.

Ctrl-C stops the batch: the pool's children ignore SIGINT, so the runner decides; no new job
starts, running ones are stopped and handed back (``running → queued``, the attempt does not
count), and the next ``run`` of the manifest picks them up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from mono_quant.catalog import Catalog
from mono_quant.config import get_settings
from mono_quant.scheduler.cliutil import progress_bar
from mono_quant.scheduler.manifest import ScheduledJob
from mono_quant.scheduler.service import BatchStatus, SubmitResult, batch_status, submit

__all__ = ["Interrupted", "LocalRun", "run_jobs", "run_local"]

#: Node names of embedded runs: ``local-<pid of the pool child>@<host>``.
_NODE_PREFIX = "local-"


def _node() -> str:
    return f"{_NODE_PREFIX}{os.getpid()}@{socket.gethostname()}"


@dataclass(frozen=True)
class Interrupted:
    """A run stopped by Ctrl-C: ``stopped`` were running (handed back to the queue),
    ``not_started`` never started; ``run`` picks both up again."""

    stopped: tuple[int, ...]
    not_started: tuple[int, ...]


@dataclass(frozen=True)
class LocalRun:
    """What ``run_local`` did: the new batch, its final status, the earlier jobs of the
    manifest it ran again (``resumed``) and whether Ctrl-C stopped it."""

    submitted: SubmitResult
    status: BatchStatus
    resumed: tuple[int, ...] = ()
    interrupted: Interrupted | None = None


class _Stopped(Exception):
    """Ctrl-C reached the runner; carries the ids of the jobs that were running."""

    def __init__(self, running: list[int]) -> None:
        super().__init__("interrupted")
        self.running = running


def _ignore_sigint(events: str | None = None) -> None:
    """Pool children ignore SIGINT: Ctrl-C reaches the terminal's whole process group, and
    the runner, not each child, decides what happens to the jobs.

    Job events (JSON lines, logger ``mono_quant.job``) go to their own file, or nowhere:
    never onto the terminal between progress output (the summary names what failed).
    """
    import logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log = logging.getLogger("mono_quant.job")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler: logging.Handler = (logging.FileHandler(events, encoding="utf-8") if events
                                else logging.NullHandler())
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)


def _run_one(job_id: int) -> tuple[int, str, float | None]:
    from mono_quant.worker.job import OutcomeStatus, run_job

    outcome = run_job(job_id, worker=_node())
    retry_in = outcome.retry_in
    if outcome.status is OutcomeStatus.UNREACHABLE:  # the catalog was busy or down: soon
        retry_in = 1.0
    return job_id, outcome.status.value, retry_in


def _requeue_crashed(catalog: Catalog, job_ids: list[int]) -> None:
    """The pool broke (a job killed its process): its running jobs lost an attempt."""
    from sqlalchemy import select

    from mono_quant.catalog import Job, JobStatus
    from mono_quant.catalog import jobs as job_state

    with catalog.begin() as session:
        running = session.execute(select(Job.id, Job.worker).where(
            Job.id.in_(job_ids), Job.status == JobStatus.RUNNING)).all()
        for job_id, worker in running:
            job_state.requeue_lost(session, job_id, worker,
                                   "the process running this attempt died")


def _hand_back(catalog: Catalog, job_ids: list[int]) -> list[int]:
    """``running → queued`` for the jobs Ctrl-C stopped (their processes are gone); the
    interrupted attempt does not count. Returns the jobs handed back."""
    from sqlalchemy import select

    from mono_quant.catalog import Job, JobStatus
    from mono_quant.catalog import jobs as job_state

    back: list[int] = []
    with catalog.begin() as session:
        workers = set(session.scalars(select(Job.worker).where(
            Job.id.in_(job_ids), Job.status == JobStatus.RUNNING)))
        for worker in sorted(w for w in workers if w):
            back += job_state.release(session, worker,
                                      "interrupted: Ctrl-C stopped `mono-quant run`")
    return sorted(back)


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's processes now (a running job must not go on writing)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.kill()


def _collect(catalog: Catalog, done, running: dict[Future, int], waiting: dict[int, float],
             bar) -> None:
    """Take the finished futures. When the pool broke, the job stays in ``running`` with the
    others the caller requeues; anything else escaping ``run_job`` loses that attempt only."""
    for future in done:
        job_id = running.pop(future)
        try:
            _, _status, retry_in = future.result()
        except BrokenProcessPool:
            running[future] = job_id  # counted with the rest of the broken pool
            raise
        except (Exception, SystemExit):  # raised in the child, re-raised here: not ours
            _requeue_crashed(catalog, [job_id])
            retry_in = 0.0
        if retry_in is not None:
            waiting[job_id] = time.monotonic() + retry_in
        else:
            bar.update(1)


def _drain(catalog: Catalog, pending: list[int], waiting: dict[int, float], workers: int,
           bar, events: str | None = None) -> tuple[list[int], dict[int, float]]:
    """Run jobs until all are done or the pool breaks; returns what is left to run.

    Raises ``_Stopped`` on Ctrl-C once the pool's processes are gone.
    """
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx,
                             initializer=_ignore_sigint, initargs=(events,)) as pool:
        running: dict[Future, int] = {}
        try:
            for j in pending:
                running[pool.submit(_run_one, j)] = j
            while running or waiting:
                now = time.monotonic()
                for job_id, at in list(waiting.items()):
                    if at <= now:
                        del waiting[job_id]
                        running[pool.submit(_run_one, job_id)] = job_id
                if not running:
                    time.sleep(max(0.0, min(waiting.values()) - now))
                    continue
                done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                try:
                    _collect(catalog, done, running, waiting, bar)
                except BrokenProcessPool:
                    lost = list(running.values())
                    _requeue_crashed(catalog, lost)
                    return lost, waiting
        except KeyboardInterrupt:
            _kill_pool(pool)
            pool.shutdown(wait=True, cancel_futures=True)
            raise _Stopped(list(running.values())) from None
    return [], waiting


def run_jobs(catalog: Catalog, job_ids: list[int], *, workers: int = 1,
             progress: bool = True, desc: str = "jobs",
             events: str | Path | None = None) -> Interrupted | None:
    """Run existing jobs here until each is final; None, or what Ctrl-C interrupted.

    ``events``: a file the jobs' JSON event lines are appended to (default: not written).
    """
    bar = progress_bar(len(job_ids), desc, quiet=not progress)
    events = None if events is None else str(Path(events).resolve())
    waiting: dict[int, float] = {}  # job id -> monotonic time to submit it
    pending = list(job_ids)
    try:
        while pending or waiting:  # one pass per process pool (a crash breaks the pool)
            pending, waiting = _drain(catalog, pending, waiting, workers, bar, events)
    except _Stopped as stop:
        stopped = _hand_back(catalog, stop.running)
        rest = sorted(set(job_ids) - set(stopped) - _final(catalog, job_ids))
        return Interrupted(tuple(stopped), tuple(rest))
    finally:
        bar.close()
    return None


def _final(catalog: Catalog, job_ids: list[int]) -> set[int]:
    from sqlalchemy import select

    from mono_quant.catalog import Job
    from mono_quant.catalog.models import FINAL_STATUSES

    with catalog.begin() as session:
        return set(session.scalars(select(Job.id).where(
            Job.id.in_(job_ids), Job.status.in_(list(FINAL_STATUSES)))))


def run_local(
    manifest: str | Path, *, workers: int = 1, force: bool = False, progress: bool = True,
    only: list[str] | None = None, events: str | Path | None = None,
    check: Callable[[ScheduledJob], None] | None = None,
) -> LocalRun:
    """Submit ``manifest`` to the local catalog and run its jobs here (see the module
    docstring for the jobs of earlier runs it picks up and for Ctrl-C). ``only``, ``check``:
    see :func:`submit`; ``events``: see :func:`run_jobs`."""
    from mono_quant.scheduler.orphans import recover_dead_local_jobs, resumable

    settings = get_settings()
    catalog = Catalog(settings.catalog_url)
    catalog.upgrade()  # the embedded catalog creates (or upgrades) itself
    recover_dead_local_jobs(catalog, _NODE_PREFIX, settings.stale_after)
    result = submit(manifest, catalog, app=None, force=force, only=only, check=check)
    resumed = resumable(catalog, [job for _, job in result.in_flight])
    interrupted = run_jobs(catalog, [*result.job_ids, *resumed], workers=workers,
                           progress=progress, desc=f"batch {result.batch_id}", events=events)
    return LocalRun(result, batch_status(catalog, result.batch_id), tuple(resumed),
                    interrupted)
