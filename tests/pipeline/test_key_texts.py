"""The texts a submit writes for a job, written out here by hand: the catalog's ``jobs.spec``
column (``payload_json``), ``jobs.model_source_json`` and the canonical JSON whose sha256 is
the idempotency key, for one spec per optional part of the payload.

``test_idempotency.py`` checks the same texts against the reference serialisation over random
specs (hypothesis, 300 examples: most of a mutation run's time); these cases are exact and
fast, so the ``key`` group of ``tools/mutate.py`` runs them instead. They also cover the
paths random specs reach by chance only: copies made by ``with_model`` after the texts were
cached, and the bounded caches of the fast path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from mono_quant.errors import BadConfigError, BadInputError
from mono_quant.pipeline import JobSpec, parse_calibration_source, parse_model_source
from mono_quant.pipeline import _grammar as grammar
from mono_quant.pipeline import spec as spec_module
from mono_quant.pipeline.evaluation import parse_evaluation_source
from mono_quant.pipeline.sources import CalibrationSource, ModelSource
from mono_quant.pipeline.spec import _idempotency_key
from mono_quant.quant.qconfig import QuantConfig

#: QuantConfig() as the key writes it (sorted, compact) and as the payload does.
QUANT_KEY = (
    '{"activation_observer":"minmax","activation_scheme":"asymmetric","exclude":[],'
    '"granularity":"per_channel","group_size":null,"include":[],"min_layer_size":0,'
    '"mode":"weight_only","scheme":"symmetric","version":1,"weight_observer":"minmax"}'
)
QUANT_PAYLOAD = (
    '{"version": 1, "scheme": "symmetric", "granularity": "per_channel", "group_size": null, '
    '"mode": "weight_only", "weight_observer": "minmax", "activation_observer": "minmax", '
    '"activation_scheme": "asymmetric", "include": [], "exclude": [], "min_layer_size": 0}'
)
HF_KEY = '{"kwargs":{},"scheme":"hf","target":"/models/x","weights":null}'
HF_PAYLOAD = '{"kwargs": {}, "scheme": "hf", "target": "/models/x", "weights": null}'
FACTORY_KEY = '{"kwargs":{},"scheme":"factory","target":"m:f","weights":null}'
FACTORY_PAYLOAD = '{"kwargs": {}, "scheme": "factory", "target": "m:f", "weights": null}'
CAL_KEY = '{"kwargs":{},"scheme":"factory","target":"m:c"}'
CAL_PAYLOAD = '{"kwargs": {}, "scheme": "factory", "target": "m:c"}'


def _hf() -> JobSpec:
    return JobSpec(parse_model_source("hf:/models/x"))


#: name -> (spec maker, the key's canonical JSON, the payload JSON, the model's JSON)
CASES = {
    "calibration and samples": (
        lambda: JobSpec(parse_model_source("factory:m:f"),
                        calibration=parse_calibration_source("factory:m:c"), samples=8),
        f'{{"calibration":{CAL_KEY},"format":"safetensors","model":{FACTORY_KEY},'
        f'"quant":{QUANT_KEY},"samples":8}}',
        f'{{"version": 2, "model": {FACTORY_PAYLOAD}, "quant": {QUANT_PAYLOAD}, '
        f'"format": "safetensors", "calibration": {CAL_PAYLOAD}, "samples": 8, '
        '"stream": false}', FACTORY_PAYLOAD),
    "stream and weights digest": (
        lambda: JobSpec(parse_model_source("hf:/models/x"), stream=True, weights_digest="d1"),
        f'{{"calibration":null,"format":"safetensors","model":{HF_KEY},"quant":{QUANT_KEY},'
        '"samples":null,"stream":true,"weights_digest":"d1"}',
        f'{{"version": 2, "model": {HF_PAYLOAD}, "quant": {QUANT_PAYLOAD}, '
        '"format": "safetensors", "calibration": null, "samples": null, "stream": true, '
        '"weights_digest": "d1"}', HF_PAYLOAD),
    "evaluation, shards, in-memory pipeline": (
        lambda: JobSpec(parse_model_source("hf:/models/x"), format="compressed-tensors",
                        weights_digest="d2",
                        evaluation=parse_evaluation_source("text:/t/é.txt?context=64"),
                        max_shard_size="2KB", pipeline="in_memory"),
        f'{{"calibration":null,"evaluation":{{"context":64,"text":"/t/\\u00e9.txt"}},'
        f'"format":"compressed-tensors","max_shard_size":2000,"model":{HF_KEY},'
        f'"pipeline":"in_memory","quant":{QUANT_KEY},"samples":null,"weights_digest":"d2"}}',
        f'{{"version": 2, "model": {HF_PAYLOAD}, "quant": {QUANT_PAYLOAD}, '
        '"format": "compressed-tensors", "calibration": null, "samples": null, '
        '"stream": false, "weights_digest": "d2", '
        '"evaluation": {"text": "/t/\\u00e9.txt", "context": 64}, "max_shard_size": 2000, '
        '"pipeline": "in_memory"}', HF_PAYLOAD),
    "sequential pipeline": (
        lambda: JobSpec(parse_model_source("hf:/models/x"), pipeline="sequential"),
        f'{{"calibration":null,"format":"safetensors","model":{HF_KEY},'
        f'"pipeline":"sequential","quant":{QUANT_KEY},"samples":null}}',
        f'{{"version": 2, "model": {HF_PAYLOAD}, "quant": {QUANT_PAYLOAD}, '
        '"format": "safetensors", "calibration": null, "samples": null, "stream": false, '
        '"pipeline": "sequential"}', HF_PAYLOAD),
    "never stream (the one version-3 payload)": (
        lambda: JobSpec(parse_model_source("hf:/models/x"), stream=False),
        f'{{"calibration":null,"format":"safetensors","model":{HF_KEY},"quant":{QUANT_KEY},'
        '"samples":null}',
        f'{{"version": 3, "model": {HF_PAYLOAD}, "quant": {QUANT_PAYLOAD}, '
        '"format": "safetensors", "calibration": null, "samples": null, "stream": false}',
        HF_PAYLOAD),
    "pt format, defaults": (
        lambda: JobSpec(parse_model_source("factory:m:f"), format="pt"),
        f'{{"calibration":null,"format":"pt","model":{FACTORY_KEY},"quant":{QUANT_KEY},'
        '"samples":null}',
        f'{{"version": 2, "model": {FACTORY_PAYLOAD}, "quant": {QUANT_PAYLOAD}, '
        '"format": "pt", "calibration": null, "samples": null, "stream": false}',
        FACTORY_PAYLOAD),
}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_each_part_of_the_texts(case):
    make, key_text, payload_text, model_text = CASES[case]
    spec = make()
    assert spec.payload_json == payload_text
    assert spec.model_json == model_text
    assert spec.idempotency_key == _sha(key_text)
    payload = spec.to_payload()
    assert json.dumps(payload) == payload_text  # the dict, its values and their order
    assert _idempotency_key(payload) == _sha(key_text)  # the reference path agrees
    again = make()  # a second spec of equal (not identical) parts: the same texts
    assert (again.idempotency_key, again.payload_json) == (_sha(key_text), payload_text)


def test_the_reference_key_leaves_out_only_the_version_and_a_false_stream():
    payload = {"version": 2, "model": {"a": 1}, "stream": False, "samples": None}
    assert _idempotency_key(payload) == _sha('{"model":{"a":1},"samples":null}')
    assert payload == {"version": 2, "model": {"a": 1}, "stream": False, "samples": None}
    payload["stream"] = True
    assert _idempotency_key(payload) == _sha('{"model":{"a":1},"samples":null,"stream":true}')


def test_specs_sharing_their_parts_differ_in_each_scalar():
    """The combination's texts are cached by the parts' identities and the scalars: specs
    that share config, calibration and evaluation objects and differ in one scalar each get
    their own texts (a cache key missing a scalar would hand one the other's)."""
    base = JobSpec(parse_model_source("hf:/models/x"),
                   calibration=parse_calibration_source("factory:m:c"), samples=8,
                   evaluation=parse_evaluation_source("text:/t.txt"), weights_digest="d")
    changes = {"format": "compressed-tensors", "samples": 9, "weights_digest": "e",
               "max_shard_size": 1000, "pipeline": "in_memory", "calibration": None,
               "evaluation": None}
    texts = {(base.idempotency_key, base.payload_json)}
    for field, value in changes.items():
        extra = {"samples": None} if field == "calibration" else {}
        other = dataclasses.replace(base, **{field: value}, **extra)
        payload = other.to_payload()
        assert other.payload_json == json.dumps(payload), field
        assert other.idempotency_key == _idempotency_key(payload), field
        texts.add((other.idempotency_key, other.payload_json))
    assert len(texts) == len(changes) + 1
    streamed = dataclasses.replace(JobSpec(base.model), stream=True)
    assert streamed.idempotency_key == _idempotency_key(streamed.to_payload())
    assert streamed.idempotency_key != JobSpec(base.model).idempotency_key


def test_copies_for_other_models_have_their_own_texts():
    """``with_model`` reuses the texts around the model: each copy's texts are its model's
    and digest's, whether the original's texts were computed before or not."""
    spec = JobSpec(parse_model_source("factory:m:g"), format="pt")
    key_before = spec.idempotency_key  # cached on the original before the copies
    make, key_text, payload_text, model_text = CASES["pt format, defaults"]
    copy = spec.with_model(parse_model_source("factory:m:f"))
    assert copy == make()
    assert (copy.idempotency_key, copy.payload_json, copy.model_json) == (
        _sha(key_text), payload_text, model_text)
    assert spec.idempotency_key == key_before != copy.idempotency_key
    assert spec.model.target == "m:g" and copy.model.target == "m:f"


def test_a_copy_with_another_digest_writes_that_digest():
    make, key_text, payload_text, _ = CASES["stream and weights digest"]
    spec = JobSpec(parse_model_source("hf:/models/y"), stream=True, weights_digest="d0")
    first = spec.with_model(parse_model_source("hf:/models/z"), "d0")  # frames the original
    assert first.idempotency_key == _idempotency_key(first.to_payload())
    copy = spec.with_model(parse_model_source("hf:/models/x"), "d1")  # not with its frame
    assert copy == make()
    assert (copy.idempotency_key, copy.payload_json) == (_sha(key_text), payload_text)
    no_digest = copy.with_model(copy.model)
    assert no_digest.weights_digest is None
    assert '"weights_digest"' not in no_digest.payload_json
    assert no_digest.idempotency_key == _idempotency_key(no_digest.to_payload())


def test_a_copy_for_a_model_of_another_scheme_is_checked_as_a_new_spec():
    streamed = JobSpec(parse_model_source("hf:/models/x"), stream=True)
    with pytest.raises(BadConfigError) as e:
        streamed.with_model(parse_model_source("factory:m:f"))
    assert str(e.value) == ("stream: true: the model must be an hf: folder (its safetensors "
                            "are streamed)")
    make, key_text, _, _ = CASES["pt format, defaults"]
    hf_pt = JobSpec(parse_model_source("hf:/models/x"), format="pt", weights_digest="d")
    copy = hf_pt.with_model(parse_model_source("factory:m:f"))
    assert copy == make() and copy.idempotency_key == _sha(key_text)


def test_the_text_caches_stay_bounded():
    """A submit's distinct parts are few, but a long-running process must not grow the
    caches without end: each is cleared when it reaches its limit."""
    limit = spec_module._TEXTS_LIMIT
    model = parse_model_source("factory:m:f")
    calibration = parse_calibration_source("factory:m:c")
    for n in range(limit + 10):
        spec = JobSpec(model, calibration=calibration, samples=1000 + n)
        assert spec.idempotency_key == _idempotency_key(spec.to_payload())
        assert len(spec_module._FRAMES) <= limit and len(spec_module._TEXTS) <= limit


def test_a_combination_builds_its_texts_once(monkeypatch):
    """The point of the fast path (a matrix builds thousands of specs per combination): the
    texts around the model are built once for a combination's parts, whether its specs are
    copies from ``with_model`` or built anew from the same objects."""
    built = []
    real = spec_module._frame_texts
    monkeypatch.setattr(spec_module, "_frame_texts",
                        lambda spec: built.append(spec.model.target) or real(spec))
    config = QuantConfig(min_layer_size=7)  # a new object: nothing of it is cached yet
    spec = JobSpec(parse_model_source("factory:m:f"), config)
    copies = [spec.with_model(parse_model_source(f"factory:m:g{i}")) for i in range(3)]
    anew = [JobSpec(parse_model_source(f"factory:m:h{i}"), config) for i in range(3)]
    keys = {s.idempotency_key for s in [spec, *copies, *anew]}
    assert len(keys) == 7 and built == ["m:f"]


def test_each_part_is_serialised_once(monkeypatch):
    """Each part's JSON is built once per object and reused (a matrix repeats its config
    and sources across thousands of jobs): two specs sharing a model and a config serialise
    each part once; only the second format is new."""
    monkeypatch.setattr(spec_module, "_TEXTS", {})
    monkeypatch.setattr(spec_module, "_FRAMES", {})
    seen = []
    plain = spec_module._plain
    monkeypatch.setattr(spec_module, "_plain", lambda part: seen.append(part) or plain(part))
    flat = grammar.flat_texts  # a source's texts: built by hand, cached on the source
    monkeypatch.setattr(grammar, "flat_texts", lambda *a: seen.append(a[0]["target"]) or flat(*a))
    model, config = parse_model_source("factory:m:once"), QuantConfig(min_layer_size=11)
    first, second = JobSpec(model, config), JobSpec(model, config, format="pt")
    assert first.idempotency_key != second.idempotency_key
    assert seen == ["m:once", config, "safetensors", None, "pt"]


class _Int(int):
    pass


@pytest.mark.parametrize("kwargs", [
    {}, {"seed": 3, "hidden": 64}, {"flag": True, "off": False, "none": None},
    {"x": 0.1, "big": 1e300, "neg": -2.5}, {"s": 'a "quoted", spaced: text'},
    {"u": "caf\u00e9 \u2603 \U0001f600", "ctl": "tab\tnew\nline\x7f"},
    {"key:with,seps": 1, "n\u00e9": "v", "a_b": 1, "a": 2, "A": 3},
    {"nested": {"b": 1, "a": [2, 3]}}, {"list": [1, "x"]}, {1: 2}, {"sub": _Int(5)},
], ids=["empty", "ints", "bools-none", "floats", "quotes", "unicode", "odd-keys", "nested",
        "list", "int-key", "int-subclass"])
@pytest.mark.parametrize("weights", [None, "/w/a b.pt"], ids=["no-weights", "weights"])
def test_source_texts_equal_the_encoders(kwargs, weights):
    """A source's two texts, written by hand for flat arguments (the encoder for the rest),
    are byte for byte ``json.dumps`` of its canonical dict, sorted compact and default."""
    source = ModelSource("factory", "m:f", tuple(sorted(kwargs.items())), weights)
    value = source.canonical()
    want = json.dumps(value, sort_keys=True, separators=(",", ":")), json.dumps(value)
    assert source.json_texts() == want
    assert spec_module._part_texts(source) == want


@pytest.mark.parametrize("kwargs", [
    {"seed": 3, "name": "x"}, {"x": 1.5, "flag": None}, {"u": "\u2603", "deep": {"a": [1]}},
], ids=["flat", "float-none", "nested"])
def test_a_mapping_source_reads_as_the_encoder_writes(kwargs):
    """The display text of a mapping source (its messages' prefix) and its texts."""
    value = {"factory": "m:f", "kwargs": kwargs}
    source = parse_model_source(value)
    assert source.text == json.dumps(value, sort_keys=True, default=str)
    assert source.json_texts()[1] == json.dumps(source.canonical())


@pytest.mark.parametrize("kwargs", [
    (("x", float("nan")),), (("x", float("-inf")),), (("x", object()),),
    (("x", {"y": float("inf")}),), ((("t",), 1),),
], ids=["nan", "inf", "object", "nested-inf", "tuple-key"])
def test_arguments_that_are_not_json_are_refused(kwargs):
    """The check that skips the encoder for flat scalar arguments still refuses the rest."""
    with pytest.raises(BadInputError, match="m:f: arguments must be JSON values"):
        ModelSource("factory", "m:f", kwargs)


@pytest.mark.parametrize("make", [
    lambda: CalibrationSource("factory", "m:c", (("n", 2),), batch_size=4, max_length=True),
    lambda: CalibrationSource("factory", "m:c", (("n", 2),), batch_size=4, max_length=1),
    lambda: CalibrationSource("factory", "m:c", (("n", 2),), batch_size=None, max_length=-0.0),
    lambda: CalibrationSource("factory", "m:c", (("n", 2),), batch_size=None, max_length=0.0),
    lambda: ModelSource("factory", 'm:f"kwargs":{}', (("a", 1),), 'w"kwargs": {}'),
    lambda: ModelSource("factory", "m:f", (("a", 1),), "\u2603"),
], ids=["true", "one", "minus-zero", "zero", "kwargs-in-strings", "unicode-weights"])
def test_source_frames_are_never_mixed_up(make):
    """The texts around a source's arguments are cached by its other fields (str or None
    values only): equal values written differently (True and 1, -0.0 and 0.0) never share."""
    for _ in range(2):
        source = make()
        value = source.canonical()
        assert source.json_texts() == (
            json.dumps(value, sort_keys=True, separators=(",", ":")), json.dumps(value))
