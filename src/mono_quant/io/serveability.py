"""Which runtime serves an artifact: vLLM's int8 kernel constraints, checked before and after
quantizing.

vLLM reads compressed-tensors folders and picks a scheme from the ``quantization_config``
(``vllm/model_executor/layers/quantization/compressed_tensors/``); what it accepts for int8:

==============  ==============================  ==============================================
our mode        vLLM scheme                     weights vLLM takes
==============  ==============================  ==============================================
static (W8A8)   ``CompressedTensorsW8A8Int8``   symmetric, per-channel or per-tensor (static
                                                per-tensor activations, either scheme: azp;
                                                vLLM logs asymmetric as untested)
dynamic (W8A8)  ``CompressedTensorsW8A8Int8``   symmetric, per-channel or per-tensor
                                                (dynamic per-token activations)
weight_only     ``CompressedTensorsWNA16``      symmetric (``uint8b128``), per-channel or
(W8A16)         (Marlin, 8 bit)                 per-group with group size 32, 64 or 128
                                                (``MARLIN_SUPPORTED_GROUP_SIZES``); every
                                                layer's out features divisible by 64 and in
                                                features by 128 (``GPTQ_MARLIN_MIN_THREAD_N/K``)
                                                and by the group size
==============  ==============================  ==============================================

Artifacts in ``safetensors`` / ``pt`` are mono-quant's layout, served by ``load_quantized``.
The verdict is ``serveable_by`` (``"vllm"``, ``"mono-quant"`` or ``"none"``) plus a reason;
the scheme alone is checked at submit, the layer shapes once the model is known.

Example:
    >>> from mono_quant.quant.qconfig import QuantConfig
    >>> check_scheme(QuantConfig(mode="static"), "compressed-tensors").serveable_by
    'vllm'
    >>> check_scheme(QuantConfig(granularity="per_tensor"), "compressed-tensors").reason[-30:]
    '32, 64 or 128); got per_tensor'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mono_quant.quant.qconfig import QuantConfig

__all__ = ["FUSED_SHARDS", "MARLIN_GROUP_SIZES", "SERVEABLE_BY", "Serveability", "check_layers",
           "check_scheme"]

#: The verdicts: vLLM serves it; mono-quant's load_quantized does; nothing we know of does.
SERVEABLE_BY = ("vllm", "mono-quant", "none")

#: Group sizes vLLM's Marlin kernels take (vLLM ``MARLIN_SUPPORTED_GROUP_SIZES``, -1 aside).
MARLIN_GROUP_SIZES = (32, 64, 128)
#: Marlin's tile minimums: out features (N) and in features (K) must be multiples.
MARLIN_MIN_N, MARLIN_MIN_K = 64, 128
W8A8, WNA16 = "CompressedTensorsW8A8Int8", "CompressedTensorsWNA16"


@dataclass(frozen=True)
class Serveability:
    """``serveable_by``: ``"vllm"``, ``"mono-quant"`` (load_quantized) or ``"none"``."""

    serveable_by: str
    reason: str

    def metrics(self) -> dict[str, str]:
        return {"serveable_by": self.serveable_by, "serveable_reason": self.reason}


def check_scheme(config: QuantConfig, fmt: str) -> Serveability:
    """The verdict from the config and format alone (what submit knows)."""
    if fmt != "compressed-tensors":
        return Serveability("mono-quant", f"format {fmt!r} is mono-quant's layout: load it with "
                                          "mono_quant.load_quantized (vLLM reads "
                                          "compressed-tensors folders)")
    if config.mode in ("static", "dynamic"):
        if config.scheme != "symmetric" or config.granularity == "per_group":
            return Serveability("none", f"vLLM's {W8A8} takes symmetric per-channel or "
                                        f"per-tensor weights; got {config.scheme} "
                                        f"{config.granularity}")
        acts = (f"static per-tensor {config.activation_scheme}" if config.mode == "static"
                else "dynamic per-token symmetric")
        return Serveability("vllm", f"{W8A8}: W8A8, symmetric {config.granularity} weights, "
                                    f"{acts} activations")
    if config.granularity == "per_tensor" or (
        config.granularity == "per_group" and config.group_size not in MARLIN_GROUP_SIZES
    ):
        got = config.granularity + (f" {config.group_size}" if config.group_size else "")
        return Serveability("none", f"vLLM's {WNA16} (Marlin) takes per-channel or per-group "
                                    f"weights (group size 32, 64 or 128); got {got}")
    if config.scheme != "symmetric":
        return Serveability("none", f"vLLM's {WNA16} (Marlin) runs 8-bit weights without zero "
                                    "points (uint8b128): symmetric only; got asymmetric")
    return Serveability("vllm", f"{WNA16} (Marlin): W8A16, symmetric {config.granularity} "
                                "weights")


#: Layers vLLM loads as one fused layer (its models' ``packed_modules_mapping``: Llama,
#: Mistral, Qwen2, OPT): every shard must have the same scheme, quantized or not, or vLLM
#: refuses the checkpoint (``should_ignore_layer`` raises, ``find_matched_target`` finds no
#: target for the fused layer).
FUSED_SHARDS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _mixed_shards(quantized: Iterable[str], linears: Iterable[str]) -> str | None:
    """The first fused group with quantized and float shards, described; else None."""
    quantized, linears = set(quantized), set(linears)
    for name in sorted(linears):
        prefix, _, leaf = name.rpartition(".")
        for group in FUSED_SHARDS:
            if leaf != group[0]:
                continue
            shards = [f"{prefix}.{s}" if prefix else s for s in group]
            present = [s for s in shards if s in linears]
            kinds = {s in quantized for s in present}
            if len(kinds) > 1:
                floats = [s for s in present if s not in quantized]
                return (f"vLLM fuses {', '.join(group)} into one layer and needs one scheme "
                        f"for all of them; {', '.join(floats)} stay(s) float while the "
                        "others are quantized")
    return None


def check_layers(config: QuantConfig, fmt: str, shapes: Mapping[str, tuple[int, int]],
                 linears: Iterable[str] = (), model_type: str | None = None) -> Serveability:
    """The verdict once the quantized layers' ``(out, in)`` shapes are known; ``linears``
    (every linear layer's name, quantized or not) adds vLLM's rule on fused shards, and the
    transformers ``model_type`` (when there is one) the families vLLM has no model for."""
    from mono_quant.io.interop import INT_WEIGHT_ONLY_MODEL_TYPES, ct_format  # torch: lazy

    verdict = check_scheme(config, fmt)
    if verdict.serveable_by != "vllm":
        return verdict
    if model_type in INT_WEIGHT_ONLY_MODEL_TYPES:
        return Serveability("none", f"vLLM has no {model_type} model (it serves no "
                                    "encoder-decoder T5-family model); transformers loads the "
                                    f"folder ({ct_format(config.mode, model_type)})")
    mixed = _mixed_shards(shapes, linears)
    if mixed is not None:
        return Serveability("none", mixed)
    if config.mode != "weight_only":
        return verdict
    group = config.group_size if config.granularity == "per_group" else None
    for name, (n, k) in shapes.items():
        if n % MARLIN_MIN_N or k % MARLIN_MIN_K or (group and k % group):
            need = f"out % {MARLIN_MIN_N} == 0 and in % {MARLIN_MIN_K} == 0" + (
                f" and in % {group} == 0" if group else "")
            return Serveability("none", f"vLLM's {WNA16} (Marlin) needs {need}; layer "
                                        f"{name!r} is out={n}, in={k}")
    return verdict
