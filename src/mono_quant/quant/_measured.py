"""Per-channel min-max int8 rounding and the weight's error sums in one pass over each weight.

:func:`quantize_measured` gives what ``quantize_weight`` and then
:func:`~mono_quant.quant.metrics.weight_error` give, bit for bit, reading each chunk of rows
of the float weight once: its range, its int8 rounding (the :mod:`~mono_quant.quant._kernels`
formulas, into one float32 scratch buffer reused for every chunk) and its four error sums
(the rounded floats, dequantized in place, while the chunk is still in cache). The chunks are
:func:`~mono_quant.quant.metrics.weight_error`'s (about 256K values), so the float32 dot
products and their float64 totals are the same operations on the same values.

Separately, the two passes read a large model's weights twice from memory, allocated a fresh
float32 temporary per chunk (page faults) and converted the int8 data back to float32: at 1B
parameters the error sums cost more than the rounding (docs/performance.md, issue 9).
"""

from __future__ import annotations

import torch

from mono_quant.quant import _kernels
from mono_quant.quant.metrics import ErrorAccumulator, add_chunk_error, error_chunk_rows
from mono_quant.quant.primitives import QuantizedTensor, _check_finite, _float_rows, _pack
from mono_quant.quant.qconfig import QuantConfig
from mono_quant.quant.specs import qrange

__all__ = ["CHUNKS_PER_PASS", "applies", "quantize_measured"]

#: weight_error's chunks (about 256K values) rounded per step: fewer, larger element-wise
#: operations (each one a parallel region of torch's thread pool) over about 1M values (4 MiB
#: of float32, what the eager kernel rounds per step), the sums still taken chunk by chunk.
CHUNKS_PER_PASS = 4


def applies(weight: torch.Tensor, config: QuantConfig) -> bool:
    """Does :func:`quantize_measured` cover this weight and config? (min-max observer,
    per-channel along the output axis, a weight of 2+ dims that the eager kernel rounds);
    otherwise quantize, then :func:`~mono_quant.quant.metrics.weight_error`."""
    gran = config.granularity_spec
    if config.weight_observer != "minmax" or gran.name != "per_channel":
        return False
    if getattr(gran, "axis", None) != 0 or weight.ndim < 2 or weight.numel() == 0:
        return False
    if not weight.is_floating_point():
        return False
    rows = weight.detach().reshape(weight.shape[0], -1)
    return not _kernels.compiled_for(rows, config.scheme == "symmetric")


def quantize_measured(weight: torch.Tensor, config: QuantConfig,
                      name: str) -> tuple[QuantizedTensor, ErrorAccumulator]:
    """``(quantize_weight(weight, config, name), weight_error(weight, that))`` in one pass
    over ``weight`` (see the module docstring); only where :func:`applies`.

    Raises:
        BadInputError: as ``quantize_weight_int8`` (non-finite values, with ``name``).
    """
    gran = config.granularity_spec
    symmetric = config.scheme == "symmetric"
    qmin, qmax = (float(v) for v in qrange(config.scheme))
    with torch.no_grad():
        rows = _float_rows(weight, gran, name)  # float32 [out, in...], checked
        n_rows, n_cols = rows.shape
        sums_step = error_chunk_rows(n_cols)
        step = sums_step * CHUNKS_PER_PASS
        out = torch.empty(rows.shape, dtype=torch.int8, device=rows.device)
        scale = torch.empty((n_rows, 1), dtype=torch.float32, device=rows.device)
        zp = torch.empty_like(scale)
        scratch = torch.empty(min(step, n_rows) * n_cols, dtype=torch.float32,
                              device=rows.device)
        acc = ErrorAccumulator()
        for r0 in range(0, n_rows, step):
            rs = slice(r0, r0 + step)
            x = rows[rs]
            # (torch.aminmax along rows is 12x slower than amin + amax, measured)
            s, z = _kernels.qparams_from_minmax(*_kernels.minmax_rows(x), symmetric)
            t = _kernels.round_float(x, s, z, qmin, qmax, out=scratch[: x.numel()].view(x.shape))
            out[rs].copy_(t)  # integral floats in [qmin, qmax]: the int8 cast is exact
            scale[rs], zp[rs] = s, z
            if not symmetric:  # dequantize's (q - zp) * scale on the same float values
                t.sub_(z)  # (with zero points all 0, dequantize skips q - 0 == q as well)
            t.mul_(s)
            for r in range(0, x.shape[0], sums_step):  # weight_error's chunks, in order
                part = slice(r, r + sums_step)
                add_chunk_error(acc, x[part].reshape(-1), t[part].reshape(-1))
        _check_finite(scale, name)  # NaN or inf: the chunks' numbers are then discarded
        return _pack(out, scale, zp, weight.shape, config.scheme, gran), acc
