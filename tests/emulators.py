"""Local emulators of Google Cloud Storage and Azure Blob Storage for the object-store tests.

* GCS: ``gcp-storage-emulator`` (pure Python, the ``dev`` extra), in memory. gcsfs reaches
  it through ``STORAGE_EMULATOR_HOST``, its documented switch; ``FSSPEC_GCS_TOKEN=anon``
  (fsspec's own configuration variables) skips the credential lookup an emulator does not
  need; ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` turns off gcsfs's probe of the bucket
  type, a gRPC call with TLS that an emulator does not answer (60 s per bucket, then a
  fallback to the plain client anyway). It is read when gcsfs is imported, so
  tests/conftest.py sets it for the whole test session.
* Azure: Azurite, Microsoft's emulator (Node.js; ``npm install azurite``: ``.ci/run``
  installs it into ``.ci/node_modules``), in memory. adlfs takes its connection string from
  ``AZURE_STORAGE_CONNECTION_STRING``, the standard variable.

Each is started as a subprocess on 127.0.0.1 and a free port, like the moto S3 server
(tests/s3server.py); without the emulator installed the tests that use it skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3server import _free_port

#: Where ``.ci/run`` installs Azurite (``npm install --prefix .ci azurite``).
AZURITE = Path(__file__).resolve().parents[1] / ".ci" / "node_modules" / ".bin" / "azurite-blob"

#: Azurite's well-known development account (published in its documentation; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")


@contextlib.contextmanager
def _server(cmd: list[str], port: int, env: dict[str, str], what: str) -> Iterator[None]:
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection(("127.0.0.1", port), 1):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start (exit {proc.poll()})")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def gcs_server() -> Iterator[dict[str, str]]:
    """gcp-storage-emulator in memory; yields the environment that points gcsfs at it."""
    env = {"FSSPEC_GCS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    pytest.importorskip("gcp_storage_emulator",
                        reason="needs the dev extra (gcp-storage-emulator)")
    pytest.importorskip("gcsfs", reason="needs the gcs extra: pip install -e '.[dev,gcs]'")
    port = _free_port()
    cmd = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
           "--port", str(port), "--in-memory", "--quiet"]
    with _server(cmd, port, {}, "the GCS emulator"):
        yield {**env, "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}


@contextlib.contextmanager
def azurite_server() -> Iterator[dict[str, str]]:
    """Azurite's blob service in memory; yields the environment that points adlfs at it."""
    pytest.importorskip("adlfs", reason="needs the azure extra: pip install -e '.[dev,azure]'")
    if not AZURITE.exists() or shutil.which("node") is None:
        pytest.skip(f"needs Azurite ({AZURITE}: `npm install --prefix .ci azurite`, as "
                    ".ci/run does) and node")
    port = _free_port()
    cmd = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port),
           "--inMemoryPersistence", "--silent", "--skipApiVersionCheck", "--loose",
           "--disableTelemetry"]
    with _server(cmd, port, {}, "Azurite"):
        yield {"AZURE_STORAGE_CONNECTION_STRING": (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")}


def new_container(scheme: str, env: dict[str, str]) -> str:
    """Create a bucket (GCS) or container (Azure) with a fresh name; returns the name."""
    import fsspec

    name = "mq-" + uuid.uuid4().hex[:12]
    fs = client(scheme, env)
    fs.mkdir(name)
    fsspec.filesystem(scheme, skip_instance_cache=True)  # nothing cached across tests
    return name


def client(scheme: str, env: dict[str, str]):
    """A plain fsspec filesystem on the emulator (the tests' own view, no mono-quant code)."""
    import fsspec

    if scheme in ("gs", "gcs"):
        return fsspec.filesystem("gs", skip_instance_cache=True, token="anon",
                                 endpoint_url=env["STORAGE_EMULATOR_HOST"])
    return fsspec.filesystem("az", skip_instance_cache=True,
                             connection_string=env["AZURE_STORAGE_CONNECTION_STRING"])
