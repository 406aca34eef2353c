"""``mono-quant health`` against the real Redis and catalogs, with and without a real worker."""

from __future__ import annotations

import json
import socket

import pytest

from tests.deploy.conftest import cli, cli_env

pytestmark = pytest.mark.slow  # real subprocesses (~2 s each) and worker start-ups


def lines(out: str) -> dict[str, str]:
    """``{check name: "<ok|FAILED|skip> <detail>"}`` from health's one-line-per-check output."""
    result = {}
    for line in out.splitlines():
        status, name, detail = line.split(None, 2)
        result[name] = f"{status} {detail}"
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_worker_fails_and_says_so(redis_url, catalog_url, tmp_path):
    env = cli_env(redis_url, catalog_url, tmp_path)
    out = cli("health", "--timeout", "1", env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    got = lines(out.stdout)
    assert got["broker"].startswith(f"ok {redis_url}: Redis "), got
    assert "answered PING" in got["broker"]
    from mono_quant.catalog.db import head_revision

    assert got["catalog"].startswith("ok ")
    assert f"schema at revision {head_revision()} (head)" in got["catalog"]
    assert got["worker"] == "FAILED no worker answered a ping within 1 s"

    # broker + catalog only (what scheduler / reconcile containers run): passes
    out = cli("health", "--no-worker", "--timeout", "1", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    got = lines(out.stdout)
    assert (got["broker"][:2], got["catalog"][:2]) == ("ok", "ok")
    assert got["worker"] == "skip not checked (--no-worker)"


def test_with_a_real_worker(redis_url, catalog_url, tmp_path, start_worker):
    env = cli_env(redis_url, catalog_url, tmp_path)
    host = socket.gethostname()
    start_worker("hc-a@%h", env)

    out = cli("health", "--timeout", "5", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert lines(out.stdout)["worker"].startswith(f"ok hc-a@{host} answered in ")

    # a named node, written as in the worker's own command line (%h = this host)
    out = cli("health", "--worker", "hc-a@%h", "--json", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert [(c["name"], c["ok"], c["required"]) for c in report["checks"]] == [
        ("broker", True, True), ("catalog", True, True), ("worker", True, True)]
    assert report["checks"][2]["detail"].startswith(f"hc-a@{host} answered in ")

    # the liveness probe's form: a database outage must not fail it
    down = cli_env(redis_url, "postgresql+psycopg://postgres@127.0.0.1:1/down", tmp_path)
    out = cli("health", "--worker", "hc-a@%h", "--no-catalog", env=down)
    assert out.returncode == 0, out.stdout + out.stderr
    got = lines(out.stdout)
    assert got["catalog"] == "skip not checked (--no-catalog)"
    assert got["broker"].startswith("ok ") and got["worker"].startswith(f"ok hc-a@{host} ")
    assert cli("health", "--worker", "hc-a@%h", env=down).returncode == 1

    # a node that does not exist: fails even though another worker answers
    out = cli("health", "--worker", "hc-a@%h", "--worker", "gone@%h", "--timeout", "2", env=env)
    assert out.returncode == 1
    assert lines(out.stdout)["worker"] == (
        f"FAILED gone@{host} did not answer a ping within 2 s (answered: hc-a@{host})")


def test_catalog_without_schema_fails(redis_url, empty_url, tmp_path):
    out = cli("health", "--no-worker", env=cli_env(redis_url, empty_url, tmp_path))
    assert out.returncode == 1
    detail = lines(out.stdout)["catalog"]
    assert detail.startswith("FAILED ")
    assert ("has no catalog schema; run `mono-quant db upgrade` first" in detail
            or "the SQLite file does not exist; run `mono-quant db upgrade`" in detail), detail
    assert not (tmp_path / "sub" / "empty.db").exists()  # checking never creates a catalog


@pytest.mark.parametrize("backend", ["sqlite"], ids=["sqlite"])
def test_unreachable_broker_and_catalog(catalog_url, tmp_path):
    port = free_port()  # nothing listens there
    env = cli_env(f"redis://127.0.0.1:{port}/0",
                  f"postgresql+psycopg://mq:secret@127.0.0.1:{port}/nope", tmp_path)
    out = cli("health", "--timeout", "2", env=env)
    assert out.returncode == 1
    got = lines(out.stdout)
    assert got["broker"].startswith(f"FAILED redis://127.0.0.1:{port}/0 is unreachable: ")
    assert "Connection refused" in got["broker"]
    assert got["catalog"].startswith(
        f"FAILED catalog database postgresql+psycopg://mq:***@127.0.0.1:{port}/nope "
        "is unreachable"), got["catalog"]
    assert "secret" not in out.stdout + out.stderr
    assert got["worker"] == "FAILED not pinged: the broker is unreachable"


@pytest.mark.parametrize("backend", ["sqlite"], ids=["sqlite"])
@pytest.mark.parametrize(("args", "message"), [
    (["--worker", "a@%h", "--no-worker"], "--worker and --no-worker contradict each other"),
    (["--no-worker", "--no-catalog"], "--no-worker and --no-catalog leave only the broker"),
    (["--timeout", "0"], "--timeout 0: expected a number of seconds > 0"),
], ids=["worker-and-no-worker", "no-worker-and-no-catalog", "zero-timeout"])
def test_bad_options_exit_2(redis_url, catalog_url, tmp_path, args, message):
    out = cli("health", *args, env=cli_env(redis_url, catalog_url, tmp_path))
    assert out.returncode == 2
    assert message in out.stderr
