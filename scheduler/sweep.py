"""Workers heal the fleet themselves: the reconcile sweep every worker runs.

``mono-quant worker`` starts a :class:`Sweeper` thread in its main process (which never
imports torch). Every ``MONO_QUANT_RECONCILE_INTERVAL`` seconds (default: the heartbeat
interval) it runs :func:`sweep`:

1. in one catalog transaction that first takes the sweep lock (``catalog.locks``: one sweep
   at a time across the fleet), re-queue what ``reconcile`` would: pending jobs never
   published, queued jobs whose message is gone, running jobs whose heartbeat is older than
   ``MONO_QUANT_STALE_AFTER`` (their worker died: a SIGKILL of the whole worker leaves no one
   to put the message back before the visibility timeout);
2. after the commit, publish their messages (a live worker claims them);
3. drop the unacknowledged entries of jobs that are already final: a dead worker's entry
   would otherwise sit in Redis (and in ``mono_quant_unacked_messages``) until the
   visibility timeout, then be redelivered for nothing.

So with plain workers and no ``reconcile`` process, a job whose worker was killed runs again
on a live worker within ``STALE_AFTER`` plus one interval. ``mono-quant reconcile`` stays, for
operators and cron.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from mono_quant.catalog import Catalog, Job
from mono_quant.catalog import jobs as job_state
from mono_quant.catalog.locks import try_sweep_lock
from mono_quant.catalog.models import FINAL_STATUSES
from mono_quant.config import Settings
from mono_quant.scheduler.broker import (
    UNACKED_INDEX_KEY,
    UNACKED_KEY,
    broker_job_ids,
    message_job_id,
)

__all__ = ["SweepResult", "Sweeper", "prune_unacked", "sweep"]

log = logging.getLogger("mono_quant.sweep")



@dataclass(frozen=True)
class SweepResult:
    """One sweep: ``requeued`` job ids (published again), ``pruned`` unacked entries; or
    ``skipped`` when another sweep held the lock."""

    requeued: tuple[int, ...] = ()
    pruned: int = 0
    skipped: bool = False


def sweep(catalog: Catalog, app: Any, settings: Settings) -> SweepResult:
    """One reconcile sweep under the catalog lock (see the module docstring)."""
    cutoff = job_state.stale_cutoff(settings.stale_after)
    with catalog.begin() as session:
        if not try_sweep_lock(session):
            return SweepResult(skipped=True)
        queues = list(session.scalars(select(Job.queue).distinct()))
        on_broker = broker_job_ids(app, queues)
        todo = job_state.reconcile_jobs(session, stale_before=cutoff, pending_before=cutoff,
                                        queued_before=cutoff, on_broker=on_broker)
    if todo:
        from mono_quant.scheduler.publish import publish_jobs

        publish_jobs(app, todo)
    return SweepResult(tuple(j for j, _ in todo), prune_unacked(catalog, app))


def prune_unacked(catalog: Catalog, app: Any) -> int:
    """Delete unacknowledged Redis entries whose job is final; returns how many.

    A live worker acknowledges its message right after the job ends (deleting an entry it
    then deletes again is harmless); an entry of a dead worker is never acknowledged.
    """
    url = str(app.conf.broker_url)
    if not url.startswith(("redis://", "rediss://")):
        return 0
    import redis

    client = redis.Redis.from_url(url)
    try:
        entries = {tag: message_job_id(raw) for tag, raw in client.hgetall(UNACKED_KEY).items()}
        ids = sorted({j for j in entries.values() if j is not None})
        if not ids:
            return 0
        with catalog.begin() as session:
            final = set(session.scalars(select(Job.id).where(
                Job.id.in_(ids), Job.status.in_(list(FINAL_STATUSES)))))
        tags = [tag for tag, job in entries.items() if job in final]
        if tags:
            pipe = client.pipeline(transaction=False)
            pipe.hdel(UNACKED_KEY, *tags)
            pipe.zrem(UNACKED_INDEX_KEY, *tags)
            pipe.execute()
        return len(tags)
    finally:
        client.close()


class Sweeper(threading.Thread):
    """Runs :func:`sweep` every ``settings.reconcile_interval`` seconds (with jitter, so a
    fleet started together does not sweep in lockstep) until :meth:`stop`."""

    def __init__(self, settings: Settings, node: str) -> None:
        super().__init__(name="reconcile-sweep", daemon=True)
        self.settings, self.node = settings, node
        self._stop_event = threading.Event()

    def run(self) -> None:
        from mono_quant.worker.app import create_app

        catalog, app = Catalog(self.settings.catalog_url), create_app(self.settings)
        interval = self.settings.reconcile_interval
        try:
            while not self._stop_event.wait(interval * random.uniform(0.8, 1.2)):
                self._once(catalog, app)
        finally:
            with contextlib.suppress(Exception):
                catalog.dispose()

    def _once(self, catalog: Catalog, app: Any) -> None:
        try:
            result = sweep(catalog, app, self.settings)
        except Exception as e:  # catalog, Redis or kombu away: the next interval tries again
            log.warning("%s: reconcile sweep failed, retrying in %s s: %s: %s", self.node,
                        self.settings.reconcile_interval, type(e).__name__, e)
            return
        if result.requeued or result.pruned:
            log.warning("%s: reconcile sweep re-enqueued job(s) %s, dropped %d stale "
                        "unacknowledged message(s)", self.node, list(result.requeued),
                        result.pruned)

    def stop(self) -> None:
        self._stop_event.set()
