"""Artifact formats: save, load and inspect quantized models (safetensors, .pt,
compressed-tensors), their headers, atomic writes and hashes. Nothing else: model and
calibration sources and the streaming quantizer are the pipeline's (:mod:`mono_quant.pipeline`).

Example:
    >>> from mono_quant.io import FORMATS, detect_format
    >>> FORMATS
    ('safetensors', 'pt', 'compressed-tensors')
    >>> detect_format("model.pt")
    'pt'
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
    from mono_quant.quant.info import QuantizationInfo, library_versions

_EXPORTS = {
    "FORMATS": "mono_quant.io.layout",
    "INFO_KEY": "mono_quant.io.formats",
    "QuantizationInfo": "mono_quant.quant.info",
    "_build_metadata": "mono_quant.io.formats",
    "detect_format": "mono_quant.io.layout",
    "library_versions": "mono_quant.quant.info",
    "load_model": "mono_quant.io.formats",
    "load_quantized": "mono_quant.io.formats",
    "read_info": "mono_quant.io.formats",
    "save_model": "mono_quant.io.formats",
    "sha256_path": "mono_quant.io.hashing",
    "size_path": "mono_quant.io.hashing",
}
_SUBMODULES = ("formats", "hashing", "interop", "layout")
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)

__all__ = [
    "FORMATS",
    "INFO_KEY",
    "QuantizationInfo",
    "_build_metadata",
    "detect_format",
    "library_versions",
    "load_model",
    "load_quantized",
    "read_info",
    "save_model",
    "sha256_path",
    "size_path",
]
