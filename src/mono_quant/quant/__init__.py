"""Quantization: primitives, granularity specs, observers, calibration, modules, the verb."""

from mono_quant.quant.calibration import CalibrationResult, run_calibration
from mono_quant.quant.modules import QuantConv2d, QuantLinear
from mono_quant.quant.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
)
from mono_quant.quant.primitives import (
    QuantizedTensor,
    dequantize,
    fake_quantize,
    quantize_weight_int8,
    quantize_with_qparams,
)
from mono_quant.quant.qconfig import QuantConfig
from mono_quant.quant.quantize import quantize_model, select_layers
from mono_quant.quant.specs import PerChannel, PerGroup, PerTensor

__all__ = [
    "CalibrationResult",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "PercentileObserver",
    "QuantConfig",
    "QuantConv2d",
    "QuantLinear",
    "QuantizedTensor",
    "dequantize",
    "fake_quantize",
    "make_observer",
    "quantize_model",
    "quantize_weight_int8",
    "quantize_with_qparams",
    "run_calibration",
    "select_layers",
]
