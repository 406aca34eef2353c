"""What a submit stores stays byte for byte what it stored before its per-job work was cut.

A submit builds each job's key and JSON texts from cached parts, copies a matrix
combination's spec for each model (:meth:`JobSpec.with_model`) and binds the rows column by
column (``catalog.bulk``). These tests pin the stored rows of a manifest that exercises
defaults, a matrix, jobs with values of their own, a renamed key, calibration, shards and a
pipeline: against a digest taken with the code before those changes (commit 4d763cb), and
against the reference path (``to_payload`` / ``_idempotency_key``) row by row. Real SQLite.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest

from mono_quant.catalog import Catalog
from mono_quant.config import Settings
from mono_quant.errors import BadConfigError
from mono_quant.pipeline.sources import parse_model_source
from mono_quant.pipeline.spec import JobSpec, _idempotency_key
from mono_quant.scheduler.manifest import parse_manifest
from mono_quant.scheduler.service import submit

MODEL = "mono_quant.demo_models:mlp"

#: sha256 of ``repr`` of the stored rows below, taken with the code of commit 4d763cb.
VARIED_ROWS_SHA256 = "196fa4f678597d3b42e828ea4e678f80d3c4748832dcda26b34d085cbfb5f1ba"

_COLUMNS = ("name, model_source, model_source_json, spec, idempotency_key, queue, status, "
            "attempts, max_attempts")


def _varied() -> dict:
    m = {"factory": MODEL}
    return {
        "name": "varied", "labels": {"team": "x"},
        "defaults": {"queue": "gpu", "max_attempts": 5, "format": "pt"},
        "matrix": {"scheme": ["symmetric", "asymmetric"],
                   "granularity": ["per_tensor", "per_channel"]},
        "jobs": [
            {"name": "a", "model": f"factory:{MODEL}?seed=1"},
            {"name": "b", "model": {**m, "kwargs": {"seed": 2, "hidden": 32}}},
            {"name": "c", "model": {**m, "kwargs": {"seed": 3}}, "mode": "static",
             "calibration": "factory:mono_quant.demo_models:vector_batches", "samples": 8},
            {"name": "d", "model": m, "queue": "cpu", "max_attempts": 1},
            {"name": "e", "model": {**m, "kwargs": {"seed": 4}}, "device": "gpu"},
            {"name": "f", "model": {**m, "kwargs": {"seed": 5}}, "pipeline": "in_memory"},
            {"name": "g", "model": {**m, "kwargs": {"seed": 6}}, "format": "compressed-tensors"},
            {"name": "h", "model": {**m, "kwargs": {"seed": 7, "out_features": 8}},
             "max_shard_size": "1MB", "format": "safetensors"},
            {"name": "i", "model": {**m, "kwargs": {"seed": 8, "in_features": 16}}},
        ],
    }


def _stored(tmp_path, data: dict) -> list[tuple]:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    catalog = Catalog(url)
    catalog.upgrade()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # `device`: renamed
            submit(path, catalog, settings=Settings.from_env({"MONO_QUANT_CATALOG_URL": url}))
        with catalog.engine.connect() as conn:
            raw = conn.connection.driver_connection
            return raw.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY id").fetchall()
    finally:
        catalog.dispose()


def test_the_stored_rows_are_byte_for_byte_those_of_before(tmp_path):
    rows = _stored(tmp_path, _varied())
    assert len(rows) == 9 * 4
    assert hashlib.sha256(repr(rows).encode()).hexdigest() == VARIED_ROWS_SHA256


def test_each_stored_row_agrees_with_the_reference_path(tmp_path):
    rows = _stored(tmp_path, _varied())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        _, jobs = parse_manifest(_varied())
    for row, job in zip(rows, jobs, strict=True):
        name, source, source_json, spec, key, queue, status, attempts, max_attempts = row
        payload = job.spec.to_payload()  # the generic path, no cached texts
        assert spec == json.dumps(payload)
        assert source_json == json.dumps(payload["model"])
        assert key == _idempotency_key(payload)
        assert JobSpec.from_payload(json.loads(spec)).to_payload() == payload
        assert (name, source, queue, max_attempts) == (job.name, job.model_source, job.queue,
                                                       job.max_attempts)
        assert (status, attempts) == ("pending", 0)


def test_with_model_is_the_spec_a_full_construction_builds(tmp_path):
    first = parse_model_source({"factory": MODEL, "kwargs": {"seed": 1}})
    other = parse_model_source({"factory": MODEL, "kwargs": {"seed": 2}})
    spec = JobSpec(model=first, format="safetensors", max_shard_size="1MB")
    assert spec.idempotency_key  # its cached texts must not travel with the copy
    copy = spec.with_model(other, "digest")
    full = JobSpec(model=other, format="safetensors", max_shard_size="1MB",
                   weights_digest="digest")
    assert copy == full and copy.to_payload() == full.to_payload()
    assert (copy.idempotency_key, copy.payload_json, copy.model_json) == (
        full.idempotency_key, full.payload_json, full.model_json)
    assert spec.idempotency_key != copy.idempotency_key and spec.model is first


def test_with_model_of_another_scheme_is_checked_again(tmp_path):
    (tmp_path / "m").mkdir()
    hf = parse_model_source(f"hf:{tmp_path / 'm'}")
    spec = JobSpec(model=hf, stream=True)  # streaming needs an hf: folder
    with pytest.raises(BadConfigError, match="stream: true: the model must be an hf: folder"):
        spec.with_model(parse_model_source({"factory": MODEL}))
