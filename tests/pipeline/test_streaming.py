"""Streaming quantization equals the in-memory path, tensor for tensor."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mono_quant import (
    BadConfigError,
    BadInputError,
    QuantConfig,
    demo_models,
    load_model,
    load_quantized,
    quantize_checkpoint,
    quantize_model,
    read_info,
    save_model,
)
from mono_quant.pipeline import checkpoint_files

pytest.importorskip("transformers", reason="the tiny transformer needs the 'hf' extra")

CONFIGS = [
    pytest.param(QuantConfig(), id="sym-channel"),
    pytest.param(QuantConfig(scheme="asymmetric", granularity="per_group", group_size=32),
                 id="asym-group32"),
    pytest.param(QuantConfig(granularity="per_tensor", exclude=["lm_head"]),
                 id="sym-tensor-no-head"),
    pytest.param(QuantConfig(weight_observer="mse", include=["re:.*mlp"]), id="mse-mlp-only"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model = demo_models.tiny_transformer()
    model.save_pretrained(folder)
    sharded = tmp_path_factory.mktemp("sharded")
    model.save_pretrained(sharded, max_shard_size="60KB")
    return model, folder, sharded


def _assert_equal_to_in_memory(model, out, config):
    qmodel, ref_info = quantize_model(model, config, progress=False)
    info = read_info(out)
    assert sorted(info.selected_layers) == sorted(ref_info.selected_layers)
    assert info.config == config and info.metrics["streamed"] is True
    loaded, expected = load_model(out), qmodel.state_dict()
    assert set(loaded) == set(expected)
    for name, t in expected.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
    for layer in ref_info.selected_layers:
        assert info.metrics["layer_weight_sqnr_db"][layer] == pytest.approx(
            ref_info.metrics["layer_weight_sqnr_db"][layer], rel=1e-9)
    batch = demo_models.token_batches(n=1)[0]
    again = load_quantized(out, demo_models.tiny_transformer(seed=9))
    with torch.inference_mode():
        assert torch.equal(again(**batch).logits, qmodel(**batch).logits)


@pytest.mark.parametrize("config", CONFIGS)
def test_streaming_equals_in_memory(tmp_path, tiny, config):
    model, folder, _ = tiny
    out = tmp_path / "q.safetensors"
    info = quantize_checkpoint(folder, out, config, progress=False)
    assert info == read_info(out)
    load_file(out)  # the real library reads it (header padded with spare spaces)
    _assert_equal_to_in_memory(model, out, config)


def test_sharded_checkpoint(tmp_path, tiny):
    model, _, sharded = tiny
    files = checkpoint_files(sharded)
    assert len(files) > 1 and all(f.parent == sharded for f in files)
    out = tmp_path / "q.safetensors"
    quantize_checkpoint(sharded / "model.safetensors.index.json", out, progress=False)
    _assert_equal_to_in_memory(model, out, QuantConfig())


def test_bfloat16_mlp_checkpoint(tmp_path):
    model = demo_models.mlp(64, 96, 16).to(torch.bfloat16)
    src = save_model(model, tmp_path / "fp.safetensors")
    out = quantize_checkpoint(src, tmp_path / "q.safetensors", QuantConfig(), progress=False)
    qmodel, info = quantize_model(model, QuantConfig(), progress=False)
    loaded = load_model(tmp_path / "q.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in qmodel.state_dict().items())
    assert out.metrics["size_bytes_fp"] == info.metrics["size_bytes_fp"]


def test_streaming_refuses_static_mode_and_empty_selection(tmp_path, tiny):
    _, folder, _ = tiny
    with pytest.raises(BadConfigError, match="streams weight-only quantization"):
        quantize_checkpoint(folder, tmp_path / "q.safetensors", QuantConfig(mode="static"))
    with pytest.raises(BadConfigError, match="no layers selected .* 15 linear weight"):
        quantize_checkpoint(folder, tmp_path / "q.safetensors", QuantConfig(include=["Conv2d"]))
    assert list(tmp_path.iterdir()) == []


def test_streaming_bad_inputs(tmp_path, tiny):
    _, folder, _ = tiny
    with pytest.raises(BadInputError, match="no model.safetensors.index.json or model.safe"):
        quantize_checkpoint(tmp_path, tmp_path / "q.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(BadInputError, match="not a safetensors index .*'weight_map'"):
        quantize_checkpoint(index, tmp_path / "q.safetensors")
    with pytest.raises(BadInputError, match="writes .safetensors"):
        quantize_checkpoint(folder, tmp_path / "q.pt")
    quantized = quantize_checkpoint(folder, tmp_path / "q.safetensors", progress=False)
    assert quantized.selected_layers
    # int8 weights are not float linear weights: nothing left to quantize
    with pytest.raises(BadConfigError, match="no layers selected .* 0 linear weight"):
        quantize_checkpoint(tmp_path / "q.safetensors", tmp_path / "qq.safetensors")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A tiny GPT-2 (transformers Conv1D layers) saved with save_pretrained, plus a sharded copy."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    sharded = tmp_path_factory.mktemp("gpt2-sharded")
    model.save_pretrained(sharded, max_shard_size="20KB")
    return folder, sharded


def test_streaming_quantizes_conv1d_checkpoints_like_the_model(tmp_path, tiny_gpt2):
    """GPT-2's Conv1D weights are [in, out]: streaming transposes them before quantizing, so
    the artifact equals quantize_model's (QuantConv1D) tensor for tensor, on every layout of
    the checkpoint, and loads into the float model (old code refused these checkpoints)."""
    from transformers import GPT2LMHeadModel

    folder, sharded = tiny_gpt2
    # the premise: Conv1D's c_attn weight is [in=32, out=96], where nn.Linear's is [96, 32]
    assert load_file(folder / "model.safetensors")["transformer.h.0.attn.c_attn.weight"].shape \
        == (32, 96)
    model = GPT2LMHeadModel.from_pretrained(folder)
    qmodel, info = quantize_model(model, QuantConfig(), progress=False)
    assert "transformer.h.0.attn.c_attn" in info.selected_layers
    expected = save_model(qmodel, tmp_path / "memory.safetensors", info)
    want = load_file(expected)
    for i, src in enumerate([folder, folder / "model.safetensors",
                             sharded / "model.safetensors.index.json"]):
        out = tmp_path / f"q{i}.safetensors"
        streamed = quantize_checkpoint(src, out, progress=False)
        assert streamed.selected_layers == info.selected_layers
        got = load_file(out)
        assert got.keys() == want.keys()
        for name, t in want.items():
            assert torch.equal(got[name], t), name
    assert got["transformer.h.0.attn.c_attn.weight"].shape == (96, 32)  # [out, in] int8
    again = load_quantized(out, GPT2LMHeadModel.from_pretrained(folder))
    ids = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(again(ids).logits, qmodel(ids).logits)


@pytest.mark.parametrize(
    ("config", "conv1d"),
    [
        ({"architectures": ["GPT2LMHeadModel"]}, True),
        ({"model_type": "openai-gpt"}, True),
        ({"model_type": "imagegpt"}, True),
        ({"model_type": "decision_transformer"}, True),
        ({"model_type": "clvp"}, True),
        ({"model_type": "gpt_bigcode", "architectures": ["GPTBigCodeForCausalLM"]}, False),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, False),
    ],
    ids=["gpt2-architecture-only", "openai-gpt", "imagegpt", "decision-transformer", "clvp",
         "gpt-bigcode-is-linear", "llama"],
)
def test_conv1d_families_by_config(tmp_path, config, conv1d):
    from mono_quant.pipeline.streaming import _conv1d_layers

    (tmp_path / "config.json").write_text(json.dumps(config))
    layers = ["h.0.attn.c_attn", "h.0.mlp.c_fc", "h.0.mlp.c_proj", "lm_head", "score"]
    expected = {"h.0.attn.c_attn", "h.0.mlp.c_fc", "h.0.mlp.c_proj"} if conv1d else set()
    assert _conv1d_layers(tmp_path, layers) == expected
    assert _conv1d_layers(tmp_path / "model.safetensors", layers) == expected


def test_unreadable_config_json_is_bad_input(tmp_path):
    src = save_model(demo_models.mlp(64, 96, 16), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(BadInputError, match=r"config\.json: not readable JSON .* it is read to "
                                            "tell how the checkpoint's weights are laid out"):
        quantize_checkpoint(src, tmp_path / "q.safetensors", progress=False)


def test_conv1d_list_matches_the_installed_transformers():
    """Every transformers model built from pytorch_utils.Conv1D is in the transposed list."""
    import importlib.util
    import re
    from pathlib import Path

    from mono_quant.pipeline.streaming import _CONV1D_MODEL_TYPES

    models = Path(importlib.util.find_spec("transformers").submodule_search_locations[0]) / "models"
    found = set()
    for modeling in models.glob("*/modeling_*.py"):
        imports = re.findall(r"from \.\.\.pytorch_utils import (\([^)]*\)|[^\n]*)",
                             modeling.read_text())
        if any(re.search(r"\bConv1D\b", names) for names in imports):
            for config in modeling.parent.glob("configuration_*.py"):
                found |= set(re.findall(r'^\s+model_type = "([^"]+)"', config.read_text(), re.M))
    assert "gpt2" in found and "gpt_bigcode" not in found
    assert found <= _CONV1D_MODEL_TYPES, found - _CONV1D_MODEL_TYPES
