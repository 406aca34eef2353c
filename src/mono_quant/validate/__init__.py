"""Validation of quantized models: SQNR, cosine, sizes and range checks."""

from mono_quant.validate.metrics import (
    ErrorAccumulator,
    check_int8_ranges,
    cosine_similarity,
    first_tensor,
    sqnr_db,
    state_dict_bytes,
)

__all__ = [
    "ErrorAccumulator",
    "check_int8_ranges",
    "cosine_similarity",
    "first_tensor",
    "sqnr_db",
    "state_dict_bytes",
]
