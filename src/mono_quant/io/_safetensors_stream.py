"""Writing safetensors files without holding every tensor in memory.

(The layout is described in :mod:`._safetensors_header`, which also holds the reader.)

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

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import torch

from mono_quant.errors import BadInputError, MonoQuantError, StorageError
from mono_quant.io._safetensors_header import (
    DTYPES,
    IO_CHUNK,
    MAX_HEADER_SIZE,
    ST_RANK,
    TORCH_TO_ST,
    HeaderEntry,
    SafetensorsHeader,
    byte_view,
    read_exact,
    read_header,
    read_tensor,
)

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
            return TORCH_TO_ST[self.dtype]
        except KeyError:
            raise BadInputError(
                f"dtype {self.dtype} cannot be stored in safetensors; supported: "
                f"{', '.join(str(d) for d in DTYPES.values())}"
            ) from None

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorSpec:
        return cls(t.dtype, tuple(t.shape))


def reference_order(specs: Mapping[str, TensorSpec]) -> list[str]:
    """Tensor names in the reference writer's order: larger dtypes first, then by name."""
    return sorted(specs, key=lambda n: (-ST_RANK[specs[n].st_dtype], n))


def copy_tensor_bytes(
    src: BinaryIO, header: SafetensorsHeader, name: str, writer: SafetensorsWriter,
    out_name: str | None = None, scratch: torch.Tensor | None = None,
) -> None:
    """Copy a tensor's bytes from ``src`` to ``writer`` in chunks of at most ``IO_CHUNK``
    bytes, through ``scratch`` (a uint8 tensor) when given, else a fresh buffer."""
    e = header.tensors[name]
    out_name = out_name or name
    spec = writer.spec(out_name)
    if (spec.st_dtype, spec.shape) != (e.dtype, e.shape):
        raise MonoQuantError(f"copy of {name!r}: writer expects {spec}, source has {e}")
    if scratch is not None and scratch.dtype == torch.uint8 and scratch.numel() > 0:
        buf = scratch[:IO_CHUNK]
    else:
        buf = torch.empty(min(e.nbytes, IO_CHUNK), dtype=torch.uint8)
    view = byte_view(buf)
    chunk = len(view)
    for start in range(0, e.nbytes, chunk):
        n = min(chunk, e.nbytes - start)
        src.seek(header.data_start + e.begin + start)
        read_exact(src, view[:n], header.path, f"tensor {name!r}")
        writer._write_at(out_name, start, view[:n])
    writer._done(out_name)


class SafetensorsWriter:
    """Write a safetensors file whose tensors are known by spec before their data exists.

    ``order`` (default: the reference's) fixes the layout; tensors may then be written in any
    order. ``size_for`` (metadata no smaller than any the file will hold, e.g. with every
    metric at its widest) sizes the header up front: it is as long as the header with
    ``size_for`` would be, and the actual header is trailing-padded with spaces (0x20, which
    the format allows) to that length. :meth:`set_metadata` can then store the final metadata
    (metrics known only at the end) in place, without moving any tensor data, and two writers
    given the same ``size_for`` write the same bytes whatever the metrics' values.
    :meth:`finish` checks every tensor was written.
    """

    def __init__(
        self,
        f: BinaryIO,
        specs: Mapping[str, TensorSpec],
        metadata: Mapping[str, str] | None = None,
        *,
        order: Sequence[str] | None = None,
        size_for: Mapping[str, str] | None = None,
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
        bound = len(self._header(size_for)) if size_for is not None else 0
        self._header_len = max(len(header), bound)
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

    @property
    def data_start(self) -> int:
        """File offset of the first tensor byte (the data section follows ``order``)."""
        return self._data_start

    def mark_all_written(self) -> None:
        """The caller wrote the whole data section itself, in ``order`` (a raw copy)."""
        self._pending.clear()

    def set_metadata(self, metadata: Mapping[str, str] | None) -> None:
        """Rewrite the header in place with new metadata; it must fit in the header's length
        (fixed when the writer was made: see ``size_for``)."""
        header = self._header(metadata)
        if len(header) > self._header_len:
            raise MonoQuantError(
                f"metadata needs a {len(header)} byte header but only {self._header_len} were "
                "reserved (a bug in the caller's size_for)"
            )
        self._f.seek(8)
        self._f.write(header.ljust(self._header_len, b" "))

    def _write_at(self, name: str, start: int, data: memoryview) -> None:
        if name not in self._pending:
            raise MonoQuantError(f"tensor {name!r} is not expected or was already written")
        begin = self._offsets[name][0]
        self._f.seek(self._data_start + begin + start)
        for i in range(0, len(data), IO_CHUNK):
            self._f.write(data[i : i + IO_CHUNK])

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
        self._write_at(name, 0, byte_view(t))
        self._done(name)
        del t

    def finish(self) -> None:
        if self._pending:
            missing = ", ".join(sorted(self._pending)[:5])
            raise MonoQuantError(f"safetensors writer closed before writing: {missing}")
