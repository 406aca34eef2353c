"""Artifacts: ``QuantizationInfo`` and (with the formats) saving and loading models."""

from mono_quant.io.info import QuantizationInfo, library_versions

__all__ = ["QuantizationInfo", "library_versions"]
