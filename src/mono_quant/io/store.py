"""One storage interface for artifacts: a local folder, or an object store through fsspec.

:func:`open_store` turns a storage root (a folder path, ``file://``, ``s3://bucket/prefix``,
``gs://…``, ``az://…``) into a :class:`Store`. Everything that writes or checks artifacts goes
through the same few verbs, whatever the backend:

* ``put(src, key)`` — publish a local file or folder at ``key``, hashing it **while it
  streams** (no read-back). A file becomes visible whole or not at all: on a folder an atomic
  rename, on an object store one PUT or one multipart upload completed at the end (an error
  aborts it). A folder artifact's objects are written under the attempt's own key; the
  catalog row is its commit point.
* ``open(key)`` — a seekable reader; on an object store each ``read`` is a ranged GET, so a
  header costs two small requests, not a download.
* ``size(key)``, ``sha256(key)``, ``exists(key)``, ``list(prefix)``, ``delete(key)``.
* ``local(key)`` — a local path to read in full: the file itself on a folder, a cached
  download from an object store (see :func:`cache_dir`).

Keys are POSIX paths relative to the root, checked by :func:`normalize_storage_key`: no
``..``, no absolute path, no URL, so no key read from the catalog can leave the root.
Credentials and endpoints are the backend's own (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``,
instance roles, …): they are never part of a root, a key or a message.

Example:
    >>> import tempfile, pathlib
    >>> src = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
    >>> _ = src.write_bytes(b"abc")
    >>> store = open_store(tempfile.mkdtemp())
    >>> store.put(src, "ab/a.bin").sha256[:16], store.size("ab/a.bin")
    ('ba7816bf8f01cfea', 3)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from mono_quant._storage_url import check_store_url, is_url, local_path
from mono_quant.errors import BadInputError, StorageError
from mono_quant.io.hashing import folder_digest, sha256_path, size_path

__all__ = ["LocalStore", "Store", "Stored", "cache_dir", "is_store_url", "local_source",
           "normalize_storage_key", "open_store", "resolve_storage_key", "size_of", "split_url"]

#: Bytes read and sent per step; also the multipart part size on object stores (S3's minimum
#: part is 5 MiB). A file up to this size is one PUT.
PART_SIZE = 8 << 20


@dataclass(frozen=True)
class Stored:
    """What :meth:`Store.put` published: the sha256 (as :mod:`~mono_quant.io.hashing` computes
    it) and the size in bytes."""

    sha256: str
    size: int


def normalize_storage_key(key: str) -> str:
    """Check a storage key and return it in canonical form (no ``.`` parts, no doubled ``/``)."""

    def bad(why: str) -> BadInputError:
        return BadInputError(
            f"storage key {key!r}: {why}; expected a POSIX path relative to the storage root, "
            "e.g. 'models/mlp/1f2e.safetensors'"
        )

    if not isinstance(key, str) or not key.strip():
        raise bad("empty")
    if "\\" in key or "\0" in key:
        raise bad("backslashes and NUL bytes are not allowed")
    path = PurePosixPath(key)
    if path.is_absolute():
        raise bad("absolute paths are not allowed")
    if ".." in path.parts:
        raise bad("'..' is not allowed")
    parts = [p for p in path.parts if p != "."]
    if not parts:
        raise bad("names no file")
    if ":" in parts[0]:
        raise bad("URLs and drive letters are not allowed")
    return "/".join(parts)


def resolve_storage_key(storage_root: str | Path, key: str) -> Path:
    """The path of a storage key under a root folder.

    The key is checked first (relative, no ``..``, no URL); then the resolved path must still
    be inside the resolved root, so a symlink inside the storage cannot lead out of it.
    """
    root = Path(storage_root)
    path = root / normalize_storage_key(key)
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise StorageError(f"storage key {key!r} resolves outside the storage root {real_root}")
    return path


def cache_dir() -> Path:
    """Where downloads from object stores are kept: ``$XDG_CACHE_HOME/mono-quant/store``
    (default ``~/.cache/mono-quant/store``). Entries are named by the object's URL, size and
    ETag, so a changed object is downloaded again; delete the folder to reclaim the space."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mono-quant" / "store"


def _hashed_copy(src: BinaryIO, dst: BinaryIO) -> Stored:
    h, size = hashlib.sha256(), 0
    while block := src.read(PART_SIZE):
        h.update(block)
        dst.write(block)
        size += len(block)
    return Stored(h.hexdigest(), size)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


class Store:
    """Artifacts under one root (see the module docstring); :func:`open_store` makes one."""

    #: The root as given (a folder or a URL): for messages and ``artifact_uri``.
    root: str

    def url(self, key: str) -> str:
        """Where ``key`` lives, as a path or URL."""
        raise NotImplementedError

    def put(self, src: str | os.PathLike[str], key: str) -> Stored:
        """Publish the local file or folder ``src`` at ``key`` (see the module docstring)."""
        src = Path(src)
        key = normalize_storage_key(key)
        if not src.is_dir():
            return self._put_file(src, key)
        digests = {rel: self._put_file(src / rel, f"{key}/{rel}") for rel in _files(src)}
        return Stored(folder_digest((rel, s.sha256) for rel, s in digests.items()),
                      sum(s.size for s in digests.values()))

    def _put_file(self, src: Path, key: str) -> Stored:
        raise NotImplementedError

    def open(self, key: str) -> BinaryIO:
        """A seekable binary reader of the file at ``key``."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def files(self, key: str) -> list[str]:
        """The files of the artifact at ``key``: ``[""]`` for a file, else the relative paths
        of a folder's files in sorted order; FileNotFoundError when absent."""
        raise NotImplementedError

    def _file_size(self, key: str) -> int:
        raise NotImplementedError

    def size(self, key: str) -> int:
        """Bytes of the file at ``key``, or the total of a folder's files."""
        return sum(self._file_size(_join(key, rel)) for rel in self.files(key))

    def sha256(self, key: str) -> str:
        """sha256 of the file at ``key`` (streamed), or the folder digest of
        :func:`~mono_quant.io.hashing.sha256_path`."""
        names = self.files(key)
        if names == [""]:
            return self._file_sha256(key)
        return folder_digest((rel, self._file_sha256(f"{key}/{rel}")) for rel in names)

    def _file_sha256(self, key: str) -> str:
        h = hashlib.sha256()
        with self.open(key) as f:
            while block := f.read(PART_SIZE):
                h.update(block)
        return h.hexdigest()

    def list(self, prefix: str) -> list[str]:
        """The keys directly under the folder ``prefix`` (none if it does not exist)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove the file or folder at ``key`` (nothing if it is gone)."""
        raise NotImplementedError

    def local(self, key: str) -> Path:
        """A local path holding the artifact at ``key``, for reads in full."""
        raise NotImplementedError

    def check(self) -> None:
        """BadConfigError when the root cannot be used (no such bucket, refused credentials)."""

    def abort_uploads(self, prefix: str) -> int:
        """Abort the incomplete uploads under ``prefix`` that killed writers left; how many.
        A folder has none (its temporaries are removed by name)."""
        return 0


def _join(key: str, rel: str) -> str:
    return f"{key}/{rel}" if rel else key


class LocalStore(Store):
    """A folder (a local disk or a mounted shared volume)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.path = Path(root)
        self.root = str(self.path)

    def url(self, key: str) -> str:
        return str(resolve_storage_key(self.path, key))

    def _put_file(self, src: Path, key: str) -> Stored:
        from mono_quant.io._atomic import atomic_file

        target = resolve_storage_key(self.path, key)
        with open(src, "rb") as f, atomic_file(target) as out:
            return _hashed_copy(f, out)

    def open(self, key: str) -> BinaryIO:
        return open(resolve_storage_key(self.path, key), "rb")

    def exists(self, key: str) -> bool:
        return resolve_storage_key(self.path, key).exists()

    def files(self, key: str) -> list[str]:
        path = resolve_storage_key(self.path, key)
        if path.is_dir():
            return _files(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        return [""]

    def _file_size(self, key: str) -> int:
        return resolve_storage_key(self.path, key).stat().st_size

    # hashing's own walk: it refuses a FIFO or device in the folder without opening it
    def size(self, key: str) -> int:
        return size_path(resolve_storage_key(self.path, key))

    def sha256(self, key: str) -> str:
        return sha256_path(resolve_storage_key(self.path, key))

    def list(self, prefix: str) -> list[str]:
        folder = resolve_storage_key(self.path, prefix)
        if not folder.is_dir():
            return []
        return sorted(f"{normalize_storage_key(prefix)}/{p.name}" for p in folder.iterdir())

    def delete(self, key: str) -> None:
        path = resolve_storage_key(self.path, key)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def local(self, key: str) -> Path:
        return resolve_storage_key(self.path, key)


def open_store(root: str | os.PathLike[str], *, what: str = "storage root") -> Store:
    """The :class:`Store` of a root folder or URL; ``what`` names it in errors."""
    if is_url(root):
        from mono_quant.io._object_store import ObjectStore

        return ObjectStore(check_store_url(str(root), what))
    return LocalStore(local_path(str(root)))


def is_store_url(location: object) -> bool:
    """Whether ``location`` is an object store's URL (not a path, not ``file://``)."""
    return is_url(location)


@contextlib.contextmanager
def local_source(location: str | os.PathLike[str]) -> Iterator[Path]:
    """A local path for ``location``: itself, or a cached download of an object-store URL
    (a file or a folder)."""
    if not is_url(location):
        yield Path(local_path(str(location)))
        return
    store, key = split_url(str(location))
    yield store.local(key)


def size_of(location: str | os.PathLike[str]) -> int:
    """Bytes of a local artifact, or of one in an object store (file or folder)."""
    if not is_url(location):
        return size_path(local_path(str(location)))
    store, key = split_url(str(location))
    return store.size(key)


def split_url(url: str) -> tuple[Any, str]:
    """(the store of ``url``'s bucket, the key of the rest) — for reading a single URL."""
    scheme, rest = url.split("://", 1)
    bucket, _, key = rest.strip("/").partition("/")
    if not key:
        raise BadInputError(f"{url}: expected {scheme}://bucket/path/to/artifact")
    return open_store(f"{scheme}://{bucket}", what=url), normalize_storage_key(key)

