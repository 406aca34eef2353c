"""What a path is, found with ``stat`` before anything opens it.

Opening a FIFO for reading blocks until a writer appears, and reading a device can block
forever or never end, so ``inspect``, ``catalog verify`` and storage walks look first and
refuse anything that is not a regular file or folder — without opening it.

Example:
    >>> import os, tempfile
    >>> fifo = os.path.join(tempfile.mkdtemp(), "pipe.safetensors")
    >>> os.mkfifo(fifo)
    >>> refuse_special_file(fifo)
    Traceback (most recent call last):
    ...
    mono_quant.errors.BadInputError: .../pipe.safetensors: is a FIFO (named pipe), not a \
regular file; refusing to read it
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mono_quant.errors import BadInputError

__all__ = ["is_special", "kind_of", "refuse_special_file"]

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISLNK, "a symbolic link"),
)


def kind_of(mode: int) -> str:
    """``'a regular file'``, ``'a FIFO (named pipe)'``, … for an ``st_mode``."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def is_special(mode: int) -> bool:
    """Neither a regular file nor a folder (nor a symlink, for ``lstat`` results)."""
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


def refuse_special_file(path: str | os.PathLike[str]) -> os.stat_result | None:
    """``stat(path)``; BadInputError for a FIFO, device or socket; None when it is missing.

    Folders and regular files pass: callers say what they expected.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if is_special(st.st_mode):
        raise BadInputError(
            f"{Path(path)}: is {kind_of(st.st_mode)}, not a regular file; refusing to read it"
        )
    return st
