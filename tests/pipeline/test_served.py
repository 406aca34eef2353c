"""The served-load check: artifacts load in their runtime and reproduce the outputs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from mono_quant import QuantConfig, demo_models, quantize_model, save_model
from mono_quant.errors import MonoQuantError
from mono_quant.pipeline.served import probe_batch, served_check
from tests.pipeline.archs import ARCHS

pytest.importorskip("transformers", reason="needs the 'hf' extra")

LLAMA = next(a for a in ARCHS if a.name == "llama-untied")


def _tamper(path, name: str, factor: float) -> None:
    """Scale one tensor of a safetensors file, keeping its metadata (a silent corruption)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    tensors[name] = tensors[name] * factor
    save_file(tensors, path, metadata=meta)


@pytest.fixture
def llama_ct(tmp_path):
    pytest.importorskip("compressed_tensors", reason="needs the 'interop' extra")
    model = LLAMA.build()
    qmodel, info = quantize_model(model, QuantConfig(), progress=False)
    path = save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors")
    return model, qmodel, info, path


def test_compressed_tensors_folder_is_loaded_with_transformers(llama_ct):
    model, qmodel, info, path = llama_ct
    result = served_check(path, "compressed-tensors", model, qmodel, info)  # a probe batch
    assert result.startswith("ok (transformers): outputs cosine ")
    assert info.metrics["served_check"] == "transformers"
    assert info.metrics["reload_check"] == result


def test_a_folder_whose_outputs_differ_fails_the_check(llama_ct):
    """transformers loads a wrong scale (or none: it initialises a missing one) silently."""
    model, qmodel, info, path = llama_ct
    _tamper(path / "model.safetensors", "model.layers.0.mlp.down_proj.weight_scale", 40.0)
    with pytest.raises(MonoQuantError, match=r"gives outputs that differ from the quantized "
                                             r"model's \(cosine 0\.\d+ < 0\.9999\)"):
        served_check(path, "compressed-tensors", model, qmodel, info)


def test_a_folder_that_does_not_load_fails_the_check(llama_ct):
    model, qmodel, info, path = llama_ct
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])  # a cut copy
    with pytest.raises(MonoQuantError, match=r"does not load in transformers "
                                             r"\(LlamaForCausalLM\.from_pretrained\)"):
        served_check(path, "compressed-tensors", model, qmodel, info)


def test_safetensors_is_loaded_with_load_quantized_bit_for_bit(tmp_path):
    model = demo_models.mlp(64, 96, 16)
    batch = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    qmodel, info = quantize_model(model, QuantConfig(), progress=False)
    path = save_model(qmodel, tmp_path / "q.safetensors", info)
    assert served_check(path, "safetensors", demo_models.mlp(64, 96, 16), qmodel, info,
                        batch) == "ok (load_quantized): outputs identical on 1 batch"
    assert info.metrics["served_check"] == "load_quantized"
    _tamper(path, "0.weight_scale", 1.001)
    with pytest.raises(MonoQuantError, match="does not reproduce the quantized model's outputs"):
        served_check(path, "safetensors", demo_models.mlp(64, 96, 16), qmodel, info, batch)


def test_probe_batches_follow_the_config():
    llama = probe_batch(LLAMA.build())
    assert set(llama) == {"input_ids"} and llama["input_ids"].shape == (2, 8)
    assert int(llama["input_ids"].max()) < 128
    t5 = probe_batch(next(a for a in ARCHS if a.name == "t5").build())
    assert set(t5) == {"input_ids", "decoder_input_ids"}
    vit = probe_batch(next(a for a in ARCHS if a.name == "vit").build())
    assert vit["pixel_values"].shape == (2, 3, 32, 32)
    assert probe_batch(demo_models.mlp()) is None
