"""``QuantConfig``: what to quantize and how. Frozen, validated, versioned JSON.

Example:
    >>> from mono_quant import QuantConfig
    >>> cfg = QuantConfig(scheme="asymmetric", granularity="per_group", group_size=64,
    ...                   exclude=["re:.*lm_head"])
    >>> QuantConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field
from typing import Any, ClassVar

from mono_quant.errors import BadConfigError
from mono_quant.quant._options import (
    ADVANCED_DEFAULTS,
    TARGET_METRICS,
    WEIGHT_ALGORITHMS,
    check_advanced,
)
from mono_quant.quant.specs import Granularity, as_granularity, check_scheme

__all__ = ["MODES", "OBSERVERS", "TARGET_METRICS", "WEIGHT_ALGORITHMS", "QuantConfig"]

MODES = ("weight_only", "static", "dynamic")
#: Observer names accepted by the config (the allow-list used to decode them).
OBSERVERS = ("minmax", "moving_average", "percentile", "mse")
GRANULARITIES = ("per_tensor", "per_channel", "per_group")


def _patterns(value: Any, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise BadConfigError(f"{field}={value!r}: expected a list of strings")
    for p in value:
        if not p:
            raise BadConfigError(f"{field}: empty pattern")
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                raise BadConfigError(
                    f"{field}: {p!r} is not a valid regular expression: {e}"
                ) from e
    return tuple(value)


def _matches(pattern: str, name: str, type_name: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return type_name == pattern or fnmatch.fnmatchcase(name, pattern)


@dataclass(frozen=True)
class QuantConfig:
    """How a model is quantized.

    Layer patterns (``include`` / ``exclude``) match a layer when the pattern is its class name
    (``"Linear"``, ``"Conv2d"``), a glob over its qualified name (``"encoder.*.fc1"``), or —
    prefixed with ``re:`` — a regular expression matched at the start of the name
    (``"re:.*lm_head"``, as compressed-tensors does). An empty ``include`` selects every
    ``nn.Linear`` and ``nn.Conv2d``; ``exclude`` always wins.
    """

    #: Weight scheme: "symmetric" (zero point 0, [-127, 127]) or "asymmetric" ([-128, 127]).
    scheme: str = "symmetric"
    #: "per_tensor" | "per_channel" (output axis) | "per_group" (input axis, group_size).
    granularity: str = "per_channel"
    #: Group size for per_group (default 128); normalised to None for other granularities.
    group_size: int | None = None
    #: "weight_only" (int8 weights, float activations), "static" (W8A8, per-tensor input
    #: scales from calibration) or "dynamic" (W8A8, symmetric per-token input scales computed
    #: at run time, as vLLM's CompressedTensorsW8A8Int8 serves it).
    mode: str = "weight_only"
    #: Observer for weight ranges; one of OBSERVERS.
    weight_observer: str = "minmax"
    #: Observer for activation ranges in static mode; one of OBSERVERS.
    activation_observer: str = "minmax"
    #: Scheme of the activation qparams: None means "asymmetric" for static, "symmetric" for
    #: dynamic (the only scheme dynamic supports); resolved at construction.
    activation_scheme: str | None = None
    #: Layers to quantize (class names, name globs, "re:" regexes); empty means all.
    include: tuple[str, ...] = ()
    #: Layers never to quantize; wins over include.
    exclude: tuple[str, ...] = ()
    #: Skip layers whose weight has fewer elements than this.
    min_layer_size: int = 0
    #: SmoothQuant migration strength alpha in (0, 1); None is off (static and dynamic only).
    smoothquant: float | None = None
    #: How weights are rounded: "rtn" (round to nearest) or "gptq" (needs calibration data).
    weight_algorithm: str = "rtn"
    #: GPTQ damping, as a fraction of the mean Hessian diagonal added to the diagonal.
    gptq_damping: float = 0.01
    #: GPTQ columns updated together (lazy batch updates); results do not depend on it.
    gptq_block_size: int = 128
    #: GPTQ: quantize columns in order of decreasing Hessian diagonal.
    gptq_act_order: bool = False
    #: Accuracy target: {"output_cosine": 0.999}, {"output_sqnr_db": 30} and/or
    #: {"perplexity_increase": 0.5}; the fewest sensitive layers are kept in float to meet it.
    #: Stored as sorted (metric, value) pairs so the config stays hashable.
    #: (``metadata["input"]``: the type callers and manifests give it.)
    target: tuple[tuple[str, float], ...] | None = dataclass_field(
        default=None, metadata={"input": dict[str, float]})

    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        check_scheme(self.scheme, "scheme")
        if self.activation_scheme is None:
            act = "symmetric" if self.mode == "dynamic" else "asymmetric"
            object.__setattr__(self, "activation_scheme", act)
        check_scheme(self.activation_scheme, "activation_scheme")
        if self.granularity not in GRANULARITIES:
            raise BadConfigError(
                f"granularity={self.granularity!r}: expected one of {', '.join(GRANULARITIES)}"
            )
        if self.granularity == "per_group":
            gs = 128 if self.group_size is None else self.group_size
            if isinstance(gs, bool) or not isinstance(gs, int) or gs < 1:
                raise BadConfigError(f"group_size={self.group_size!r}: expected a positive integer")
            object.__setattr__(self, "group_size", gs)
        else:
            object.__setattr__(self, "group_size", None)
        if self.mode not in MODES:
            raise BadConfigError(f"mode={self.mode!r}: expected one of {', '.join(MODES)}")
        for field in ("weight_observer", "activation_observer"):
            if getattr(self, field) not in OBSERVERS:
                raise BadConfigError(
                    f"{field}={getattr(self, field)!r}: expected one of {', '.join(OBSERVERS)}"
                )
        object.__setattr__(self, "include", _patterns(self.include, "include"))
        object.__setattr__(self, "exclude", _patterns(self.exclude, "exclude"))
        m = self.min_layer_size
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise BadConfigError(f"min_layer_size={m!r}: expected a non-negative integer")
        check_advanced(self)

    def selects(self, name: str, type_name: str, numel: int) -> bool:
        """Whether a layer called ``name``, of class ``type_name``, with ``numel`` weight
        elements is quantized: the one place the include/exclude/size rules live (in-memory
        and streaming quantization both ask it)."""
        if self.include and not any(_matches(p, name, type_name) for p in self.include):
            return False
        if any(_matches(p, name, type_name) for p in self.exclude):
            return False
        return numel >= self.min_layer_size

    @property
    def granularity_spec(self) -> Granularity:
        return as_granularity(self.granularity, self.group_size)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": self.VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ADVANCED_DEFAULTS and value == ADVANCED_DEFAULTS[f.name]:
                continue  # left out at their defaults: digests of older configs stay the same
            if f.name == "target":
                d[f.name] = dict(value)
            else:
                d[f.name] = list(value) if isinstance(value, tuple) else value
        return d

    @property
    def target_dict(self) -> dict[str, float]:
        """The accuracy target as a dict (empty when there is none)."""
        return dict(self.target or ())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        """Decode a config dict; unknown fields and newer versions are errors."""
        if not isinstance(data, dict):
            raise BadConfigError(
                f"quantization config: expected a mapping, got {type(data).__name__}"
            )
        data = dict(data)
        version = data.pop("version", cls.VERSION)
        if version != cls.VERSION:
            raise BadConfigError(
                f"quantization config version {version!r} is not supported (this mono-quant "
                f"reads version {cls.VERSION}); upgrade mono-quant"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadConfigError(
                f"unknown quantization config field(s) {', '.join(unknown)}; expected some of "
                f"{', '.join(sorted(known))}"
            )
        return cls(**data)
