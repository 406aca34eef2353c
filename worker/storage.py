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

On an object store (``MONO_QUANT_STORAGE_ROOT=s3://…``, :mod:`mono_quant.io.store`) there are
no folders to pin: the pipeline writes into a scratch folder of this worker, and
:meth:`AttemptOutput.publish` uploads it to the attempt's key, hashing while it streams
(one PUT or multipart upload per file; see docs/object-stores.md). :func:`attempt_output`
hands out either kind, so the job code is the same for both. A sequential job's progress
(:meth:`AttemptOutput.work_dir`) stays in the store, not in the scratch folder, so an attempt
on another node resumes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mono_quant.errors import BadInputError, StorageError
from mono_quant.io.layout import SUFFIX
from mono_quant.io.store import Store, Stored, is_store_url, open_store, resolve_storage_key

__all__ = ["AttemptOutput", "artifact_key", "attempt_output", "check_pinned", "discard_key",
           "pinned_folder", "remove", "remove_earlier_attempts", "resolve"]

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
    return resolve_storage_key(root, key)


def remove(path: Path) -> None:
    """Delete a file or folder artifact (and nothing if it is gone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _attempt_name(job_id: int) -> re.Pattern[str]:
    """Names an attempt of ``job_id`` leaves in its key's folder (group 1: the attempt)."""
    return re.compile(rf"^\.?{int(job_id)}-(\d+)(\.safetensors|\.pt)?(\..*\.(tmp|old))?$")


def remove_earlier_attempts(path: Path, job_id: int, attempt: int) -> list[Path]:
    """Remove what earlier attempts of this job left next to ``path``: finished files that
    were never recorded and temporaries of writers that were killed (``.<name>.*.tmp|.old``).
    Earlier attempts are dead — a claim only succeeds once they are presumed so."""
    removed = []
    pattern = _attempt_name(job_id)
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        m = pattern.match(entry.name)
        if m and int(m.group(1)) < attempt:
            remove(entry)
            removed.append(entry)
    return removed


def _remove_earlier_objects(store: Any, key: str, job_id: int, attempt: int) -> list[str]:
    """:func:`remove_earlier_attempts` on an object store: earlier attempts' objects (files,
    or a folder artifact's objects) and the incomplete uploads of writers that were killed."""
    parent, _, _ = key.rpartition("/")
    pattern = _attempt_name(job_id)
    removed = []
    for entry in store.list(parent):
        m = pattern.match(entry.rpartition("/")[2])
        if m and int(m.group(1)) < attempt:
            store.delete(entry)
            removed.append(entry)
    store.abort_uploads(f"{parent}/{int(job_id)}-")
    return removed


@dataclass
class AttemptOutput:
    """Where one attempt writes (``path``, for the pipeline) and how it is published at
    ``key``: in place in a pinned folder of a local root, or uploaded to an object store."""

    root: str | Path
    key: str
    path: Path
    #: The pinned folder of a local root; None on an object store.
    folder: Path | None
    store: Store | None = None

    def publish(self, sha256: str, size: int) -> Stored:
        """Make the pipeline's output the attempt's artifact; its (sha256, size) as stored.

        Local: the file is already in place; check no symlink was swapped in meanwhile. Object
        store: upload, hashing while it streams; a hash that differs from the pipeline's (the
        scratch file changed under us) is a StorageError and the objects are removed."""
        if self.store is None:
            check_pinned(self.root, self.key, self.folder)
            return Stored(sha256, size)
        stored = self.store.put(self.path, self.key)
        if stored.sha256 != sha256:
            self.store.delete(self.key)
            raise StorageError(
                f"storage key {self.key!r}: uploaded sha256 {stored.sha256[:12]}… differs from "
                f"the file the pipeline wrote ({sha256[:12]}…); the upload was removed"
            )
        return stored

    def work_dir(self, job_id: int) -> Path | str:
        """Where a sequential run of the job keeps its progress: ``<job id>.work`` next to
        the artifact, one per job so every attempt finds it — on an object store, the URL of
        that prefix in the store (not this attempt's scratch folder, which another node
        never sees)."""
        if self.store is None:
            return (self.folder or self.path.parent) / f"{int(job_id)}.work"
        return self.store.url(f"{self.key.rpartition('/')[0]}/{int(job_id)}.work")

    def discard(self) -> None:
        """Remove what this attempt wrote (it is nobody's artifact once the attempt failed)."""
        if self.store is None:
            remove(self.path)
        else:
            self.store.delete(self.key)
            self.store.abort_uploads(self.key)


def attempt_output(root: str | Path, key: str, job_id: int, attempt: int,
                   stack: contextlib.ExitStack) -> AttemptOutput:
    """The :class:`AttemptOutput` of one attempt, after removing what earlier (killed) attempts
    of the job left; ``stack`` holds the pinned folder or the scratch folder open."""
    name = key.rpartition("/")[2]
    if not is_store_url(root):
        folder = stack.enter_context(pinned_folder(root, key))
        remove_earlier_attempts(folder / name, job_id, attempt)
        return AttemptOutput(root, key, folder / name, folder)
    store = open_store(root, what="MONO_QUANT_STORAGE_ROOT")
    store.check()  # a missing bucket or refused credentials: bad_config before the work
    _remove_earlier_objects(store, key, job_id, attempt)
    scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="mono-quant-upload-"))
    return AttemptOutput(root, key, Path(scratch) / name, None, store)


def discard_key(root: str | Path, key: str) -> None:
    """Remove the artifact at ``key`` (a forced re-run's replaced artifact), without following
    symlinks on a local root."""
    if is_store_url(root):
        open_store(root, what="MONO_QUANT_STORAGE_ROOT").delete(key)
        return
    with pinned_folder(root, key, create=False) as old:
        remove(old / key.rpartition("/")[2])


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
