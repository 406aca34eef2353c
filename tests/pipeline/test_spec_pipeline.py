"""``pipeline`` in the JobSpec (payload version 2), manifests and ``mono-quant quantize``."""

from __future__ import annotations

import json

import pytest

from mono_quant.errors import BadConfigError
from mono_quant.io.formats import read_info
from mono_quant.pipeline import JobSpec, parse_model_source
from mono_quant.scheduler.manifest import parse_manifest
from tests.io.hf_fixture import CALIBRATION_TEXT, make_hf_folder
from tests.scheduler.test_cli_quantize import _report, cli

#: A payload as version 1 wrote it (before ``pipeline``), stored in catalogs.
V1 = {"version": 1, "model": {"scheme": "factory", "target": "m:f", "kwargs": {},
                              "weights": None},
      "quant": {}, "format": "safetensors", "calibration": None, "samples": None,
      "stream": False}


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    pytest.importorskip("transformers", reason="hf: sources need the 'hf' extra")
    folder = make_hf_folder(tmp_path_factory.mktemp("hf") / "tiny")
    (folder.parent / "calib.txt").write_text(CALIBRATION_TEXT)
    return folder


def test_version_1_payloads_load_and_keep_their_keys():
    old = JobSpec.from_payload(V1)
    assert old.pipeline == "auto"
    payload = old.to_payload()
    assert payload["version"] == 2 and "pipeline" not in payload  # auto: as before
    assert old.stream is None and payload["stream"] is False  # v1/v2 false: not asked, auto
    assert JobSpec.from_payload(payload).idempotency_key == old.idempotency_key
    assert JobSpec.from_payload({k: v for k, v in V1.items() if k != "version"}) == old


@pytest.mark.parametrize(("stream", "version"), [(None, 2), (True, 2), (False, 3)])
def test_payloads_are_written_in_the_oldest_version_that_says_them(tmp_path, stream, version):
    """Workers of the release before read versions 1 and 2 only: every job but an explicit
    never-stream is written as version 2, whose false means "not asked" (auto)."""
    spec = JobSpec(parse_model_source(f"hf:{tmp_path}"), stream=stream)
    payload = spec.to_payload()
    assert payload["version"] == version and payload["stream"] is bool(stream)
    assert json.loads(spec.payload_json) == payload
    back = JobSpec.from_payload(payload)
    assert back == spec and back.stream is stream


def test_version_2_carries_the_pipeline_into_the_key(tmp_path):
    model = parse_model_source(f"hf:{tmp_path}")
    seq, auto = JobSpec(model, pipeline="sequential"), JobSpec(model)
    assert seq.to_payload()["pipeline"] == "sequential"
    assert JobSpec.from_payload(seq.to_payload()) == seq
    assert seq.idempotency_key != auto.idempotency_key
    assert JobSpec(model, pipeline="in_memory").idempotency_key not in (
        seq.idempotency_key, auto.idempotency_key)


@pytest.mark.parametrize(("payload", "message"), [
    ({**V1, "pipeline": "sequential"}, "job spec version 1 has no field 'pipeline' "
                                       r"\(version 2 does\)"),
    ({**V1, "version": 4}, "job spec version 4 is not supported .this mono-quant reads "
                           "versions 1, 2, 3.; upgrade mono-quant"),
    ({**V1, "version": 2, "pipeline": "fast"}, "pipeline='fast': expected one of auto, "
                                               "in_memory, sequential"),
], ids=["v1-with-pipeline", "v4", "unknown-pipeline"])
def test_bad_payloads_name_the_problem(payload, message):
    with pytest.raises(BadConfigError, match=message):
        JobSpec.from_payload(payload)


def test_manifest_pipeline_reaches_the_job_spec(hf):
    _, (job,) = parse_manifest({"jobs": [{"name": "a", "model": f"hf:{hf}",
                                          "pipeline": "sequential"}]}, "jobs.yaml")
    assert job.spec.pipeline == "sequential"
    _, jobs = parse_manifest({"matrix": {"pipeline": ["in_memory", "sequential"]},
                              "jobs": [{"name": "a", "model": f"hf:{hf}"}]}, "jobs.yaml")
    assert sorted(j.spec.pipeline for j in jobs) == ["in_memory", "sequential"]
    with pytest.raises(Exception, match=r"jobs\[0\]\.pipeline.*expected one of auto, "
                                        r"in_memory, sequential"):
        parse_manifest({"jobs": [{"name": "a", "model": f"hf:{hf}", "pipeline": "x"}]},
                       "jobs.yaml")
    with pytest.raises(Exception, match="pipeline: sequential: the model must be an hf: folder"):
        parse_manifest({"jobs": [{"name": "a", "model": "factory:mono_quant.demo_models:mlp",
                                  "pipeline": "sequential"}]}, "jobs.yaml")


@pytest.mark.slow
def test_quantize_pipeline_sequential(tmp_path, hf):
    out = tmp_path / "tiny.safetensors"
    res = cli("quantize", f"hf:{hf}", "-o", out, "--pipeline", "sequential", "--mode",
              "static", "--calibration", f"text:{hf.parent / 'calib.txt'}", "--quiet")
    assert res.returncode == 0, res.stderr
    report = _report(res.stdout)
    assert report["reload"].startswith("ok: ") and "one layer at a time" in report["reload"]
    metrics = read_info(out).metrics
    assert metrics["sequential"]["blocks"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.safetensors"]
