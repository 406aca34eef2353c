"""Consistency checks between tensors, a ``QuantizationInfo`` and a model.

Used when writing (never produce an artifact we would refuse to read) and when loading (a
file that lost a scale fails here with the tensor's name, not deep inside torch).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mono_quant.errors import BadInputError
from mono_quant.quant.info import QuantizationInfo

__all__ = ["check_quantized_tensors", "load_state_dict_strict"]


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_quantized_tensors(
    tensors: Mapping[str, torch.Tensor], info: QuantizationInfo, source: str
) -> None:
    """Every layer in ``info.selected_layers`` has int8 weights and well-shaped qparams.

    Raises:
        BadInputError: naming ``source``, the tensor and what was expected.
    """
    gran = info.config.granularity_spec
    static = info.config.mode == "static"
    for layer in info.selected_layers:
        def need(suffix: str, dtype: torch.dtype, shape: tuple[int, ...] | None,
                 why: str, layer: str = layer) -> torch.Tensor:
            name = f"{layer}.{suffix}"
            t = tensors.get(name)
            if t is None:
                raise BadInputError(
                    f"{source}: tensor {name!r} is missing: quantized layer {layer!r} needs {why}"
                )
            if t.dtype != dtype:
                raise BadInputError(f"{source}: tensor {name!r} is {t.dtype}, expected {dtype}")
            if shape is not None and tuple(t.shape) != shape:
                raise BadInputError(
                    f"{source}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)}"
                )
            return t

        weight = need("weight", torch.int8, None, "its int8 weight")
        try:
            pshape = tuple(gran.param_shape(weight.shape))
        except BadInputError as e:
            raise BadInputError(f"{source}: tensor '{layer}.weight': {e}") from e
        scale = need("weight_scale", torch.float32, pshape, f"its {gran.name} scale")
        need("weight_zero_point", torch.int8, pshape, "its zero point")
        if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            raise BadInputError(
                f"{source}: tensor '{layer}.weight_scale' has scales that are not finite and > 0"
            )
        if static:
            need("input_scale", torch.float32, (1,), "its static input scale")
            need("input_zero_point", torch.int8, (1,), "its static input zero point")


def _tie_back(
    expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor]
) -> Mapping[str, torch.Tensor]:
    """Fill the names of a tie the file stores once (save_model keeps the first name): every
    name of a tensor the model shares gets the stored tensor."""
    groups: dict[tuple[object, ...], list[str]] = {}
    for name, t in expected.items():
        if t.numel():
            groups.setdefault((t.device, t.data_ptr(), t.dtype, tuple(t.shape)), []).append(name)
    filled = dict(tensors)
    for names in groups.values():
        stored = [n for n in names if n in tensors]
        if len(names) > 1 and stored:
            for n in names:
                filled.setdefault(n, tensors[stored[0]])
    return filled


def load_state_dict_strict(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str
) -> None:
    """``model.load_state_dict(tensors, strict=True)`` with errors that name the tensors.

    Floating-point tensors are cast to the model's dtype (as ``load_state_dict`` does);
    integer/float mismatches are errors.
    """
    expected = model.state_dict()
    tensors = _tie_back(expected, tensors)
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names(unexpected)}")
        raise BadInputError(
            f"{source}: the tensors do not match the model ({'; '.join(parts)}); is this the "
            "architecture (and factory arguments) the weights were saved from?"
        )
    for name, want in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape):
            raise BadInputError(
                f"{source}: tensor {name!r} has shape {list(got.shape)}, the model expects "
                f"{list(want.shape)}"
            )
        if got.dtype != want.dtype and not (got.is_floating_point() and want.is_floating_point()):
            raise BadInputError(
                f"{source}: tensor {name!r} is {got.dtype}, the model expects {want.dtype}"
            )
    try:
        model.load_state_dict(dict(tensors), strict=True)
    except RuntimeError as e:
        raise BadInputError(f"{source}: loading the tensors into the model failed: {e}") from e
