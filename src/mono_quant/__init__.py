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

from mono_quant.errors import (
    BadConfigError,
    BadInputError,
    MonoQuantError,
    StorageError,
    TransientError,
)
from mono_quant.io import (
    CalibrationSource,
    ModelSource,
    load_model,
    load_quantized,
    parse_calibration_source,
    parse_model_source,
    quantize_checkpoint,
    read_info,
    save_model,
)
from mono_quant.io.info import QuantizationInfo
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

__version__ = "0.1.0"

__all__ = [
    "BadConfigError",
    "BadInputError",
    "CalibrationResult",
    "CalibrationSource",
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
    "save_model",
    "select_layers",
]
