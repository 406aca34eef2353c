"""GPTQ (Frantar et al., 2022) for int8 weights, never worse than round-to-nearest.

Round-to-nearest (RTN) minimises each weight's own error; what matters is the layer's output
error on real inputs, ``||X W^T - X Q^T||^2 = tr((W - Q) H (W - Q)^T)`` with ``H = X^T X``.
GPTQ quantizes the input columns one at a time and spreads each column's rounding error over
the columns not yet quantized, weighted by the inverse Hessian (its upper Cholesky factor),
so later columns compensate for earlier ones.

Choices (the same as llm-compressor's ``GPTQModifier`` defaults unless said otherwise):

* ``H`` is accumulated in float64 from the calibration inputs of each layer (of the model as
  it is after SmoothQuant, before any weight is quantized). Dead inputs (``H_jj = 0``) get
  ``H_jj = 1`` and zero weights.
* Damping adds ``damping * mean(diag H)`` to the diagonal; ``block_size`` columns are updated
  together (lazy batch updates: the result does not depend on it beyond rounding).
* ``act_order`` processes columns by decreasing ``H_jj``.
* Scales and zero points are the weight observer's, computed from the float weight before
  GPTQ (for groups too, "static groups"), so the artifact layout is the same as for RTN.
* The layer's reconstruction error is computed for GPTQ and for RTN, and RTN is kept when
  it is lower (possible on degenerate Hessians): GPTQ is never worse than RTN, by
  construction. Everything runs in float64 on the layer's device: the result is deterministic.

Example:
    >>> import torch
    >>> from mono_quant.quant.primitives import quantize_weight_int8
    >>> g = torch.Generator().manual_seed(0)
    >>> w, x = torch.randn(16, 32, generator=g), torch.randn(256, 32, generator=g)
    >>> result = gptq_quantize(w, hessian(x), quantize_weight_int8(w))
    >>> result.error <= result.rtn_error, result.qweight.data.dtype
    (True, torch.int8)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mono_quant.quant.calibration import batch_size, run_batch, to_device
from mono_quant.quant.primitives import QuantizedTensor, dequantize
from mono_quant.quant.specs import qrange

__all__ = ["GPTQResult", "collect_hessians", "gptq_quantize", "hessian", "reconstruction_error"]


@dataclass(frozen=True)
class GPTQResult:
    """The chosen int8 weight and the reconstruction errors of GPTQ and RTN on ``H``."""

    qweight: QuantizedTensor
    error: float  # of the chosen weight
    rtn_error: float
    used: str  # "gptq" or "rtn" (RTN was better)


def hessian(x: torch.Tensor) -> torch.Tensor:
    """``X^T X / n`` in float64 for inputs ``[..., in]`` (``n`` rows)."""
    rows = x.detach().reshape(-1, x.shape[-1]).double()
    return rows.t() @ rows / max(rows.shape[0], 1)


def reconstruction_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """``tr((W - W_hat) H (W - W_hat)^T)``: the layer's mean squared output error times out."""
    d = w.double() - w_hat.double()
    return float(((d @ h) * d).sum())


def collect_hessians(
    model: nn.Module, data: Iterable[Any], layers: Sequence[str],
    num_samples: int | None = None,
) -> dict[str, torch.Tensor]:
    """``H = X^T X / n`` of the input of each ``nn.Linear`` in ``layers``, over ``data``."""
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                rows = x.detach().reshape(-1, x.shape[-1]).double()
                sums[name] = sums.get(name, 0) + rows.t() @ rows
                counts[name] = counts.get(name, 0) + rows.shape[0]
        return record

    names = [n for n in layers if isinstance(modules[n], nn.Linear)]
    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    device = next(iter(model.parameters()), torch.zeros(0)).device
    was_training, samples = model.training, 0
    model.eval()
    try:
        with torch.inference_mode():
            for i, item in enumerate(data):
                run_batch(model, to_device(item, device), "calibration", i)
                samples += batch_size(item)
                if num_samples is not None and samples >= num_samples:
                    break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: sums[n] / counts[n] for n in sums}


def _expanded(qt: QuantizedTensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element scale and zero point ``[out, in]`` (float64) of a weight's qparams."""
    s, z = qt.scale.double(), qt.zero_point.double()
    if qt.granularity.name == "per_group":
        g = shape[1] // s.shape[1]
        return s.repeat_interleave(g, dim=1), z.repeat_interleave(g, dim=1)
    # per channel [out, 1] or per tensor [1]: one column broadcast over the input axis
    return s.reshape(-1, 1).expand(shape), z.reshape(-1, 1).expand(shape)


def _inverse_factor(h: torch.Tensor, damping: float) -> torch.Tensor | None:
    """Upper Cholesky factor of ``(H + damping * mean(diag H) I)^-1``; None if not PD."""
    h = h + damping * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype,
                                                          device=h.device)
    factor, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        return None
    inverse = torch.cholesky_inverse(factor)
    upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
    return None if int(info) != 0 else upper


def _gptq_ints(w: torch.Tensor, u: torch.Tensor, s: torch.Tensor, z: torch.Tensor,
               qmin: int, qmax: int, block: int) -> torch.Tensor:
    """The column loop: int values ``[out, in]`` (float64) of the (permuted) weight."""
    w = w.clone()
    q = torch.empty_like(w)
    n = w.shape[1]
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1, err1, u1 = w[:, i1:i2].clone(), torch.zeros_like(w[:, i1:i2]), u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col, sc, zc = w1[:, i], s[:, i1 + i], z[:, i1 + i]
            qc = torch.clamp(torch.round(col / sc) + zc, qmin, qmax)
            err = (col - (qc - zc) * sc) / u1[i, i]
            w1[:, i:] -= err.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            err1[:, i] = err
            q[:, i1 + i] = qc
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return q


def gptq_quantize(
    weight: torch.Tensor, h: torch.Tensor, rtn: QuantizedTensor, *, damping: float = 0.01,
    block_size: int = 128, act_order: bool = False,
) -> GPTQResult:
    """GPTQ-round ``weight`` ``[out, in]`` with ``rtn``'s qparams on Hessian ``h`` ``[in, in]``.

    Returns the GPTQ weight, or ``rtn`` itself when its reconstruction error is lower.
    """
    w0 = weight.detach().double()
    h = h.to(device=w0.device, dtype=torch.float64)
    rtn_error = reconstruction_error(w0, dequantize(rtn, torch.float64), h)
    hw, w = h.clone(), w0.clone()
    dead = torch.diagonal(hw) == 0
    hw[dead, dead] = 1.0
    w[:, dead] = 0.0
    s, z = _expanded(rtn, w.shape)
    perm = torch.argsort(torch.diagonal(hw), descending=True, stable=True) if act_order \
        else torch.arange(w.shape[1], device=w.device)
    u = _inverse_factor(hw[perm][:, perm], damping)
    if u is None:
        return GPTQResult(rtn, rtn_error, rtn_error, "rtn")
    qmin, qmax = qrange(rtn.scheme)
    q = torch.empty_like(w)
    q[:, perm] = _gptq_ints(w[:, perm], u, s[:, perm], z[:, perm], qmin, qmax, block_size)
    qt = QuantizedTensor(q.to(torch.int8), rtn.scale, rtn.zero_point, rtn.scheme,
                         rtn.granularity)
    error = reconstruction_error(w0, dequantize(qt, torch.float64), h)
    if error <= rtn_error:
        return GPTQResult(qt, error, rtn_error, "gptq")
    return GPTQResult(rtn, rtn_error, rtn_error, "rtn")
