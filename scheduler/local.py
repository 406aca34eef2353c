"""The embedded executor: ``mono-quant run MANIFEST`` with no broker and no server.

The batch is written to the catalog (SQLite under the data folder unless configured) exactly
as ``submit`` writes it, then every job runs through the same :func:`run_job` the Celery
worker calls, in a local process pool started with ``spawn`` (no state leaks from this
process into the jobs; CUDA, if any, is initialised only in the children). Transient
failures are retried after their backoff, like the worker does.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from mono_quant.catalog import Catalog
from mono_quant.config import get_settings
from mono_quant.scheduler.service import BatchStatus, SubmitResult, batch_status, submit

__all__ = ["run_local"]


def _node() -> str:
    return f"local-{os.getpid()}@{socket.gethostname()}"


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


def _drain(catalog: Catalog, pending: list[int], waiting: dict[int, float], workers: int,
           bar) -> tuple[list[int], dict[int, float]]:
    """Run jobs until all are done or the pool breaks; returns what is left to run."""
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx) as pool:
        running: dict[Future, int] = {pool.submit(_run_one, j): j for j in pending}
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
                for future in done:
                    job_id = running.pop(future)
                    _, _status, retry_in = future.result()
                    if retry_in is not None:
                        waiting[job_id] = time.monotonic() + retry_in
                    else:
                        bar.update(1)
            except BrokenProcessPool:
                lost = [running.pop(f) for f in list(running)] + [job_id]
                _requeue_crashed(catalog, lost)
                return lost, waiting
    return [], waiting


def run_local(
    manifest: str | Path, *, workers: int = 1, force: bool = False, progress: bool = True,
) -> tuple[SubmitResult, BatchStatus]:
    """Submit ``manifest`` to the local catalog and run its jobs here; returns the result."""
    settings = get_settings()
    catalog = Catalog(settings.catalog_url)
    catalog.upgrade()  # the embedded catalog creates (or upgrades) itself
    result = submit(manifest, catalog, app=None, force=force)
    bar = tqdm(total=len(result.job_ids), desc=f"batch {result.batch_id}", unit="job",
               disable=not progress)
    waiting: dict[int, float] = {}  # job id -> monotonic time to submit it
    pending = list(result.job_ids)
    while pending or waiting:  # one pass per process pool (a crash breaks the pool)
        pending, waiting = _drain(catalog, pending, waiting, workers, bar)
    bar.close()
    return result, batch_status(catalog, result.batch_id)
