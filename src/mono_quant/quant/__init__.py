"""Quantization: primitives, granularity specs, observers, calibration, modules, the verb."""

from typing import TYPE_CHECKING

from mono_quant._lazy import lazy_exports

if TYPE_CHECKING:  # the real imports, for type checkers and IDEs
    from mono_quant.quant.calibration import CalibrationResult, run_calibration
    from mono_quant.quant.info import QuantizationInfo, library_versions
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

_EXPORTS = {
    "CalibrationResult": "mono_quant.quant.calibration",
    "MSEObserver": "mono_quant.quant.observers",
    "MinMaxObserver": "mono_quant.quant.observers",
    "MovingAverageMinMaxObserver": "mono_quant.quant.observers",
    "Observer": "mono_quant.quant.observers",
    "PerChannel": "mono_quant.quant.specs",
    "PerGroup": "mono_quant.quant.specs",
    "PerTensor": "mono_quant.quant.specs",
    "PercentileObserver": "mono_quant.quant.observers",
    "QuantConfig": "mono_quant.quant.qconfig",
    "QuantConv2d": "mono_quant.quant.modules",
    "QuantLinear": "mono_quant.quant.modules",
    "QuantizationInfo": "mono_quant.quant.info",
    "QuantizedTensor": "mono_quant.quant.primitives",
    "dequantize": "mono_quant.quant.primitives",
    "fake_quantize": "mono_quant.quant.primitives",
    "library_versions": "mono_quant.quant.info",
    "make_observer": "mono_quant.quant.observers",
    "quantize_model": "mono_quant.quant.quantize",
    "quantize_weight_int8": "mono_quant.quant.primitives",
    "quantize_with_qparams": "mono_quant.quant.primitives",
    "run_calibration": "mono_quant.quant.calibration",
    "select_layers": "mono_quant.quant.quantize",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, ())

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
    "QuantizationInfo",
    "QuantizedTensor",
    "dequantize",
    "fake_quantize",
    "library_versions",
    "make_observer",
    "quantize_model",
    "quantize_weight_int8",
    "quantize_with_qparams",
    "run_calibration",
    "select_layers",
]
