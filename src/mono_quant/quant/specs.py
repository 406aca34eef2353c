"""Granularity specs: which elements share one scale.

Every spec maps a tensor to a 2-D *rows* view ``[R, C]`` in which each row is one
quantization group, and maps the ``R`` per-row parameters back to a scale shape that
broadcasts against the tensor (or its grouped view). The kernels only ever see rows.

Shapes, for a weight ``[A, B]`` (a conv weight ``[O, I, kh, kw]`` is ``[O, I*kh*kw]`` here):

=================  ==============  ===============  ===================
spec               rows view       scale shape      scheme default use
=================  ==============  ===============  ===================
``PerTensor()``    ``[1, A*B]``    ``[1]``          activations
``PerChannel()``   ``[A, B]``      ``[A, 1]``       weights (default)
``PerGroup(g)``    ``[A*B/g, g]``  ``[A, B/g]``     weights of large layers
=================  ==============  ===============  ===================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Union

from mono_quant.errors import BadConfigError, BadInputError

if TYPE_CHECKING:  # annotations only: manifests and configs validate without torch
    import torch

__all__ = [
    "Granularity",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "Scheme",
    "as_granularity",
    "check_scheme",
    "qrange",
]

Scheme = Literal["symmetric", "asymmetric"]
SCHEMES: tuple[str, ...] = ("symmetric", "asymmetric")


def check_scheme(scheme: str, field: str = "scheme") -> str:
    if scheme not in SCHEMES:
        raise BadConfigError(f"{field}={scheme!r}: expected 'symmetric' or 'asymmetric'")
    return scheme


def qrange(scheme: str) -> tuple[int, int]:
    """The int8 range used by ``scheme``.

    Symmetric uses ``[-127, 127]`` so that the range is symmetric around the zero point 0
    (what int8 GEMM kernels assume); asymmetric uses the full ``[-128, 127]``.
    """
    return (-127, 127) if scheme == "symmetric" else (-128, 127)


@dataclass(frozen=True)
class PerTensor:
    """One scale and zero point for the whole tensor: ``[A, B]`` → scale ``[1]``."""

    name = "per_tensor"

    def rows(self, x: torch.Tensor, tensor_name: str = "tensor") -> torch.Tensor:
        return x.reshape(1, -1)

    def param_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return (1,)

    def from_rows(self, q_rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return q_rows.reshape(shape)

    def to_dict(self) -> dict[str, object]:
        return {"type": self.name}


@dataclass(frozen=True)
class PerChannel:
    """One scale per slice along ``axis``: weight ``[A, B]`` (axis 0) → scale ``[A, 1]``.

    For weights the axis is the output channel (0). Activation observers use ``axis=-1``
    (the feature dimension of a Linear layer's input).
    """

    axis: int = 0
    name = "per_channel"

    def _axis(self, ndim: int, tensor_name: str) -> int:
        if ndim == 0 or not -ndim <= self.axis < ndim:
            raise BadInputError(
                f"{tensor_name}: per-channel axis {self.axis} is out of range for a tensor "
                f"with {ndim} dimension(s)"
            )
        return self.axis % ndim

    def rows(self, x: torch.Tensor, tensor_name: str = "tensor") -> torch.Tensor:
        axis = self._axis(x.ndim, tensor_name)
        if axis != 0:
            x = x.movedim(axis, 0)
        return x.reshape(x.shape[0], -1)

    def param_shape(self, shape: torch.Size) -> tuple[int, ...]:
        axis = self._axis(len(shape), "tensor")
        return tuple(n if i == axis else 1 for i, n in enumerate(shape))

    def from_rows(self, q_rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        axis = self._axis(len(shape), "tensor")
        if axis == 0:
            return q_rows.reshape(shape)
        moved = (shape[axis], *(n for i, n in enumerate(shape) if i != axis))
        return q_rows.reshape(moved).movedim(0, axis).contiguous()

    def to_dict(self) -> dict[str, object]:
        return {"type": self.name, "axis": self.axis}


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``group_size`` consecutive input values of each output row.

    Weight ``[A, B]`` → scale ``[A, B // group_size]``; a conv weight ``[O, I, kh, kw]`` is
    grouped along its flattened input ``I*kh*kw``. The input size must be a multiple of
    ``group_size`` (exclude the layer or pick another size otherwise).
    """

    group_size: int = 128
    name = "per_group"

    def __post_init__(self) -> None:
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise BadConfigError(f"group_size={self.group_size!r}: expected a positive integer")
        if self.group_size < 1:
            raise BadConfigError(f"group_size={self.group_size}: expected a positive integer")

    def _check(self, shape: torch.Size, tensor_name: str) -> tuple[int, int]:
        if len(shape) < 2:
            raise BadInputError(
                f"{tensor_name}: per-group quantization needs a weight with at least 2 "
                f"dimensions, got shape {tuple(shape)}"
            )
        out, inner = shape[0], math.prod(shape[1:])
        if inner % self.group_size:
            raise BadInputError(
                f"{tensor_name}: input size {inner} (shape {tuple(shape)}) is not a multiple of "
                f"group_size={self.group_size}; choose a group size that divides it or exclude "
                "this layer"
            )
        return out, inner

    def rows(self, x: torch.Tensor, tensor_name: str = "tensor") -> torch.Tensor:
        self._check(x.shape, tensor_name)
        return x.reshape(-1, self.group_size)

    def param_shape(self, shape: torch.Size) -> tuple[int, ...]:
        out, inner = self._check(shape, "tensor")
        return (out, inner // self.group_size)

    def from_rows(self, q_rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return q_rows.reshape(shape)

    def to_dict(self) -> dict[str, object]:
        return {"type": self.name, "group_size": self.group_size}


Granularity = Union[PerTensor, PerChannel, PerGroup]  # noqa: UP007 (used at runtime)


def as_granularity(value: object, group_size: int | None = None) -> Granularity:
    """Accept a spec or its name: ``"per_tensor"``, ``"per_channel"``, ``"per_group"``.

    Example:
        >>> as_granularity("per_group", group_size=64)
        PerGroup(group_size=64)
    """
    if isinstance(value, (PerTensor, PerChannel, PerGroup)):
        return value
    if value == "per_tensor":
        return PerTensor()
    if value == "per_channel":
        return PerChannel()
    if value == "per_group":
        return PerGroup(128 if group_size is None else group_size)
    raise BadConfigError(
        f"granularity={value!r}: expected 'per_tensor', 'per_channel' or 'per_group' "
        "(or a PerTensor/PerChannel/PerGroup spec)"
    )
