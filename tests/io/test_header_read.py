"""``read_tensor``: one tensor at a time from a validated header, optionally into a reused
buffer; a file cut after its header was read is reported, not read past."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mono_quant import BadInputError
from mono_quant.io._safetensors_header import read_header, read_tensor

TENSORS = {"a": torch.arange(4.0), "b": torch.arange(6, dtype=torch.int32).reshape(2, 3)}


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "x.safetensors"
    save_file(TENSORS, p)
    return p


def test_each_tensor_reads_back(path):
    header = read_header(path)
    with open(path, "rb") as f:
        for name, t in TENSORS.items():
            got = read_tensor(f, header, name)
            assert got.dtype == t.dtype and torch.equal(got, t)


def test_a_large_enough_uint8_buffer_is_reused(path):
    header = read_header(path)
    out = torch.empty(64, dtype=torch.uint8)
    with open(path, "rb") as f:
        got = read_tensor(f, header, "b", out=out)
        assert torch.equal(got, TENSORS["b"])
        assert got.data_ptr() == out.data_ptr()
        exact = torch.empty(24, dtype=torch.uint8)  # b is exactly 24 bytes
        assert read_tensor(f, header, "b", out=exact).data_ptr() == exact.data_ptr()
        for other in (torch.empty(23, dtype=torch.uint8), torch.empty(64, dtype=torch.int8)):
            got = read_tensor(f, header, "b", out=other)
            assert torch.equal(got, TENSORS["b"]) and got.data_ptr() != other.data_ptr()


def test_a_file_cut_after_its_header_was_read(path):
    header = read_header(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])  # b (the last 24 bytes) loses its last 10
    with open(path, "rb") as f, pytest.raises(BadInputError) as err:
        read_tensor(f, header, "b")
    assert str(err.value) == (
        f"{path}: truncated safetensors file: tensor 'b' ends after 14 bytes")
