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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mono_quant.errors import BadInputError, MonoQuantError
from mono_quant.quant.observers import Observer, make_observer
from mono_quant.quant.specs import PerTensor

__all__ = [
    "CalibrationResult",
    "OnProgress",
    "batch_size",
    "call_model",
    "describe_batch",
    "planned_batches",
    "run_batch",
    "run_calibration",
    "to_device",
]

#: ``on_progress(stage, done, total)``: ``stage`` is "calibrating", "quantizing" or
#: "evaluating"; ``total`` is 0 when unknown. Called once per batch or layer, so it should
#: only store the numbers (a worker's heartbeat reads them later).
OnProgress = Callable[[str, int, int], None]

#: What a model's forward raises on a batch it cannot take (shapes, dtypes, keys, token ids
#: out of range). An out-of-memory error is a RuntimeError too, but not the data's fault:
#: it propagates unchanged so that a caller can retry with smaller batches.
_FORWARD_ERRORS = (RuntimeError, TypeError, ValueError, IndexError, KeyError)
_OUT_OF_MEMORY = tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
                        torch.cuda.OutOfMemoryError})


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


def describe_batch(item: Any) -> str:
    """Shapes of a batch, for error messages: ``tensor [16, 100]``,
    ``tuple (tensor [2, 8], tensor [2])``, ``dict {input_ids: tensor [4, 32]}``."""
    if isinstance(item, torch.Tensor):
        return f"tensor {list(item.shape)}"
    if isinstance(item, Mapping):
        parts = [f"{k}: {describe_batch(v)}" for k, v in list(item.items())[:8]]
        more = ", ..." if len(item) > 8 else ""
        return "dict {" + ", ".join(parts) + more + "}"
    if isinstance(item, (list, tuple)):
        parts = [describe_batch(v) for v in item[:8]]
        more = ", ..." if len(item) > 8 else ""
        return f"{type(item).__name__} (" + ", ".join(parts) + more + ")"
    return type(item).__name__


def run_batch(model: nn.Module, item: Any, stage: str, index: int) -> Any:
    """``call_model`` on a user's batch; a forward that fails on it is a BadInputError.

    The error names the batch (``"calibration batch 3 (tensor [16, 100])"``) and the model's
    own message. Our errors and out-of-memory errors pass unchanged.
    """
    try:
        return call_model(model, item)
    except (MonoQuantError, *_OUT_OF_MEMORY):
        raise
    except _FORWARD_ERRORS as e:
        raise BadInputError(
            f"{stage} batch {index} ({describe_batch(item)}) does not run through the model: "
            f"{type(e).__name__}: {e}"
        ) from e


def planned_batches(data: Iterable[Any], num_samples: int | None = None) -> int:
    """Batches a loop over ``data`` will take (stopping at ``num_samples``); 0 if unknown.

    Counted without running anything: ``len(data)``, or for a sequence cut by ``num_samples``
    the leading sizes of its items.
    """
    if not hasattr(data, "__len__"):
        return 0
    n = len(data)  # type: ignore[arg-type]
    if num_samples is None or not isinstance(data, Sequence):
        return n
    samples = 0
    for i, item in enumerate(data):
        samples += batch_size(item)
        if samples >= num_samples:
            return i + 1
    return n


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


def _feed(model: nn.Module, data: Iterable[Any], result: CalibrationResult,
          num_samples: int | None, progress: bool, on_progress: OnProgress | None) -> None:
    """Run the batches through ``model`` (its hooks observe), counting into ``result``."""
    device = _device_of(model)
    total = planned_batches(data, num_samples)
    with torch.inference_mode():
        # Counted by hand: a bar that wraps the iterable misses the batch the loop breaks
        # on (it counts an item when the next one is fetched), so a run cut by num_samples
        # stopped at 3/4. None: a bar only on a terminal.
        bar = tqdm(total=total or None, desc="calibrating", unit="batch",
                   disable=None if progress else True)
        for item in data:
            run_batch(model, to_device(item, device), "calibration", result.batches)
            result.batches += 1
            result.samples += batch_size(item)
            bar.update(1)
            if on_progress is not None:
                on_progress("calibrating", result.batches, total)
            if num_samples is not None and result.samples >= num_samples:
                break
        bar.close()


def run_calibration(
    model: nn.Module,
    data: Iterable[Any],
    *,
    layers: Sequence[str],
    observer: str = "minmax",
    scheme: str = "asymmetric",
    num_samples: int | None = None,
    progress: bool = True,
    on_progress: OnProgress | None = None,
    **observer_kwargs: Any,
) -> CalibrationResult:
    """Observe the per-tensor range of the input of each layer in ``layers``.

    Items of ``data`` may be a tensor (``model(x)``), a tuple (``model(*x)``) or a dict
    (``model(**x)``, e.g. a tokenized Hugging Face batch); they are moved to the model's device.
    Stops after ``num_samples`` samples (whole batches) when given. The model runs in eval mode
    under ``torch.inference_mode`` and its training flag is restored afterwards.
    ``on_progress("calibrating", batches_done, total)`` is called after each batch (``total``
    0 when ``data`` has no length).

    Raises:
        BadInputError: unknown layers, empty data, layers the data never reaches, or a batch
            the model's forward rejects (the error names the batch index and its shapes).
        torch.OutOfMemoryError: unchanged, so that a caller may retry with smaller batches.
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
    try:
        model.eval()
        _feed(model, data, result, num_samples, progress, on_progress)
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
