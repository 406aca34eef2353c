"""Manifests take every LLM-grade int8 option; a mode x smoothquant matrix just works."""

from __future__ import annotations

import pytest

from mono_quant.errors import BadInputError
from mono_quant.quant.qconfig import QuantConfig
from mono_quant.scheduler.manifest import parse_manifest

MLP = "factory:mono_quant.demo_models:mlp"
VECTORS = "factory:mono_quant.demo_models:vector_batches"


def _parse(data, **kw):
    return parse_manifest(data, "jobs.yaml", **kw)


def test_mode_by_smoothquant_matrix_expands_to_valid_configs(tmp_path):
    (tmp_path / "eval.txt").write_text("some text\n")
    _, specs = _parse({
        "defaults": {"calibration": VECTORS, "weight_algorithm": "gptq", "gptq_act_order": True,
                     "gptq_damping": 0.05, "gptq_block_size": 64,
                     "target": {"output_cosine": 0.99}, "evaluation": "text:eval.txt?context=32"},
        "matrix": {"mode": ["static", "dynamic"], "smoothquant": [None, 0.5, 0.85]},
        "jobs": [{"name": "m", "model": MLP}],
    }, base_dir=tmp_path)
    assert len(specs) == 6
    assert specs[0].name == "m[mode=static,smoothquant=None]"
    last = specs[-1].spec
    assert last.config == QuantConfig(mode="dynamic", smoothquant=0.85, weight_algorithm="gptq",
                                      gptq_act_order=True, gptq_damping=0.05, gptq_block_size=64,
                                      target={"output_cosine": 0.99})
    assert last.evaluation.canonical() == {"text": str((tmp_path / "eval.txt").resolve()),
                                           "context": 32}
    assert last.to_payload()["evaluation"] == last.evaluation.canonical()
    assert len({s.idempotency_key for s in specs}) == 6


def test_keys_of_jobs_without_the_new_options_are_unchanged():
    _, (job,) = _parse({"jobs": [{"name": "a", "model": MLP}]})
    assert set(job.spec.to_payload()) == {"version", "model", "quant", "format", "calibration",
                                          "samples", "stream"}
    assert set(job.spec.to_payload()["quant"]) == {
        "version", "scheme", "granularity", "group_size", "mode", "weight_observer",
        "activation_observer", "activation_scheme", "include", "exclude", "min_layer_size"}


@pytest.mark.parametrize(
    ("job", "message"),
    [
        pytest.param({"mode": "static", "smoothquant": 1.0, "calibration": VECTORS},
                     "jobs.yaml: jobs[0]: smoothquant=1.0: expected the migration strength",
                     id="smoothquant-range"),
        pytest.param({"weight_algorithm": "gptq"},
                     "jobs.yaml: jobs[0].calibration: weight_algorithm 'gptq' needs a "
                     "calibration source", id="gptq-without-calibration"),
        pytest.param({"mode": "dynamic", "smoothquant": 0.5},
                     "jobs.yaml: jobs[0].calibration: smoothquant 0.5 needs a calibration",
                     id="smoothquant-without-calibration"),
        pytest.param({"target": {"accuracy": 1}}, "unknown metric 'accuracy'", id="target"),
        pytest.param({"evaluation": "tensors:x.safetensors"},
                     "jobs.yaml: jobs[0].evaluation: evaluation 'tensors:x.safetensors': "
                     "expected text:PATH", id="evaluation"),
    ],
)
def test_bad_options_name_the_job_and_option(job, message):
    with pytest.raises(BadInputError) as err:
        _parse({"jobs": [{"name": "a", "model": MLP, **job}]})
    assert message in str(err.value)
