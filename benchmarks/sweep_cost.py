"""What the workers' reconcile sweep costs per run, next to the operator's ``reconcile``.

Every worker sweeps every ``MONO_QUANT_RECONCILE_INTERVAL`` seconds, so its cost on an idle
fleet with a long queue is what matters: JOBS queued jobs (queued long enough ago that
reconcile must check the broker for each) whose messages are all on a Redis queue, plus one
running job with a fresh heartbeat. For each backend a throwaway catalog is made; then
``sweep`` (lock, inspect the broker, conditional UPDATEs, prune unacked) and the peer,
``service.reconcile`` (the same work without the lock and the pruning), are each timed
REPEAT times; nothing is re-queued by either (every message is on the broker).

Usage:
    python benchmarks/sweep_cost.py --redis redis://127.0.0.1:6379/15   # a database it may flush
    python benchmarks/sweep_cost.py --jobs 1000 --backends sqlite --redis ...
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import time
from datetime import timedelta

import redis
from catalog_queries import scratch_catalog  # this folder: the same throwaway databases
from sqlalchemy import update

from mono_quant.catalog import Catalog, Job, JobStatus, upgrade
from mono_quant.catalog.batches import JobRow, create_batch
from mono_quant.catalog.types import utcnow
from mono_quant.config import Settings
from mono_quant.scheduler.publish import publish_jobs
from mono_quant.scheduler.service import reconcile
from mono_quant.scheduler.sweep import sweep
from mono_quant.worker.app import create_app


def _fill(catalog: Catalog, jobs: int, app) -> None:
    rows = [JobRow(name=f"j{i}", model_source="factory:m:f", model_source_json={"i": i},
                   spec={"i": i}, idempotency_key=hashlib.sha256(b"%d" % i).hexdigest(),
                   queue="cpu", max_attempts=3) for i in range(jobs)]
    with catalog.begin() as s:
        _, ids = create_batch(s, rows, name="bench")
    old = utcnow() - timedelta(hours=1)
    with catalog.begin() as s:
        s.execute(update(Job).values(status=JobStatus.QUEUED, queued_at=old, created_at=old))
        s.execute(update(Job).where(Job.id == ids[0]).values(
            status=JobStatus.RUNNING, worker="w@h", heartbeat_at=utcnow()))
    publish_jobs(app, [(i, "cpu") for i in ids[1:]])


def _time(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def _measure(settings: Settings, jobs: int, repeat: int) -> tuple[float, float]:
    """(sweep, reconcile) median milliseconds on a catalog filled with ``jobs``."""
    catalog, app = Catalog(settings.catalog_url), create_app(settings)
    try:
        _fill(catalog, jobs, app)
        ours = _time(lambda: sweep(catalog, app, settings), repeat)
        peer = _time(lambda: reconcile(catalog, app, settings=settings), repeat)
        return ours, peer
    finally:
        catalog.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--redis", required=True, help="a Redis database this may flush")
    p.add_argument("--pg-admin-url", default=os.environ.get(
        "MONO_QUANT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = p.parse_args()
    print(f"sweep_cost: {args.jobs:,} queued jobs on the broker, median of {args.repeat}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'backend':10} {'sweep (ms)':>11} {'reconcile (ms)':>15} {'ratio':>6}")
    for backend in args.backends.split(","):
        client = redis.Redis.from_url(args.redis)
        client.flushdb()
        url, drop = scratch_catalog(backend, args.pg_admin_url)
        try:
            upgrade(url)
            settings = Settings.from_env({"MONO_QUANT_CATALOG_URL": url,
                                          "MONO_QUANT_BROKER_URL": args.redis})
            ours, peer = _measure(settings, args.jobs, args.repeat)
            print(f"{backend:10} {ours:11.1f} {peer:15.1f} {ours / peer:6.2f}", flush=True)
        finally:
            client.flushdb()
            drop()


if __name__ == "__main__":
    main()
