"""``QuantizationInfo``: what was done to a model, persisted with every artifact.

The same versioned JSON goes into the safetensors header (``mono_quant.info``), the ``.pt``
payload and the catalog row. Decoding goes through an allow-list of fields and types, so a
file that is not ours fails with a message that names the field, never with a KeyError.

Non-finite floats (an SQNR of ``inf`` for a lossless layer) are encoded as
``{"__float__": "inf"}`` so the JSON stays strict (PostgreSQL's ``json`` rejects ``Infinity``).

Example:
    >>> from mono_quant import QuantConfig, QuantizationInfo
    >>> info = QuantizationInfo(QuantConfig(), selected_layers=["fc"], metrics={"x": float("inf")})
    >>> QuantizationInfo.from_json(info.to_json()) == info
    True
    >>> info.scheme, info.per_channel
    ('symmetric', True)
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar

from mono_quant.errors import BadConfigError, BadInputError
from mono_quant.quant.qconfig import QuantConfig

__all__ = ["QuantizationInfo", "layer_order", "library_versions"]


def layer_order(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of a qualified layer name: its dot-separated parts, numbers as numbers.

    Example:
        >>> sorted(["m.10.fc", "m.2.fc", "lm_head"], key=layer_order)
        ['lm_head', 'm.2.fc', 'm.10.fc']
    """
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in name.split("."))


def library_versions() -> dict[str, str]:
    """Versions of the software that produced an artifact."""
    versions = {"python": platform.python_version()}
    for dist in ("mono-quant", "torch", "safetensors"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}  # 'inf', '-inf', 'nan'
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__float__"} and value["__float__"] in ("inf", "-inf", "nan"):
            return float(value["__float__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


@dataclass
class QuantizationInfo:
    """The record of one quantization: config, selected layers, calibration, metrics.

    The seed's flat names (``dtype``, ``scheme``, ``per_channel``, ``granularity``,
    ``group_size``, ``mode``, ``observer``) are read from ``config`` so they cannot disagree.
    """

    config: QuantConfig
    selected_layers: list[str] = field(default_factory=list)
    calibration_samples: int = 0
    library_versions: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    dtype: str = "int8"

    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        # One canonical order, whoever built the record: the in-memory path lists layers in
        # module order, the streaming one in checkpoint order; the same selection must give
        # the same artifact bytes (numbers compared as numbers: layers.2 before layers.10).
        self.selected_layers = sorted(self.selected_layers, key=layer_order)

    scheme = property(lambda self: self.config.scheme)
    granularity = property(lambda self: self.config.granularity)
    group_size = property(lambda self: self.config.group_size)
    per_channel = property(lambda self: self.config.granularity == "per_channel")
    mode = property(lambda self: self.config.mode)
    observer = property(lambda self: self.config.weight_observer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "mono-quant",
            "version": self.VERSION,
            "dtype": self.dtype,
            "config": self.config.to_dict(),
            "selected_layers": list(self.selected_layers),
            "calibration_samples": self.calibration_samples,
            "library_versions": dict(self.library_versions),
            "metrics": _encode(self.metrics),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any, source: str = "QuantizationInfo") -> QuantizationInfo:
        def bad(msg: str) -> BadInputError:
            return BadInputError(f"{source}: {msg}")

        if not isinstance(data, dict) or data.get("format") != "mono-quant":
            raise bad("not mono-quant metadata (expected a JSON object with format='mono-quant')")
        version = data.get("version")
        if version != cls.VERSION:
            raise bad(
                f"metadata version {version!r} is not supported (this mono-quant reads version "
                f"{cls.VERSION}); upgrade mono-quant"
            )
        known = {"format", "version", "dtype", "config", "selected_layers",
                 "calibration_samples", "library_versions", "metrics"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise bad(f"unknown field(s) {', '.join(unknown)}")
        layers = data.get("selected_layers", [])
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise bad("field 'selected_layers': expected a list of strings")
        samples = data.get("calibration_samples", 0)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise bad("field 'calibration_samples': expected a non-negative integer")
        versions = data.get("library_versions", {})
        if not isinstance(versions, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in versions.items()
        ):
            raise bad("field 'library_versions': expected an object of strings")
        metrics = data.get("metrics", {})
        if not isinstance(metrics, dict):
            raise bad("field 'metrics': expected an object")
        dtype = data.get("dtype", "int8")
        if dtype != "int8":
            raise bad(f"field 'dtype': expected 'int8', got {dtype!r}")
        try:
            config = QuantConfig.from_dict(data.get("config", {}))
        except BadConfigError as e:
            raise bad(f"field 'config': {e}") from e
        return cls(config, list(layers), samples, dict(versions), _decode(metrics), dtype)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "QuantizationInfo") -> QuantizationInfo:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInputError(f"{source}: metadata is not valid JSON ({e})") from e
        return cls.from_dict(data, source)
