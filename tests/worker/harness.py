"""Real worker processes for the batch-system tests.

Each test gets its own Redis database number (flushed before and after) or its own
redis-server; workers are ``mono-quant worker`` subprocesses in their own process group, so a
test can SIGKILL a worker and its pool child together.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[2]

#: The shared test Redis server (host and port, no database). Parallel checkouts set
#: ``MONO_QUANT_TEST_REDIS=redis://127.0.0.1:PORT`` to a server of their own so their fixed
#: database numbers never collide.
TEST_REDIS = os.environ.get("MONO_QUANT_TEST_REDIS", "redis://127.0.0.1:6379").rstrip("/")


def redis_db(db: int) -> str:
    """The URL of database ``db`` on the test Redis server."""
    return f"{TEST_REDIS}/{db}"


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(REPO),
        "MONO_QUANT_COMPILE": "never",
        "MONO_QUANT_HEARTBEAT_INTERVAL": "0.5",
        "MONO_QUANT_STALE_AFTER": "3",
        "MONO_QUANT_RETRY_BACKOFF": "0.2",
        "MONO_QUANT_RETRY_BACKOFF_MAX": "1",
        "MONO_QUANT_SOFT_TIME_LIMIT": "120",
        "MONO_QUANT_TIME_LIMIT": "150",
        "MONO_QUANT_VISIBILITY_TIMEOUT": "600",
    })
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mono_quant.scheduler.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


class Worker:
    """``mono-quant worker`` in its own process group."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, *extra: str,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"{name.replace('@', '_')}.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mono_quant.scheduler.cli", "worker", "--name", name,
             "--loglevel", "info", *extra],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        from mono_quant.config import Settings
        from mono_quant.worker.app import create_app

        app = create_app(Settings.from_env(self.env))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log_path.read_text()}")
            if app.control.ping(destination=[self.name], timeout=0.5):
                return
        raise TimeoutError(f"worker {self.name} not ready: {self.log_path.read_text()[-2000:]}")

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.kill(signal.SIGKILL)  # stragglers of the group
        self.log.close()


def flush(url: str) -> None:
    redis.Redis.from_url(url).flushdb()


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
