"""save_model's and load_model's checks that no round trip reaches: extra files of a
compressed-tensors folder (plain names only, never our own two files), entries that are not
tensors, extra metadata as strict sorted JSON, unreadable data; whole messages, and nothing
left at the destination."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mono_quant import BadInputError, QuantConfig, quantize_model, save_model
from mono_quant.io.formats import _build_metadata, load_model, load_quantized, read_info


@pytest.fixture(scope="module")
def quantized():
    return quantize_model(nn.Sequential(nn.Linear(8, 4)), QuantConfig(), progress=False)


@pytest.mark.parametrize(
    "name",
    ["sub/README.md", "../README.md", "config.json", "model.safetensors"],
    ids=["folder", "parent", "config", "model"],
)
def test_extra_files_must_be_plain_names_other_than_ours(tmp_path, quantized, name):
    qmodel, info = quantized
    path = tmp_path / "ct"
    with pytest.raises(BadInputError) as err:
        save_model(qmodel, path, info, format="compressed-tensors",
                   extra_files={"tokenizer.json": b"{}", name: b"x"})
    assert str(err.value) == f"{path}: extra file {name!r} must be a plain file name"
    assert list(tmp_path.iterdir()) == []  # no folder, no temp folder, nothing outside


def test_extra_files_are_written_with_the_artifact(tmp_path, quantized):
    qmodel, info = quantized
    path = save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors",
                      extra_files={"tokenizer.json": b"{}", "README.md": b"# card\n"})
    assert sorted(p.name for p in path.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert (path / "README.md").read_bytes() == b"# card\n"
    assert sorted(load_model(path)) == sorted(qmodel.state_dict())


def test_data_that_cannot_be_read_after_a_valid_header_is_bad_input(tmp_path, quantized,
                                                                     monkeypatch):
    # A read error below the header check (an I/O error, safetensors refusing the data) cannot
    # be produced reliably with a real file whose header passed validation: safe_open is
    # replaced by one that fails as the library does.
    import safetensors

    qmodel, info = quantized
    path = save_model(qmodel, tmp_path / "m.safetensors", info)

    def failing_open(*args, **kwargs):
        raise OSError("Input/output error")

    monkeypatch.setattr(safetensors, "safe_open", failing_open)
    with pytest.raises(BadInputError) as err:
        load_model(path)
    assert str(err.value) == f"{path}: cannot read safetensors data: Input/output error"
    assert isinstance(err.value.__cause__, OSError)


def test_extra_metadata_is_sorted_strict_json():
    meta = _build_metadata(None, {"zeta": "as is", "cfg": {"b": 1, "a": [1.5, None]}})
    assert meta == {"format": "pt", "zeta": "as is", "cfg": '{"a": [1.5, null], "b": 1}'}
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        _build_metadata(None, {"x": float("nan")})


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        pytest.param([1, 2], "save_model: expected an nn.Module or a state dict, got list",
                     id="list"),
        pytest.param({"w": [1.0]}, "save_model: state dict entry 'w' is not a str -> "
                     "torch.Tensor pair", id="not-a-tensor"),
        pytest.param({3: torch.zeros(1)}, "save_model: state dict entry 3 is not a str -> "
                     "torch.Tensor pair", id="not-a-str"),
        pytest.param({"ok": torch.zeros(1), "m": torch.zeros(2, device="meta")},
                     "save_model: tensor 'm' is on the meta device and has no data to save",
                     id="meta"),
    ],
)
def test_what_save_model_cannot_save_is_named(tmp_path, obj, message):
    with pytest.raises(BadInputError) as err:
        save_model(obj, tmp_path / "m.safetensors")
    assert str(err.value) == message
    assert list(tmp_path.iterdir()) == []


def test_info_must_be_a_quantization_info(tmp_path, quantized):
    qmodel, info = quantized
    with pytest.raises(BadInputError) as err:
        save_model(qmodel, tmp_path / "m.safetensors", info.to_json())
    assert str(err.value).startswith("save_model: info must be a QuantizationInfo, got '{")
    assert list(tmp_path.iterdir()) == []


def test_load_quantized_refuses_a_layer_it_cannot_quantize(tmp_path, quantized):
    qmodel, info = quantized
    path = save_model(qmodel, tmp_path / "m.safetensors", info)
    model = nn.Sequential(nn.ReLU())  # layer "0" is there, but not a Linear
    with pytest.raises(BadInputError) as err:
        load_quantized(path, model)
    assert str(err.value) == (
        f"{path}: layer '0' is a ReLU; expected the float nn.Linear / nn.Conv2d / Conv1D the "
        "artifact was quantized from")
    assert isinstance(model[0], nn.ReLU)  # nothing was replaced


def test_a_shared_tensor_is_stored_once_under_its_first_name(tmp_path):
    tied, other, empty = torch.arange(6.0).reshape(2, 3), torch.ones(2), torch.zeros(0)
    state = {"embed.weight": tied, "lm_head.weight": tied, "norm.weight": other,
             "a.bias": empty, "b.bias": empty, "row": tied[0]}
    path = save_model(state, tmp_path / "m.safetensors")
    loaded = load_model(path)
    # a tie is stored once, as save_pretrained does; empty tensors and views of another
    # shape are not ties
    assert sorted(loaded) == ["a.bias", "b.bias", "embed.weight", "norm.weight", "row"]
    assert torch.equal(loaded["embed.weight"], tied) and torch.equal(loaded["row"], tied[0])


def test_load_quantized_messages_say_what_to_do(tmp_path, quantized):
    qmodel, info = quantized
    plain = save_model(qmodel, tmp_path / "plain.safetensors")
    with pytest.raises(BadInputError) as err:
        load_quantized(plain, nn.Sequential(nn.Linear(8, 4)))
    assert str(err.value) == (
        f"{plain}: no mono-quant metadata; load_quantized needs an artifact written with "
        "info=... (use load_model for a plain state dict)")
    path = save_model(qmodel, tmp_path / "m.safetensors", info)
    with pytest.raises(BadInputError) as err:
        load_quantized(path, nn.Sequential())
    assert str(err.value) == (
        f"{path}: the artifact quantizes layer '0' but the model has no such layer (is this "
        "the architecture the artifact was made from?)")


def test_bad_info_in_a_pt_file_names_the_file(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "metadata": {"mono_quant.info": "{bad"}},
               path)
    with pytest.raises(BadInputError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: metadata is not valid JSON")


def test_load_quantized_replaces_nested_layers(tmp_path):
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Sequential(nn.Linear(8, 4), nn.ReLU()), nn.Linear(4, 2))

    qmodel, info = quantize_model(model(), QuantConfig(), progress=False)
    path = save_model(qmodel, tmp_path / "m.safetensors", info)
    again = load_quantized(path, model())
    assert type(again[0][0]) is type(qmodel[0][0]) and type(again[0][0]) is not nn.Linear
    x = torch.randn(3, 8)
    assert torch.equal(again(x), qmodel(x))


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt"], ids=["safetensors", "pt"])
def test_read_info_without_our_metadata_says_how_the_file_was_written(tmp_path, quantized,
                                                                       name):
    path = save_model(quantized[0], tmp_path / name)
    with pytest.raises(BadInputError) as err:
        read_info(path)
    assert str(err.value) == (
        f"{path}: no mono-quant metadata: no 'mono_quant.info' entry (the file was not written "
        "by mono-quant's save_model with info=...)")
