"""URL query parameters → :class:`~mono_quant.catalog.ArtifactQuery`, with the CLI's names.

``/artifacts?scheme=symmetric,asymmetric&min_sqnr=40&order_by=size_bytes:asc`` asks what
``mono-quant catalog list --scheme symmetric,asymmetric --min-sqnr 40 --order-by
size_bytes:asc`` asks: the parameter names are the ``catalog list`` flags with ``_`` for
``-``, values are parsed by the same helpers (:func:`parse_size`, :func:`parse_since`) and
validated by :class:`ArtifactQuery` itself, so a typo is a 400 naming the parameter, never an
empty page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mono_quant.catalog import ArtifactQuery, parse_since, parse_size
from mono_quant.errors import BadInputError

__all__ = ["FILTER_PARAMS", "MAX_LIMIT", "artifact_query", "int_param"]

#: The most rows one page shows (the JSON API too): pages stay fast at any catalog size.
MAX_LIMIT = 1000

# parameter -> ArtifactQuery field, for the multi-valued filters ("a,b" or repeated).
_LISTS = {
    "model": "models", "model_digest": "model_digests", "scheme": "schemes",
    "granularity": "granularities", "mode": "modes", "artifact_format": "formats",
    "dtype": "dtypes", "status": "statuses", "batch": "batches",
}
#: Every filter parameter the artifacts page and ``/api/artifacts`` accept.
FILTER_PARAMS = (*_LISTS, "min_sqnr", "min_cosine", "max_size", "since", "latest",
                 "order_by", "limit")
# Model sources may contain commas ("factory:m:f?a=1,b=2"): only split fixed-choice values.
_NO_SPLIT = ("model", "model_digest", "batch")


def _values(params: Mapping[str, Sequence[str]], name: str) -> list[str]:
    raw = [v.strip() for v in params.get(name, ()) if v.strip()]
    if name in _NO_SPLIT:
        return raw
    return [part.strip() for v in raw for part in v.split(",") if part.strip()]


def _float(name: str, text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError as e:
        raise BadInputError(f"{name}={text!r}: expected a number") from e


def int_param(name: str, text: str | None, default: int, lo: int, hi: int) -> int:
    """An integer parameter in ``[lo, hi]``; BadInputError naming it otherwise."""
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError as e:
        raise BadInputError(f"{name}={text!r}: expected an integer") from e
    if not lo <= value <= hi:
        raise BadInputError(f"{name}={value}: expected {lo} to {hi}")
    return value


def artifact_query(params: Mapping[str, Sequence[str]]) -> ArtifactQuery:
    """The query that the parameters ask for (``params``: name → every value given)."""
    unknown = sorted(set(params) - set(FILTER_PARAMS) - {"token"})
    if unknown:
        raise BadInputError(
            f"unknown parameter(s) {', '.join(unknown)}; expected {', '.join(FILTER_PARAMS)}"
        )

    def one(name: str) -> str | None:
        values = params.get(name) or [None]
        return values[-1]

    order = one("order_by") or "created_at:desc"
    field, _, direction = order.partition(":")
    if direction not in ("", "asc", "desc"):
        raise BadInputError(f"order_by={order!r}: the direction must be asc or desc")
    max_size, since = one("max_size"), one("since")
    return ArtifactQuery(
        **{field_: _values(params, name) for name, field_ in _LISTS.items()},
        min_sqnr=_float("min_sqnr", one("min_sqnr")),
        min_cosine=_float("min_cosine", one("min_cosine")),
        max_size=parse_size(max_size) if max_size and max_size.strip() else None,
        since=parse_since(since) if since and since.strip() else None,
        latest=(one("latest") or "").lower() in ("1", "true", "yes", "on"),
        order_by=field, descending=direction != "asc",
        limit=int_param("limit", one("limit"), 100, 1, MAX_LIMIT),
    )
