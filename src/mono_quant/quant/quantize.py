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
import fnmatch
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mono_quant.errors import BadConfigError, BadInputError, MonoQuantError
from mono_quant.io.info import QuantizationInfo, library_versions
from mono_quant.quant.accuracy import (
    check_data_needs,
    output_metrics,
    perplexity_metrics,
    search_target,
)
from mono_quant.quant.calibration import (
    OnProgress,
    batch_size,
    run_calibration,
)
from mono_quant.quant.gptq import collect_hessians, gptq_quantize
from mono_quant.quant.modules import SUPPORTED_LAYERS, quantized_like
from mono_quant.quant.observers import make_observer
from mono_quant.quant.primitives import (
    QuantizedTensor,
    dequantize,
    quantize_weight_int8,
    quantize_with_qparams,
)
from mono_quant.quant.qconfig import QuantConfig
from mono_quant.quant.smoothquant import smooth_model
from mono_quant.quant.specs import qrange
from mono_quant.validate.metrics import (
    ErrorAccumulator,
    check_int8_ranges,
    state_dict_bytes,
)

__all__ = ["quantize_model", "quantize_weight", "select_layers"]


def _matches(pattern: str, name: str, module: nn.Module) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return type(module).__name__ == pattern or fnmatch.fnmatchcase(name, pattern)


def select_layers(model: nn.Module, config: QuantConfig) -> list[str]:
    """Qualified names of the ``nn.Linear`` / ``nn.Conv2d`` layers ``config`` selects."""
    selected = []
    for name, module in model.named_modules():
        if not isinstance(module, SUPPORTED_LAYERS):
            continue
        if config.include and not any(_matches(p, name, module) for p in config.include):
            continue
        if any(_matches(p, name, module) for p in config.exclude):
            continue
        if module.weight.numel() < config.min_layer_size:
            continue
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


def quantize_model(
    model: nn.Module,
    config: QuantConfig | None = None,
    calibration_data: Iterable[Any] | None = None,
    *,
    eval_data: Iterable[Any] | None = None,
    eval_tokens: torch.Tensor | None = None,
    eval_context: int = 512,
    num_samples: int | None = None,
    max_eval_batches: int = 8,
    progress: bool = True,
    on_progress: OnProgress | None = None,
) -> tuple[nn.Module, QuantizationInfo]:
    """Quantize a copy of ``model``; return it with its :class:`QuantizationInfo`.

    The selected ``nn.Linear`` / ``nn.Conv2d`` layers of a deep copy are swapped for
    :class:`~mono_quant.quant.modules.QuantLinear` / ``QuantConv2d``; ``model`` itself is never
    modified. ``mode="static"`` calibrates the layers' input ranges on ``calibration_data``
    (required; so is it for ``smoothquant`` and ``weight_algorithm="gptq"``). Output SQNR and
    cosine against the float model are measured on ``eval_data`` (or the calibration data)
    over at most ``max_eval_batches`` batches. ``eval_tokens`` (1-D token ids) adds the
    perplexity of a causal LM, float and quantized, strided over ``eval_context`` tokens.
    ``config.target`` keeps the most sensitive layers in float until it is met
    (:mod:`mono_quant.quant.targets`).

    ``on_progress(stage, done, total)`` is called after each calibration batch
    (``"calibrating"``), each quantized layer (``"quantizing"``, total = selected layers) and
    each output-metric batch (``"evaluating"``); ``total`` is 0 when unknown. It should only
    store the numbers: it runs inside the loops.

    Raises:
        BadConfigError: nothing selected, an option that needs calibration or evaluation data
            without it, or an accuracy target that cannot be met (with the best achieved).
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
    check_data_needs(config, calibration_data, eval_data, eval_tokens)
    layers = select_layers(model, config)
    if not layers:
        n = sum(isinstance(m, SUPPORTED_LAYERS) for m in model.modules())
        raise BadConfigError(
            f"no layers selected: the model has {n} Linear/Conv2d layer(s) and none matched "
            f"include={list(config.include)} exclude={list(config.exclude)} "
            f"min_layer_size={config.min_layer_size}"
        )
    calibration_data = _reiterable(calibration_data, num_samples)
    qmodel = copy.deepcopy(model)
    extra: dict[str, Any] = {}
    samples, calibration, hessians = 0, None, {}
    if config.smoothquant is not None:
        report = smooth_model(qmodel, calibration_data, alpha=config.smoothquant,
                              layers=layers, num_samples=num_samples)
        extra["smoothquant"] = report.to_metrics(config.smoothquant)
    if config.mode == "static":
        calibration = run_calibration(
            qmodel, calibration_data, layers=layers, observer=config.activation_observer,
            scheme=config.activation_scheme, num_samples=num_samples, progress=progress,
            on_progress=on_progress,
        )
        samples = calibration.samples
    if config.weight_algorithm == "gptq":
        hessians = collect_hessians(qmodel, calibration_data, layers, num_samples)
    if calibration is None and calibration_data is not None and (hessians or extra):
        samples = _samples_of(calibration_data, num_samples)
    accs, float_layers, algorithms = _quantize_layers(
        qmodel, layers, config, calibration, hessians, progress, on_progress)
    if config.weight_algorithm == "gptq":
        extra["gptq"] = algorithms

    if eval_data is not None:
        eval_source, stage = _reiterable(eval_data, None), "evaluation"
    else:
        eval_source, stage = calibration_data, "calibration"
    out = {} if eval_source is None else output_metrics(
        model, qmodel, eval_source, max_eval_batches, stage, on_progress)
    if eval_tokens is not None:
        out.update(perplexity_metrics(model, qmodel, eval_tokens, eval_context))
    if config.target:
        out, extra["accuracy_target"] = search_target(
            model, qmodel, float_layers, config.target_dict, out, eval_source, max_eval_batches,
            eval_tokens, eval_context)
        excluded = set(extra["accuracy_target"]["excluded_layers"])
        layers = [n for n in layers if n not in excluded]
        accs = {n: a for n, a in accs.items() if n not in excluded}
    metrics = _weight_metrics(model, qmodel, accs)
    metrics.update(out)
    metrics.update(extra)
    info = QuantizationInfo(
        config=config,
        selected_layers=layers,
        calibration_samples=samples,
        library_versions=library_versions(),
        metrics=metrics,
    )
    return qmodel, info


def _samples_of(data: Iterable[Any], num_samples: int | None) -> int:
    total = 0
    for item in data:
        total += batch_size(item)
        if num_samples is not None and total >= num_samples:
            break
    return total


def _quantize_layers(
    qmodel: nn.Module, layers: list[str], config: QuantConfig, calibration: Any,
    hessians: dict[str, torch.Tensor], progress: bool, on_progress: OnProgress | None,
) -> tuple[dict[str, ErrorAccumulator], dict[str, nn.Module], dict[str, Any]]:
    """Swap each selected layer for its quantized form; per-layer weight errors, the float
    layers (for an accuracy target) and which weight algorithm each layer ended with."""
    qmin, qmax = qrange(config.scheme)
    accs: dict[str, ErrorAccumulator] = {}
    float_layers: dict[str, nn.Module] = {}
    rtn_kept: list[str] = []
    tried = 0
    with torch.no_grad():
        for done, name in enumerate(
            tqdm(layers, desc="quantizing", unit="layer", disable=not progress), start=1
        ):
            layer = qmodel.get_submodule(name)
            qw = quantize_weight(layer.weight, config, f"{name}.weight")
            if name in hessians:
                tried += 1
                result = gptq_quantize(
                    layer.weight, hessians.pop(name), qw, damping=config.gptq_damping,
                    block_size=config.gptq_block_size, act_order=config.gptq_act_order)
                qw = result.qweight
                if result.used == "rtn":
                    rtn_kept.append(name)
            problems = check_int8_ranges(name, qw.data, qw.scale, qw.zero_point, qmin, qmax)
            if problems:  # a bug of ours, never the user's input
                raise MonoQuantError("int8 range check failed: " + "; ".join(problems))
            accs[name] = ErrorAccumulator()
            accs[name].add(layer.weight, dequantize(qw))
            qlayer = quantized_like(layer, config)
            qlayer.set_weight(qw)
            if calibration is not None:
                qlayer.set_input_qparams(*calibration.observers[name].compute_qparams())
            if config.target:
                float_layers[name] = layer
            parent, _, child = name.rpartition(".")
            setattr(qmodel.get_submodule(parent), child, qlayer)
            if on_progress is not None:
                on_progress("quantizing", done, len(layers))
    return accs, float_layers, {"layers_gptq": tried - len(rtn_kept), "layers_rtn_better": rtn_kept}


def _weight_metrics(
    model: nn.Module, qmodel: nn.Module, accs: dict[str, ErrorAccumulator]
) -> dict[str, Any]:
    total = ErrorAccumulator()
    for acc in accs.values():
        total.merge(acc)
    per_layer = {name: acc.sqnr_db for name, acc in accs.items()}
    size_fp, size_q = state_dict_bytes(model), state_dict_bytes(qmodel)
    return {
        "weight_sqnr_db": total.sqnr_db,
        "weight_sqnr_db_min": min(per_layer.values()),
        "layer_weight_sqnr_db": per_layer,
        "layers_quantized": len(accs),
        "layers_total": sum(isinstance(m, SUPPORTED_LAYERS) for m in model.modules()),
        "size_bytes_fp": size_fp,
        "size_bytes_quant": size_q,
        "compression_ratio": size_fp / size_q if size_q else float("nan"),
        "range_check": "ok",
    }
