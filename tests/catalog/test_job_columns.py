"""Every column each job transition writes (and the ones it must leave alone), including the
Celery task ids that ``cancel_jobs`` returns for revoking; on SQLite and PostgreSQL.

The scenario tests (test_jobs.py) look at statuses; these read the rest of the row, which the
CLI, the web catalog and the retry logic show or depend on.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from mono_quant import QuantConfig, demo_models, quantize_model
from mono_quant.catalog import (
    ArtifactFormat,
    Attempt,
    AttemptOutcome,
    Catalog,
    ErrorKind,
    Job,
    JobStatus,
)
from mono_quant.catalog import jobs as js
from mono_quant.catalog.types import utcnow
from tests.catalog.test_jobs import _batch, _status

S = JobStatus


@pytest.fixture(scope="module")
def info():
    return quantize_model(demo_models.mlp(), QuantConfig(), progress=False)[1]


@pytest.fixture
def catalog(catalog_url):
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.dispose()


def _claim(catalog, job_id, worker="w1@h", task_id=None):
    with catalog.begin() as s:
        return js.claim(s, job_id, worker=worker, device="cuda:1", task_id=task_id,
                        stale_before=utcnow() - timedelta(seconds=60))


def _attempt_rows(catalog, job_id):
    with catalog.begin() as s:
        return list(s.scalars(select(Attempt).where(Attempt.job_id == job_id)
                              .order_by(Attempt.number)))


def test_claim_writes_who_where_when_and_opens_an_attempt(catalog):
    (job_id,) = _batch(catalog, 1)
    with catalog.begin() as s:
        assert js.heartbeat(s, job_id, "nobody") is False  # not running: nothing to beat
    before = utcnow()
    claim = _claim(catalog, job_id, task_id="celery-1")
    assert (claim.claimed, claim.status, claim.attempt) == (True, S.RUNNING, 1)
    job = _status(catalog, job_id)
    assert (job.status, job.worker, job.device, job.celery_task_id, job.attempts,
            job.progress) == (S.RUNNING, "w1@h", "cuda:1", "celery-1", 1, None)
    assert job.started_at == job.heartbeat_at and job.started_at >= before
    (attempt,) = _attempt_rows(catalog, job_id)
    assert (attempt.number, attempt.worker, attempt.device, attempt.outcome,
            attempt.finished_at) == (1, "w1@h", "cuda:1", None, None)
    assert attempt.started_at == job.started_at
    missing = _claim(catalog, 10_000)
    assert (missing.job, missing.status, missing.attempt) == (None, None, 0)


def test_heartbeat_keeps_the_progress_unless_given(catalog):
    (job_id,) = _batch(catalog, 1)
    _claim(catalog, job_id)
    with catalog.begin() as s:
        assert js.heartbeat(s, job_id, "w1@h", {"stage": "calibrating"}) is True
        assert js.heartbeat(s, job_id, "w1@h") is True
        assert js.heartbeat(s, job_id, "w2@h", {"stage": "x"}) is False
    job = _status(catalog, job_id)
    assert job.progress == {"stage": "calibrating"} and job.heartbeat_at > job.started_at


def test_fail_with_retry_left_requeues_and_records_the_attempt(catalog):
    (job_id,) = _batch(catalog, 1, max_attempts=3)
    _claim(catalog, job_id)
    before = utcnow()
    with catalog.begin() as s:
        js.heartbeat(s, job_id, "w1@h", {"stage": "saving"})
        assert js.fail(s, job_id, "w1@h", ErrorKind.TRANSIENT, "db down", retry=True) is S.QUEUED
    job = _status(catalog, job_id)
    assert (job.status, job.error_kind, job.last_error, job.progress, job.finished_at) == (
        S.QUEUED, ErrorKind.TRANSIENT, "db down", None, None)
    assert job.queued_at >= before
    (attempt,) = _attempt_rows(catalog, job_id)
    assert (attempt.outcome, attempt.error_kind, attempt.error) == (
        AttemptOutcome.FAILED, ErrorKind.TRANSIENT, "db down")
    assert attempt.finished_at >= before


@pytest.mark.parametrize("retry", [False, True], ids=["no-retry", "retry-spent"])
def test_fail_for_good_records_when_and_why(catalog, retry):
    (job_id,) = _batch(catalog, 1, max_attempts=1)
    _claim(catalog, job_id)
    before = utcnow()
    with catalog.begin() as s:
        assert js.fail(s, job_id, "w1@h", ErrorKind.BAD_INPUT, "bad shape", retry=retry) \
            is S.FAILED
    job = _status(catalog, job_id)
    why = "bad shape (gave up after 1 attempts)" if retry else "bad shape"
    assert (job.status, job.error_kind, job.last_error, job.progress) == (
        S.FAILED, ErrorKind.BAD_INPUT, why, None)
    assert job.finished_at >= before
    (attempt,) = _attempt_rows(catalog, job_id)
    assert (attempt.outcome, attempt.error_kind, attempt.error) == (
        AttemptOutcome.FAILED, ErrorKind.BAD_INPUT, "bad shape")  # the attempt: the raw error


def test_succeed_after_a_retried_failure_clears_the_error(catalog, info, tmp_path):
    (job_id,) = _batch(catalog, 1)
    _claim(catalog, job_id)
    with catalog.begin() as s:
        js.fail(s, job_id, "w1@h", ErrorKind.TRANSIENT, "db down", retry=True)
    _claim(catalog, job_id)
    before = utcnow()
    with catalog.begin() as s:
        js.heartbeat(s, job_id, "w1@h", {"stage": "saving"})
        artifact, replaced = js.succeed(
            s, job_id, "w1@h", storage_root=tmp_path, storage_key="ab/x.pt", fmt="pt",
            sha256="0" * 64, size_bytes=7, info=info, model_digest="d" * 64,
            model_source="factory:m:f")
        assert (artifact.storage_key, artifact.size_bytes, artifact.model_digest,
                artifact.model_source, replaced) == ("ab/x.pt", 7, "d" * 64, "factory:m:f", None)
    job = _status(catalog, job_id)
    assert (job.status, job.error_kind, job.last_error, job.progress) == (
        S.SUCCEEDED, None, None, None)
    assert job.finished_at >= before
    first, second = _attempt_rows(catalog, job_id)
    assert first.outcome is AttemptOutcome.FAILED
    assert (second.outcome, second.error_kind, second.error) == (
        AttemptOutcome.SUCCEEDED, None, None)
    assert second.finished_at >= before


def test_cancel_returns_the_task_ids_of_running_jobs_only(catalog):
    running, requeued, queued, done = _batch(catalog, 4)
    _claim(catalog, running, "w1@h", task_id="task-running")
    _claim(catalog, requeued, "w2@h", task_id="task-requeued")
    _claim(catalog, done, "w3@h", task_id="task-done")
    with catalog.begin() as s:
        js.mark_queued(s, [queued])
        assert js.requeue_lost(s, requeued, "w2@h", "died")  # has a task id, no open attempt
        js.fail(s, done, "w3@h", ErrorKind.BAD_INPUT, "x")
        ids, tasks = js.cancel_jobs(s, batch_id=1)
    assert sorted(ids) == sorted([running, requeued, queued])
    assert tasks == ["task-running"]
    assert _status(catalog, done).status is S.FAILED
    with catalog.begin() as s:
        assert js.cancel_jobs(s, job_ids=[running, done]) == ([], [])  # already final


def test_poison_claim_records_the_crashes_and_does_not_count_itself(catalog):
    (job_id,) = _batch(catalog, 1, max_attempts=2)
    _claim(catalog, job_id, "a@h")
    _claim(catalog, job_id, "a@h")  # same node asks again: its process died
    before = utcnow()
    final = _claim(catalog, job_id, "a@h")
    assert (final.claimed, final.status) == (False, S.FAILED)
    job = _status(catalog, job_id)
    assert (job.error_kind, job.attempts, job.progress) == (ErrorKind.POISON, 2, None)
    assert job.last_error == ("poison: 2 of 2 attempt(s) died with their worker (crash, OOM "
                              "kill or time limit); not running it again")
    assert job.finished_at >= before
    rows = [(a.number, a.outcome, a.error_kind, a.error) for a in _attempt_rows(catalog, job_id)]
    lost = (AttemptOutcome.LOST, ErrorKind.INTERNAL, "the worker died while running this attempt")
    assert rows == [(1, *lost), (2, *lost)]


def test_cancel_by_ids_closes_the_attempt_and_leaves_the_other_jobs(catalog):
    running, other = _batch(catalog, 2)
    _claim(catalog, running)
    before = utcnow()
    with catalog.begin() as s:
        assert js.cancel_jobs(s, job_ids=[running]) == ([running], [])  # no task id given
    assert _status(catalog, other).status is S.PENDING
    (attempt,) = _attempt_rows(catalog, running)
    assert (attempt.outcome, attempt.error_kind, attempt.error) == (
        AttemptOutcome.CANCELLED, ErrorKind.CANCELLED, "cancelled by a user")
    assert attempt.finished_at >= before


def test_succeed_records_the_key_format_and_source_it_is_given(catalog, info, tmp_path):
    """An absolute path under the root is recorded as its key; the format is the caller's
    (a compressed-tensors folder uploaded elsewhere: nothing at the path to guess from), and
    the model source the worker ran wins over the job's own column (``factory:m:f``)."""
    (job_id,) = _batch(catalog, 1)
    _claim(catalog, job_id)
    with catalog.begin() as s:
        artifact, replaced = js.succeed(
            s, job_id, "w1@h", storage_root=tmp_path, storage_key=str(tmp_path / "ab" / "job-1"),
            fmt="compressed-tensors", sha256="0" * 64, size_bytes=3, info=info,
            model_source="hf:org/model@main")
        assert (artifact.storage_key, artifact.format, artifact.model_source, replaced) == (
            "ab/job-1", ArtifactFormat.COMPRESSED_TENSORS, "hf:org/model@main", None)


def test_succeed_refreshes_the_callers_copy_of_the_job(catalog, info, tmp_path):
    """The session read the job before this worker claimed it (in another session): after
    succeed, that copy, which is the artifact's job, holds the row as written."""
    (job_id,) = _batch(catalog, 1)
    with catalog.begin() as s:
        seen = s.get(Job, job_id)  # held: the session's identity map keeps this copy
        assert seen.status is S.PENDING
        _claim(catalog, job_id)
        artifact, _ = js.succeed(s, job_id, "w1@h", storage_root=tmp_path,
                                 storage_key="ab/x.pt", fmt="pt", sha256="0" * 64,
                                 size_bytes=1, info=info)
        assert artifact.job is seen
        assert (seen.status, seen.worker, seen.device, seen.attempts) == (
            S.SUCCEEDED, "w1@h", "cuda:1", 1)
