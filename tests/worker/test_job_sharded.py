"""A job with ``max_shard_size`` through run_job (this process, SQLite catalog): the sharded
folder is the artifact, transformers serves it in the served-load check, the catalog's size
and digest cover every shard, and ``verify`` notices a changed shard."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from mono_quant.catalog import Artifact, Catalog
from mono_quant.catalog.artifacts import verify_artifacts
from mono_quant.catalog.batches import create_batch
from mono_quant.config import Settings
from mono_quant.io import read_info, size_path
from mono_quant.io.sharded import INDEX_FILE
from mono_quant.scheduler.manifest import parse_manifest
from mono_quant.scheduler.service import _rows
from mono_quant.worker.job import OutcomeStatus, run_job
from tests.io.hf_fixture import make_hf_folder

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fmt", ["compressed-tensors", "safetensors"])
def test_sharded_job_is_recorded_served_and_verified(tmp_path, fmt):
    pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed")
    model = make_hf_folder(tmp_path / "tiny-llama")
    s = Settings.from_env({"MONO_QUANT_DATA_DIR": str(tmp_path / "data"),
                           "MONO_QUANT_COMPILE": "never", "MONO_QUANT_HEARTBEAT_INTERVAL": "30"})
    catalog = Catalog(s.catalog_url)
    catalog.upgrade()
    _, specs = parse_manifest({"jobs": [{"name": "a", "model": f"hf:{model}", "format": fmt,
                                         "max_shard_size": "32KB"}]})
    with catalog.begin() as session:
        _, (job_id,) = create_batch(session, _rows(specs), name="t")
    assert run_job(job_id, "w@test", settings=s).status is OutcomeStatus.SUCCEEDED
    with catalog.begin() as session:
        artifact = session.scalars(select(Artifact)).one()
        key, size, info = artifact.storage_key, artifact.size_bytes, artifact.info
    path = s.storage_root / key
    assert path.is_dir() and (path / INDEX_FILE).is_file()
    shards = sorted(p.name for p in path.iterdir() if p.name.startswith("model-"))
    assert len(shards) > 3 and shards[-1].endswith(f"-of-{len(shards):05d}.safetensors")
    assert set(json.loads((path / INDEX_FILE).read_text())["weight_map"].values()) == set(shards)
    assert size == size_path(path)
    expected_check = "transformers" if fmt == "compressed-tensors" else "load_quantized"
    assert info["metrics"]["served_check"] == expected_check
    assert read_info(path).selected_layers == info["selected_layers"]
    with catalog.begin() as session:
        assert [r.status for r in verify_artifacts(session, s.storage_root)] == ["ok"]
    with open(path / shards[1], "r+b") as f:  # flip one byte of a tensor in a middle shard
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with catalog.begin() as session:
        assert [r.status for r in verify_artifacts(session, s.storage_root)] == ["changed"]
