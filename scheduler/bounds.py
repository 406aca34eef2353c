"""Bounds on manifests: a few hundred bytes of YAML must not cost gigabytes or hang the CLI.

* :func:`read_document` parses JSON or YAML (a safe loader) and turns too-deep nesting into a
  clear error instead of a ``RecursionError``.
* :func:`check_document` walks the parsed document once, without recursion, counting nodes
  **as expanded** (a YAML alias counts again every time it is used), so an alias bomb is
  refused after at most :data:`MAX_NODES` steps, before anything copies it (validation, JSON
  for the catalog, error messages). It also refuses NUL bytes, which PostgreSQL cannot store.
* :func:`count_jobs` is jobs × the product of the matrix sizes, computed before expanding.
* :func:`clip` cuts a message (or a value shown in one) to a sane length.

Example:
    >>> check_document({"jobs": [{"name": "a", "model": "factory:m:f"}]}, "m.yaml")
    >>> bomb = ["x"] * 10
    >>> for _ in range(8):
    ...     bomb = [bomb] * 10
    >>> check_document({"labels": bomb}, "m.yaml")
    Traceback (most recent call last):
    ...
    mono_quant.errors.BadInputError: m.yaml: the manifest expands to more than 1000000 values \
(YAML aliases count each time they are used); split it into smaller manifests
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from mono_quant.catalog.limits import check_text
from mono_quant.errors import BadInputError
from mono_quant.io._files import refuse_special_file

__all__ = ["MAX_BYTES", "MAX_CHARS", "MAX_DEPTH", "MAX_MESSAGE", "MAX_NODES", "check_document",
           "clip", "count_jobs", "read_bytes", "read_checked", "read_document"]

#: Values (mappings, lists, scalars) a manifest may hold once aliases are expanded: ten
#: thousand jobs with a dozen fields each fit well below it.
MAX_NODES = 1_000_000
#: Characters of all strings together, once aliases are expanded (64 MiB).
MAX_CHARS = 64 << 20
#: Nesting depth; real manifests need about 6 (kwargs may hold nested values).
MAX_DEPTH = 64
#: Characters of one error message shown to a user (and stored in the catalog).
MAX_MESSAGE = 4000
#: Bytes of a manifest file (ten thousand jobs take about 1 MB).
MAX_BYTES = 64 << 20

#: libyaml's safe loader when PyYAML was built with it (10x faster on big manifests).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def read_bytes(path: Path) -> bytes:
    """The manifest's bytes: a regular file of at most MAX_BYTES (a FIFO is never opened)."""
    try:
        st = refuse_special_file(path)
        if st is not None and st.st_size > MAX_BYTES:
            raise BadInputError(
                f"{path}: {st.st_size} bytes; a manifest may have at most {MAX_BYTES} "
                "(split it into smaller manifests)"
            )
        return path.read_bytes()
    except OSError as e:
        raise BadInputError(f"{path}: cannot read the manifest ({e.strerror})") from e


def read_document(raw: bytes, source: str) -> Any:
    """JSON (generated manifests often are) or YAML, with a safe loader."""
    try:
        try:
            return json.loads(raw)
        except ValueError:
            pass
        try:
            return yaml.load(raw, Loader=_Loader)
        except yaml.YAMLError as e:
            raise BadInputError(clip(f"{source}: not valid YAML: {e}")) from e
    except RecursionError as e:
        raise BadInputError(
            f"{source}: the manifest is nested too deeply to read (at most {MAX_DEPTH} levels "
            "are accepted)"
        ) from e


#: What :func:`read_checked` holds when the bytes are not JSON.
_NOT_JSON = object()


def read_checked(raw: bytes, source: str) -> Any:
    """:func:`read_document` then :func:`check_document`, with a shortcut for JSON: it has
    no aliases, and each value and each character of it takes at least one byte, so a JSON
    document of at most MAX_NODES bytes without NUL (no ``\\u0000`` escape; no UTF-16 or
    UTF-32) can only break the depth bound, and its depth alone is measured (a third of the
    full walk's CPU time on a 10,000-job manifest). Anything else gets the full check."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        data = _NOT_JSON
    if data is _NOT_JSON:
        data = read_document(raw, source)
    elif (len(raw) <= min(MAX_NODES, MAX_CHARS) and b"\x00" not in raw
          and b"\\u0000" not in raw and _depth_within(data)):
        return data
    check_document(data, source)
    return data


def _depth_within(value: Any) -> bool:
    """Whether a JSON value's containers nest at most MAX_DEPTH deep (as :func:`_measure`
    counts: a flat container is 1 deep, a scalar 0)."""
    if type(value) is not dict and type(value) is not list:
        return True
    try:
        return _json_depth(value, 1) <= MAX_DEPTH
    except _TooDeep:
        return False


def _json_depth(value: dict[str, Any] | list[Any], level: int) -> int:
    if level > MAX_DEPTH:
        raise _TooDeep
    depth = 0
    for child in value.values() if type(value) is dict else value:
        if type(child) is dict or type(child) is list:
            depth = max(depth, _json_depth(child, level + 1))
    return depth + 1


def _where(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top>"


def _children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    return value if isinstance(value, list) else []


class _TooDeep(Exception):
    """Raised by :func:`_tree_sizes` below MAX_DEPTH levels (or in a cycle)."""


def _tree_sizes(value: Any, sizes: dict[int, tuple[int, int, int, bool]], level: int
                ) -> tuple[int, int, int, bool]:
    """(values, characters, depth, NUL seen) of one container as expanded, each distinct
    container measured once (aliases share theirs). One recursive pass over the children:
    a third of the CPU time of the explicit stack (:func:`_measure_walk`) on a 10,000-job
    manifest."""
    key = id(value)
    known = sizes.get(key)
    if known is not None:
        return known
    if level >= MAX_DEPTH:  # too deep or a cycle: the walk says which
        raise _TooDeep
    nodes, chars, depth, nul = 1, 0, 1, False
    for c in (*value.keys(), *value.values()) if isinstance(value, dict) else value:
        if isinstance(c, str):
            nodes, chars = nodes + 1, chars + len(c)
            nul = nul or "\x00" in c
        elif isinstance(c, (dict, list)):
            n, ch, d, z = _tree_sizes(c, sizes, level + 1)
            nodes, chars, nul = nodes + n, chars + ch, nul or z
            depth = max(depth, d + 1)
        else:
            nodes += 1
    sizes[key] = out = (nodes, chars, depth, nul)
    return out


def _measure(data: Any, source: str) -> tuple[int, int, int, bool]:
    """(values, characters, depth, whether some string holds a NUL) of the document as
    expanded, computed once per distinct container (aliases share theirs), so a
    billion-laughs document costs its own size."""
    if not isinstance(data, (dict, list)):
        text = data if isinstance(data, str) else ""
        return 1, len(text), 0, "\x00" in text
    try:
        return _tree_sizes(data, {}, 0)
    except _TooDeep:
        return _measure_walk(data, source)


def _measure_walk(data: Any, source: str) -> tuple[int, int, int, bool]:
    """:func:`_measure` without recursion: what a cycle or a document nested deeper than
    :data:`MAX_DEPTH` gets (each refused, with its own message)."""
    sizes: dict[int, tuple[int, int, int]] = {}
    open_: set[int] = set()  # containers whose children are being measured (the path)
    stack: list[tuple[Any, bool]] = [(data, False)]
    nul = False
    while stack:
        value, children_done = stack.pop()
        key = id(value)
        if not children_done:
            if key in sizes:
                continue
            if key in open_:
                raise BadInputError(f"{source}: a YAML alias refers to itself (a cycle)")
            open_.add(key)
            stack.append((value, True))
            stack.extend((c, False) for c in _children(value) if isinstance(c, (dict, list)))
            continue
        nodes, chars, depth = 1, 0, 1
        for c in _children(value):
            if isinstance(c, (dict, list)):
                n, ch, d = sizes[id(c)]
                nodes, chars, depth = nodes + n, chars + ch, max(depth, d + 1)
            else:
                nodes += 1
                if isinstance(c, str):
                    chars += len(c)
                    nul = nul or "\x00" in c
        sizes[key] = (nodes, chars, depth)
        open_.discard(key)
    if not isinstance(data, (dict, list)):
        text = data if isinstance(data, str) else ""
        return 1, len(text), 0, "\x00" in text
    return (*sizes[id(data)], nul)


def _find_bad_text(data: Any) -> tuple[tuple[Any, ...], str] | None:
    """The path of the first string a column would refuse (each container visited once)."""
    seen: set[int] = set()
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            problem = check_text(value)
            if problem:
                return path, problem
        elif isinstance(value, (dict, list)) and id(value) not in seen:
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                stack.append((k, (*path, "<key>")))
                stack.append((v, (*path, k if isinstance(k, (str, int)) else "?")))
    return None


def check_document(data: Any, source: str) -> None:
    """Refuse documents too large once expanded, too deep, or holding NUL bytes."""
    nodes, chars, depth, nul = _measure(data, source)
    if nodes > MAX_NODES:
        raise BadInputError(
            f"{source}: the manifest expands to more than {MAX_NODES} values (YAML aliases "
            "count each time they are used); split it into smaller manifests"
        )
    if chars > MAX_CHARS:
        raise BadInputError(
            f"{source}: the manifest's strings add up to more than {MAX_CHARS} characters "
            "once YAML aliases are expanded"
        )
    if depth > MAX_DEPTH:
        raise BadInputError(f"{source}: values are nested deeper than {MAX_DEPTH} levels")
    bad = _find_bad_text(data) if nul else None  # the path, only when there is a problem
    if bad is not None:
        raise BadInputError(f"{source}: {clip(_where(bad[0]), 200)}: {bad[1]}")


def count_jobs(n_jobs: int, matrix: dict[str, list[Any]]) -> int:
    """How many jobs a manifest expands to (before building any of them)."""
    return n_jobs * math.prod(len(v) for v in matrix.values())
