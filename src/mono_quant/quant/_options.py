"""Validation of the W8A8 accuracy options of ``QuantConfig`` (dynamic mode, SmoothQuant,
GPTQ, accuracy targets), kept apart so ``qconfig.py`` stays a small table of fields.

Each error names the option, what it received and what it expects, so a manifest author can
fix it without reading code.
"""

from __future__ import annotations

import math
from typing import Any

from mono_quant.errors import BadConfigError

__all__ = ["ADVANCED_DEFAULTS", "TARGET_METRICS", "WEIGHT_ALGORITHMS", "check_advanced"]

#: Weight rounding algorithms: round-to-nearest and GPTQ (Frantar et al., 2022).
WEIGHT_ALGORITHMS = ("rtn", "gptq")
#: Accuracy-target metrics and whether larger is better.
TARGET_METRICS = {"output_cosine": True, "output_sqnr_db": True, "perplexity_increase": False}
#: Fields added after version 1 and their defaults: ``to_dict`` leaves them out at these
#: values, so configs written before they existed keep their digests (idempotency keys).
ADVANCED_DEFAULTS: dict[str, Any] = {
    "smoothquant": None,
    "weight_algorithm": "rtn",
    "gptq_damping": 0.01,
    "gptq_block_size": 128,
    "gptq_act_order": False,
    "target": None,
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_dynamic(cfg: Any) -> None:
    if cfg.mode != "dynamic":
        return
    if cfg.activation_scheme != "symmetric":
        raise BadConfigError(
            f"activation_scheme={cfg.activation_scheme!r}: mode='dynamic' quantizes activations "
            "per token with symmetric scales only; use activation_scheme='symmetric' (or omit it)"
        )
    if cfg.scheme != "symmetric" or cfg.granularity == "per_group":
        raise BadConfigError(
            f"scheme={cfg.scheme!r}, granularity={cfg.granularity!r}: mode='dynamic' runs an int8 "
            "GEMM, which needs symmetric per_channel or per_tensor weights (what vLLM's "
            "CompressedTensorsW8A8Int8 serves)"
        )


def _check_smoothquant(cfg: Any) -> None:
    alpha = cfg.smoothquant
    if alpha is None:
        return
    if not _number(alpha) or not 0.0 < alpha < 1.0:
        raise BadConfigError(
            f"smoothquant={alpha!r}: expected the migration strength alpha in (0, 1), e.g. 0.5 "
            "(0.75-0.85 for models with strong activation outliers), or null to turn it off"
        )
    if cfg.mode == "weight_only":
        raise BadConfigError(
            "smoothquant: only helps W8A8 (mode='static' or 'dynamic'); with mode='weight_only' "
            "activations are not quantized, so drop smoothquant or change the mode"
        )
    object.__setattr__(cfg, "smoothquant", float(alpha))


def _check_gptq(cfg: Any) -> None:
    if cfg.weight_algorithm not in WEIGHT_ALGORITHMS:
        raise BadConfigError(
            f"weight_algorithm={cfg.weight_algorithm!r}: expected one of "
            f"{', '.join(WEIGHT_ALGORITHMS)}"
        )
    d = cfg.gptq_damping
    if not _number(d) or not 0.0 < d <= 1.0:
        raise BadConfigError(f"gptq_damping={d!r}: expected a number in (0, 1], e.g. 0.01")
    object.__setattr__(cfg, "gptq_damping", float(d))
    b = cfg.gptq_block_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise BadConfigError(f"gptq_block_size={b!r}: expected a positive integer, e.g. 128")
    if not isinstance(cfg.gptq_act_order, bool):
        raise BadConfigError(f"gptq_act_order={cfg.gptq_act_order!r}: expected true or false")


def _check_target(cfg: Any) -> None:
    target = cfg.target
    if target is None:
        return
    items = target.items() if isinstance(target, dict) else target
    try:
        pairs = sorted((str(k), v) for k, v in items)
    except (TypeError, ValueError) as e:
        raise BadConfigError(
            f"target={target!r}: expected a mapping such as {{'output_cosine': 0.999}}"
        ) from e
    if not pairs:
        raise BadConfigError("target: empty; give at least one metric or leave target out")
    for metric, value in pairs:
        if metric not in TARGET_METRICS:
            raise BadConfigError(
                f"target: unknown metric {metric!r}; expected some of {', '.join(TARGET_METRICS)}"
            )
        if not _number(value):
            raise BadConfigError(f"target.{metric}={value!r}: expected a finite number")
        if metric == "output_cosine" and not -1.0 <= value <= 1.0:
            raise BadConfigError(f"target.output_cosine={value!r}: a cosine lies in [-1, 1]")
        if metric == "perplexity_increase" and value < 0:
            raise BadConfigError(f"target.perplexity_increase={value!r}: expected >= 0")
    object.__setattr__(cfg, "target", tuple((m, float(v)) for m, v in pairs))


def check_advanced(cfg: Any) -> None:
    """Validate (and normalise in place) the options added for LLM-grade int8."""
    _check_dynamic(cfg)
    _check_smoothquant(cfg)
    _check_gptq(cfg)
    _check_target(cfg)
