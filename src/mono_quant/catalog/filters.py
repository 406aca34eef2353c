"""``ArtifactQuery``: what people ask of the catalog, validated before it reaches SQL.

Several values in one field are OR-ed (``schemes=("symmetric", "asymmetric")``), fields are
AND-ed, and numeric ranges are first-class (``min_sqnr``, ``min_cosine``, ``max_size``).
Unknown values are a :class:`~mono_quant.errors.BadInputError` naming the field and the values
it accepts — a typo must not silently match nothing.

The parsers turn CLI strings into values: sizes (``"10MB"``, ``"1.5GiB"``), times (ISO dates,
ISO datetimes, or ``"7d"`` / ``"12h"`` / ``"30m"`` ago).

Example:
    >>> q = ArtifactQuery(schemes=["asymmetric"], min_sqnr=40, order_by="weight_sqnr_db")
    >>> q.schemes, q.descending
    (('asymmetric',), True)
    >>> parse_size("1.5KiB")
    1536
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from mono_quant.errors import BadInputError
from mono_quant.io.layout import FORMATS
from mono_quant.quant.qconfig import GRANULARITIES, MODES
from mono_quant.quant.specs import SCHEMES

__all__ = [
    "DTYPES",
    "FORMATS",
    "GRANULARITIES",
    "MODES",
    "ORDER_FIELDS",
    "SCHEMES",
    "STATUSES",
    "ArtifactQuery",
    "parse_since",
    "parse_size",
]

# The values the library writes: taken from it (torch-free modules), one home per fact.
DTYPES = ("int8",)
STATUSES = ("pending", "queued", "running", "succeeded", "failed", "cancelled")
#: Columns ``order_by`` accepts.
ORDER_FIELDS = (
    "created_at", "id", "model_source", "weight_sqnr_db", "weight_sqnr_db_min",
    "output_sqnr_db", "output_cosine", "size_bytes", "compression_ratio",
)

#: Rows returned when no limit is given (``limit=None`` means all).
DEFAULT_LIMIT = 100

# field -> (singular for messages, allowed values)
_CHOICES = {
    "schemes": ("scheme", SCHEMES), "granularities": ("granularity", GRANULARITIES),
    "modes": ("mode", MODES), "dtypes": ("dtype", DTYPES), "formats": ("format", FORMATS),
    "statuses": ("status", STATUSES),
}


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    try:
        items = tuple(value)
    except TypeError as e:
        raise BadInputError(f"{name}={value!r}: expected a list of strings") from e
    if not all(isinstance(v, str) and v for v in items):
        raise BadInputError(f"{name}={value!r}: expected non-empty strings")
    return items


def _number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise BadInputError(f"{name}={value!r}: expected a number")
    return float(value)


@dataclass(frozen=True)
class ArtifactQuery:
    """A catalog search: OR within a field, AND across fields.

    ``batches`` holds batch ids (ints) or names; ``statuses`` filters on the status of the job
    that produced the artifact. With ``latest``, the filters are applied first and then only
    the newest artifact of each (model, quantization config, format) is kept. Results are
    ordered by ``order_by`` (NULLs last, ties by id in the same direction) and cut at
    ``limit`` (None: no limit).
    """

    models: tuple[str, ...] = ()
    model_digests: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()
    granularities: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    batches: tuple[int | str, ...] = ()
    statuses: tuple[str, ...] = ()
    #: Minimum overall weight SQNR in dB (inclusive).
    min_sqnr: float | None = None
    #: Minimum output cosine similarity (inclusive); artifacts without one never match.
    min_cosine: float | None = None
    #: Maximum artifact size in bytes (inclusive).
    max_size: int | None = None
    #: Created at or after this (timezone-aware) time.
    since: datetime | None = None
    latest: bool = False
    order_by: str = "created_at"
    descending: bool = True
    limit: int | None = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in _CHOICES or f.name in ("models", "model_digests"):
                items = _strings(f.name, getattr(self, f.name))
                singular, allowed = _CHOICES.get(f.name, (f.name, None))
                unknown = [v for v in items if allowed is not None and v not in allowed]
                if unknown:
                    raise BadInputError(
                        f"unknown {singular} {', '.join(map(repr, unknown))}; "
                        f"expected one of {', '.join(allowed or ())}"
                    )
                object.__setattr__(self, f.name, items)
        object.__setattr__(self, "batches", self._batches(self.batches))
        object.__setattr__(self, "min_sqnr", _number("min_sqnr", self.min_sqnr))
        object.__setattr__(self, "min_cosine", _number("min_cosine", self.min_cosine))
        size = self.max_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise BadInputError(f"max_size={size!r}: expected a non-negative number of bytes")
        if self.since is not None and (
            not isinstance(self.since, datetime) or self.since.tzinfo is None
        ):
            raise BadInputError(f"since={self.since!r}: expected a timezone-aware datetime")
        if self.order_by not in ORDER_FIELDS:
            raise BadInputError(
                f"unknown order field {self.order_by!r}; expected one of {', '.join(ORDER_FIELDS)}"
            )
        lim = self.limit
        if lim is not None and (isinstance(lim, bool) or not isinstance(lim, int) or lim < 1):
            raise BadInputError(f"limit={lim!r}: expected a positive integer or None (no limit)")

    @staticmethod
    def _batches(value: Any) -> tuple[int | str, ...]:
        if value is None:
            return ()
        from mono_quant.catalog.limits import parse_id

        items = (value,) if isinstance(value, (int, str)) else tuple(value)
        out: list[int | str] = []
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, str)) or v == "":
                raise BadInputError(f"batches: {v!r} is neither a batch id nor a batch name")
            # ASCII digits are an id (in the column's range); anything else is a name, so
            # "٢" is not batch 2
            is_id = isinstance(v, int) or (v.isascii() and v.isdigit())
            out.append(parse_id(str(v), "batch id") if is_id else v)
        return tuple(out)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from ``"123"``, ``"10MB"`` (10⁷), ``"1.5GiB"`` (1.5·2³⁰)."""
    m = _SIZE.match(text)
    unit = (m.group(2) or "").lower() if m else ""
    unit = unit[:-1] if unit.endswith("b") else unit
    if m is None or unit not in _UNITS:
        raise BadInputError(
            f"size {text!r}: expected a number of bytes with an optional unit "
            "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. '500MB'"
        )
    return int(float(m.group(1)) * _UNITS[unit])


_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_AGO_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ``"2024-05-01"``, ``"2024-05-01T12:00+02:00"`` or ``"7d"``.

    Dates and datetimes without an offset are taken as UTC.
    """
    m = _AGO.match(text)
    if m:
        now = now or datetime.now(timezone.utc)
        try:
            return now - timedelta(**{_AGO_UNITS[m.group(2).lower()]: float(m.group(1))})
        except OverflowError as e:
            raise BadInputError(
                f"time {text[:40]!r}: an age that reaches before year 1; give a smaller one"
            ) from e
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as e:
        raise BadInputError(
            f"time {text!r}: expected an ISO date or datetime ('2024-05-01', "
            "'2024-05-01T12:00:00+02:00') or an age such as '7d', '12h', '30m'"
        ) from e
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
