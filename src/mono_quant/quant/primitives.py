"""int8 quantization of tensors: the pure tensor math every other layer calls.

Example:
    >>> import torch
    >>> from mono_quant import quantize_weight_int8, dequantize
    >>> w = torch.randn(64, 256)
    >>> qw = quantize_weight_int8(w, scheme="symmetric", granularity="per_channel")
    >>> qw.data.dtype, tuple(qw.scale.shape)
    (torch.int8, (64, 1))
    >>> bool((dequantize(qw) - w).abs().max() <= qw.scale.max())
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mono_quant.errors import BadInputError
from mono_quant.quant import _kernels
from mono_quant.quant.specs import Granularity, as_granularity, check_scheme, qrange

__all__ = [
    "QuantizedTensor",
    "dequantize",
    "fake_quantize",
    "quantize_weight_int8",
    "quantize_with_qparams",
]


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """int8 data with its float32 scale and int8 zero point.

    ``data`` has the shape of the original tensor; ``scale`` and ``zero_point`` have
    ``granularity.param_shape(data.shape)`` (``[A, 1]`` per channel, ``[A, B/g]`` per group,
    ``[1]`` per tensor). ``zero_point`` is all zeros for the symmetric scheme.
    """

    data: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    scheme: str
    granularity: Granularity

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)


def _float_rows(x: torch.Tensor, granularity: Granularity, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise BadInputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point()):
        raise BadInputError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise BadInputError(f"{name}: cannot quantize an empty tensor (shape {tuple(x.shape)})")
    x = x.detach()
    if x.dtype != torch.float32:
        x = x.float()
    return granularity.rows(x.contiguous(), name)


def _check_finite(scale: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(scale).all()):
        raise BadInputError(
            f"{name}: contains NaN or infinite values; int8 quantization needs finite values "
            "(check the checkpoint, or exclude this layer)"
        )


def quantize_weight_int8(
    w: torch.Tensor,
    scheme: str = "symmetric",
    granularity: Granularity | str = "per_channel",
    *,
    group_size: int | None = None,
    name: str = "weight",
) -> QuantizedTensor:
    """Quantize ``w`` to int8 with min-max ranges.

    Args:
        w: a floating-point tensor (float32, float16 or bfloat16; math is done in float32).
        scheme: ``"symmetric"`` (range ``[-127, 127]``, zero point 0) or ``"asymmetric"``
            (range ``[-128, 127]``, zero point chosen so that 0.0 is exactly representable).
        granularity: ``"per_tensor"``, ``"per_channel"`` (output axis, the default),
            ``"per_group"`` (``group_size`` values along the input axis, default 128) or a spec.
        name: how errors refer to the tensor (e.g. ``"layers.0.fc1.weight"``).

    Raises:
        BadInputError: non-float, empty or non-finite input, or a per-group size that does not
            divide the input dimension.
    """
    check_scheme(scheme)
    gran = as_granularity(granularity, group_size)
    with torch.no_grad():
        rows = _float_rows(w, gran, name)
        q_rows, scale, zp = _kernels.fused_minmax_quantize(rows, scheme == "symmetric")
        _check_finite(scale, name)
        return _pack(q_rows, scale, zp, w.shape, scheme, gran)


def _pack(q_rows, scale, zp, shape, scheme, gran) -> QuantizedTensor:
    pshape = gran.param_shape(shape)
    return QuantizedTensor(
        data=gran.from_rows(q_rows, shape),
        scale=scale.reshape(pshape),
        zero_point=zp.reshape(pshape).to(torch.int8),
        scheme=scheme,
        granularity=gran,
    )


def quantize_with_qparams(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    scheme: str = "symmetric",
    granularity: Granularity | str = "per_channel",
    *,
    group_size: int | None = None,
    name: str = "tensor",
) -> QuantizedTensor:
    """Quantize ``x`` with given qparams (from an observer) in ``granularity.param_shape``."""
    check_scheme(scheme)
    gran = as_granularity(granularity, group_size)
    expected = gran.param_shape(x.shape)
    if tuple(scale.shape) != expected or tuple(zero_point.shape) != expected:
        raise BadInputError(
            f"{name}: scale {tuple(scale.shape)} / zero point {tuple(zero_point.shape)} do not "
            f"match {gran.name} qparams of shape {expected} for a tensor of shape "
            f"{tuple(x.shape)}"
        )
    _check_finite(scale, name)
    if not bool((scale > 0).all()):
        raise BadInputError(f"{name}: every scale must be > 0")
    with torch.no_grad():
        rows = _float_rows(x, gran, name)
        n = rows.shape[0]
        s = scale.detach().float().reshape(n, 1).to(rows.device)
        z = zero_point.detach().float().reshape(n, 1).to(rows.device)
        qmin, qmax = qrange(scheme)
        q_rows = _kernels.quantize_rows(rows, s, z, qmin, qmax)
        return _pack(q_rows, s, z, x.shape, scheme, gran)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(q - zero_point) * scale`` in float32, then cast to ``dtype``.

    The order of operations is the one compressed-tensors and vLLM use, so a checkpoint
    dequantized by them is bit-identical to ours.
    """
    data, scale, zp = qt.data, qt.scale, qt.zero_point
    if qt.granularity.name == "per_group":
        data = data.reshape(data.shape[0], scale.shape[1], -1)  # (A, B/g, g)
        scale, zp = scale.unsqueeze(-1), zp.unsqueeze(-1)
    # One float32 buffer of the weight's size, updated in place: the same IEEE operations
    # as ``(q - zp) * scale`` without two more temporaries of that size (int8 -> float32 is
    # exact, and with zero points all 0, q - 0 == q: the subtraction is skipped).
    w = data.to(torch.float32)
    if zp.any():
        w.sub_(zp.to(torch.float32))
    return w.mul_(scale).reshape(qt.data.shape).to(dtype)


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: str
) -> torch.Tensor:
    """Quantize then dequantize ``x`` with per-tensor qparams (static activations)."""
    qmin, qmax = qrange(scheme)
    s = scale.float()
    z = zero_point.float()
    q = torch.clamp(torch.round(x.float() * (1.0 / s)) + z, qmin, qmax)
    return ((q - z) * s).to(x.dtype)
