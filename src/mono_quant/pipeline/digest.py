"""A cheap digest of an ``hf:`` model's weight files, part of the job's idempotency key.

Re-running a manifest must not skip a job whose weights changed in place. Hashing every byte
of a 70B checkpoint at each submit would cost minutes, so each weight file contributes:

* in a Hugging Face cache snapshot, the name of the blob it links to: the hub names blobs by
  the sha256 of their content (LFS), so this is a content hash for free;
* otherwise its name, size and modification time (``st_mtime_ns``), plus, for safetensors,
  its header (names, dtypes, shapes, offsets and metadata: the first ``8 + N`` bytes).

Rewriting a file changes its mtime, so changed weights give a new key; touching a file
without changing it also does (a spurious re-run, never a wrong skip). Weight files are
``*.safetensors``, ``*.safetensors.index.json``, ``*.bin``, ``*.pt``, ``*.pth`` and
``config.json`` (the architecture is part of what is quantized).

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text("{}")
    >>> len(weights_digest(d))
    64
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from mono_quant.errors import BadInputError

__all__ = ["WEIGHT_PATTERNS", "weights_digest"]

#: The files of a model folder that the digest covers.
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.pt", "*.pth",
                   "config.json")
_MAX_HEADER = 100 << 20  # safetensors' own limit on header size


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return head
        (n,) = struct.unpack("<Q", head)
        return head + f.read(min(n, _MAX_HEADER))


def _entry(folder: Path, path: Path) -> str:
    real = path.resolve()
    if real.parent.name == "blobs" and len(real.name) >= 40:  # a hub cache blob: its hash
        return f"{path.relative_to(folder).as_posix()}\0blob\0{real.name}\n"
    st = real.stat()
    line = f"{path.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\0"
    if path.name.endswith(".safetensors"):
        line += hashlib.sha256(_safetensors_header(real)).hexdigest()
    return line + "\n"


def weights_digest(folder: str | Path) -> str:
    """sha256 over the weight files of ``folder`` (module docstring), in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder (expected a model folder to digest)")
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)},
                   key=lambda p: p.as_posix())
    h = hashlib.sha256()
    try:
        for path in files:
            h.update(_entry(folder, path).encode())
    except OSError as e:
        raise BadInputError(f"{folder}: cannot read a weight file to digest it: {e}") from e
    return h.hexdigest()
