"""The embedded runner (`mono-quant run`) and pipelined publishing."""

from __future__ import annotations

import json

import pytest
import redis
from sqlalchemy import select

from mono_quant.catalog import Catalog, Job, JobStatus
from mono_quant.config import Settings
from mono_quant.io.hashing import sha256_path
from tests.worker.harness import REPO, base_env, cli


def test_run_demo_manifest_without_any_server(tmp_path):
    env = base_env(MONO_QUANT_DATA_DIR=str(tmp_path / "data"),
                   MONO_QUANT_BROKER_URL="redis://127.0.0.1:1/0")  # nothing listens there
    env.pop("MONO_QUANT_CATALOG_URL", None)
    env.pop("MONO_QUANT_STORAGE_ROOT", None)
    out = cli("run", str(REPO / "examples" / "demo.yaml"), "--quiet", env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "deprecated" not in out.stderr  # the quick start shows no deprecated spelling
    assert "batch 1 (demo): 8 job(s): succeeded 8; 8 artifact(s)" in out.stdout
    s = Settings.from_env(env)
    assert s.catalog_url.startswith("sqlite:///") and (tmp_path / "data" / "catalog.db").exists()
    with Catalog(s.catalog_url).begin() as session:
        jobs = list(session.scalars(select(Job)))
        for job in jobs:
            assert job.status is JobStatus.SUCCEEDED
            assert job.artifact.sha256 == sha256_path(s.storage_root / job.artifact.storage_key)
    again = cli("run", str(REPO / "examples" / "demo.yaml"), "--quiet", env=env, timeout=300)
    assert again.returncode == 0 and again.stdout.count("exists (use --force to redo)") == 8


def test_run_retries_transient_failures_and_fails_with_exit_1(tmp_path):
    env = base_env(MONO_QUANT_DATA_DIR=str(tmp_path / "data"))
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(json.dumps({"jobs": [
        {"name": "flaky", "model": f"factory:tests.jobfixtures:flaky?marker={tmp_path / 'm'}"},
        {"name": "bad", "model": "factory:tests.jobfixtures:needs_file?path=/nonexistent"},
    ]}))
    out = cli("run", str(manifest), "--quiet", "--workers", "2", env=env, timeout=300)
    assert out.returncode == 1
    assert "failed 1" in out.stdout and "succeeded 1" in out.stdout
    assert "failed job 2 bad: [bad_input] /nonexistent: the weights file does not exist" \
        in out.stdout
    with Catalog(Settings.from_env(env).catalog_url).begin() as session:
        flaky = session.scalars(select(Job).where(Job.name == "flaky")).one()
        assert flaky.attempts == 2


def test_publishing_is_pipelined(monkeypatch):
    from celery import Celery

    from mono_quant.scheduler.publish import MessageTemplate, publish_jobs
    from tests.worker.harness import redis_db

    url = redis_db(9)
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis at {url} is unreachable: {e}")
    client.flushdb()
    events: list = []  # ("send", [(queue, messages) per LPUSH]) and ("read", reply)
    send, read = redis.connection.Connection.send_packed_command, \
        redis.connection.Connection.read_response

    def sending(self, command, *a, **kw):  # spies on the real connection: what goes out
        if isinstance(command, list) and command and b"LPUSH" in command[0][:24]:
            heads = [c.split(b"\r\n", 6) for c in command]  # *N, $5, LPUSH, $len, key, …
            events.append(("send", [(h[4].decode(), int(h[0][1:]) - 2) for h in heads]))
        return send(self, command, *a, **kw)

    def reading(self, *a, **kw):
        reply = read(self, *a, **kw)
        if events and isinstance(reply, int):
            events.append(("read", reply))
        return reply

    def rendering(self, job_ids):
        events.append(("render", self.key, len(job_ids)))
        return render(self, job_ids)

    render = MessageTemplate.lpush_command
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", sending)
    monkeypatch.setattr(redis.connection.Connection, "read_response", reading)
    monkeypatch.setattr(MessageTemplate, "lpush_command", rendering)
    app = Celery("t", broker=url)
    try:
        jobs = [(i, "cpu" if i % 2 else "gpu") for i in range(2500)]
        assert publish_jobs(app, jobs, chunk=1000) == 2500
        # one write per 1000 messages, one multi-value LPUSH per queue in each; the next
        # chunk is rendered while Redis stores one, whose replies (the lists' lengths) are
        # read before the next goes out: never more than one chunk unconfirmed
        first = [("render", "cpu", 500), ("render", "gpu", 500)]
        assert events == [
            *first, ("send", [("cpu", 500), ("gpu", 500)]),
            *first, ("read", 500), ("read", 500), ("send", [("cpu", 500), ("gpu", 500)]),
            ("render", "cpu", 250), ("render", "gpu", 250), ("read", 1000), ("read", 1000),
            ("send", [("cpu", 250), ("gpu", 250)]), ("read", 1250), ("read", 1250)]
        assert client.llen("cpu") == 1250 and client.llen("gpu") == 1250
        message = json.loads(client.lindex("gpu", -1))  # the first one published
        assert message["headers"]["task"] == "mono_quant.run_job"
        assert message["headers"]["argsrepr"] == "(0,)"
    finally:
        client.flushdb()


def test_a_job_that_kills_its_process_does_not_stop_the_run(tmp_path):
    env = base_env(MONO_QUANT_DATA_DIR=str(tmp_path / "data"))
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(json.dumps({"jobs": [
        {"name": "crash", "model": "factory:tests.jobfixtures:crash", "max_attempts": 2},
        {"name": "fine", "model": "factory:tests.jobfixtures:tiny"},
    ]}))
    out = cli("run", str(manifest), "--quiet", env=env, timeout=300)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    with Catalog(Settings.from_env(env).catalog_url).begin() as session:
        jobs = {j.name: j for j in session.scalars(select(Job))}
        assert jobs["fine"].status is JobStatus.SUCCEEDED
        crash = jobs["crash"]
        assert crash.status is JobStatus.FAILED and crash.error_kind.value == "poison"
        assert [a.outcome.value for a in crash.attempt_rows] == ["lost", "lost"]
