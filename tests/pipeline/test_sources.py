"""Model and calibration sources: grammar, canonical form, loading and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from mono_quant import BadInputError, demo_models, save_model
from mono_quant.pipeline import (
    CalibrationSource,
    ModelSource,
    parse_calibration_source,
    parse_model_source,
)
from tests.io.hf_fixture import CALIBRATION_TEXT, make_hf_folder

MLP = "mono_quant.demo_models:mlp"


def test_string_and_mapping_forms_are_the_same_source(tmp_path):
    w = tmp_path / "w.safetensors"
    text = f"factory:{MLP}?hidden=128&seed=1&weights={w}"
    mapping = {"factory": MLP, "kwargs": {"seed": 1, "hidden": 128}, "weights": str(w)}
    a, b = parse_model_source(text), parse_model_source(mapping)
    assert a == b and hash(a) == hash(b)
    assert a.canonical() == {"kwargs": {"hidden": 128, "seed": 1}, "scheme": "factory",
                             "target": MLP, "weights": str(w)}
    assert json.dumps(a.canonical()) == json.dumps(b.canonical())  # stable ordering
    assert parse_model_source(str(a)) == a
    assert a.text == text


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("hidden=128", {"hidden": 128}),
        ("x=0.5&flag=true&none=null", {"x": 0.5, "flag": True, "none": None}),
        ("name=abc", {"name": "abc"}),
        ("name=%22128%22", {"name": "128"}),
        ("sizes=[1,2]", {"sizes": [1, 2]}),
        ("s=a%26b%3Dc", {"s": "a&b=c"}),
    ],
    ids=["int", "json-literals", "plain-string", "quoted-string", "list", "percent-encoded"],
)
def test_argument_values(query, expected):
    src = parse_model_source(f"factory:{MLP}?{query}")
    assert src.canonical()["kwargs"] == expected
    assert parse_model_source(str(src)) == src


def test_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = parse_model_source("hf:models/tiny")
    assert src.target == str(tmp_path / "models" / "tiny")
    other = parse_model_source({"hf": "tiny"}, base_dir="/data/models")
    assert other.canonical() == {"kwargs": {}, "scheme": "hf", "target": "/data/models/tiny",
                                 "weights": None}
    cal = parse_calibration_source("calib.txt?batch_size=4")
    assert (cal.scheme, cal.target, cal.batch_size) == ("text", str(tmp_path / "calib.txt"), 4)
    assert parse_calibration_source("x.safetensors").scheme == "tensors"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("onnx:model.onnx", "unknown model source scheme onnx:; expected hf:, factory:"),
        ("model.bin", r"unknown model source scheme \(none\)"),
        ("factory:no_colon_here", "is not 'package.module:callable'"),
        (f"factory:{MLP}?hidden", "argument 'hidden' is not key=value"),
        (f"factory:{MLP}?a=1&a=2", "argument 'a' is given twice"),
        ("hf:/x?revision=main", "hf: sources take no arguments"),
        ({"factory": MLP, "kwarg": {}}, "unknown field.*kwarg; allowed: kwargs, weights"),
        ({"hf": "/x", "factory": MLP}, "needs exactly one of hf, factory"),
        ({"factory": MLP, "kwargs": {"x": float("nan")}}, "arguments must be JSON values"),
        (42, "expected a string such as 'hf:PATH' or a mapping, got int"),
    ],
    ids=["unknown-scheme", "no-scheme", "bad-target", "no-value", "duplicate", "hf-args",
         "unknown-field", "two-schemes", "not-json", "not-a-string"],
)
def test_model_source_syntax_errors(value, message):
    with pytest.raises(BadInputError, match=message) as err:
        parse_model_source(value)
    if isinstance(value, str):
        assert value in str(err.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("factory:mono_quant.nothing_here:mlp", "cannot import module 'mono_quant.nothing_here'"),
        ("factory:mono_quant.demo_models:nope", "module 'mono_quant.demo_models' has no 'nope'"),
        ("factory:mono_quant.demo_models:__all__", "is a list, not a callable"),
        ("factory:mono_quant.demo_models:vector_batches",
         "the factory returned a list, expected a torch.nn.Module"),
        (f"factory:{MLP}?hiden=3", "the factory raised TypeError: .*unexpected keyword"),
        ("hf:/definitely/not/here", "no such folder /definitely/not/here"),
        (f"factory:{MLP}?weights=/no/such.safetensors", "weights file /no/such.safetensors"),
    ],
    ids=["import-error", "missing-attr", "not-callable", "wrong-type", "bad-kwarg",
         "missing-folder", "missing-weights"],
)
def test_model_source_load_errors(value, message):
    with pytest.raises(BadInputError, match=message) as err:
        parse_model_source(value).load()
    assert value in str(err.value)


@pytest.mark.parametrize("ext", ["safetensors", "pt"])
def test_factory_weights_load_strictly(tmp_path, ext):
    trained = demo_models.mlp(hidden=32, seed=7)
    path = save_model(trained, tmp_path / f"w.{ext}")
    model = parse_model_source(f"factory:{MLP}?hidden=32&seed=0&weights={path}").load()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.state_dict().items())
    with pytest.raises(BadInputError, match=r"weights .*: tensor '0.weight' has shape \[32, 256\]"
                                            r", the model expects \[64, 256\]"):
        parse_model_source(f"factory:{MLP}?hidden=64&weights={path}").load()
    extra = {**trained.state_dict(), "extra.weight": torch.zeros(1)}
    bad = save_model(extra, tmp_path / f"extra.{ext}")
    with pytest.raises(BadInputError, match="unexpected 'extra.weight'"):
        parse_model_source(f"factory:{MLP}?hidden=32&weights={bad}").load()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    pytest.importorskip("transformers", reason="hf: sources need the 'hf' extra")
    return make_hf_folder(tmp_path_factory.mktemp("hf") / "tiny")


def test_hf_source_loads_the_saved_model(hf_folder):
    model = parse_model_source(f"hf:{hf_folder}").load()
    reference = demo_models.tiny_transformer()
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.state_dict().items())


def test_hf_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="has no config.json"):
        parse_model_source(f"hf:{tmp_path / 'empty'}").load()


def test_text_calibration_uses_the_model_tokenizer(hf_folder, tmp_path):
    (tmp_path / "calib.txt").write_text(CALIBRATION_TEXT)
    model = parse_model_source(f"hf:{hf_folder}")
    cal = parse_calibration_source(f"text:{tmp_path / 'calib.txt'}?batch_size=4&max_length=16")
    batches = cal.load(model, samples=5)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 1]
    assert all(b["input_ids"].shape[1] <= 16 for b in batches)
    first = "the quick brown fox jumps over the lazy dog"[:16]
    assert batches[0]["input_ids"][0].tolist() == [ord(c) for c in first]  # char tokenizer
    assert batches[1]["attention_mask"].sum() == len("short line")
    with pytest.raises(BadInputError, match="text calibration needs an hf: model source"):
        cal.load(parse_model_source(f"factory:{MLP}"), samples=5)


def test_tensor_file_calibration(tmp_path):
    x = torch.randn(10, 256)
    save_file({"x": x}, tmp_path / "one.safetensors")
    batches = parse_calibration_source(f"tensors:{tmp_path / 'one.safetensors'}?batch_size=4")\
        .load(samples=9)
    assert [b.shape[0] for b in batches] == [4, 4, 1]
    assert torch.equal(torch.cat(batches), x[:9])
    ids = torch.randint(0, 256, (6, 8))
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    save_file(kw, tmp_path / "kw.safetensors")
    batches = parse_calibration_source({"tensors": str(tmp_path / "kw.safetensors"),
                                        "batch_size": 4}).load()
    assert [sorted(b) for b in batches] == [["attention_mask", "input_ids"]] * 2
    assert torch.equal(batches[1]["input_ids"], ids[4:])
    save_file({"a": torch.zeros(3, 2), "b": torch.zeros(4, 2)}, tmp_path / "bad.safetensors")
    with pytest.raises(BadInputError, match="bad.safetensors: every tensor needs the same leading"):
        parse_calibration_source(f"tensors:{tmp_path / 'bad.safetensors'}").load()


def test_factory_calibration_and_samples():
    src = parse_calibration_source("factory:mono_quant.demo_models:vector_batches?n=3&batch=16")
    assert [b.shape[0] for b in src.load(samples=40)] == [16, 16, 8]
    assert len(src.load()) == 3
    with pytest.raises(BadInputError, match="samples=0: expected a positive integer"):
        src.load(samples=0)
    bad = parse_calibration_source(f"factory:{MLP}")
    with pytest.raises(BadInputError, match="the factory returned a Sequential, expected an "
                                            "iterable of batches"):
        bad.load()


def test_user_code_that_raises(tmp_path, monkeypatch):
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "gen_mod.py").write_text(
        "import torch\n"
        "def batches():\n"
        "    yield torch.zeros(2, 4)\n"
        "    raise RuntimeError('boom in the loop')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BadInputError, match="importing module 'broken_mod' raised RuntimeError"):
        parse_model_source("factory:broken_mod:f").load()
    with pytest.raises(BadInputError, match="factory:gen_mod:batches: iterating the calibration "
                                            "batches raised RuntimeError: boom in the loop"):
        parse_calibration_source("factory:gen_mod:batches").load()
    assert len(parse_calibration_source("factory:gen_mod:batches").load(samples=2)) == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("s3://bucket/x", "unknown calibration source scheme s3:"),
        ("tensors:x.safetensors?shuffle=1", "unknown option.*shuffle for tensors: sources"),
        ("text:x.txt?batch_size=0", "batch_size=0: expected a positive integer"),
        ({"text": "x.txt", "max_length": "long"}, "max_length='long': expected a positive"),
    ],
    ids=["unknown-scheme", "unknown-option", "zero-batch", "bad-max-length"],
)
def test_calibration_syntax_errors(value, message):
    with pytest.raises(BadInputError, match=message):
        parse_calibration_source(value)


def test_missing_calibration_files(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        parse_calibration_source(str(tmp_path / "nope.safetensors")).load()
    with pytest.raises(BadInputError, match="no such file"):
        parse_calibration_source(str(tmp_path / "nope.txt")).load(ModelSource("hf", str(tmp_path)))


@pytest.mark.parametrize(
    ("parse", "value"),
    [
        (parse_model_source, f"factory:{MLP}?hidden=8&weights=/w.pt"),
        (parse_model_source, f"factory:{MLP}"),
        (parse_model_source, "hf:/models/tiny"),
        (parse_calibration_source, "factory:mono_quant.demo_models:vector_batches?n=2"),
        (parse_calibration_source, "tensors:/x.safetensors?batch_size=4"),
        (parse_calibration_source, "text:/x.txt?batch_size=2&max_length=64"),
    ],
    ids=["factory-weights", "factory", "hf", "cal-factory", "cal-tensors", "cal-text"],
)
def test_canonical_dicts_parse_back(parse, value):
    src = parse(value)
    assert parse(src.canonical()) == src
    assert parse(json.loads(json.dumps(src.canonical()))) == src  # e.g. from a catalog row


def test_sources_built_in_code():
    src = ModelSource("factory", MLP, (("hidden", 8),))
    assert src.text == f"factory:{MLP}?hidden=8"
    with pytest.raises(BadInputError, match="scheme 'tensors' is not one of hf, factory"):
        ModelSource("tensors", "/x")
    with pytest.raises(BadInputError, match="hf: takes no kwargs"):
        ModelSource("hf", "/x", (("a", 1),))
    assert CalibrationSource("tensors", os.sep + "x.safetensors", batch_size=2).canonical() == {
        "batch_size": 2, "kwargs": {}, "scheme": "tensors", "target": "/x.safetensors"}


def test_sources_and_pipeline_exports_import_without_torch():
    # A fresh interpreter (this one has torch already): the scheduler parses sources of every
    # job it submits, and must not pay for torch.
    code = (
        "import sys, mono_quant.io, mono_quant.pipeline.sources as s\n"
        "from mono_quant.pipeline import JobSpec, parse_calibration_source\n"
        "m = s.parse_model_source('factory:mono_quant.demo_models:mlp?hidden=128')\n"
        "c = parse_calibration_source('text:calib.txt?batch_size=4')\n"
        "print(m.canonical()['kwargs'], c.scheme, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split("\n")[0] == "{'hidden': 128} text False"


@pytest.mark.parametrize("value", [
    {"factory": "m:f"}, {"factory": "m:f", "kwargs": {}},
    {"factory": "m.sub:make.inner", "kwargs": {"b": 1, "a": "x", "c": None, "d": [1, {"z": 2}]}},
    {"factory": "m:f", "kwargs": {"x": float("nan")}}, {"factory": "m:f", "kwargs": {1: 2}},
    {"factory": "m:f", "kwargs": [1]}, {"factory": "not a target"}, {"factory": 3},
    {"kwargs": {"a": 1}}, {"factory": "os:system"}, {"factory": "m:_private"},
    {"factory": "m:f", "kwargs": {"k\"ey": "v\u00e9\n", "a": True, "b": 0.5, "c": -0.0}},
    {"factory": "m:f", "kwargs": {"x": 10**30, "y": None, "z": "a:b, c"}},
], ids=["bare", "empty-kwargs", "mixed", "nan", "int-key", "list-kwargs", "bad-target",
        "int-target", "no-factory", "not-allowed", "private", "escapes", "big-int"])
def test_the_factory_mapping_shortcut_parses_as_the_general_path(value, monkeypatch):
    """``{"factory": ..., "kwargs": ...}`` (a generated matrix's models) skips the generic
    steps: the same source (text included) or the same error as the general path."""
    from mono_quant.pipeline import sources
    from mono_quant.pipeline.allowlist import FactoryAllowList

    allow = FactoryAllowList.parse("m, m.*")

    def parse():
        try:
            source = parse_model_source(value, factories=allow)
        except Exception as e:  # the error is part of what must match
            return type(e), str(e)
        return source, source.text, source.json_texts(), str(source)

    fast = parse()
    monkeypatch.setattr(sources, "_FACTORY_ONLY", frozenset())  # the general path only
    assert fast == parse()
