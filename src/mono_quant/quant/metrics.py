"""Validation metrics: SQNR, cosine similarity, sizes, and the int8 range check.

SQNR is ``10 * log10(sum(x**2) / sum((x - x_hat)**2))`` in dB, accumulated in float64. It is
``inf`` when the error is exactly zero. Every accumulator here sums over all elements first and
takes the ratio last, so "overall" numbers weight big layers and big batches by their size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "ErrorAccumulator",
    "add_chunk_error",
    "check_int8_ranges",
    "cosine_similarity",
    "error_chunk_rows",
    "first_tensor",
    "sqnr_db",
    "state_dict_bytes",
    "weight_error",
]

_CHUNK = 1 << 20


@dataclass
class ErrorAccumulator:
    """Running sums for SQNR and cosine between a reference and an approximation."""

    signal: float = 0.0  # sum(ref ** 2)
    noise: float = 0.0  # sum((ref - approx) ** 2)
    approx_sq: float = 0.0  # sum(approx ** 2)
    dot: float = 0.0  # sum(ref * approx)

    def add(self, ref: torch.Tensor, approx: torch.Tensor) -> None:
        if ref.shape != approx.shape:
            raise ValueError(f"shape mismatch: {tuple(ref.shape)} vs {tuple(approx.shape)}")
        ref, approx = ref.detach().reshape(-1), approx.detach().reshape(-1)
        for start in range(0, ref.numel(), _CHUNK):  # float64 in chunks: bounded memory
            r = ref[start : start + _CHUNK].double()
            a = approx[start : start + _CHUNK].double()
            self.signal += float(r.square().sum())
            self.noise += float((r - a).square().sum())
            self.approx_sq += float(a.square().sum())
            self.dot += float((r * a).sum())

    def merge(self, other: ErrorAccumulator) -> None:
        self.signal += other.signal
        self.noise += other.noise
        self.approx_sq += other.approx_sq
        self.dot += other.dot

    @property
    def sqnr_db(self) -> float:
        return _sqnr_db(self.signal, self.noise)

    @property
    def cosine(self) -> float:
        return _cosine(self.signal, self.approx_sq, self.dot)


# The formulas as plain functions (not in the properties): mutation testing (tools/mutate.py)
# skips decorated functions, and these numbers are the ones the catalog filters on.
def _sqnr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _cosine(signal: float, approx_sq: float, dot: float) -> float:
    if signal == 0.0 and approx_sq == 0.0:
        return 1.0
    if signal == 0.0 or approx_sq == 0.0:
        return 0.0
    return dot / math.sqrt(signal * approx_sq)


def weight_error(w: torch.Tensor, qt: Any) -> ErrorAccumulator:
    """The error sums of a quantized weight against its float original, without building the
    whole dequantized tensor: row chunks of ``w`` and of ``qt`` (a
    :class:`~mono_quant.quant.primitives.QuantizedTensor`) of about 256K values are
    dequantized and reduced with float32 dot products while they are in cache, and the chunk
    sums are accumulated in float64. Within about 1e-5 (relative) of
    ``ErrorAccumulator().add(w, dequantize(qt))``, which is float64 throughout and three
    times slower: a weight-SQNR figure moves by under 0.001 dB.
    """
    from mono_quant.quant.primitives import QuantizedTensor, dequantize

    acc = ErrorAccumulator()
    per_tensor = qt.granularity.name == "per_tensor"
    # a 0-D weight (quantized per tensor) is one row of one value: a 0-D tensor has no rows
    # to slice
    w, data = (w.reshape(1), qt.data.reshape(1)) if w.ndim == 0 else (w, qt.data)
    step = error_chunk_rows(w[0].numel())
    for r0 in range(0, w.shape[0], step):
        rows = slice(r0, r0 + step)
        part = QuantizedTensor(data[rows], qt.scale if per_tensor else qt.scale[rows],
                               qt.zero_point if per_tensor else qt.zero_point[rows],
                               qt.scheme, qt.granularity)
        add_chunk_error(acc, w[rows].detach().reshape(-1).float(), dequantize(part).reshape(-1))
    return acc


def error_chunk_rows(row_numel: int) -> int:
    """Rows of ``row_numel`` values per chunk of :func:`weight_error` (about 256K values):
    a caller that sums the same chunks gets the same sums, bit for bit."""
    return max(1, (_CHUNK // 4) // max(1, row_numel))


def add_chunk_error(acc: ErrorAccumulator, r: torch.Tensor, a: torch.Tensor) -> None:
    """Add one chunk's sums to ``acc``: ``r`` the flat float32 reference, ``a`` its flat
    float32 dequantized approximation, which is consumed (it becomes the error ``a - r``).
    Float32 dot products over the chunk, accumulated in float64.

    BLAS rounds a dot product by the memory's alignment (its vector loop starts at an
    aligned address), so a chunk that does not start at one (a weight read in place from a
    checkpoint's mmap, a row chunk at an odd offset) is copied first: the sums then depend on
    the values only, whichever path read the weight."""
    r, a = _aligned(r), _aligned(a)
    acc.signal += float(torch.dot(r, r))
    acc.approx_sq += float(torch.dot(a, a))
    acc.dot += float(torch.dot(r, a))
    a.sub_(r)  # a - r: the error, squared by the dot below
    acc.noise += float(torch.dot(a, a))


#: Bytes of alignment torch's CPU allocator gives a fresh tensor (and AVX-512 loads want).
_ALIGN = 64


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a fresh copy of it when it does not start on an :data:`_ALIGN` boundary."""
    return t if t.data_ptr() % _ALIGN == 0 else torch.empty_like(t).copy_(t)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``approx`` against ``ref``, in dB."""
    acc = ErrorAccumulator()
    acc.add(ref, approx)
    return acc.sqnr_db


def cosine_similarity(ref: torch.Tensor, approx: torch.Tensor) -> float:
    acc = ErrorAccumulator()
    acc.add(ref, approx)
    return acc.cosine


def state_dict_bytes(module: nn.Module) -> int:
    """Bytes of every distinct tensor in the module's state dict (tied weights counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in module.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor to compare in a model output: itself, ``logits``, or the first tensor found."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        if "logits" in output:
            return output["logits"]
        values: Iterable[Any] = output.values()
    elif isinstance(output, (list, tuple)):
        values = output
    else:
        return None
    for v in values:
        t = first_tensor(v)
        if t is not None:
            return t
    return None


def check_int8_ranges(
    name: str, data: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
    qmax: int,
) -> list[str]:
    """Problems with a quantized tensor (empty list when sane): dtype, range, scales, zp."""
    problems = []
    if data.dtype != torch.int8:
        problems.append(f"{name}: data dtype is {data.dtype}, expected torch.int8")
    elif data.numel():
        lo, hi = (int(v) for v in torch.aminmax(data))  # one pass over the int8 data
        if lo < qmin or hi > qmax:
            problems.append(f"{name}: int8 values span [{lo}, {hi}], outside [{qmin}, {qmax}]")
    if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
        problems.append(f"{name}: scales must be finite and > 0")
    if zero_point.numel() and (int(zero_point.min()) < qmin or int(zero_point.max()) > qmax):
        problems.append(f"{name}: zero points outside [{qmin}, {qmax}]")
    return problems
