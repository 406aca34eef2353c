"""The storage interface (mono_quant.io.store) against a real S3-compatible server (moto's,
started on 127.0.0.1 by tests/s3server.py), and the storage-root setting's URL handling.

Values are checked against an independent reference: hashlib over the bytes the test wrote,
sha256_path over the local folder, and the server's own listing through plain s3fs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest
import torch

from mono_quant.config import Settings
from mono_quant.errors import BadConfigError, BadInputError
from mono_quant.io import load_quantized, read_info, save_model
from mono_quant.io.hashing import sha256_path
from mono_quant.io.store import PART_SIZE, open_store
from tests.s3server import SECRET, client, moto_server, multipart_uploads, new_bucket, s3_env

pytestmark = pytest.mark.timeout(180)


# --- the finding: a URL root used to become a local folder named "s3:" ----------------------


def _settings(tmp_path, root: str) -> Settings:
    return Settings.from_env({"MONO_QUANT_DATA_DIR": str(tmp_path / "data"),
                              "MONO_QUANT_STORAGE_ROOT": root})


@pytest.mark.parametrize("root", ["ftp2://mq/artifacts", "hdfs://mq/artifacts",
                                  "s3://"], ids=["unknown", "unsupported", "no-bucket"])
def test_unsupported_storage_url_is_bad_config(tmp_path, root):
    with pytest.raises(BadConfigError) as e:
        _settings(tmp_path, root)
    assert f"MONO_QUANT_STORAGE_ROOT={root!r}" in str(e.value)
    assert not (tmp_path / "data").exists() and not list(tmp_path.rglob("*:*"))


def test_uninstalled_backend_names_the_extra(tmp_path, monkeypatch):
    import fsspec

    def missing(protocol):  # gcsfs not installed (whether or not it is on this machine)
        raise ImportError("Install gcsfs to access Google Storage")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    with pytest.raises(BadConfigError) as e:
        _settings(tmp_path, "gs://mq/artifacts")
    assert str(e.value) == (
        "MONO_QUANT_STORAGE_ROOT='gs://mq/artifacts': the gs:// backend is not installed; "
        "install the extra with `pip install 'mono-quant[gcs]'`")


def test_urls_stay_urls_and_file_urls_are_folders(tmp_path):
    pytest.importorskip("s3fs", reason="needs the s3 extra")
    assert _settings(tmp_path, "s3://mq/artifacts/").storage_root == "s3://mq/artifacts"
    assert _settings(tmp_path, f"file://{tmp_path}/a").storage_root == tmp_path / "a"


@pytest.mark.slow
def test_run_with_unsupported_root_writes_nothing(tmp_path):
    """`mono-quant run` used to succeed into ./s3:/… ; now it stops before any job."""
    env = {**os.environ, "MONO_QUANT_DATA_DIR": str(tmp_path / "data"),
           "MONO_QUANT_STORAGE_ROOT": "ftp2://mq/artifacts"}
    demo = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "demo.yaml")
    out = subprocess.run([sys.executable, "-m", "mono_quant.scheduler.cli", "run",
                          os.path.abspath(demo)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "MONO_QUANT_STORAGE_ROOT='ftp2://mq/artifacts': the scheme ftp2:// is not " \
           "supported" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- the store on S3 -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint, monkeypatch, tmp_path):
    for k, v in s3_env(endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return new_bucket(endpoint)


def test_put_file_is_hashed_while_streaming_and_multipart(bucket, tmp_path):
    data = torch.randint(0, 256, (PART_SIZE * 2 + 12345,), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0)).numpy().tobytes()
    src = tmp_path / "a.bin"
    src.write_bytes(data)
    store = open_store(f"s3://{bucket}/root")
    stored = store.put(src, "ab/1-1.safetensors")
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size == len(data)
    fs = client(os.environ["AWS_ENDPOINT_URL"])
    assert fs.cat(f"{bucket}/root/ab/1-1.safetensors") == data  # the server's own view
    assert fs.info(f"{bucket}/root/ab/1-1.safetensors")["ETag"].strip('"').endswith("-3")
    assert store.size("ab/1-1.safetensors") == len(data)
    assert store.sha256("ab/1-1.safetensors") == stored.sha256
    assert store.list("ab") == ["ab/1-1.safetensors"]


def test_parts_grow_so_no_upload_needs_more_than_s3s_part_limit(bucket, tmp_path,
                                                                monkeypatch):
    """8 MiB parts would take 10,001 parts for a 78 GiB file, which S3 (and moto) refuse;
    the limit is lowered to 2 here so a 3-part file shows the rule at test size."""
    from mono_quant.io import _object_store

    assert _object_store.part_size(10_000 * PART_SIZE) == PART_SIZE
    assert _object_store.part_size(10_000 * PART_SIZE + 1) == PART_SIZE + (1 << 20)
    monkeypatch.setattr(_object_store, "MAX_PARTS", 2)
    data = torch.randint(0, 256, (PART_SIZE * 2 + 12345,), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1)).numpy().tobytes()
    src = tmp_path / "a.bin"
    src.write_bytes(data)
    stored = open_store(f"s3://{bucket}/root").put(src, "ab/1-1.safetensors")
    fs = client(os.environ["AWS_ENDPOINT_URL"])
    assert fs.cat(f"{bucket}/root/ab/1-1.safetensors") == data
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert fs.info(f"{bucket}/root/ab/1-1.safetensors")["ETag"].strip('"').endswith("-2")


def test_put_folder_digest_matches_the_local_formula(bucket, tmp_path):
    folder = tmp_path / "ct"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "model.safetensors").write_bytes(b"\x01" * 1000)
    store = open_store(f"s3://{bucket}")
    stored = store.put(folder, "k/7-1")
    assert stored.sha256 == sha256_path(folder) and stored.size == 1008
    assert store.files("k/7-1") == ["config.json", "sub/model.safetensors"]
    assert store.sha256("k/7-1") == sha256_path(folder) and store.size("k/7-1") == 1008
    store.delete("k/7-1")
    assert store.list("k") == [] and not store.exists("k/7-1")


def test_failed_upload_leaves_no_object_and_no_upload(bucket, tmp_path, monkeypatch):
    from mono_quant.io import _object_store

    src = tmp_path / "a.bin"
    src.write_bytes(b"\x07" * (PART_SIZE * 2 + 1))

    def dies_after_one_part(f, out):
        out.write(f.read(PART_SIZE + 1))  # the first part is sent: a multipart upload began
        out.flush()
        assert multipart_uploads(os.environ["AWS_ENDPOINT_URL"], bucket), "no upload began"
        raise OSError("disk read failed")

    monkeypatch.setattr(_object_store, "_hashed_copy", dies_after_one_part)
    store = open_store(f"s3://{bucket}")
    with pytest.raises(Exception, match="disk read failed"):
        store.put(src, "k/1-1.safetensors")
    assert not store.exists("k/1-1.safetensors")
    assert multipart_uploads(os.environ["AWS_ENDPOINT_URL"], bucket) == []


@pytest.mark.parametrize("key", ["../escape", "/abs/key", "s3://other/x", "a/../../b", ""],
                         ids=["dotdot", "absolute", "url", "nested-dotdot", "empty"])
def test_keys_never_escape_the_prefix(bucket, tmp_path, key):
    src = tmp_path / "a.bin"
    src.write_bytes(b"x")
    store = open_store(f"s3://{bucket}/root")
    with pytest.raises(BadInputError, match="storage key"):
        store.put(src, key)
    assert client(os.environ["AWS_ENDPOINT_URL"]).find(bucket) == []


def test_missing_bucket_and_refused_credentials_are_bad_config(bucket, monkeypatch):
    with pytest.raises(BadConfigError, match="the bucket 'mq-nope-nope' does not exist") as e:
        open_store("s3://mq-nope-nope/x").check()
    assert SECRET not in str(e.value)
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as strict:
        monkeypatch.setenv("AWS_ENDPOINT_URL", strict)
        with pytest.raises(BadConfigError, match="was refused .*check the credentials") as e:
            open_store(f"s3://{bucket}/x").check()
    assert SECRET not in str(e.value) and SECRET not in repr(e.value.__cause__)


def _artifact(tmp_path):
    from mono_quant.quant import QuantConfig, quantize_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    qmodel, info = quantize_model(model, QuantConfig())
    path = tmp_path / "m.safetensors"
    save_model(qmodel, path, info=info)
    return model, qmodel, info, path


def test_read_info_reads_the_header_only_and_load_caches(bucket, tmp_path, monkeypatch):
    import copy

    model, qmodel, info, path = _artifact(tmp_path)
    store = open_store(f"s3://{bucket}/root")
    store.put(path, "m/1-1.safetensors")
    url = f"s3://{bucket}/root/m/1-1.safetensors"
    sent = []
    from mono_quant.io import _object_store

    real_open = _object_store.ObjectStore.open

    def counting_open(self, key):
        f = real_open(self, key)
        read = f.read
        f.read = lambda n=-1: sent.append(n) or read(n)
        return f

    monkeypatch.setattr(_object_store.ObjectStore, "open", counting_open)
    assert read_info(url).to_dict() == info.to_dict()
    assert len(sent) == 2 and sent[0] == 8 and sum(sent) < path.stat().st_size  # ranged reads
    assert not (tmp_path / "cache").exists()  # nothing downloaded
    loaded = load_quantized(url, copy.deepcopy(model))
    x = torch.randn(4, 64)
    assert torch.equal(loaded(x), qmodel(x))
    cached = list((tmp_path / "cache").rglob("1-1.safetensors"))
    assert len(cached) == 1 and cached[0].read_bytes() == path.read_bytes()


def test_hf_source_may_be_a_folder_in_the_store(bucket, tmp_path):
    pytest.importorskip("transformers", reason="needs the hf extra")
    from mono_quant.pipeline import parse_model_source
    from tests.io.hf_fixture import make_hf_folder

    folder = make_hf_folder(tmp_path / "tiny", seed=3)
    open_store(f"s3://{bucket}").put(folder, "models/tiny")
    source = parse_model_source(f"hf:s3://{bucket}/models/tiny/")
    assert source.target == f"s3://{bucket}/models/tiny"  # the URL, not a local path
    source.check()  # config.json found without downloading
    assert not (tmp_path / "cache").exists()
    got = source.load().state_dict()
    want = parse_model_source(f"hf:{folder}").load().state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(BadInputError, match="has no config.json"):
        parse_model_source(f"hf:s3://{bucket}/models/none").check()


def test_downloads_keep_the_objects_modification_times(bucket, tmp_path, monkeypatch):
    """Two nodes' cached copies of a folder have the same mtimes (the objects'): what a
    sequential job fingerprints a model by, so its progress resumes on another node."""
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "w.bin").write_bytes(b"w" * 100)
    store = open_store(f"s3://{bucket}")
    store.put(folder, "models/m")
    fs = client(os.environ["AWS_ENDPOINT_URL"])
    copies = []
    for node in ("node1", "node2"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / node))
        copies.append(store.local("models/m"))
        if node == "node1":
            time.sleep(1.1)  # a later download: a later mtime unless it is the object's
    for rel in ("config.json", "sub/w.bin"):
        want = fs.modified(f"{bucket}/models/m/{rel}").timestamp()
        assert [(c / rel).stat().st_mtime for c in copies] == [want, want]
