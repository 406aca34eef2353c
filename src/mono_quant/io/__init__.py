"""Artifacts: save, load and inspect quantized models; model sources; streaming quantization.

Example:
    >>> from mono_quant.io import FORMATS, parse_model_source
    >>> FORMATS
    ('safetensors', 'pt', 'compressed-tensors')
    >>> parse_model_source("factory:mono_quant.demo_models:mlp?hidden=128").canonical()["kwargs"]
    {'hidden': 128}
"""

from mono_quant.io.formats import (
    FORMATS,
    INFO_KEY,
    _build_metadata,
    detect_format,
    load_model,
    load_quantized,
    read_info,
    save_model,
)
from mono_quant.io.hashing import sha256_path, size_path
from mono_quant.io.info import QuantizationInfo, library_versions
from mono_quant.io.sources import (
    CalibrationSource,
    ModelSource,
    parse_calibration_source,
    parse_model_source,
)
from mono_quant.io.streaming import checkpoint_files, quantize_checkpoint

__all__ = [
    "FORMATS",
    "INFO_KEY",
    "CalibrationSource",
    "ModelSource",
    "QuantizationInfo",
    "_build_metadata",
    "checkpoint_files",
    "detect_format",
    "library_versions",
    "load_model",
    "load_quantized",
    "parse_calibration_source",
    "parse_model_source",
    "quantize_checkpoint",
    "read_info",
    "save_model",
    "sha256_path",
    "size_path",
]
