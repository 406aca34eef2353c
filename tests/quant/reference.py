"""An independent reference for the int8 numerics, written in numpy float64.

Each float32 operation of the contract is computed exactly (or correctly rounded) in float64
and rounded to float32 afterwards; for +, -, *, / that double rounding equals float32
arithmetic (float64 has more than 2*24+2 bits). It shares no code with mono_quant.
"""

from __future__ import annotations

import numpy as np

TINY = np.float32(np.finfo(np.float32).tiny)


def f32(x):
    return np.asarray(x, dtype=np.float64).astype(np.float32)


def qparams(lo, hi, symmetric):
    lo, hi = f32(lo).astype(np.float64), f32(hi).astype(np.float64)
    if symmetric:
        amax = np.maximum(-lo, hi)
        scale = np.maximum(f32(amax / 127.0), TINY)
        return scale, np.zeros_like(scale)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    scale = np.maximum(f32(f32(hi - lo).astype(np.float64) / 255.0), TINY)
    zp = np.clip(-128.0 - np.round(f32(lo / scale.astype(np.float64))), -128, 127)
    return scale, f32(zp)


def quantize(x, scale, zp, symmetric):
    """x: float32 rows [R, C]; scale, zp: [R, 1]."""
    qmin = -127 if symmetric else -128
    inv = f32(1.0 / scale.astype(np.float64))
    prod = f32(x.astype(np.float64) * inv.astype(np.float64))
    return np.clip(np.round(prod) + zp, qmin, 127).astype(np.int8)


def rows_of(w: np.ndarray, granularity: str, group_size: int = 0) -> np.ndarray:
    if granularity == "per_tensor":
        return w.reshape(1, -1)
    if granularity == "per_channel":
        return w.reshape(w.shape[0], -1)
    return w.reshape(-1, group_size)


def quantize_weight(w: np.ndarray, symmetric: bool, granularity: str, group_size: int = 0):
    """(q with w's shape, scale [R], zero point [R]) for a float32 array."""
    rows = rows_of(np.asarray(w, dtype=np.float32), granularity, group_size)
    scale, zp = qparams(rows.min(axis=1), rows.max(axis=1), symmetric)
    q = quantize(rows, scale[:, None], zp[:, None], symmetric)
    return q.reshape(w.shape), scale, zp
