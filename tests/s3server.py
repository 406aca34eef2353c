"""A real S3-compatible HTTP server for the object-store tests: moto's standalone server.

Started as a subprocess on 127.0.0.1 and a free port (as s3fs's own tests do), so worker
subprocesses reach it exactly as they would reach S3 — through ``AWS_ENDPOINT_URL`` and the
standard credential variables. Needs the ``s3`` extra (s3fs, moto[server]); without it the
tests that use it skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

#: A credential no output, log or catalog row may ever show (tests grep for it).
SECRET = "mq-secret-" + uuid.uuid4().hex


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(log: str | os.PathLike[str] | None = None, **env: str) -> Iterator[str]:
    """A moto server in a subprocess; yields its endpoint URL. ``env``: moto's own switches
    (``INITIAL_NO_AUTH_ACTION_COUNT=0`` makes it refuse every credential); ``log``: a file
    for the server's request log and tracebacks (default: discarded)."""
    pytest.importorskip("moto.server", reason="needs the dev extra (moto[server])")
    pytest.importorskip("s3fs", reason="needs the s3 extra: pip install -e '.[dev,s3]'")
    port = _free_port()
    sink = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **env}, stdout=sink, stderr=sink,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start (exit {proc.poll()})")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if log is not None:
            sink.close()


def s3_env(endpoint: str) -> dict[str, str]:
    """The standard variables every AWS client reads: endpoint, credentials, region."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "mq-test-key",
            "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}


def new_bucket(endpoint: str) -> str:
    """Create a bucket with a fresh name; returns the name."""
    import fsspec

    name = "mq-" + uuid.uuid4().hex[:12]
    fs = fsspec.filesystem("s3", skip_instance_cache=True, endpoint_url=endpoint,
                           key="mq-test-key", secret=SECRET)
    fs.mkdir(name)
    return name


def client(endpoint: str):
    """A plain s3fs filesystem on the server (the tests' own view, with no mono-quant code)."""
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False,
                             endpoint_url=endpoint, key="mq-test-key", secret=SECRET,
                             client_kwargs={"region_name": "us-east-1"})


def multipart_uploads(endpoint: str, bucket: str, prefix: str = "", fs=None) -> list[dict]:
    """The incomplete multipart uploads under ``prefix`` (invisible objects being written).
    ``fs``: a :func:`client` to reuse (a new one costs a second or more on a loaded machine,
    longer than a small upload lasts)."""
    return (fs or client(endpoint)).call_s3("list_multipart_uploads", Bucket=bucket,
                                            Prefix=prefix).get("Uploads", [])
