"""Artifacts: save, load and inspect quantized models; model sources; streaming quantization.

Example:
    >>> from mono_quant.io import FORMATS, parse_model_source
    >>> FORMATS
    ('safetensors', 'pt', 'compressed-tensors')
    >>> parse_model_source("factory:mono_quant.demo_models:mlp?hidden=128").canonical()["kwargs"]
    {'hidden': 128}
"""

from typing import TYPE_CHECKING

from mono_quant._lazy import lazy_exports

if TYPE_CHECKING:  # the real imports, for type checkers and IDEs
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

_EXPORTS = {
    "CalibrationSource": "mono_quant.io.sources",
    "FORMATS": "mono_quant.io.layout",
    "INFO_KEY": "mono_quant.io.formats",
    "ModelSource": "mono_quant.io.sources",
    "QuantizationInfo": "mono_quant.io.info",
    "_build_metadata": "mono_quant.io.formats",
    "checkpoint_files": "mono_quant.io.streaming",
    "detect_format": "mono_quant.io.layout",
    "library_versions": "mono_quant.io.info",
    "load_model": "mono_quant.io.formats",
    "load_quantized": "mono_quant.io.formats",
    "parse_calibration_source": "mono_quant.io.sources",
    "parse_model_source": "mono_quant.io.sources",
    "quantize_checkpoint": "mono_quant.io.streaming",
    "read_info": "mono_quant.io.formats",
    "save_model": "mono_quant.io.formats",
    "sha256_path": "mono_quant.io.hashing",
    "size_path": "mono_quant.io.hashing",
}
_SUBMODULES = ("formats", "hashing", "info", "layout", "sources", "streaming")
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)

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
