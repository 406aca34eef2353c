"""``JobSpec``: the typed, versioned contract of one quantization job.

One value travels from the manifest (or the CLI's flags) to the worker unchanged: the
scheduler builds a ``JobSpec``, stores :meth:`JobSpec.to_payload` in the catalog's
``jobs.spec`` column, and the worker rebuilds it with :meth:`JobSpec.from_payload`, which
validates every field (an unknown version or field is a ``BadConfigError``, never a crash).
:func:`~mono_quant.pipeline.run.run_pipeline` takes it.

Payload (JSON; written as version 2 unless it needs 3, see below)::

    {"version": 2,
     "model": {...},            # canonical model source (ModelSource.canonical())
     "quant": {...},            # QuantConfig.to_dict()
     "format": "safetensors",   # one of FORMATS
     "calibration": {...},      # canonical calibration source, or null
     "samples": 64,             # calibration samples to use, or null (all)
     "stream": false,           # version 2: true streams the hf: checkpoint tensor by
                                # tensor, false is "not asked" (auto, pipeline.auto_stream);
                                # version 3: false means never stream (build the model)
     "max_shard_size": 5000000000,  # optional: shard the weights (bytes; absent: one file)
     "pipeline": "sequential"}  # only when not "auto": one of PIPELINES (version 2)

Version 1 payloads (before ``pipeline``) still load: their pipeline is ``auto``. Versions 1
and 2 (before ``stream`` was three-valued) say "not asked for" with ``"stream": false``, which
reads as None, auto: an unset ``stream`` streams only where the artifact is the in-memory one
byte for byte (:mod:`~mono_quant.pipeline.auto_stream`), so those jobs still make the
artifacts they made. A payload is written in the oldest version that says the same
(:attr:`JobSpec.payload_version`): version 3 only for an explicit ``stream=False``, so a
worker of the release before (which reads versions 1 and 2) still runs every other job a
newer scheduler submits, and fails only those as ``bad_config`` ("upgrade mono-quant").
The idempotency key leaves out the version, an ``auto`` pipeline and a ``stream`` that is
not true (auto and false make the same artifact), so the keys of earlier jobs do not change.

Example:
    >>> from mono_quant.pipeline.spec import JobSpec
    >>> spec = JobSpec.from_payload({"model": "factory:mono_quant.demo_models:mlp?hidden=32"})
    >>> spec.format, spec.config.mode, spec.stream, spec.pipeline
    ('safetensors', 'weight_only', None, 'auto')
    >>> JobSpec.from_payload(spec.to_payload()) == spec
    True
    >>> JobSpec.from_payload({**spec.to_payload(), "version": 9})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mono_quant.errors.BadConfigError: job spec version 9 is not supported ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mono_quant.errors import BadConfigError, MonoQuantError
from mono_quant.io.layout import FORMATS
from mono_quant.pipeline._grammar import COMPACT as _COMPACT
from mono_quant.pipeline._grammar import Source
from mono_quant.pipeline.allowlist import FactoryAllowList
from mono_quant.pipeline.evaluation import EvaluationSource, parse_evaluation_source
from mono_quant.pipeline.sources import (
    CalibrationSource,
    ModelSource,
    parse_calibration_source,
    parse_model_source,
)
from mono_quant.quant.qconfig import QuantConfig

__all__ = ["PIPELINES", "JobSpec", "needs_calibration"]

_FIELDS = ("version", "model", "quant", "format", "calibration", "samples", "stream",
           "weights_digest", "evaluation", "max_shard_size", "pipeline")
#: Payload versions this mono-quant reads (1: before ``pipeline``; 1 and 2: ``stream``
#: false meant "not asked", read as None).
_VERSIONS = (1, 2, 3)
#: How the model is quantized: block by block from the checkpoint (bounded memory,
#: resumable), whole in memory, or ``auto``: sequential when the model does not fit
#: (:func:`~mono_quant.pipeline.choose.choose_pipeline`).
PIPELINES = ("auto", "in_memory", "sequential")


def needs_calibration(config: QuantConfig) -> str | None:
    """The option of ``config`` that needs calibration data, as manifests spell it (None:
    nothing does)."""
    if config.mode == "static":
        return "mode 'static'"
    if config.smoothquant is not None:
        return f"smoothquant {config.smoothquant}"
    if config.weight_algorithm == "gptq":
        return "weight_algorithm 'gptq'"
    return None


@dataclass(frozen=True)
class JobSpec:
    """What one job does: which model, how it is quantized, how the artifact is written."""

    #: Where the model comes from (``hf:`` folder or ``factory:`` callable).
    model: ModelSource
    #: How it is quantized.
    config: QuantConfig = field(default_factory=QuantConfig)
    #: Artifact format: one of :data:`~mono_quant.io.layout.FORMATS`.
    format: str = "safetensors"
    #: Calibration batches (needed by ``mode="static"``), or None.
    calibration: CalibrationSource | None = None
    #: Calibration samples to use (None: all the source yields).
    samples: int | None = None
    #: True: quantize an ``hf:`` checkpoint tensor by tensor without building the model
    #: (weight-only, ``.safetensors`` output, bounded memory); False: build the model; None
    #: (the default): stream where that provably writes the in-memory artifact
    #: (:mod:`~mono_quant.pipeline.auto_stream`).
    stream: bool | None = None
    #: ``hf:`` sources: :func:`~mono_quant.pipeline.digest.weights_digest` of the folder at
    #: submit, so changed weights make a new idempotency key (None: not digested).
    weights_digest: str | None = None
    #: A text whose perplexity is measured with the float and the quantized model
    #: (``text:FILE?context=N``; causal LMs from ``hf:`` folders), or None.
    evaluation: EvaluationSource | None = None
    #: Shard the weights into files of at most this many bytes with the standard
    #: ``model.safetensors.index.json`` (:mod:`mono_quant.io.sharded`; ``"5GB"`` is parsed);
    #: None: one file. Safetensors and compressed-tensors only.
    max_shard_size: int | None = None
    #: One of :data:`PIPELINES`; ``stream`` (weight-only, no model) is separate and
    #: excludes ``sequential``.
    pipeline: str = "auto"

    #: The newest payload version this mono-quant writes and reads. A payload is written in
    #: the oldest version that says the same (:attr:`payload_version`), so workers of the
    #: release before still run what a newer scheduler submits.
    VERSION: ClassVar[int] = 3

    @property
    def payload_version(self) -> int:
        """The version :meth:`to_payload` writes: 3 only for an explicit ``stream=False``
        (never stream), which version 2 cannot say (its false is "not asked", read as auto);
        2 otherwise, with an unset ``stream`` written as version 2's false."""
        return 3 if self.stream is False else 2

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise BadConfigError(f"format={self.format!r}: expected one of {', '.join(FORMATS)}")
        n = self.samples
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise BadConfigError(f"samples={n!r}: expected a positive integer")
        if n is not None and self.calibration is None:
            raise BadConfigError("samples counts calibration samples: give a calibration "
                                 "source too")
        need = needs_calibration(self.config)
        if need and self.calibration is None:
            raise BadConfigError(f"{need} needs a calibration source (activation statistics "
                                 "come from it)")
        if self.stream is not None and not isinstance(self.stream, bool):
            raise BadConfigError(f"stream={self.stream!r}: expected true, false or null "
                                 "(auto)")
        if self.pipeline not in PIPELINES:
            raise BadConfigError(f"pipeline={self.pipeline!r}: expected one of "
                                 f"{', '.join(PIPELINES)}")
        if self.stream:
            self._check_stream()
        if self.max_shard_size is not None:
            self._check_shards()
        if self.pipeline == "sequential":
            problems = self.sequential_problems()
            if problems:
                raise BadConfigError("pipeline: sequential: " + "; ".join(problems))

    def _check_shards(self) -> None:
        from mono_quant.io.sharded import parse_size

        object.__setattr__(self, "max_shard_size", parse_size(self.max_shard_size))
        if self.format == "pt" or self.stream:
            raise BadConfigError("max_shard_size: shards are written for the safetensors and "
                                 "compressed-tensors formats by the in-memory pipeline (not "
                                 f"format {self.format!r}{', stream: true' * bool(self.stream)})")

    def sequential_problems(self) -> list[str]:
        """Why this job cannot run block by block (empty: it can)."""
        problems = []
        if self.stream:
            problems.append("stream: true is its own pipeline (weight-only, no model built)")
        if self.model.scheme != "hf":
            problems.append("the model must be an hf: folder (blocks load from its safetensors)")
        if self.format not in ("safetensors", "compressed-tensors"):
            problems.append("it writes the safetensors and compressed-tensors formats")
        if self.config.target:
            problems.append("an accuracy target needs the whole model (use in_memory)")
        if self.evaluation is not None:
            problems.append("perplexity evaluation needs the whole model (use in_memory)")
        return problems

    def _check_stream(self) -> None:
        problems = []
        if self.model.scheme != "hf":
            problems.append("the model must be an hf: folder (its safetensors are streamed)")
        if self.calibration is not None or self.config.mode != "weight_only":
            problems.append("streaming is weight-only: no calibration, mode 'weight_only'")
        if self.format != "safetensors":
            problems.append("streaming writes the safetensors format")
        if problems:
            raise BadConfigError("stream: true: " + "; ".join(problems))

    def with_model(self, model: ModelSource, weights_digest: str | None = None) -> JobSpec:
        """This spec with another model (and weights digest). ``__post_init__`` reads the
        model only through its scheme, so for a model of the same scheme the checks already
        passed and the copy skips them (a matrix builds thousands of specs that differ only
        in the model); another scheme is checked as a new spec."""
        if model.scheme != self.model.scheme:
            return JobSpec(**{**{f: getattr(self, f) for f in _FIELD_NAMES},
                              "model": model, "weights_digest": weights_digest})
        mine = self.__dict__
        if weights_digest == self.weights_digest and "_framed" not in mine:
            mine["_framed"] = _frame(self)  # the copies' texts around the model: the same
        new = object.__new__(JobSpec)
        fields = new.__dict__
        fields.update(mine)
        fields.pop("_json", None)  # the cached texts are the model's
        if weights_digest != self.weights_digest:
            fields.pop("_framed", None)
        fields["model"], fields["weights_digest"] = model, weights_digest
        return new

    def _parts(self) -> dict[str, Any]:
        """The payload's fields in order; a source or config stands for its canonical JSON."""
        parts: dict[str, Any] = {
            "version": self.payload_version, "model": self.model, "quant": self.config,
            "format": self.format, "calibration": self.calibration, "samples": self.samples,
            "stream": bool(self.stream),  # None (auto) is version 2's false
        }
        if self.weights_digest is not None:  # absent otherwise: earlier keys stay the same
            parts["weights_digest"] = self.weights_digest
        if self.evaluation is not None:  # likewise
            parts["evaluation"] = self.evaluation
        if self.max_shard_size is not None:  # likewise
            parts["max_shard_size"] = self.max_shard_size
        if self.pipeline != "auto":  # likewise
            parts["pipeline"] = self.pipeline
        return parts

    def to_payload(self) -> dict[str, Any]:
        """The JSON the catalog stores and the worker reads (see the module docstring)."""
        return {name: _plain(value) for name, value in self._parts().items()}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any],
                     factories: FactoryAllowList | None = None) -> JobSpec:
        """Validate and decode a payload; every problem is a ``BadConfigError`` naming it
        (a factory outside ``factories``, when given, included: nothing is imported)."""
        if not isinstance(data, Mapping):
            raise BadConfigError(f"job spec: expected a mapping, got {type(data).__name__}")
        version = data.get("version", 1)  # payloads before versioning were v1
        if version not in _VERSIONS or isinstance(version, bool):
            raise BadConfigError(
                f"job spec version {version!r} is not supported (this mono-quant reads "
                f"versions {', '.join(map(str, _VERSIONS))}); upgrade mono-quant"
            )
        if version == 1 and "pipeline" in data:
            raise BadConfigError("job spec version 1 has no field 'pipeline' (version 2 does)")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise BadConfigError(f"job spec: unknown field(s) {', '.join(map(str, unknown))}; "
                                 f"expected some of {', '.join(_FIELDS)}")
        if "model" not in data:
            raise BadConfigError("job spec: field 'model' is missing")
        try:
            model = parse_model_source(data["model"], factories=factories)
            calibration = (None if data.get("calibration") is None
                           else parse_calibration_source(data["calibration"],
                                                         factories=factories))
            evaluation = (None if data.get("evaluation") is None
                          else parse_evaluation_source(data["evaluation"]))
        except MonoQuantError as e:
            raise BadConfigError(f"job spec: {e}") from e
        return cls(
            model=model,
            config=QuantConfig.from_dict(data.get("quant", {})),
            format=data.get("format", "safetensors"),
            calibration=calibration,
            samples=data.get("samples"),
            stream=_stream(data.get("stream"), version),
            weights_digest=data.get("weights_digest"),
            evaluation=evaluation,
            max_shard_size=data.get("max_shard_size"),
            pipeline=data.get("pipeline", "auto"),
        )

    @property
    def idempotency_key(self) -> str:
        """sha256 of everything that determines the artifact: canonical model source,
        quantization config, format, calibration source and samples (and ``stream`` when
        true). Where the job runs (its queue) is not part of it.

        Built from each part's cached JSON text (a matrix repeats its model source, config
        and calibration source across thousands of jobs): byte for byte the text
        :func:`_idempotency_key` serialises from :meth:`to_payload` (tested).
        """
        return self.texts[0]

    @property
    def payload_json(self) -> str:
        """``json.dumps(self.to_payload())``: what the catalog's ``jobs.spec`` column stores."""
        return self.texts[1]

    @property
    def model_json(self) -> str:
        """``json.dumps(self.model.canonical())``: the ``jobs.model_source_json`` column."""
        return self.texts[2]

    @property
    def texts(self) -> tuple[str, str, str]:
        """(:attr:`idempotency_key`, :attr:`payload_json`, :attr:`model_json`) at once: what
        a submit writes for each job (one lookup instead of three)."""
        return self.__dict__.get("_json") or self._cache_json()

    def _cache_json(self) -> tuple[str, str, str]:
        """(idempotency key, payload JSON, model source JSON), computed together once and
        kept in the instance's ``__dict__`` as ``_json`` (what ``functools.cached_property``
        does, without its lock: Python 3.11 takes one per first access, per spec).

        The two texts spell out :meth:`to_payload`'s layout: the key's fields in sorted order
        (``calibration, evaluation, format, max_shard_size, model, pipeline, quant, samples,
        stream, weights_digest``)
        without ``version`` (and ``stream`` unless true), compact; the payload's in its own
        order, as ``json.dumps`` writes them. Everything but the model is the same for every
        job of a matrix combination, so those texts come from :func:`_frame` (built once per
        combination) and each job adds only its model's text. A generic join over
        :meth:`_parts` costs several times as much per job; the equality with the reference
        is tested over random specs.
        """
        texts = self.__dict__["_json"] = self._texts()
        return texts

    def _texts(self) -> tuple[str, str, str]:
        """:meth:`_cache_json`'s texts, computed. A plain method: mutation testing
        (tools/mutate.py) skips decorated functions, and these texts are the key."""
        model = self.model.json_texts()  # a ModelSource: cached on it
        key_head, key_tail, payload_head, payload_tail = (self.__dict__.get("_framed")
                                                          or _frame(self))
        return (hashlib.sha256((key_head + model[0] + key_tail).encode()).hexdigest(),
                payload_head + model[1] + payload_tail, model[1])


#: JobSpec's dataclass fields, in order.
_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(JobSpec))


def _frame(spec: JobSpec) -> tuple[str, str, str, str]:
    """The texts around the model in the key and in the payload (before, after each),
    cached by the parts that make them (the objects by identity, held while cached)."""
    config, calibration, evaluation = objects = spec.config, spec.calibration, spec.evaluation
    # the scalars are validated (an int is never a bool or a float here): equal, same text
    cache_key = (id(config), id(calibration), id(evaluation), spec.format, spec.samples,
                 spec.stream, spec.weights_digest, spec.max_shard_size, spec.pipeline)
    hit = _FRAMES.get(cache_key)
    if hit is not None:
        held = hit[0]
        if held[0] is config and held[1] is calibration and held[2] is evaluation:
            return hit[1]
    texts = _frame_texts(spec)
    if len(_FRAMES) >= _TEXTS_LIMIT:
        _FRAMES.clear()
    _FRAMES[cache_key] = (objects, texts)
    return texts


#: _frame's cache: (config, calibration, evaluation) and the texts, by those ids and scalars.
_FRAMES: dict[tuple[Any, ...], tuple[tuple[Any, ...], tuple[str, str, str, str]]] = {}


def _frame_texts(spec: JobSpec) -> tuple[str, str, str, str]:
    """:func:`_frame`'s texts, built from each part's JSON."""
    quant = _part_texts(spec.config)
    cal = _NULL if spec.calibration is None else _part_texts(spec.calibration)
    fmt, samples = _part_texts(spec.format)[0], _part_texts(spec.samples)[0]
    stream = json.dumps(bool(spec.stream))
    ev = None if spec.evaluation is None else _part_texts(spec.evaluation)
    digest = None if spec.weights_digest is None else _part_texts(spec.weights_digest)[0]
    key = [f'{{"calibration":{cal[0]}']
    key += [] if ev is None else [f'"evaluation":{ev[0]}']
    shards = None if spec.max_shard_size is None else str(int(spec.max_shard_size))
    key += [f'"format":{fmt}']
    key += [] if shards is None else [f'"max_shard_size":{shards}']
    tail = []
    pipe = None if spec.pipeline == "auto" else json.dumps(spec.pipeline)
    tail += [] if pipe is None else [f'"pipeline":{pipe}']
    tail += [f'"quant":{quant[0]}', f'"samples":{samples}']
    tail += ['"stream":true'] if spec.stream else []
    tail += [] if digest is None else [f'"weights_digest":{digest}']
    payload = ["", f'"quant": {quant[1]}', f'"format": {fmt}', f'"calibration": {cal[1]}',
               f'"samples": {samples}', f'"stream": {stream}']
    payload += [] if digest is None else [f'"weights_digest": {digest}']
    payload += [] if ev is None else [f'"evaluation": {ev[1]}']
    payload += [] if shards is None else [f'"max_shard_size": {shards}']
    payload += [] if pipe is None else [f'"pipeline": {pipe}']
    return (",".join(key) + ',"model":', "," + ",".join(tail) + "}",
            f'{{"version": {spec.payload_version}, "model": ', ", ".join(payload) + "}")


_NULL = ("null", "null")


def _stream(value: Any, version: int) -> Any:
    """A payload's ``stream``: before version 3, false meant "not asked" (auto)."""
    return None if value is False and version < 3 else value


def _plain(part: Any) -> Any:
    """A payload field's JSON value: a config's dict, a source's canonical dict, or itself."""
    if isinstance(part, QuantConfig):
        return part.to_dict()
    if isinstance(part, (ModelSource, CalibrationSource, EvaluationSource)):
        return part.canonical()
    return part


#: (part, compact sorted JSON, json.dumps' default JSON) by id(part); holding the part keeps
#: its id from being reused while cached. Cleared when full: a submit's distinct parts are few.
_TEXTS: dict[int, tuple[Any, str, str]] = {}
_TEXTS_LIMIT = 4096




def _part_texts(part: Any) -> tuple[str, str]:
    """The JSON of a payload field twice: compact with sorted keys (the idempotency key's
    form) and as ``json.dumps`` writes it by default (the catalog's); once per object."""
    if isinstance(part, Source):  # cached on the source itself
        return part.json_texts()
    hit = _TEXTS.get(id(part))
    if hit is not None and hit[0] is part:
        return hit[1], hit[2]
    value = _plain(part)
    texts = _COMPACT.encode(value), json.dumps(value)
    if len(_TEXTS) >= _TEXTS_LIMIT:
        _TEXTS.clear()
    _TEXTS[id(part)] = (part, *texts)
    return texts


def _idempotency_key(payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a payload without its version (and without ``stream``
    unless it is true: keys of in-memory jobs are those of payloads from before ``stream``,
    and auto and false make the same artifact).
    The reference the cached :attr:`JobSpec.idempotency_key` is tested against.
    A plain function: mutation testing (tools/mutate.py) skips decorated ones."""
    payload = dict(payload)
    del payload["version"]
    if not payload["stream"]:
        del payload["stream"]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
