"""``quantize_model``: the one public verb that turns a float model into an int8 one.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from mono_quant import QuantConfig, quantize_model
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    >>> qmodel, info = quantize_model(model, QuantConfig(), progress=False)
    >>> info.selected_layers, info.metrics["weight_sqnr_db"] > 35
    (['0', '2'], True)
    >>> type(model[0]).__name__, type(qmodel[0]).__name__   # the input model is untouched
    ('Linear', 'QuantLinear')
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mono_quant.errors import BadConfigError, BadInputError, MonoQuantError
from mono_quant.quant import options
from mono_quant.quant.calibration import (
    OnProgress,
    batch_size,
    call_model,
    planned_batches,
    run_batch,
    run_calibration,
    to_device,
)
from mono_quant.quant.info import QuantizationInfo, library_versions
from mono_quant.quant.metrics import (
    ErrorAccumulator,
    check_int8_ranges,
    first_tensor,
    state_dict_bytes,
    weight_error,
)
from mono_quant.quant.modules import SUPPORTED_LAYERS, quantized_like
from mono_quant.quant.observers import make_observer
from mono_quant.quant.primitives import (
    QuantizedTensor,
    quantize_weight_int8,
    quantize_with_qparams,
)
from mono_quant.quant.qconfig import QuantConfig
from mono_quant.quant.specs import qrange

__all__ = ["quantize_model", "quantize_weight", "select_layers"]


def select_layers(model: nn.Module, config: QuantConfig) -> list[str]:
    """Qualified names of the ``nn.Linear`` / ``nn.Conv2d`` layers ``config`` selects."""
    selected = []
    for name, module in model.named_modules():
        if isinstance(module, SUPPORTED_LAYERS) and config.selects(
            name, type(module).__name__, module.weight.numel()
        ):
            selected.append(name)
    return selected


def quantize_weight(weight: torch.Tensor, config: QuantConfig, name: str) -> QuantizedTensor:
    """Quantize one weight with the config's scheme, granularity and weight observer."""
    gran = config.granularity_spec
    if config.weight_observer == "minmax":  # fused fast path, same numbers as the observer
        return quantize_weight_int8(weight, config.scheme, gran, name=name)
    observer = make_observer(config.weight_observer, config.scheme, gran)
    observer.update(weight)
    scale, zp = observer.compute_qparams()
    return quantize_with_qparams(weight, scale, zp, config.scheme, gran, name=name)


def _reiterable(data: Iterable[Any] | None, num_samples: int | None) -> Iterable[Any] | None:
    """Data that can be iterated twice (calibration, then evaluation)."""
    if data is None or iter(data) is not data:
        return data
    items, samples = [], 0  # a one-shot iterator: keep what calibration will use
    for item in data:
        items.append(item)
        samples += batch_size(item)
        if num_samples is not None and samples >= num_samples:
            break
    return items


def _output_metrics(
    float_model: nn.Module, qmodel: nn.Module, data: Iterable[Any], max_batches: int,
    stage: str, on_progress: OnProgress | None,
) -> dict[str, Any]:
    acc = ErrorAccumulator()
    was_training = float_model.training
    device = next(iter(float_model.parameters()), torch.zeros(0)).device
    batches = 0
    total = min(planned_batches(data), max_batches)
    try:
        float_model.eval()
        qmodel.eval()
        with torch.inference_mode():
            for item in itertools.islice(data, max_batches):
                item = to_device(item, device)
                # the float model rejecting a batch is the data's fault; the quantized copy
                # failing where the float model ran is ours, so it is not relabelled
                ref = first_tensor(run_batch(float_model, item, stage, batches))
                out = first_tensor(call_model(qmodel, item))
                if ref is None or out is None:
                    raise BadInputError(
                        "cannot compare model outputs: the model returned no tensor"
                    )
                acc.add(ref.float(), out.float())
                batches += 1
                if on_progress is not None:
                    on_progress("evaluating", batches, total)
    finally:
        float_model.train(was_training)
    if batches == 0:
        return {}
    return {"output_sqnr_db": acc.sqnr_db, "output_cosine": acc.cosine, "eval_batches": batches}


def _structural_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules that shares its parameters and buffers (no tensor is
    copied): the selected layers are then replaced in the copy, so ``model`` is never
    modified and only the new int8 tensors take memory."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(model.parameters(),
                                                              model.buffers())}
    return copy.deepcopy(model, memo)


def _swap_layers(qmodel: nn.Module, layers: list[str], config: QuantConfig, calibration,
                 progress: bool, on_progress: OnProgress | None):
    """Replace each selected layer of ``qmodel`` by its quantized twin; the weight error sums
    (overall and per layer) come back."""
    qmin, qmax = qrange(config.scheme)
    total = ErrorAccumulator()
    per_layer: dict[str, float] = {}
    work = sum(qmodel.get_submodule(n).weight.numel() * 4 for n in layers)
    with torch.no_grad(), options.job_work(work):
        for done, name in enumerate(
            # disable=None: a bar only on a terminal
            tqdm(layers, desc="quantizing", unit="layer", disable=None if progress else True),
            start=1,
        ):
            layer = qmodel.get_submodule(name)
            qw = quantize_weight(layer.weight, config, f"{name}.weight")
            problems = check_int8_ranges(name, qw.data, qw.scale, qw.zero_point, qmin, qmax)
            if problems:  # a bug of ours, never the user's input
                raise MonoQuantError("int8 range check failed: " + "; ".join(problems))
            acc = weight_error(layer.weight, qw)
            total.merge(acc)
            per_layer[name] = acc.sqnr_db
            qlayer = quantized_like(layer, config)
            qlayer.set_weight(qw)
            if calibration is not None:
                qlayer.set_input_qparams(*calibration.observers[name].compute_qparams())
            parent, _, child = name.rpartition(".")
            setattr(qmodel.get_submodule(parent), child, qlayer)
            if on_progress is not None:
                on_progress("quantizing", done, len(layers))
    return total, per_layer


def quantize_model(
    model: nn.Module,
    config: QuantConfig | None = None,
    calibration_data: Iterable[Any] | None = None,
    *,
    eval_data: Iterable[Any] | None = None,
    num_samples: int | None = None,
    max_eval_batches: int = 8,
    progress: bool = True,
    on_progress: OnProgress | None = None,
) -> tuple[nn.Module, QuantizationInfo]:
    """Quantize a copy of ``model``; return it with its :class:`QuantizationInfo`.

    The selected ``nn.Linear`` / ``nn.Conv2d`` layers of a deep copy are swapped for
    :class:`~mono_quant.quant.modules.QuantLinear` / ``QuantConv2d``; ``model`` itself is never
    modified. ``mode="static"`` calibrates the layers' input ranges on ``calibration_data``
    (required). Output SQNR and cosine against the float model are measured on ``eval_data``
    (or the calibration data) over at most ``max_eval_batches`` batches.

    ``on_progress(stage, done, total)`` is called after each calibration batch
    (``"calibrating"``), each quantized layer (``"quantizing"``, total = selected layers) and
    each output-metric batch (``"evaluating"``); ``total`` is 0 when unknown. It should only
    store the numbers: it runs inside the loops.

    Raises:
        BadConfigError: nothing selected, or static mode without calibration data.
        BadInputError: a weight that cannot be quantized (non-finite, wrong group size), or a
            calibration/evaluation batch that does not run through the model (the message
            names the batch index and its shapes).
        torch.OutOfMemoryError: unchanged, so that a caller may retry with smaller batches.
    """
    config = config or QuantConfig()
    if not isinstance(model, nn.Module):
        raise BadInputError(
            f"quantize_model: expected a torch.nn.Module, got {type(model).__name__}"
        )
    if config.mode == "static" and calibration_data is None:
        raise BadConfigError(
            "mode='static' needs calibration_data to choose activation scales; pass "
            "calibration batches or use mode='weight_only'"
        )
    layers = select_layers(model, config)
    if not layers:
        n = sum(isinstance(m, SUPPORTED_LAYERS) for m in model.modules())
        raise BadConfigError(
            f"no layers selected: the model has {n} Linear/Conv2d layer(s) and none matched "
            f"include={list(config.include)} exclude={list(config.exclude)} "
            f"min_layer_size={config.min_layer_size}"
        )
    calibration_data = _reiterable(calibration_data, num_samples)
    qmodel = _structural_copy(model)
    samples = 0
    calibration = None
    if config.mode == "static":
        calibration = run_calibration(
            qmodel, calibration_data, layers=layers, observer=config.activation_observer,
            scheme=config.activation_scheme, num_samples=num_samples, progress=progress,
            on_progress=on_progress,
        )
        samples = calibration.samples

    total, per_layer = _swap_layers(qmodel, layers, config, calibration, progress, on_progress)
    size_fp, size_q = state_dict_bytes(model), state_dict_bytes(qmodel)
    metrics: dict[str, Any] = {
        "weight_sqnr_db": total.sqnr_db,
        "weight_sqnr_db_min": min(per_layer.values()),
        "layer_weight_sqnr_db": per_layer,
        "layers_quantized": len(layers),
        "layers_total": sum(isinstance(m, SUPPORTED_LAYERS) for m in model.modules()),
        "size_bytes_fp": size_fp,
        "size_bytes_quant": size_q,
        "compression_ratio": size_fp / size_q if size_q else float("nan"),
        "range_check": "ok",
    }
    if eval_data is not None:
        eval_source, stage = _reiterable(eval_data, None), "evaluation"
    else:
        eval_source, stage = calibration_data, "calibration"
    if eval_source is not None:
        metrics.update(_output_metrics(model, qmodel, eval_source, max_eval_batches, stage,
                                       on_progress))
    info = QuantizationInfo(
        config=config,
        selected_layers=layers,
        calibration_samples=samples,
        library_versions=library_versions(),
        metrics=metrics,
    )
    return qmodel, info
