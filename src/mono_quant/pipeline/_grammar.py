"""The string and mapping grammar shared by model and calibration sources (see
:mod:`mono_quant.pipeline.sources` for the user-facing description).

Example:
    >>> _query("factory:m:f?a=1&b=x%26y", "a=1&b=x%26y")
    {'a': 1, 'b': 'x&y'}
    >>> parse_parts({"factory": "m:f", "kwargs": {}}, "model", ("hf", "factory"))[:2]
    ('factory', 'm:f')
"""

from __future__ import annotations

import errno
import importlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, unquote

from mono_quant.errors import BadInputError, MonoQuantError

if TYPE_CHECKING:
    from mono_quant.pipeline.allowlist import FactoryAllowList

__all__ = ["COMPACT", "TARGET", "Source", "call_factory", "display_text", "flat_members",
           "flat_texts", "import_target", "kwargs_of", "parse_parts", "resolve_path",
           "scalar_json"]

#: A factory target: ``package.module:callable`` (the callable may be dotted).
TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_KEY = re.compile(r"^[A-Za-z_]\w*$")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _render(value: Any) -> str:
    if type(value) is int:  # what json.dumps writes, without the encoder (seeds, sizes)
        return str(value)
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


#: The encoders ``json.dumps(value, sort_keys=True, default=str)``, ``json.dumps(value,
#: allow_nan=False)`` and ``json.dumps(value, sort_keys=True, separators=(",", ":"))`` would
#: build on every call (a submit parses thousands of sources).
_DISPLAY = json.JSONEncoder(sort_keys=True, default=str)
_STRICT = json.JSONEncoder(allow_nan=False)
COMPACT = json.JSONEncoder(sort_keys=True, separators=(",", ":"))

#: The types whose values ``scalar_json`` writes itself (exact types: a subclass may
#: change how the encoder writes it).
_SCALARS = frozenset({str, int, bool, type(None)})


def scalar_json(value: Any) -> str | None:
    """``json.dumps(value)`` for a JSON scalar (an exact str, int, bool, None or finite
    float), None for anything else (the encoder decides those)."""
    kind = type(value)
    if kind is str:
        return _STRICT.encode(value)  # the encoder's own string path (no encoder built)
    if kind is int:
        return int.__repr__(value)  # what the encoder writes for an int
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return None


#: The JSON text of each string key written so far (a matrix repeats its argument names).
_KEY_TEXTS: dict[str, str] = {}


def _key_json(key: str) -> str:
    text = _KEY_TEXTS.get(key)
    if text is None:
        if len(_KEY_TEXTS) >= 4096:
            _KEY_TEXTS.clear()
        text = _KEY_TEXTS[key] = _STRICT.encode(key)
    return text


def flat_members(kwargs: Iterable[tuple[str, Any]]) -> tuple[str, str] | None:
    """The members of ``dict(kwargs)`` as JSON, keys sorted, compact (``"a":1,"b":2``) and
    with ``json.dumps``' separators (``"a": 1, "b": 2``); None unless every key is a str and
    every value a JSON scalar (:func:`scalar_json`)."""
    compact, default = [], []
    for key, value in sorted(kwargs):
        text = int.__repr__(value) if type(value) is int else scalar_json(value)
        if text is None or type(key) is not str:
            return None
        name = _KEY_TEXTS.get(key) or _key_json(key)
        compact.append(name + ":" + text)
        default.append(name + ": " + text)
    return ",".join(compact), ", ".join(default)


def flat_texts(fields: dict[str, Any], kwargs: tuple[tuple[str, Any], ...],
               members: tuple[str, str] | None = None) -> tuple[str, str] | None:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"))`` and ``json.dumps(value,
    sort_keys=True)`` of ``value = {**fields, "kwargs": dict(kwargs)}``, written here in one
    pass (two encoder calls cost more than twice as much) when every key is a str and every
    value a JSON scalar (:func:`scalar_json`); None otherwise (the encoder writes those).
    ``members``: ``flat_members(kwargs)``, when the caller has it already.

    >>> flat_texts({"target": None}, (("b", 1), ("a", "x")))
    ('{"kwargs":{"a":"x","b":1},"target":null}', '{"kwargs": {"a": "x", "b": 1}, "target": null}')
    """
    members = members or flat_members(kwargs)
    frame = None if members is None else _frame(fields)
    if frame is None:
        return None
    return frame[0] + members[0] + frame[1], frame[2] + members[1] + frame[3]


#: :func:`_frame`'s texts by the fields' items (str or None values only: equal values of
#: other types may be written differently, ``True`` and ``1``).
_FRAMES: dict[tuple[tuple[str, Any], ...], tuple[str, str, str, str]] = {}


def _frame(fields: dict[str, Any]) -> tuple[str, str, str, str] | None:
    """The texts of ``{**fields, "kwargs": ...}`` before and after the arguments' members,
    compact then default; None when a field is not a JSON scalar. Cached: a matrix's models
    share their scheme and target."""
    items = tuple(fields.items())
    cacheable = all(type(v) is str or v is None for _, v in items)
    hit = _FRAMES.get(items) if cacheable else None
    if hit is not None:
        return hit
    compact, default = [], []
    for key in sorted({**fields, "kwargs": None}):
        text = "{}" if key == "kwargs" else scalar_json(fields[key])
        if text is None or type(key) is not str:
            return None
        compact.append(f"{_key_json(key)}:{text}")
        default.append(f"{_key_json(key)}: {text}")
    # split at the (empty) arguments: '"kwargs":' cannot occur inside a JSON string (its
    # quotes are escaped there)
    head_c, _, tail_c = ("{" + ",".join(compact) + "}").partition('"kwargs":{}')
    head_d, _, tail_d = ("{" + ", ".join(default) + "}").partition('"kwargs": {}')
    texts = head_c + '"kwargs":{', "}" + tail_c, head_d + '"kwargs": {', "}" + tail_d
    if cacheable:
        if len(_FRAMES) >= 4096:
            _FRAMES.clear()
        _FRAMES[items] = texts
    return texts


def display_text(value: Mapping[str, Any]) -> str:
    """How messages show a source given as a mapping: its JSON, keys sorted."""
    return _DISPLAY.encode(value)


def resolve_path(value: Any, base_dir: str | os.PathLike[str] | None, text: str, what: str) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise BadInputError(f"{text}: {what} must be a path, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or os.getcwd()) / path
    return os.path.normpath(path)


def _from_canonical(value: Mapping[str, Any]) -> dict[str, Any]:
    """``{"scheme": s, "target": t, ...}`` (a ``canonical()`` dict) -> ``{s: t, ...}``."""
    data = {k: v for k, v in value.items()
            if k not in ("scheme", "target") and v is not None and v != {}}
    data[str(value["scheme"])] = value["target"]
    return data


def parse_parts(value: Any, kind: str, schemes: tuple[str, ...]) -> tuple[str, str, dict, str]:
    """(scheme, target, options, display text) from a string, a mapping or a canonical dict."""
    if isinstance(value, Mapping) and "scheme" in value and "target" in value:
        value = _from_canonical(value)
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
        text = display_text(value)
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


def kwargs_of(options: dict, allowed: set[str], text: str, mapping: bool) -> dict[str, Any]:
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


def import_target(target: str, text: str, allow: FactoryAllowList | None = None) -> Any:
    """The callable ``module:attr``; with ``allow``, checked before the import and after."""
    if not TARGET.match(target):
        raise BadInputError(f"{text}: factory target {target!r} is not 'package.module:callable'")
    if allow is not None:
        allow.check_target(target, text)
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise BadInputError(f"{text}: cannot import module {module_name!r}: {e}") from e
    except Exception as e:  # importing runs the module's code: user code
        raise BadInputError(
            f"{text}: importing module {module_name!r} raised {type(e).__name__}: {e}"
        ) from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise BadInputError(f"{text}: module {module_name!r} has no {attr!r}") from e
    if allow is not None:
        allow.check_callable(obj, text)
    if not callable(obj):
        raise BadInputError(f"{text}: {target!r} is a {type(obj).__name__}, not a callable")
    return obj


def call_factory(target: str, kwargs: dict[str, Any], text: str,
                 allow: FactoryAllowList | None = None) -> Any:
    """Import ``module:callable`` and call it: this runs configured code, by design."""
    fn = import_target(target, text, allow)
    try:
        return fn(**kwargs)
    except MonoQuantError:  # already classified (a TransientError stays retryable)
        raise
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
            raise BadInputError(f"{text}: the factory raised {type(e).__name__}: {e}") from e
        raise  # I/O trouble (EIO, timeouts on shared storage): the worker may retry
    except Exception as e:  # other errors of user code: the source is what is wrong
        if type(e).__name__ == "OutOfMemoryError":
            raise
        raise BadInputError(f"{text}: the factory raised {type(e).__name__}: {e}") from e


class Source:
    """Shared behaviour of the frozen source dataclasses (fields are declared there)."""

    SCHEMES: ClassVar[tuple[str, ...]] = ()
    scheme: str
    target: str
    kwargs: tuple[tuple[str, Any], ...]
    text: str

    def __post_init__(self) -> None:
        if self.scheme not in self.SCHEMES:
            raise BadInputError(
                f"{type(self).__name__}: scheme {self.scheme!r} is not one of "
                f"{', '.join(self.SCHEMES)}"
            )
        if self.scheme != "factory" and self.kwargs:
            raise BadInputError(f"{self.text or self.target}: {self.scheme}: takes no kwargs")
        try:
            kwargs = dict(self.kwargs)
            if not all(type(k) is str and type(v) in _SCALARS for k, v in kwargs.items()):
                _STRICT.encode(kwargs)  # containers, floats (NaN), other types
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

    def json_texts(self, members: tuple[str, str] | None = None) -> tuple[str, str]:
        """:meth:`canonical` as JSON twice: compact with sorted keys (the idempotency key's
        form) and as ``json.dumps`` writes it (the catalog's; ``canonical`` is sorted).
        Computed once per source (a matrix job's four combinations share its model);
        ``members``: ``flat_members(self.kwargs)``, when the caller has it already."""
        texts = self.__dict__.get("_json_texts")
        if texts is None:
            texts = flat_texts({"scheme": self.scheme, "target": self.target,
                                **self._options()}, self.kwargs, members)
            if texts is None:
                value = self.canonical()
                texts = COMPACT.encode(value), json.dumps(value)
            object.__setattr__(self, "_json_texts", texts)
        return texts

    def __hash__(self) -> int:
        return hash(json.dumps(self.canonical(), sort_keys=True, default=str))

    def __str__(self) -> str:
        args = dict(sorted(self.kwargs))
        for key, value in self._options().items():
            if value is not None:
                args[key] = value
        query = "&".join([f"{k}={int.__repr__(v) if type(v) is int else _render(v)}"
                          for k, v in args.items()])
        return f"{self.scheme}:{self.target}" + (f"?{query}" if query else "")
