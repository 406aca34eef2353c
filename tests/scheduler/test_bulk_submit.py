"""Submitting big batches: counts, one transaction, and a broker that fails midway.

Real SQLite and PostgreSQL catalogs; a redis-server of the test's own whose ``maxmemory``
makes it refuse writes partway through publishing (a real broker failure: Redis answers
``OOM command not allowed``), then is given memory back for ``reconcile``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from sqlalchemy import event, func, select, text

from mono_quant.catalog import Batch, Catalog, Job, JobStatus
from mono_quant.config import Settings
from mono_quant.errors import BadConfigError, BadInputError, TransientError
from mono_quant.scheduler import publish as publish_module
from mono_quant.scheduler import service
from mono_quant.scheduler.service import reconcile, submit
from mono_quant.worker.app import create_app

MODEL = "mono_quant.demo_models:mlp"


@pytest.fixture
def catalog(catalog_url):
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.dispose()


@pytest.fixture
def broker(tmp_path):
    """A redis-server of this test's own (its memory limit is changed by the test)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0", client
    proc.terminate()
    proc.wait(timeout=10)


def _manifest(path: Path, models: int, *, bad_last: bool = False) -> Path:
    """``models`` models × a 2 × 2 matrix = 4 × ``models`` jobs."""
    jobs = [{"name": f"m{i}", "model": {"factory": MODEL, "kwargs": {"seed": i}}}
            for i in range(models)]
    if bad_last:
        jobs[-1]["mode"] = "static"  # without a calibration source: invalid
    path.write_text(json.dumps({"matrix": {"scheme": ["symmetric", "asymmetric"],
                                           "format": ["safetensors", "pt"]}, "jobs": jobs}))
    return path


def _messages(client: redis.Redis) -> Counter[int]:
    """Job id → number of messages for it on the broker's ``cpu`` queue."""
    return Counter(int(json.loads(raw)["headers"]["argsrepr"].strip("(),"))
                   for raw in client.lrange("cpu", 0, -1))


def _statuses(catalog: Catalog) -> dict[JobStatus, list[int]]:
    with catalog.begin() as s:
        rows = s.execute(select(Job.status, Job.id).order_by(Job.id)).all()
    out: dict[JobStatus, list[int]] = {}
    for status, job_id in rows:
        out.setdefault(status, []).append(job_id)
    return out


def _submit_through_a_failing_broker(catalog, broker, tmp_path, models: int) -> None:
    url, client = broker
    n = 4 * models
    settings = Settings.from_env({"MONO_QUANT_BROKER_URL": url,
                                 "MONO_QUANT_MAX_JOBS_PER_BATCH": str(4 * models)})
    app = create_app(settings)
    # enough memory for roughly a third of the messages (about 1 KB each)
    client.config_set("maxmemory", client.info("memory")["used_memory"] + n * 350)
    with pytest.raises(TransientError, match="stay pending"):
        submit(_manifest(tmp_path / "m.json", models), catalog, app=app, settings=settings)
    # every job was written, in one batch; those sent are queued, the rest pending
    with catalog.begin() as s:
        assert s.scalar(select(func.count()).select_from(Batch)) == 1
        assert s.scalar(select(func.count(func.distinct(Job.idempotency_key)))) == n
    statuses = _statuses(catalog)
    queued, pending = statuses.get(JobStatus.QUEUED, []), statuses.get(JobStatus.PENDING, [])
    assert len(queued) + len(pending) == n
    assert 0 < len(queued) < n, "the broker should have failed midway"
    on_broker = _messages(client)
    assert sorted(on_broker) == queued and set(on_broker.values()) == {1}
    # the broker is back: reconcile publishes exactly the pending ones
    client.config_set("maxmemory", 0)
    again = reconcile(catalog, app, settings=dataclasses.replace(settings, stale_after=0.0))
    assert again == pending
    on_broker = _messages(client)
    assert sorted(on_broker) == sorted(queued + pending)  # none lost
    assert set(on_broker.values()) == {1}  # none sent twice
    assert _statuses(catalog) == {JobStatus.QUEUED: sorted(queued + pending)}


def test_a_published_submit_writes_each_job_once_already_queued(catalog, broker, tmp_path):
    """The rows go in ``queued`` in the submit's transaction: no UPDATE of the jobs after the
    insert (re-writing every row cost as much as the insert), and every job's message is on
    the broker exactly once."""
    url, client = broker
    app = create_app(Settings.from_env({"MONO_QUANT_BROKER_URL": url}))
    statements: list[str] = []
    event.listen(catalog.engine, "before_cursor_execute",
                 lambda conn, cur, sql, *a: statements.append(sql))
    result = submit(_manifest(tmp_path / "m.json", 30), catalog, app=app)
    assert result.published == len(result.job_ids) == 120
    assert not [q for q in statements if q.lstrip().upper().startswith("UPDATE JOBS")]
    assert _statuses(catalog) == {JobStatus.QUEUED: sorted(result.job_ids)}
    with catalog.begin() as s:
        assert s.scalar(select(func.count()).select_from(Job)
                        .where(Job.queued_at != Job.created_at)) == 0
    on_broker = _messages(client)
    assert sorted(on_broker) == sorted(result.job_ids) and set(on_broker.values()) == {1}


def test_a_big_submit_leaves_its_jobs_countable_from_the_index_alone(
        catalog, catalog_url, tmp_path, monkeypatch):
    """PostgreSQL: after a submit of SETTLE_MIN_ROWS jobs (lowered here) the status counts are
    an index-only scan with no heap fetch (the pages were vacuumed); before, every fresh
    row was fetched from the heap (100,000 fetches, 130-170 ms, for a 100,000-job batch)."""
    if not catalog_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's visibility map; SQLite counts from the index anyway")
    monkeypatch.setattr(service, "SETTLE_MIN_ROWS", 40)
    result = submit(_manifest(tmp_path / "m.json", 10), catalog)
    with catalog.engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))  # the batch's index, as at 100,000
        plan = "\n".join(conn.execute(text(
            "EXPLAIN (ANALYZE, COSTS OFF) SELECT count(*) FROM jobs "
            "WHERE batch_id = :b AND status = 'pending'"), {"b": result.batch_id}).scalars())
    assert "Index Only Scan" in plan and "Heap Fetches: 0" in plan, plan


def test_a_broker_failure_midway_leaves_the_unsent_jobs_pending(
        catalog, broker, tmp_path, monkeypatch):
    monkeypatch.setattr(publish_module, "CHUNK", 500)
    _submit_through_a_failing_broker(catalog, broker, tmp_path, models=750)


def test_an_invalid_job_after_the_first_chunks_rolls_the_whole_batch_back(
        catalog, tmp_path, monkeypatch):
    monkeypatch.setattr(service, "SUBMIT_CHUNK", 40)
    with pytest.raises(BadInputError, match=r"jobs\[49\].*calibration"):
        submit(_manifest(tmp_path / "m.json", 50, bad_last=True), catalog)
    with catalog.begin() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).select_from(Batch)) == 0


def test_chunks_keep_duplicates_and_in_flight_keys_out(catalog, tmp_path, monkeypatch):
    monkeypatch.setattr(service, "SUBMIT_CHUNK", 7)
    first = submit(_manifest(tmp_path / "a.json", 5), catalog)
    assert len(first.job_ids) == 20 and first.job_ids == sorted(first.job_ids)
    path = tmp_path / "b.json"
    data = json.loads(_manifest(path, 8).read_text())
    data["jobs"].append({"name": "again", "model": data["jobs"][7]["model"]})
    path.write_text(json.dumps(data))
    second = submit(path, catalog)
    assert len(second.in_flight) == 20  # m0..m4: the first batch's jobs are still pending
    assert sorted(second.duplicates) == [f"again[scheme={s},format={f}]"
                                         for s in ("asymmetric", "symmetric")
                                         for f in ("pt", "safetensors")]
    assert len(second.job_ids) == 12
    with catalog.begin() as s:
        keys = s.scalars(select(Job.idempotency_key)).all()
    assert len(keys) == len(set(keys)) == 32


def test_a_submit_pauses_the_garbage_collector_and_restores_it(catalog, tmp_path, monkeypatch):
    during = []
    real = service.stream_manifest

    def spy(*args, **kwargs):
        during.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "stream_manifest", spy)
    assert gc.isenabled()
    submit(_manifest(tmp_path / "a.json", 2), catalog)
    with pytest.raises(BadInputError):
        submit(_manifest(tmp_path / "b.json", 2, bad_last=True), catalog)
    assert during == [False, False] and gc.isenabled()  # back on, after a failure too
    gc.disable()
    try:
        submit(_manifest(tmp_path / "c.json", 3), catalog)
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


def test_a_check_sees_each_job_once_and_its_error_rolls_the_batch_back(catalog, tmp_path,
                                                                       monkeypatch):
    """``submit(check=…)`` (the CLI's --strict serveability check) reads the manifest once:
    the check runs on the jobs as they stream through, not on a second expansion."""
    reads = []
    real = service.stream_manifest
    monkeypatch.setattr(service, "stream_manifest",
                        lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    manifest = _manifest(tmp_path / "m.json", 3)
    seen = []
    result = submit(manifest, catalog, check=lambda job: seen.append(job.name))
    assert len(reads) == 1 and len(seen) == 12 and len(set(seen)) == 12
    assert len(result.job_ids) == 12

    def refuse(job):
        if job.name.startswith("m1"):
            raise BadConfigError(f"{job.name}: not serveable (--strict)")

    with pytest.raises(BadConfigError, match=r"m1\[.*--strict"):
        submit(_manifest(tmp_path / "n.json", 3), catalog, force=True, check=refuse)
    with catalog.begin() as s:
        assert s.scalar(select(func.count()).select_from(Batch)) == 1  # the first one only


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_100k_jobs_submit_in_one_transaction_and_survive_a_broker_failure(
        catalog, broker, tmp_path):
    _submit_through_a_failing_broker(catalog, broker, tmp_path, models=25_000)


def test_a_sqlite_submit_checkpoints_after_its_commit_and_restores_the_setting(
        catalog, tmp_path, monkeypatch):
    """On SQLite the submit's commit leaves the write-ahead log's checkpoint (copying it into
    the database file and syncing it) to ``Catalog.checkpoint``, run on a thread of its own
    after the messages went out; the pooled connection checkpoints automatically again
    afterwards, also when the batch is rolled back."""
    if catalog.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL has no write-ahead log checkpoint to defer")
    order, commits = [], []
    real = Catalog.checkpoint
    monkeypatch.setattr(Catalog, "checkpoint", lambda self: order.append("checkpoint")
                        or real(self))

    @event.listens_for(catalog.engine, "commit")
    def _commit(conn):
        commits.append(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar())

    res = submit(_manifest(tmp_path / "m.json", 300), catalog)
    catalog.wait_checkpoint()  # it runs on a thread of its own
    assert len(res.job_ids) == 1200 and order == ["checkpoint"]
    assert 0 in commits  # the batch's own commit: no automatic checkpoint
    with catalog.engine.connect() as conn:
        busy, log, done = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
    assert (busy, log) == (0, done)
    monkeypatch.setattr(service, "SUBMIT_CHUNK", 40)
    with pytest.raises(BadInputError):
        submit(_manifest(tmp_path / "bad.json", 50, bad_last=True), catalog)
    with catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
