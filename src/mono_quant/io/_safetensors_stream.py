"""safetensors without holding every tensor in memory: a validating header reader, a
tensor-at-a-time reader, and a streaming writer.

The file layout (https://github.com/huggingface/safetensors): 8 bytes little-endian header
length ``n``; ``n`` bytes of JSON ``{"__metadata__": {str: str}, name: {"dtype", "shape",
"data_offsets": [begin, end]}, ...}`` padded with spaces to a multiple of 8; then the tensor
bytes, contiguous, in the order of their offsets.

The writer computes the whole header from the tensors' dtypes and shapes up front, pre-sizes
the file and then writes each tensor at its offset as it arrives, so a caller can produce
tensors in any order and keep only one in memory. By default tensors are laid out like the
reference implementation (descending dtype size, then name) and metadata keys are sorted, so
the bytes equal ``safetensors.torch.save_file``'s whenever the reference is deterministic
(it writes metadata in hash-map order, which varies between runs once there are two keys).

Example:
    >>> import io, torch
    >>> buf = io.BytesIO()
    >>> w = SafetensorsWriter(buf, {"x": TensorSpec(torch.float32, (2,))}, {"format": "pt"})
    >>> w.write("x", torch.tensor([1.0, 2.0]))
    >>> w.finish()
    >>> bytes(buf.getvalue()[8:57])
    b'{"__metadata__":{"format":"pt"},"x":{"dtype":"F32'
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from mono_quant.errors import BadInputError, MonoQuantError, StorageError

__all__ = [
    "DTYPES",
    "HeaderEntry",
    "SafetensorsHeader",
    "SafetensorsWriter",
    "TensorSpec",
    "copy_tensor_bytes",
    "read_header",
    "read_tensor",
    "reference_order",
]

#: The reference implementation refuses headers above this size (100 MB).
MAX_HEADER_SIZE = 100_000_000
#: Bytes moved per read/write call (also bounds the memory of raw copies).
_IO_CHUNK = 64 << 20

#: safetensors dtype names in the reference's ascending order (it sorts by this, descending).
_ORDER = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
          "F32", "C64", "F64", "I64", "U64")
_TORCH = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8,
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "I16": torch.int16, "U16": getattr(torch, "uint16", None), "F16": torch.float16,
    "BF16": torch.bfloat16, "I32": torch.int32, "U32": getattr(torch, "uint32", None),
    "F32": torch.float32, "C64": torch.complex64, "F64": torch.float64, "I64": torch.int64,
    "U64": getattr(torch, "uint64", None),
}
#: safetensors dtype name -> torch dtype (those this torch build has).
DTYPES: dict[str, torch.dtype] = {k: v for k, v in _TORCH.items() if v is not None}
_NAMES = {v: k for k, v in DTYPES.items()}
_RANK = {name: i for i, name in enumerate(_ORDER)}


@dataclass(frozen=True)
class TensorSpec:
    """dtype and shape of a tensor to be written."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def st_dtype(self) -> str:
        try:
            return _NAMES[self.dtype]
        except KeyError:
            raise BadInputError(
                f"dtype {self.dtype} cannot be stored in safetensors; supported: "
                f"{', '.join(str(d) for d in DTYPES.values())}"
            ) from None

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorSpec:
        return cls(t.dtype, tuple(t.shape))


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor of a safetensors header; ``begin``/``end`` are relative to the data start."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header: metadata (or None) and entries in offset order."""

    path: Path
    metadata: dict[str, str] | None
    tensors: dict[str, HeaderEntry]
    data_start: int


def reference_order(specs: Mapping[str, TensorSpec]) -> list[str]:
    """Tensor names in the reference writer's order: larger dtypes first, then by name."""
    return sorted(specs, key=lambda n: (-_RANK[specs[n].st_dtype], n))


def _bad(path: Path, problem: str) -> BadInputError:
    return BadInputError(f"{path}: {problem}")


def _entry(path: Path, name: str, raw: object) -> HeaderEntry:
    def bad(msg: str) -> BadInputError:
        return _bad(path, f"invalid safetensors header: tensor {name!r}: {msg}")

    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise bad("expected an object with exactly 'dtype', 'shape' and 'data_offsets'")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if dtype not in DTYPES:
        raise bad(f"unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(
        isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets
    )) or offsets[1] < offsets[0]:
        raise bad(f"data_offsets {offsets!r} is not a [begin, end] pair with begin <= end")
    entry = HeaderEntry(dtype, tuple(shape), offsets[0], offsets[1])
    need = math.prod(entry.shape) * DTYPES[dtype].itemsize
    if need != entry.nbytes:
        raise _bad(path, (
            f"header/data size mismatch: tensor {name!r} ({dtype} {list(shape)}) needs {need} "
            f"bytes but its data_offsets span {entry.nbytes}"
        ))
    return entry


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate a safetensors header; every problem names the file.

    Raises:
        BadInputError: missing file, truncated file, garbage or inconsistent header.
        StorageError: the file exists but cannot be read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _bad(path, (
                    f"truncated safetensors file: {size} bytes, shorter than the 8-byte header "
                    "length that starts every safetensors file"
                ))
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_SIZE:
                raise _bad(path, (
                    f"not a safetensors file (garbage header): the header length field says "
                    f"{n} bytes, above the {MAX_HEADER_SIZE} byte limit"
                ))
            if 8 + n > size:
                raise _bad(path, (
                    f"truncated safetensors file: the header declares {n} bytes but only "
                    f"{size - 8} follow the length field"
                ))
            raw = f.read(n)
    except FileNotFoundError as e:
        raise _bad(path, "no such file") from e
    except IsADirectoryError as e:
        raise _bad(path, "is a folder, expected a .safetensors file") from e
    except OSError as e:
        raise StorageError(f"{path}: cannot read: {e}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(path, f"not a safetensors file (garbage header): {e}") from e
    if not isinstance(header, dict):
        raise _bad(path, "not a safetensors file (garbage header): the header is not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    )):
        raise _bad(path, "invalid safetensors header: '__metadata__' must map strings to strings")
    entries = sorted(
        ((name, _entry(path, name, raw)) for name, raw in header.items()),
        key=lambda kv: (kv[1].begin, kv[1].end),
    )
    expected = 0
    for name, e in entries:
        if e.begin != expected:
            raise _bad(path, (
                f"invalid safetensors header: tensor {name!r} starts at data byte {e.begin}, "
                f"expected {expected} (tensor data must be contiguous without overlaps)"
            ))
        expected = e.end
    present = size - 8 - n
    if expected != present:
        what = "truncated safetensors file" if expected > present else "header/data size mismatch"
        raise _bad(path, (
            f"{what}: the header describes {expected} bytes of tensor data but the file holds "
            f"{present}"
        ))
    return SafetensorsHeader(path, metadata, dict(entries), 8 + n)


def _byte_view(t: torch.Tensor) -> memoryview:
    """A writable, zero-copy byte view of a contiguous CPU tensor (keep ``t`` alive)."""
    n = t.numel() * t.element_size()
    if n == 0:
        return memoryview(bytearray())
    return memoryview((ctypes.c_ubyte * n).from_address(t.data_ptr())).cast("B")


def _read_exact(f: BinaryIO, view: memoryview, path: Path, what: str) -> None:
    done = 0
    while done < len(view):
        got = f.readinto(view[done : done + _IO_CHUNK])
        if not got:
            raise _bad(path, f"truncated safetensors file: {what} ends after {done} bytes")
        done += got


def read_tensor(f: BinaryIO, header: SafetensorsHeader, name: str) -> torch.Tensor:
    """Read one tensor into fresh (anonymous) memory: no mmap pages stay resident."""
    e = header.tensors[name]
    buf = torch.empty(e.nbytes, dtype=torch.uint8)
    f.seek(header.data_start + e.begin)
    _read_exact(f, _byte_view(buf), header.path, f"tensor {name!r}")
    if sys.byteorder == "big":
        raise StorageError("big-endian hosts are not supported by mono-quant's reader")
    return buf.view(e.torch_dtype).reshape(e.shape)


def copy_tensor_bytes(
    src: BinaryIO, header: SafetensorsHeader, name: str, writer: SafetensorsWriter,
    out_name: str | None = None,
) -> None:
    """Copy a tensor's bytes from ``src`` to ``writer`` in bounded chunks."""
    e = header.tensors[name]
    out_name = out_name or name
    spec = writer.spec(out_name)
    if (spec.st_dtype, spec.shape) != (e.dtype, e.shape):
        raise MonoQuantError(f"copy of {name!r}: writer expects {spec}, source has {e}")
    buf = torch.empty(min(e.nbytes, _IO_CHUNK), dtype=torch.uint8)
    view = _byte_view(buf)
    for start in range(0, e.nbytes, _IO_CHUNK):
        n = min(_IO_CHUNK, e.nbytes - start)
        src.seek(header.data_start + e.begin + start)
        _read_exact(src, view[:n], header.path, f"tensor {name!r}")
        writer._write_at(out_name, start, view[:n])
    writer._done(out_name)


class SafetensorsWriter:
    """Write a safetensors file whose tensors are known by spec before their data exists.

    ``order`` (default: the reference's) fixes the layout; tensors may then be written in any
    order. ``reserve`` adds that many spare bytes (spaces, rounded up to 8) to the header, so
    :meth:`set_metadata` can later store larger metadata (metrics known only at the end)
    without moving any tensor data. :meth:`finish` checks every tensor was written.
    """

    def __init__(
        self,
        f: BinaryIO,
        specs: Mapping[str, TensorSpec],
        metadata: Mapping[str, str] | None = None,
        *,
        order: Sequence[str] | None = None,
        reserve: int = 0,
    ) -> None:
        if sys.byteorder == "big":
            raise StorageError("big-endian hosts are not supported by mono-quant's writer")
        self._f = f
        self._specs = dict(specs)
        names = reference_order(self._specs) if order is None else list(order)
        if sorted(names) != sorted(self._specs):
            raise MonoQuantError("SafetensorsWriter: order must list every tensor exactly once")
        self._offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for name in names:
            n = self._specs[name].nbytes
            self._offsets[name] = (offset, offset + n)
            offset += n
        self._names = names
        header = self._header(metadata)
        self._header_len = len(header) + -(-reserve // 8) * 8
        self._data_start = 8 + self._header_len
        f.seek(0)
        f.write(self._header_len.to_bytes(8, "little"))
        f.write(header.ljust(self._header_len, b" "))
        f.truncate(self._data_start + offset)  # pre-size: tensors land at fixed offsets
        self._pending = set(names)

    def _header(self, metadata: Mapping[str, str] | None) -> bytes:
        obj: dict[str, object] = {}
        if metadata is not None:
            for k, v in metadata.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise BadInputError(
                        f"safetensors metadata must map strings to strings; {k!r} maps to a "
                        f"{type(v).__name__} (encode complex values as JSON)"
                    )
            obj["__metadata__"] = dict(sorted(metadata.items()))
        for name in self._names:
            spec = self._specs[name]
            obj[name] = {"dtype": spec.st_dtype, "shape": list(spec.shape),
                         "data_offsets": list(self._offsets[name])}
        raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        if len(raw) > MAX_HEADER_SIZE:
            raise BadInputError(f"safetensors header of {len(raw)} bytes exceeds the limit")
        return raw

    def spec(self, name: str) -> TensorSpec:
        return self._specs[name]

    def set_metadata(self, metadata: Mapping[str, str] | None) -> None:
        """Rewrite the header with new metadata; it must fit in the reserved length."""
        header = self._header(metadata)
        if len(header) > self._header_len:
            raise MonoQuantError(
                f"metadata needs a {len(header)} byte header but only {self._header_len} were "
                "reserved (a bug in the caller's reserve estimate)"
            )
        self._f.seek(8)
        self._f.write(header.ljust(self._header_len, b" "))

    def _write_at(self, name: str, start: int, data: memoryview) -> None:
        if name not in self._pending:
            raise MonoQuantError(f"tensor {name!r} is not expected or was already written")
        begin = self._offsets[name][0]
        self._f.seek(self._data_start + begin + start)
        for i in range(0, len(data), _IO_CHUNK):
            self._f.write(data[i : i + _IO_CHUNK])

    def _done(self, name: str) -> None:
        self._pending.discard(name)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        spec = self._specs.get(name)
        if spec is None:
            raise MonoQuantError(f"tensor {name!r} is not in this file's header")
        if (tensor.dtype, tuple(tensor.shape)) != (spec.dtype, spec.shape):
            raise MonoQuantError(
                f"tensor {name!r}: got {tensor.dtype} {tuple(tensor.shape)}, the header says "
                f"{spec.dtype} {spec.shape}"
            )
        t = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
        self._write_at(name, 0, _byte_view(t))
        self._done(name)
        del t

    def finish(self) -> None:
        if self._pending:
            missing = ", ".join(sorted(self._pending)[:5])
            raise MonoQuantError(f"safetensors writer closed before writing: {missing}")
