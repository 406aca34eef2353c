"""Columns and boundaries of the job transitions (retry, release, requeue, reconcile) that the
scenario tests in test_jobs.py do not look at; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, select

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


def test_stale_cutoff_is_that_many_seconds_before_now():
    before = utcnow()
    cutoff = js.stale_cutoff(90)
    after = utcnow()
    assert before - timedelta(seconds=90) <= cutoff <= after - timedelta(seconds=90)


def test_mark_queued_and_unsend_move_exactly_the_given_unclaimed_jobs(catalog):
    a, b, c, d, e = _batch(catalog, 5)
    with catalog.begin() as s:
        assert js.mark_queued(s, [a, b, d]) == 3  # a..b is one BETWEEN, d a second UPDATE
        assert js.mark_queued(s, [c, e]) == 2
    _claim(catalog, c)
    with catalog.begin() as s:
        assert js.requeue_lost(s, c, "w1@h", "died")  # queued again, one attempt spent
        assert js.unsend(s, [c]) == 0  # its message was sent: a worker claimed it
        assert js.unsend(s, [a, b, d]) == 3
    assert [_status(catalog, i).status for i in (a, b, c, d, e)] == [
        S.PENDING, S.PENDING, S.QUEUED, S.PENDING, S.QUEUED]
    assert _status(catalog, d).queued_at is None


def test_a_running_job_without_a_heartbeat_is_claimable_by_another_worker(catalog):
    (job_id,) = _batch(catalog, 1)
    _claim(catalog, job_id, "w1@h")
    with catalog.begin() as s:  # a row whose worker never beat (written by hand, or old)
        s.execute(Job.__table__.update().where(Job.id == job_id).values(heartbeat_at=None))
    taken = _claim(catalog, job_id, "w2@h")
    assert (taken.claimed, taken.attempt) == (True, 2)
    assert _status(catalog, job_id).worker == "w2@h"


def test_a_stale_fail_does_not_touch_the_attempt_a_reclaim_started(catalog):
    """The worker read its attempt count, then its node reclaimed the job (its process was
    presumed dead: attempt 2) before the old process's UPDATE ran: that fail changes
    nothing. The reclaim runs in another session between fail's SELECT and its UPDATE."""
    (job_id,) = _batch(catalog, 1)
    _claim(catalog, job_id, "w1@h")
    reclaimed = []
    session = catalog.Session()

    @event.listens_for(session, "do_orm_execute")
    def reclaim_in_between(state):
        if state.is_update and not reclaimed:
            reclaimed.append(_claim(catalog, job_id, "w1@h"))

    try:
        with session.begin():
            assert js.fail(session, job_id, "w1@h", ErrorKind.TRANSIENT, "x", retry=True) is None
    finally:
        session.close()
    assert reclaimed[0].attempt == 2
    job = _status(catalog, job_id)
    assert (job.status, job.attempts, job.error_kind, job.last_error) == (
        S.RUNNING, 2, None, None)
    assert [a[0] for a in _attempts(catalog, job_id)] == [AttemptOutcome.LOST, None]


def test_retry_leaves_the_skipped_error_kinds_failed(catalog):
    bad, transient, unknown = _batch(catalog, 3)
    _fail(catalog, bad)  # bad input
    _claim(catalog, transient)
    with catalog.begin() as s:
        js.fail(s, transient, "w1@h", ErrorKind.TRANSIENT, "db down")
    _fail(catalog, unknown)
    with catalog.begin() as s:  # a failure recorded without a kind (by hand, or old)
        s.execute(Job.__table__.update().where(Job.id == unknown).values(error_kind=None))
        assert js.retry_jobs(s, all_failed=True, skip_kinds=[ErrorKind.BAD_INPUT]) == [
            (transient, "cpu"), (unknown, "gpu")]
    assert [_status(catalog, i).status for i in (bad, transient, unknown)] == [
        S.FAILED, S.PENDING, S.PENDING]


def test_release_hands_back_only_the_running_jobs_and_clears_their_progress(catalog):
    running, failed = _batch(catalog, 2)
    _fail(catalog, failed)  # the failed row keeps its worker
    _claim(catalog, running)
    with catalog.begin() as s:
        assert js.heartbeat(s, running, "w1@h", {"stage": "quantizing"})
        assert js.release(s, "w1@h") == [running]
    job = _status(catalog, running)
    assert (job.status, job.worker, job.progress) == (S.QUEUED, None, None)
    failed_job = _status(catalog, failed)
    assert (failed_job.status, failed_job.worker) == (S.FAILED, "w1@h")


def test_reconcile_requeues_the_jobs_of_dead_workers_and_lost_messages(catalog):
    stale, no_beat, at_cutoff, lost = _batch(catalog, 4)
    t = utcnow() - timedelta(minutes=10)
    with catalog.begin() as s:
        js.mark_queued(s, [lost])
    for job_id, worker in ((stale, "w1@h"), (no_beat, "w2@h"), (at_cutoff, "w3@h")):
        _claim(catalog, job_id, worker)
    with catalog.begin() as s:
        assert js.heartbeat(s, stale, "w1@h", {"stage": "quantizing"})
        for job_id, beat in ((stale, t - timedelta(seconds=1)), (no_beat, None),
                             (at_cutoff, t)):
            s.execute(Job.__table__.update().where(Job.id == job_id).values(heartbeat_at=beat))
        s.execute(Job.__table__.update().where(Job.id == lost)
                  .values(queued_at=t - timedelta(seconds=1)))
    before = utcnow()
    with catalog.begin() as s:
        found = js.reconcile_jobs(s, stale_before=t, pending_before=t, queued_before=t)
    assert found == [(stale, "gpu"), (no_beat, "cpu"), (lost, "cpu")]
    for job_id in (stale, no_beat):
        job = _status(catalog, job_id)
        assert (job.status, job.worker, job.progress) == (S.QUEUED, None, None)
        assert job.queued_at >= before
        assert _attempts(catalog, job_id) == [(
            AttemptOutcome.LOST, ErrorKind.INTERNAL,
            "heartbeat went stale: the worker died or lost its connection")]
    assert _status(catalog, lost).queued_at >= before  # re-published now
    job = _status(catalog, at_cutoff)  # a heartbeat exactly at the cutoff is not stale yet
    assert (job.status, job.worker) == (S.RUNNING, "w3@h")
    assert _attempts(catalog, at_cutoff) == [(None, None, None)]


def test_a_heartbeat_exactly_at_the_cutoff_is_not_stale_for_a_claim(catalog):
    (job_id,) = _batch(catalog, 1)
    _claim(catalog, job_id, "w1@h")
    t = utcnow() - timedelta(minutes=10)
    with catalog.begin() as s:
        s.execute(Job.__table__.update().where(Job.id == job_id).values(heartbeat_at=t))
    with catalog.begin() as s:
        held = js.claim(s, job_id, worker="w2@h", device="cpu", stale_before=t)
    assert (held.claimed, held.status) == (False, S.RUNNING)
    assert _status(catalog, job_id).worker == "w1@h"


def test_a_reclaim_clears_the_progress_of_the_dead_attempt(catalog):
    (job_id,) = _batch(catalog, 1)
    _claim(catalog, job_id, "w1@h")
    with catalog.begin() as s:
        assert js.heartbeat(s, job_id, "w1@h", {"stage": "quantizing"})
    assert _claim(catalog, job_id, "w1@h").attempt == 2  # the same node: its process died
    assert _status(catalog, job_id).progress is None


def test_a_lost_claim_reports_the_status_now_not_the_sessions_earlier_copy(catalog):
    """The session read the job queued; a user cancelled it before the claim: the claim
    reports ``cancelled`` (the worker drops the message), not the session's stale copy."""
    (job_id,) = _batch(catalog, 1)
    with catalog.begin() as s:
        js.mark_queued(s, [job_id])
    with catalog.begin() as s:
        seen = s.get(Job, job_id)  # held: the session's identity map keeps this copy
        assert seen.status is S.QUEUED
        with catalog.begin() as user:
            assert js.cancel_jobs(user, job_ids=[job_id])[0] == [job_id]
        lost = js.claim(s, job_id, worker="w1@h", device="cpu",
                        stale_before=utcnow() - timedelta(seconds=60))
    assert (lost.claimed, lost.status, lost.attempt) == (False, S.CANCELLED, 0)
    assert (seen.status, seen.worker) == (S.CANCELLED, None)


def test_poison_counts_only_this_jobs_lost_attempts(catalog):
    """Attempt 1 failed and was retried, attempt 2 died: one crash of two attempts. Another
    job's lost attempt is not counted either."""
    job_id, other = _batch(catalog, 2, max_attempts=2)
    _claim(catalog, other, "w2@h")
    _claim(catalog, other, "w2@h")  # the other job's attempt 1 died
    _claim(catalog, job_id)
    with catalog.begin() as s:
        assert js.fail(s, job_id, "w1@h", ErrorKind.TRANSIENT, "db down", retry=True) is S.QUEUED
    _claim(catalog, job_id)
    final = _claim(catalog, job_id)  # attempt 2 died: past max_attempts
    assert (final.claimed, final.status) == (False, S.FAILED)
    assert _status(catalog, job_id).last_error == (
        "poison: 1 of 2 attempt(s) died with their worker (crash, OOM kill or time limit); "
        "not running it again")


def test_reconcile_skips_jobs_claimed_or_republished_while_it_scans(catalog, backend):
    """Between reconcile's scan of queued jobs and its UPDATE, a worker claims one and a
    second reconciler re-publishes the other: the UPDATE re-checks both conditions, so
    neither is published again."""
    if backend == "sqlite":
        pytest.skip("SQLite serializes writers: reconcile's first UPDATE takes the write lock "
                    "before its scan, so no claim can commit between the scan and the UPDATE")
    claimed, republished = _batch(catalog, 2)
    t = utcnow() - timedelta(minutes=10)
    with catalog.begin() as s:
        js.mark_queued(s, [claimed, republished])
        s.execute(Job.__table__.update().where(Job.id.in_([claimed, republished]))
                  .values(queued_at=t - timedelta(seconds=1)))
    updates = []
    session = catalog.Session()

    @event.listens_for(session, "do_orm_execute")
    def race(state):
        if not state.is_update:
            return
        updates.append(state.statement)
        if len(updates) == 2:  # the scan is done; its UPDATE is next
            assert _claim(catalog, claimed, "w1@h").claimed
            with catalog.begin() as other:
                assert js.reconcile_jobs(other, stale_before=t, pending_before=t,
                                         queued_before=t) == [(republished, "cpu")]

    try:
        with session.begin():
            assert js.reconcile_jobs(session, stale_before=t, pending_before=t,
                                     queued_before=t) == []
    finally:
        session.close()
    assert len(updates) == 3  # pending, then the scanned queued ones, then running
