"""Sharded safetensors artifacts (max_shard_size): layout, index bytes, loading in
transformers, atomicity under a failure injected mid-write, and the readers' checks."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from mono_quant import QuantConfig, demo_models, load_quantized, quantize_model, save_model
from mono_quant.errors import BadConfigError, BadInputError
from mono_quant.io import load_model, read_info, sha256_path, size_path
from mono_quant.io import sharded as sharded_mod
from mono_quant.io.sharded import INDEX_FILE, parse_size, sharded_folder


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_index_bytes_and_shard_layout_are_exact(tmp_path):
    # 3 float32 tensors of 64, 48 and 200 bytes with a 100-byte limit: a (64) fills shard 1,
    # b (48) would take it to 112 so starts shard 2, c (200 > limit) gets shard 3 alone.
    tensors = {"a": torch.zeros(16), "b": torch.ones(12), "c": torch.arange(50.0)}
    out = save_model(tensors, tmp_path / "m.safetensors", max_shard_size=100)
    assert out.is_dir()
    assert _names(out) == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                           "model-00003-of-00003.safetensors", INDEX_FILE]
    expected = (
        '{\n  "metadata": {\n    "total_size": 312\n  },\n  "weight_map": {\n'
        '    "a": "model-00001-of-00003.safetensors",\n'
        '    "b": "model-00002-of-00003.safetensors",\n'
        '    "c": "model-00003-of-00003.safetensors"\n  }\n}\n'
    )
    assert (out / INDEX_FILE).read_text() == expected
    # each shard is a plain safetensors file the reference reader takes, metadata format=pt
    from safetensors import safe_open

    with safe_open(out / "model-00003-of-00003.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert torch.equal(f.get_tensor("c"), torch.arange(50.0))
    loaded = load_model(out)
    assert sorted(loaded) == ["a", "b", "c"]
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert size_path(out) == sum(p.stat().st_size for p in out.iterdir())


@pytest.mark.parametrize(("text", "expected"), [
    ("5GB", 5 * 10**9), ("5gb", 5 * 10**9), ("500MB", 500 * 10**6), ("2MiB", 2 * 2**20),
    ("1GiB", 2**30), ("10KB", 10_000), ("3 kib", 3072), ("1024", 1024), (77, 77),
    ("1.5MB", 1_500_000),
], ids=lambda v: str(v))
def test_parse_size_takes_transformers_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["5XB", "GB", "-1GB", "0", 0, True, 1.5, "five"],
                         ids=lambda v: repr(v))
def test_parse_size_refuses_nonsense_naming_the_field(bad):
    with pytest.raises(BadConfigError, match=r"max_shard_size="):
        parse_size(bad)


def test_pt_format_cannot_be_sharded(tmp_path):
    with pytest.raises(BadConfigError, match="format 'pt' is one file"):
        save_model({"a": torch.zeros(2)}, tmp_path / "m.pt", max_shard_size="1KB")
    assert not (tmp_path / "m.pt").exists()


def _quantized_llama(mode: str = "weight_only"):
    config = QuantConfig(mode=mode, exclude=["lm_head"])
    model = demo_models.tiny_transformer()
    return quantize_model(model, config, demo_models.token_batches(n=2), progress=False)


@pytest.mark.slow
def test_sharded_safetensors_reload_equals_unsharded(tmp_path):
    qmodel, info = _quantized_llama()
    single = save_model(qmodel, tmp_path / "one.safetensors", info)
    many = save_model(qmodel, tmp_path / "many.safetensors", info, max_shard_size="20KB")
    assert len([n for n in _names(many) if n.startswith("model-")]) > 3
    assert read_info(many) == read_info(single) == info
    batch = demo_models.token_batches(n=1)[0]
    a = load_quantized(single, demo_models.tiny_transformer(seed=5))
    b = load_quantized(many, demo_models.tiny_transformer(seed=6))
    with torch.inference_mode():
        assert torch.equal(a(**batch).logits, b(**batch).logits)
        assert torch.equal(b(**batch).logits, qmodel(**batch).logits)


def test_sharded_float_checkpoint_loads_in_transformers(tmp_path):
    """The index and shard names are the ones transformers reads: a float Llama written by
    our sharded writer, with its config beside it (as `mono-quant export` copies it), loads
    with from_pretrained and gives the model's logits bit for bit."""
    pytest.importorskip("transformers", reason="transformers is not installed (the 'hf' extra)")
    from transformers import AutoModelForCausalLM

    model = demo_models.tiny_transformer()
    out = save_model(model, tmp_path / "float.safetensors", max_shard_size="50KB")
    serve = tmp_path / "serve"
    shutil.copytree(out, serve)
    model.config.save_pretrained(serve)
    hf = AutoModelForCausalLM.from_pretrained(serve, local_files_only=True)
    batch = demo_models.token_batches(n=1)[0]
    with torch.inference_mode():
        assert torch.equal(hf(**batch).logits, model(**batch).logits)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["weight_only", "static"])
def test_sharded_compressed_tensors_loads_in_transformers_like_unsharded(tmp_path, mode):
    pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed")
    pytest.importorskip("transformers", reason="transformers is not installed (the 'hf' extra)")
    from transformers import AutoModelForCausalLM

    qmodel, info = _quantized_llama(mode)
    single = save_model(qmodel, tmp_path / "one", info, format="compressed-tensors")
    many = save_model(qmodel, tmp_path / "many", info, format="compressed-tensors",
                      max_shard_size="16KB")
    names = _names(many)
    assert "config.json" in names and INDEX_FILE in names and "model.safetensors" not in names
    assert sum(n.startswith("model-") for n in names) > 3
    assert json.loads((many / "config.json").read_text()) == \
        json.loads((single / "config.json").read_text())
    batch = demo_models.token_batches(n=1)[0]
    with torch.inference_mode():
        one = AutoModelForCausalLM.from_pretrained(single, local_files_only=True)(**batch)
        two = AutoModelForCausalLM.from_pretrained(many, local_files_only=True)(**batch)
        assert torch.equal(one.logits, two.logits)
        again = load_quantized(many, demo_models.tiny_transformer(seed=3))
        assert torch.equal(again(**batch).logits, qmodel(**batch).logits)
    assert read_info(many) == info


def _fail_on_second_shard(monkeypatch, method: str = "_write_shard"):
    """Make the second shard's write fail like a full disk (``_write_shard``: save_model's
    one-pass path; ``_close_shard``: the streaming path)."""
    real = getattr(sharded_mod.ShardedWriter, method)
    calls = []

    def close(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device (injected)")
        real(self, *args)

    monkeypatch.setattr(sharded_mod.ShardedWriter, method, close)
    return calls


@pytest.mark.parametrize("fmt", ["safetensors", "compressed-tensors"])
def test_failure_mid_write_leaves_the_previous_artifact_and_no_debris(tmp_path, monkeypatch, fmt):
    qmodel, info = _quantized_llama()
    target = tmp_path / ("m.safetensors" if fmt == "safetensors" else "m")
    first = save_model(qmodel, target, info, format=fmt, max_shard_size="20KB")
    before = sha256_path(first)
    calls = _fail_on_second_shard(monkeypatch)
    with pytest.raises(OSError, match="injected"):
        save_model(qmodel, target, info, format=fmt, max_shard_size="10KB")
    assert len(calls) == 2  # the failure came after one shard was complete
    assert sha256_path(target) == before  # the old folder, whole
    assert _names(tmp_path) == [target.name]  # no temporary folder or shard left beside it


def test_failure_mid_write_of_a_new_artifact_leaves_nothing(tmp_path, monkeypatch):
    qmodel, info = _quantized_llama()
    _fail_on_second_shard(monkeypatch)
    with pytest.raises(OSError, match="injected"):
        save_model(qmodel, tmp_path / "m.safetensors", info, max_shard_size="10KB")
    assert os.listdir(tmp_path) == []


def test_failure_mid_stream_leaves_nothing(tmp_path, monkeypatch):
    calls = _fail_on_second_shard(monkeypatch, "_close_shard")
    with pytest.raises(OSError, match="injected"), \
            sharded_folder(tmp_path / "m.safetensors", max_shard_size=400) as writer:
        for i in range(6):
            writer.add(f"t{i}", torch.zeros(100))
    assert len(calls) == 2 and os.listdir(tmp_path) == []


def test_one_pass_and_streaming_writes_are_byte_identical(tmp_path):
    torch.manual_seed(0)
    tensors = {f"b.{i}.w": torch.randn(8, 3 + i) for i in range(7)}
    tensors["head"] = torch.randn(40, 8).to(torch.bfloat16)
    with sharded_folder(tmp_path / "a.safetensors", max_shard_size=300) as writer:
        writer.add_all(tensors)
    with sharded_folder(tmp_path / "b.safetensors", max_shard_size=300) as writer:
        for name, t in tensors.items():
            writer.add(name, t)
    assert sha256_path(tmp_path / "a.safetensors") == sha256_path(tmp_path / "b.safetensors")
    assert len(os.listdir(tmp_path / "a.safetensors")) > 3


def test_streaming_writer_holds_no_tensor_between_adds(tmp_path):
    """The API the sequential pipeline uses: tensors added one at a time (block by block),
    metadata set at the end; the folder appears only when the block exits."""
    target = tmp_path / "seq.safetensors"
    with sharded_folder(target, max_shard_size=1000) as writer:
        for i in range(4):
            writer.add(f"layers.{i}.w", torch.full((100,), float(i)))  # 400 B: 2 per shard
            assert not target.exists()
        writer.set_metadata({"note": "written block by block"})
    weight_map = json.loads((target / INDEX_FILE).read_text())["weight_map"]
    assert weight_map == {"layers.0.w": "model-00001-of-00002.safetensors",
                          "layers.1.w": "model-00001-of-00002.safetensors",
                          "layers.2.w": "model-00002-of-00002.safetensors",
                          "layers.3.w": "model-00002-of-00002.safetensors"}
    tensors = load_model(target)
    assert all(torch.equal(tensors[f"layers.{i}.w"], torch.full((100,), float(i)))
               for i in range(4))


def test_writer_refuses_a_repeated_name(tmp_path):
    with pytest.raises(BadInputError, match="'x' was added twice"), \
            sharded_folder(tmp_path / "m.safetensors", 1000) as writer:
        writer.add("x", torch.zeros(2))
        writer.add("x", torch.zeros(2))
    assert os.listdir(tmp_path) == []


def _two_shards(tmp_path):
    tensors = {"a": torch.zeros(16), "b": torch.ones(16)}
    return save_model(tensors, tmp_path / "m.safetensors", max_shard_size=64)


def test_a_missing_shard_is_named(tmp_path):
    out = _two_shards(tmp_path)
    (out / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(BadInputError, match="shard model-00002-of-00002.safetensors named by "
                                            "model.safetensors.index.json is missing"):
        load_model(out)


def test_an_index_that_lies_about_a_shard_is_refused(tmp_path):
    out = _two_shards(tmp_path)
    index = json.loads((out / INDEX_FILE).read_text())
    index["weight_map"]["b"] = "model-00001-of-00002.safetensors"
    (out / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(BadInputError, match="holds other tensors than"):
        load_model(out)


def test_an_index_pointing_outside_the_folder_is_refused(tmp_path):
    out = _two_shards(tmp_path)
    save_model({"a": torch.zeros(16)}, tmp_path / "other.safetensors")
    index = json.loads((out / INDEX_FILE).read_text())
    index["weight_map"]["a"] = "../other.safetensors"
    (out / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(BadInputError, match="is not a .safetensors file name of this folder"):
        load_model(out)


def test_a_folder_with_foreign_files_is_never_replaced(tmp_path):
    out = _two_shards(tmp_path)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="it holds notes.txt"):
        save_model({"a": torch.zeros(4)}, out, max_shard_size=64)
    assert (out / "notes.txt").read_text() == "mine"
