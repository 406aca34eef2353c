"""Column types that behave the same on SQLite and PostgreSQL.

* :class:`UTCDateTime` — timezone-aware UTC datetimes in and out. PostgreSQL stores
  ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC (and string
  order is time order) and come back with ``tzinfo=UTC``. A naive datetime given to us is a
  bug in the caller (local time or UTC?), so it is rejected.
* :class:`Metric` — a double that survives ``±inf`` (a lossless layer has an SQNR of ``inf``)
  on both backends, so ``weight_sqnr_db >= 40`` still selects it. ``nan`` (undefined) is
  stored as NULL: PostgreSQL sorts NaN above every number, SQLite stores it as NULL anyway, and
  a comparison with NULL is false on both.
* :data:`JSONDocument` — JSON; ``jsonb`` on PostgreSQL.

Example:
    >>> from datetime import datetime, timezone
    >>> UTCDateTime().process_bind_param(
    ...     datetime(2024, 1, 1, 12, tzinfo=timezone.utc), None).isoformat()
    '2024-01-01T12:00:00+00:00'
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Double
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

__all__ = ["JSONDocument", "Metric", "UTCDateTime", "utcnow"]

#: JSON on SQLite, jsonb on PostgreSQL (indexable, compact, normalised).
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` that always takes and returns aware UTC datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()}: give a timezone-aware datetime "
                "(e.g. datetime.now(timezone.utc))"
            )
        value = value.astimezone(timezone.utc)
        if dialect is not None and dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Metric(TypeDecorator[float]):
    """A double precision column for metrics: ``±inf`` kept, ``nan`` stored as NULL."""

    impl = Double()
    cache_ok = True

    def process_bind_param(self, value: float | None, dialect: Any) -> float | None:
        if value is None:
            return None
        value = float(value)
        return None if math.isnan(value) else value
