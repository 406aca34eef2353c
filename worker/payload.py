"""The job payload a worker runs, rebuilt and validated from the catalog row.

A job row's ``config`` column holds :meth:`JobSpec.payload` (JSON). Whoever can write the
catalog can change it, so the worker trusts nothing in it: every field is parsed back into
its typed form (sources, :class:`~mono_quant.quant.qconfig.QuantConfig`, format), factory
sources are checked against the operator's allow-list **before anything is imported**, and
what the catalog records as the artifact's model source is derived from this same parsed
payload — the row's separate ``model_source`` column is never used to describe what ran.

Example:
    >>> from mono_quant.io.allowlist import FactoryAllowList
    >>> payload = {"model": {"scheme": "factory", "target": "os:system",
    ...                      "kwargs": {"command": "id"}}, "quant": {}}
    >>> read_payload(payload, FactoryAllowList()).format
    Traceback (most recent call last):
    ...
    mono_quant.errors.BadConfigError: {"factory": "os:system", ...}: factory module 'os' is \
not allowed by MONO_QUANT_ALLOWED_FACTORIES (mono_quant.*); add a pattern for it there if \
you trust its code
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mono_quant.errors import BadInputError, MonoQuantError
from mono_quant.io.allowlist import FactoryAllowList
from mono_quant.io.layout import FORMATS
from mono_quant.io.sources import (
    CalibrationSource,
    ModelSource,
    parse_calibration_source,
    parse_model_source,
)
from mono_quant.quant.qconfig import QuantConfig

__all__ = ["JobInputs", "describe_model", "read_payload"]

_KEYS = frozenset({"model", "quant", "format", "calibration", "samples"})


@dataclass(frozen=True)
class JobInputs:
    """What one job runs, typed: everything the worker uses comes from here."""

    model: ModelSource
    config: QuantConfig
    format: str
    calibration: CalibrationSource | None
    samples: int | None
    factories: FactoryAllowList

    @property
    def model_source(self) -> str:
        """The model source as one string, for the catalog and ``status``."""
        return str(self.model)


def read_payload(payload: Any, factories: FactoryAllowList) -> JobInputs:
    """Parse and check a job row's payload; BadConfigError for a factory outside
    ``factories``, BadInputError for anything malformed."""
    if not isinstance(payload, Mapping):
        raise BadInputError(f"job payload: expected a mapping, got {type(payload).__name__}")
    unknown = sorted(set(payload) - _KEYS)
    if unknown or "model" not in payload:
        raise BadInputError(
            f"job payload: unexpected field(s) {', '.join(map(repr, unknown[:5]))}" if unknown
            else "job payload: no 'model' field"
        )
    model = parse_model_source(payload["model"], factories=factories)
    calibration = None
    if payload.get("calibration") is not None:
        calibration = parse_calibration_source(payload["calibration"], factories=factories)
    fmt = payload.get("format", "safetensors")
    if fmt not in FORMATS:
        raise BadInputError(f"job payload: format {fmt!r}: expected one of {', '.join(FORMATS)}")
    samples = payload.get("samples")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                or samples < 1):
        raise BadInputError(f"job payload: samples={samples!r}: expected a positive integer")
    quant = payload.get("quant")
    if not isinstance(quant, Mapping):
        raise BadInputError("job payload: 'quant' must be a QuantConfig mapping")
    return JobInputs(model, QuantConfig.from_dict(dict(quant)), fmt, calibration, samples,
                     factories)


def describe_model(payload: Any) -> str:
    """The model source of a job's payload as one string (what ``status`` shows); nothing is
    imported. A payload that does not parse says so instead of showing a stale label."""
    try:
        return str(parse_model_source(payload["model"]))
    except (MonoQuantError, KeyError, TypeError):
        return "(invalid job payload)"
