"""Where artifacts live: keys derived from the job, under one storage root.

An artifact's key is ``<k[:2]>/<k>/<job>-<attempt><ext>`` where ``k`` is the job's
idempotency key: derived from the job, never from a name a user chose, so nothing in a
manifest can steer a path outside the root. Every attempt writes its own path, so two
attempts that overlap (a forced re-run of the same key, a worker presumed dead that is still
writing) can never overwrite each other's file or the committed artifact; the catalog row
says which one is the artifact, and the others are removed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from mono_quant.errors import BadInputError
from mono_quant.io.layout import SUFFIX

__all__ = ["artifact_key", "remove", "remove_earlier_attempts", "resolve"]

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
