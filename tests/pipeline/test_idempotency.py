"""The idempotency key decides whether a submitted job is skipped as already done, so it must
change with everything that changes the artifact, and with nothing else.

What the artifact depends on is listed here, independently of ``JobSpec.to_payload``: the model
source, every quantization config field, the format, the calibration source, the number of
calibration samples and streaming. The job's name, its queue and its attempt cap (a
:class:`ScheduledJob`'s own fields) do not change it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from mono_quant.errors import BadConfigError
from mono_quant.io.layout import FORMATS
from mono_quant.pipeline import JobSpec, parse_calibration_source, parse_model_source
from mono_quant.pipeline.evaluation import parse_evaluation_source
from mono_quant.pipeline.spec import _idempotency_key
from mono_quant.quant.qconfig import MODES, OBSERVERS, QuantConfig
from mono_quant.scheduler.manifest import ScheduledJob

SCHEMES = ("symmetric", "asymmetric")
PATTERNS = st.lists(st.sampled_from(["Linear", "Conv2d", "fc*", "re:.*lm_head"]), max_size=3,
                    unique=True)
MODELS = st.sampled_from([
    parse_model_source(m) for m in (
        "factory:mono_quant.demo_models:mlp", "factory:mono_quant.demo_models:cnn",
        "factory:mono_quant.demo_models:mlp?hidden=64",
        "factory:mono_quant.demo_models:mlp?weights=/w/a.safetensors",
        "hf:/models/org-model", "hf:/models/other")
])
CALIBRATIONS = st.sampled_from([None] + [
    parse_calibration_source(c) for c in (
        "factory:mono_quant.demo_models:vector_batches",
        "factory:mono_quant.demo_models:image_batches",
        "tensors:/data/calib.safetensors", "text:/data/calib.txt?max_length=64")
])
#: QuantConfig field -> values it may take
CONFIG_VALUES = {
    "scheme": st.sampled_from(SCHEMES),
    "granularity": st.sampled_from(["per_tensor", "per_channel", "per_group"]),
    "group_size": st.sampled_from([None, 32, 64, 128]),
    "mode": st.sampled_from(MODES),
    "weight_observer": st.sampled_from(OBSERVERS),
    "activation_observer": st.sampled_from(OBSERVERS),
    "activation_scheme": st.sampled_from(SCHEMES),
    "include": PATTERNS,
    "exclude": PATTERNS,
    "min_layer_size": st.integers(0, 10_000),
}
#: JobSpec field -> values, for the fields that decide the artifact
ARTIFACT_VALUES = {
    "model": MODELS,
    "format": st.sampled_from(FORMATS),
    "calibration": CALIBRATIONS,
    "samples": st.none() | st.integers(1, 4096),
    "stream": st.booleans(),
}
#: ScheduledJob fields that do not change the artifact
OTHER_VALUES = {
    "name": st.text(min_size=1, max_size=8),
    "model_source": st.text(min_size=1, max_size=20),
    "queue": st.sampled_from(["cpu", "gpu", "gpu.h100"]),
    "max_attempts": st.integers(1, 10),
}


def _valid(make):
    """The spec ``make()`` builds, or reject the example (e.g. samples without calibration)."""
    try:
        return make()
    except BadConfigError:
        reject()


@st.composite
def specs(draw) -> JobSpec:
    config = _valid(lambda: QuantConfig(**{k: draw(v) for k, v in CONFIG_VALUES.items()}))
    fields = {k: draw(v) for k, v in ARTIFACT_VALUES.items()}
    return _valid(lambda: JobSpec(config=config, **fields))


def _artifact_identity(spec: JobSpec) -> tuple:
    return (spec.model, spec.config, spec.format, spec.calibration, spec.samples, spec.stream)


@settings(max_examples=300, deadline=None)
@given(spec=specs(), data=st.data())
def test_the_key_changes_exactly_when_the_artifact_would(spec, data):
    field = data.draw(st.sampled_from([*CONFIG_VALUES, *ARTIFACT_VALUES]))
    if field in CONFIG_VALUES:
        config = _valid(lambda: dataclasses.replace(
            spec.config, **{field: data.draw(CONFIG_VALUES[field])}))
        other = _valid(lambda: dataclasses.replace(spec, config=config))
    else:
        other = _valid(lambda: dataclasses.replace(
            spec, **{field: data.draw(ARTIFACT_VALUES[field])}))
    same = _artifact_identity(spec) == _artifact_identity(other)
    assert (spec.idempotency_key == other.idempotency_key) == same, field


@settings(max_examples=100, deadline=None)
@given(spec=specs(), data=st.data())
def test_the_key_ignores_name_queue_and_attempts(spec, data):
    job = ScheduledJob(name="a", spec=spec, model_source="m")
    field = data.draw(st.sampled_from(list(OTHER_VALUES)))
    other = dataclasses.replace(job, **{field: data.draw(OTHER_VALUES[field])})
    assert other.idempotency_key == job.idempotency_key == spec.idempotency_key


def _base(**changes) -> JobSpec:
    fields = {"model": parse_model_source("factory:m:f"), "config": QuantConfig(),
              "calibration": parse_calibration_source("factory:m:c"), "samples": 8}
    return JobSpec(**{**fields, **changes})


def test_each_artifact_field_changes_the_key():
    """One hand-picked change per field (the property test samples; this never misses one)."""
    changes = [
        {"model": parse_model_source("factory:m:g")}, {"format": "pt"},
        {"calibration": None, "samples": None},
        {"calibration": parse_calibration_source("factory:m:d")}, {"samples": 16},
        {"samples": None},
        *({"config": dataclasses.replace(QuantConfig(), **c)} for c in (
            {"scheme": "asymmetric"}, {"granularity": "per_tensor"},
            {"granularity": "per_group"}, {"mode": "static"}, {"weight_observer": "mse"},
            {"activation_observer": "percentile"}, {"activation_scheme": "symmetric"},
            {"include": ["Linear"]}, {"exclude": ["fc*"]}, {"min_layer_size": 1},
        )),
    ]
    keys = {_base().idempotency_key}
    for change in changes:
        keys.add(_base(**change).idempotency_key)
    assert len(keys) == len(changes) + 1
    hf = JobSpec(parse_model_source("hf:/models/x"))
    assert dataclasses.replace(hf, stream=True).idempotency_key != hf.idempotency_key


def test_the_key_is_sha256_of_the_canonical_json():
    """Keys are stored in the catalog: their canonical form must not drift between versions
    (these are the keys of jobs submitted before the typed JobSpec). The JSON below is
    written by hand (sorted keys, no spaces)."""
    canonical = (
        '{"calibration":{"kwargs":{},"scheme":"factory","target":"m:c"},"format":"safetensors",'
        '"model":{"kwargs":{},"scheme":"factory","target":"m:f","weights":null},'
        '"quant":{"activation_observer":"minmax","activation_scheme":"asymmetric",'
        '"exclude":[],"granularity":"per_channel","group_size":null,"include":[],'
        '"min_layer_size":0,"mode":"weight_only","scheme":"symmetric","version":1,'
        '"weight_observer":"minmax"},"samples":8}'
    )
    assert _base().idempotency_key == hashlib.sha256(canonical.encode()).hexdigest()


#: Keys computed by the code before the cached fast path (issue 16), pinned: the fast path
#: must give byte-identical keys, or every stored job and artifact would look new.
PINNED = {
    "defaults": (lambda: JobSpec(parse_model_source("factory:mono_quant.demo_models:mlp")),
                 "3dc95210b77235c889490de204a926f31c03dd15696c002dcfcc5838e53f6180"),
    "kwargs, pt": (lambda: JobSpec(
        parse_model_source({"factory": "mono_quant.demo_models:mlp", "kwargs": {
            "seed": 7, "hidden": 64, "in_features": 64, "out_features": 16}}),
        QuantConfig(scheme="asymmetric"), format="pt"),
        "30a7ac5c2df02b3f7afa376a99948bcf6b73c80ae0ca0954645d2237bbb9a640"),
    "unicode, nested kwargs": (lambda: JobSpec(parse_model_source({"factory": "m:f", "kwargs": {
        "name": "modèle ✓", "dims": [1, 2.5], "opt": {"b": None, "a": True}}})),
        "31c6159fda66015c1c0b3f11d8265d0ff031b632dd1c1d6e74cb001222348d71"),
    "static, calibration": (lambda: JobSpec(
        parse_model_source("factory:m:f?hidden=32"),
        QuantConfig(mode="static", granularity="per_group", group_size=64, include=["Linear"],
                    exclude=["re:.*lm_head"], min_layer_size=10),
        calibration=parse_calibration_source("factory:mono_quant.demo_models:vector_batches"),
        samples=16), "6f8f43b5b8ccc6fd0a02d30db6ea509a4142caf20c5f3854c5bacf169eceb789"),
    "advanced, digest, evaluation": (lambda: JobSpec(
        parse_model_source("hf:/models/org-model"),
        QuantConfig(mode="dynamic", smoothquant=0.8, weight_algorithm="gptq",
                    gptq_damping=0.05, gptq_act_order=True, target={"output_cosine": 0.999}),
        calibration=parse_calibration_source("text:/data/calib.txt?max_length=64"),
        weights_digest="ab" * 32, format="compressed-tensors",
        evaluation=parse_evaluation_source("text:/data/wiki.txt?context=128")),
        "c395eda240b364baf2cb1051b5c01d5b337adc60b0e934e43bf0b389dc7bafcf"),
    "stream": (lambda: JobSpec(parse_model_source("hf:/models/other"), stream=True,
                               weights_digest="cd" * 32),
               "76fbbd716c7cb228c0414939aef571bd93b6115f451506f09be8f307f4dbb76c"),
    "tensors calibration": (lambda: JobSpec(
        parse_model_source("factory:m:f?weights=/w/a.safetensors"),
        QuantConfig(granularity="per_tensor", weight_observer="mse",
                    activation_observer="percentile", mode="static"),
        calibration=parse_calibration_source("tensors:/data/calib.safetensors")),
        "a838ce2920e0f88cf3cfc43a65c8dc4fed25f551c13520bedf1d2fc6298efbbf"),
}


@pytest.mark.parametrize("case", list(PINNED), ids=list(PINNED))
def test_keys_are_those_of_the_code_before_the_fast_path(case):
    make, key = PINNED[case]
    spec = make()
    assert spec.idempotency_key == key
    assert _idempotency_key(spec.to_payload()) == key  # the reference path agrees



EVALUATIONS = st.sampled_from([None] + [parse_evaluation_source(e) for e in (
    "text:/data/wiki.txt", "text:/data/é ✓.txt?context=64")])


@settings(max_examples=300, deadline=None)
@given(spec=specs(), digest=st.none() | st.text(max_size=70), evaluation=EVALUATIONS,
       shards=st.none() | st.integers(1, 10**13), pipeline=st.sampled_from(["auto", "in_memory"]))
def test_the_fast_texts_equal_the_reference_serialisation(spec, digest, evaluation, shards,
                                                         pipeline):
    """The cached texts a submit writes are exactly what json.dumps of the payload gives (the
    catalog's serialiser), and the key is the reference ``_idempotency_key`` of it."""
    if spec.format == "pt" or spec.stream:  # sharding is refused there
        shards = None
    spec = dataclasses.replace(spec, weights_digest=digest, evaluation=evaluation,
                               max_shard_size=shards, pipeline=pipeline)
    payload = spec.to_payload()
    assert spec.payload_json == json.dumps(payload)
    assert spec.model_json == json.dumps(payload["model"])
    assert spec.idempotency_key == _idempotency_key(payload)


@settings(max_examples=100, deadline=None)
@given(spec=specs(), seeds=st.lists(st.integers(0, 10**6), min_size=2, max_size=5, unique=True),
       digest=st.none() | st.text(max_size=20))
def test_jobs_of_one_combination_share_its_texts_and_keep_their_own_model(spec, seeds, digest):
    """A matrix combination's parts (config, calibration, scalars) are built into texts once
    and reused for every model of it: each job's texts still equal the reference, and the
    cache never hands one job another's model or digest."""
    hf = spec.model.scheme == "hf"  # the same scheme: a streamed spec needs an hf: model
    jobs = [dataclasses.replace(spec, weights_digest=digest if i % 2 else None, model=(
        parse_model_source(f"hf:/models/m{s}" if hf else
                           f"factory:mono_quant.demo_models:mlp?seed={s}")))
        for i, s in enumerate(seeds)]
    copies = [spec.with_model(j.model, j.weights_digest) for j in jobs]  # what expansion does
    assert copies == jobs
    for job in jobs + [dataclasses.replace(j) for j in jobs] + copies:  # cache hits
        payload = job.to_payload()
        assert job.payload_json == json.dumps(payload)
        assert job.model_json == json.dumps(payload["model"])
        assert job.idempotency_key == _idempotency_key(payload)
    assert len({j.idempotency_key for j in jobs}) == len(jobs)
