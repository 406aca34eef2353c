"""A cheap digest of an ``hf:`` model's weight files, part of the job's idempotency key.

Re-running a manifest must skip a job whose weights are unchanged and run one whose weights
changed, whatever the files' times say. Each weight file contributes the sha256 of its
content:

* in a Hugging Face cache snapshot, the name of the blob it links to: the hub names blobs by
  the sha256 of their content (LFS), so this is a content hash for free;
* otherwise the sha256 of its bytes, from a :class:`~mono_quant.pipeline.content_cache.
  ContentHashCache` while the file's size, mtime, ctime, inode and device are unchanged (the
  service keeps one next to the catalog), so a submit reads no weight byte of a file it has
  digested before; a touched but unchanged file is read once more and keeps its key.

Weight files are ``*.safetensors``, ``*.safetensors.index.json``, ``*.bin``, ``*.pt``,
``*.pth`` and ``config.json`` (the architecture is part of what is quantized).

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text("{}")
    >>> len(weights_digest(d))
    64
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mono_quant.errors import BadInputError
from mono_quant.io.hashing import sha256_path
from mono_quant.pipeline.content_cache import ContentHashCache

__all__ = ["WEIGHT_PATTERNS", "weights_digest"]

#: The files of a model folder that the digest covers.
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.pt", "*.pth",
                   "config.json")


def _entry(folder: Path, path: Path, cache: ContentHashCache | None) -> str:
    real = path.resolve()
    name = path.relative_to(folder).as_posix()
    if real.parent.name == "blobs" and len(real.name) >= 40:  # a hub cache blob: its hash
        return f"{name}\0blob\0{real.name}\n"
    digest = sha256_path(real) if cache is None else cache.sha256(real)
    return f"{name}\0sha256\0{digest}\n"


def weights_digest(folder: str | Path, cache: ContentHashCache | None = None) -> str:
    """sha256 over the content hashes of the weight files of ``folder`` (module docstring),
    in sorted order; ``cache`` remembers them (None: every file is read and hashed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder (expected a model folder to digest)")
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)},
                   key=lambda p: p.as_posix())
    h = hashlib.sha256()
    try:
        for path in files:
            h.update(_entry(folder, path, cache).encode())
    except OSError as e:
        raise BadInputError(f"{folder}: cannot read a weight file to digest it: {e}") from e
    return h.hexdigest()
