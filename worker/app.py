"""The Celery application: configured once from settings.

Delivery guarantees come from the combination, not from any single option:

* ``task_acks_late`` + ``worker_prefetch_multiplier=1``: a message is acknowledged only after
  its job ran, and a worker holds at most one unacknowledged message.
* ``task_reject_on_worker_lost``: if the process running a job dies (OOM killer, segfault,
  SIGKILL), the message goes back to the queue. The catalog's attempt counter bounds this: a job
  that kills its worker ``max_attempts`` times is failed with reason ``poison``.
* Redis ``visibility_timeout`` above the hard time limit: Redis redelivers a message only when
  the job that took it can no longer be running.
* ``task_ignore_result``: job state lives in the catalog, not in a result backend.
* ``worker_concurrency=1``: one job per worker, one worker per GPU.

A plain ``redis://`` broker goes through ``mono_quant.worker.transport``: kombu's transport,
with one reused Redis client per channel instead of a new one per event and ack.

Task events (``MONO_QUANT_TASK_EVENTS``, default off, as Celery's own default) are for Flower
(which turns them on at run time by itself) and celery-exporter (which needs ``on``) only; no
guarantee above depends on them. Off, the three events per job (received, started,
succeeded) leave the path between one job and the next: measured, 6.1 -> 1.6 ms of queue
overhead per job (docs/performance.md, issue 16).
"""

from __future__ import annotations

from celery import Celery

from mono_quant.config import Settings, get_settings
from mono_quant.worker.transport import transport_for

__all__ = ["TASK_NAME", "app", "create_app"]

TASK_NAME = "mono_quant.run_job"


def create_app(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    app = Celery("mono_quant", broker=s.broker_url, include=["mono_quant.worker.tasks"])
    transport = {"visibility_timeout": s.visibility_timeout}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="prefork",
        task_ignore_result=True,
        task_soft_time_limit=s.soft_time_limit,
        task_time_limit=s.time_limit,
        # kombu's Redis transport with one reused client per channel (worker/transport.py)
        broker_transport=transport_for(s.broker_url),
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        task_default_queue="cpu",
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        # Flower and celery-exporter see tasks; off saves ~1 ms of main-process CPU per job
        worker_send_task_events=s.task_events,
        # No "task-sent" event per message: it would double the cost of submitting a batch
        # (the catalog already records when each job was queued).
        task_send_sent_event=False,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # On a cold shutdown (SIGQUIT; SIGTERM too with REMAP_SIGTERM=SIGQUIT, as deploy/ sets)
        # the running job gets this long to finish before it is cancelled and its message is
        # restored to the queue. Stop grace periods in deploy/ are longer than this.
        worker_soft_shutdown_timeout=s.soft_shutdown_timeout,
    )
    return app


app = create_app()
