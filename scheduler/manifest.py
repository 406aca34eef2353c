"""Manifests: the YAML file a user submits, validated and expanded into job specs.

```yaml
name: nightly                    # optional batch name (default: the file name)
labels: {team: research}         # optional, stored on the batch
defaults:                        # any QuantConfig field, plus format/device/calibration/…
  scheme: symmetric
  format: safetensors            # safetensors | pt | compressed-tensors
  device: cpu                    # the queue: cpu | gpu | gpu.<model> (e.g. gpu.h100)
matrix:                          # optional: lists expanded as a cross product
  scheme: [symmetric, asymmetric]
  granularity: [per_channel, per_group]
jobs:
  - name: mlp
    model: factory:mono_quant.demo_models:mlp
  - name: cnn
    model: {factory: "mono_quant.demo_models:cnn"}
    mode: static
    calibration: factory:mono_quant.demo_models:image_batches
    samples: 32
```

A job's own fields override ``defaults``; a matrix key may not also be set on a job (that would
silently collapse the matrix). Everything is validated before anything is written: errors name
the file, the field path (``jobs[3].calibration``) and what was expected.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from mono_quant.errors import BadConfigError, BadInputError, MonoQuantError
from mono_quant.io.layout import FORMATS
from mono_quant.quant.qconfig import QuantConfig

__all__ = ["FORMATS", "JobSpec", "Manifest", "load_manifest", "parse_manifest"]

#: libyaml's safe loader when PyYAML was built with it (10x faster on big manifests).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_QUANT_FIELDS = (
    "scheme", "granularity", "group_size", "mode", "weight_observer", "activation_observer",
    "activation_scheme", "include", "exclude", "min_layer_size", "smoothquant",
    "weight_algorithm", "gptq_damping", "gptq_block_size", "gptq_act_order", "target",
)
MATRIX_KEYS = (*_QUANT_FIELDS, "format", "device")


class _Settings(BaseModel):
    """Fields allowed in ``defaults`` and on each job (all optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    scheme: str | None = None
    granularity: str | None = None
    group_size: int | None = None
    mode: str | None = None
    weight_observer: str | None = None
    activation_observer: str | None = None
    activation_scheme: str | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    min_layer_size: int | None = None
    smoothquant: float | None = None
    weight_algorithm: str | None = None
    gptq_damping: float | None = None
    gptq_block_size: int | None = None
    gptq_act_order: bool | None = None
    target: dict[str, float] | None = None
    evaluation: str | dict[str, Any] | None = None
    format: str | None = None
    device: str | None = None
    calibration: str | dict[str, Any] | None = None
    samples: int | None = None
    max_attempts: int | None = None

    @field_validator("format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        if v is not None and v not in FORMATS:
            raise ValueError(f"expected one of {', '.join(FORMATS)}")
        return v

    @field_validator("samples", "max_attempts")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("expected a positive integer")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None:
            from mono_quant.worker.pinning import check_device_class

            try:
                check_device_class(v)
            except BadConfigError as e:
                raise ValueError(str(e).split(": ", 1)[1]) from e
        return v


class _Job(_Settings):
    name: str
    model: str | dict[str, Any]


class Manifest(BaseModel):
    """The parsed YAML (before expansion)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: int = 1
    name: str | None = None
    labels: dict[str, str] = {}
    defaults: _Settings = _Settings()
    matrix: dict[str, list[Any]] = {}
    jobs: list[_Job]

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only manifest version 1 exists")
        return v

    @field_validator("matrix")
    @classmethod
    def _matrix(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if key not in MATRIX_KEYS:
                raise ValueError(
                    f"key {key!r} cannot vary; expected some of {', '.join(MATRIX_KEYS)}"
                )
            if not values:
                raise ValueError(f"key {key!r} has an empty list of values")
            for i, value in enumerate(values):  # each value as strictly as in `defaults`
                try:
                    _Settings.model_validate({key: value})
                except ValidationError as e:
                    reason = e.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(f"{key}[{i}]={value!r}: {reason}") from None
        return v

    @field_validator("jobs")
    @classmethod
    def _jobs(cls, v: list[_Job]) -> list[_Job]:
        if not v:
            raise ValueError("expected at least one job")
        counts = Counter(j.name for j in v)
        dupes = sorted(n for n, c in counts.items() if c > 1)
        if dupes:
            raise ValueError(f"job names must be unique; repeated: {', '.join(dupes)}")
        return v


@dataclass(frozen=True)
class JobSpec:
    """One job to run: what to load, how to quantize it, where it runs and how it is written."""

    name: str
    model: dict[str, Any]  # canonical model source
    model_source: str  # the same, as the user wrote it (for people)
    config: QuantConfig
    format: str = "safetensors"
    queue: str = "cpu"
    calibration: dict[str, Any] | None = None  # canonical calibration source
    samples: int | None = None
    max_attempts: int = 3
    evaluation: dict[str, Any] | None = None  # canonical evaluation text (perplexity)

    def payload(self) -> dict[str, Any]:
        """What the job row stores and the worker needs (JSON)."""
        payload = {
            "model": self.model,
            "quant": self.config.to_dict(),
            "format": self.format,
            "calibration": self.calibration,
            "samples": self.samples,
        }
        if self.evaluation is not None:  # absent otherwise: older keys stay the same
            payload["evaluation"] = self.evaluation
        return payload

    @cached_property
    def idempotency_key(self) -> str:
        """sha256 of the canonical model source, quantization config, format and calibration.

        The queue is not part of it: the artifact is the same wherever it is computed.
        """
        text = json.dumps(self.payload(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "dict[str,any]", "function-after[_format(), str]"):
            continue  # pydantic's union-member labels, not a field
        else:
            out += f".{part}" if out else str(part)
    return out


def _validation_message(source: str, err: ValidationError) -> str:
    lines = []
    seen = set()
    for e in err.errors():
        path = _path(tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p)))
        if path in seen:
            continue
        seen.add(path)
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        got_s = "" if e["type"] == "missing" else f" (got {got!r})" if not isinstance(got, dict) \
            else ""
        lines.append(f"{source}: {path or '<top>'}: {msg}{got_s}")
    return "\n".join(lines)


def _needs_calibration(config: QuantConfig) -> str | None:
    """The option that needs calibration data, named as the manifest spells it."""
    if config.mode == "static":
        return "mode 'static'"
    if config.smoothquant is not None:
        return f"smoothquant {config.smoothquant}"
    if config.weight_algorithm == "gptq":
        return "weight_algorithm 'gptq'"
    return None


def _expand(
    manifest: Manifest, source: str, default_attempts: int, base_dir: Path | None
) -> list[JobSpec]:
    from mono_quant.io.evaluation import parse_evaluation_source
    from mono_quant.io.sources import parse_calibration_source, parse_model_source

    defaults = manifest.defaults.model_dump(exclude_none=True)
    keys = list(manifest.matrix)
    combos = list(itertools.product(*manifest.matrix.values())) or [()]
    specs: list[JobSpec] = []
    errors: list[str] = []
    for i, job in enumerate(manifest.jobs):
        own = job.model_dump(exclude_none=True, exclude={"name", "model"})
        clash = sorted(set(own) & set(keys))
        if clash:
            errors.append(f"{source}: jobs[{i}].{clash[0]}: is a matrix key; remove it from the "
                          "job or from the matrix")
            continue
        try:
            model = parse_model_source(job.model, base_dir=base_dir)
        except MonoQuantError as e:
            errors.append(f"{source}: jobs[{i}].model: {e}")
            continue
        for combo in combos:
            varied = dict(zip(keys, combo, strict=True))
            values = {**defaults, **varied, **own}
            suffix = ",".join(f"{k}={v}" for k, v in varied.items())
            where = f"jobs[{i}]" + (f" (matrix {suffix})" if suffix else "")
            try:
                config = QuantConfig(**{k: values[k] for k in _QUANT_FIELDS if k in values})
            except BadConfigError as e:
                errors.append(f"{source}: {where}: {e}")
                continue
            calibration = None
            if "calibration" in values:
                try:
                    calibration = parse_calibration_source(
                        values["calibration"], base_dir=base_dir
                    ).canonical()
                except MonoQuantError as e:
                    errors.append(f"{source}: {where}.calibration: {e}")
                    continue
            needs = _needs_calibration(config)
            if needs and calibration is None:
                errors.append(f"{source}: {where}.calibration: {needs} needs a "
                              "calibration source (in the job or in defaults)")
                continue
            evaluation = None
            if "evaluation" in values:
                try:
                    evaluation = parse_evaluation_source(
                        values["evaluation"], base_dir=base_dir).canonical()
                except MonoQuantError as e:
                    errors.append(f"{source}: {where}.evaluation: {e}")
                    continue
            specs.append(JobSpec(
                name=f"{job.name}[{suffix}]" if suffix else job.name,
                model=model.canonical(),
                model_source=job.model if isinstance(job.model, str) else str(model),
                config=config,
                format=values.get("format", "safetensors"),
                queue=values.get("device", "cpu"),
                calibration=calibration,
                samples=values.get("samples"),
                max_attempts=values.get("max_attempts", default_attempts),
                evaluation=evaluation,
            ))
    if errors:
        raise BadInputError("invalid manifest:\n" + "\n".join(errors))
    return specs


def parse_manifest(
    data: Any, source: str = "<manifest>", default_attempts: int = 3,
    base_dir: Path | None = None,
) -> tuple[Manifest, list[JobSpec]]:
    """Validate a manifest mapping and expand it; raises BadInputError listing every problem.

    Relative paths in model and calibration sources are resolved against ``base_dir`` (the
    manifest's folder when loaded from a file).
    """
    if not isinstance(data, dict):
        raise BadInputError(f"{source}: expected a mapping with a 'jobs' list at the top level")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        raise BadInputError("invalid manifest:\n" + _validation_message(source, e)) from e
    return manifest, _expand(manifest, source, default_attempts, base_dir)


def load_manifest(
    path: str | Path, default_attempts: int = 3
) -> tuple[Manifest, list[JobSpec], str]:
    """Read, validate and expand a YAML manifest; also returns the sha256 of its bytes."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BadInputError(f"{path}: cannot read the manifest ({e.strerror})") from e
    try:
        data = json.loads(raw)  # JSON is YAML too, and generated manifests are often JSON
    except ValueError:
        try:
            data = yaml.load(raw, Loader=_Loader)  # a safe loader (C or pure Python)
        except yaml.YAMLError as e:
            raise BadInputError(f"{path}: not valid YAML: {e}") from e
    manifest, specs = parse_manifest(data, str(path), default_attempts, path.parent.resolve())
    return manifest, specs, hashlib.sha256(raw).hexdigest()
