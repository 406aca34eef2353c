"""Reading safetensors files without trusting them: a validating header parser and a
tensor-at-a-time reader.

The file layout (https://github.com/huggingface/safetensors): 8 bytes little-endian header
length ``n``; ``n`` bytes of JSON ``{"__metadata__": {str: str}, name: {"dtype", "shape",
"data_offsets": [begin, end]}, ...}`` padded with spaces; then the tensor bytes, contiguous,
in the order of their offsets. :func:`read_header` checks all of it (sizes, offsets, dtypes,
the file length) and names the file and the problem, so the real parser never sees a file
it could choke on.

Example:
    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> path = tempfile.mkdtemp() + "/x.safetensors"
    >>> save_file({"x": torch.arange(3.0)}, path, metadata={"format": "pt"})
    >>> h = read_header(path)
    >>> h.metadata, h.tensors["x"]
    ({'format': 'pt'}, HeaderEntry(dtype='F32', shape=(3,), begin=0, end=12))
    >>> with open(path, "rb") as f:
    ...     read_tensor(f, h, "x")
    tensor([0., 1., 2.])
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from mono_quant.errors import BadInputError, StorageError
from mono_quant.io._files import refuse_special_file

__all__ = [
    "DTYPES",
    "IO_CHUNK",
    "MAX_HEADER_SIZE",
    "ST_RANK",
    "TORCH_TO_ST",
    "HeaderEntry",
    "SafetensorsHeader",
    "byte_view",
    "read_exact",
    "read_header",
    "read_tensor",
]

#: The reference implementation refuses headers above this size (100 MB).
MAX_HEADER_SIZE = 100_000_000
#: Bytes moved per read/write call (also bounds the memory of raw copies).
IO_CHUNK = 64 << 20

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
TORCH_TO_ST = {v: k for k, v in DTYPES.items()}
ST_RANK = {name: i for i, name in enumerate(_ORDER)}


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


def _open(path: Path | str) -> tuple[BinaryIO, int]:
    """(reader, size) of a file, or of an object-store URL (each read a ranged GET)."""
    if isinstance(path, str):
        from mono_quant.io.store import split_url

        store, key = split_url(path)
        f = store.open(key)
        return f, int(f.size)
    refuse_special_file(path)  # opening a FIFO would block
    f = open(path, "rb")  # noqa: SIM115 - closed by the caller's with
    return f, os.fstat(f.fileno()).st_size


def _raw_header(path: Path | str) -> tuple[bytes, int]:
    """(header JSON bytes, file size) after checking the length field against the file;
    ``path`` a str: an object-store URL, of which only the header's bytes are read."""
    try:
        f, size = _open(path)
        with f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _bad(path, (
                    f"truncated safetensors file: {size} bytes, shorter than the 8-byte header "
                    "length that starts every safetensors file"
                ))
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_SIZE:
                raise _bad(path, (  # not the value: it is the file's first 8 bytes
                    "not a safetensors file (garbage header): the header length field is "
                    f"above the {MAX_HEADER_SIZE} byte limit"
                ))
            if 8 + n > size:
                raise _bad(path, (
                    "truncated safetensors file: the header declares more than the "
                    f"{size - 8} bytes that follow its length field"
                ))
            raw = f.read(n)
    except FileNotFoundError as e:
        raise _bad(path, "no such file") from e
    except IsADirectoryError as e:
        raise _bad(path, "is a folder, expected a .safetensors file") from e
    except OSError as e:
        raise StorageError(f"{path}: cannot read: {e}") from e
    return raw, size


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate a safetensors header; every problem names the file.

    ``path`` may be an object store's URL (``s3://bucket/key.safetensors``): then only the
    length field and the header are read, as two ranged GETs.

    Raises:
        BadInputError: missing file, truncated file, garbage or inconsistent header.
        StorageError: the file exists but cannot be read.
    """
    from mono_quant.io.store import is_store_url

    path = str(path) if is_store_url(path) else Path(path)  # a URL: ranged reads
    raw, size = _raw_header(path)
    n = len(raw)
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:  # its message would show the file's bytes
        raise _bad(path, f"not a safetensors file (garbage header): not UTF-8 at header "
                         f"byte {e.start}") from e
    except ValueError as e:
        raise _bad(path, f"not a safetensors file (garbage header): {e}") from e
    except RecursionError as e:
        raise _bad(path, "not a safetensors file (garbage header): nested too deeply") from e
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


def byte_view(t: torch.Tensor) -> memoryview:
    """A writable, zero-copy byte view of a contiguous CPU tensor (keep ``t`` alive)."""
    n = t.numel() * t.element_size()
    if n == 0:
        return memoryview(bytearray())
    return memoryview((ctypes.c_ubyte * n).from_address(t.data_ptr())).cast("B")


def read_exact(f: BinaryIO, view: memoryview, path: Path, what: str) -> None:
    done = 0
    while done < len(view):
        got = f.readinto(view[done : done + IO_CHUNK])
        if not got:
            raise _bad(path, f"truncated safetensors file: {what} ends after {done} bytes")
        done += got


def read_tensor(
    f: BinaryIO, header: SafetensorsHeader, name: str, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Read one tensor into anonymous memory (no mmap pages stay resident): a fresh buffer,
    or the front of ``out`` (a uint8 tensor at least that large) so callers can reuse one."""
    if sys.byteorder == "big":
        raise StorageError("big-endian hosts are not supported by mono-quant's reader")
    e = header.tensors[name]
    if out is not None and out.dtype == torch.uint8 and out.numel() >= e.nbytes:
        buf = out[: e.nbytes]
    else:
        buf = torch.empty(e.nbytes, dtype=torch.uint8)
    f.seek(header.data_start + e.begin)
    read_exact(f, byte_view(buf), header.path, f"tensor {name!r}")
    return buf.view(e.torch_dtype).reshape(e.shape)
