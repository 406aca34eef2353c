"""Settings, read once from the environment.

Every setting is an environment variable ``MONO_QUANT_<NAME>``; each one is documented where it
is defined below and in the README's settings table. A URL setting wins over host/port parts.

Example:
    >>> from mono_quant.config import get_settings
    >>> get_settings().compile in ("auto", "always", "never")
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mono_quant.errors import BadConfigError

__all__ = ["Settings", "get_settings"]

_PREFIX = "MONO_QUANT_"

#: Where the embedded runner keeps its SQLite catalog and artifacts when nothing else is set.
DEFAULT_DATA_DIR = "./mono-quant-data"

#: ``auto``: use a torch.compile CPU kernel for large tensors when a C++ compiler works;
#: ``always``: for every CPU tensor; ``never``: plain torch ops only.
DEFAULT_COMPILE = "auto"

#: Tensors with at least this many elements take the compiled CPU path under ``auto``.
DEFAULT_COMPILE_MIN_NUMEL = 1 << 20


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(_PREFIX + name)
    return default if value is None or value == "" else value


def _env_int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise BadConfigError(
            f"{_PREFIX}{name}={raw!r} is not an integer; set it to a whole number or unset it"
        ) from e


@dataclass(frozen=True)
class Settings:
    """Process-wide settings (see the README's settings table)."""

    #: MONO_QUANT_DATA_DIR — folder for the embedded catalog and artifacts.
    data_dir: Path
    #: MONO_QUANT_COMPILE — ``auto`` | ``always`` | ``never`` (see DEFAULT_COMPILE).
    compile: str
    #: MONO_QUANT_COMPILE_MIN_NUMEL — size threshold for the compiled path under ``auto``.
    compile_min_numel: int

    @classmethod
    def from_env(cls) -> Settings:
        compile_mode = (_env("COMPILE", DEFAULT_COMPILE) or DEFAULT_COMPILE).lower()
        if compile_mode not in ("auto", "always", "never"):
            raise BadConfigError(
                f"{_PREFIX}COMPILE={compile_mode!r}: expected one of 'auto', 'always', 'never'"
            )
        return cls(
            data_dir=Path(_env("DATA_DIR", DEFAULT_DATA_DIR) or DEFAULT_DATA_DIR),
            compile=compile_mode,
            compile_min_numel=_env_int("COMPILE_MIN_NUMEL", DEFAULT_COMPILE_MIN_NUMEL),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read from the environment on first use."""
    return Settings.from_env()
