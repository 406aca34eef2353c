"""Which SmoothQuant strength each mapping gets, measured on the calibration data.

One migration strength for the whole model is a compromise. Where a layer's inputs carry
outliers, smoothing moves them into the weights and W8A8 gains; where they carry none (a
model at initialisation, or most of o_proj's inputs), smoothing only widens the weights'
range and the layer loses a little (measured on the plain tiny Llama: dynamic + SmoothQuant
0.8 fell 3·10⁻⁵ output cosine below dynamic alone). So each (smooth, balance) pair tries
the candidates — off and every strength of :data:`CANDIDATES` up to the configured one —
and keeps the one whose balance layers, quantized as the config says, reproduce their float
output best on the calibration inputs (the squared error summed over the balance layers,
as AWQ's per-mapping grid search measures it):

* activations: ``static`` with one per-tensor range, the exact min-max of ``X / s`` (the
  per-channel minima and maxima divided by ``s``: a min-max observer's range after
  smoothing; other observers are approximated by it), in the config's activation scheme;
  ``dynamic`` per token, as :func:`~mono_quant.quant.dynamic.quantize_per_token`;
* weights: ``W * s`` rounded to nearest with the config's scheme and granularity.

Ties keep the earlier candidate, and "off" comes first: smoothing must earn its place.

Example:
    >>> candidates(0.8)
    (0.0, 0.3, 0.5, 0.65, 0.8)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from mono_quant.quant._kernels import qparams_from_minmax
from mono_quant.quant.calibration import batch_size, run_batch, to_device
from mono_quant.quant.dynamic import fake_quantize_per_token
from mono_quant.quant.primitives import dequantize, fake_quantize, quantize_weight_int8
from mono_quant.quant.qconfig import QuantConfig

__all__ = ["CANDIDATES", "MARGIN", "candidates", "choose_strengths"]

#: Strengths tried below the configured one (which is always tried, with "off").
CANDIDATES = (0.3, 0.5, 0.65)
#: Smoothing is kept only when it cuts the pair's measured error below this fraction of the
#: unsmoothed error: smaller gains are within the noise of a few held-out batches (on the
#: plain tiny Llama, pairs measured 1-3 % better smoothed made the whole model worse).
MARGIN = 0.95

Pair = tuple[str, tuple[str, ...]]
#: ``scales(pair, alpha)``: the per-input-column scales of a pair at a strength.
Scales = Callable[[Pair, float], torch.Tensor]


def candidates(alpha: float) -> tuple[float, ...]:
    """Off (0.0), the strengths of :data:`CANDIDATES` below ``alpha``, then ``alpha``."""
    return (0.0, *(a for a in CANDIDATES if a < alpha), alpha)


def _weight(module: nn.Module) -> torch.Tensor:
    w = module.weight.detach()
    return w.t() if type(module).__name__ == "Conv1D" else w  # [out, in]


class _Errors:
    """Squared output error of each pair's balance layers at each candidate strength."""

    def __init__(self, model: nn.Module, pairs: Sequence[Pair], scales: Scales,
                 ranges: dict[str, tuple[torch.Tensor, torch.Tensor]], config: QuantConfig,
                 alpha: float) -> None:
        self.config, self.ranges = config, ranges
        self.alphas = candidates(alpha)
        self.errors = {p: torch.zeros(len(self.alphas), dtype=torch.float64) for p in pairs}
        self.cols = {p: [scales(p, a).float() for a in self.alphas] for p in pairs}
        self.weights = {p: [_weight(model.get_submodule(b)) for b in p[1]] for p in pairs}
        modules = dict(model.named_modules())
        self.handles = [modules[p[1][0]].register_forward_pre_hook(self._hook(p)) for p in pairs]

    def _act(self, x: torch.Tensor, s: torch.Tensor, name: str) -> torch.Tensor:
        if self.config.mode == "dynamic":
            return fake_quantize_per_token(x)
        lo, hi = self.ranges[name]
        scale, zp = qparams_from_minmax((lo / s).min().reshape(1), (hi / s).max().reshape(1),
                                        self.config.activation_scheme == "symmetric")
        return fake_quantize(x, scale, zp, self.config.activation_scheme)

    def _hook(self, pair: Pair):
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (T, in)
            refs = [x @ w.float().t() for w in self.weights[pair]]
            for k, s in enumerate(self.cols[pair]):
                s = s.to(x.device)
                xq = self._act(x / s, s, pair[1][0])
                for w, ref in zip(self.weights[pair], refs, strict=True):
                    qw = quantize_weight_int8(w.float() * s, self.config.scheme,
                                              self.config.granularity_spec)
                    self.errors[pair][k] += float((xq @ dequantize(qw).t() - ref).square().sum())
        return hook

    def best(self) -> dict[Pair, float]:
        out = {}
        for pair, err in self.errors.items():
            k = int(torch.argmin(err))
            out[pair] = self.alphas[k] if err[k] < MARGIN * err[0] else 0.0
        return out


def choose_strengths(
    model: nn.Module, data: Iterable[Any], pairs: Sequence[Pair], scales: Scales,
    ranges: dict[str, tuple[torch.Tensor, torch.Tensor]], config: QuantConfig,
    num_samples: int | None = None, held_out: bool = False,
) -> dict[Pair, float]:
    """The strength (0.0: off) each pair measures best with, from one pass over ``data``.

    ``ranges`` holds each balance layer's per-channel input minima and maxima (float), and
    ``scales`` the pairs' scales, both fitted on the statistics pass; ``held_out``: they
    were fitted on the even-numbered batches only, and the error is measured on the odd
    ones. That matters for static activations: smoothing evens out the channels, so more
    of them sit at the calibrated range's edge, and tokens the calibration did not see clip
    more often (on the plain tiny Llama, smoothing v_proj -> o_proj lowered the error on
    the calibration batches and raised it on held-out ones). ``model`` is still unsmoothed.
    """
    if not pairs:
        return {}
    errors = _Errors(model, pairs, scales, ranges, config, float(config.smoothquant or 0.0))
    device = next(iter(model.parameters()), torch.zeros(0)).device
    samples = 0
    try:
        with torch.inference_mode():
            for i, item in enumerate(data):
                if not held_out or i % 2 == 1:  # a fitting batch measures nothing: not run
                    run_batch(model, to_device(item, device), "calibration", i)
                samples += batch_size(item)
                if num_samples is not None and samples >= num_samples:
                    break
    finally:
        for h in errors.handles:
            h.remove()
    return errors.best()
