"""Tied weights: kept tied and in float by default, stored once; untied only when named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from mono_quant import QuantConfig, load_quantized, quantize_model, save_model
from mono_quant.quant.ties import named_explicitly, shared_weights, tied_layers
from tests.pipeline.archs import ARCHS

transformers = pytest.importorskip("transformers", reason="needs the 'hf' extra")

LLAMA_TIED = next(a for a in ARCHS if a.name == "llama-tied")
IDS = {"input_ids": torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))}


def _names(path) -> set[str]:
    with safe_open(path, "pt") as f:
        return set(f.keys())


def test_tied_head_stays_float_and_tied_and_is_stored_once(tmp_path):
    model = LLAMA_TIED.build()
    qmodel, info = quantize_model(model, QuantConfig(), progress=False)
    assert "lm_head" not in info.selected_layers and len(info.selected_layers) == 14
    assert info.metrics["tied_weights"] == [["model.embed_tokens.weight", "lm_head.weight"]]
    assert qmodel.lm_head.weight is qmodel.model.embed_tokens.weight
    path = save_model(qmodel, tmp_path / "q.safetensors", info)
    names = _names(path)
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    again = load_quantized(path, LLAMA_TIED.build(seed=1))
    assert again.lm_head.weight is again.model.embed_tokens.weight  # the tie, loaded back
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    with torch.inference_mode():
        assert torch.equal(again(**IDS).logits, qmodel(**IDS).logits)


def test_tied_compressed_tensors_folder_loads_in_transformers(tmp_path):
    """The issue's first finding: transformers failed with "Linear has no attribute
    'weight'" on the folder of every model with tied embeddings."""
    pytest.importorskip("compressed_tensors", reason="needs the 'interop' extra")
    model = LLAMA_TIED.build()
    qmodel, info = quantize_model(model, QuantConfig(), progress=False)
    path = save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors")
    served = transformers.LlamaForCausalLM.from_pretrained(path, local_files_only=True)
    assert served.lm_head.weight is served.model.embed_tokens.weight
    with torch.inference_mode():
        cos = nn.functional.cosine_similarity(served(**IDS).logits.flatten(),
                                              model(**IDS).logits.flatten(), dim=0)
    assert cos >= 0.999


def test_include_naming_a_tied_head_unties_it_and_says_so(tmp_path):
    pytest.importorskip("compressed_tensors", reason="needs the 'interop' extra")
    model = LLAMA_TIED.build()
    qmodel, info = quantize_model(model, QuantConfig(include=["Linear", "lm_head"]),
                                  progress=False)
    assert "lm_head" in info.selected_layers and info.metrics["untied"] == ["lm_head"]
    assert info.metrics["warnings"] == [
        "untied lm_head: an include pattern named the tied layer(s); "
        "config.tie_word_embeddings set to false (the float embedding is stored as well)"]
    assert model.config.tie_word_embeddings is True  # the input model is untouched
    assert qmodel.config.tie_word_embeddings is False
    path = save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors")
    assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is False
    served = transformers.LlamaForCausalLM.from_pretrained(path, local_files_only=True)
    # the head is int8 (compressed-tensors keeps it packed), the embedding the float table
    assert served.lm_head.weight_packed.dtype == torch.int32
    assert torch.equal(served.model.embed_tokens.weight, model.model.embed_tokens.weight)
    with torch.inference_mode():
        assert torch.allclose(served(**IDS).logits, qmodel(**IDS).logits, atol=1e-4)


def test_class_name_pattern_does_not_untie():
    """`include=["Linear"]` selects layers by type: a tie is only broken when named."""
    model = LLAMA_TIED.build()
    _, info = quantize_model(model, QuantConfig(include=["Linear"]), progress=False)
    assert "lm_head" not in info.selected_layers and "untied" not in info.metrics


def test_any_shared_weight_is_a_tie():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 8))
    model[2].weight = model[0].weight
    assert shared_weights(model) == [["0.weight", "2.weight"]]
    assert tied_layers(model) == {"0": ["2.weight"], "2": ["0.weight"]}
    _, info = quantize_model(model, QuantConfig(), progress=False)
    assert info.selected_layers == ["3"]
    _, info = quantize_model(model, QuantConfig(include=["re:[02]$", "3"]), progress=False)
    assert info.selected_layers == ["0", "2", "3"] and info.metrics["untied"] == ["0", "2"]


@pytest.mark.parametrize(
    ("patterns", "explicit"),
    [(["lm_head"], True), (["re:lm_.*"], True), (["lm_*"], True), (["Linear"], False),
     (["model.*"], False), ([], False)],
    ids=["name", "regex", "glob", "class-name", "other-glob", "none"],
)
def test_named_explicitly(patterns, explicit):
    assert named_explicitly(patterns, "lm_head") is explicit
