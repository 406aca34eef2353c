"""Recording artifacts from a real quantization, storage keys, and verify."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from safetensors.torch import save_file
from sqlalchemy.exc import IntegrityError

from mono_quant import QuantConfig, demo_models, quantize_model
from mono_quant.catalog import (
    Artifact,
    ArtifactFormat,
    Batch,
    Catalog,
    Job,
    add_artifact,
    config_digest,
    get_artifact,
    normalize_storage_key,
    verify_artifacts,
)
from mono_quant.errors import BadInputError, StorageError
from mono_quant.io.hashing import sha256_path, size_path


@pytest.fixture(scope="module")
def info():
    """A real QuantizationInfo: static W8A8 on the demo MLP, with output metrics."""
    _, info = quantize_model(demo_models.mlp(), QuantConfig(mode="static", scheme="asymmetric"),
                             demo_models.vector_batches(n=2), progress=False)
    return info


@pytest.fixture
def catalog(catalog_url):
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.dispose()


def _job(session, i: int = 0, model: str = "hf:org/mlp@main") -> Job:
    batch = session.get(Batch, 1) or Batch(name="b")
    job = Job(batch=batch, name=f"job-{i}", model_source=model, spec={},
              idempotency_key=hashlib.sha256(f"k{i}".encode()).hexdigest(), queue="cpu")
    session.add(job)
    session.flush()
    return job


def _write_safetensors(path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    save_file({"w": torch.randint(-128, 128, (64, 32), dtype=torch.int8, generator=g),
               "scale": torch.rand(64, 1, generator=g)}, str(path))


def _write_folder(path) -> None:
    _write_safetensors(path / "model.safetensors", seed=1)
    (path / "config.json").write_text('{"quantization_config": {}}')


def test_add_artifact_fills_typed_columns_from_info(catalog, info, tmp_path):
    root = tmp_path / "store"
    file = root / "org/mlp/abc.safetensors"
    _write_safetensors(file)
    with catalog.begin() as s:
        job = _job(s)
        a = add_artifact(s, job, file, info, storage_root=root, model_digest="d" * 64)
        aid = a.id
    with catalog.begin() as s:
        a = get_artifact(s, aid)
        m = info.metrics
        assert a.storage_key == "org/mlp/abc.safetensors"
        assert a.format is ArtifactFormat.SAFETENSORS
        assert (a.sha256, a.size_bytes) == (sha256_path(file), size_path(file))
        assert (a.idempotency_key, a.model_source, a.model_digest) == (
            a.job.idempotency_key, "hf:org/mlp@main", "d" * 64)
        assert (a.dtype, a.scheme, a.granularity, a.group_size, a.mode, a.per_channel) == (
            "int8", "asymmetric", "per_channel", None, "static", True)
        assert (a.observer, a.activation_observer, a.activation_scheme) == (
            "minmax", "minmax", "asymmetric")
        assert a.calibration_samples == info.calibration_samples > 0
        assert (a.layers_quantized, a.layers_total) == (m["layers_quantized"], m["layers_total"])
        for col in ("weight_sqnr_db", "weight_sqnr_db_min", "output_sqnr_db", "output_cosine",
                    "compression_ratio"):
            assert getattr(a, col) == m[col], col
        assert (a.size_bytes_fp, a.size_bytes_quant) == (m["size_bytes_fp"],
                                                         m["size_bytes_quant"])
        v = info.library_versions
        assert (a.torch_version, a.mono_quant_version, a.safetensors_version,
                a.python_version) == (v["torch"], v["mono-quant"], v["safetensors"], v["python"])
        assert a.info == info.to_dict()
        assert a.config_digest == config_digest(info)
        assert a.created_at.tzinfo is not None


def test_weight_only_has_no_activation_columns(catalog, tmp_path):
    _, info = quantize_model(demo_models.mlp(hidden=64), QuantConfig(granularity="per_group",
                             group_size=64), progress=False)
    (tmp_path / "m.pt").write_bytes(b"not really a checkpoint")
    with catalog.begin() as s:
        a = add_artifact(s, _job(s), "m.pt", info, storage_root=tmp_path)
        assert (a.format, a.group_size, a.per_channel) == (ArtifactFormat.PT, 64, False)
        assert (a.activation_observer, a.output_cosine) == (None, None)


def test_lossless_layer_inf_is_queryable(catalog, info, tmp_path):
    lossless = type(info)(info.config, info.selected_layers, info.calibration_samples,
                          info.library_versions,
                          {**info.metrics, "weight_sqnr_db": math.inf,
                           "weight_sqnr_db_min": -math.inf})
    with catalog.begin() as s:
        a = add_artifact(s, _job(s), "x.safetensors", lossless, storage_root=tmp_path,
                         sha256="0" * 64, size_bytes=1)
        aid = a.id
    from mono_quant.catalog import ArtifactQuery, list_artifacts

    with catalog.begin() as s:
        a = get_artifact(s, aid)
        assert (a.weight_sqnr_db, a.weight_sqnr_db_min) == (math.inf, -math.inf)
        assert a.info["metrics"]["weight_sqnr_db"] == {"__float__": "inf"}
        assert [x.id for x in list_artifacts(s, ArtifactQuery(min_sqnr=1e300))] == [aid]


def test_compressed_tensors_folder(catalog, info, tmp_path):
    folder = tmp_path / "ct" / "run1"
    _write_folder(folder)
    with catalog.begin() as s:
        a = add_artifact(s, _job(s), folder, info, storage_root=tmp_path)
        assert (a.format, a.storage_key) == (ArtifactFormat.COMPRESSED_TENSORS, "ct/run1")
        assert (a.sha256, a.size_bytes) == (sha256_path(folder), size_path(folder))


def test_same_artifact_twice_is_a_no_op_and_a_different_one_is_refused(catalog, info, tmp_path):
    file = tmp_path / "a.safetensors"
    _write_safetensors(file)
    with catalog.begin() as s:
        job = _job(s)
        first = add_artifact(s, job, file, info, storage_root=tmp_path)
    with catalog.begin() as s:
        job = s.get(Job, job.id)
        assert add_artifact(s, job, file, info, storage_root=tmp_path).id == first.id
        _write_safetensors(file, seed=7)
        with pytest.raises(StorageError, match=f"already has artifact {first.id}"):
            add_artifact(s, job, file, info, storage_root=tmp_path)
    with catalog.begin() as s:
        assert s.query(Artifact).count() == 1


def test_one_artifact_per_idempotency_key_in_the_database(catalog, info, tmp_path):
    with catalog.begin() as s:
        job = _job(s)
        add_artifact(s, job, "a.pt", info, storage_root=tmp_path, sha256="1" * 64, size_bytes=1)
        other = _job(s, i=1)
        other.idempotency_key = job.idempotency_key  # a retried job with the same key
    with pytest.raises(IntegrityError), catalog.begin() as s:
        other = s.get(Job, other.id)
        # the ORM row bypasses add_artifact's check: the unique constraint must refuse it
        s.add(Artifact(job=other, idempotency_key=other.idempotency_key, model_source="m",
                       storage_key="b.pt", format=ArtifactFormat.PT, sha256="2" * 64,
                       size_bytes=1, config_digest="c", dtype="int8", scheme="symmetric",
                       granularity="per_tensor", mode="weight_only", per_channel=False,
                       observer="minmax", calibration_samples=0, info={}))


STORAGE_KEYS = {
    "plain": ("models/m/a.safetensors", "models/m/a.safetensors"),
    "dots-and-slashes": ("./models//m/./a.pt", "models/m/a.pt"),
    "absolute": ("/etc/passwd", "absolute paths are not allowed"),
    "parent": ("models/../../x.pt", "'..' is not allowed"),
    "backslash": ("models\\x.pt", "backslashes"),
    "url": ("s3://bucket/x.pt", "URLs"),
    "empty": ("", "empty"),
    "only-dot": ("./.", "names no file"),
}


@pytest.mark.parametrize("name", list(STORAGE_KEYS), ids=list(STORAGE_KEYS))
def test_storage_keys(name):
    key, expected = STORAGE_KEYS[name]
    if name in ("plain", "dots-and-slashes"):
        assert normalize_storage_key(key) == expected
    else:
        with pytest.raises(BadInputError, match=expected):
            normalize_storage_key(key)


def test_path_outside_root_and_missing_file(catalog, info, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    _write_safetensors(outside)
    with catalog.begin() as s:
        job = _job(s)
        with pytest.raises(BadInputError, match="is not under the storage root"):
            add_artifact(s, job, outside, info, storage_root=tmp_path / "store")
        with pytest.raises(StorageError, match="does not exist"):
            add_artifact(s, job, "nope.safetensors", info, storage_root=tmp_path)
        with pytest.raises(BadInputError, match="cannot tell the format"):
            add_artifact(s, job, "model.bin", info, storage_root=tmp_path, sha256="0" * 64,
                         size_bytes=1)
        with pytest.raises(BadInputError, match="artifact format 'gguf'"):
            add_artifact(s, job, "model.bin", info, storage_root=tmp_path, format="gguf",
                         sha256="0" * 64, size_bytes=1)


def test_verify_detects_flipped_byte_missing_file_and_changed_folder(catalog, info, tmp_path):
    root = tmp_path / "store"
    files = [root / f"m/{i}.safetensors" for i in range(3)]
    for i, f in enumerate(files):
        _write_safetensors(f, seed=i)
    folder = root / "ct/run"
    _write_folder(folder)
    with catalog.begin() as s:
        ids = [add_artifact(s, _job(s, i), p, info, storage_root=root).id
               for i, p in enumerate([*files, folder])]
    with catalog.begin() as s:
        assert [r.status for r in verify_artifacts(s, root)] == ["ok"] * 4

    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    files[0].write_bytes(bytes(data))
    files[1].unlink()
    (folder / "config.json").write_text('{"quantization_config": {"x": 1}}')
    with catalog.begin() as s:
        results = {r.artifact_id: r for r in verify_artifacts(s, root)}
        assert {i: r.status for i, r in results.items()} == {
            ids[0]: "changed", ids[1]: "missing", ids[2]: "ok", ids[3]: "changed"}
        r = results[ids[0]]
        assert r.actual_size == r.expected_size and r.actual_sha256 == sha256_path(files[0])
        assert [r.status for r in verify_artifacts(s, root, [ids[2]])] == ["ok"]
        with pytest.raises(BadInputError, match="no artifact with id 999"):
            list(verify_artifacts(s, root, [ids[2], 999]))
        # a row that was not written by add_artifact cannot make verify read outside the root
        s.get(Artifact, ids[2]).storage_key = "../../etc/passwd"
        s.flush()
        assert next(iter(verify_artifacts(s, root, [ids[2]]))).status == "invalid_key"
