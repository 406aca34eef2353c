"""The one error hierarchy of mono-quant.

Every error the library raises on purpose derives from :class:`MonoQuantError`, so callers can
catch ours without catching torch's. The subclasses say *who* has to act:

* :class:`BadInputError` — the model, tensor, file or data given to us is wrong. Retrying will
  not help; the user has to fix the input. (Also a ``ValueError``.)
* :class:`BadConfigError` — a configuration value is invalid. Retrying will not help.
  (Also a ``ValueError``.)
* :class:`StorageError` — reading or writing an artifact failed (disk, permissions, corrupt
  files we wrote). May or may not be transient; the worker decides from the cause.
* :class:`TransientError` — worth retrying: a broker or database that did not answer, a GPU
  that ran out of memory.

Messages say what was received, what was expected and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BadConfigError",
    "BadInputError",
    "MonoQuantError",
    "StorageError",
    "TransientError",
]


class MonoQuantError(Exception):
    """Base class of every error mono-quant raises on purpose."""


class BadInputError(MonoQuantError, ValueError):
    """The input (model, tensor, file, calibration data) is invalid; retrying will not help."""


class BadConfigError(MonoQuantError, ValueError):
    """A configuration value is invalid; the message names the field."""


class StorageError(MonoQuantError, OSError):
    """Reading or writing an artifact failed, or an artifact on disk is not what we wrote."""


class TransientError(MonoQuantError):
    """A failure worth retrying (service unavailable, out of memory)."""
