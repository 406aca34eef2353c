"""Where artifacts live: keys derived from the job, under one storage root.

An artifact's key is ``<k[:2]>/<k>/<job>-<attempt><ext>`` where ``k`` is the job's
idempotency key: derived from the job, never from a name a user chose, so nothing in a
manifest can steer a path outside the root. Every attempt writes its own path, so two
attempts that overlap (a forced re-run of the same key, a worker presumed dead that is still
writing) can never overwrite each other's file or the committed artifact; the catalog row
says which one is the artifact, and the others are removed.

Symlinks are not followed at the moment of writing. :func:`pinned_folder` creates and opens
the key's folders one component at a time relative to an open descriptor of the storage
root (``mkdir``/``open`` with ``dir_fd`` and ``O_NOFOLLOW``), and hands out a path that names
the open folder itself (``/proc/self/fd/N``): a symlink planted later, anywhere on the way,
cannot redirect the temporary file, the rename, the reload or the hash. Before the artifact
is recorded, :func:`check_pinned` walks the key again and requires it to reach the very same
folder; otherwise the write is undone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from mono_quant.errors import BadInputError, StorageError
from mono_quant.io.layout import SUFFIX

__all__ = ["artifact_key", "check_pinned", "pinned_folder", "remove", "remove_earlier_attempts",
           "resolve"]

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
#: Where Linux names an open descriptor as a path (resolving it never re-walks the path).
_FD_PATHS = Path("/proc/self/fd")

_HEX = re.compile(r"^[0-9a-f]{64}$")


def artifact_key(idempotency_key: str, fmt: str, job_id: int, attempt: int) -> str:
    """The storage key of one attempt's artifact (relative POSIX path)."""
    if not _HEX.match(idempotency_key):
        raise BadInputError(f"idempotency key {idempotency_key!r}: expected 64 hex digits")
    if fmt not in SUFFIX:
        raise BadInputError(f"format {fmt!r}: expected one of {', '.join(SUFFIX)}")
    k = idempotency_key
    return f"{k[:2]}/{k}/{int(job_id)}-{int(attempt)}{SUFFIX[fmt]}"


def resolve(root: str | Path, key: str) -> Path:
    """The path of ``key`` under ``root``; refuses keys (or symlinks) that leave the root."""
    from mono_quant.catalog import resolve_storage_key

    return resolve_storage_key(root, key)


def remove(path: Path) -> None:
    """Delete a file or folder artifact (and nothing if it is gone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_earlier_attempts(path: Path, job_id: int, attempt: int) -> list[Path]:
    """Remove what earlier attempts of this job left next to ``path``: finished files that
    were never recorded and temporaries of writers that were killed (``.<name>.*.tmp|.old``).
    Earlier attempts are dead — a claim only succeeds once they are presumed so."""
    removed = []
    pattern = re.compile(rf"^\.?{int(job_id)}-(\d+)(\.safetensors|\.pt)?(\..*\.(tmp|old))?$")
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        m = pattern.match(entry.name)
        if m and int(m.group(1)) < attempt:
            remove(entry)
            removed.append(entry)
    return removed


def _open_child(parent_fd: int, name: str, root: Path, key: str, create: bool) -> int:
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=parent_fd)
    try:
        return os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StorageError(
                f"storage key {key!r}: {name!r} under {root} is a symbolic link or not a "
                "folder; refusing to write through it"
            ) from e
        raise StorageError(f"storage key {key!r}: cannot open folder {name!r}: {e}") from e


def _walk(root: Path, key: str, create: bool) -> int:
    """An open descriptor of the folder of ``key`` (its parent), walked without symlinks."""
    if create:
        root.mkdir(parents=True, exist_ok=True)  # the root itself is the operator's choice
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError as e:
        raise StorageError(f"storage root {root}: cannot open it: {e}") from e
    try:
        for part in Path(key).parent.parts:
            child = _open_child(fd, part, root, key, create)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def pinned_folder(root: str | Path, key: str, *, create: bool = True) -> Iterator[Path]:
    """Yield a path naming the open folder of ``key`` (see the module docstring).

    Where ``/proc/self/fd`` does not exist, the ordinary path is yielded and
    :func:`check_pinned` is what catches a redirected write.
    """
    root = Path(root)
    resolve(root, key)  # the key's syntax
    fd = _walk(root, key, create)
    try:
        pinned = _FD_PATHS / str(fd)
        yield pinned if pinned.is_dir() else root / Path(key).parent
    finally:
        os.close(fd)


def check_pinned(root: str | Path, key: str, folder: Path) -> None:
    """StorageError unless walking ``key`` from ``root`` now (no symlinks) reaches ``folder``
    — the folder the artifact was written into."""
    fd = _walk(Path(root), key, create=False)
    try:
        now, wrote = os.fstat(fd), os.stat(folder)
    finally:
        os.close(fd)
    if (now.st_dev, now.st_ino) != (wrote.st_dev, wrote.st_ino):
        raise StorageError(
            f"storage key {key!r}: its folder under {root} was replaced while the job ran; "
            "the artifact written there was removed"
        )
