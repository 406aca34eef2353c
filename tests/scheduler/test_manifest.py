from __future__ import annotations

import pytest

from mono_quant.errors import BadInputError
from mono_quant.quant.qconfig import QuantConfig
from mono_quant.scheduler.manifest import load_manifest, parse_manifest

MLP = "factory:mono_quant.demo_models:mlp"


def _parse(data, **kw):
    return parse_manifest(data, "jobs.yaml", **kw)


def test_defaults_matrix_and_overrides_expand():
    manifest, specs = _parse({
        "name": "nightly",
        "labels": {"team": "search"},
        "defaults": {"scheme": "asymmetric", "format": "pt", "queue": "gpu"},
        "matrix": {"granularity": ["per_channel", "per_group"], "format": ["safetensors", "pt"]},
        "jobs": [{"name": "a", "model": MLP},
                 {"name": "b", "model": {"factory": "mono_quant.demo_models:cnn"},
                  "scheme": "symmetric", "queue": "gpu.h100"}],
    })
    assert manifest.name == "nightly" and manifest.labels == {"team": "search"}
    assert [s.name for s in specs] == [
        "a[granularity=per_channel,format=safetensors]", "a[granularity=per_channel,format=pt]",
        "a[granularity=per_group,format=safetensors]", "a[granularity=per_group,format=pt]",
        "b[granularity=per_channel,format=safetensors]", "b[granularity=per_channel,format=pt]",
        "b[granularity=per_group,format=safetensors]", "b[granularity=per_group,format=pt]",
    ]
    a0, b3 = specs[0], specs[7]
    assert a0.spec.config == QuantConfig(scheme="asymmetric", granularity="per_channel")
    assert (a0.spec.format, a0.queue, a0.model_source) == ("safetensors", "gpu", MLP)
    assert b3.spec.config == QuantConfig(scheme="symmetric", granularity="per_group",
                                         group_size=128)
    assert (b3.spec.format, b3.queue) == ("pt", "gpu.h100")
    assert len({s.idempotency_key for s in specs}) == 8


def test_idempotency_key_is_canonical_and_ignores_the_queue():
    one = _parse({"jobs": [{"name": "a", "model": f"{MLP}?hidden=64&seed=1",
                            "queue": "cpu"}]})[1][0]
    two = _parse({"jobs": [{"name": "b", "queue": "gpu",
                            "model": {"factory": "mono_quant.demo_models:mlp",
                                      "kwargs": {"seed": 1, "hidden": 64}}}]})[1][0]
    other = _parse({"jobs": [{"name": "a", "model": f"{MLP}?hidden=64&seed=2"}]})[1][0]
    assert one.idempotency_key == two.idempotency_key != other.idempotency_key
    assert len(one.idempotency_key) == 64


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"jobs": [{"name": "a", "model": MLP}, {"name": "b", "model": MLP,
                                                              "calibration": 5}]},
                     "jobs.yaml: jobs[1].calibration: ", id="calibration-type"),
        pytest.param({"jobs": [{"name": "a", "model": MLP, "scheme": "sym"}]},
                     "jobs.yaml: jobs[0]: scheme='sym': expected", id="config-value"),
        pytest.param({"jobs": [{"name": "a", "model": MLP, "bits": 4}]},
                     "jobs.yaml: jobs[0].bits: Extra inputs are not permitted", id="unknown"),
        pytest.param({"jobs": [{"name": "a"}]}, "jobs.yaml: jobs[0].model: Field required",
                     id="missing-model"),
        pytest.param({"jobs": [{"name": "a", "model": "s3://bucket/x"}]},
                     "jobs.yaml: jobs[0].model: ", id="bad-source"),
        pytest.param({"jobs": [{"name": "a", "model": MLP, "mode": "static"}]},
                     "jobs.yaml: jobs[0].calibration: mode 'static' needs", id="static"),
        pytest.param({"jobs": [{"name": "a", "model": MLP, "queue": "tpu"}]},
                     "jobs.yaml: jobs[0].queue: ", id="queue"),
        pytest.param({"jobs": [{"name": "a", "model": MLP, "format": "gguf"}]},
                     "jobs.yaml: jobs[0].format: expected one of safetensors", id="format"),
        pytest.param({"matrix": {"bits": [4]}, "jobs": [{"name": "a", "model": MLP}]},
                     "jobs.yaml: matrix: key 'bits' cannot vary", id="matrix-key"),
        pytest.param({"matrix": {"format": ["pt", "onnx"]}, "jobs": [{"name": "a", "model": MLP}]},
                     "jobs.yaml: matrix: format[1]='onnx': expected one of safetensors",
                     id="matrix-format"),
        pytest.param({"matrix": {"queue": ["GPU-H100"]}, "jobs": [{"name": "a", "model": MLP}]},
                     "jobs.yaml: matrix: queue[0]='GPU-H100': ", id="matrix-queue"),
        pytest.param({"jobs": [{"name": "a", "model": MLP, "stream": True}]},
                     "jobs.yaml: jobs[0]: stream: true: the model must be an hf: folder",
                     id="stream-factory"),
        pytest.param({"jobs": [{"name": "a", "model": MLP, "stream": "yes"}]},
                     "jobs.yaml: jobs[0].stream: Input should be a valid boolean", id="stream"),
        pytest.param({"matrix": {"scheme": ["symmetric"]},
                      "jobs": [{"name": "a", "model": MLP, "scheme": "asymmetric"}]},
                     "jobs[0].scheme: is a matrix key", id="matrix-clash"),
        pytest.param({"jobs": [{"name": "a", "model": MLP}, {"name": "a", "model": MLP}]},
                     "job names must be unique; repeated: a", id="dupes"),
        pytest.param({"jobs": []}, "jobs.yaml: jobs: expected at least one job", id="empty"),
        pytest.param(["not", "a", "mapping"], "expected a mapping", id="top"),
    ],
)
def test_errors_name_the_file_and_field(data, message):
    with pytest.raises(BadInputError) as info:
        _parse(data)
    assert message in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(BadInputError) as info:
        _parse({"jobs": [{"name": "a", "model": MLP, "scheme": "x"},
                         {"name": "b", "model": MLP, "granularity": "y"}]})
    text = str(info.value)
    assert "jobs[0]: scheme='x'" in text and "jobs[1]: granularity='y'" in text


def test_load_manifest_reads_yaml_and_resolves_paths_against_it(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "jobs.yaml"
    path.write_text("jobs:\n  - name: a\n    model: {factory: 'mono_quant.demo_models:mlp', "
                    "weights: w.safetensors}\n")
    _, specs, digest = load_manifest(path)
    assert specs[0].spec.model.weights == str(tmp_path / "sub" / "w.safetensors")
    assert len(digest) == 64
    path.write_text("jobs: [unclosed")
    with pytest.raises(BadInputError, match="jobs.yaml: not valid YAML"):
        load_manifest(path)
    with pytest.raises(BadInputError, match="cannot read the manifest"):
        load_manifest(tmp_path / "missing.yaml")


def test_deprecated_device_key_still_names_the_queue_with_a_notice():
    with pytest.warns(FutureWarning, match="jobs.yaml: manifest key 'device' is deprecated; "
                                           "write 'queue'"):
        _, (old,) = _parse({"defaults": {"device": "gpu"}, "jobs": [{"name": "a", "model": MLP}]})
    _, (new,) = _parse({"defaults": {"queue": "gpu"}, "jobs": [{"name": "a", "model": MLP}]})
    assert old.queue == new.queue == "gpu" and old.spec == new.spec
    with pytest.warns(FutureWarning), pytest.raises(BadInputError, match="disagree"):
        _parse({"jobs": [{"name": "a", "model": MLP, "device": "gpu", "queue": "cpu"}]})


#: A valid value other than the default for every QuantConfig field. A field added to
#: QuantConfig must be a manifest key with no edit to the manifest module; this table is how
#: the test knows a value to try (add one for the new field).
_SAMPLES = {
    "scheme": "asymmetric", "granularity": "per_group", "group_size": 64, "mode": "static",
    "weight_observer": "mse", "activation_observer": "percentile",
    "activation_scheme": "symmetric", "include": ["0"], "exclude": ["2"], "min_layer_size": 8,
    "smoothquant": 0.5, "weight_algorithm": "gptq", "gptq_damping": 0.05,
    "gptq_block_size": 64, "gptq_act_order": True, "target": {"output_cosine": 0.5},
}


#: Other fields a sample value needs to take effect.
_NEEDS = {"group_size": {"granularity": "per_group"}, "smoothquant": {"mode": "dynamic"}}


def test_every_quant_config_field_is_a_manifest_key():
    import dataclasses

    calibration = "factory:mono_quant.demo_models:vector_batches"
    for field in dataclasses.fields(QuantConfig):
        assert field.name in _SAMPLES, f"no sample value for QuantConfig.{field.name}"
        value = _SAMPLES[field.name]
        extra = {"calibration": calibration, **_NEEDS.get(field.name, {})}
        _, (job,) = _parse({"defaults": {field.name: value, **extra},
                            "jobs": [{"name": "a", "model": MLP}]})
        got = (job.spec.config.target_dict if field.name == "target"
               else getattr(job.spec.config, field.name))
        assert (list(got) if isinstance(got, tuple) else got) == value, field.name
        _, jobs = _parse({"matrix": {field.name: [value]}, "jobs": [{"name": "a", "model": MLP,
                                                                     **extra}]})
        assert len(jobs) == 1, field.name


def test_stream_reaches_the_job_spec(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    _, (job,) = _parse({"jobs": [{"name": "a", "model": f"hf:{tmp_path / 'm'}", "stream": True}]})
    assert job.spec.stream is True and job.spec.to_payload()["stream"] is True
    _, (plain,) = _parse({"jobs": [{"name": "a", "model": f"hf:{tmp_path / 'm'}"}]})
    assert plain.idempotency_key != job.idempotency_key


def test_max_shard_size_reaches_the_job_spec_parsed():
    _, (job,) = _parse({"defaults": {"max_shard_size": "5GB"},
                        "jobs": [{"name": "a", "model": MLP}]})
    assert job.spec.max_shard_size == 5 * 10**9
    assert job.spec.to_payload()["max_shard_size"] == 5 * 10**9
    _, (plain,) = _parse({"jobs": [{"name": "a", "model": MLP}]})
    assert "max_shard_size" not in plain.spec.to_payload()  # earlier keys stay the same
    assert plain.idempotency_key != job.idempotency_key


@pytest.mark.parametrize(("extra", "message"), [
    ({"max_shard_size": "5XB"}, r"jobs\[0\]: max_shard_size='5XB': expected a size such as"),
    ({"max_shard_size": "1GB", "format": "pt"}, r"jobs\[0\]: max_shard_size: .*format 'pt'"),
], ids=["bad-unit", "pt-format"])
def test_bad_max_shard_size_names_the_job(extra, message):
    with pytest.raises(BadInputError, match=message):
        _parse({"jobs": [{"name": "a", "model": MLP, **extra}]})


def test_expanded_jobs_are_the_dataclass_s_own():
    """The expansion builds its jobs without ``ScheduledJob.__init__`` (tens of thousands per
    matrix): each equals, prints and copies like the one the dataclass builds."""
    import dataclasses

    from mono_quant.scheduler.manifest import ScheduledJob

    _, jobs = parse_manifest({"matrix": {"format": ["safetensors", "pt"]}, "jobs": [
        {"name": "a", "model": "factory:mono_quant.demo_models:mlp"},
        {"name": "b", "model": "factory:mono_quant.demo_models:mlp?seed=2", "queue": "gpu"}]})
    assert len(jobs) == 4
    for job in jobs:
        built = ScheduledJob(name=job.name, spec=job.spec, model_source=job.model_source,
                             queue=job.queue, max_attempts=job.max_attempts)
        assert job == built and repr(job) == repr(built)
        assert dataclasses.asdict(job) == dataclasses.asdict(built)
        assert dataclasses.replace(job, queue="x") == dataclasses.replace(built, queue="x")
        with pytest.raises(dataclasses.FrozenInstanceError):
            job.queue = "x"
