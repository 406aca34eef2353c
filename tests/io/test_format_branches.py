"""The branches of ``io/formats.py`` the round trips do not reach: a compressed-tensors
folder in sharded form and in the ``int-quantized`` weight-only layout (a T5-type
``model_type``), the ``quantization_config.format`` read back from a folder's config.json,
``read_info`` of sharded artifacts, and the refusals on the way, with their whole messages.
Expected layouts and messages are written here, not rebuilt by the code under test."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mono_quant import QuantConfig, quantize_model, save_model
from mono_quant.errors import BadConfigError, BadInputError
from mono_quant.io.formats import load_model, load_quantized, read_info
from mono_quant.io.sharded import INDEX_FILE
from tests.io.test_compressed_config import Tiny, _Config

INFO_KEY = "mono_quant.info"


def _model(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))


@pytest.fixture(scope="module")
def quantized():
    return quantize_model(_model(), QuantConfig(), progress=False)  # weight-only


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def _same(loaded, expected):
    assert sorted(loaded) == sorted(expected)
    for name, t in expected.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name


def test_sharded_compressed_tensors_round_trip(tmp_path, quantized):
    qmodel, info = quantized
    single = save_model(qmodel, tmp_path / "one", info, format="compressed-tensors")
    many = save_model(qmodel, tmp_path / "many", info, format="compressed-tensors",
                      max_shard_size=64)
    # 0.weight_packed int32 [6, 2] (48 B), 2.weight_packed [4, 2] (32 B), scales, shapes,
    # biases: more than one 64-byte shard, and no single model.safetensors
    names = _names(many)
    assert names[0] == "config.json" and names[-1] == INDEX_FILE
    assert "model.safetensors" not in names
    assert len(names) > 3 and all(n.startswith("model-0000") for n in names[1:-1])
    assert (many / "config.json").read_bytes() == (single / "config.json").read_bytes()
    index = json.loads((many / INDEX_FILE).read_text())
    assert json.loads(index["metadata"][INFO_KEY]) == json.loads(info.to_json())
    assert sorted(index["weight_map"]) == [
        "0.bias", "0.weight_packed", "0.weight_scale", "0.weight_shape",
        "2.bias", "2.weight_packed", "2.weight_scale", "2.weight_shape"]
    _same(load_model(many), qmodel.state_dict())
    assert read_info(many) == info
    again = load_quantized(many, _model(seed=1))
    x = torch.randn(3, 8)
    assert torch.equal(again(x), qmodel(x))


def test_sharded_safetensors_keeps_the_info_in_its_index(tmp_path, quantized):
    qmodel, info = quantized
    many = save_model(qmodel, tmp_path / "m.safetensors", info, max_shard_size=64)
    assert many.is_dir() and INDEX_FILE in _names(many)
    index = json.loads((many / INDEX_FILE).read_text())
    assert sorted(index["metadata"]) == [INFO_KEY, "total_size"]
    assert json.loads(index["metadata"][INFO_KEY]) == json.loads(info.to_json())
    assert read_info(many) == info
    _same(load_model(many), qmodel.state_dict())
    again = load_quantized(many, _model(seed=2))
    x = torch.randn(3, 8)
    assert torch.equal(again(x), qmodel(x))


def test_sharded_safetensors_without_info_has_none(tmp_path):
    many = save_model({"a": torch.zeros(16), "b": torch.ones(16)}, tmp_path / "m.safetensors",
                      max_shard_size=64)
    index = json.loads((many / INDEX_FILE).read_text())
    assert index["metadata"] == {"total_size": 128}
    with pytest.raises(BadInputError) as err:
        read_info(many)
    assert str(err.value) == (
        f"{many}: no mono-quant metadata: no 'mono_quant.info' entry (the file was not written "
        "by mono-quant's save_model with info=...)")
    with pytest.raises(BadInputError) as err:
        load_quantized(many, _model())
    assert str(err.value) == (
        f"{many}: no mono-quant metadata; load_quantized needs an artifact written with "
        "info=... (use load_model for a plain state dict)")


def test_a_sharded_folder_with_bad_info_names_its_index(tmp_path, quantized):
    qmodel, info = quantized
    many = save_model(qmodel, tmp_path / "m.safetensors", info, max_shard_size=64)
    index = json.loads((many / INDEX_FILE).read_text())
    index["metadata"][INFO_KEY] = "{bad"
    (many / INDEX_FILE).write_text(json.dumps(index))
    for reader in (read_info, load_model):
        with pytest.raises(BadInputError) as err:
            reader(many)
        assert str(err.value).startswith(f"{many / INDEX_FILE}: metadata is not valid JSON")


def test_sharded_compressed_tensors_without_info_is_refused(tmp_path, quantized):
    qmodel, info = quantized
    many = save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors",
                      max_shard_size=64)
    index = json.loads((many / INDEX_FILE).read_text())
    del index["metadata"][INFO_KEY]
    (many / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(BadInputError) as err:
        load_model(many)
    assert str(err.value) == (
        f"{many / INDEX_FILE}: no mono-quant metadata ('mono_quant.info'); mono-quant "
        "loads the compressed-tensors folders it wrote (load others with transformers)")
    with pytest.raises(BadInputError) as err:  # read_info: the folder and the generic text
        read_info(many)
    assert str(err.value) == (
        f"{many}: no mono-quant metadata: no 'mono_quant.info' entry (the file was not written "
        "by mono-quant's save_model with info=...)")


def _t5(tmp_path, quantized, **kwargs):
    qmodel, info = quantized
    qmodel = Tiny(*qmodel)
    qmodel.config = _Config(model_type="t5")
    return save_model(qmodel, tmp_path / "t5", info, format="compressed-tensors", **kwargs)


@pytest.mark.parametrize("shard", [None, 64], ids=["one-file", "sharded"])
def test_a_t5_weight_only_folder_is_int_quantized_and_reads_back(tmp_path, quantized, shard):
    """T5-type models keep weight-only folders ``int-quantized`` (an int8 ``weight``, not
    ``weight_packed``); the reader takes the layout from config.json's format."""
    qmodel, info = quantized
    path = _t5(tmp_path, quantized, max_shard_size=shard)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "t5"
    block = config["quantization_config"]
    assert block["format"] == "int-quantized"
    assert block["config_groups"]["group_0"]["format"] == "int-quantized"
    from mono_quant.io.formats import read_safetensors

    if shard is None:
        stored, _ = read_safetensors(path / "model.safetensors")
    else:
        stored = dict(json.loads((path / INDEX_FILE).read_text())["weight_map"])
    assert "0.weight" in stored and "0.weight_packed" not in stored
    if shard is None:
        assert stored["0.weight"].dtype == torch.int8
    _same(load_model(path), qmodel.state_dict())
    assert read_info(path) == info


def test_the_folder_format_is_read_from_config_json(tmp_path, quantized):
    """The int-quantized T5 folder read as the mode's default (pack-quantized) would miss
    its packed weights: the format comes from config.json."""
    path = _t5(tmp_path, quantized)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["format"] = "pack-quantized"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BadInputError) as err:
        load_model(path)
    assert str(err.value) == (
        f"{path / 'model.safetensors'}: tensor '0.weight_packed' is missing: layer '0' needs "
        "its packed weight")


@pytest.mark.parametrize(
    "config",
    [[1, 2], {"quantization_config": "x"}, {"quantization_config": {"format": 5}},
     {"quantization_config": {}}, {}],
    ids=["not-an-object", "block-not-an-object", "format-not-a-string", "no-format",
         "no-block"],
)
def test_a_config_without_a_usable_format_means_the_mode_default(tmp_path, quantized, config):
    qmodel, info = quantized
    path = save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors")
    (path / "config.json").write_text(json.dumps(config))
    _same(load_model(path), qmodel.state_dict())  # pack-quantized: weight-only's default


def test_a_config_that_is_not_json_is_named(tmp_path, quantized):
    qmodel, info = quantized
    path = save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors")
    (path / "config.json").write_text("not json")
    with pytest.raises(BadInputError) as err:
        load_model(path)
    assert str(err.value) == (
        f"{path / 'config.json'}: not readable JSON: Expecting value: line 1 column 1 (char 0)")
    assert isinstance(err.value.__cause__, ValueError)


def test_pt_cannot_be_sharded_whole_message(tmp_path):
    with pytest.raises(BadConfigError) as err:
        save_model({"a": torch.zeros(2)}, tmp_path / "m.pt", max_shard_size=10**9)
    assert str(err.value) == (
        f"{tmp_path / 'm.pt'}: max_shard_size shards safetensors weights; format 'pt' is one "
        "file (use safetensors or compressed-tensors)")
    assert list(tmp_path.iterdir()) == []
    assert save_model({"a": torch.zeros(2)}, tmp_path / "m.pt", max_shard_size=None).is_file()


def test_the_shard_size_text_is_parsed(tmp_path):
    tensors = {"a": torch.zeros(16), "b": torch.ones(16)}  # 64 bytes each
    two = save_model(tensors, tmp_path / "two.safetensors", max_shard_size="100B")
    one = save_model(tensors, tmp_path / "one.safetensors", max_shard_size="1KB")
    assert _names(two) == ["model-00001-of-00002.safetensors",
                           "model-00002-of-00002.safetensors", INDEX_FILE]
    assert _names(one) == ["model-00001-of-00001.safetensors", INDEX_FILE]


def test_bad_info_in_a_folder_names_its_model_file(tmp_path, quantized):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    qmodel, info = quantized
    path = save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors")
    model_file = path / "model.safetensors"
    with safe_open(model_file, "pt") as f:
        metadata = f.metadata()
    save_file(load_file(model_file), model_file, metadata={**metadata, INFO_KEY: "{bad"})
    for reader in (read_info, load_model):
        with pytest.raises(BadInputError) as err:
            reader(path)
        assert str(err.value).startswith(f"{model_file}: metadata is not valid JSON")


def test_a_state_dict_with_its_info_makes_a_folder(tmp_path, quantized):
    """No module to check the layer types of: the tensors and the info alone."""
    qmodel, info = quantized
    state = dict(qmodel.state_dict())
    path = save_model(state, tmp_path / "ct", info, format="compressed-tensors")
    assert _names(path) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert sorted(config) == ["quantization_config"]  # no model config without a model
    assert config["quantization_config"]["format"] == "pack-quantized"
    _same(load_model(path), state)
    assert read_info(path) == info
