"""The streaming safetensors writer and reader against the real safetensors library."""

from __future__ import annotations

import io

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mono_quant import BadInputError, MonoQuantError
from mono_quant.io._safetensors_stream import (
    DTYPES,
    SafetensorsWriter,
    TensorSpec,
    copy_tensor_bytes,
    read_header,
    read_tensor,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for i, (name, dtype) in enumerate(sorted(DTYPES.items())):
        x = torch.randn(3, 5, generator=g) * 50
        out[f"t.{i}.{name.lower()}"] = x.to(dtype) if dtype != torch.bool else x > 0
    out["scalar"] = torch.tensor(2.5)
    out["empty"] = torch.zeros(0, 4)
    out['odd "name"\n é'] = torch.arange(7, dtype=torch.int16)
    out["view"] = torch.arange(40.0).reshape(8, 5)[2:5, 1:4]  # non-contiguous
    return out


def _write(path, tensors, metadata=None, order=None, write_order=None, **kw):
    specs = {k: TensorSpec.of(t) for k, t in tensors.items()}
    with open(path, "w+b") as f:
        writer = SafetensorsWriter(f, specs, metadata, order=order, **kw)
        for name in write_order or list(tensors):
            writer.write(name, tensors[name])
        writer.finish()
    return writer


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.element_size() == 1 and a.is_floating_point():  # float8: compare bits
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return torch.equal(a, b)


@pytest.mark.parametrize(
    "metadata", [None, {"format": "pt"}, {"k": 'quote " slash \\ nl \n ctl \x01 ü'}],
    ids=["none", "one-key", "escapes"],
)
def test_byte_identical_to_reference(tmp_path, metadata):
    tensors = _tensors()
    ref = {k: v.contiguous() for k, v in tensors.items()}
    save_file(ref, tmp_path / "ref.safetensors", metadata=metadata)
    # written in reverse order: the writer places each tensor at its precomputed offset
    _write(tmp_path / "ours.safetensors", tensors, metadata, write_order=list(tensors)[::-1])
    ours, ref = (tmp_path / "ours.safetensors").read_bytes(), (tmp_path / "ref.safetensors")
    assert ours == ref.read_bytes()


def test_loads_with_the_real_library_and_our_reader(tmp_path):
    tensors = _tensors()
    meta = {"b": "2", "a": "1", "format": "pt"}
    _write(tmp_path / "x.safetensors", tensors, meta)
    loaded = load_file(tmp_path / "x.safetensors")
    assert set(loaded) == set(tensors)
    assert all(_same(loaded[k], v.contiguous()) for k, v in tensors.items())
    with safe_open(tmp_path / "x.safetensors", "pt") as f:
        assert f.metadata() == meta
    header = read_header(tmp_path / "x.safetensors")
    assert list(header.metadata) == ["a", "b", "format"]  # sorted: deterministic bytes
    with open(tmp_path / "x.safetensors", "rb") as f:
        assert all(_same(read_tensor(f, header, k), v.contiguous()) for k, v in tensors.items())


def test_size_for_fixes_the_header_length_and_the_metadata_is_written_in_place(tmp_path):
    tensors = {"a": torch.ones(3, dtype=torch.int8), "b": torch.arange(4.0)}
    specs = {k: TensorSpec.of(t) for k, t in tensors.items()}
    bound = {"final": "x" * 100}  # one key: the reference writes several in any order
    files = []
    for final in ("short", "y" * 100):
        path = tmp_path / f"{len(final)}.safetensors"
        with open(path, "w+b") as f:
            writer = SafetensorsWriter(f, specs, {"final": ""}, size_for=bound)
            start = writer.data_start
            writer.write("b", tensors["b"])
            writer.write("a", tensors["a"])
            writer.set_metadata({"final": final})
            assert writer.data_start == start  # nothing moved
            with pytest.raises(MonoQuantError, match="only .* were reserved"):
                writer.set_metadata({"final": "z" * 120})
            writer.finish()
        assert all(torch.equal(load_file(path)[k], v) for k, v in tensors.items())
        with safe_open(path, "pt") as f:
            assert f.metadata() == {"final": final}
        files.append(path.read_bytes())
    short, full = files
    assert len(short) == len(full) and short[:8] == full[:8]
    n = int.from_bytes(short[:8], "little")
    assert len(short[8 : 8 + n].rstrip(b" ")) <= n - 95  # "short" padded with spaces
    reference = tmp_path / "ref.safetensors"
    save_file(tensors, reference, metadata={"final": "y" * 100})
    assert full == reference.read_bytes()  # the widest metadata: no padding at all


def test_custom_order_and_reserved_header(tmp_path):
    tensors = {"a": torch.ones(3, dtype=torch.int8), "b": torch.arange(4.0)}
    path = tmp_path / "x.safetensors"
    specs = {k: TensorSpec.of(t) for k, t in tensors.items()}
    with open(path, "w+b") as f:
        writer = SafetensorsWriter(f, specs, {"format": "pt"}, order=["a", "b"],
                                   size_for={"format": "pt", "final": "x" * 100})
        writer.write("b", tensors["b"])
        writer.write("a", tensors["a"])
        writer.set_metadata({"format": "pt", "final": "x" * 90})
        with pytest.raises(MonoQuantError, match="only .* were reserved"):
            writer.set_metadata({"too": "y" * 500})
        writer.finish()
    assert all(torch.equal(load_file(path)[k], v) for k, v in tensors.items())
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt", "final": "x" * 90}
    assert read_header(path).tensors["a"].begin == 0  # int8 first: the order we asked for


def test_copy_tensor_bytes(tmp_path):
    src = {"w": torch.randn(64, 33), "b": torch.randn(7).to(torch.bfloat16)}
    save_file(src, tmp_path / "src.safetensors")
    header = read_header(tmp_path / "src.safetensors")
    buf = io.BytesIO()
    writer = SafetensorsWriter(buf, {k: TensorSpec.of(v) for k, v in src.items()})
    with open(tmp_path / "src.safetensors", "rb") as f:
        for name in src:
            copy_tensor_bytes(f, header, name, writer)
    writer.finish()
    assert buf.getvalue() == (tmp_path / "src.safetensors").read_bytes()


def test_writer_errors():
    specs = {"a": TensorSpec(torch.float32, (2,)), "b": TensorSpec(torch.int8, (2,))}
    writer = SafetensorsWriter(io.BytesIO(), specs)
    with pytest.raises(MonoQuantError, match=r"tensor 'a': got torch.float64 \(2,\), the header"):
        writer.write("a", torch.zeros(2, dtype=torch.float64))
    with pytest.raises(MonoQuantError, match="'zzz' is not in this file's header"):
        writer.write("zzz", torch.zeros(2))
    writer.write("a", torch.zeros(2))
    with pytest.raises(MonoQuantError, match="'a' is not expected or was already written"):
        writer.write("a", torch.zeros(2))
    with pytest.raises(MonoQuantError, match="closed before writing: b"):
        writer.finish()
    with pytest.raises(BadInputError, match="must map strings to strings; 'n' maps to a int"):
        SafetensorsWriter(io.BytesIO(), specs, {"n": 1})
    with pytest.raises(BadInputError, match=r"dtype torch.complex128 cannot be stored"):
        SafetensorsWriter(io.BytesIO(), {"c": TensorSpec(torch.complex128, (1,))})
