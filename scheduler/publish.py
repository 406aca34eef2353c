"""Publishing job messages to Celery: ids only, one message per job, pipelined.

Messages are built by Celery's ``send_task`` (by name: the scheduler never imports the job
code); only the transport's
writes are batched: for the Redis transport every ``LPUSH`` goes into one pipeline that is
sent in a single round trip per ``chunk`` messages. Other transports publish one by one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

from celery import Celery

from mono_quant.errors import TransientError
from mono_quant.worker.app import TASK_NAME

__all__ = ["publish_jobs"]


@contextlib.contextmanager
def _pipelined(channel):
    """Route a kombu Redis channel's writes through one pipeline until the block ends."""
    client = getattr(channel, "client", None)
    if client is None or not hasattr(channel, "conn_or_acquire"):
        yield None  # not the Redis transport: publish one by one
        return
    pipe = client.pipeline(transaction=False)
    original = channel.conn_or_acquire
    channel.conn_or_acquire = lambda client=None: contextlib.nullcontext(pipe)
    try:
        yield pipe
    finally:
        channel.conn_or_acquire = original


def publish_jobs(
    app: Celery, jobs: Iterable[tuple[int, str]], *, task_name: str = TASK_NAME,
    chunk: int = 1000,
) -> int:
    """Send one task message per ``(job_id, queue)``; returns how many were sent.

    Raises TransientError when the broker cannot be reached (the jobs stay ``pending`` in the
    catalog and ``reconcile`` publishes them later).
    """
    jobs = list(jobs)
    sent = 0
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2)
            for start in range(0, len(jobs), chunk):
                batch: Sequence[tuple[int, str]] = jobs[start : start + chunk]
                with conn.channel() as channel, _pipelined(channel) as pipe:
                    producer = app.amqp.Producer(channel)
                    for job_id, queue in batch:
                        app.send_task(task_name, (job_id,), queue=queue, producer=producer)
                    if pipe is not None:
                        pipe.execute()
                sent += len(batch)
    except (OSError, ConnectionError) as e:
        raise TransientError(f"cannot publish to the broker {app.conf.broker_url}: {e}") from e
    except Exception as e:  # kombu/redis errors do not share a base class with OSError
        if type(e).__module__.split(".")[0] in ("kombu", "redis", "amqp"):
            raise TransientError(f"cannot publish to the broker {app.conf.broker_url}: {e}") from e
        raise
    return sent
