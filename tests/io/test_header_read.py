"""``read_tensor``: one tensor at a time from a validated header, optionally into a reused
buffer; a file cut after its header was read is reported, not read past."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from safetensors.torch import save_file

from mono_quant import BadInputError, StorageError
from mono_quant.io._safetensors_header import byte_view, read_header, read_tensor

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


def test_a_one_byte_tensor_reads_into_a_reused_buffer(tmp_path):
    path = tmp_path / "one.safetensors"
    save_file({"one": torch.tensor([7], dtype=torch.uint8)}, path)
    out = torch.full((8,), 0xAA, dtype=torch.uint8)
    with open(path, "rb") as f:
        got = read_tensor(f, read_header(path), "one", out=out)
    assert got.tolist() == [7] and got.data_ptr() == out.data_ptr()


def test_an_empty_tensor_reads_as_empty(tmp_path):
    path = tmp_path / "empty.safetensors"
    save_file({"e": torch.empty(0, 3), "x": torch.arange(2.0)}, path)
    header = read_header(path)
    with open(path, "rb") as f:
        got = read_tensor(f, header, "e")
        assert got.shape == (0, 3) and got.dtype == torch.float32
        assert read_tensor(f, header, "x").tolist() == [0.0, 1.0]


def test_byte_view_is_the_tensors_unsigned_bytes_and_writes_through():
    t = torch.tensor([0, 127, 128, 255], dtype=torch.uint8)
    view = byte_view(t)
    assert view.format == "B" and list(view) == [0, 127, 128, 255]
    view[1] = 200
    assert t.tolist() == [0, 200, 128, 255]
    f32 = torch.tensor([1.0])
    assert bytes(byte_view(f32)) == b"\x00\x00\x80\x3f"  # 1.0f, little-endian
    assert len(byte_view(torch.empty(0))) == 0


class _Trickle(io.RawIOBase):
    """A reader that returns at most 5 bytes per call, as a socket or a ranged GET may."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos
        return pos

    def readinto(self, b) -> int:
        n = min(5, len(b), len(self.data) - self.pos)
        b[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_short_reads_are_continued(path):
    header = read_header(path)
    reader = _Trickle(path.read_bytes())
    for name, t in TENSORS.items():
        assert torch.equal(read_tensor(reader, header, name), t)


def test_a_big_endian_host_is_refused(path, monkeypatch):
    """No big-endian host here: the byte order is faked (the reader checks it first)."""
    header = read_header(path)
    monkeypatch.setattr(sys, "byteorder", "big")
    with open(path, "rb") as f, pytest.raises(StorageError) as err:
        read_tensor(f, header, "a")
    assert str(err.value) == "big-endian hosts are not supported by mono-quant's reader"
