"""The Celery task: a few lines around :func:`mono_quant.worker.job.run_job`.

The job module (and torch with it) is imported inside the task, so the worker's main process
never loads torch and never initialises CUDA; only the prefork child does.
"""

from __future__ import annotations

import logging

from mono_quant.worker.app import TASK_NAME, app

__all__ = ["MAX_UNREACHABLE_RETRIES", "run_job_task"]

#: Re-deliveries while the catalog does not answer (backoff capped at RETRY_BACKOFF_MAX);
#: after that the message is dropped: the job is still in the catalog, `reconcile` re-sends it.
MAX_UNREACHABLE_RETRIES = 12

log = logging.getLogger("mono_quant.worker")


@app.task(name=TASK_NAME, bind=True)
def run_job_task(self, job_id: int) -> str:
    from mono_quant.config import get_settings
    from mono_quant.worker.job import OutcomeStatus, backoff, run_job

    outcome = run_job(job_id, worker=self.request.hostname or "unknown", task_id=self.request.id)
    if outcome.status is OutcomeStatus.UNREACHABLE:  # the catalog did not answer: nothing recorded
        if self.request.retries >= MAX_UNREACHABLE_RETRIES:
            log.error("job %s: catalog unreachable %s times; leaving it to reconcile: %s",
                      job_id, self.request.retries, outcome.error)
            return outcome.status.value
        countdown = backoff(self.request.retries + 1, get_settings())
        raise self.retry(countdown=countdown, max_retries=None)
    if outcome.retry_in is not None:  # transient failure, or held by a live worker
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    return outcome.status.value

