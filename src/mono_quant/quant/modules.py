"""Quantized layers that stay runnable: ``QuantLinear``, ``QuantConv2d`` and ``QuantConv1D``.

Which float layers can be quantized is a registry (:func:`register_qmodule`), keyed by the
float class's qualified name so that optional libraries (transformers' ``Conv1D``) need not
be imported to be recognised: :func:`qmodule_for` walks a module's MRO, so subclasses match.

Buffers use the names compressed-tensors and vLLM read, so a state dict of a quantized model
is already in their layout:

==================  ========  =========================================================
buffer              dtype     shape
==================  ========  =========================================================
weight              int8      as the float weight, ``[out, in]`` for ``Conv1D`` (transposed)
weight_scale        float32   ``[out, 1]`` per channel, ``[out, in/g]`` per group, ``[1]``
weight_zero_point   int8      as weight_scale (zeros for the symmetric scheme)
bias                float     as the float bias (absent when the layer has none)
input_scale         float32   ``[1]`` (static mode only)
input_zero_point    int8      ``[1]`` (static mode only)
==================  ========  =========================================================

(dynamic mode has no input buffers: its scales are computed per token at run time.)

``forward`` dequantizes the weight (``(q - zp) * scale``) and, in static mode, fake-quantizes
the input with the calibrated per-tensor qparams: the numerics of W8A8 simulated in float,
as torch.ao's fake quantization and llm-compressor's calibration forward do. Serving runtimes
run real int8 kernels on the same integers and scales. In dynamic mode ``QuantLinear`` runs
the int8 GEMM itself, exactly as vLLM's kernel computes it (:mod:`mono_quant.quant.dynamic`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mono_quant.quant.dynamic import fake_quantize_per_token, int8_linear
from mono_quant.quant.primitives import QuantizedTensor, dequantize, fake_quantize
from mono_quant.quant.qconfig import QuantConfig
from mono_quant.quant.specs import Granularity

__all__ = [
    "SUPPORTED_LAYERS",
    "QuantConv1D",
    "QuantConv2d",
    "QuantLinear",
    "float_weight",
    "is_quantizable",
    "qmodule_for",
    "quantized_like",
    "register_qmodule",
]

#: Float classes whose layers are quantized, by ``module.qualname`` (see register_qmodule).
_REGISTRY: dict[str, type[_QuantLayer]] = {}
#: Kept for callers that only need the torch classes; the registry is the authority.
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_qmodule(float_class: str | type[nn.Module]):
    """Class decorator: quantize layers of ``float_class`` (a class or its qualified name)
    with the decorated ``_QuantLayer`` subclass.

    Example:
        >>> qmodule_for(nn.Linear(2, 2)).__name__
        'QuantLinear'
    """
    key = float_class if isinstance(float_class, str) else _qualname(float_class)

    def wrap(qcls: type[_QuantLayer]) -> type[_QuantLayer]:
        _REGISTRY[key] = qcls
        return qcls

    return wrap


def qmodule_for(module: nn.Module) -> type[_QuantLayer] | None:
    """The quantized class registered for ``module``'s class (or a base class), if any."""
    for cls in type(module).__mro__:
        qcls = _REGISTRY.get(_qualname(cls))
        if qcls is not None:
            return qcls
    return None


def is_quantizable(module: nn.Module) -> bool:
    """Whether a registered quantized class stands in for ``module``."""
    return qmodule_for(module) is not None


def float_weight(module: nn.Module) -> torch.Tensor:
    """``module``'s weight in the layout it is quantized in: ``[out, in, ...]``."""
    qcls = qmodule_for(module)
    if qcls is None:
        raise TypeError(f"cannot quantize a {type(module).__name__}")
    return qcls.weight_of(module)


class _QuantLayer(nn.Module):
    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    bias: torch.Tensor | None

    @staticmethod
    def weight_of(float_layer: nn.Module) -> torch.Tensor:
        """The float weight, output channels first (what the scales are computed on)."""
        return float_layer.weight

    def _init_buffers(self, float_layer: nn.Module, config: QuantConfig,
                      qweight: QuantizedTensor | None = None) -> None:
        w = self.weight_of(float_layer)
        gran: Granularity = config.granularity_spec
        pshape = gran.param_shape(w.shape)
        self.scheme = config.scheme
        self.granularity = gran
        self.mode = config.mode
        self.activation_scheme = config.activation_scheme
        self.compute_dtype = w.dtype
        kw = {"device": w.device}
        if qweight is not None:  # adopt the quantized tensors: no zeroed buffer, no copy
            self._adopt(qweight, tuple(w.shape), pshape, w.device)
        else:
            self.register_buffer("weight", torch.zeros(w.shape, dtype=torch.int8, **kw))
            self.register_buffer("weight_scale", torch.ones(pshape, dtype=torch.float32, **kw))
            self.register_buffer("weight_zero_point",
                                 torch.zeros(pshape, dtype=torch.int8, **kw))
        bias = float_layer.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        if config.mode == "static":
            self.register_buffer("input_scale", torch.ones(1, dtype=torch.float32, **kw))
            self.register_buffer("input_zero_point", torch.zeros(1, dtype=torch.int8, **kw))

    def _adopt(self, qw: QuantizedTensor, shape: tuple[int, ...], pshape: tuple[int, ...],
               device: torch.device) -> None:
        """Register ``qw``'s tensors as the buffers (what ``set_weight`` would copy in)."""
        for name, t, dtype, want in (("weight", qw.data, torch.int8, shape),
                                     ("weight_scale", qw.scale, torch.float32, pshape),
                                     ("weight_zero_point", qw.zero_point, torch.int8, pshape)):
            if tuple(t.shape) != tuple(want):
                raise ValueError(f"{name}: shape {tuple(t.shape)}, the layer needs {want}")
            t = t.detach().to(device, dtype).contiguous()
            if t.untyped_storage().nbytes() != t.numel() * t.element_size():
                t = t.clone()  # a view into a larger buffer: keep (and save) only its part
            self.register_buffer(name, t)

    def set_weight(self, qw: QuantizedTensor) -> None:
        self.weight.copy_(qw.data)
        self.weight_scale.copy_(qw.scale)
        self.weight_zero_point.copy_(qw.zero_point)

    def set_input_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        self.input_scale.copy_(scale.reshape(1))
        self.input_zero_point.copy_(zero_point.reshape(1))

    @property
    def qweight(self) -> QuantizedTensor:
        return QuantizedTensor(
            self.weight, self.weight_scale, self.weight_zero_point, self.scheme, self.granularity
        )

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize(self.qweight, dtype or self.compute_dtype)

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "static":
            x = fake_quantize(x, self.input_scale, self.input_zero_point, self.activation_scheme)
        elif self.mode == "dynamic":
            x = fake_quantize_per_token(x.movedim(-3, -1)).movedim(-1, -3)  # ([N,] C, H, W)
        return x, self.dequantized_weight(x.dtype)


@register_qmodule(nn.Linear)
class QuantLinear(_QuantLayer):
    """int8 stand-in for ``nn.Linear``."""

    def __init__(self, float_layer: nn.Linear, config: QuantConfig,
                 qweight: QuantizedTensor | None = None) -> None:
        super().__init__()
        self.in_features = float_layer.in_features
        self.out_features = float_layer.out_features
        self._init_buffers(float_layer, config, qweight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dynamic":
            return int8_linear(x, self.weight, self.weight_scale, self.bias)
        x, w = self._prepare(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {self.scheme}, {self.granularity.name}, {self.mode}"
        )


@register_qmodule(nn.Conv2d)
class QuantConv2d(_QuantLayer):
    """int8 stand-in for ``nn.Conv2d`` (every padding mode)."""

    def __init__(self, float_layer: nn.Conv2d, config: QuantConfig,
                 qweight: QuantizedTensor | None = None) -> None:
        super().__init__()
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                     "dilation", "groups", "padding_mode"):
            setattr(self, attr, getattr(float_layer, attr))
        self._reversed_padding_repeated_twice = float_layer._reversed_padding_repeated_twice
        self._init_buffers(float_layer, config, qweight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._prepare(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, w, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, {self.scheme}, {self.granularity.name}, {self.mode}"
        )


@register_qmodule("transformers.pytorch_utils.Conv1D")
class QuantConv1D(QuantLinear):
    """int8 stand-in for transformers' ``Conv1D`` (GPT-2 and kin), a linear layer whose
    weight is stored ``[in, out]``.

    The int8 weight is kept ``[out, in]`` like ``QuantLinear``'s, so scales, groups and the
    kernels are the same: a per-channel scale is per output feature, as for any linear layer.
    Only the artifact's ``<layer>.weight`` shape differs from the float checkpoint's.
    """

    @staticmethod
    def weight_of(float_layer: nn.Module) -> torch.Tensor:
        return float_layer.weight.t()  # (in, out) -> (out, in)

    def __init__(self, float_layer: nn.Module, config: QuantConfig,
                 qweight: QuantizedTensor | None = None) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = float_layer.weight.shape
        self._init_buffers(float_layer, config, qweight)


def quantized_like(float_layer: nn.Module, config: QuantConfig,
                   qweight: QuantizedTensor | None = None) -> _QuantLayer:
    """A quantized layer shaped like ``float_layer``: empty (fill it, or load a state dict),
    or holding ``qweight``'s tensors themselves (not copies: the int8 weight of a large model
    is then written once, by the quantizer)."""
    qcls = qmodule_for(float_layer)
    if qcls is None:
        raise TypeError(f"cannot quantize a {type(float_layer).__name__}")
    return qcls(float_layer, config, qweight)
