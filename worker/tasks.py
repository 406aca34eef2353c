"""The Celery task: a few lines around :func:`mono_quant.worker.job.run_job`.

The job module (and torch with it) is imported inside the task, so the worker's main process
never loads torch and never initialises CUDA; only the prefork child does.
"""

from __future__ import annotations

from mono_quant.worker.app import TASK_NAME, app

__all__ = ["run_job_task"]


@app.task(name=TASK_NAME, bind=True)
def run_job_task(self, job_id: int) -> str:
    from mono_quant.worker.job import run_job

    outcome = run_job(job_id, worker=self.request.hostname or "unknown", task_id=self.request.id)
    if outcome.retry_in is not None:  # transient failure: the job is queued for a new attempt
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    return outcome.status

