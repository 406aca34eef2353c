"""Dynamic W8A8: symmetric per-token int8 activations and an int8 GEMM, as vLLM computes it.

``mode="dynamic"`` is the int8 scheme vLLM serves for compressed-tensors checkpoints whose
``input_activations`` are ``{dynamic: true, strategy: token, symmetric: true}``
(``CompressedTensorsW8A8Int8``). Per token (one row of the input flattened to
``[tokens, in_features]``) vLLM's ``dynamic_scaled_int8_quant`` kernel computes, in float32:

* ``absmax = max |x|`` over the row, ``scale = absmax / 127``;
* ``q = round_half_even(x * (127 / absmax))`` saturated to ``[-128, 127]``; a row of zeros
  gives ``127 / 0 = inf``, ``0 * inf = NaN``, which the saturating convert turns into 0.

Then ``cutlass_scaled_mm`` multiplies int8 ``q`` by the int8 weight with **int32
accumulation** and its epilogue applies ``out = scale_x * (scale_w * float(acc)) + bias`` in
float32 before casting to the output dtype (``scale_w`` per output channel ``[out]`` or one
number per tensor).

:func:`int8_linear` reproduces those steps bit for bit: the GEMM runs in float64, which is
exact for int8 products summed over fewer than 2**37 terms, so its result is the int32
accumulator exactly; the float64 -> float32 conversion rounds to nearest even like the
kernel's int32 -> float conversion. What is not matched: a model whose accumulator overflows
int32 (more than 133,000 input features at full range), which vLLM would wrap around.

Both divisions are the kernel's IEEE float32 ones (nvcc divides correctly rounded unless
built with ``--use_fast_math``, which vLLM's build does not add), on every device:
``absmax / 127.0`` on a tensor is ``absmax * float32(1/127)`` on a GPU (see
``_kernels._div``), and ``127.0 / absmax`` is ``absmax.reciprocal() * 127`` on every device
(``Tensor.__rtruediv__``), which rounds twice and is one bit off for about a quarter of rows.
Both are taken in float64 and rounded once to float32 (exact: module ``_kernels``).

Example:
    >>> import torch
    >>> x = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]])
    >>> q, s = quantize_per_token(x)
    >>> q.tolist(), s.flatten().tolist()
    ([[64, -127, 32], [0, 0, 0]], [0.007874015718698502, 0.0])
"""

from __future__ import annotations

import torch

from mono_quant.quant._kernels import _div

__all__ = ["fake_quantize_per_token", "int8_linear", "quantize_per_token"]


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 ``[..., C]`` and float32 scales ``[..., 1]`` of ``x``, one scale per row.

    The formula of vLLM's dynamic per-token int8 quantization (module docstring).
    """
    xf = x.float()
    absmax = xf.abs().amax(dim=-1, keepdim=True)  # (..., 1)
    scale = _div(absmax, 127.0)
    # float32(127 / absmax) correctly rounded: 127 / a is at least 2**-49 (relative) from a
    # float32 rounding boundary, float64's reciprocal-times-127 is within 2**-52 of it
    t = xf * (127.0 / absmax.double()).float()
    t = torch.nan_to_num(t, nan=0.0)  # the zero row: 0 * inf
    q = torch.round(t).clamp_(-128.0, 127.0).to(torch.int8)
    return q, scale


def fake_quantize_per_token(x: torch.Tensor) -> torch.Tensor:
    """``q * scale`` in ``x.dtype``: per-token quantization simulated in float (for layers,
    such as Conv2d, that have no int8 GEMM here; a "token" is one position's channel vector).
    """
    q, scale = quantize_per_token(x)
    return (q.float() * scale).to(x.dtype)


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``F.linear`` as vLLM's int8 W8A8 kernel computes it for per-token dynamic inputs.

    Args:
        x: float input ``[..., in]``; quantized per token here.
        weight: int8 ``[out, in]`` (symmetric: zero point 0).
        weight_scale: float32 ``[out, 1]`` (per channel) or ``[1]`` (per tensor).
        bias: float ``[out]`` or None.

    Returns ``[..., out]`` in ``x.dtype``.
    """
    shape = x.shape
    q, sx = quantize_per_token(x.reshape(-1, shape[-1]))  # (T, in) int8, (T, 1)
    acc = q.double() @ weight.double().t()  # (T, out): exact int32 accumulation
    sw = weight_scale.float().reshape(1, -1)  # (1, out) or (1, 1)
    out = sx * (sw * acc.float())
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).reshape(*shape[:-1], weight.shape[0])
