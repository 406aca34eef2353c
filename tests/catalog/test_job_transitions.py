"""Columns and boundaries of the job transitions (retry, release, requeue, reconcile) that the
scenario tests in test_jobs.py do not look at; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from mono_quant.catalog import Attempt, AttemptOutcome, Catalog, ErrorKind, Job, JobStatus
from mono_quant.catalog import jobs as js
from mono_quant.catalog.types import utcnow
from mono_quant.errors import BadInputError
from tests.catalog.test_jobs import _batch, _claim, _status

S = JobStatus


@pytest.fixture
def catalog(catalog_url):
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.dispose()


def _fail(catalog, job_id, worker="w1@h"):
    _claim(catalog, job_id, worker)
    with catalog.begin() as s:
        js.fail(s, job_id, worker, ErrorKind.BAD_INPUT, "x")


def _attempts(catalog, job_id):
    with catalog.begin() as s:
        return [(a.outcome, a.error_kind, a.error) for a in s.scalars(
            select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number))]


def test_retry_selects_by_batch_or_ids_and_resets_the_job(catalog):
    a, b = _batch(catalog, 2)
    c, d = _batch(catalog, 2)
    for job_id in (a, b, c, d):
        _fail(catalog, job_id)
    assert _status(catalog, a).finished_at is not None
    with catalog.begin() as s:
        assert js.retry_jobs(s, batch_id=1) == [(a, "gpu"), (b, "cpu")]
        assert js.retry_jobs(s, job_ids=[d]) == [(d, "cpu")]
    job = _status(catalog, a)
    assert (job.status, job.attempts, job.finished_at) == (S.PENDING, 0, None)
    assert _status(catalog, c).status is S.FAILED


@pytest.mark.parametrize("kwargs", [{}, {"batch_id": 1, "job_ids": [1]},
                                    {"batch_id": 1, "all_failed": True}],
                         ids=["none", "batch-and-ids", "batch-and-all"])
def test_retry_needs_exactly_one_selector(catalog, kwargs):
    with pytest.raises(BadInputError) as err, catalog.begin() as s:
        js.retry_jobs(s, **kwargs)
    assert str(err.value) == "retry: give exactly one of a batch, job ids or all failed jobs"


def test_release_never_takes_attempts_below_zero(catalog):
    a, b = _batch(catalog, 2)
    before = utcnow()
    for job_id in (a, b):
        _claim(catalog, job_id)
    with catalog.begin() as s:
        s.execute(Job.__table__.update().where(Job.id == b).values(attempts=0))
        assert sorted(js.release(s, "w1@h")) == [a, b]
    job = _status(catalog, a)
    assert (job.status, job.attempts, job.worker, job.progress) == (S.QUEUED, 0, None, None)
    assert job.queued_at >= before
    assert _status(catalog, b).attempts == 0
    assert _attempts(catalog, a) == [(AttemptOutcome.LOST, ErrorKind.INTERNAL,
                                      "interrupted: the worker shut down")]


def test_requeue_lost_clears_the_worker_and_records_why(catalog):
    (job_id,) = _batch(catalog, 1)
    _claim(catalog, job_id)
    before = utcnow()
    with catalog.begin() as s:
        assert js.heartbeat(s, job_id, "w1@h", {"stage": "quantizing"})
        assert js.requeue_lost(s, job_id, "w1@h", "the process died")
    job = _status(catalog, job_id)
    assert (job.status, job.worker, job.progress) == (S.QUEUED, None, None)
    assert job.queued_at >= before
    assert _attempts(catalog, job_id) == [(AttemptOutcome.LOST, ErrorKind.INTERNAL,
                                           "the process died")]


def test_reconcile_boundaries_are_strict_and_rows_are_requeued(catalog):
    on_time, late = _batch(catalog, 2)
    t = utcnow() - timedelta(minutes=10)
    with catalog.begin() as s:
        s.execute(Job.__table__.update().where(Job.id == on_time).values(created_at=t))
        s.execute(Job.__table__.update().where(Job.id == late)
                  .values(created_at=t - timedelta(seconds=1)))
        found = js.reconcile_jobs(s, stale_before=t, pending_before=t, queued_before=t)
    assert found == [(late, "cpu")]  # created exactly at the cutoff is not late yet
    job = _status(catalog, late)
    assert job.status is S.QUEUED and job.queued_at > t
    assert _status(catalog, on_time).status is S.PENDING
    with catalog.begin() as s:  # queued exactly at the cutoff: not lost either
        s.execute(Job.__table__.update().where(Job.id == late).values(queued_at=t))
        assert js.reconcile_jobs(s, stale_before=t, pending_before=t - timedelta(days=1),
                                 queued_before=t) == []


def test_cancel_records_who_and_when(catalog):
    (job_id,) = _batch(catalog, 1)
    _claim(catalog, job_id)
    before = utcnow()
    with catalog.begin() as s:
        assert js.heartbeat(s, job_id, "w1@h", {"stage": "quantizing"})
        assert js.cancel_jobs(s, job_ids=[job_id])[0] == [job_id]
    job = _status(catalog, job_id)
    assert (job.status, job.error_kind, job.last_error, job.progress) == (
        S.CANCELLED, ErrorKind.CANCELLED, "cancelled by a user", None)
    assert job.finished_at >= before
    with pytest.raises(BadInputError) as err, catalog.begin() as s:
        js.cancel_jobs(s, batch_id=1, job_ids=[job_id])
    assert str(err.value) == "cancel: give a batch or job ids, not both"
