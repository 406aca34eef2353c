"""A compressed-tensors folder of an hf: model is complete: tokenizer, generation config,
chat template and a model card."""

from __future__ import annotations

import pytest
import yaml

from mono_quant import QuantConfig, quantize_model, save_model
from mono_quant.pipeline import parse_model_source
from mono_quant.pipeline.card import source_files
from tests.io.hf_fixture import make_hf_folder

pytest.importorskip("transformers", reason="needs the 'hf' extra")
pytest.importorskip("compressed_tensors", reason="needs the 'interop' extra")

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = make_hf_folder(tmp_path_factory.mktemp("hf") / "tiny-llama")
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    return folder


def test_the_folder_carries_tokenizer_generation_config_chat_template_and_card(tmp_path,
                                                                                folder):
    from transformers import AutoTokenizer

    source = parse_model_source(f"hf:{folder}")
    model = source.load()
    qmodel, info = quantize_model(model, QuantConfig(exclude=["lm_head"]), progress=False)
    out = save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors",
                     extra_files=source_files(source, qmodel, info, "compressed-tensors"))
    assert (out / "generation_config.json").is_file()
    assert (out / "chat_template.jinja").read_text() == TEMPLATE
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)  # loads from the folder
    assert tok("ab")["input_ids"] == [ord("a"), ord("b")]
    assert tok.chat_template == TEMPLATE

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front == {"base_model": "tiny-llama", "base_model_relation": "quantized",
                     "library_name": "transformers",
                     "tags": ["mono-quant", "compressed-tensors", "int8", "w8a16"]}
    assert "W8A16 (int8 weights, float activations); symmetric per_channel weights" in card
    assert "- Layers kept in float: `lm_head`" in card
    assert f"| weight SQNR (dB), overall | {info.metrics['weight_sqnr_db']:.2f} |" in card
    # the tiny layers are narrower than Marlin's tiles
    assert "- Served by: none (vLLM's CompressedTensorsWNA16 (Marlin) needs out % 64" in card
    assert "vllm serve ./this-folder" in card and "AutoModel.from_pretrained" in card


def test_other_formats_and_sources_get_no_companions(folder):
    source = parse_model_source(f"hf:{folder}")
    assert source_files(source, None, None, "safetensors") is None
    factory = parse_model_source("factory:mono_quant.demo_models:mlp")
    assert source_files(factory, None, None, "compressed-tensors") is None
