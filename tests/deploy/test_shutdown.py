"""Stopping a busy worker the way deploy/ does it loses no job.

deploy/ runs workers with ``REMAP_SIGTERM=SIGQUIT`` and ``MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT``
and stops them with SIGTERM to the main process (``docker stop``, pod termination,
``systemctl stop`` with ``KillMode=mixed``). Real workers, Redis and a catalog; the job's model
factory sleeps so the job is reliably running when the signal arrives.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from mono_quant.catalog import Artifact, Attempt, Catalog, Job, upgrade
from tests.deploy.conftest import cli, cli_env

pytestmark = pytest.mark.slow

SOFT = 3.0  # seconds of soft shutdown in these tests (deploy/ uses 300)


def manifest(tmp_path: Path, seconds: float) -> Path:
    marker = tmp_path / "slept-once"
    path = tmp_path / "jobs.yaml"
    path.write_text(f"""\
name: shutdown
defaults:
  device: cpu
  calibration: "factory:mono_quant.demo_models:vector_batches?n=2"
  samples: 16
jobs:
  - name: sleepy
    model: "factory:tests.deploy.slow_models:sleepy_mlp?seconds={seconds}&once={marker}"
""")
    return path


def job_rows(url: str):
    catalog = Catalog(url)
    try:
        with catalog.begin() as session:
            (job,) = session.scalars(select(Job)).all()
            attempts = [(a.number, a.outcome and a.outcome.value, a.worker)
                        for a in session.scalars(select(Attempt).order_by(Attempt.number))]
            artifacts = len(session.scalars(select(Artifact)).all())
            return job, attempts, artifacts
    finally:
        catalog.dispose()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop_like_docker(worker) -> float:
    """SIGTERM to the worker's main process only; seconds until it exited."""
    t0 = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(timeout=SOFT + 60)
    return time.monotonic() - t0


@pytest.fixture
def setup(redis_url, tmp_path):
    import redis

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    upgrade(url)
    env = cli_env(redis_url, url, tmp_path, REMAP_SIGTERM="SIGQUIT",
                  MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT=str(SOFT),
                  MONO_QUANT_HEARTBEAT_INTERVAL="1", MONO_QUANT_STALE_AFTER="3")
    client = redis.Redis.from_url(redis_url)
    yield url, env, client
    client.close()


def submit(tmp_path, env, seconds: float) -> None:
    out = cli("submit", str(manifest(tmp_path, seconds)), env=env)
    assert out.returncode == 0, out.stderr


def test_a_job_longer_than_the_soft_shutdown_goes_back_to_the_queue(
        setup, tmp_path, start_worker):
    url, env, redis = setup
    submit(tmp_path, env, seconds=300)
    first = start_worker("stop-a@%h", env)
    wait_until(lambda: job_rows(url)[0].status.value == "running", 90, "the job to run")
    # delivered: out of the list, into the unacked hash (why KEDA does not count it)
    assert (redis.llen("cpu"), redis.hlen("unacked")) == (0, 1)

    took = stop_like_docker(first)
    log = first.output()
    assert f"Initiating Soft Shutdown, terminating in {SOFT}" in log
    assert "Restoring 1 unacknowledged message(s)" in log
    assert SOFT <= took < SOFT + 30, took
    assert (redis.llen("cpu"), redis.hlen("unacked")) == (1, 0)  # back on the queue
    # the stopping worker handed its job back: queued, and the interrupted attempt not counted
    job, attempts, _ = job_rows(url)
    assert (job.status.value, job.attempts, job.worker) == ("queued", 0, None)
    assert [(n, o) for n, o, _ in attempts] == [(1, "lost")]

    # another worker claims it at once and finishes it
    start_worker("stop-b@%h", env)
    wait_until(lambda: job_rows(url)[0].status.value == "succeeded", 120, "the re-run")
    job, attempts, artifacts = job_rows(url)
    host = job.worker.split("@", 1)[1]
    assert job.worker == f"stop-b@{host}"
    assert attempts == [(1, "lost", f"stop-a@{host}"), (2, "succeeded", f"stop-b@{host}")]
    assert job.attempts == 1 and artifacts == 1
    assert (redis.llen("cpu"), redis.hlen("unacked")) == (0, 0)


def test_a_job_shorter_than_the_soft_shutdown_finishes(setup, tmp_path, start_worker):
    url, env, redis = setup
    env = {**env, "MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT": "10"}
    submit(tmp_path, env, seconds=3)
    worker = start_worker("stop-c@%h", env)
    wait_until(lambda: job_rows(url)[0].status.value == "running", 90, "the job to run")

    took = stop_like_docker(worker)
    assert "Initiating Soft Shutdown, terminating in 10.0" in worker.output()
    assert 10 <= took < 40, took  # Celery waits out the whole window
    job, attempts, artifacts = job_rows(url)
    assert (job.status.value, job.attempts, artifacts) == ("succeeded", 1, 1)
    assert [(n, o) for n, o, _ in attempts] == [(1, "succeeded")]
    assert (redis.llen("cpu"), redis.hlen("unacked")) == (0, 0)  # acknowledged
