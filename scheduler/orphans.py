"""Jobs an embedded run left behind, found again by the next ``mono-quant run``.

With no broker, nothing but ``run`` runs a job: a job ``pending`` (``retry``, Ctrl-C) or
``queued`` stays so until a ``run`` of its manifest takes it, and a job ``running`` under a
runner that was killed stays ``running`` until a ``run`` notices its runner is gone.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import or_, select

from mono_quant.catalog import Catalog, Job, JobStatus
from mono_quant.catalog import jobs as job_state

__all__ = ["recover_dead_local_jobs", "resumable"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A dead process its (new) parent has not reaped yet: signal 0 still reaches it. A
    killed runner's pool child is one until init gets to it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (not Linux): trust the signal
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _dead_here(worker: str, prefix: str, host: str) -> bool:
    """Whether ``worker`` names an embedded run's process on this host that is gone."""
    name, _, at = worker.partition("@")
    pid = name.removeprefix(prefix)
    return at == host and pid.isdigit() and not _pid_alive(int(pid))


def recover_dead_local_jobs(catalog: Catalog, prefix: str, stale_after: float) -> list[int]:
    """``running → queued`` for embedded jobs whose runner process is gone (on this host) or
    whose heartbeat is stale (elsewhere); the lost attempt counts, as any crash does."""
    host = socket.gethostname()
    cutoff = job_state.stale_cutoff(stale_after)
    recovered: list[int] = []
    with catalog.begin() as session:
        stale = or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)
        rows = session.execute(select(Job.id, Job.worker, stale).where(
            Job.status == JobStatus.RUNNING, Job.worker.like(f"{prefix}%"))).all()
        for job_id, worker, is_stale in rows:
            if (is_stale or _dead_here(worker, prefix, host)) and job_state.requeue_lost(
                    session, job_id, worker, "the `mono-quant run` running it died"):
                recovered.append(job_id)
    return recovered


def resumable(catalog: Catalog, job_ids: Sequence[int]) -> list[int]:
    """Of ``job_ids``, those waiting for a runner (``pending``/``queued``)."""
    if not job_ids:
        return []
    with catalog.begin() as session:
        return sorted(session.scalars(select(Job.id).where(
            Job.id.in_(list(job_ids)), Job.status.in_([JobStatus.PENDING, JobStatus.QUEUED]))))
