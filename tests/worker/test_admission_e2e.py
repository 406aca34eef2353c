"""Admission through a real Celery worker (subprocess), real Redis and PostgreSQL: a CPU job
that does not fit the host's memory now goes back to the queue, again and again, without an
attempt being counted, and runs once the memory is released.

No mocks: the host's memory is really read from /proc/meminfo, and "not now" is made real by
this test process holding a reservation of almost all of it in the worker's ledger (as a
running job would).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from mono_quant.catalog import AttemptOutcome, Catalog, Job, JobStatus
from mono_quant.worker.admission import DeviceMemory, Estimate, _meminfo
from mono_quant.worker.reservations import Ledger
from tests.catalog.backends import _temporary_database
from tests.io.hf_fixture import make_hf_folder
from tests.worker.harness import Worker, base_env, cli, flush, redis_db, wait_until

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

BROKER = redis_db(15)


@pytest.fixture
def env(pg_server, tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed (the 'hf' extra)")
    if "MemAvailable" not in _meminfo():
        pytest.skip("no /proc/meminfo: CPU admission admits every job here")
    try:
        redis.Redis.from_url(BROKER).ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis at {BROKER} is unreachable: {e}")
    flush(BROKER)
    with _temporary_database("_admission") as url:
        e = base_env(MONO_QUANT_BROKER_URL=BROKER, MONO_QUANT_CATALOG_URL=url,
                     MONO_QUANT_STORAGE_ROOT=str(tmp_path / "store"),
                     MONO_QUANT_DATA_DIR=str(tmp_path / "data"),
                     MONO_QUANT_ADMISSION_RETRY="0.5")
        out = cli("db", "upgrade", env=e)
        assert out.returncode == 0, out.stderr
        yield e
    flush(BROKER)


def _job(env) -> Job:
    catalog = Catalog(env["MONO_QUANT_CATALOG_URL"])
    with catalog.begin() as s:
        job = s.scalars(select(Job)).one()
        _ = job.attempt_rows
    catalog.dispose()
    return job


def _waits(log: Path) -> int:
    return log.read_text(errors="replace").count('"verdict": "wait"')


def test_a_job_waiting_for_memory_is_requeued_without_attempts_then_runs(env, tmp_path):
    model = make_hf_folder(tmp_path / "tiny-llama")
    total = _meminfo()["MemTotal"]
    ledger = Ledger(Path(env["MONO_QUANT_DATA_DIR"]) / "admission", "cpu")
    host = DeviceMemory("cpu", "host", total=total, free=total)
    held = ledger.admit(Estimate("in_memory", {"another job": total - (64 << 20)}), host,
                        job_id=10**9, pid=os.getpid())  # 64 MiB left: the job needs more
    assert held.verdict.value == "admit"
    manifest = tmp_path / "jobs.yaml"
    # stream: false: left unset, this weight-only llama would stream, which bounds its own
    # memory and so is admitted without an estimate
    manifest.write_text(json.dumps({"defaults": {"queue": "cpu"},
                                    "jobs": [{"name": "llama", "model": f"hf:{model}",
                                              "stream": False}]}))
    worker = Worker("w1@admission", env, tmp_path)
    try:
        worker.wait_ready()
        out = cli("submit", str(manifest), "--quiet", env=env)
        assert out.returncode == 0, out.stderr
        wait_until(lambda: _waits(worker.log_path) >= 3, 90, what="three admission waits")
        job = _job(env)
        assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.attempt_rows == []
        ledger.release(10**9)
        done = wait_until(lambda: (j := _job(env)).status is JobStatus.SUCCEEDED and j, 120,
                          interval=0.5, what="the job to succeed")
    finally:
        worker.stop()
    assert done.attempts == 1
    assert [a.outcome for a in done.attempt_rows] == [AttemptOutcome.SUCCEEDED]
    assert ledger.reserved() == {}  # the job released its reservation
    assert "available now" in worker.log_path.read_text(errors="replace")
