"""Calibration: run data through a model and observe the inputs of selected layers.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from mono_quant import run_calibration
    >>> model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> data = [torch.randn(3, 8) for _ in range(4)]
    >>> result = run_calibration(model, data, layers=["0", "2"], progress=False)
    >>> result.samples, sorted(result.observers)
    (12, ['0', '2'])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mono_quant.errors import BadInputError
from mono_quant.quant.observers import Observer, make_observer
from mono_quant.quant.specs import PerTensor

__all__ = ["CalibrationResult", "batch_size", "call_model", "run_calibration", "to_device"]


@dataclass
class CalibrationResult:
    """Observers of each layer's input, keyed by qualified layer name."""

    observers: dict[str, Observer] = field(default_factory=dict)
    samples: int = 0
    batches: int = 0


def to_device(item: Any, device: torch.device) -> Any:
    """Move the tensors of a batch (tensor, tuple/list or mapping) to ``device``."""
    if isinstance(item, torch.Tensor):
        return item.to(device)
    if isinstance(item, Mapping):
        return {k: to_device(v, device) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return type(item)(to_device(v, device) for v in item)
    return item


def call_model(model: nn.Module, item: Any) -> Any:
    """``model(x)`` for a tensor, ``model(*x)`` for a tuple/list, ``model(**x)`` for a mapping."""
    if isinstance(item, torch.Tensor):
        return model(item)
    if isinstance(item, Mapping):
        return model(**item)
    if isinstance(item, (list, tuple)):
        return model(*item)
    raise BadInputError(
        f"calibration item of type {type(item).__name__}: expected a tensor, a tuple of model "
        "arguments or a dict of keyword arguments"
    )


def batch_size(item: Any) -> int:
    """Samples in a batch: the leading dimension of its first tensor (1 for a 0-d/1-d tensor)."""
    if isinstance(item, torch.Tensor):
        return int(item.shape[0]) if item.ndim >= 2 else 1
    values: Sequence[Any] = list(item.values()) if isinstance(item, Mapping) else list(item)
    for v in values:
        if isinstance(v, torch.Tensor):
            return batch_size(v)
    return 1


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def run_calibration(
    model: nn.Module,
    data: Iterable[Any],
    *,
    layers: Sequence[str],
    observer: str = "minmax",
    scheme: str = "asymmetric",
    num_samples: int | None = None,
    progress: bool = True,
    **observer_kwargs: Any,
) -> CalibrationResult:
    """Observe the per-tensor range of the input of each layer in ``layers``.

    Items of ``data`` may be a tensor (``model(x)``), a tuple (``model(*x)``) or a dict
    (``model(**x)``, e.g. a tokenized Hugging Face batch); they are moved to the model's device.
    Stops after ``num_samples`` samples (whole batches) when given. The model runs in eval mode
    under ``torch.inference_mode`` and its training flag is restored afterwards.
    """
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise BadInputError(f"run_calibration: no layer named {', '.join(map(repr, missing))}")
    result = CalibrationResult(
        {name: make_observer(observer, scheme, PerTensor(), **observer_kwargs) for name in layers}
    )

    def hook(name: str):
        def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                result.observers[name].update(args[0])

        return record

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in layers]
    was_training = model.training
    device = _device_of(model)
    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    try:
        model.eval()
        with torch.inference_mode():
            bar = tqdm(data, total=total, desc="calibrating", unit="batch", disable=not progress)
            for item in bar:
                call_model(model, to_device(item, device))
                result.batches += 1
                result.samples += batch_size(item)
                if num_samples is not None and result.samples >= num_samples:
                    break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if result.batches == 0:
        raise BadInputError("calibration data is empty: expected at least one batch")
    unseen = [name for name, obs in result.observers.items() if obs.min_val is None]
    if unseen:
        raise BadInputError(
            f"calibration never reached layer(s) {', '.join(unseen)}: the data does not run "
            "through them (check the calibration inputs or exclude these layers)"
        )
    return result
