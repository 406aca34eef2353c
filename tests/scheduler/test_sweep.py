"""The workers' reconcile sweep on SQLite and PostgreSQL, with a real Redis broker: one sweep
at a time, dead workers' jobs re-queued and published, final jobs' unacked entries dropped."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import timedelta

import pytest
import redis
from sqlalchemy import update

from mono_quant.catalog import Catalog, Job, JobStatus
from mono_quant.catalog.batches import JobRow, create_batch
from mono_quant.catalog.locks import try_sweep_lock
from mono_quant.catalog.types import utcnow
from mono_quant.config import Settings
from mono_quant.scheduler.broker import message_job_id
from mono_quant.scheduler.sweep import sweep
from tests.worker.harness import base_env, redis_db

BROKER = redis_db(14)


@pytest.fixture
def catalog(catalog_url):
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.dispose()


@pytest.fixture
def broker():
    client = redis.Redis.from_url(BROKER)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis at {BROKER} is unreachable: {e}")
    client.flushdb()
    yield client
    client.flushdb()


def _jobs(catalog, n: int) -> list[int]:
    rows = [JobRow(name=f"j{i}", model_source="factory:m:f", model_source_json={"i": i},
                   spec={"i": i}, idempotency_key=hashlib.sha256(b"%d" % i).hexdigest(),
                   queue="cpu", max_attempts=3) for i in range(n)]
    with catalog.begin() as s:
        return create_batch(s, rows, name="b")[1]


def _set(catalog, job_id: int, **values) -> None:
    with catalog.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def _unacked(client, tag: str, job_id: int) -> None:
    """An entry as kombu writes it on delivery: [message, exchange, routing key]."""
    message = {"headers": {"task": "mono_quant.run_job", "argsrepr": f"({job_id},)"},
               "body": "", "properties": {"delivery_tag": tag}}
    client.hset("unacked", tag, json.dumps([message, "", "cpu"]))
    client.zadd("unacked_index", {tag: time.time()})


def test_one_sweep_lock_at_a_time(catalog, backend):
    first = catalog.Session()
    second = catalog.Session()
    try:
        assert try_sweep_lock(first) is True
        if backend == "postgresql":  # the holder is sweeping: skip this turn
            assert try_sweep_lock(second) is False
            second.rollback()
            first.commit()
            assert try_sweep_lock(second) is True
            return
        got: list[float] = []  # SQLite: the second waits for the first to commit
        waiter = threading.Thread(target=lambda: got.append(
            try_sweep_lock(second) and time.monotonic()))
        waiter.start()
        time.sleep(0.5)
        assert got == []  # still waiting while the first holds the lock
        released = time.monotonic()
        first.commit()
        waiter.join(timeout=10)
        assert got and got[0] >= released
    finally:
        first.close()
        second.close()


def test_sweep_requeues_dead_workers_jobs_and_drops_final_unacked(catalog, broker, backend):
    settings = Settings.from_env(base_env(MONO_QUANT_CATALOG_URL=catalog.url,
                                          MONO_QUANT_BROKER_URL=BROKER))
    dead, alive, done = _jobs(catalog, 3)
    old = utcnow() - timedelta(seconds=settings.stale_after + 5)
    _set(catalog, dead, status=JobStatus.RUNNING, worker="w1@h", heartbeat_at=old,
         queued_at=old, created_at=old)
    _set(catalog, alive, status=JobStatus.RUNNING, worker="w2@h", heartbeat_at=utcnow(),
         queued_at=old, created_at=old)
    _set(catalog, done, status=JobStatus.SUCCEEDED, created_at=old)
    for tag, job_id in (("t-dead", dead), ("t-alive", alive), ("t-done", done)):
        _unacked(broker, tag, job_id)
    from mono_quant.worker.app import create_app

    app = create_app(settings)
    result = sweep(catalog, app, settings)
    assert result.requeued == (dead,) and result.pruned == 1 and not result.skipped
    assert [message_job_id(m) for m in broker.lrange("cpu", 0, -1)] == [dead]
    assert sorted(broker.hkeys("unacked")) == [b"t-alive", b"t-dead"]
    assert sorted(broker.zrange("unacked_index", 0, -1)) == [b"t-alive", b"t-dead"]
    with catalog.begin() as s:
        assert s.get(Job, dead).status is JobStatus.QUEUED
        assert s.get(Job, alive).status is JobStatus.RUNNING
    again = sweep(catalog, app, settings)  # nothing left to do
    assert again.requeued == () and again.pruned == 0
    if backend == "postgresql":  # while another sweep holds the lock, this one skips
        holder = catalog.Session()
        try:
            assert try_sweep_lock(holder)
            assert sweep(catalog, app, settings).skipped
        finally:
            holder.close()
