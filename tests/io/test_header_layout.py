"""Tensor data in a safetensors file is contiguous: a hole or an overlap is a corrupt file.

The files are written byte by byte here (not by the safetensors library, which never writes
such files), so the expected offsets in the messages are the ones laid out below.
"""

from __future__ import annotations

import json
import struct

import pytest

from mono_quant import BadInputError, QuantConfig
from mono_quant.io._safetensors_header import read_header
from mono_quant.pipeline.streaming import quantize_checkpoint


def _write(path, tensors: dict[str, tuple[int, int]], data_bytes: int) -> None:
    """A safetensors file whose F32 tensors (1-D) have the given data offsets."""
    header = {
        name: {"dtype": "F32", "shape": [(end - begin) // 4], "data_offsets": [begin, end]}
        for name, (begin, end) in tensors.items()
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    data = struct.pack(f"<{data_bytes // 4}f", *([0.5] * (data_bytes // 4)))
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def test_contiguous_layout_is_accepted(tmp_path):
    path = tmp_path / "ok.safetensors"
    _write(path, {"a": (0, 16), "b": (16, 32)}, 32)
    header = read_header(path)
    assert [(e.begin, e.end) for e in header.tensors.values()] == [(0, 16), (16, 32)]


def test_a_gap_between_tensors_is_refused(tmp_path):
    path = tmp_path / "gap.safetensors"
    _write(path, {"a": (0, 16), "b": (32, 48)}, 48)  # 16 bytes that belong to no tensor
    with pytest.raises(BadInputError) as err:
        read_header(path)
    assert str(err.value) == (
        f"{path}: invalid safetensors header: tensor 'b' starts at data byte 32, expected 16 "
        "(tensor data must be contiguous without overlaps)"
    )


def test_a_gap_before_the_first_tensor_is_refused(tmp_path):
    path = tmp_path / "lead.safetensors"
    _write(path, {"a": (8, 24)}, 24)
    with pytest.raises(BadInputError, match="tensor 'a' starts at data byte 8, expected 0"):
        read_header(path)


def test_an_overlap_between_tensors_is_refused(tmp_path):
    path = tmp_path / "overlap.safetensors"
    _write(path, {"a": (0, 16), "b": (8, 24)}, 24)
    with pytest.raises(BadInputError) as err:
        read_header(path)
    assert str(err.value) == (
        f"{path}: invalid safetensors header: tensor 'b' starts at data byte 8, expected 16 "
        "(tensor data must be contiguous without overlaps)"
    )


def test_quantize_checkpoint_refuses_a_file_with_a_hole(tmp_path):
    """The streaming quantizer reads offsets straight from the header: a hole must stop it."""
    src = tmp_path / "model.safetensors"
    # fc.weight [4, 8] f32 = 128 bytes, then a 16-byte hole, then fc.bias [4] = 16 bytes
    header = {
        "fc.weight": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]},
        "fc.bias": {"dtype": "F32", "shape": [4], "data_offsets": [144, 160]},
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    src.write_bytes(len(text).to_bytes(8, "little") + text + struct.pack("<40f", *range(40)))
    dst = tmp_path / "q.safetensors"
    with pytest.raises(BadInputError, match="tensor 'fc.bias' starts at data byte 144, "
                       "expected 128"):
        quantize_checkpoint(src, dst, QuantConfig(), progress=False)
    assert not dst.exists()
