"""The object-store :class:`~mono_quant.io.store.Store`: S3, GCS, Azure Blob through fsspec.

Publishing a file is one streamed write: fsspec's backends send a file up to the part size as
one PUT and a larger one as a multipart upload that is completed only when the file is closed.
The part size grows with the file where 8 MiB parts would exceed S3's 10,000 parts
(:func:`part_size`).
An error before that aborts the upload (:func:`_discard`); a process killed mid-upload leaves
an incomplete multipart upload, which no reader can see and which :meth:`ObjectStore.abort_uploads`
removes (the next attempt of the job calls it).

Errors of the backend are translated: a missing bucket and refused credentials are
BadConfigError (the operator has to act), anything else a TransientError. Messages name the
root and the key, never a credential.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from mono_quant.errors import BadConfigError, MonoQuantError, TransientError
from mono_quant.io.store import (
    PART_SIZE,
    Store,
    Stored,
    _hashed_copy,
    cache_dir,
    normalize_storage_key,
)

__all__ = ["MAX_PARTS", "ObjectStore", "part_size"]

T = TypeVar("T")

#: The most parts one S3 multipart upload may have (S3's limit; moto enforces it too).
MAX_PARTS = 10_000


def part_size(size: int) -> int:
    """The part size for uploading ``size`` bytes: :data:`~mono_quant.io.store.PART_SIZE`,
    or, where that would take more than :data:`MAX_PARTS` parts (a file over 78 GiB), the
    smallest whole number of MiB that does not.

    Example:
        >>> part_size(1 << 30) >> 20, part_size(100 << 30) >> 20
        (8, 11)
    """
    mib = 1 << 20
    needed = -(-size // MAX_PARTS)  # ceil
    return max(PART_SIZE, -(-needed // mib) * mib)


def _discard(out: Any) -> None:
    """Abandon a write: abort its multipart upload and close it without committing."""
    with contextlib.suppress(Exception):
        out.discard()  # s3fs: aborts the multipart upload
    out.buffer = None  # nothing left for close() to send
    out.closed = True


class ObjectStore(Store):
    """Keys under ``scheme://bucket/prefix``; credentials from the backend's environment."""

    def __init__(self, url: str) -> None:
        import fsspec

        self.root = url
        self.scheme, rest = url.split("://", 1)
        self.base = rest.strip("/")
        self.bucket = self.base.split("/", 1)[0]
        # no listing cache: another worker may have written or removed keys since
        self.fs = fsspec.filesystem(self.scheme, use_listings_cache=False,
                                    skip_instance_cache=True)

    def _path(self, key: str) -> str:
        return f"{self.base}/{normalize_storage_key(key)}"

    def url(self, key: str) -> str:
        return f"{self.scheme}://{self._path(key)}"

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args)`` with the backend's errors said in our terms (see the module doc)."""
        try:
            return fn(*args, **kwargs)
        except MonoQuantError:
            raise
        except FileNotFoundError:
            if self._bucket_exists():  # the key is missing, not the bucket
                raise
            raise BadConfigError(
                f"storage root {self.root}: the bucket {self.bucket!r} does not exist (or is "
                "not visible with these credentials); create it or fix MONO_QUANT_STORAGE_ROOT"
            ) from None
        except PermissionError as e:
            raise BadConfigError(
                f"storage root {self.root}: {what} was refused ({_code(e)}); check the "
                "credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE / the instance role, or the "
                "backend's equivalent) and their rights on the bucket"
            ) from None
        except OSError as e:
            raise TransientError(f"storage root {self.root}: {what} failed: {_code(e)}") from e

    def _bucket_exists(self) -> bool:
        try:
            return bool(self.fs.exists(self.bucket))
        except Exception:
            return False

    def check(self) -> None:
        self._call("listing the bucket", self.fs.ls, self.bucket, detail=False)

    def _put_file(self, src: Path, key: str) -> Stored:
        path = self._path(key)
        with open(src, "rb") as f:
            out = self._call(f"writing {key}", self.fs.open, path, "wb",
                             block_size=part_size(os.fstat(f.fileno()).st_size))
            try:
                stored = self._call(f"writing {key}", _hashed_copy, f, out)
                self._call(f"writing {key}", out.close)  # completes the upload: now visible
            except BaseException:
                _discard(out)  # a failed completion too: abort, never half an object
                raise
        return stored

    def open(self, key: str) -> BinaryIO:
        # no read-ahead: every read() is one ranged GET of exactly what was asked
        return self._call(f"reading {key}", self.fs.open, self._path(key), "rb",
                          cache_type="none")

    def exists(self, key: str) -> bool:
        return bool(self._call(f"looking up {key}", self.fs.exists, self._path(key)))

    def _info(self, key: str) -> dict[str, Any]:
        return self._call(f"reading {key}", self.fs.info, self._path(key))

    def files(self, key: str) -> list[str]:
        if self._info(key)["type"] != "directory":
            return [""]
        path = self._path(key)
        found = self._call(f"listing {key}", self.fs.find, path)
        return sorted(p[len(path) + 1:] for p in found)

    def _file_size(self, key: str) -> int:
        return int(self._info(key)["size"])

    def list(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        try:
            found = self._call(f"listing {prefix}", self.fs.ls, path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(p[len(self.base) + 1:] for p in found if p.rstrip("/") != path)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call(f"removing {key}", self.fs.rm, self._path(key), recursive=True)

    def abort_uploads(self, prefix: str) -> int:
        """Abort the incomplete multipart uploads under ``prefix`` (what a writer killed
        mid-upload left; invisible to readers, but billed). Returns how many; 0 where the
        backend has no such uploads (only S3 lists them)."""
        call = getattr(self.fs, "call_s3", None)
        if call is None:
            return 0
        key_prefix = self._path(prefix)[len(self.bucket) + 1:]
        listed = self._call("listing uploads", call, "list_multipart_uploads",
                            Bucket=self.bucket, Prefix=key_prefix)
        uploads = listed.get("Uploads", [])
        for u in uploads:
            self._call("aborting an upload", call, "abort_multipart_upload",
                       Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
        return len(uploads)

    def local(self, key: str) -> Path:
        """A cached download (:func:`~mono_quant.io.store.cache_dir`), named by the object's
        URL, sizes and ETags: a changed object is fetched again."""
        path = self._path(key)
        entries = [self._info(key)] if self.files(key) == [""] else \
            [self.fs.info(f"{path}/{rel}") for rel in self.files(key)]
        tag = json.dumps([self.url(key)] + [[e["name"], e.get("size"), e.get("ETag")]
                                            for e in entries])
        target = cache_dir() / hashlib.sha256(tag.encode()).hexdigest()[:32] / Path(path).name
        if not target.exists():
            with _staging(target) as tmp:
                self._call(f"downloading {key}", self.fs.get, path, str(tmp),
                           recursive=len(entries) > 1 or entries[0]["type"] == "directory")
                _keep_mtimes(tmp, path, entries)
        return target


def _keep_mtimes(local: Path, path: str, entries: list[dict[str, Any]]) -> None:
    """Give each downloaded file its object's modification time (as ``aws s3 sync`` does),
    so every node's copy of a model looks the same to what fingerprints files by name, size
    and mtime (a sequential job's progress, resumed on another node)."""
    for e in entries:
        when = next((e[k] for k in ("LastModified", "mtime", "last_modified") if e.get(k)),
                    None)  # s3fs, gcsfs, adlfs
        if not hasattr(when, "timestamp"):
            continue
        rel = e["name"].rstrip("/")[len(path) + 1:]
        with contextlib.suppress(OSError):
            os.utime(local / rel if rel else local, (when.timestamp(), when.timestamp()))


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A temporary name next to ``target``, renamed to it if the block succeeds."""
    import shutil
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".download.", dir=target.parent))
    try:
        yield tmp_dir / target.name
        with contextlib.suppress(FileExistsError, OSError):
            os.replace(tmp_dir / target.name, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _code(e: BaseException) -> str:
    """The backend's short reason (an error code such as ``AccessDenied``), never its text
    in full: some backends echo request details."""
    for arg in getattr(e, "args", ()):
        if isinstance(arg, str) and arg:
            return arg.split(":", 1)[0][:120]
    return type(e).__name__
