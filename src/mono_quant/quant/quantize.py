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
from mono_quant.quant import _measured, options
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
from mono_quant.quant.info import QuantizationInfo, library_versions
from mono_quant.quant.metrics import (
    ErrorAccumulator,
    check_int8_ranges,
    state_dict_bytes,
    weight_error,
)
from mono_quant.quant.modules import float_weight, is_quantizable, quantized_like
from mono_quant.quant.observers import make_observer
from mono_quant.quant.primitives import (
    QuantizedTensor,
    quantize_weight_int8,
    quantize_with_qparams,
)
from mono_quant.quant.qconfig import QuantConfig
from mono_quant.quant.smoothquant import smooth_model
from mono_quant.quant.specs import qrange
from mono_quant.quant.ties import named_explicitly, shared_weights, tied_layers

__all__ = ["LOW_COMPRESSION", "LOW_OUTPUT_COSINE", "layer_types", "quantize_model",
           "quantize_weight", "select_layers"]

#: A compression ratio below this is a warning: the artifact barely saves memory (a model
#: whose weights are mostly embeddings or float layers, or a misconfigured selection).
LOW_COMPRESSION = 1.5
#: An output cosine below this against the float model is a warning (int8 weights alone
#: give 0.999+ on the models of the architecture matrix).
LOW_OUTPUT_COSINE = 0.99


def select_layers(model: nn.Module, config: QuantConfig) -> list[str]:
    """Qualified names of the quantizable layers (``nn.Linear``, ``nn.Conv2d``,
    transformers ``Conv1D``: the :mod:`~mono_quant.quant.modules` registry) ``config`` selects.

    A layer whose weight is tied to another (``lm_head`` and the embedding) stays in float
    unless an ``include`` pattern names it (:func:`~mono_quant.quant.ties.named_explicitly`):
    quantizing it unties it, which must be asked for.
    """
    tied = tied_layers(model)
    selected = []
    for name, module in model.named_modules():
        if is_quantizable(module) and config.selects(
            name, type(module).__name__, module.weight.numel()
        ) and (name not in tied or named_explicitly(config.include, name)):
            selected.append(name)
    return selected


def layer_types(model: nn.Module) -> dict[str, int]:
    """Count of the leaf layer types that hold a weight: what a user can select from."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if next(module.children(), None) is None and isinstance(
            getattr(module, "weight", None), torch.Tensor
        ):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return dict(sorted(counts.items()))


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


def _structural_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules that shares its parameters and buffers (no tensor is
    copied): the selected layers are then replaced in the copy, so ``model`` is never
    modified and only the new int8 tensors take memory."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(model.parameters(),
                                                              model.buffers())}
    return copy.deepcopy(model, memo)


def _tie_report(model: nn.Module, qmodel: nn.Module, layers: list[str]) -> dict[str, Any]:
    """Ties kept (``tied_weights``) and layers untied on purpose (``untied`` + a warning);
    an untied output embedding also clears ``tie_word_embeddings`` in ``qmodel``'s config,
    so that a runtime reading the config does not tie the float table back over it."""
    out: dict[str, Any] = {}
    kept = shared_weights(qmodel)
    if kept:
        out["tied_weights"] = kept
    untied = sorted(set(tied_layers(model)) & set(layers))
    if not untied:
        return out
    out["untied"] = untied
    config = getattr(qmodel, "config", None)
    note = f"untied {', '.join(untied)}: an include pattern named the tied layer(s)"
    if getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False
        note += "; config.tie_word_embeddings set to false"
    out["warnings"] = [note + " (the float embedding is stored as well)"]
    return out


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
    layers = _selected(model, config)
    calibration_data = _reiterable(calibration_data, num_samples)
    # Share the float tensors (no copy) unless SmoothQuant rescales weights in place.
    qmodel = copy.deepcopy(model) if config.smoothquant is not None else _structural_copy(model)
    calibration, hessians, samples, extra = _observe(
        qmodel, config, layers, calibration_data, num_samples, progress, on_progress)
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
    return qmodel, _info(model, qmodel, config, layers, samples, accs, {**out, **extra})


def _info(model: nn.Module, qmodel: nn.Module, config: QuantConfig, layers: list[str],
          samples: int, accs: dict[str, ErrorAccumulator],
          measured: dict[str, Any]) -> QuantizationInfo:
    """The QuantizationInfo of a quantized model: weight errors, sizes, what was measured,
    ties and warnings."""
    metrics = _weight_metrics(model, qmodel, accs)
    metrics.update(measured)
    metrics.update(_tie_report(model, qmodel, layers))
    _warn_low(metrics, len(layers))
    return QuantizationInfo(config=config, selected_layers=layers, calibration_samples=samples,
                            library_versions=library_versions(), metrics=metrics)


def _selected(model: nn.Module, config: QuantConfig) -> list[str]:
    """select_layers, or a BadConfigError listing the layer types the model has."""
    layers = select_layers(model, config)
    if not layers:
        n = sum(is_quantizable(m) for m in model.modules())
        found = ", ".join(f"{k} x{v}" for k, v in layer_types(model).items()) or "none"
        raise BadConfigError(
            f"no layers selected: the model has {n} quantizable (Linear/Conv2d/Conv1D) "
            f"layer(s) and none matched include={list(config.include)} "
            f"exclude={list(config.exclude)} min_layer_size={config.min_layer_size} (tied "
            f"layers need an include pattern naming them); layer types found: {found}"
        )
    return layers


def _observe(qmodel: nn.Module, config: QuantConfig, layers: list[str], calibration_data,
             num_samples: int | None, progress: bool, on_progress: OnProgress | None):
    """What the calibration data tells before any weight is rounded: SmoothQuant scales
    (applied to ``qmodel``), static activation ranges, GPTQ Hessians. Returns
    ``(calibration, hessians, samples, extra metrics)``."""
    extra: dict[str, Any] = {}
    samples, calibration, hessians = 0, None, {}
    if config.smoothquant is not None:
        report = smooth_model(qmodel, calibration_data, alpha=config.smoothquant, config=config,
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
    return calibration, hessians, samples, extra


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
    work = sum(float_weight(qmodel.get_submodule(n)).numel() * 4 for n in layers)
    with torch.no_grad(), options.job_work(work):
        for done, name in enumerate(
            # disable=None: a bar only on a terminal
            tqdm(layers, desc="quantizing", unit="layer", disable=None if progress else True),
            start=1,
        ):
            layer = qmodel.get_submodule(name)
            weight = float_weight(layer)  # [out, in]: Conv1D's is transposed
            qw, acc = _quantize_one(weight, config, name, name in hessians)
            if name in hessians:
                tried += 1
                result = gptq_quantize(
                    weight, hessians.pop(name), qw, damping=config.gptq_damping,
                    block_size=config.gptq_block_size, act_order=config.gptq_act_order)
                qw = result.qweight
                if result.used == "rtn":
                    rtn_kept.append(name)
            problems = check_int8_ranges(name, qw.data, qw.scale, qw.zero_point, qmin, qmax)
            if problems:  # a bug of ours, never the user's input
                raise MonoQuantError("int8 range check failed: " + "; ".join(problems))
            accs[name] = acc if acc is not None else weight_error(weight, qw)
            qlayer = quantized_like(layer, config, qw)
            if calibration is not None:
                qlayer.set_input_qparams(*calibration.observers[name].compute_qparams())
            if config.target:
                float_layers[name] = layer
            parent, _, child = name.rpartition(".")
            setattr(qmodel.get_submodule(parent), child, qlayer)
            if on_progress is not None:
                on_progress("quantizing", done, len(layers))
    return accs, float_layers, {"layers_gptq": tried - len(rtn_kept), "layers_rtn_better": rtn_kept}


def _quantize_one(weight: torch.Tensor, config: QuantConfig, name: str,
                  gptq: bool) -> tuple[QuantizedTensor, ErrorAccumulator | None]:
    """The weight's round-to-nearest int8 form and, where one pass over the weight gives
    both (:mod:`~mono_quant.quant._measured`), its error sums (None: GPTQ will replace the
    rounding, or another observer or granularity: the caller measures afterwards)."""
    if not gptq and _measured.applies(weight, config):
        return _measured.quantize_measured(weight, config, f"{name}.weight")
    return quantize_weight(weight, config, f"{name}.weight"), None


def _warn_low(metrics: dict[str, Any], quantized: int) -> None:
    """Warnings for an artifact that barely saves memory or drifts from the float model."""
    if metrics["compression_ratio"] < LOW_COMPRESSION:
        metrics.setdefault("warnings", []).append(
            f"low compression: {metrics['compression_ratio']:.2f}x (< {LOW_COMPRESSION}x); "
            f"{quantized} of {metrics['layers_total']} layers quantized, the rest of the "
            "weights (embeddings, float layers) stay as they were"
        )
    cosine = metrics.get("output_cosine")
    if isinstance(cosine, float) and cosine < LOW_OUTPUT_COSINE:
        metrics.setdefault("warnings", []).append(
            f"low output cosine: {cosine:.4f} (< {LOW_OUTPUT_COSINE}) against the float model: "
            "a quantized layer may be read by the model in a way its int8 weight breaks "
            "(ViT casts its input to the patch projection's weight dtype): exclude it"
        )


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
        "layers_total": sum(is_quantizable(m) for m in model.modules()),
        "size_bytes_fp": size_fp,
        "size_bytes_quant": size_q,
        "compression_ratio": size_fp / size_q if size_q else float("nan"),
        "range_check": "ok",
    }
