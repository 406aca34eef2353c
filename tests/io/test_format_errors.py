"""save_model's input checks that no round trip reaches: extra files of a compressed-tensors
folder (plain names only, never our own two files), with the whole message and nothing left
at the destination."""

from __future__ import annotations

import pytest
from torch import nn

from mono_quant import BadInputError, QuantConfig, quantize_model, save_model
from mono_quant.io.formats import load_model


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
