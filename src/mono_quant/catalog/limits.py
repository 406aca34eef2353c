"""What the catalog's columns accept, read from the models: one home for string lengths,
integer ranges and the NUL byte.

SQLite accepts strings of any length, NUL bytes and 64-bit integers in every column;
PostgreSQL refuses a ``VARCHAR(255)`` value of 256 characters, any NUL byte in text or
``jsonb``, and an ``INTEGER`` above 2³¹−1 (a ``DataError`` mid-transaction). Callers validate
user values against these limits **before** the database sees them, so both backends accept
exactly the same manifests and command-line values.

Example:
    >>> from mono_quant.catalog.models import Job
    >>> check_column(Job.queue, "gpu"), check_column(Job.max_attempts, 2**31)
    (None, 'expected an integer from -2147483648 to 2147483647')
    >>> check_column(Job.name, "x" * 300)
    'expected at most 255 characters (got 300)'
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Integer, SmallInteger, String

__all__ = ["INT32_MAX", "check_column", "check_text", "int_range", "parse_id"]

INT32_MAX = 2**31 - 1
_RANGES = {SmallInteger: 15, BigInteger: 63, Integer: 31}  # most specific first
#: (max length, integer range) per column, by id: reading ``column.type`` through the ORM
#: attribute costs microseconds, and a manifest checks tens of thousands of values.
_LIMITS: dict[int, tuple[int | None, tuple[int, int] | None]] = {}


def int_range(column: Any) -> tuple[int, int] | None:
    """(min, max) of an integer column (PostgreSQL's sizes: SQLite's are wider), else None."""
    kind = column.type
    for cls, bits in _RANGES.items():
        if isinstance(kind, cls):
            return -(2**bits), 2**bits - 1
    return None


def check_text(value: str) -> str | None:
    """A problem with a string any column (or a JSON document) would refuse, else None."""
    if "\x00" in value:
        return "contains a NUL byte (\\x00), which PostgreSQL cannot store"
    return None


def _limits(column: Any) -> tuple[int | None, tuple[int, int] | None]:
    found = _LIMITS.get(id(column))
    if found is None:
        kind = column.type
        length = getattr(kind, "length", None) if isinstance(kind, String) else None
        found = _LIMITS[id(column)] = (length, int_range(column))
    return found


def check_column(column: Any, value: Any) -> str | None:
    """Why ``value`` does not fit ``column`` (an ORM attribute such as ``Job.name``), else None."""
    length, bounds = _limits(column)
    if isinstance(value, str):
        problem = check_text(value)
        if problem:
            return problem
        if length is not None and len(value) > length:
            return f"expected at most {length} characters (got {len(value)})"
        return None
    if bounds is not None and isinstance(value, int) and not isinstance(value, bool):
        low, high = bounds
        if not low <= value <= high:
            return f"expected an integer from {low} to {high}"
    return None


def parse_id(text: str, what: str = "id") -> int:
    """A row id from user text: ASCII digits only (``int()`` would read the Arabic-Indic
    ``٢`` as 2), within the id column's range. Raises BadInputError."""
    from mono_quant.catalog.models import Job
    from mono_quant.errors import BadInputError

    raw = str(text).strip()
    if not (raw.isascii() and raw.isdigit()):
        raise BadInputError(f"{what} {raw[:40]!r}: expected a positive whole number (0-9)")
    value = int(raw)
    high = (int_range(Job.id) or (0, INT32_MAX))[1]
    if not 1 <= value <= high:
        raise BadInputError(f"{what} {raw[:40]}: expected a number from 1 to {high}")
    return value
