"""``time_spent`` sums durations in SQL, with a different expression per backend: both are
checked against hand-computed seconds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mono_quant.catalog import (
    Attempt,
    AttemptOutcome,
    Batch,
    Catalog,
    Job,
    JobStatus,
)
from mono_quant.scheduler.web.timing import time_spent

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_time_spent_on_both_backends(catalog_url):
    catalog = Catalog(catalog_url)
    try:
        with catalog.begin() as s:
            batch = Batch(name="timed", labels={})
            other = Batch(name="other", labels={})
            s.add_all([batch, other])
            s.flush()

            def job(b, name, created, queued=None):
                j = Job(batch=b, name=name, model_source="m", spec={}, idempotency_key=name,
                        queue="cpu", status=JobStatus.SUCCEEDED, created_at=_at(created),
                        queued_at=None if queued is None else _at(queued))
                s.add(j)
                return j

            a, b, c = job(batch, "a", 0, 1.5), job(batch, "b", 0), job(batch, "c", 0)
            x = job(other, "x", 0)
            s.flush()
            s.add_all([
                # a waits 1.5 → 4 (2.5 s), fails after 10.25 s, succeeds on retry in 20 s
                Attempt(job=a, number=1, started_at=_at(4), finished_at=_at(14.25),
                        outcome=AttemptOutcome.FAILED),
                Attempt(job=a, number=2, started_at=_at(15), finished_at=_at(35),
                        outcome=AttemptOutcome.SUCCEEDED),
                # b waits 0 → 6 (6 s), succeeds in 30.5 s
                Attempt(job=b, number=1, started_at=_at(6), finished_at=_at(36.5),
                        outcome=AttemptOutcome.SUCCEEDED),
                # c waits 0 → 40 (40 s) and is still running (not counted as run time yet)
                Attempt(job=c, number=1, started_at=_at(40)),
                # another batch's attempt counts nowhere here
                Attempt(job=x, number=1, started_at=_at(1), finished_at=_at(999),
                        outcome=AttemptOutcome.SUCCEEDED),
            ])
        with catalog.begin() as s:
            got = time_spent(s, batch.id)
            empty = time_spent(s, 999)
    finally:
        catalog.dispose()
    assert got["run_s"] == pytest.approx({"failed": 10.25, "succeeded": 50.5, "running": 0.0},
                                         abs=1e-3)
    assert got["waiting_s"] == pytest.approx(2.5 + 6 + 40, abs=1e-3)
    assert got["wall_s"] == pytest.approx(36.5, abs=1e-3)
    assert empty == {"run_s": {}, "waiting_s": 0.0, "wall_s": None}
    # keys in RUN_KEYS order (running first, then outcomes alphabetically) on both backends
    assert list(got["run_s"]) == ["running", "failed", "succeeded"]


def test_time_spent_when_batches_interleave(catalog_url):
    """Jobs of two batches submitted side by side have interleaved ids: the attempts between
    a batch's lowest and highest job id include the other batch's, which must not count."""
    catalog = Catalog(catalog_url)
    try:
        with catalog.begin() as s:
            mine, theirs = Batch(name="mine", labels={}), Batch(name="theirs", labels={})
            s.add_all([mine, theirs])
            s.flush()
            jobs = []
            for i, b in enumerate([mine, theirs, mine, theirs, mine]):  # ids 1..5
                j = Job(batch=b, name=f"j{i}", model_source="m", spec={},
                        idempotency_key=f"k{i}", queue="cpu", status=JobStatus.SUCCEEDED,
                        created_at=_at(0))
                s.add(j)
                jobs.append(j)
            s.flush()
            for i, j in enumerate(jobs):  # mine: 10, 30, 50 s; theirs: 1000, 3000 s
                seconds = (10 + 20 * (i // 2)) if j.batch is mine else 1000 * (1 + 2 * (i // 2))
                s.add(Attempt(job=j, number=1, started_at=_at(i), finished_at=_at(i + seconds),
                              outcome=AttemptOutcome.SUCCEEDED))
        with catalog.begin() as s:
            got, other = time_spent(s, mine.id), time_spent(s, theirs.id)
    finally:
        catalog.dispose()
    assert got["run_s"] == pytest.approx({"succeeded": 10 + 30 + 50}, abs=1e-3)
    assert got["waiting_s"] == pytest.approx(0 + 2 + 4, abs=1e-3)
    assert got["wall_s"] == pytest.approx(4 + 50, abs=1e-3)
    assert other["run_s"] == pytest.approx({"succeeded": 1000 + 3000}, abs=1e-3)
    assert other["waiting_s"] == pytest.approx(1 + 3, abs=1e-3)
