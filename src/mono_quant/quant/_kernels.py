"""Row kernels: min/max, qparams and int8 rounding over a ``[R, C]`` rows view.

Numerics (the contract every path below keeps bit for bit, and the tests check against
``torch.fake_quantize_per_channel_affine`` and ``torch.ao`` observers):

* symmetric:  ``amax = max(-min(x), max(x))``, ``scale = max(amax / 127, tiny)``, ``zp = 0``
* asymmetric: ``lo = min(min(x), 0)``, ``hi = max(max(x), 0)``,
  ``scale = max((hi - lo) / 255, tiny)``, ``zp = clamp(-128 - round(lo / scale), -128, 127)``
* ``q = clamp(round(x * (1 / scale)) + zp, qmin, qmax)`` with round-half-to-even, all float32.
* every ``/`` is the correctly rounded IEEE float32 division, on every device (see ``_div``).

``tiny`` is the smallest normal float32, so an all-zero row gets a positive scale and
quantizes to exact zeros instead of dividing by zero.

Two implementations share that contract:

* an eager one that walks the rows in chunks of about ``_CHUNK`` elements, so temporaries
  stay small (the streaming quantizer relies on it) — used on GPUs and for small tensors;
* a ``torch.compile`` one for large CPU tensors: Inductor fuses the row reduction and the
  rounding into one loop nest, so each row is read from memory once and rounded while it is
  still in cache. It falls back to the eager path, with one warning, when compilation fails
  (no C++ compiler, for instance).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

from mono_quant.quant import options

__all__ = ["TINY", "compiled_for", "fused_minmax_quantize", "qparams_from_minmax", "quantize_rows",
           "round_float"]

log = logging.getLogger(__name__)

TINY = torch.finfo(torch.float32).tiny
#: Elements per eager chunk: 4 MiB of float32, a few temporaries of it stay in L2/L3.
_CHUNK = 1 << 20


# --- shared formulas (used by both paths: keep them the only place the math lives) ---------


def _div(x: torch.Tensor, d: float) -> torch.Tensor:
    """``x / d`` for float32 ``x``: the correctly rounded float32 quotient on every device.

    ``x / 255.0`` is not the same IEEE operation everywhere: the CPU kernel divides, but
    CUDA's kernel for a Python-number divisor multiplies by the float32 reciprocal (its
    comment: "may lose one bit of precision"), and Inductor rewrites a division by a constant
    the same way — ``x * float32(1/255)`` differs from ``x / 255`` in the last bit for about
    70 % of inputs. Taken in float64 (by either method) and rounded once to float32, the
    quotient is the correctly rounded float32 one: for a divisor with at most 8 significant
    bits, ``x / d`` is at least 2**-33 (relative) from any float32 rounding boundary, far
    more than float64's error.
    """
    return (x.double() / d).float()


def _qparams(lo: torch.Tensor, hi: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, ...]:
    """Per-row (scale, zero_point as float) from per-row min and max."""
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = torch.clamp(_div(amax, 127.0), min=TINY)
        return scale, torch.zeros_like(scale)
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    span = _div(hi - lo, 255.0)
    # hi - lo overflows float32 for finite ranges wider than 3.4e38: divide first there
    # only, so every other range keeps the exact float32 formula
    span = torch.where(torch.isinf(span), _div(hi, 255.0) - _div(lo, 255.0), span)
    scale = torch.clamp(span, min=TINY)
    zp = torch.clamp(-128.0 - torch.round(lo / scale), -128.0, 127.0)
    return scale, zp


def _round(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: float, qmax: float):
    q = torch.clamp(torch.round(x * (1.0 / scale)) + zp, qmin, qmax)
    # float -> int32 -> int8 vectorises better in Inductor than a direct float -> int8 cast.
    return q.to(torch.int32).to(torch.int8)


def _fused(rows: torch.Tensor, symmetric: bool):
    lo = rows.amin(dim=1, keepdim=True)
    hi = rows.amax(dim=1, keepdim=True)
    scale, zp = _qparams(lo, hi, symmetric)
    qmin = -127.0 if symmetric else -128.0
    # Only the reductions are returned: returning scale too makes Inductor split the loop nest.
    return _round(rows, scale, zp, qmin, 127.0), lo, hi


def _fused_sym(rows: torch.Tensor):
    return _fused(rows, True)


def _fused_asym(rows: torch.Tensor):
    return _fused(rows, False)


# --- compiled path ---------------------------------------------------------------------------

_lock = threading.Lock()
_compiled: dict[str, Callable] = {}
_compile_failed = False


def _use_compiled(x: torch.Tensor, name: str) -> bool:
    """The compiled kernel ``name`` for ``x``? (see :mod:`mono_quant.quant.options`)"""
    mode = options.compile_mode()
    if _compile_failed or mode == "never" or x.device.type != "cpu":
        return False
    if mode == "always":
        return True
    if x.numel() < options.compile_min_numel():
        return False
    # auto: only when compiling pays, or is already paid for in this process
    return name in _compiled or options.current_job_work() >= options.COMPILE_MIN_WORK


def _get_compiled(name: str, fn: Callable) -> Callable:
    with _lock:
        if name not in _compiled:
            _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True)
        return _compiled[name]


def _run_compiled(name: str, fn: Callable, *args):
    """Run the compiled ``fn``; None when compilation is unavailable (then use eager)."""
    global _compile_failed
    try:
        from torch._inductor import config as inductor_config

        # One compile thread: worker processes may be daemonic and cannot fork a pool.
        with inductor_config.patch(compile_threads=1):
            return _get_compiled(name, fn)(*args)
    except Exception as e:  # any compiler/toolchain failure: fall back, once, loudly
        _compile_failed = True
        log.warning(
            "torch.compile is unavailable (%s: %s); using eager kernels", type(e).__name__, e
        )
        return None


# --- public row API ---------------------------------------------------------------------------


def _row_chunks(rows: torch.Tensor):
    n_rows, n_cols = rows.shape
    step = max(1, _CHUNK // max(n_cols, 1))
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        for c0 in range(0, max(n_cols, 1), _CHUNK):
            yield slice(r0, r1), slice(c0, min(n_cols, c0 + _CHUNK))


def minmax_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row min and max, shape ``[R, 1]`` each (NaN propagates)."""
    if rows.shape[1] == 0:
        raise ValueError("cannot take the range of empty rows")
    lo = rows.amin(dim=1, keepdim=True)
    hi = rows.amax(dim=1, keepdim=True)
    return lo, hi


def qparams_from_minmax(
    lo: torch.Tensor, hi: torch.Tensor, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero point as float32) from min/max of any matching shape."""
    return _qparams(lo.float(), hi.float(), symmetric)


def round_float(x: torch.Tensor, scale, zp, qmin: float, qmax: float,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Eager ``_round`` up to the int8 cast, with in-place steps: the integral float32 values
    ``clamp(round(x * (1 / scale)) + zp, qmin, qmax)``, written into ``out`` (a float32
    tensor of ``x``'s shape, e.g. a reused scratch buffer) when given."""
    t = torch.mul(x, 1.0 / scale, out=out) if out is not None else x * (1.0 / scale)
    return t.round_().add_(zp).clamp_(qmin, qmax)


def _round_into(out: torch.Tensor, x: torch.Tensor, scale, zp, qmin: float, qmax: float) -> None:
    """Eager ``_round`` with in-place steps: the same float32 operations, fewer temporaries."""
    # integral floats in [-128, 127]: the float -> int8 cast is exact
    out.copy_(round_float(x, scale, zp, qmin, qmax))


def compiled_for(rows: torch.Tensor, symmetric: bool) -> bool:
    """Would :func:`fused_minmax_quantize` take the compiled kernel for ``rows``?"""
    return rows.shape[0] > 1 and _use_compiled(rows, "sym" if symmetric else "asym")


def quantize_rows(
    rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """int8 rows from float32 rows and per-row ``[R, 1]`` scale / zero point (float)."""
    out = torch.empty(rows.shape, dtype=torch.int8, device=rows.device)
    for rs, cs in _row_chunks(rows):
        _round_into(out[rs, cs], rows[rs, cs], scale[rs], zp[rs], float(qmin), float(qmax))
    return out


def fused_minmax_quantize(rows: torch.Tensor, symmetric: bool):
    """Min-max qparams and int8 data of float32 rows in one call.

    Returns ``(q [R, C] int8, scale [R, 1] float32, zero_point [R, 1] float32)``.
    """
    name, fn = ("sym", _fused_sym) if symmetric else ("asym", _fused_asym)
    if rows.shape[0] > 1 and _use_compiled(rows, name):
        result = _run_compiled(name, fn, rows)
        if result is not None:
            q, lo, hi = result
            scale, zp = _qparams(lo, hi, symmetric)
            return q, scale, zp
    qmin = -127.0 if symmetric else -128.0
    if rows.shape[1] > _CHUNK:  # one huge row (per tensor): range first, then round in chunks
        lo, hi = minmax_rows(rows)
        scale, zp = _qparams(lo, hi, symmetric)
        return quantize_rows(rows, scale, zp, int(qmin), 127), scale, zp
    # Rows are independent: take each chunk's range and round it while it is still in cache.
    out = torch.empty(rows.shape, dtype=torch.int8, device=rows.device)
    scale = torch.empty((rows.shape[0], 1), dtype=torch.float32, device=rows.device)
    zp = torch.empty_like(scale)
    for rs, _ in _row_chunks(rows):
        lo, hi = minmax_rows(rows[rs])
        scale[rs], zp[rs] = _qparams(lo, hi, symmetric)
        _round_into(out[rs], rows[rs], scale[rs], zp[rs], qmin, 127.0)
    return out, scale, zp
