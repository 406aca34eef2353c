"""The queries behind ``mono-quant batches``, ``jobs`` and ``jobs show`` at scale (SQLite).

A temporary SQLite catalog is created with the shipped migrations, then BATCHES batches of
JOBS jobs each (one attempt per job; 5 % failed, 2 % cancelled, the rest succeeded) are
bulk-inserted with SQLAlchemy Core ``executemany``, ``ANALYZE`` is run, and each query is
timed through the functions the commands call (one transaction per call, a different
parameter on every repeat):

* ``batches`` — ``list_batches(limit=50)``: the newest 50 batches with counts per state
* ``jobs --batch NAME --state failed`` — ``resolve_batch`` + ``job_list.list_jobs``
* ``jobs --state failed --after J`` — ``job_list.list_jobs(statuses=["failed"], after_id=J)``
* ``jobs show J`` — ``job_detail``: one job with its attempts
* ``status NAME`` — ``resolve_batch`` by name (the newest with jobs)

Usage:
    python benchmarks/cli_browse.py                    # 1000 batches x 100 jobs
    python benchmarks/cli_browse.py --batches 100      # a quick check
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import insert, text

from mono_quant.catalog import Attempt, Batch, Catalog, Job
from mono_quant.catalog.job_list import list_jobs
from mono_quant.catalog.overview import job_detail, list_batches
from mono_quant.scheduler.resolve import resolve_batch

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def seed(catalog: Catalog, batches: int, jobs: int) -> float:
    t = time.perf_counter()
    rng = random.Random(7)
    with catalog.begin() as s:
        s.execute(insert(Batch), [{"id": b + 1, "name": f"nightly-{b % 97}", "labels": {},
                                   "submitted_at": T0 + timedelta(hours=b)}
                                  for b in range(batches)])
        job_rows, attempt_rows = [], []
        for b in range(batches):
            for j in range(jobs):
                jid = b * jobs + j + 1
                r = rng.random()
                status = "failed" if r < 0.05 else "cancelled" if r < 0.07 else "succeeded"
                start = T0 + timedelta(hours=b, seconds=j)
                job_rows.append({
                    "id": jid, "batch_id": b + 1, "name": f"job-{j}", "model_source": "hf:/m",
                    "model_source_json": {}, "spec": {}, "idempotency_key": f"{jid:064x}",
                    "queue": "cpu", "status": status, "attempts": 1, "max_attempts": 3,
                    "created_at": start, "started_at": start,
                    "finished_at": start + timedelta(seconds=3)})
                attempt_rows.append({
                    "job_id": jid, "number": 1, "worker": "gpu0@n", "device": "cuda:0",
                    "started_at": start, "finished_at": start + timedelta(seconds=3),
                    "outcome": "failed" if status == "failed" else "succeeded"})
        s.execute(insert(Job), job_rows)
        s.execute(insert(Attempt), attempt_rows)
        s.execute(text("ANALYZE"))
    return time.perf_counter() - t


def timed(catalog: Catalog, fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        with catalog.begin() as s:
            fn(s, i)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=100, help="jobs per batch")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(f"sqlite:///{Path(tmp) / 'catalog.db'}")
        catalog.upgrade()
        secs = seed(catalog, args.batches, args.jobs)
        n = args.batches * args.jobs
        print(f"SQLite, {args.batches} batches x {args.jobs} jobs = {n} jobs "
              f"(+{n} attempts) seeded in {secs:.1f} s; median of {args.repeats} runs:\n")
        cases = {
            "(baseline: a transaction running SELECT 1)": lambda s, i: s.execute(text("SELECT 1")),
            "batches (newest 50, counts)": lambda s, i: list_batches(s, limit=50),
            "jobs --batch NAME --state failed": lambda s, i: list_jobs(
                s, batch_id=resolve_batch(s, f"nightly-{i % 97}").id, statuses=["failed"],
                limit=50),
            "jobs --state failed --after J": lambda s, i: list_jobs(
                s, statuses=["failed"], limit=50, after_id=(i * 3001) % n),
            "jobs show J": lambda s, i: job_detail(s, 1 + (i * 7919) % n),
            "status NAME (resolve)": lambda s, i: resolve_batch(s, f"nightly-{i % 97}"),
        }
        print("| query | median ms |\n| --- | --- |")
        for name, fn in cases.items():
            print(f"| {name} | {timed(catalog, fn, args.repeats):.2f} |")
        catalog.dispose()


if __name__ == "__main__":
    main()
