"""The storage interface on Google Cloud Storage and Azure Blob Storage, against their local
emulators (tests/emulators.py: gcp-storage-emulator, Azurite), as test_object_store.py does
on S3 with moto: the same verbs, the same checks.

References are independent of the code under test: hashlib over the bytes the test wrote,
sha256_path over the local folder, and each server's own view through a plain fsspec client.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from sqlalchemy import select

from mono_quant.errors import BadConfigError
from mono_quant.io import read_info
from mono_quant.io.hashing import sha256_path
from mono_quant.io.store import PART_SIZE, open_store
from tests.emulators import azurite_server, client, gcs_server, new_container

pytestmark = pytest.mark.timeout(300)

SERVERS = {"gs": gcs_server, "az": azurite_server}


@pytest.fixture(scope="module", params=sorted(SERVERS), ids=["azure-azurite", "gcs-emulator"])
def server(request):
    """(scheme, the environment pointing its fsspec backend at the emulator)."""
    with SERVERS[request.param]() as env:
        yield request.param, env


@pytest.fixture
def root(server, monkeypatch, tmp_path):
    """A fresh bucket/container; the storage root URL under it. fsspec reads FSSPEC_*
    variables once, at import: its configuration is set here as those would set it."""
    import fsspec.config

    scheme, env = server
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return f"{scheme}://{new_container(scheme, env)}/root"


def _data(n: int, seed: int) -> bytes:
    return torch.randint(0, 256, (n,), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed)).numpy().tobytes()


def test_put_file_is_hashed_while_streaming(server, root, tmp_path):
    scheme, env = server
    data = _data(PART_SIZE * 2 + 12345, 0)  # three parts / blocks / chunks
    src = tmp_path / "a.bin"
    src.write_bytes(data)
    store = open_store(root)
    stored = store.put(src, "ab/1-1.safetensors")
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size == len(data)
    fs, path = client(scheme, env), f"{root.split('://')[1]}/ab/1-1.safetensors"
    assert fs.cat(path) == data  # the server's own view
    assert store.size("ab/1-1.safetensors") == len(data)
    assert store.sha256("ab/1-1.safetensors") == stored.sha256
    assert store.exists("ab/1-1.safetensors") and store.files("ab/1-1.safetensors") == [""]
    assert store.list("ab") == ["ab/1-1.safetensors"]
    with store.open("ab/1-1.safetensors") as f:  # a ranged read
        f.seek(PART_SIZE + 7)
        assert f.read(100) == data[PART_SIZE + 7:PART_SIZE + 107]


def test_put_folder_digest_local_copy_and_delete(server, root, tmp_path):
    scheme, env = server
    folder = tmp_path / "ct"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"a": 1}))
    (folder / "sub" / "model.safetensors").write_bytes(_data(5000, 1))
    store = open_store(root)
    stored = store.put(folder, "ab/2-1")
    assert stored.sha256 == sha256_path(folder) == store.sha256("ab/2-1")
    assert store.files("ab/2-1") == ["config.json", "sub/model.safetensors"]
    assert store.size("ab/2-1") == stored.size == 5000 + len('{"a": 1}')
    local = store.local("ab/2-1")
    assert sha256_path(local) == stored.sha256 and str(tmp_path / "cache") in str(local)
    fs, base = client(scheme, env), f"{root.split('://')[1]}/ab/2-1"
    for rel in ("config.json", "sub/model.safetensors"):  # the objects' times, not now's
        assert (local / rel).stat().st_mtime == fs.modified(f"{base}/{rel}").timestamp()
    store.delete("ab/2-1")
    assert store.list("ab") == [] and not store.exists("ab/2-1")


def test_artifact_header_read_from_the_store(root, tmp_path):
    from tests.io.test_object_store import _artifact

    _, _, info, path = _artifact(tmp_path)
    open_store(root).put(path, "m/1-1.safetensors")
    assert read_info(f"{root}/m/1-1.safetensors").to_dict() == info.to_dict()


def test_missing_bucket_is_bad_config(server, root):
    scheme, _ = server
    with pytest.raises(BadConfigError, match="the bucket 'mq-no-such' does not exist"):
        open_store(f"{scheme}://mq-no-such/x").check()


@pytest.mark.slow
def test_a_job_publishes_into_the_store(server, root, tmp_path):
    """`mono-quant run` (the embedded runner) with the store as MONO_QUANT_STORAGE_ROOT: a
    file and a folder artifact, each matching its catalog row byte for byte."""
    from mono_quant.catalog import Artifact, Catalog
    from tests.worker.harness import base_env, cli

    scheme, env = server
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(json.dumps({"defaults": {"device": "cpu"}, "jobs": [
        {"name": "a", "model": "factory:tests.jobfixtures:tiny?seed=1"},
        {"name": "c", "model": "factory:tests.jobfixtures:tiny?seed=2",
         "format": "compressed-tensors"}]}))
    run_env = base_env(MONO_QUANT_STORAGE_ROOT=root, MONO_QUANT_DATA_DIR=str(tmp_path / "d"),
                       XDG_CACHE_HOME=str(tmp_path / "cache"), TMPDIR=str(tmp_path), **env)
    run_env.pop("MONO_QUANT_BROKER_URL", None)
    run_env.pop("MONO_QUANT_CATALOG_URL", None)
    out = cli("run", str(manifest), env=run_env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    catalog = Catalog(f"sqlite:///{tmp_path / 'd' / 'catalog.db'}")
    with catalog.begin() as s:
        rows = [(a.storage_key, a.sha256, a.format.value) for a in s.scalars(select(Artifact))]
    catalog.dispose()
    fs, base = client(scheme, env), root.split("://")[1]
    assert len(rows) == 2
    for key, sha, fmt in rows:
        if fmt == "compressed-tensors":
            fs.get(f"{base}/{key}", str(tmp_path / "dl"), recursive=True)
            assert sha256_path(tmp_path / "dl") == sha
        else:
            assert hashlib.sha256(fs.cat(f"{base}/{key}")).hexdigest() == sha
    stored = sorted(p.removeprefix(base + "/") for p in fs.find(base))
    assert all(any(p == k or p.startswith(k + "/") for k, _, _ in rows) for p in stored)
    assert not [p for p in tmp_path.rglob("mono-quant-upload-*")]  # scratch removed
    verify = cli("catalog", "verify", "--all", "--deep", env=run_env)
    assert verify.returncode == 0 and "2 ok" in verify.stdout, verify.stdout + verify.stderr
