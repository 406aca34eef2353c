"""Model and calibration sources: what a job points at, as a CLI string or a manifest mapping.

Grammar (strings; the manifest mapping form is shown on the right)::

    MODEL
      hf:PATH                          {hf: PATH}
      factory:MODULE:CALLABLE[?ARGS]   {factory: MODULE:CALLABLE, kwargs: {...}, weights: PATH}
    CALIBRATION
      factory:MODULE:CALLABLE[?ARGS]   {factory: MODULE:CALLABLE, kwargs: {...}}
      tensors:PATH[?batch_size=N]      {tensors: PATH, batch_size: N}
      text:PATH[?batch_size=N&max_length=N]   {text: PATH, batch_size: N, max_length: N}
      PATH.safetensors, PATH.txt       shorthands for tensors:PATH and text:PATH

``ARGS`` is ``key=value`` pairs joined by ``&`` (quote the whole source in a shell). A value is
percent-decoded, then read as JSON when it parses (``128``, ``0.5``, ``true``, ``null``,
``"text"``, ``[1,2]``) and kept as a plain string otherwise. For a model factory the key
``weights`` is reserved: a ``.safetensors`` or ``.pt`` state dict loaded strictly after the
call (``.pt`` only with ``weights_only=True``).

* ``hf:`` is a local Hugging Face folder (``config.json`` + safetensors weights), loaded with
  transformers (the ``hf`` extra) from local files only; its tokenizer tokenizes ``text:``
  calibration files.
* ``factory:`` **imports and runs arbitrary code** by design: it is trusted configuration,
  like a Python entry point. Never accept factory sources from untrusted users.
* ``tensors:`` files hold one tensor ``[N, ...]`` (batches are slices of it, passed
  positionally) or several tensors sharing ``N`` (batches are dicts of keyword arguments).

Paths are made absolute (against ``base_dir`` or the working directory) when parsed, so
:meth:`ModelSource.canonical` — the input of idempotency keys — does not depend on where a
job runs. It does not hash file contents.

Example:
    >>> src = parse_model_source("factory:mono_quant.demo_models:mlp?hidden=32&seed=1")
    >>> src.canonical()["kwargs"], src.canonical()["target"]
    ({'hidden': 32, 'seed': 1}, 'mono_quant.demo_models:mlp')
    >>> same = {"factory": "mono_quant.demo_models:mlp", "kwargs": {"seed": 1, "hidden": 32}}
    >>> src == parse_model_source(same)
    True
    >>> type(src.load()).__name__
    'Sequential'
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import torch
from torch import nn

from mono_quant.errors import BadConfigError, BadInputError

__all__ = [
    "CalibrationSource",
    "ModelSource",
    "parse_calibration_source",
    "parse_model_source",
]

MODEL_SCHEMES = ("hf", "factory")
CALIBRATION_SCHEMES = ("factory", "tensors", "text")
#: Defaults of the calibration file options.
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_LENGTH = 512
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_KEY = re.compile(r"^[A-Za-z_]\w*$")
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError,
                ImportError)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _render(value: Any) -> str:
    text = value if isinstance(value, str) and _value(value) == value else json.dumps(value)
    return quote(text, safe="/:.,-_[]\"'{} ")


def _query(text: str, query: str) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for part in query.split("&") if query else []:
        key, eq, raw = part.partition("=")
        if not eq or not _KEY.match(key):
            raise BadInputError(f"{text}: argument {part!r} is not key=value")
        if key in args:
            raise BadInputError(f"{text}: argument {key!r} is given twice")
        args[key] = _value(unquote(raw))
    return args


def _path(value: Any, base_dir: str | os.PathLike[str] | None, text: str, what: str) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise BadInputError(f"{text}: {what} must be a path, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or os.getcwd()) / path
    return os.path.normpath(path)


def _split(value: Any, kind: str, schemes: tuple[str, ...]) -> tuple[str, str, dict, str]:
    """(scheme, target, options, display text) from a string or a mapping."""
    if isinstance(value, str):
        scheme, colon, rest = value.partition(":")
        if kind == "calibration" and (not colon or scheme not in schemes):
            low = value.partition("?")[0].lower()
            if low.endswith(".safetensors"):
                scheme, rest, colon = "tensors", value, ":"
            elif low.endswith(".txt"):
                scheme, rest, colon = "text", value, ":"
        if not colon or scheme not in schemes:
            raise BadInputError(
                f"{value}: unknown {kind} source scheme {scheme + ':' if colon else '(none)'}; "
                f"expected {', '.join(s + ':' for s in schemes)}"
            )
        target, _, query = rest.partition("?")
        return scheme, target, _query(value, query), value
    if isinstance(value, Mapping):
        present = [s for s in schemes if s in value]
        text = json.dumps(value, sort_keys=True, default=str)
        if len(present) != 1:
            raise BadInputError(
                f"{text}: a {kind} source mapping needs exactly one of "
                f"{', '.join(schemes)} (got {', '.join(present) or 'none'})"
            )
        options = {k: v for k, v in value.items() if k != present[0]}
        return present[0], value[present[0]], options, text
    raise BadInputError(
        f"{kind} source {value!r}: expected a string such as 'hf:PATH' or a mapping, got "
        f"{type(value).__name__}"
    )


def _kwargs(options: dict, allowed: set[str], text: str, mapping: bool) -> dict[str, Any]:
    """Keyword arguments: ``kwargs:`` in a mapping, the ``?ARGS`` of a string."""
    unknown = sorted(set(options) - allowed - ({"kwargs"} if mapping else set()))
    if mapping and unknown:
        raise BadInputError(
            f"{text}: unknown field(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(allowed | {'kwargs'}))}"
        )
    if not mapping:
        return {k: v for k, v in options.items() if k not in allowed}
    kwargs = options.get("kwargs", {})
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise BadInputError(f"{text}: 'kwargs' must be a mapping of argument names to values")
    return dict(kwargs)


def _import(target: str, text: str) -> Any:
    if not _TARGET.match(target):
        raise BadInputError(f"{text}: factory target {target!r} is not 'package.module:callable'")
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise BadInputError(f"{text}: cannot import module {module_name!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise BadInputError(f"{text}: module {module_name!r} has no {attr!r}") from e
    if not callable(obj):
        raise BadInputError(f"{text}: {target!r} is a {type(obj).__name__}, not a callable")
    return obj


def _call(fn: Any, kwargs: dict[str, Any], text: str) -> Any:
    try:
        return fn(**kwargs)
    except Exception as e:  # user code: whatever it raises, the source is what is wrong
        raise BadInputError(f"{text}: the factory raised {type(e).__name__}: {e}") from e


class _Source:
    scheme: str
    target: str
    kwargs: tuple[tuple[str, Any], ...]
    text: str

    def __post_init__(self) -> None:
        try:
            json.dumps(dict(self.kwargs), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise BadInputError(
                f"{self.text or self.target}: arguments must be JSON values: {e}"
            ) from e
        if not self.text:  # built in code: messages show the canonical string
            object.__setattr__(self, "text", str(self))

    def _options(self) -> dict[str, Any]:
        return {}

    def canonical(self) -> dict[str, Any]:
        """A JSON-able description with sorted keys: the input of idempotency keys."""
        data = {"kwargs": dict(sorted(self.kwargs)), "scheme": self.scheme,
                "target": self.target, **self._options()}
        return dict(sorted(data.items()))

    def __hash__(self) -> int:
        return hash(json.dumps(self.canonical(), sort_keys=True, default=str))

    def __str__(self) -> str:
        args = {**dict(sorted(self.kwargs)), **{k: v for k, v in self._options().items()
                                                if v is not None}}
        query = "&".join(f"{k}={_render(v)}" for k, v in args.items())
        return f"{self.scheme}:{self.target}" + (f"?{query}" if query else "")


@dataclass(frozen=True, eq=True)
class ModelSource(_Source):
    """Where a model comes from: ``hf:`` folder or ``factory:`` callable (+ ``weights``)."""

    scheme: str
    target: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    weights: str | None = None
    text: str = field(default="", compare=False)

    __hash__ = _Source.__hash__

    def _options(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def check(self) -> None:
        """Cheap checks without building the model: paths exist, the factory imports."""
        if self.scheme == "hf":
            if not Path(self.target).is_dir():
                raise BadInputError(f"{self.text}: no such folder {self.target}")
            if not (Path(self.target) / "config.json").is_file():
                raise BadInputError(
                    f"{self.text}: {self.target} has no config.json (expected a Hugging Face "
                    "model folder written by save_pretrained)"
                )
        else:
            _import(self.target, self.text)
        if self.weights is not None and not Path(self.weights).is_file():
            raise BadInputError(f"{self.text}: weights file {self.weights} does not exist")

    def load(self) -> nn.Module:
        """Build the model (in eval mode)."""
        self.check()
        if self.scheme == "hf":
            model = _load_hf(self)
        else:
            model = _call(_import(self.target, self.text), dict(self.kwargs), self.text)
            if not isinstance(model, nn.Module):
                raise BadInputError(
                    f"{self.text}: the factory returned a {type(model).__name__}, expected a "
                    "torch.nn.Module"
                )
        if self.weights is not None:
            from mono_quant.io._checks import load_state_dict_strict
            from mono_quant.io.formats import load_model

            load_state_dict_strict(model, load_model(self.weights),
                                   f"{self.text}: weights {self.weights}")
        return model.eval()

    def tokenizer(self) -> Any:
        """The tokenizer saved in an ``hf:`` folder."""
        if self.scheme != "hf":
            raise BadInputError(f"{self.text}: only hf: model sources have a tokenizer")
        AutoTokenizer = _transformers(self.text).AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(self.target, local_files_only=True)
        except _LOAD_ERRORS as e:
            raise BadInputError(f"{self.text}: cannot load the tokenizer: {e}") from e
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise BadInputError(
                    f"{self.text}: the tokenizer has neither a pad nor an eos token to pad "
                    "calibration batches with"
                )
            tok.pad_token = tok.eos_token
        return tok


def _transformers(text: str) -> Any:
    try:
        import transformers
    except ImportError as e:
        raise BadConfigError(
            f"{text}: hf: sources need transformers: pip install 'mono-quant[hf]'"
        ) from e
    return transformers


def _load_hf(source: ModelSource) -> nn.Module:
    transformers = _transformers(source.text)
    try:
        config = transformers.AutoConfig.from_pretrained(source.target, local_files_only=True)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        cls = cls or transformers.AutoModel
        return cls.from_pretrained(source.target, local_files_only=True)
    except _LOAD_ERRORS as e:
        raise BadInputError(f"{source.text}: transformers could not load the model: {e}") from e


def parse_model_source(
    value: str | Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None
) -> ModelSource:
    """Parse ``hf:PATH`` / ``factory:MODULE:CALLABLE?k=v&weights=PATH`` or their mapping."""
    scheme, target, options, text = _split(value, "model", MODEL_SCHEMES)
    mapping = not isinstance(value, str)
    if scheme == "hf":
        if options:
            raise BadInputError(f"{text}: hf: sources take no arguments ({', '.join(options)})")
        return ModelSource("hf", _path(target, base_dir, text, "hf:"), text=text)
    kwargs = _kwargs(options, {"weights"}, text, mapping)
    weights = options.get("weights")
    if weights is not None:
        weights = _path(weights, base_dir, text, "weights")
    if not isinstance(target, str) or not _TARGET.match(target):
        raise BadInputError(f"{text}: factory target {target!r} is not 'package.module:callable'")
    return ModelSource("factory", target, tuple(sorted(kwargs.items())), weights, text=text)


@dataclass(frozen=True, eq=True)
class CalibrationSource(_Source):
    """Calibration batches: a ``factory:``, a ``tensors:`` file or a ``text:`` file."""

    scheme: str
    target: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    batch_size: int | None = None
    max_length: int | None = None
    text: str = field(default="", compare=False)

    __hash__ = _Source.__hash__

    def _options(self) -> dict[str, Any]:
        opts = {"batch_size": self.batch_size, "max_length": self.max_length}
        return {k: v for k, v in opts.items() if v is not None}

    def load(self, model_source: ModelSource | None = None, samples: int | None = None):
        """A list of batches holding ``samples`` samples (all when None)."""
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                    or samples < 1):
            raise BadInputError(f"{self.text}: samples={samples!r}: expected a positive integer")
        if self.scheme == "factory":
            items = _call(_import(self.target, self.text), dict(self.kwargs), self.text)
            if isinstance(items, (torch.Tensor, nn.Module)) or not isinstance(items, Iterable):
                raise BadInputError(
                    f"{self.text}: the factory returned a {type(items).__name__}, expected an "
                    "iterable of batches (tensors, tuples or dicts of tensors)"
                )
        elif self.scheme == "tensors":
            items = _tensor_batches(self)
        else:
            items = _text_batches(self, model_source, samples)
        batches = _take(items, samples, self.text)
        if not batches:
            raise BadInputError(f"{self.text}: no calibration batches")
        return batches


def _take(items: Iterable[Any], samples: int | None, text: str) -> list[Any]:
    from mono_quant.quant.calibration import batch_size

    out, seen = [], 0
    for item in items:
        if not isinstance(item, (torch.Tensor, Mapping, tuple, list)):
            raise BadInputError(
                f"{text}: batch {len(out)} is a {type(item).__name__}; expected a tensor, a "
                "tuple of tensors or a dict of tensors"
            )
        n = batch_size(item)
        if samples is not None and seen + n > samples:
            item, n = _head(item, samples - seen), samples - seen
        out.append(item)
        seen += n
        if samples is not None and seen >= samples:
            break
    return out


def _head(item: Any, n: int) -> Any:
    if isinstance(item, torch.Tensor):
        return item[:n] if item.ndim >= 2 else item
    if isinstance(item, Mapping):
        return {k: _head(v, n) for k, v in item.items()}
    if isinstance(item, (tuple, list)):
        return type(item)(_head(v, n) for v in item)
    return item


def _tensor_batches(source: CalibrationSource) -> list[Any]:
    from mono_quant.io.formats import _read_safetensors

    tensors, _ = _read_safetensors(Path(source.target))
    if not tensors:
        raise BadInputError(f"{source.text}: the file holds no tensors")
    sizes = {name: (t.shape[0] if t.ndim else None) for name, t in tensors.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise BadInputError(
            f"{source.text}: every tensor needs the same leading (sample) dimension; got "
            f"{', '.join(f'{k}: {list(t.shape)}' for k, t in tensors.items())}"
        )
    n = next(iter(sizes.values()))
    step = source.batch_size or DEFAULT_BATCH_SIZE
    names = sorted(tensors)
    if len(names) == 1:
        return [tensors[names[0]][i : i + step] for i in range(0, n, step)]
    return [{k: tensors[k][i : i + step] for k in names} for i in range(0, n, step)]


def _text_batches(source: CalibrationSource, model: ModelSource | None, samples: int | None):
    if model is None or model.scheme != "hf":
        raise BadInputError(
            f"{source.text}: text calibration needs an hf: model source (its tokenizer)"
        )
    try:
        lines = [s.strip() for s in Path(source.target).read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError as e:
        raise BadInputError(f"{source.text}: no such file {source.target}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"{source.text}: cannot read {source.target}: {e}") from e
    lines = [s for s in lines if s][:samples]
    tok = model.tokenizer()
    step = source.batch_size or DEFAULT_BATCH_SIZE
    max_length = source.max_length or DEFAULT_MAX_LENGTH
    batches = []
    for i in range(0, len(lines), step):
        enc = tok(lines[i : i + step], padding=True, truncation=True, max_length=max_length,
                  return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return batches


def _positive(value: Any, name: str, text: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInputError(f"{text}: {name}={value!r}: expected a positive integer")
    return value


def parse_calibration_source(
    value: str | Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None
) -> CalibrationSource:
    """Parse ``factory:...`` / ``tensors:PATH`` / ``text:PATH`` (or a bare path) or a mapping."""
    scheme, target, options, text = _split(value, "calibration", CALIBRATION_SCHEMES)
    mapping = not isinstance(value, str)
    if scheme == "factory":
        kwargs = _kwargs(options, set(), text, mapping)
        if not isinstance(target, str) or not _TARGET.match(target):
            raise BadInputError(
                f"{text}: factory target {target!r} is not 'package.module:callable'"
            )
        return CalibrationSource("factory", target, tuple(sorted(kwargs.items())), text=text)
    allowed = {"batch_size"} | ({"max_length"} if scheme == "text" else set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise BadInputError(
            f"{text}: unknown option(s) {', '.join(unknown)} for {scheme}: sources; allowed: "
            f"{', '.join(sorted(allowed))}"
        )
    return CalibrationSource(
        scheme, _path(target, base_dir, text, f"{scheme}:"), (),
        _positive(options.get("batch_size"), "batch_size", text),
        _positive(options.get("max_length"), "max_length", text), text=text,
    )
