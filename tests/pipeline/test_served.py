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


def _mlp_artifact(tmp_path):
    model = demo_models.mlp(64, 96, 16)
    batch = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    qmodel, info = quantize_model(model, QuantConfig(), progress=False)
    return qmodel, info, save_model(qmodel, tmp_path / "q.safetensors", info), batch


def test_safetensors_is_loaded_with_load_quantized_bit_for_bit(tmp_path):
    qmodel, info, path, batch = _mlp_artifact(tmp_path)
    outcome = served_check(path, "safetensors", demo_models.mlp(64, 96, 16), qmodel, info, batch)
    assert outcome == "ok (load_quantized): identical layers and tensors, ran on 1 batch"
    assert info.metrics["served_check"] == "load_quantized"
    _tamper(path, "0.weight_scale", 1.001)
    with pytest.raises(MonoQuantError, match="does not reproduce the quantized model: tensor "
                                             "'0.weight_scale' differs"):
        served_check(path, "safetensors", demo_models.mlp(64, 96, 16), qmodel, info, batch)


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "no-batch"])
def test_a_changed_int8_weight_fails_the_check(tmp_path, batch):
    """One int8 value of the last layer off by one: named, with or without a batch."""
    qmodel, info, path, x = _mlp_artifact(tmp_path)
    tensors = load_file(path)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    w = tensors["4.weight"]
    w[0, 0] = w[0, 0] - 1 if w[0, 0] > -127 else w[0, 0] + 1
    save_file(tensors, path, metadata=meta)
    with pytest.raises(MonoQuantError, match="tensor '4.weight' differs"):
        served_check(path, "safetensors", demo_models.mlp(64, 96, 16), qmodel, info,
                     x if batch else None)


def test_a_layer_loaded_with_other_settings_fails_the_check(tmp_path, monkeypatch):
    from mono_quant.pipeline import served

    qmodel, info, path, batch = _mlp_artifact(tmp_path)
    real = served._load_served

    def load(*args):
        loaded, check, exact = real(*args)
        loaded.get_submodule("2").scheme = "asymmetric"  # the same tensors, another rounding
        return loaded, check, exact

    monkeypatch.setattr(served, "_load_served", load)
    with pytest.raises(MonoQuantError, match="does not reproduce the quantized model: 2 is "
                                             "QuantLinear"):
        served_check(path, "safetensors", demo_models.mlp(64, 96, 16), qmodel, info, batch)


def test_the_exact_check_runs_the_loaded_model_once_and_not_the_quantized_one(tmp_path):
    """Equal layers and tensors give equal outputs: the quantized model's forward (half of
    the check's time: every weight dequantized once more) is not run."""
    qmodel, info, path, batch = _mlp_artifact(tmp_path)
    float_model = demo_models.mlp(64, 96, 16)  # rebuilt in place: its root stays
    runs = {"quantized": 0, "loaded": 0}
    qmodel.register_forward_hook(lambda *_: runs.__setitem__("quantized", runs["quantized"] + 1))
    float_model.register_forward_hook(lambda *_: runs.__setitem__("loaded", runs["loaded"] + 1))
    served_check(path, "safetensors", float_model, qmodel, info, batch)
    assert runs == {"quantized": 0, "loaded": 1}


def test_probe_batches_follow_the_config():
    llama = probe_batch(LLAMA.build())
    assert set(llama) == {"input_ids"} and llama["input_ids"].shape == (2, 8)
    assert int(llama["input_ids"].max()) < 128
    t5 = probe_batch(next(a for a in ARCHS if a.name == "t5").build())
    assert set(t5) == {"input_ids", "decoder_input_ids"}
    vit = probe_batch(next(a for a in ARCHS if a.name == "vit").build())
    assert vit["pixel_values"].shape == (2, 3, 32, 32)
    assert probe_batch(demo_models.mlp()) is None


@pytest.mark.parametrize(("a", "b", "same"), [
    (torch.arange(10, dtype=torch.int8), torch.arange(10, dtype=torch.int8), True),
    (torch.arange(10, dtype=torch.int8), torch.arange(10, dtype=torch.int8).flip(0), False),
    (torch.tensor([0.0, 1.0]), torch.tensor([-0.0, 1.0]), False),  # equal, not the same bits
    (torch.tensor([float("nan")]), torch.tensor([float("nan")]), True),
    (torch.zeros(0), torch.zeros(0), True),
    (torch.arange(12.0).reshape(3, 4).t(), torch.arange(12.0).reshape(3, 4).t(), True),
], ids=["equal", "one-differs", "signed-zero", "same-nan", "empty", "not-contiguous"])
def test_tensors_are_compared_bit_for_bit(a, b, same):
    from mono_quant.pipeline.served import _same_bits

    assert _same_bits(a, b) is same
