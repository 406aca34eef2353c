"""compressed-tensors folders, checked with the real compressed-tensors and transformers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mono_quant import QuantConfig, demo_models, load_quantized, quantize_model, save_model
from mono_quant.io.interop import pack_int8, unpack_int8

ct = pytest.importorskip(
    "compressed_tensors", reason="compressed-tensors is not installed (the 'interop' extra)"
)

CONFIGS = [
    pytest.param(QuantConfig(), id="w8a16-sym-channel"),
    pytest.param(QuantConfig(scheme="asymmetric"), id="w8a16-asym-channel"),
    pytest.param(QuantConfig(granularity="per_group", group_size=32), id="w8a16-sym-group"),
    pytest.param(QuantConfig(scheme="asymmetric", granularity="per_group", group_size=32),
                 id="w8a16-asym-group"),
    pytest.param(QuantConfig(granularity="per_tensor", scheme="asymmetric"),
                 id="w8a16-asym-tensor"),
    pytest.param(QuantConfig(mode="static"), id="w8a8-sym-channel"),
    pytest.param(QuantConfig(mode="static", granularity="per_tensor"), id="w8a8-sym-tensor"),
    pytest.param(QuantConfig(mode="static", scheme="asymmetric", activation_scheme="symmetric",
                             granularity="per_group", group_size=32), id="w8a8-asym-group"),
]


def _save(tmp_path, config):
    model = demo_models.mlp(64, 96, 16)
    qmodel, info = quantize_model(model, config, demo_models.vector_batches(n=2, features=64),
                                  progress=False)
    return save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors"), qmodel, info


@pytest.mark.parametrize("config", CONFIGS)
def test_compressed_tensors_decompresses_to_our_dequantized_weights(tmp_path, config):
    from compressed_tensors.entrypoints.convert.converters import CompressedTensorsDequantizer
    from compressed_tensors.quantization import QuantizationConfig

    folder, qmodel, info = _save(tmp_path, config)
    block = json.loads((folder / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(block)
    expected_format = "int-quantized" if config.mode == "static" else "pack-quantized"
    assert parsed.format == expected_format
    assert block["config_groups"]["group_0"]["targets"] == ["0", "2", "4"]

    tensors = load_file(folder / "model.safetensors")
    names = {k.rpartition(".")[2] for k in tensors}
    assert ("weight_zero_point" in names) == (config.scheme == "asymmetric")
    assert ("input_scale" in names) == (config.mode == "static")
    assert ("weight_packed" in names) == (config.mode == "weight_only")
    assert tensors["0.weight_scale"].dtype == torch.float32

    dequantizer = CompressedTensorsDequantizer(folder, dtype=torch.float32)
    # compressed-tensors infers each scheme's format itself: it must agree with ours
    assert {s.format.value for s in dequantizer.quant_config.config_groups.values()} == {
        expected_format
    }
    out = dequantizer.process(tensors)
    for layer in info.selected_layers:
        ours = qmodel.get_submodule(layer).dequantized_weight(torch.float32)
        assert torch.equal(out[f"{layer}.weight"], ours), layer
    assert torch.equal(out["0.bias"], qmodel[0].bias)


@pytest.mark.parametrize("shape", [(7, 13), (4, 32), (1, 3), (33, 1)],
                         ids=["7x13", "4x32", "1x3", "33x1"])
@pytest.mark.parametrize("packed_dim", [0, 1])
def test_packing_matches_compressed_tensors(shape, packed_dim):
    from compressed_tensors.compressors.pack_quantized.helpers import (
        pack_to_int32,
        unpack_from_int32,
    )

    q = torch.randint(-128, 128, shape, dtype=torch.int8)
    ours = pack_int8(q, packed_dim)
    assert torch.equal(ours, pack_to_int32(q, 8, packed_dim=packed_dim))
    assert torch.equal(unpack_from_int32(ours, 8, torch.Size(shape), packed_dim=packed_dim), q)
    assert torch.equal(unpack_int8(ours, shape, packed_dim), q)


@pytest.mark.parametrize("mode", ["weight_only", "static"])
def test_transformers_loads_the_folder_with_identical_logits(tmp_path, mode):
    pytest.importorskip("transformers", reason="transformers is not installed (the 'hf' extra)")
    from transformers import AutoModelForCausalLM

    batch = demo_models.token_batches(n=1)[0]
    config = QuantConfig(mode=mode, exclude=["lm_head"])
    qmodel, info = quantize_model(demo_models.tiny_transformer(), config,
                                  demo_models.token_batches(n=2), progress=False)
    folder = save_model(qmodel, tmp_path / "tiny", info, format="compressed-tensors")
    block = json.loads((folder / "config.json").read_text())
    assert block["architectures"] == ["LlamaForCausalLM"]
    assert block["quantization_config"]["ignore"] == ["lm_head", "model.embed_tokens"]
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    with torch.inference_mode():
        assert torch.equal(hf(**batch).logits, qmodel(**batch).logits)
    again = load_quantized(folder, demo_models.tiny_transformer(seed=3))
    with torch.inference_mode():
        assert torch.equal(again(**batch).logits, qmodel(**batch).logits)
