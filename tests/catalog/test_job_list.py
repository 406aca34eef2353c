"""Paged job listing (keyset on the id) against a Python reference, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import random

import pytest
from sqlalchemy import update

from mono_quant.catalog import Catalog, Job, JobStatus
from mono_quant.catalog.batches import JobRow, create_batch
from mono_quant.catalog.job_list import MAX_PAGE, list_jobs
from mono_quant.errors import BadInputError


@pytest.fixture
def catalog(catalog_url):
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.dispose()


@pytest.fixture
def jobs(catalog) -> list[tuple[int, int, str, str]]:
    """Three batches of random statuses and queues; returns (id, batch, status, queue)."""
    rng = random.Random(5)
    out = []
    for b in range(3):
        rows = [JobRow(name=f"j{b}-{i}", model_source="m", model_source_json={}, spec={},
                       idempotency_key=hashlib.sha256(f"{b}-{i}".encode()).hexdigest(),
                       queue=rng.choice(["cpu", "gpu"]), max_attempts=3) for i in range(90)]
        with catalog.begin() as s:
            batch, ids = create_batch(s, rows, name=f"b{b}")
            for job_id, row in zip(ids, rows, strict=True):
                status = rng.choice(list(JobStatus))
                s.execute(update(Job).where(Job.id == job_id).values(status=status))
                out.append((job_id, batch.id, status.value, row.queue))
    return out


def _all_pages(catalog, limit: int, **filters) -> list[int]:
    seen, after, pages = [], None, 0
    while True:
        with catalog.begin() as s:
            page = list_jobs(s, after_id=after, limit=limit, **filters)
            seen += [j.id for j in page.jobs]
        pages += 1
        assert len(page.jobs) <= limit
        if page.next_after is None:
            return seen
        assert len(page.jobs) == limit and page.next_after == seen[-1]
        after = page.next_after


@pytest.mark.parametrize("filters", [
    {}, {"batch_id": 2}, {"batch_id": 2, "statuses": ["failed"]},
    {"statuses": ["queued", "pending"], "queue": "gpu"}, {"batch_id": 3, "queue": "cpu"},
], ids=["all", "batch", "batch-failed", "waiting-gpu", "batch-cpu"])
def test_pages_concatenate_to_the_reference(catalog, jobs, filters):
    expected = [i for i, batch, status, queue in sorted(jobs)
                if filters.get("batch_id", batch) == batch
                and status in filters.get("statuses", [status])
                and filters.get("queue", queue) == queue]
    assert expected  # the case is not vacuous
    for limit in (7, 1000):
        assert _all_pages(catalog, limit, **filters) == expected


def test_the_large_columns_are_not_loaded_and_bad_arguments_are_refused(catalog, jobs):
    with catalog.begin() as s:
        page = list_jobs(s, limit=3)
        assert [j.id for j in page.jobs] == [1, 2, 3] and page.next_after == 3
        assert "spec" not in page.jobs[0].__dict__  # deferred
        with pytest.raises(BadInputError, match=f"expected 1 to {MAX_PAGE}"):
            list_jobs(s, limit=0)
        with pytest.raises(BadInputError, match="job status 'done'.*expected one of pending"):
            list_jobs(s, statuses=["done"])
