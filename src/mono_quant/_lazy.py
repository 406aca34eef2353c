"""Lazy package exports (PEP 562): names are imported from their module on first use.

``import mono_quant`` (and ``mono_quant.io``, ``mono_quant.quant``) must stay light: the
worker's main process, the catalog and the scheduler's commands never need torch, and
importing it costs a second per process.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any


def lazy_exports(
    package: str, names: dict[str, str], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps an export to its module."""
    subs = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
        elif name in subs:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        globals_ = importlib.import_module(package).__dict__
        globals_[name] = value  # the next access is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(names) | subs)

    return __getattr__, __dir__
