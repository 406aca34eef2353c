"""Observers: collect value ranges with ``update(x)``, turn them into qparams.

All observers work on the rows view of their granularity (one row per scale, see
:mod:`mono_quant.quant.specs`) and produce the qparams of
:func:`mono_quant.quant._kernels.qparams_from_minmax` — so a min-max observer and
:func:`~mono_quant.quantize_weight_int8` agree bit for bit.

How each one combines several ``update`` calls (calibration batches):

* :class:`MinMaxObserver` — the global min and max (``torch.ao``'s MinMaxObserver).
* :class:`MovingAverageMinMaxObserver` — an exponential moving average of each batch's
  min and max with ``averaging_constant`` (``torch.ao``'s semantics; the first batch sets it).
* :class:`PercentileObserver` — each batch's ``percentile`` (and ``100 - percentile`` for the
  asymmetric scheme) by exact order statistics, averaged over batches weighted by batch size.
  One update (a weight) gives the exact percentile.
* :class:`MSEObserver` — each batch's range is shrunk by the factor in a grid over
  ``[1 - max_shrink, 1]`` that minimises the squared quantization error of that batch; the
  chosen ranges are averaged over batches weighted by size (llm-compressor's MSE observer
  averages likewise). The grid includes 1.0 (plain min-max) and ties keep the wider range, so
  on a single update it is never worse than min-max in MSE.

Example:
    >>> import torch
    >>> from mono_quant import MinMaxObserver
    >>> obs = MinMaxObserver(scheme="asymmetric")
    >>> obs.update(torch.tensor([-1.0, 0.5, 3.0]))
    >>> scale, zp = obs.compute_qparams()
    >>> round(float(scale), 6), int(zp)
    (0.015686, -64)
"""

from __future__ import annotations

import math

import torch

from mono_quant.errors import BadConfigError, BadInputError
from mono_quant.quant import _kernels
from mono_quant.quant.specs import Granularity, as_granularity, check_scheme, qrange

__all__ = [
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "make_observer",
]


class Observer:
    """Base class: tracks per-row ``min_val`` / ``max_val`` over ``update`` calls."""

    name = "base"

    def __init__(
        self, scheme: str = "symmetric", granularity: Granularity | str = "per_tensor"
    ) -> None:
        self.scheme = check_scheme(scheme)
        self.granularity = as_granularity(granularity)
        self.min_val: torch.Tensor | None = None  # (R,)
        self.max_val: torch.Tensor | None = None  # (R,)
        self.shape: torch.Size | None = None  # shape of the last tensor seen
        self.count = 0  # elements seen per row, over all updates

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise BadInputError(
                f"{type(self).__name__}.update: expected a floating-point tensor, got "
                f"{getattr(x, 'dtype', type(x).__name__)}"
            )
        if x.numel() == 0:
            raise BadInputError(f"{type(self).__name__}.update: got an empty tensor")
        rows = self.granularity.rows(x.detach().float(), "observed tensor")
        if self.min_val is not None and rows.shape[0] != self.min_val.shape[0]:
            raise BadInputError(
                f"{type(self).__name__}.update: got {rows.shape[0]} channel(s)/group(s), "
                f"earlier updates had {self.min_val.shape[0]}"
            )
        self.shape = x.shape
        return rows

    def update(self, x: torch.Tensor) -> None:
        # no_grad as a block, not a decorator: mutation testing skips decorated functions
        with torch.no_grad():
            rows = self._rows(x)
            lo, hi = self._batch_range(rows)
            n = rows.shape[1]
            if self.min_val is None:
                self.min_val, self.max_val = lo, hi
            else:
                self.min_val, self.max_val = self._combine(lo, hi, n)
            self.count += n

    def _batch_range(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = _kernels.minmax_rows(rows)
        return lo.squeeze(1), hi.squeeze(1)

    def _combine(self, lo, hi, n):  # weighted mean of batch ranges (subclasses override)
        w = n / (self.count + n)
        return self.min_val + w * (lo - self.min_val), self.max_val + w * (hi - self.max_val)

    def compute_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale float32, zero_point int8)`` shaped ``granularity.param_shape(shape)``."""
        if self.min_val is None or self.shape is None:
            raise BadInputError(
                f"{type(self).__name__}: no data observed; call update() (run calibration) first"
            )
        scale, zp = _kernels.qparams_from_minmax(
            self.min_val, self.max_val, self.scheme == "symmetric"
        )
        if not bool(torch.isfinite(scale).all()):
            raise BadInputError(
                f"{type(self).__name__}: observed NaN or infinite values; qparams need finite data"
            )
        pshape = self.granularity.param_shape(self.shape)
        return scale.reshape(pshape), zp.reshape(pshape).to(torch.int8)


class MinMaxObserver(Observer):
    """Global min and max over every update (the seed's observer)."""

    name = "minmax"

    def _combine(self, lo, hi, n):
        return torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)


class MovingAverageMinMaxObserver(Observer):
    """EMA of per-batch min/max: ``m += c * (batch - m)``; the first batch sets ``m``."""

    name = "moving_average"

    def __init__(self, scheme="symmetric", granularity="per_tensor", averaging_constant=0.01):
        super().__init__(scheme, granularity)
        if not 0.0 < averaging_constant <= 1.0:
            raise BadConfigError(
                f"averaging_constant={averaging_constant!r}: expected a number in (0, 1]"
            )
        self.averaging_constant = averaging_constant

    def _combine(self, lo, hi, n):
        c = self.averaging_constant
        return self.min_val + c * (lo - self.min_val), self.max_val + c * (hi - self.max_val)


def _order_stat(rows: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per-row value at rank ``ceil(fraction * n)`` (1-based), numpy's 'inverted_cdf'."""
    n = rows.shape[1]
    k = min(n, max(1, math.ceil(fraction * n - 1e-9)))
    return rows.kthvalue(k, dim=1).values


class PercentileObserver(Observer):
    """Clip at the ``percentile``-th value (e.g. 99.99) instead of the extremes."""

    name = "percentile"

    def __init__(self, scheme="symmetric", granularity="per_tensor", percentile=99.99):
        super().__init__(scheme, granularity)
        if not 50.0 < percentile <= 100.0:
            raise BadConfigError(f"percentile={percentile!r}: expected a number in (50, 100]")
        self.percentile = percentile

    def _batch_range(self, rows):
        p = self.percentile / 100.0
        if self.scheme == "symmetric":
            hi = _order_stat(rows.abs(), p)
            return -hi, hi
        return _order_stat(rows, 1.0 - p), _order_stat(rows, p)


class MSEObserver(Observer):
    """Search, per row, the shrink factor of the min-max range with the least squared error."""

    name = "mse"

    def __init__(self, scheme="symmetric", granularity="per_tensor", grid=100, max_shrink=0.8):
        super().__init__(scheme, granularity)
        if not isinstance(grid, int) or grid < 1:
            raise BadConfigError(f"grid={grid!r}: expected a positive integer")
        if not 0.0 <= max_shrink < 1.0:
            raise BadConfigError(f"max_shrink={max_shrink!r}: expected a number in [0, 1)")
        self.grid = grid
        self.max_shrink = max_shrink

    def _batch_range(self, rows):
        lo, hi = _kernels.minmax_rows(rows)  # (R, 1)
        symmetric = self.scheme == "symmetric"
        qmin, qmax = qrange(self.scheme)
        best_err = torch.full_like(lo, math.inf)
        best_lo, best_hi = lo.clone(), hi.clone()
        for i in range(self.grid + 1):
            alpha = 1.0 - self.max_shrink * i / self.grid
            c_lo, c_hi = lo * alpha, hi * alpha
            scale, zp = _kernels.qparams_from_minmax(c_lo, c_hi, symmetric)
            err = torch.zeros_like(lo)
            for rs, cs in _kernels._row_chunks(rows):
                x = rows[rs, cs]
                q = torch.clamp(torch.round(x * (1.0 / scale[rs])) + zp[rs], qmin, qmax)
                err[rs] += ((q - zp[rs]) * scale[rs] - x).square().sum(dim=1, keepdim=True)
            better = err < best_err  # strict: ties keep the earlier (wider) range
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, c_lo, best_lo)
            best_hi = torch.where(better, c_hi, best_hi)
        return best_lo.squeeze(1), best_hi.squeeze(1)


_OBSERVERS: dict[str, type[Observer]] = {
    cls.name: cls
    for cls in (MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver, MSEObserver)
}


def make_observer(
    name: str, scheme: str = "symmetric", granularity: Granularity | str = "per_tensor", **kwargs
) -> Observer:
    """An observer by its config name: ``minmax``, ``moving_average``, ``percentile``, ``mse``."""
    try:
        cls = _OBSERVERS[name]
    except KeyError:
        raise BadConfigError(
            f"observer {name!r} is unknown; expected one of {', '.join(_OBSERVERS)}"
        ) from None
    return cls(scheme, granularity, **kwargs)
