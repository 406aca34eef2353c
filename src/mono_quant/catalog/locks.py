"""The catalog lock that lets one reconcile sweep run at a time across a fleet.

Every worker sweeps (see ``mono_quant.scheduler.sweep``); the lock makes the sweeps take turns
instead of racing: each sweep is one transaction that takes the lock first and holds it until
it commits.

* PostgreSQL: a transaction-level advisory lock, ``pg_try_advisory_xact_lock``: a sweep that
  finds it held skips its turn (the holder is doing the same work right now).
* SQLite: there is one writer at a time, so the lock is the database's write lock, taken by a
  conditional UPDATE that matches no row (the same statement form as every transition in
  ``catalog/jobs.py``, whose first UPDATE takes the same lock). A second sweep waits for it
  (up to the busy timeout) and then sweeps after the first, never alongside it.

Example:
    >>> import os, tempfile
    >>> from mono_quant.catalog import Catalog
    >>> catalog = Catalog("sqlite:///" + os.path.join(tempfile.mkdtemp(), "c.db"))
    >>> _ = catalog.upgrade()
    >>> with catalog.begin() as session:
    ...     try_sweep_lock(session)
    True
"""

from __future__ import annotations

from sqlalchemy import false, func, select, update
from sqlalchemy.orm import Session

from mono_quant.catalog.models import Job

__all__ = ["SWEEP_LOCK_KEY", "try_sweep_lock"]

#: The PostgreSQL advisory lock key of the reconcile sweep ("mqrecon" in ASCII): one key for
#: the whole database, so every worker of a fleet contends for the same lock.
SWEEP_LOCK_KEY = 0x6D_71_72_65_63_6F_6E


def try_sweep_lock(session: Session) -> bool:
    """Take the sweep lock for the rest of ``session``'s transaction; False when another
    sweep holds it (PostgreSQL only: SQLite waits its turn instead)."""
    if session.get_bind().dialect.name == "postgresql":
        return bool(session.scalar(select(func.pg_try_advisory_xact_lock(SWEEP_LOCK_KEY))))
    session.execute(update(Job).where(false()).values(status=Job.status))
    return True
