"""Accuracy targets: keep the fewest, most sensitive layers in float so a metric is met.

``QuantConfig(target={"output_cosine": 0.999})`` (also ``output_sqnr_db`` and
``perplexity_increase``) works in one pass plus a short search, as Intel Neural Compressor's
and ModelOpt's auto-tuning do, instead of trying layers one by one over the whole model:

1. **Sensitivity, one pass.** Every quantized layer's output is compared, inside the same
   forward pass, with the output of its float original on the same input; the per-layer
   output SQNR ranks the layers (lowest first: the most sensitive).
2. **Search.** Keeping the ``k`` most sensitive layers in float is assumed to help more as
   ``k`` grows; a binary search over ``k`` finds the smallest that meets the target with
   ``log2(layers)`` evaluations. At least one layer stays quantized: if even that misses the
   target, the job is a :class:`~mono_quant.errors.BadConfigError` that names the target and
   the best value achieved.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mono_quant.errors import BadConfigError
from mono_quant.quant._options import TARGET_METRICS
from mono_quant.quant.calibration import call_model, to_device
from mono_quant.quant.metrics import ErrorAccumulator

__all__ = ["TargetResult", "layer_sensitivity", "meet_target"]

#: measure(qmodel) -> {"output_cosine": ..., "output_sqnr_db": ..., "perplexity_increase": ...}
Measure = Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class TargetResult:
    """Layers put back in float (most sensitive first), the metrics achieved, evaluations."""

    excluded: list[str]
    achieved: dict[str, float]
    sensitivity: dict[str, float]
    evaluations: int


def _float_output(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(x)


def layer_sensitivity(
    qmodel: nn.Module, float_layers: dict[str, nn.Module], data: Iterable[Any], max_batches: int
) -> dict[str, float]:
    """Output SQNR (dB) of each quantized layer against its float original, one pass."""
    accs = {name: ErrorAccumulator() for name in float_layers}

    def hook(name: str):
        def compare(_m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            ref = _float_output(float_layers[name], args[0])
            accs[name].add(ref.float(), out.float())
        return compare

    handles = [qmodel.get_submodule(n).register_forward_hook(hook(n)) for n in float_layers]
    device = next(iter(qmodel.parameters()), torch.zeros(0)).device
    try:
        with torch.inference_mode():
            for item in itertools.islice(data, max_batches):
                call_model(qmodel, to_device(item, device))
    finally:
        for h in handles:
            h.remove()
    return {name: acc.sqnr_db for name, acc in accs.items()}


def _met(achieved: dict[str, float], target: dict[str, float]) -> bool:
    return all(
        achieved[m] >= v if TARGET_METRICS[m] else achieved[m] <= v for m, v in target.items()
    )


class _Swapper:
    """Puts the k most sensitive layers back in float (and the rest quantized)."""

    def __init__(self, qmodel: nn.Module, float_layers: dict[str, nn.Module],
                 order: Sequence[str]) -> None:
        self.model, self.order = qmodel, list(order)
        self.floats = float_layers
        self.quants = {n: qmodel.get_submodule(n) for n in order}

    def set(self, k: int) -> None:
        for i, name in enumerate(self.order):
            parent, _, child = name.rpartition(".")
            module = self.floats[name] if i < k else self.quants[name]
            setattr(self.model.get_submodule(parent), child, module)


def meet_target(
    qmodel: nn.Module, float_layers: dict[str, nn.Module], target: dict[str, float],
    measure: Measure, first: dict[str, float], data: Iterable[Any], max_batches: int,
) -> TargetResult:
    """Exclude the fewest sensitive layers so ``measure(qmodel)`` meets ``target``.

    ``first`` is the measurement of the fully quantized model. ``qmodel`` is left with the
    chosen layers in float.
    """
    if _met(first, target):
        return TargetResult([], first, {}, 0)
    sensitivity = layer_sensitivity(qmodel, float_layers, data, max_batches)
    order = sorted(sensitivity, key=lambda n: (sensitivity[n], n))
    swap = _Swapper(qmodel, float_layers, order)
    results: dict[int, dict[str, float]] = {0: first}

    def at(k: int) -> dict[str, float]:
        if k not in results:
            swap.set(k)
            results[k] = measure(qmodel)
        return results[k]

    hi = len(order) - 1  # at least one layer stays quantized
    if hi < 1 or not _met(at(hi), target):
        best = at(hi) if hi >= 1 else first
        swap.set(hi if hi >= 1 else 0)
        wanted = ", ".join(f"{m} {'>=' if TARGET_METRICS[m] else '<='} {v:g}"
                           for m, v in target.items())
        got = ", ".join(f"{m}={best[m]:.6g}" for m in target)
        raise BadConfigError(
            f"target: {wanted} cannot be met: the best achieved, keeping {max(hi, 0)} of "
            f"{len(order)} layers in float, is {got}; relax the target, or quantize fewer "
            "layers (exclude) or use another mode"
        )
    lo = 0  # not met
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _met(at(mid), target):
            hi = mid
        else:
            lo = mid
    swap.set(hi)
    return TargetResult(order[:hi], results[hi], sensitivity, len(results) - 1)
