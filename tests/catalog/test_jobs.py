"""The job state machine on SQLite and PostgreSQL: claims, retries, poison, cancel, reconcile."""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mono_quant import QuantConfig, demo_models, quantize_model
from mono_quant.catalog import (
    Artifact,
    Attempt,
    AttemptOutcome,
    Catalog,
    ErrorKind,
    Job,
    JobStatus,
)
from mono_quant.catalog import jobs as js
from mono_quant.catalog.batches import JobRow, add_jobs, create_batch
from mono_quant.catalog.types import utcnow

S = JobStatus


@pytest.fixture
def catalog(catalog_url):
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.dispose()


@pytest.fixture(scope="module")
def info():
    return quantize_model(demo_models.mlp(), QuantConfig(), progress=False)[1]


def _rows(n: int, max_attempts: int = 3) -> list[JobRow]:
    return [
        JobRow(name=f"job-{i}", model_source="factory:m:f", model_source_json={"i": i},
                  spec={"i": i}, idempotency_key=hashlib.sha256(b"%d" % i).hexdigest(),
                  queue="cpu" if i % 2 else "gpu", max_attempts=max_attempts)
        for i in range(n)
    ]


def _batch(catalog, n=3, **kw) -> list[int]:
    with catalog.begin() as s:
        _, ids = create_batch(s, _rows(n, **kw), name="b", labels={"t": "x"})
    return ids


def _claim(catalog, job_id, worker="w1@h", stale=60.0):
    with catalog.begin() as s:
        return js.claim(s, job_id, worker=worker, device="cpu",
                        stale_before=utcnow() - timedelta(seconds=stale))


def _status(catalog, job_id) -> Job:
    with catalog.begin() as s:
        return s.get(Job, job_id)


def test_create_batch_returns_ids_in_order(catalog):
    ids = _batch(catalog, 5)
    with catalog.begin() as s:
        jobs = {j.id: j for j in s.scalars(select(Job))}
    assert [jobs[i].name for i in ids] == [f"job-{i}" for i in range(5)]
    assert all(j.status is S.PENDING and j.attempts == 0 for j in jobs.values())
    with catalog.begin() as s:
        assert js.mark_queued(s, ids[:3]) == 3
        assert js.mark_queued(s, ids[:3]) == 0  # already queued
    assert _status(catalog, ids[0]).status is S.QUEUED


def test_jobs_written_queued_and_unsend_of_the_unclaimed_ones(catalog):
    with catalog.begin() as s:
        batch, _ = create_batch(s, [], name="b")
        ids = add_jobs(s, batch.id, _rows(4), queued=True)
    jobs = [_status(catalog, i) for i in ids]
    assert all(j.status is S.QUEUED and j.queued_at == j.created_at for j in jobs)
    assert _claim(catalog, ids[0]).claimed  # a worker got the first message
    with catalog.begin() as s:
        assert js.unsend(s, ids) == 3  # the claimed one stays running
        assert js.unsend(s, ids) == 0
    jobs = [_status(catalog, i) for i in ids]
    assert jobs[0].status is S.RUNNING
    assert all(j.status is S.PENDING and j.queued_at is None for j in jobs[1:])


def test_claim_is_exclusive_and_counts_attempts(catalog):
    (job_id,) = _batch(catalog, 1)
    first = _claim(catalog, job_id, "w1@h")
    assert first.claimed and first.attempt == 1
    second = _claim(catalog, job_id, "w2@h")
    assert not second.claimed and second.status is S.RUNNING
    job = _status(catalog, job_id)
    assert (job.worker, job.attempts, job.status) == ("w1@h", 1, S.RUNNING)
    with catalog.begin() as s:
        attempts = list(s.scalars(select(Attempt)))
    assert [(a.number, a.worker, a.outcome) for a in attempts] == [(1, "w1@h", None)]


def test_concurrent_claims_have_one_winner(catalog):
    ids = _batch(catalog, 4)
    barrier = threading.Barrier(4)
    wins: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        barrier.wait()
        try:
            for job_id in ids:
                if _claim(catalog, job_id, name).claimed:
                    wins.append((job_id, name))
        except BaseException as e:  # surfaced below: a thread's exception is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(f"w{i}@h",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(j for j, _ in wins) == sorted(ids)  # every job exactly once


def test_same_node_or_stale_heartbeat_can_reclaim(catalog):
    a, b = _batch(catalog, 2)
    assert _claim(catalog, a, "w1@h").claimed
    # the same node asking again: its previous process died (one job per node)
    again = _claim(catalog, a, "w1@h")
    assert again.claimed and again.attempt == 2
    assert _claim(catalog, b, "w1@h").claimed
    assert not _claim(catalog, b, "w2@h", stale=60).claimed
    taken = _claim(catalog, b, "w2@h", stale=-1)  # every heartbeat counts as stale
    assert taken.claimed
    with catalog.begin() as s:
        outcomes = [(x.job_id, x.number, x.outcome) for x in
                    s.scalars(select(Attempt).order_by(Attempt.job_id, Attempt.number))]
    assert outcomes == [(a, 1, AttemptOutcome.LOST), (a, 2, None),
                        (b, 1, AttemptOutcome.LOST), (b, 2, None)]


def test_a_job_that_keeps_killing_its_worker_is_poison(catalog):
    (job_id,) = _batch(catalog, 1, max_attempts=2)
    assert _claim(catalog, job_id).claimed
    assert _claim(catalog, job_id).claimed  # attempt 1 died
    final = _claim(catalog, job_id)  # attempt 2 died too
    assert not final.claimed and final.status is S.FAILED
    job = _status(catalog, job_id)
    assert job.error_kind is ErrorKind.POISON and "2 of 2 attempt(s) died" in job.last_error
    assert job.attempts == 2
    assert not _claim(catalog, job_id).claimed  # never again


def test_succeed_records_artifact_and_closes_attempt(catalog, info, tmp_path):
    (job_id,) = _batch(catalog, 1)
    _claim(catalog, job_id)
    with catalog.begin() as s:
        assert js.succeed(s, job_id, "other@h", storage_root=tmp_path, storage_key="ab/x.pt",
                          fmt="pt", sha256="0" * 64, size_bytes=1, info=info) is None
        recorded = js.succeed(s, job_id, "w1@h", storage_root=tmp_path,
                              storage_key="ab/x.pt", fmt="pt", sha256="0" * 64, size_bytes=1,
                              info=info)
        assert recorded is not None and recorded[1] is None
    job = _status(catalog, job_id)
    assert job.status is S.SUCCEEDED and job.finished_at is not None
    with catalog.begin() as s:
        assert s.scalar(select(Attempt.outcome)) is AttemptOutcome.SUCCEEDED
        assert s.scalar(select(Artifact.job_id)) == job_id


def test_forced_rerun_takes_over_the_artifact_of_its_key(catalog, info, tmp_path):
    rows = _rows(1) * 2
    with catalog.begin() as s:
        _, (first, second) = create_batch(s, rows, name="b")
    replaced = []
    for job_id, sha in ((first, "1" * 64), (second, "2" * 64)):
        _claim(catalog, job_id)
        with catalog.begin() as s:
            _, old = js.succeed(s, job_id, "w1@h", storage_root=tmp_path,
                                storage_key=f"ab/{job_id}.pt", fmt="pt", sha256=sha,
                                size_bytes=1, info=info)
            replaced.append(old)
    with catalog.begin() as s:
        artifacts = list(s.scalars(select(Artifact)))
    assert [(a.job_id, a.sha256) for a in artifacts] == [(second, "2" * 64)]
    assert replaced == [None, f"ab/{first}.pt"]  # the caller deletes that file


def test_fail_with_retry_requeues_until_attempts_run_out(catalog):
    (job_id,) = _batch(catalog, 1, max_attempts=2)
    _claim(catalog, job_id)
    with catalog.begin() as s:
        assert js.fail(s, job_id, "w1@h", ErrorKind.TRANSIENT, "db down", retry=True) is S.QUEUED
    assert _claim(catalog, job_id).attempt == 2
    with catalog.begin() as s:
        assert js.fail(s, job_id, "w1@h", ErrorKind.TRANSIENT, "db down", retry=True) is S.FAILED
    job = _status(catalog, job_id)
    assert job.last_error == "db down (gave up after 2 attempts)"
    assert job.error_kind is ErrorKind.TRANSIENT


def test_bad_input_fails_at_once_and_retry_resets_the_budget(catalog):
    (job_id,) = _batch(catalog, 1)
    _claim(catalog, job_id)
    with catalog.begin() as s:
        assert js.fail(s, job_id, "w1@h", ErrorKind.BAD_INPUT, "no such file") is S.FAILED
        assert js.fail(s, job_id, "w1@h", ErrorKind.BAD_INPUT, "twice") is None  # not ours
        assert js.retry_jobs(s, all_failed=True) == [(job_id, "gpu")]
    job = _status(catalog, job_id)
    assert (job.status, job.attempts) == (S.PENDING, 0)
    second = _claim(catalog, job_id)
    assert second.claimed and second.attempt == 1
    with catalog.begin() as s:
        numbers = list(s.scalars(select(Attempt.number).order_by(Attempt.number)))
    assert numbers == [1, 2]  # the history is kept


def test_cancel_stops_queued_and_running_jobs(catalog):
    a, b, c = _batch(catalog, 3)
    with catalog.begin() as s:
        js.mark_queued(s, [a, b, c])
    _claim(catalog, b)
    with catalog.begin() as s:
        js.fail(s, b, "w1@h", ErrorKind.BAD_INPUT, "x")
    _claim(catalog, c)
    with catalog.begin() as s:
        cancelled, running = js.cancel_jobs(s, batch_id=1)
        assert sorted(cancelled) == [a, c] and running == []  # no Celery task ids here
    assert not _claim(catalog, a).claimed  # a cancelled job never starts
    with catalog.begin() as s:
        assert not js.heartbeat(s, c, "w1@h")  # the running one learns it at its next beat
    assert _status(catalog, b).status is S.FAILED


def test_reconcile_finds_lost_messages_and_dead_workers(catalog):
    pending, queued, on_broker, running, fresh = _batch(catalog, 5)
    with catalog.begin() as s:
        js.mark_queued(s, [queued, on_broker, running, fresh])
    _claim(catalog, running)
    _claim(catalog, fresh, "w2@h")
    with catalog.begin() as s:
        assert js.heartbeat(s, fresh, "w2@h", {"stage": "quantizing"})
    future = utcnow() + timedelta(seconds=1)
    with catalog.begin() as s:
        s.execute(Job.__table__.update().where(Job.id == running)
                  .values(heartbeat_at=utcnow() - timedelta(hours=1)))
        found = js.reconcile_jobs(s, stale_before=utcnow() - timedelta(minutes=5),
                                  pending_before=future, queued_before=future,
                                  on_broker={on_broker})
        assert [job_id for job_id, _ in found] == sorted([pending, queued, running])
    assert _status(catalog, running).status is S.QUEUED
    assert _status(catalog, fresh).progress == {"stage": "quantizing"}
    assert _claim(catalog, running, "w3@h").attempt == 2


def test_release_hands_running_jobs_back_without_counting_the_attempt(catalog):
    a, b = _batch(catalog, 2)
    _claim(catalog, a, "w1@h")
    _claim(catalog, b, "w2@h")
    with catalog.begin() as s:
        assert js.release(s, "w1@h") == [a]
    job = _status(catalog, a)
    assert (job.status, job.attempts, job.worker) == (S.QUEUED, 0, None)
    assert _status(catalog, b).status is S.RUNNING
    again = _claim(catalog, a, "w3@h")
    assert again.claimed and again.attempt == 1
    with catalog.begin() as s:
        rows = [(x.number, x.outcome) for x in
                s.scalars(select(Attempt).where(Attempt.job_id == a).order_by(Attempt.number))]
    assert rows == [(1, AttemptOutcome.LOST), (2, None)]


def test_cancel_racing_succeed_leaves_one_consistent_outcome(catalog, info, tmp_path):
    """A cancel committed between a worker's last heartbeat and its succeed() wins: the job
    stays cancelled, no artifact row (SQLite ignores SELECT … FOR UPDATE: the transitions
    must be conditional UPDATEs)."""
    (job_id,) = _batch(catalog, 1)
    _claim(catalog, job_id, "w1@h")
    worker_session = catalog.Session()
    try:
        with catalog.begin() as s:  # the user's cancel commits first
            assert js.cancel_jobs(s, job_ids=[job_id])[0] == [job_id]
        with worker_session.begin():
            assert js.succeed(worker_session, job_id, "w1@h", storage_root=tmp_path,
                              storage_key="ab/x.pt", fmt="pt", sha256="0" * 64, size_bytes=1,
                              info=info) is None
            assert js.fail(worker_session, job_id, "w1@h", ErrorKind.TRANSIENT, "x",
                           retry=True) is None  # nor can a failure resurrect it
    finally:
        worker_session.close()
    job = _status(catalog, job_id)
    assert job.status is S.CANCELLED
    with catalog.begin() as s:
        assert s.scalar(select(func.count()).select_from(Artifact)) == 0
        assert s.scalar(select(Attempt.outcome)) is AttemptOutcome.CANCELLED


def test_requeue_lost_counts_the_attempt(catalog):
    (job_id,) = _batch(catalog, 1, max_attempts=1)
    _claim(catalog, job_id, "local-1@h")
    with catalog.begin() as s:
        assert not js.requeue_lost(s, job_id, "other@h", "died")
        assert js.requeue_lost(s, job_id, "local-1@h", "the process running this attempt died")
    assert _status(catalog, job_id).status is S.QUEUED
    final = _claim(catalog, job_id, "local-2@h")  # the one attempt is spent: poison
    assert not final.claimed and final.status is S.FAILED
    assert _status(catalog, job_id).error_kind is ErrorKind.POISON
