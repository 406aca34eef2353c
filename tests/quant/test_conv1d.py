"""transformers' Conv1D (GPT-2 family) is quantized; formats that cannot hold it refuse."""

from __future__ import annotations

import pytest
import torch

from mono_quant import (
    BadConfigError,
    QuantConfig,
    load_quantized,
    quantize_model,
    read_info,
    save_model,
)
from mono_quant.quant.modules import QuantConv1D, float_weight, qmodule_for
from tests.pipeline.archs import ARCHS

pytest.importorskip("transformers", reason="needs the 'hf' extra")

GPT2 = next(a for a in ARCHS if a.name == "gpt2")
IDS = {"input_ids": torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))}


def test_gpt2_conv1d_layers_are_quantized(tmp_path):
    """The issue's finding: only the tied lm_head was quantized, the artifact was larger."""
    model = GPT2.build()
    conv = model.transformer.h[0].attn.c_attn
    assert qmodule_for(conv) is QuantConv1D
    assert torch.equal(float_weight(conv), conv.weight.t())  # [in, out] -> [out, in]
    qmodel, info = quantize_model(model, QuantConfig(), [IDS], progress=False)
    assert info.selected_layers == [f"transformer.h.{i}.{n}" for i in (0, 1) for n in
                                    ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert qmodel.transformer.h[0].attn.c_attn.weight.shape == (192, 64)
    assert info.metrics["compression_ratio"] > 1.5 and "warnings" not in info.metrics
    assert info.metrics["output_cosine"] >= 0.999
    for fmt, name in (("safetensors", "q.safetensors"), ("pt", "q.pt")):
        path = save_model(qmodel, tmp_path / name, info, format=fmt)
        again = load_quantized(path, GPT2.build(seed=1))
        assert read_info(path).selected_layers == info.selected_layers
        with torch.inference_mode():
            assert torch.equal(again(**IDS).logits, qmodel(**IDS).logits)


def test_conv1d_in_compressed_tensors_is_a_clear_bad_config(tmp_path):
    model = GPT2.build()
    qmodel, info = quantize_model(model, QuantConfig(mode="static"), [IDS], progress=False)
    with pytest.raises(BadConfigError) as err:
        save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors")
    message = str(err.value)
    assert message.startswith("format 'compressed-tensors' cannot hold layer "
                              "'transformer.h.0.attn.c_attn' (Conv1D): transformers' Conv1D")
    assert message.endswith("Formats that work for it: 'safetensors' and 'pt' (loaded with "
                            "mono_quant.load_quantized)")
    assert not (tmp_path / "ct").exists()


def test_nothing_quantized_lists_the_layer_types():
    model = GPT2.build()
    with pytest.raises(BadConfigError) as err:
        quantize_model(model, QuantConfig(exclude=["Conv1D"]), progress=False)
    assert str(err.value).endswith(
        "layer types found: Conv1D x8, Embedding x2, LayerNorm x5, Linear x1")


def test_low_compression_is_a_warning():
    """A model that is mostly embedding compresses little: the result says so."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(4096, 64), torch.nn.Linear(64, 64))
    _, info = quantize_model(model, QuantConfig(), progress=False)
    ratio = info.metrics["compression_ratio"]
    assert 1.0 < ratio < 1.5
    assert info.metrics["warnings"] == [
        f"low compression: {ratio:.2f}x (< 1.5x); 1 of 1 layers quantized, the rest of the "
        "weights (embeddings, float layers) stay as they were"]
