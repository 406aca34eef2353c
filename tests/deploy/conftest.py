"""Deploy and operations tests: the real Redis and PostgreSQL here, real worker processes.

Redis: a dedicated database (``MONO_QUANT_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/11``)
flushed before and after each test that uses it; other users of the server keep their data
(Celery's broadcast channels are prefixed with the database number, so workers of other
databases never answer our pings). Catalogs: SQLite and PostgreSQL (tests/catalog/backends.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.catalog.backends import (  # noqa: F401 - fixtures
    backend,
    catalog_url,
    empty_url,
    pg_database,
    pg_server,
)

REDIS_URL = os.environ.get(
    "MONO_QUANT_TEST_REDIS_URL",
    os.environ.get("MONO_QUANT_TEST_REDIS", "redis://127.0.0.1:6379").rstrip("/") + "/11",
)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The test Redis database, empty; skipped (with the reason) when Redis is unreachable."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {e}")
    client.flushdb()
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


def cli_env(broker_url: str, catalog: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a mono-quant subprocess: our broker and catalog, nothing inherited
    from the developer's MONO_QUANT_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONO_QUANT_")}
    env.update(MONO_QUANT_BROKER_URL=broker_url, MONO_QUANT_CATALOG_URL=catalog,
               MONO_QUANT_DATA_DIR=str(tmp_path / "data"),
               MONO_QUANT_STORAGE_ROOT=str(tmp_path / "artifacts"),
               MONO_QUANT_ALLOWED_FACTORIES="mono_quant.*,tests.*",  # the test factories
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mono_quant.scheduler.cli", *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


class WorkerProcess:
    """A real ``mono-quant worker`` in its own process group, its output in a log file."""

    def __init__(self, name: str, env: dict[str, str], log: Path, *extra: str) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mono_quant.scheduler.cli", "worker", "--name", name,
             "--loglevel", "info", *extra],
            env=env, cwd=REPO, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.output():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited ({self.proc.returncode}):\n"
                                     + self.output()[-3000:])
            time.sleep(0.2)
        raise AssertionError(f"the worker was not ready within {timeout} s:\n"
                             + self.output()[-3000:])

    def kill(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after a while."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # children that outlived the main process
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self._log_file.close()


@pytest.fixture
def start_worker(tmp_path) -> Iterator:
    """``start_worker(name, env, *extra_args)`` → a ready WorkerProcess; all killed at the end."""
    started: list[WorkerProcess] = []

    def start(name: str, env: dict[str, str], *extra: str, ready: bool = True) -> WorkerProcess:
        w = WorkerProcess(name, env, tmp_path / f"worker-{len(started)}.log", *extra)
        started.append(w)
        if ready:
            w.wait_ready()
        return w

    try:
        yield start
    finally:
        for w in started:
            w.kill()
