"""argparse value types shared by the commands: ids and counts read the way the catalog
stores them, so a value the database would choke on is a usage error (exit 2), not a
traceback.

Example:
    >>> catalog_id("12"), count("0")
    (12, 0)
    >>> catalog_id("٢")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: id '٢': expected a positive whole number (0-9)
"""

from __future__ import annotations

import argparse

__all__ = ["batch_ref", "catalog_id", "count", "printable"]


def catalog_id(text: str) -> int:
    """A row id: ASCII digits within the id column's range."""
    from mono_quant.catalog.limits import parse_id
    from mono_quant.errors import BadInputError

    try:
        return parse_id(text)
    except BadInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def batch_ref(text: str) -> int | str:
    """A batch by id or by name: digits are an id (ASCII only, in range, checked here), any
    other text a name, looked up later."""
    raw = text.strip()
    if any(c.isdigit() for c in raw) and raw.isdigit():
        return catalog_id(raw)
    return text


def count(text: str) -> int:
    """A non-negative number (a limit) within a 32-bit integer's range."""
    from mono_quant.catalog.limits import INT32_MAX

    raw = text.strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) > INT32_MAX:
        raise argparse.ArgumentTypeError(
            f"{raw[:40]!r}: expected a whole number from 0 to {INT32_MAX}")
    return int(raw)


def printable(text: object) -> str:
    """``text`` with control characters escaped (``\\x1b``, ``\\n``): names and messages from
    manifests and the catalog must not drive the terminal that shows them.

    Example:
        >>> printable("ok\\x1b[2Jname")
        'ok\\\\x1b[2Jname'
    """
    value = str(text)
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in value)
