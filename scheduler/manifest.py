"""Manifests: the YAML file a user submits, validated and expanded into scheduled jobs.

```yaml
name: nightly                    # optional batch name (default: the file name)
labels: {team: research}         # optional, stored on the batch
defaults:                        # any QuantConfig field, plus format/queue/calibration/…
  scheme: symmetric
  format: safetensors            # safetensors | pt | compressed-tensors
  queue: cpu                     # cpu | gpu | gpu.<model> (e.g. gpu.h100)
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
  - name: llama
    model: hf:./tiny-llama
    stream: true                 # always tensor by tensor (false: never; unset: auto)
  - name: big
    model: hf:./big-llama
    max_shard_size: 5GB          # shards + model.safetensors.index.json (or bytes)
```

The quantization keys are :class:`~mono_quant.quant.qconfig.QuantConfig`'s fields, derived
from it: a field added there is a manifest key with no second edit. Each job becomes one
:class:`~mono_quant.pipeline.spec.JobSpec` (what the worker runs) plus where and how often it
runs (:class:`ScheduledJob`). A job's own fields override ``defaults``; a matrix key may not
also be set on a job (that would silently collapse the matrix). Everything is validated
before anything is written: errors name the file, the field path (``jobs[3].calibration``)
and what was expected.

Renamed keys (the old spelling still works and prints a deprecation notice):
``device`` → ``queue`` (it names the Celery queue; a job's ``device`` is where it ran).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import types
import typing
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model, field_validator

from mono_quant.config import DEFAULT_MAX_JOBS_PER_BATCH
from mono_quant.errors import BadConfigError, BadInputError, MonoQuantError
from mono_quant.io.layout import FORMATS
from mono_quant.pipeline.allowlist import FactoryAllowList
from mono_quant.pipeline.content_cache import ContentHashCache
from mono_quant.pipeline.evaluation import parse_evaluation_source
from mono_quant.pipeline.spec import PIPELINES, JobSpec, needs_calibration
from mono_quant.quant.qconfig import QuantConfig
from mono_quant.scheduler.bounds import (
    check_document,
    clip,
    count_jobs,
    read_bytes,
    read_checked,
)
from mono_quant.scheduler.columns import check_batch, check_job, check_settings, name_fits

__all__ = [
    "FORMATS", "Manifest", "ScheduledJob", "load_manifest", "parse_manifest", "stream_manifest",
]

#: Problems listed in one "invalid manifest" error; the rest are counted.
MAX_PROBLEMS = 20

#: The quantization keys: QuantConfig's fields, in their order.
QUANT_FIELDS = tuple(f.name for f in dataclasses.fields(QuantConfig))
#: Keys renamed, old spelling → new; the old one is still read, with a deprecation notice.
RENAMED = {"device": "queue"}
MATRIX_KEYS = (*QUANT_FIELDS, "format", "queue", "stream", "pipeline", *RENAMED)


def _manifest_type(hint: Any) -> Any:
    """A QuantConfig field's type as a manifest accepts it (YAML lists for tuples), optional."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        hint = list[typing.get_args(hint)[0]]
    elif origin in (typing.Union, types.UnionType):
        parts = [_manifest_type(a) for a in typing.get_args(hint) if a is not type(None)]
        hint = parts[0] if len(parts) == 1 else typing.Union[tuple(parts)]  # noqa: UP007
    return hint | None


class _Common(BaseModel):
    """The fields that are not QuantConfig's, allowed in ``defaults`` and on each job."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: str | None = None
    queue: str | None = None
    device: str | None = None  # deprecated spelling of `queue`
    calibration: str | dict[str, Any] | None = None
    evaluation: str | dict[str, Any] | None = None
    samples: int | None = None
    stream: bool | None = None
    max_shard_size: int | str | None = None
    pipeline: str | None = None
    max_attempts: int | None = None

    @field_validator("format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        if v is not None and v not in FORMATS:
            raise ValueError(f"expected one of {', '.join(FORMATS)}")
        return v

    @field_validator("pipeline")
    @classmethod
    def _pipeline(cls, v: str | None) -> str | None:
        if v is not None and v not in PIPELINES:
            raise ValueError(f"expected one of {', '.join(PIPELINES)}")
        return v

    @field_validator("samples", "max_attempts")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("expected a positive integer")
        return v

    @field_validator("queue", "device")
    @classmethod
    def _queue(cls, v: str | None) -> str | None:
        if v is not None:
            from mono_quant.worker.pinning import check_device_class

            try:
                check_device_class(v)
            except BadConfigError as e:
                raise ValueError(str(e).split(": ", 1)[1]) from e
        return v


_hints = typing.get_type_hints(QuantConfig)
#: Fields allowed in ``defaults`` and on each job (all optional): QuantConfig's and _Common's.
_Settings = create_model(  # type: ignore[call-overload]
    "_Settings", __base__=_Common,
    **{f.name: (_manifest_type(f.metadata.get("input", _hints[f.name])), None)
       for f in dataclasses.fields(QuantConfig)},
)


class _Job(_Settings):  # type: ignore[misc,valid-type]
    name: str
    model: str | dict[str, Any]


class Manifest(BaseModel):
    """The parsed YAML (before expansion)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: int = 1
    name: str | None = None
    labels: dict[str, str] = {}
    defaults: _Settings = _Settings()  # type: ignore[valid-type]
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
            seen = Counter(json.dumps(x, sort_keys=True, default=str) for x in values)
            repeated = sorted(x for x, n in seen.items() if n > 1)
            if repeated:
                raise ValueError(f"key {key!r} repeats the value {clip(repeated[0], 80)} "
                                 "(each value would run the same jobs twice)")
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
class ScheduledJob:
    """One job of a batch: its :class:`JobSpec` and where and how often it may run."""

    name: str
    spec: JobSpec
    model_source: str  # the model source as one string (derived from the spec: never disagrees)
    queue: str = "cpu"
    max_attempts: int = 3
    evaluation: dict[str, Any] | None = None  # canonical evaluation text (perplexity)

    @property
    def idempotency_key(self) -> str:
        return self.spec.idempotency_key


def _weights_digest(model: Any, cache: ContentHashCache | None) -> str | None:
    """The weight digest of an ``hf:`` source whose folder is here (a hub id resolves from
    the local cache; a folder only the workers see cannot be digested at submit); ``cache``
    keeps the files' content hashes between submits."""
    if model.scheme != "hf":
        return None
    from mono_quant.pipeline.digest import weights_digest

    try:
        folder = model.folder
    except MonoQuantError:
        return None
    return weights_digest(folder, cache) if Path(folder).is_dir() else None


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
        got_s = "" if e["type"] == "missing" else f" (got {clip(repr(got), 200)})" \
            if not isinstance(got, dict) else ""
        lines.append(f"{source}: {clip(path, 200) or '<top>'}: {clip(msg, 500)}{got_s}")
    return _problems(lines)


def _problems(lines: list[str]) -> str:
    """The first MAX_PROBLEMS lines (and how many more there are), cut to a sane length."""
    shown = lines[:MAX_PROBLEMS]
    if len(lines) > MAX_PROBLEMS:
        shown.append(f"... and {len(lines) - MAX_PROBLEMS} more problem(s)")
    return clip("\n".join(shown))


def _renamed(values: dict[str, Any]) -> dict[str, Any]:
    """Read deprecated spellings (``device``) as their new names."""
    for old, new in RENAMED.items():
        if old in values:
            if new in values and values[new] != values[old]:
                raise BadConfigError(f"{old!r} and {new!r} disagree; keep only {new!r}")
            values[new] = values.pop(old)
    return values


def _warn_renamed(manifest: Manifest, source: str) -> None:
    """One deprecation notice per old spelling used anywhere in the manifest."""
    for old, new in RENAMED.items():  # a field is dumped unless None: read it, no dump
        if (old in manifest.matrix or getattr(manifest.defaults, old) is not None
                or any(getattr(job, old) is not None for job in manifest.jobs)):
            warnings.warn(f"{source}: manifest key {old!r} is deprecated; write {new!r}",
                          FutureWarning, stacklevel=3)


class _Expander:
    """Turns one manifest's jobs × matrix into ScheduledJobs, collecting every error."""

    def __init__(self, manifest: Manifest, source: str, default_attempts: int,
                 base_dir: Path | None, factories: FactoryAllowList | None = None,
                 hash_cache: ContentHashCache | None = None) -> None:
        self.manifest, self.source = manifest, source
        self.default_attempts, self.base_dir = default_attempts, base_dir
        self.factories, self.hash_cache = factories, hash_cache
        self.errors: list[str] = []
        self.refused: list[str] = []  # factories outside the allow-list: configuration
        self._calibrations: dict[str, Any] = {}
        self._configs: dict[str, QuantConfig] = {}  # one per distinct set of values
        self._shared: dict[int, tuple[Any, ...]] = {}  # spec parts by id of a combination's values

    def calibration(self, value: Any) -> Any:
        """Parsed once per distinct value (a matrix repeats it for every combination)."""
        from mono_quant.pipeline.sources import parse_calibration_source

        key = json.dumps(value, sort_keys=True)
        if key not in self._calibrations:
            self._calibrations[key] = parse_calibration_source(value, base_dir=self.base_dir,
                                                               factories=self.factories)
        return self._calibrations[key]

    def spec(self, model: Any, values: dict[str, Any], where: str, digest: str | None = None,
             *, shared: bool = False) -> tuple[JobSpec, dict[str, Any]] | None:
        """The job's spec and its values (old spellings renamed), or None with its problems
        recorded. ``shared``: ``values`` is a
        matrix combination's own dict, used by every job without values of its own, so what
        is built from it alone (config, calibration, evaluation) is built once."""
        parts = self._shared.get(id(values)) if shared else None
        if parts is None:
            parts = self._parts(values, where)
            if parts is None:
                return None
            if shared:
                self._shared[id(values)] = parts
        renamed, config, calibration, evaluation = parts
        try:
            return JobSpec(model=model, config=config, calibration=calibration,
                           format=renamed.get("format", "safetensors"),
                           samples=renamed.get("samples"), stream=renamed.get("stream"),
                           weights_digest=digest, evaluation=evaluation,
                           max_shard_size=renamed.get("max_shard_size"),
                           pipeline=renamed.get("pipeline", "auto")), renamed
        except BadConfigError as e:
            self.errors.append(f"{self.source}: {where}: {e}")
            return None

    def _parts(self, values: dict[str, Any], where: str) -> tuple[Any, ...] | None:
        """(values with their new names, config, calibration, evaluation), or None."""
        try:
            values = _renamed(dict(values))
            quant = {k: values[k] for k in QUANT_FIELDS if k in values}
            config = self._configs.get(repr(quant)) or QuantConfig(**quant)
            self._configs[repr(quant)] = config
        except BadConfigError as e:
            self.errors.append(f"{self.source}: {where}: {e}")
            return None
        calibration = None
        if "calibration" in values:
            try:
                calibration = self.calibration(values["calibration"])
            except MonoQuantError as e:
                (self.refused if isinstance(e, BadConfigError) else self.errors).append(
                    f"{self.source}: {where}.calibration: {e}")
                return None
        elif need := needs_calibration(config):
            self.errors.append(f"{self.source}: {where}.calibration: {need} needs a "
                               "calibration source (in the job or in defaults)")
            return None
        try:
            evaluation = (None if "evaluation" not in values else
                          parse_evaluation_source(values["evaluation"], base_dir=self.base_dir))
        except MonoQuantError as e:
            self.errors.append(f"{self.source}: {where}.evaluation: {e}")
            return None
        return values, config, calibration, evaluation

    def expand(self) -> list[ScheduledJob]:
        return list(self.iter_expand())

    def iter_expand(self) -> Iterator[ScheduledJob]:
        """Yield the valid jobs one by one; at the end raise BadInputError listing every
        invalid one (a caller writing jobs as they come rolls back then)."""
        from mono_quant.pipeline.sources import parse_model_source

        m = self.manifest
        defaults = m.defaults.model_dump(exclude_none=True)
        keys = list(m.matrix)
        plans = []  # one per matrix combination, built once
        for combo in list(itertools.product(*m.matrix.values())) or [()]:
            varied = dict(zip(keys, combo, strict=True))
            plans.append(_Plan({**defaults, **varied},
                               ",".join(f"{k}={v}" for k, v in varied.items())))
        for i, job in enumerate(m.jobs):
            own = ({} if job.model_fields_set <= _NAME_AND_MODEL else  # most jobs: no dump
                   job.model_dump(exclude_none=True, exclude={"name", "model"}))
            clash = sorted(set(own) & set(keys))
            if clash:
                self.errors.append(f"{self.source}: jobs[{i}].{clash[0]}: is a matrix key; "
                                   "remove it from the job or from the matrix")
                continue
            try:
                model = parse_model_source(job.model, base_dir=self.base_dir,
                                           factories=self.factories)
                digest = _weights_digest(model, self.hash_cache)  # changed weights: a new key
            except MonoQuantError as e:
                (self.refused if isinstance(e, BadConfigError) else self.errors).append(
                    f"{self.source}: jobs[{i}].model: {e}")
                continue
            # rendered once per job, not once per matrix combination
            model_source = str(model)  # derived from the payload: never disagrees with it
            for plan in plans:
                scheduled = (self._job(i, job.name, model, model_source, digest, plan, own)
                             if own else self._shared_job(i, job.name, model, model_source,
                                                          digest, plan))
                if scheduled is not None:
                    yield scheduled
        if self.refused:
            raise BadConfigError("manifest refused:\n" + _problems(self.refused))
        if self.errors:
            raise BadInputError("invalid manifest:\n" + _problems(self.errors))

    def _job(self, i: int, name: str, model: Any, model_source: str, digest: str | None,
             plan: _Plan, own: dict[str, Any]) -> ScheduledJob | None:
        """A job with values of its own in one matrix combination, or None (its problems
        recorded)."""
        values = {**plan.values, **own}
        built = self.spec(model, values, plan.where(i), digest)
        if built is None:
            return None
        return self._checked(i, plan, _scheduled(
            name + plan.tail, built[0], model_source, built[1].get("queue", "cpu"),
            values.get("max_attempts", self.default_attempts)))

    def _shared_job(self, i: int, name: str, model: Any, model_source: str,
                    digest: str | None, plan: _Plan) -> ScheduledJob | None:
        """A job without values of its own: its combination's spec for the first model of a
        scheme, a copy with this model for the others (the checks depend on the scheme)."""
        first = plan.first.get(model.scheme)
        if first is None:
            built = self.spec(model, plan.values, plan.where(i), digest, shared=True)
            if built is None:
                return None
            spec, plan.queue = built[0], built[1].get("queue", "cpu")
            plan.max_attempts = plan.values.get("max_attempts", self.default_attempts)
            plan.first[model.scheme] = spec
            plan.clean[model.scheme] = not check_settings(
                plan.queue, plan.max_attempts, spec.samples, spec.config.group_size)
        else:
            spec = first.with_model(model, digest)
        job = _scheduled(name + plan.tail, spec, model_source, plan.queue, plan.max_attempts)
        # the copies share the first spec's settings: checked once, only the name per job
        if plan.clean[model.scheme] and name_fits(job.name):
            return job
        return self._checked(i, plan, job)

    def _checked(self, i: int, plan: _Plan, job: ScheduledJob) -> ScheduledJob | None:
        """``job``, or None with what its catalog columns would refuse recorded."""
        problems = check_job(job)
        if problems:
            where = plan.where(i)
            self.errors.extend(f"{self.source}: {where}.{p}" for p in problems)
            return None
        return job


def _scheduled(name: str, spec: JobSpec, model_source: str, queue: str, max_attempts: int
               ) -> ScheduledJob:
    """``ScheduledJob(name, spec, model_source, queue, max_attempts)`` without the frozen
    dataclass's ``__init__`` (an ``object.__setattr__`` per field: 1.3 against 0.4 µs, and a
    matrix builds tens of thousands); the fields' values are the same (tested)."""
    job = object.__new__(ScheduledJob)
    fields = job.__dict__
    fields["name"], fields["spec"], fields["model_source"] = name, spec, model_source
    fields["queue"], fields["max_attempts"], fields["evaluation"] = queue, max_attempts, None
    return job


#: A job whose only fields are these has no values of its own.
_NAME_AND_MODEL = frozenset({"name", "model"})


class _Plan:
    """One matrix combination: its values, its name suffix, and (for jobs without values
    of their own) the spec of its first model per scheme, which the others copy, with its
    queue and attempts and whether its settings fit the catalog's columns."""

    def __init__(self, values: dict[str, Any], suffix: str) -> None:
        self.values, self.suffix = values, suffix
        self.tail = f"[{suffix}]" if suffix else ""
        self.first: dict[str, JobSpec] = {}
        self.clean: dict[str, bool] = {}  # per scheme: the first spec's settings fit
        self.queue = "cpu"
        self.max_attempts = 3

    def where(self, i: int) -> str:
        return f"jobs[{i}]" + (f" (matrix {self.suffix})" if self.suffix else "")


def _validated(data: Any, source: str, max_jobs: int, *, bounded: bool = False) -> Manifest:
    """The manifest document validated, its size bounded before any job is built (``bounded``:
    already, by :func:`read_checked`)."""
    if not bounded:
        check_document(data, source)
    if not isinstance(data, dict):
        raise BadInputError(f"{source}: expected a mapping with a 'jobs' list at the top level")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        raise BadInputError("invalid manifest:\n" + _validation_message(source, e)) from e
    n = count_jobs(len(manifest.jobs), manifest.matrix)
    if n > max_jobs:
        raise BadInputError(
            f"{source}: the manifest expands to {n} jobs ({len(manifest.jobs)} job(s) x "
            f"{n // len(manifest.jobs)} matrix combination(s)); at most {max_jobs} are accepted "
            "per batch (MONO_QUANT_MAX_JOBS_PER_BATCH): split it into smaller manifests"
        )
    problems = check_batch(manifest.name)
    if problems:
        raise BadInputError("invalid manifest:\n" + _problems(
            [f"{source}: {p}" for p in problems]))
    _warn_renamed(manifest, source)
    return manifest


def parse_manifest(
    data: Any, source: str = "<manifest>", default_attempts: int = 3,
    base_dir: Path | None = None, *, factories: FactoryAllowList | None = None,
    max_jobs: int = DEFAULT_MAX_JOBS_PER_BATCH, hash_cache: ContentHashCache | None = None,
) -> tuple[Manifest, list[ScheduledJob]]:
    """Validate a manifest mapping and expand it; raises BadInputError listing every problem.

    Relative paths in model and calibration sources are resolved against ``base_dir`` (the
    manifest's folder when loaded from a file). ``factories``: the allow-list of factory
    modules (BadConfigError outside it). More than ``max_jobs`` jobs are refused before any is
    built; values the catalog's columns cannot store are refused here, on every backend.
    ``hash_cache`` keeps the content hashes of ``hf:`` weight files (None: read every time).
    """
    manifest = _validated(data, source, max_jobs)
    return manifest, _Expander(manifest, source, default_attempts, base_dir,
                               factories, hash_cache).expand()


def load_manifest(
    path: str | Path, default_attempts: int = 3, *, factories: FactoryAllowList | None = None,
    max_jobs: int = DEFAULT_MAX_JOBS_PER_BATCH, hash_cache: ContentHashCache | None = None,
) -> tuple[Manifest, list[ScheduledJob], str]:
    """Read, validate and expand a YAML manifest; also returns the sha256 of its bytes."""
    manifest, jobs, digest = stream_manifest(path, default_attempts, factories=factories,
                                             max_jobs=max_jobs, hash_cache=hash_cache)
    return manifest, list(jobs), digest


def stream_manifest(
    path: str | Path, default_attempts: int = 3, *, factories: FactoryAllowList | None = None,
    max_jobs: int = DEFAULT_MAX_JOBS_PER_BATCH, hash_cache: ContentHashCache | None = None,
) -> tuple[Manifest, Iterator[ScheduledJob], str]:
    """Like :func:`load_manifest`, but the jobs come lazily, so a submit can write a
    100,000-job matrix in chunks; the iterator raises BadInputError at its end if any job
    was invalid."""
    path = Path(path)
    raw = read_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    manifest = _validated(read_checked(raw, str(path)), str(path), max_jobs, bounded=True)
    del raw  # the validated manifest is all the expansion needs
    expander = _Expander(manifest, str(path), default_attempts, path.parent.resolve(),
                         factories, hash_cache)
    return manifest, expander.iter_expand(), digest
