"""Content hashes of weight files, cached by what ``stat`` says about each file.

The weight digest of an ``hf:`` job (:mod:`mono_quant.pipeline.digest`) covers the sha256 of
every weight file's bytes, so a file that was touched, copied back or rewritten with the same
bytes gives the same idempotency key (the job is skipped), and a file whose bytes changed
gives a new one (the job runs), whatever its size and times say. Reading a 70B checkpoint
at every submit would cost minutes, so each file's hash is kept in a small SQLite file (the
service keeps it next to the catalog, ``<data_dir>/weight-hashes.sqlite``) under the file's
resolved path, and reused while these ``stat`` fields are all unchanged:

=============  ============================================================================
field          changes when
=============  ============================================================================
size           bytes are added or cut
mtime_ns       the file is written (or ``touch``-ed)
ctime_ns       anything about the file changes, also when a tool resets mtime (rsync -t)
inode, device  the file is replaced by another one (rename over it, copy into place)
=============  ============================================================================

A touched file misses the cache once (its bytes are read and hashed again) and then hits.
The cache is an optimisation only: a file it cannot open or write is hashed every time (a
warning says why), and a file that changes while it is read is not cached.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "w.bin").write_bytes(b"abc")
    >>> cache = ContentHashCache(d / "hashes.sqlite")
    >>> cache.sha256(d / "w.bin")[:16], cache.stats
    ('ba7816bf8f01cfea', {'hits': 0, 'misses': 1})
    >>> cache.sha256(d / "w.bin")[:16], cache.stats
    ('ba7816bf8f01cfea', {'hits': 1, 'misses': 1})
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import closing
from pathlib import Path

from mono_quant.io.hashing import sha256_path

__all__ = ["CACHE_FILE", "ContentHashCache"]

log = logging.getLogger(__name__)

#: The cache's file name in the service's data folder (next to ``catalog.db``).
CACHE_FILE = "weight-hashes.sqlite"

_SCHEMA = """CREATE TABLE IF NOT EXISTS content_hash (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, device INTEGER NOT NULL,
    sha256 TEXT NOT NULL)"""


def _stat_key(path: str) -> tuple[int, int, int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


class ContentHashCache:
    """sha256 of files' contents, remembered in the SQLite file ``path`` (module docstring).

    One row per resolved file path (a new hash replaces the old one), so the file grows with
    the number of weight files digested, not with the number of submits. Within one instance
    (one submit) a file already looked up costs a ``stat`` only: a manifest naming one folder
    in many jobs opens the SQLite file once per weight file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.stats = {"hits": 0, "misses": 0}
        self._broken: str | None = None  # why the cache is not used (warned once)
        self._seen: dict[tuple[str, tuple[int, ...]], str] = {}  # this instance's lookups

    def _connect(self) -> sqlite3.Connection | None:
        if self._broken is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30)
                conn.execute(_SCHEMA)
                return conn
            except (OSError, sqlite3.Error) as e:
                self._disable(e)
        return None

    def _disable(self, error: Exception) -> None:
        self._broken = f"{type(error).__name__}: {error}"
        log.warning("%s: weight hash cache unusable, hashing weight files in full each time "
                    "(%s)", self.path, self._broken)

    def _lookup(self, path: str, key: tuple[int, ...]) -> str | None:
        conn = self._connect()
        if conn is None:
            return None
        try:
            with closing(conn):
                row = conn.execute("SELECT size, mtime_ns, ctime_ns, inode, device, sha256 "
                                   "FROM content_hash WHERE path = ?", (path,)).fetchone()
        except sqlite3.Error as e:
            self._disable(e)
            return None
        return row[5] if row is not None and tuple(row[:5]) == key else None

    def _store(self, path: str, key: tuple[int, ...], digest: str) -> None:
        conn = self._connect()
        if conn is None:
            return
        try:
            with closing(conn), conn:
                conn.execute("INSERT OR REPLACE INTO content_hash VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (path, *key, digest))
        except sqlite3.Error as e:
            self._disable(e)

    def sha256(self, path: str | Path) -> str:
        """The sha256 of ``path``'s bytes: from the cache while its ``stat`` is unchanged,
        else read and hashed (and cached unless it changed while being read).

        Raises:
            OSError: the file cannot be read.
        """
        real = os.path.realpath(path)
        key = _stat_key(real)
        digest = self._seen.get((real, key)) or self._lookup(real, key)
        if digest is not None:
            self.stats["hits"] += 1
        else:
            self.stats["misses"] += 1
            digest = sha256_path(real)
            if _stat_key(real) != key:
                return digest  # changed while read: not remembered
            self._store(real, key, digest)
        self._seen[(real, key)] = digest
        return digest
