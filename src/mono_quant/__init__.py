"""mono-quant: turn PyTorch models into int8 artifacts.

The library is pure torch + safetensors + tqdm; the Celery worker, the scheduler and the
SQLAlchemy catalog live in subpackages that importing ``mono_quant`` does not load.

Example:
    >>> import torch
    >>> import mono_quant as mq
    >>> qw = mq.quantize_weight_int8(torch.randn(8, 16))
    >>> qw.data.dtype
    torch.int8
"""

from typing import TYPE_CHECKING

from mono_quant._lazy import lazy_exports
from mono_quant.errors import (
    BadConfigError,
    BadInputError,
    MonoQuantError,
    StorageError,
    TransientError,
)

if TYPE_CHECKING:  # the real imports, for type checkers and IDEs
    from mono_quant.io import load_model, load_quantized, read_info, save_model
    from mono_quant.pipeline import (
        CalibrationSource,
        JobSpec,
        ModelSource,
        parse_calibration_source,
        parse_model_source,
        quantize_checkpoint,
        run_pipeline,
    )
    from mono_quant.quant import (
        CalibrationResult,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MSEObserver,
        Observer,
        PercentileObserver,
        PerChannel,
        PerGroup,
        PerTensor,
        QuantConfig,
        QuantConv2d,
        QuantizationInfo,
        QuantizedTensor,
        QuantLinear,
        dequantize,
        fake_quantize,
        make_observer,
        quantize_model,
        quantize_weight_int8,
        quantize_with_qparams,
        run_calibration,
        select_layers,
    )

# Names are imported on first use (PEP 562): `import mono_quant` stays light, so the worker's
# main process and `mono-quant --help` never load torch; the job's process does, when it needs it.
_EXPORTS = {
    "CalibrationResult": "mono_quant.quant",
    "CalibrationSource": "mono_quant.pipeline",
    "JobSpec": "mono_quant.pipeline",
    "MSEObserver": "mono_quant.quant",
    "MinMaxObserver": "mono_quant.quant",
    "ModelSource": "mono_quant.pipeline",
    "MovingAverageMinMaxObserver": "mono_quant.quant",
    "Observer": "mono_quant.quant",
    "PerChannel": "mono_quant.quant",
    "PerGroup": "mono_quant.quant",
    "PerTensor": "mono_quant.quant",
    "PercentileObserver": "mono_quant.quant",
    "QuantConfig": "mono_quant.quant",
    "QuantConv2d": "mono_quant.quant",
    "QuantLinear": "mono_quant.quant",
    "QuantizationInfo": "mono_quant.quant",
    "QuantizedTensor": "mono_quant.quant",
    "dequantize": "mono_quant.quant",
    "fake_quantize": "mono_quant.quant",
    "load_model": "mono_quant.io",
    "load_quantized": "mono_quant.io",
    "make_observer": "mono_quant.quant",
    "parse_calibration_source": "mono_quant.pipeline",
    "parse_model_source": "mono_quant.pipeline",
    "quantize_checkpoint": "mono_quant.pipeline",
    "quantize_model": "mono_quant.quant",
    "quantize_weight_int8": "mono_quant.quant",
    "quantize_with_qparams": "mono_quant.quant",
    "read_info": "mono_quant.io",
    "run_calibration": "mono_quant.quant",
    "run_pipeline": "mono_quant.pipeline",
    "save_model": "mono_quant.io",
    "select_layers": "mono_quant.quant",
}
_SUBMODULES = ("catalog", "config", "demo_models", "errors", "io", "pipeline", "quant",
               "scheduler", "worker")
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)

__version__ = "0.1.0"

__all__ = [
    "BadConfigError",
    "BadInputError",
    "CalibrationResult",
    "CalibrationSource",
    "JobSpec",
    "MSEObserver",
    "MinMaxObserver",
    "ModelSource",
    "MonoQuantError",
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
    "StorageError",
    "TransientError",
    "dequantize",
    "fake_quantize",
    "load_model",
    "load_quantized",
    "make_observer",
    "parse_calibration_source",
    "parse_model_source",
    "quantize_checkpoint",
    "quantize_model",
    "quantize_weight_int8",
    "quantize_with_qparams",
    "read_info",
    "run_calibration",
    "run_pipeline",
    "save_model",
    "select_layers",
]
