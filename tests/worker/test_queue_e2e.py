"""The batch system end to end: real Redis, real PostgreSQL, real worker processes.

Workers are ``mono-quant worker`` subprocesses against Redis database 12 of the server on this
machine (flushed before and after each test); the Redis-restart test starts its own
redis-server on a free port. The catalog is a throwaway PostgreSQL database.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select, text

from mono_quant.catalog import Artifact, AttemptOutcome, Catalog, Job, JobStatus
from mono_quant.io.hashing import sha256_path
from tests.catalog.backends import _temporary_database
from tests.worker.harness import Worker, base_env, cli, flush, redis_db, wait_until

pytestmark = pytest.mark.timeout(240)

BROKER = redis_db(12)


@pytest.fixture(scope="module")
def pg_url(pg_server):
    with _temporary_database("_queue") as url:
        yield url


@pytest.fixture
def env(pg_url, tmp_path):
    try:
        redis.Redis.from_url(BROKER).ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis at {BROKER} is unreachable: {e}")
    flush(BROKER)
    e = base_env(MONO_QUANT_BROKER_URL=BROKER, MONO_QUANT_CATALOG_URL=pg_url,
                 MONO_QUANT_STORAGE_ROOT=str(tmp_path / "store"),
                 MONO_QUANT_DATA_DIR=str(tmp_path / "data"))
    out = cli("db", "upgrade", env=e)
    assert out.returncode == 0, out.stderr
    catalog = Catalog(pg_url)
    with catalog.begin() as s:  # each test starts from an empty catalog, ids from 1
        s.execute(text("TRUNCATE artifacts, attempts, jobs, batches RESTART IDENTITY CASCADE"))
    catalog.dispose()
    yield e
    flush(BROKER)


@pytest.fixture
def workers(env, tmp_path):
    started: list[Worker] = []

    def start(name: str, *extra: str, environ: dict | None = None) -> Worker:
        w = Worker(name, environ or env, tmp_path, *extra)
        started.append(w)
        w.wait_ready()
        return w

    yield start
    for w in started:
        w.stop()


def _manifest(path: Path, jobs: list[dict], **top) -> Path:
    path.write_text(json.dumps({"defaults": {"device": "cpu"}, **top, "jobs": jobs}))
    return path


def _jobs(env) -> list[Job]:
    catalog = Catalog(env["MONO_QUANT_CATALOG_URL"])
    with catalog.begin() as s:
        jobs = list(s.scalars(select(Job).order_by(Job.id)))
        for j in jobs:
            _ = j.attempt_rows, j.artifact
    catalog.dispose()
    return jobs


def _wait_final(env, n: int, timeout: float = 120) -> list[Job]:
    final = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    return wait_until(lambda: (jobs := _jobs(env)) and len(jobs) == n
                      and all(j.status in final for j in jobs) and jobs,
                      timeout, interval=0.5, what=f"{n} jobs to finish")


def _no_temporaries(root: Path) -> None:
    assert not [p for p in root.rglob(".*.tmp")], "temporary files left in storage"


def test_batch_of_20_across_two_workers(env, workers, tmp_path):
    jobs = [{"name": f"m{i}", "model": f"factory:tests.jobfixtures:tiny?seed={i}"}
            for i in range(10)]
    manifest = _manifest(tmp_path / "jobs.yaml", jobs,
                         matrix={"scheme": ["symmetric", "asymmetric"]})
    workers("w1@e2e")
    workers("w2@e2e")
    out = cli("submit", str(manifest), "--wait", "--quiet", env=env)
    assert out.returncode == 0, out.stderr
    assert "batch 1: 20 job(s) enqueued" in out.stderr
    done = _jobs(env)
    assert len(done) == 20 and all(j.status is JobStatus.SUCCEEDED for j in done)
    assert {j.worker for j in done} == {"w1@e2e", "w2@e2e"}  # both took work
    root = Path(env["MONO_QUANT_STORAGE_ROOT"])
    for j in done:  # the catalog row matches the file
        a = j.artifact
        assert a is not None and a.sha256 == sha256_path(root / a.storage_key)
        assert [x.outcome for x in j.attempt_rows] == [AttemptOutcome.SUCCEEDED]
    _no_temporaries(root)
    status = json.loads(cli("status", "1", "--json", env=env).stdout)
    assert status["counts"] == {"succeeded": 20} and status["artifacts"] == 20
    listed = json.loads(cli("catalog", "list", "--batch", "1", "--json", "--limit", "0",
                            env=env).stdout)
    assert len(listed) == 20
    verify = cli("catalog", "verify", "--all", env=env)
    assert verify.returncode == 0 and "20 ok" in verify.stdout


def test_bad_model_fails_once_the_rest_succeeds(env, workers, tmp_path):
    manifest = _manifest(tmp_path / "jobs.yaml", [
        {"name": "good", "model": "factory:tests.jobfixtures:tiny"},
        {"name": "bad", "model": "factory:tests.jobfixtures:no_such_factory"},
        {"name": "good2", "model": "factory:tests.jobfixtures:tiny?seed=2"},
        {"name": "exits", "model": "factory:tests.jobfixtures:exits?code=4"},
    ])
    w = workers("w1@e2e")
    out = cli("submit", str(manifest), "--wait", "--quiet", env=env)
    assert out.returncode == 1  # a job failed
    by_name = {j.name: j for j in _jobs(env)}
    bad = by_name["bad"]
    assert bad.status is JobStatus.FAILED and bad.error_kind.value == "bad_input"
    assert "no_such_factory" in bad.last_error
    assert bad.attempts == 1 and len(bad.attempt_rows) == 1  # not retried
    assert by_name["good"].status is by_name["good2"].status is JobStatus.SUCCEEDED
    assert "failed job" in out.stdout and "no_such_factory" in out.stdout
    exits = by_name["exits"]  # sys.exit in a factory fails its job, not the worker
    assert exits.status is JobStatus.FAILED and exits.error_kind.value == "internal"
    assert "the job's own code raised SystemExit(4)" in exits.last_error
    assert [a.outcome for a in exits.attempt_rows] == [AttemptOutcome.FAILED]
    assert w.proc.poll() is None


def test_transient_failure_succeeds_on_retry(env, workers, tmp_path):
    marker = tmp_path / "flaky-marker"
    manifest = _manifest(tmp_path / "jobs.yaml", [
        {"name": "flaky", "model": f"factory:tests.jobfixtures:flaky?marker={marker}"}])
    workers("w1@e2e")
    assert cli("submit", str(manifest), "--wait", "--quiet", env=env).returncode == 0
    (job,) = _jobs(env)
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 2
    first, second = job.attempt_rows
    assert (first.outcome, first.error_kind.value) == (AttemptOutcome.FAILED, "transient")
    assert second.outcome is AttemptOutcome.SUCCEEDED


def test_sigkill_of_a_running_worker_completes_exactly_once(env, workers, tmp_path):
    """The operator's path: workers that do not sweep, and `mono-quant reconcile` by hand."""
    env["MONO_QUANT_RECONCILE_INTERVAL"] = "0"
    marker = tmp_path / "slow-marker"
    manifest = _manifest(tmp_path / "jobs.yaml", [
        {"name": "slow", "model": f"factory:tests.jobfixtures:slow_first?marker={marker}"}])
    doomed = workers("w1@e2e")
    assert cli("submit", str(manifest), env=env).returncode == 0
    wait_until(marker.exists, 60, what="the job to start")
    doomed.kill(signal.SIGKILL)  # the worker and its pool child, mid-job
    doomed.proc.wait(timeout=10)
    (job,) = _jobs(env)
    assert job.status is JobStatus.RUNNING  # what a dead worker leaves behind
    shown = cli("status", env=env).stdout
    assert f"running job {job.id} slow: loading on w1@e2e (cpu), attempt 1" in shown
    workers("w2@e2e")
    # the heartbeat goes stale (3 s); reconcile re-enqueues the job for the new worker
    time.sleep(3.5)
    shown = cli("status", env=env).stdout
    assert re.search(rf"running job {job.id} slow: loading on w1@e2e \(cpu\), attempt 1, "
                     r"heartbeat (\d+\.\d) s ago - STALE: its worker is presumed dead", shown)
    out = cli("reconcile", env=env)
    assert out.returncode == 0 and "re-enqueued 1 job(s)" in out.stdout, out.stdout + out.stderr
    (job,) = _wait_final(env, 1)
    assert job.status is JobStatus.SUCCEEDED and job.worker == "w2@e2e"
    assert [a.outcome for a in job.attempt_rows] == [AttemptOutcome.LOST,
                                                     AttemptOutcome.SUCCEEDED]
    catalog = Catalog(env["MONO_QUANT_CATALOG_URL"])
    with catalog.begin() as s:
        assert s.scalar(select(func.count()).select_from(Artifact)) == 1
    root = Path(env["MONO_QUANT_STORAGE_ROOT"])
    assert len([p for p in root.rglob("*.safetensors")]) == 1
    _no_temporaries(root)


def test_killed_pool_child_is_redelivered_and_a_crashing_job_is_poison(env, workers, tmp_path):
    marker = tmp_path / "slow-marker"
    manifest = _manifest(tmp_path / "jobs.yaml", [
        {"name": "slow", "model": f"factory:tests.jobfixtures:slow_first?marker={marker}"},
        {"name": "crash", "model": "factory:tests.jobfixtures:crash", "max_attempts": 2},
    ])
    w = workers("w1@e2e")
    assert cli("submit", str(manifest), env=env).returncode == 0
    wait_until(marker.exists, 60, what="the slow job to start")
    (child,) = w.children()
    subprocess.run(["kill", "-9", str(child)], check=True)  # the OOM killer, say
    by_name = {j.name: j for j in _wait_final(env, 2, timeout=120)}
    slow, crash = by_name["slow"], by_name["crash"]
    # task_reject_on_worker_lost put the message back; the same node reclaimed the job
    assert slow.status is JobStatus.SUCCEEDED and slow.attempts == 2
    assert crash.status is JobStatus.FAILED and crash.error_kind.value == "poison"
    assert [a.outcome for a in crash.attempt_rows] == [AttemptOutcome.LOST] * 2
    assert w.proc.poll() is None  # the worker itself survived all of it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server(port: int, tmp_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: _ping(port), 10, what=f"redis-server on port {port}")
    return proc


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port).ping())
    except redis.RedisError:
        return False


def test_reconcile_after_a_redis_restart_lost_the_queue(env, workers, tmp_path):
    port = _free_port()
    server = _redis_server(port, tmp_path)
    # the operator's path (workers that sweep re-publish the lost messages by themselves)
    own = dict(env, MONO_QUANT_BROKER_URL=f"redis://127.0.0.1:{port}/0",
               MONO_QUANT_RECONCILE_INTERVAL="0")
    try:
        manifest = _manifest(tmp_path / "jobs.yaml", [
            {"name": f"m{i}", "model": f"factory:tests.jobfixtures:tiny?seed={i}"}
            for i in range(4)])
        assert cli("submit", str(manifest), env=own).returncode == 0
        assert redis.Redis(port=port).llen("cpu") == 4
        server.terminate()  # no persistence: the queued messages are gone
        server.wait(timeout=10)
        server = _redis_server(port, tmp_path)
        assert redis.Redis(port=port).llen("cpu") == 0
        workers("w1@e2e", environ=own)
        time.sleep(3.5)  # older than MONO_QUANT_STALE_AFTER
        out = cli("reconcile", env=own)
        assert "re-enqueued 4 job(s)" in out.stdout, out.stdout + out.stderr
        jobs = _wait_final(own, 4)
        assert all(j.status is JobStatus.SUCCEEDED for j in jobs)
        assert all(len(j.attempt_rows) == 1 for j in jobs)  # none ran twice
        again = cli("reconcile", env=own)
        assert "re-enqueued 0 job(s)" in again.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_retry_after_the_cause_is_fixed_and_cancel_of_queued_jobs(env, workers, tmp_path):
    weights = tmp_path / "weights-ready"
    manifest = _manifest(tmp_path / "jobs.yaml", [
        {"name": "needs", "model": f"factory:tests.jobfixtures:needs_file?path={weights}"}])
    workers("w1@e2e")
    assert cli("submit", str(manifest), "--wait", "--quiet", env=env).returncode == 1
    (job,) = _jobs(env)
    assert job.status is JobStatus.FAILED and job.error_kind.value == "bad_input"
    weights.write_text("ok")  # the cause is fixed
    out = cli("retry", "--batch", "1", env=env)  # bad input is not retried blindly
    assert out.returncode == 0 and "re-enqueued 0 job(s)" in out.stdout
    out = cli("retry", "--batch", "1", "--include-bad-input", env=env)
    assert out.returncode == 0 and "re-enqueued 1 job(s)" in out.stdout
    (job,) = _wait_final(env, 1)
    assert job.status is JobStatus.SUCCEEDED and len(job.attempt_rows) == 2

    # queued jobs on a queue no worker consumes yet: cancel them, then start a worker there
    parked = _manifest(tmp_path / "parked.yaml", [
        {"name": f"p{i}", "model": f"factory:tests.jobfixtures:tiny?seed={i + 10}"}
        for i in range(3)], defaults={"device": "gpu.parked"})
    assert cli("submit", str(parked), env=env).returncode == 0
    out = cli("cancel", "2", env=env)
    assert out.returncode == 0 and "cancelled 3 job(s)" in out.stdout
    workers("w2@e2e", "--queues", "gpu.parked")
    wait_until(lambda: redis.Redis.from_url(BROKER).llen("gpu.parked") == 0, 30,
               what="the parked messages to be consumed")
    time.sleep(1)
    parked_jobs = [j for j in _jobs(env) if j.batch_id == 2]
    assert all(j.status is JobStatus.CANCELLED and not j.attempt_rows for j in parked_jobs)


def test_cancel_revokes_a_running_job(env, workers, tmp_path):
    marker = tmp_path / "slow-marker"
    manifest = _manifest(tmp_path / "jobs.yaml", [
        {"name": "slow", "model": f"factory:tests.jobfixtures:slow_first?marker={marker}"}])
    w = workers("w1@e2e")
    assert cli("submit", str(manifest), env=env).returncode == 0
    wait_until(marker.exists, 60, what="the job to start")
    (child,) = w.children()
    out = cli("cancel", "1", env=env)
    assert out.returncode == 0 and "cancelled 1 job(s)" in out.stdout
    wait_until(lambda: child not in w.children(), 30, what="the job's process to be terminated")
    time.sleep(1)  # the redelivered message meets a cancelled job: nothing runs
    (job,) = _jobs(env)
    assert job.status is JobStatus.CANCELLED and job.artifact is None
    assert [a.outcome for a in job.attempt_rows] == [AttemptOutcome.CANCELLED]
    assert w.proc.poll() is None


def test_invalid_manifest_enqueues_nothing_and_names_the_field(env, tmp_path):
    manifest = _manifest(tmp_path / "bad.yaml", [
        {"name": "ok", "model": "factory:tests.jobfixtures:tiny"},
        {"name": "broken", "model": "factory:tests.jobfixtures:tiny", "calibration": 5},
    ])
    out = cli("submit", str(manifest), env=env)
    assert out.returncode == 2
    assert f"{manifest}: jobs[1].calibration" in out.stderr
    assert _jobs(env) == []
    assert redis.Redis.from_url(BROKER).llen("cpu") == 0


def test_a_whole_worker_killed_is_recovered_by_a_peer_without_reconcile(env, workers, tmp_path):
    """No reconcile process: the surviving worker's own sweep re-runs the job within
    STALE_AFTER (3 s here) plus one sweep (the heartbeat interval, 0.5 s here)."""
    from mono_quant.scheduler.metrics import MetricsSource

    marker = tmp_path / "slow-marker"
    manifest = _manifest(tmp_path / "jobs.yaml", [
        {"name": "slow", "model": f"factory:tests.jobfixtures:slow_first?marker={marker}"}])
    started = {w.name: w for w in (workers("w1@e2e"), workers("w2@e2e"))}
    waiter = subprocess.Popen(
        [sys.executable, "-m", "mono_quant.scheduler.cli", "submit", str(manifest), "--wait",
         "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(marker.exists, 60, what="the job to start")
    (job,) = _jobs(env)
    doomed = started[job.worker]
    (peer,) = [w for name, w in started.items() if name != job.worker]
    doomed.kill(signal.SIGKILL)  # the main process and its pool child: nobody hands it back
    killed_at = time.monotonic()
    killed_utc = datetime.now(timezone.utc)
    doomed.proc.wait(timeout=10)
    stdout, stderr = waiter.communicate(timeout=90)  # submit --wait finishes by itself
    assert waiter.returncode == 0, stdout + stderr
    (job,) = _jobs(env)
    assert job.status is JobStatus.SUCCEEDED and job.worker == peer.name
    assert [a.outcome for a in job.attempt_rows] == [AttemptOutcome.LOST,
                                                     AttemptOutcome.SUCCEEDED]
    requeued = (job.queued_at - killed_utc).total_seconds()  # the sweep set queued_at
    claimed = (job.attempt_rows[1].started_at - killed_utc).total_seconds()
    # stale 3 s after the last heartbeat (at most 0.5 s before the kill), then one sweep
    # (0.5 s ± 20 %); 2 s of slack for a loaded machine. The claim comes after the peer's
    # pool child imported torch for its first job (seconds on a busy CI machine).
    assert 2.5 < requeued < 3 + 0.6 + 2, requeued
    print(f"re-enqueued by a sweep {requeued:.1f} s after the kill, claimed by {peer.name} "
          f"after {claimed:.1f} s; --wait returned after {time.monotonic() - killed_at:.1f} s")
    source = MetricsSource(env["MONO_QUANT_CATALOG_URL"], BROKER, queues=["cpu"], timeout=5)
    try:  # the dead worker's unacknowledged message does not linger until its visibility
        wait_until(lambda: source.queue_lengths(["cpu"]) == ({"cpu": 0}, 0), 10,
                   what="the unacked-messages gauge to return to 0")
    finally:
        source.close()
    assert peer.proc.poll() is None


def _capture_events(env) -> tuple[list[dict], object]:
    """Celery events as Flower and celery-exporter receive them, collected in a thread;
    returns the growing list and a function that stops the capture."""
    import threading

    from mono_quant.config import Settings
    from mono_quant.worker.app import create_app

    app, seen = create_app(Settings.from_env(env)), []
    conn = app.connection_for_read()
    receiver = app.events.Receiver(conn, handlers={"*": seen.append})
    thread = threading.Thread(target=receiver.capture, kwargs={"limit": None}, daemon=True)
    thread.start()

    def stop() -> None:
        receiver.should_stop = True
        thread.join(10)
        conn.release()

    return seen, stop


def test_task_events_off_until_a_monitor_turns_them_on(env, workers, tmp_path):
    """MONO_QUANT_TASK_EVENTS=off: the worker sends worker events only, so Flower's periodic
    ``enable_events`` broadcast (what Flower does by default) turns task events on at run
    time; celery-exporter, which sends no such broadcast, needs the setting on."""
    from mono_quant.config import Settings
    from mono_quant.worker.app import create_app

    env["MONO_QUANT_TASK_EVENTS"] = "off"
    workers("w1@e2e")
    seen, stop = _capture_events(env)
    try:  # subscribed once the worker's heartbeat (every 2 s) comes through
        wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in seen), 15,
                   what="a worker heartbeat")
        for i, expect_events in ((0, False), (1, True)):
            manifest = _manifest(tmp_path / f"jobs{i}.yaml", [
                {"name": f"m{i}", "model": f"factory:tests.jobfixtures:tiny?seed={i}"}])
            assert cli("submit", str(manifest), "--wait", "--quiet", env=env).returncode == 0
            if expect_events:
                wait_until(lambda: sum(e["type"] == "task-succeeded" for e in seen) == 1, 10,
                           what="task events after enable_events")
            else:
                time.sleep(1)  # task events are flushed at once: none may come
                assert not [e for e in seen if e["type"].startswith("task-")]
                app = create_app(Settings.from_env(env))
                assert app.control.enable_events(reply=True, timeout=2) == [
                    {"w1@e2e": {"ok": "task events enabled"}}]
        assert [e["type"] for e in seen if e["type"].startswith("task-")] == [
            "task-received", "task-started", "task-succeeded"]
    finally:
        stop()
