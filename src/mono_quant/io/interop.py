"""The compressed-tensors layout: what vLLM and transformers read for int8 checkpoints.

An artifact in this format is a Hugging Face style folder: ``config.json`` with a
``quantization_config`` block (``quant_method: compressed-tensors``) and ``model.safetensors``.
The format string follows what compressed-tensors infers for each mode and what vLLM serves:

=============  ==================  =======================================================
mode           format              tensors of each quantized Linear layer
=============  ==================  =======================================================
static (W8A8)  ``int-quantized``   ``weight`` int8, ``weight_scale``, ``weight_zero_point``
                                   (asymmetric weights only), ``input_scale``,
                                   ``input_zero_point`` (asymmetric activations only)
dynamic        ``int-quantized``   ``weight`` int8, ``weight_scale`` (no input tensors:
(W8A8)                             ``input_activations`` is ``{dynamic: true, strategy:
                                   token, symmetric: true}``, vLLM's per-token scheme)
weight_only    ``pack-quantized``  ``weight_packed`` int32 (4 int8 values per word, offset
(W8A16)                            by 128, little-endian), ``weight_shape`` int64,
                                   ``weight_scale``, ``weight_zero_point`` (asymmetric
                                   only; packed along the output axis for channel/group)
=============  ==================  =======================================================

``weight_scale`` is float32 ``[out, 1]`` (channel), ``[out, in/g]`` (group) or ``[1]``
(tensor). vLLM runs ``int-quantized`` with symmetric per-channel/per-tensor weights
(``CompressedTensorsW8A8Int8``) and ``pack-quantized`` 8-bit with symmetric channel/group
weights (``CompressedTensorsWNA16``); the other combinations are valid compressed-tensors
checkpoints that compressed-tensors and transformers decompress. Only Linear layers have a
compressed-tensors form, so a model with quantized Conv2d layers cannot be saved this way.

Weight-only models of the T5 family (:data:`INT_WEIGHT_ONLY_MODEL_TYPES`) are written
``int-quantized`` (an int8 ``weight``, as for W8A8, with ``input_activations: null``):
transformers 5 runs their ``_init_weights`` on every load, which reads ``q.weight`` of each
attention layer directly, and a ``pack-quantized`` layer has ``weight_packed`` instead
(``AttributeError: 'Linear' object has no attribute 'weight'``). compressed-tensors
decompresses ``int-quantized`` weights the same way; vLLM serves no T5 model either way.

``targets`` lists the quantized layers by name; ``ignore`` lists every other 2-D ``*.weight``
(unquantized Linear layers, which vLLM must be told about, and embeddings, which is harmless).

Example:
    >>> import torch
    >>> q = torch.tensor([[-128, -1, 0, 127, 5]], dtype=torch.int8)
    >>> p = pack_int8(q)
    >>> p.dtype, tuple(p.shape), torch.equal(unpack_int8(p, q.shape), q)
    (torch.int32, (1, 2), True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from mono_quant.errors import BadConfigError, BadInputError
from mono_quant.quant.info import QuantizationInfo

__all__ = [
    "CONFIG_FILE",
    "CT_FORMATS",
    "INT_WEIGHT_ONLY_MODEL_TYPES",
    "MODEL_FILE",
    "check_layer_types",
    "ct_format",
    "from_compressed",
    "pack_int8",
    "quantization_config",
    "to_compressed",
    "to_compressed_part",
    "unpack_int8",
]

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
#: compressed-tensors format per mono-quant mode.
CT_FORMATS = {"static": "int-quantized", "dynamic": "int-quantized",
              "weight_only": "pack-quantized"}
_STRATEGY = {"per_tensor": "tensor", "per_channel": "channel", "per_group": "group"}
#: transformers ``model_type`` values whose weight-only folders are ``int-quantized`` (module
#: docstring): the models whose ``_init_weights`` reads ``module.q.weight`` (T5Attention and
#: its copies) or ``module.wi.weight`` directly. Measured for t5 (tests/pipeline/test_matrix);
#: the others share T5's init code.
INT_WEIGHT_ONLY_MODEL_TYPES = frozenset(
    {"t5", "mt5", "umt5", "longt5", "switch_transformers", "pop2piano", "udop"})


def ct_format(mode: str, model_type: str | None = None) -> str:
    """The compressed-tensors format of a ``mode`` for a transformers ``model_type``.

    Example:
        >>> ct_format("weight_only"), ct_format("weight_only", "t5"), ct_format("static")
        ('pack-quantized', 'int-quantized', 'int-quantized')
    """
    if mode == "weight_only" and model_type in INT_WEIGHT_ONLY_MODEL_TYPES:
        return "int-quantized"
    return CT_FORMATS[mode]


def pack_int8(q: torch.Tensor, packed_dim: int = 1) -> torch.Tensor:
    """Pack int8 ``[R, C]`` into int32 ``[R, ceil(C/4)]`` as compressed-tensors does (8 bits).

    Each value is offset by 128 to ``[0, 255]``; value ``4j + k`` of a row is byte ``k`` of
    word ``j``; a last partial word is padded with zero bytes.
    """
    if packed_dim == 0:
        q = q.t()
    u8 = (q.to(torch.int16) + 128).to(torch.uint8)
    pad = -u8.shape[1] % 4
    if pad:
        u8 = F.pad(u8, (0, pad))
    rows = u8.shape[0]
    words = u8.contiguous().reshape(-1).view(torch.int32).reshape(rows, -1)  # little-endian
    return (words.t() if packed_dim == 0 else words).contiguous()


def unpack_int8(p: torch.Tensor, shape: tuple[int, ...] | torch.Size, packed_dim: int = 1):
    """Inverse of :func:`pack_int8` for an original ``shape``."""
    if packed_dim == 0:
        p = p.t()
    cols = int(shape[packed_dim])
    u8 = p.contiguous().reshape(-1).view(torch.uint8).reshape(p.shape[0], -1)[:, :cols]
    q = (u8.to(torch.int16) - 128).to(torch.int8)
    return (q.t() if packed_dim == 0 else q).contiguous()


def _check_supported(tensors: Mapping[str, torch.Tensor], info: QuantizationInfo) -> None:
    for layer in info.selected_layers:
        w = tensors.get(f"{layer}.weight")
        if w is not None and w.ndim != 2:
            raise BadConfigError(
                f"format 'compressed-tensors' holds quantized Linear layers only; layer "
                f"{layer!r} has a {w.ndim}-D weight (a Conv2d?): exclude it (e.g. "
                "--exclude Conv2d) or save as safetensors"
            )


#: Quantized layer classes compressed-tensors has no form for, and why (README: GPT-2).
_NO_CT_FORM = {
    "QuantConv1D": (
        "transformers' Conv1D (GPT-2 family) stores its weight [in, out]: compressed-tensors "
        "sizes scales from that [in, out] weight when transformers loads the folder, and "
        "vLLM's GPT-2 loader transposes only tensors named '*.weight' (not weight_packed, "
        "nor the scales), so no compressed-tensors folder of these layers loads correctly "
        "in either runtime"
    ),
}


def check_layer_types(qmodel: Any, info: QuantizationInfo) -> None:
    """BadConfigError naming the layer type when a quantized layer has no compressed-tensors
    form (the check :func:`to_compressed` cannot make from tensors alone). ``qmodel`` may
    also be the float model (or a skeleton) before quantization: its ``Conv1D`` layers then
    stand for the ``QuantConv1D`` they become."""
    for layer in info.selected_layers:
        kind = type(qmodel.get_submodule(layer)).__name__
        why = _NO_CT_FORM.get(kind, _NO_CT_FORM.get(f"Quant{kind}"))
        if why is not None:
            raise BadConfigError(
                f"format 'compressed-tensors' cannot hold layer {layer!r} "
                f"({kind.removeprefix('Quant')}): {why}. Formats that work for it: "
                "'safetensors' and 'pt' (loaded with mono_quant.load_quantized)"
            )


def _args(scheme: str, strategy: str, group_size: int | None) -> dict[str, Any]:
    return {"num_bits": 8, "type": "int", "symmetric": scheme == "symmetric",
            "group_size": group_size, "strategy": strategy, "dynamic": False}


def _input_args(cfg: Any) -> dict[str, Any] | None:
    if cfg.mode == "static":
        return _args(cfg.activation_scheme, "tensor", None)
    if cfg.mode == "dynamic":  # the compressed-tensors W8A8 preset's per-token activations
        return {**_args("symmetric", "token", None), "dynamic": True}
    return None


def quantization_config(
    info: QuantizationInfo, tensors: Mapping[str, torch.Tensor], fmt: str | None = None,
) -> dict[str, Any]:
    """The ``quantization_config`` block of ``config.json`` for an artifact's tensors, in
    ``fmt`` (default: the mode's, :func:`ct_format`)."""
    cfg = info.config
    fmt = fmt or ct_format(cfg.mode)
    selected = set(info.selected_layers)
    ignore = sorted(
        name[: -len(".weight")] for name, t in tensors.items()
        if name.endswith(".weight") and t.ndim == 2 and t.is_floating_point()
        and name[: -len(".weight")] not in selected
    )
    group: dict[str, Any] = {
        "targets": sorted(selected),
        "weights": _args(cfg.scheme, _STRATEGY[cfg.granularity], cfg.group_size),
        "input_activations": _input_args(cfg),
        "output_activations": None,
        "format": fmt,
    }
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {"group_0": group},
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
    }


def to_compressed(
    tensors: Mapping[str, torch.Tensor], info: QuantizationInfo, fmt: str | None = None,
) -> dict[str, torch.Tensor]:
    """Our state dict (QuantLinear buffers) -> the compressed-tensors tensors in ``fmt``
    (default: the mode's, :func:`ct_format`)."""
    _check_supported(tensors, info)
    cfg = info.config
    packed = (fmt or ct_format(cfg.mode)) == "pack-quantized"
    out = dict(tensors)
    for layer in info.selected_layers:
        if cfg.scheme == "symmetric":
            del out[f"{layer}.weight_zero_point"]
        if cfg.mode == "static" and cfg.activation_scheme == "symmetric":
            del out[f"{layer}.input_zero_point"]
        if packed:
            w = out.pop(f"{layer}.weight")
            out[f"{layer}.weight_packed"] = pack_int8(w)
            out[f"{layer}.weight_shape"] = torch.tensor(w.shape, dtype=torch.int64)
            zp_name = f"{layer}.weight_zero_point"
            if cfg.scheme == "asymmetric" and cfg.granularity != "per_tensor":
                out[zp_name] = pack_int8(out[zp_name], packed_dim=0)
    return out


def to_compressed_part(
    tensors: Mapping[str, torch.Tensor], info: QuantizationInfo, fmt: str | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`to_compressed` of a part of a state dict (one block of the sequential pipeline,
    or meta tensors standing for the whole one): the conversion is per layer, so each part
    converts alone, for the selected layers whose ``weight`` it holds."""
    layers = [n for n in info.selected_layers if f"{n}.weight" in tensors]
    return to_compressed(tensors, dataclasses.replace(info, selected_layers=layers), fmt)


def from_compressed(
    tensors: Mapping[str, torch.Tensor], info: QuantizationInfo, source: str,
    fmt: str | None = None,
) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors in ``fmt`` (default: the mode's) -> our state dict
    (inverse of :func:`to_compressed`)."""
    cfg = info.config
    packed = (fmt or ct_format(cfg.mode)) == "pack-quantized"
    out = dict(tensors)

    def take(name: str, why: str) -> torch.Tensor:
        if name not in out:
            raise BadInputError(f"{source}: tensor {name!r} is missing: {why}")
        return out.pop(name)

    for layer in info.selected_layers:
        scale = out.get(f"{layer}.weight_scale")
        if scale is None:
            raise BadInputError(
                f"{source}: tensor '{layer}.weight_scale' is missing: quantized layer "
                f"{layer!r} needs its scale"
            )
        if packed:
            words = take(f"{layer}.weight_packed", f"layer {layer!r} needs its packed weight")
            shape = take(f"{layer}.weight_shape", f"layer {layer!r} needs its weight shape")
            dims = tuple(int(d) for d in shape.tolist())
            if words.dtype != torch.int32 or len(dims) != 2 or words.shape[0] != dims[0] \
                    or words.shape[1] != -(-dims[1] // 4):
                raise BadInputError(
                    f"{source}: tensor '{layer}.weight_packed' ({words.dtype} "
                    f"{list(words.shape)}) does not hold an int8 weight of shape {list(dims)}"
                )
            out[f"{layer}.weight"] = unpack_int8(words, dims)
            zp_name = f"{layer}.weight_zero_point"
            if cfg.scheme == "asymmetric" and cfg.granularity != "per_tensor":
                zp = take(zp_name, f"asymmetric layer {layer!r} needs its zero points")
                out[zp_name] = unpack_int8(zp, tuple(scale.shape), packed_dim=0)
        if cfg.scheme == "symmetric":
            out[f"{layer}.weight_zero_point"] = torch.zeros(scale.shape, dtype=torch.int8)
        if cfg.mode == "static" and cfg.activation_scheme == "symmetric":
            out[f"{layer}.input_zero_point"] = torch.zeros(1, dtype=torch.int8)
    return out
