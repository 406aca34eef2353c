"""``mono-quant metrics``: the real endpoint scraped over HTTP, checked against a reference."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from mono_quant.catalog import Attempt, AttemptOutcome, Batch, Catalog, Job, JobStatus
from mono_quant.scheduler.metrics import format_family
from tests.catalog import seed as seedmod
from tests.deploy.conftest import REPO, cli, cli_env

pytestmark = pytest.mark.slow

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """The samples of a text exposition; checks every family is declared before its samples."""
    declared: dict[str, set[str]] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# "):
            kind, name, rest = line[2:].split(" ", 2)
            declared.setdefault(name, set()).add(kind)
            if kind == "TYPE":
                assert rest in ("gauge", "counter"), line
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        assert declared.get(name) == {"HELP", "TYPE"}, f"{name} used before HELP and TYPE"
        key = (name, frozenset(_LABEL.findall(labels or "")))
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(value)
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def seed_catalog(url: str) -> tuple[Counter, int, Counter]:
    """Seeded artifacts (queue cpu) + GPU jobs in flight; returns the reference counts."""
    catalog = Catalog(url)
    with catalog.begin() as session:
        records = seedmod.seed(session)
        batch = Batch(name="gpu-batch")
        extra = [JobStatus.PENDING, JobStatus.QUEUED, JobStatus.QUEUED, JobStatus.RUNNING]
        jobs = [Job(batch=batch, name=f"g{i}", model_source="hf:org/x@main", spec={},
                    idempotency_key=f"{i:064x}", queue="gpu.h100", status=status)
                for i, status in enumerate(extra)]
        session.add_all(jobs)
        session.flush()
        outcomes = [AttemptOutcome.LOST, AttemptOutcome.FAILED, None]  # the last one runs
        session.add_all(Attempt(job_id=jobs[3].id, number=n + 1, outcome=o)
                        for n, o in enumerate(outcomes))
    catalog.dispose()
    jobs_ref = Counter(("cpu", r["job_status"]) for r in records)
    jobs_ref.update(("gpu.h100", s.value) for s in extra)
    attempts_ref = Counter({"lost": 1, "failed": 1, "running": 1})
    return jobs_ref, len(records), attempts_ref


def fill_broker(redis_url: str, lengths: dict[str, int], unacked: int) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    for queue, n in lengths.items():
        for i in range(n):
            client.lpush(queue, json.dumps({"body": f"fake-{i}"}))
    for i in range(unacked):
        client.hset("unacked", f"tag-{i}", "[]")
    client.close()


def start_server(env) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mono_quant.scheduler.cli", "metrics", "--port", "0",
         "--host", "127.0.0.1", "--queue", "extra.q"],
        env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()  # "serving metrics on http://127.0.0.1:PORT/metrics"
    m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
    if not m:
        proc.kill()
        raise AssertionError(f"no address announced: {line!r} {proc.stderr.read()}")
    return proc, f"http://127.0.0.1:{m.group(1)}"


def scrape(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_scrape_matches_catalog_and_broker(redis_url, catalog_url, tmp_path):
    jobs_ref, n_artifacts, attempts_ref = seed_catalog(catalog_url)
    fill_broker(redis_url, {"gpu.h100": 3, "cpu": 1}, unacked=2)
    proc, base = start_server(cli_env(redis_url, catalog_url, tmp_path))
    try:
        status, ctype, text = scrape(base + "/metrics")
        assert (status, ctype) == (200, "text/plain; version=0.0.4; charset=utf-8")
        s = parse(text)
        assert value(s, "mono_quant_up", component="catalog") == 1
        assert value(s, "mono_quant_up", component="broker") == 1
        states = [st.value for st in JobStatus]
        for queue in ("cpu", "gpu", "gpu.h100", "extra.q"):  # every state of every queue
            for state in states:
                assert value(s, "mono_quant_jobs", queue=queue, state=state) == \
                    jobs_ref[(queue, state)], (queue, state)
        assert sum(v for (n, _), v in s.items() if n == "mono_quant_jobs") == \
            sum(jobs_ref.values())
        for outcome in ("running", *(o.value for o in AttemptOutcome)):
            assert value(s, "mono_quant_attempts", outcome=outcome) == attempts_ref[outcome]
        assert value(s, "mono_quant_artifacts") == n_artifacts == 72
        assert {q: value(s, "mono_quant_queue_length", queue=q)
                for q in ("cpu", "gpu", "gpu.h100", "extra.q")} == \
            {"cpu": 1, "gpu": 0, "gpu.h100": 3, "extra.q": 0}
        assert value(s, "mono_quant_unacked_messages") == 2
        assert 0 < value(s, "mono_quant_scrape_duration_seconds") < 30

        # every scrape reads fresh: a new job and a new message show up at once
        catalog = Catalog(catalog_url)
        with catalog.begin() as session:
            session.add(Job(batch=Batch(name="late"), name="late", model_source="m",
                            spec={}, idempotency_key="f" * 64, queue="gpu.a100",
                            status=JobStatus.QUEUED))
        catalog.dispose()
        fill_broker(redis_url, {"gpu.a100": 1}, unacked=0)
        s = parse(scrape(base + "/metrics")[2])
        assert value(s, "mono_quant_jobs", queue="gpu.a100", state="queued") == 1
        assert value(s, "mono_quant_queue_length", queue="gpu.a100") == 1

        assert scrape(base + "/nope")[0] == 404
        assert scrape(base + "/")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_component_down_is_up_0_and_the_scrape_still_answers(redis_url, tmp_path):
    bad_catalog = "postgresql+psycopg://postgres@127.0.0.1:1/nope"
    out = cli("metrics", "--once", env=cli_env(redis_url, bad_catalog, tmp_path))
    assert out.returncode == 0, out.stderr
    s = parse(out.stdout)
    assert value(s, "mono_quant_up", component="catalog") == 0
    assert value(s, "mono_quant_up", component="broker") == 1
    assert not any(n in ("mono_quant_jobs", "mono_quant_artifacts") for n, _ in s)
    assert value(s, "mono_quant_queue_length", queue="cpu") == 0
    assert "the catalog did not answer" in out.stderr


def test_label_values_are_escaped():
    text = format_family("m", "gauge", "h", [({"q": 'a"b\\c\nd'}, 1.5), ({}, 3)])
    assert text == '# HELP m h\n# TYPE m gauge\nm{q="a\\"b\\\\c\\nd"} 1.5\nm 3'
    assert parse(text + "\n") == {("m", frozenset({("q", 'a\\"b\\\\c\\nd')})): 1.5,
                                  ("m", frozenset()): 3.0}


def test_serve_port_in_use_is_a_clear_error(redis_url, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = cli_env(redis_url, f"sqlite:///{tmp_path / 'c.db'}", tmp_path)
        t0 = time.monotonic()
        out = cli("metrics", "--host", "127.0.0.1", "--port", str(port), env=env, timeout=60)
    assert out.returncode == 2
    assert f"metrics: cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert time.monotonic() - t0 < 60


def test_a_broker_other_than_redis_has_no_queue_series(tmp_path):
    from mono_quant.catalog import upgrade

    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    # nothing connects to it: only Redis queues are read
    out = cli("metrics", "--once", env=cli_env("amqp://guest@127.0.0.1:5672//", url, tmp_path))
    assert out.returncode == 0, out.stderr
    s = parse(out.stdout)
    assert value(s, "mono_quant_up", component="catalog") == 1
    assert ("mono_quant_up", frozenset({("component", "broker")})) not in s
    assert not any(n in ("mono_quant_queue_length", "mono_quant_unacked_messages")
                   for n, _ in s)
    assert value(s, "mono_quant_jobs", queue="cpu", state="pending") == 0
