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
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from mono_quant.catalog import Catalog
from mono_quant.config import get_settings
from mono_quant.scheduler.service import BatchStatus, SubmitResult, batch_status, submit

__all__ = ["run_local"]


def _run_one(job_id: int) -> tuple[int, str, float | None]:
    from mono_quant.worker.job import run_job

    outcome = run_job(job_id, worker=f"local-{os.getpid()}@{socket.gethostname()}")
    return job_id, outcome.status, outcome.retry_in


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
    waiting: dict[int, float] = {}  # job id -> monotonic time to resubmit
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=get_context("spawn")) as pool:
        running: set[Future] = {pool.submit(_run_one, job_id) for job_id in result.job_ids}
        while running or waiting:
            now = time.monotonic()
            for job_id, at in list(waiting.items()):
                if at <= now:
                    del waiting[job_id]
                    running.add(pool.submit(_run_one, job_id))
            if not running:
                time.sleep(max(0.0, min(waiting.values()) - now))
                continue
            done, running = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                job_id, _status, retry_in = future.result()
                if retry_in is not None:
                    waiting[job_id] = time.monotonic() + retry_in
                else:
                    bar.update(1)
    bar.close()
    return result, batch_status(catalog, result.batch_id)
