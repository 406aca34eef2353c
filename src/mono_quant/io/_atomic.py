"""Atomic writes: an artifact is either complete at its final name or absent.

Writers get a temporary file (or folder) in the target's own directory, so the final
``os.replace`` is a rename within one filesystem. Data is flushed and fsynced before the
rename and the directory is fsynced after it, so a crash at any point leaves either the old
artifact or the new one, never a prefix of it. On an error the temporary is removed.

Example:
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
    >>> with atomic_file(target) as f:
    ...     _ = f.write(b"abc")
    >>> target.read_bytes()
    b'abc'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mono_quant.errors import StorageError

__all__ = ["atomic_dir", "atomic_file", "fsync_dir"]

#: Permissions of finished artifacts: shared storage is read by other users and workers.
FILE_MODE = 0o644
DIR_MODE = 0o755


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it is durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parent(path: Path) -> Path:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"{path}: cannot create the folder {parent}: {e}") from e
    return parent


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a file open for ``w+b`` that appears at ``path`` only if the block succeeds."""
    path = Path(path)
    parent = _parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise StorageError(f"{path}: cannot create a temporary file in {parent}: {e}") from e
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise StorageError(f"{path}: writing failed: {e}") from e
        raise
    fsync_dir(parent)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``path`` only if the block succeeds.

    Files written into it must be fsynced by their writers (``atomic_file`` does). An existing
    folder at ``path`` is swapped out by two renames and then deleted, so readers see the old
    folder or the new one, never a mix.
    """
    path = Path(path)
    parent = _parent(path)
    if path.exists() and not path.is_dir():
        raise StorageError(f"{path}: exists and is not a folder; remove it or choose another path")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise StorageError(f"{path}: cannot create a temporary folder in {parent}: {e}") from e
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        fsync_dir(tmp)
        old = moved = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            moved = old / path.name
            os.replace(path, moved)
        try:
            os.replace(tmp, path)
        except OSError:
            if moved is not None:  # put the previous artifact back
                os.replace(moved, path)
            raise
        fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise StorageError(f"{path}: writing failed: {e}") from e
        raise
