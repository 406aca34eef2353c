"""One pipeline: ``mono-quant quantize``, the worker's ``run_job`` and the embedded runner
(``mono-quant run``) write byte-identical artifacts for the same spec, streaming included."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from mono_quant import demo_models
from mono_quant.catalog import Catalog, Job, JobStatus
from mono_quant.catalog.batches import create_batch
from mono_quant.config import Settings
from mono_quant.errors import BadConfigError
from mono_quant.io.hashing import sha256_path, state_dict_digest
from mono_quant.pipeline import JobSpec, parse_model_source, run_pipeline
from mono_quant.scheduler.manifest import parse_manifest
from mono_quant.scheduler.service import _rows
from mono_quant.worker.job import run_job
from tests.io.hf_fixture import make_hf_folder
from tests.worker.harness import base_env, cli

CALIBRATION = "factory:mono_quant.demo_models:vector_batches?n=2&batch=4&features=64"
STATIC = {"name": "static", "model": "factory:tests.jobfixtures:tiny", "mode": "static",
          "calibration": CALIBRATION, "samples": 6, "granularity": "per_group",
          "group_size": 16}


def _worker_artifact(tmp_path, job: dict, recorded: dict | None = None) -> str:
    """sha256 of the artifact ``run_job`` writes for ``job`` (what a Celery worker runs);
    ``recorded`` gets the artifact row's info and model digest."""
    s = Settings.from_env({"MONO_QUANT_DATA_DIR": str(tmp_path / "worker"),
                           "MONO_QUANT_COMPILE": "never",
                           "MONO_QUANT_ALLOWED_FACTORIES": "mono_quant.*,tests.*"})
    catalog = Catalog(s.catalog_url)
    catalog.upgrade()
    _, scheduled = parse_manifest({"jobs": [job]})
    with catalog.begin() as session:
        _, (job_id,) = create_batch(session, _rows(scheduled), name="t")
    assert run_job(job_id, "w@test", settings=s).status == "succeeded"
    with catalog.begin() as session:
        artifact = session.get(Job, job_id).artifact
        if recorded is not None:
            recorded.update(info=artifact.info, model_digest=artifact.model_digest)
        return sha256_path(s.storage_root / artifact.storage_key)


def _embedded_artifact(tmp_path, job: dict) -> str:
    env = base_env(MONO_QUANT_DATA_DIR=str(tmp_path / "embedded"))
    manifest = tmp_path / "jobs.json"
    manifest.write_text(json.dumps({"jobs": [job]}))
    out = cli("run", str(manifest), "--quiet", env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    s = Settings.from_env(env)
    with Catalog(s.catalog_url).begin() as session:
        (row,) = session.scalars(select(Job)).all()
        # an unset stream is stored as payload version 2's false ("not asked": auto)
        assert row.status is JobStatus.SUCCEEDED
        assert row.spec["stream"] is bool(job.get("stream"))
        assert row.spec["version"] == (3 if job.get("stream") is False else 2)
        return sha256_path(s.storage_root / row.artifact.storage_key)


def _cli_artifact(tmp_path, source: str, *flags: str) -> str:
    out = tmp_path / "cli.safetensors"
    res = cli("quantize", source, "-o", str(out), "--quiet", *flags, env=base_env())
    assert res.returncode == 0, res.stderr
    return sha256_path(out)


@pytest.mark.slow
def test_static_job_same_bytes_from_cli_worker_and_embedded_runner(tmp_path):
    cli_sha = _cli_artifact(tmp_path, STATIC["model"], "--mode", "static", "--calibration",
                            CALIBRATION, "--samples", "6", "--granularity", "per_group",
                            "--group-size", "16")
    assert _worker_artifact(tmp_path, STATIC) == cli_sha
    assert _embedded_artifact(tmp_path, STATIC) == cli_sha


@pytest.mark.slow
def test_stream_through_a_manifest_same_bytes_as_quantize_stream(tmp_path):
    folder = make_hf_folder(tmp_path / "tiny")
    job = {"name": "s", "model": f"hf:{folder}", "stream": True}
    cli_sha = _cli_artifact(tmp_path, f"hf:{folder}", "--stream")
    assert _worker_artifact(tmp_path, job) == cli_sha
    assert _embedded_artifact(tmp_path, job) == cli_sha


@pytest.mark.slow
def test_a_default_hf_job_streams_everywhere_to_the_in_memory_bytes(tmp_path):
    """An unset ``stream``: the worker and the embedded runner stream the tiny Llama (a
    verified family) and write the file ``--no-stream`` writes, and record which path ran
    and the float model's digest."""
    folder = make_hf_folder(tmp_path / "tiny")
    job = {"name": "d", "model": f"hf:{folder}"}
    cli_sha = _cli_artifact(tmp_path, f"hf:{folder}", "--no-stream")
    recorded: dict = {}
    assert _worker_artifact(tmp_path, job, recorded) == cli_sha
    assert recorded["info"]["metrics"]["reload_check"].startswith("ok (streamed (auto)): ")
    assert recorded["model_digest"] == state_dict_digest(demo_models.tiny_transformer(seed=0))
    assert _embedded_artifact(tmp_path, job) == cli_sha


def test_run_pipeline_reports_every_stage_in_order(tmp_path):
    seen: list[str] = []
    spec = JobSpec.from_payload({"model": "factory:tests.jobfixtures:tiny", "calibration":
                                 CALIBRATION, "quant": {"mode": "static"}})
    result = run_pipeline(spec, tmp_path / "a.safetensors",
                          on_stage=lambda s, **_: seen.append(s))
    assert seen == ["loading", "loading calibration data", "quantizing", "writing",
                    "reloading", "hashing"]
    assert result.sha256 == sha256_path(tmp_path / "a.safetensors")
    assert result.info.metrics["reload_check"] == (
        "ok (load_quantized): identical layers and tensors, ran on 1 batch")
    assert result.info.metrics["served_check"] == "load_quantized"
    assert result.model_digest is not None


def test_a_stage_callback_that_raises_stops_before_writing(tmp_path):
    class Cancelled(Exception):
        pass

    def on_stage(stage, **_):
        if stage == "writing":
            raise Cancelled

    spec = JobSpec(parse_model_source("factory:tests.jobfixtures:tiny"))
    with pytest.raises(Cancelled):
        run_pipeline(spec, tmp_path / "a.safetensors", on_stage=on_stage)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"model": "factory:tests.jobfixtures:tiny", "version": 4},
         "job spec version 4 is not supported"),
        ({"model": "factory:tests.jobfixtures:tiny", "priority": 1},
         "job spec: unknown field(s) priority"),
        ({"quant": {}}, "job spec: field 'model' is missing"),
        ({"model": "factory:tests.jobfixtures:tiny", "quant": {"bits": 4}},
         "unknown quantization config field(s) bits"),
        ({"model": "factory:tests.jobfixtures:tiny", "format": "gguf"}, "format='gguf'"),
        ({"model": "factory:tests.jobfixtures:tiny", "stream": True},
         "stream: true: the model must be an hf: folder"),
        ({"model": "factory:tests.jobfixtures:tiny", "samples": 0}, "samples=0"),
        ({"model": "onnx:x"}, "job spec: onnx:x: unknown model source scheme onnx:"),
        ([1, 2], "job spec: expected a mapping"),
    ],
    ids=["version", "unknown-field", "no-model", "bad-quant", "format", "stream", "samples",
         "source", "not-a-mapping"],
)
def test_payloads_this_version_cannot_read_are_bad_config(payload, message):
    with pytest.raises(BadConfigError) as info:
        JobSpec.from_payload(payload)
    assert message in str(info.value)


def test_a_stored_payload_it_cannot_read_fails_the_job_as_bad_config(tmp_path):
    s = Settings.from_env({"MONO_QUANT_DATA_DIR": str(tmp_path)})
    catalog = Catalog(s.catalog_url)
    catalog.upgrade()
    _, scheduled = parse_manifest({"jobs": [{"name": "a",
                                             "model": "factory:tests.jobfixtures:tiny"}]})
    with catalog.begin() as session:
        _, (job_id,) = create_batch(session, _rows(scheduled), name="t")
        session.get(Job, job_id).spec = {**scheduled[0].spec.to_payload(), "version": 7}
    out = run_job(job_id, "w@test", settings=s)
    assert out.status == "failed" and out.retry_in is None
    with catalog.begin() as session:
        job = session.get(Job, job_id)
        assert job.error_kind.value == "bad_config" and "version 7" in job.last_error
