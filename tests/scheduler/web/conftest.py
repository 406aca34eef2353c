"""Fixtures for the web catalog: a catalog filled by a real batch, and real server processes.

``web_batch`` runs ``mono-quant run web_batch.yaml`` once per test session (embedded runner,
SQLite, real artifact files in a temporary data folder). ``serve`` starts ``mono-quant serve``
as a subprocess on a free port and waits until it answers; ``web`` is one such server over
the batch, shared by the tests that do not need their own.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

MANIFEST = Path(__file__).with_name("web_batch.yaml")
#: Jobs of web_batch.yaml: 3 jobs x 2 schemes; "broken" fails in the worker (both schemes).
JOBS, FAILED = 6, 2
SCRIPT_NAME = "<script>alert('mq')</script>"


@dataclass(frozen=True)
class Batch:
    data_dir: Path
    url: str
    storage_root: Path
    db: Path

    def rows(self, sql: str, *params: object) -> list[sqlite3.Row]:
        """Read the catalog with plain sqlite3: the expected values, independent of our code."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, params).fetchall()


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONO_QUANT_")}
    return {**env, "MONO_QUANT_DATA_DIR": str(data_dir), **extra}


@pytest.fixture(scope="session")
def web_batch(tmp_path_factory) -> Batch:
    data_dir = tmp_path_factory.mktemp("web-data")
    out = subprocess.run(
        [sys.executable, "-m", "mono_quant.scheduler.cli", "run", str(MANIFEST), "--quiet"],
        capture_output=True, text=True, timeout=600, env=_env(data_dir),
    )
    assert out.returncode == 1, out.stderr  # 1: the broken jobs failed, as intended
    assert f"failed {FAILED}, succeeded {JOBS - FAILED}" in out.stdout, out.stdout
    db = data_dir / "catalog.db"
    return Batch(data_dir, f"sqlite:///{db}", data_dir / "artifacts", db)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(batch: Batch, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``mono-quant serve`` over the batch's catalog; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mono_quant.scheduler.cli", "serve", "--url", batch.url,
         "--storage-root", str(batch.storage_root), "--port", str(port), *args],
        env=_env(batch.data_dir, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()}")
            try:
                httpx.get(base + "/api/batches", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError("serve did not answer within 60 s") from None
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def web(web_batch) -> Iterator[str]:
    with serve(web_batch) as base:
        yield base


@pytest.fixture
def get(web) -> Callable[..., httpx.Response]:
    def fetch(path: str, **kwargs) -> httpx.Response:
        return httpx.get(web + path, timeout=30, **kwargs)

    return fetch
