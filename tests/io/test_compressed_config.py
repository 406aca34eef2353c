"""The ``config.json`` of a compressed-tensors folder: the model's own config (when it has a
transformers-style one), its architecture, and our ``quantization_config``, as sorted,
indented JSON. A plain ``nn.Module`` stands in for a transformers model: only ``.config`` with
``to_dict()`` is read."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mono_quant import BadInputError, QuantConfig, quantize_model, save_model
from mono_quant.io.formats import load_model, read_info


class _Config:
    def __init__(self, **items):
        self.items = items

    def to_dict(self):
        return dict(self.items)


class Tiny(nn.Sequential):
    pass


def _save(tmp_path, config=None, name="ct"):
    model = Tiny(nn.Linear(8, 4))
    qmodel, info = quantize_model(model, QuantConfig(), progress=False)
    if config is not None:
        qmodel.config = config
    path = save_model(qmodel, tmp_path / name, info, format="compressed-tensors")
    text = (path / "config.json").read_text()
    return path, text, json.loads(text)


def test_model_config_and_architecture_are_written(tmp_path):
    _, text, data = _save(tmp_path, _Config(model_type="tiny", dtype=torch.float16))
    assert data["model_type"] == "tiny"
    assert data["dtype"] == "torch.float16"  # non-JSON values as strings
    assert data["architectures"] == ["Tiny"]  # the class name when the config has none
    assert data["quantization_config"]["quant_method"] == "compressed-tensors"
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"


def test_given_architectures_are_kept(tmp_path):
    _, _, data = _save(tmp_path, _Config(architectures=["TinyForCausalLM"]))
    assert data["architectures"] == ["TinyForCausalLM"]


@pytest.mark.parametrize("config", [None, object()], ids=["no-config", "no-to-dict"])
def test_without_a_model_config_only_ours_is_written(tmp_path, config):
    _, _, data = _save(tmp_path, config)
    assert sorted(data) == ["quantization_config"]


def test_writing_needs_the_info(tmp_path):
    with pytest.raises(BadInputError) as err:
        save_model(nn.Linear(2, 2), tmp_path / "ct", format="compressed-tensors")
    assert str(err.value) == (
        f"{tmp_path / 'ct'}: format 'compressed-tensors' needs the QuantizationInfo of the "
        "quantized model (info=...) to describe its layers")


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_a_folder_missing_either_file_is_refused(tmp_path, missing):
    path, _, _ = _save(tmp_path)
    (path / missing).unlink()
    with pytest.raises(BadInputError) as err:
        load_model(path)
    assert str(err.value) == (
        f"{path}: not a compressed-tensors artifact (expected config.json and "
        "model.safetensors or model.safetensors.index.json with its shards in the folder)")


def test_a_folder_without_our_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    path, _, _ = _save(tmp_path)
    save_file({"x": torch.zeros(2)}, path / "model.safetensors")
    with pytest.raises(BadInputError) as err:
        read_info(path)
    assert str(err.value) == (
        f"{path / 'model.safetensors'}: no mono-quant metadata ('mono_quant.info'); mono-quant "
        "loads the compressed-tensors folders it wrote (load others with transformers)")
