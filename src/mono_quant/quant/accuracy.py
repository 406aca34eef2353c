"""Measuring a quantized model against its float original: output metrics, perplexity, and
the accuracy-target search, as ``quantize_model`` runs them.

Example:
    >>> from mono_quant import QuantConfig
    >>> check_data_needs(QuantConfig(mode="dynamic"), None, None, None)  # needs nothing
    >>> check_data_needs(QuantConfig(weight_algorithm="gptq"), None, None, None)
    Traceback (most recent call last):
    ...
    mono_quant.errors.BadConfigError: weight_algorithm='gptq' needs calibration_data ...
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mono_quant.errors import BadConfigError, BadInputError
from mono_quant.quant.calibration import (
    OnProgress,
    call_model,
    planned_batches,
    run_batch,
    to_device,
)
from mono_quant.quant.evaluate import perplexity
from mono_quant.quant.metrics import ErrorAccumulator, first_tensor
from mono_quant.quant.qconfig import QuantConfig
from mono_quant.quant.targets import meet_target

__all__ = ["check_data_needs", "output_metrics", "perplexity_metrics", "search_target"]


def check_data_needs(
    config: QuantConfig, calibration: Any, eval_data: Any, eval_tokens: Any
) -> None:
    """Options that need data fail before any work when it is missing, naming the option."""
    if calibration is None:
        if config.mode == "static":
            raise BadConfigError(
                "mode='static' needs calibration_data to choose activation scales; pass "
                "calibration batches or use mode='weight_only' or 'dynamic'"
            )
        if config.smoothquant is not None:
            raise BadConfigError(
                f"smoothquant={config.smoothquant}: needs calibration data (per-channel "
                "activation maxima); pass calibration batches (--calibration) or drop it"
            )
        if config.weight_algorithm == "gptq":
            raise BadConfigError(
                "weight_algorithm='gptq' needs calibration_data (the Hessian of each layer "
                "comes from its inputs); pass calibration batches or use weight_algorithm='rtn'"
            )
    target = config.target_dict
    if target and calibration is None and eval_data is None and eval_tokens is None:
        raise BadConfigError(
            f"target={target}: needs calibration or evaluation data to measure the model"
        )
    if "perplexity_increase" in target and eval_tokens is None:
        raise BadConfigError(
            "target.perplexity_increase needs an evaluation text (evaluation: text:FILE) "
            "to measure perplexity"
        )


def output_metrics(
    float_model: nn.Module, qmodel: nn.Module, data: Iterable[Any], max_batches: int,
    stage: str, on_progress: OnProgress | None,
) -> dict[str, Any]:
    """Output SQNR and cosine of ``qmodel`` against ``float_model`` over ``data``."""
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


def perplexity_metrics(
    float_model: nn.Module, qmodel: nn.Module, tokens: torch.Tensor, context: int
) -> dict[str, float]:
    """Perplexity of both models on ``tokens`` and the increase ``quant - fp`` (absolute)."""
    fp = perplexity(float_model, tokens, context=context)
    quant = perplexity(qmodel, tokens, context=context)
    return {"perplexity_fp": fp, "perplexity_quant": quant, "perplexity_increase": quant - fp,
            "perplexity_context": context, "perplexity_tokens": int(tokens.numel())}


def search_target(
    float_model: nn.Module, qmodel: nn.Module, float_layers: dict[str, nn.Module],
    target: dict[str, float], first: dict[str, Any], data: Iterable[Any] | None,
    max_batches: int, tokens: torch.Tensor | None, context: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Meet ``target`` (see :mod:`mono_quant.quant.targets`); return the final output
    metrics and the record for ``QuantizationInfo.metrics["accuracy_target"]``."""
    ppl_fp = first.get("perplexity_fp")

    def measure(model: nn.Module) -> dict[str, Any]:
        out = output_metrics(float_model, model, data, max_batches, "evaluation", None) \
            if data is not None else {}
        if tokens is not None:
            quant = perplexity(model, tokens, context=context)
            out.update(perplexity_fp=ppl_fp, perplexity_quant=quant,
                       perplexity_increase=quant - ppl_fp,
                       perplexity_context=context, perplexity_tokens=int(tokens.numel()))
        return out

    missing = [m for m in target if m not in first]
    if missing:
        raise BadConfigError(f"target: cannot measure {', '.join(missing)} on this model/data")
    probe: Iterable[Any] = data if data is not None else \
        [{"input_ids": tokens[:context].unsqueeze(0)}] if tokens is not None else []
    result = meet_target(qmodel, float_layers, target, measure, first, probe, max_batches)
    record = {
        "target": dict(target),
        "achieved": {m: result.achieved[m] for m in target},
        "excluded_layers": result.excluded,
        "evaluations": result.evaluations,
        "layer_output_sqnr_db": result.sensitivity,
    }
    return result.achieved, record
