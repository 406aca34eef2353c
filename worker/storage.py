"""Where artifacts live: deterministic keys under one storage root.

An artifact's key is derived from its job's idempotency key, never from a name a user chose,
so two jobs computing the same artifact write the same place and nothing a user writes in a
manifest can steer a path outside the root. Keys are POSIX paths relative to the root:
``ab/abcdef….safetensors`` (a folder ``ab/abcdef…`` for compressed-tensors).
"""

from __future__ import annotations

import re
from pathlib import Path

from mono_quant.errors import BadInputError, StorageError

__all__ = ["artifact_key", "clean_temporaries", "resolve"]

_EXT = {"safetensors": ".safetensors", "pt": ".pt", "compressed-tensors": ""}
_HEX = re.compile(r"^[0-9a-f]{64}$")


def artifact_key(idempotency_key: str, fmt: str) -> str:
    """The storage key of the artifact of a job (relative POSIX path)."""
    if not _HEX.match(idempotency_key):
        raise BadInputError(f"idempotency key {idempotency_key!r}: expected 64 hex digits")
    if fmt not in _EXT:
        raise BadInputError(f"format {fmt!r}: expected one of {', '.join(_EXT)}")
    return f"{idempotency_key[:2]}/{idempotency_key}{_EXT[fmt]}"


def resolve(root: str | Path, key: str) -> Path:
    """The path of ``key`` under ``root``; refuses keys (or symlinks) that leave the root."""
    from mono_quant.catalog import resolve_storage_key

    path = resolve_storage_key(root, key)  # lexical checks: relative, no "..", no URL
    real_root = Path(root).resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:  # a symlink pointing out
        raise StorageError(f"storage key {key!r} resolves outside the storage root {real_root}")
    return path


def clean_temporaries(path: Path) -> int:
    """Remove temporaries of ``path`` left by a writer that was killed (``.<name>.*.tmp``)."""
    removed = 0
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed += 1
    return removed
