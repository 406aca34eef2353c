"""Content digests of artifacts: one file, or a folder (compressed-tensors layout).

A file's digest is the sha256 of its bytes. A folder's digest is the sha256 of the lines
``"<relative posix path>\\0<sha256 of the file>\\n"`` over its files in sorted order, so it
changes when any file's content, name or presence changes.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> sha256_path(p)[:16]
    'ba7816bf8f01cfea'
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mono_quant.io._files import refuse_special_file

__all__ = [
    "checkpoint_digest", "folder_digest", "sha256_fd", "sha256_path", "size_path",
    "state_dict_digest",
]

_BLOCK = 1 << 20


def _sha256_file(path: Path) -> str:
    refuse_special_file(path)  # a FIFO would block the read forever
    return sha256_fd(os.open(path, os.O_RDONLY))[0]


def sha256_fd(fd: int) -> tuple[str, int]:
    """(sha256, size) of the bytes of the open file ``fd``, read with ``pread`` (its offset
    is untouched), then closed: give it a ``os.dup`` of a file still being written, to hash
    it in another thread while the writer syncs it (hashlib and reads release the GIL)."""
    try:
        h, size = hashlib.sha256(), 0
        buffer = memoryview(bytearray(16 * _BLOCK))
        while n := os.preadv(fd, [buffer], size):
            h.update(buffer[:n])
            size += n
        return h.hexdigest(), size
    finally:
        os.close(fd)


def _files(folder: Path) -> list[Path]:
    """The regular files under ``folder``; a FIFO, device or socket in it is refused."""
    found = []
    for p in folder.rglob("*"):
        if refuse_special_file(p) is not None and p.is_file():
            found.append(p)
    return sorted(found, key=lambda p: p.as_posix())


def folder_digest(files: Iterable[tuple[str, str]]) -> str:
    """A folder's digest from ``(relative posix path, sha256 of the file)`` pairs (any order):
    the one formula for a folder on disk and a folder in an object store."""
    h = hashlib.sha256()
    for rel, digest in sorted(files):
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """sha256 hex digest of a file, or of a folder's files as described above."""
    path = Path(path)
    if path.is_dir():
        return folder_digest((f.relative_to(path).as_posix(), _sha256_file(f))
                             for f in _files(path))
    return _sha256_file(path)


def size_path(path: str | Path) -> int:
    """Bytes of a file, or the total of a folder's files."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in _files(path))
    st = refuse_special_file(path)
    return path.stat().st_size if st is None else st.st_size


def state_dict_digest(module) -> str:
    """sha256 of a module's state dict: names, dtypes, shapes and bytes, in name order.

    The catalog's ``model_digest``: two artifacts made from the same float weights share it,
    whatever their source string.
    """
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        flat = t.detach().reshape(-1)
        if flat.device.type == "cpu" and flat.is_contiguous():  # its bytes, read in place
            h.update(flat.view(torch.uint8).numpy())
            continue
        step = max(1, _BLOCK // max(1, flat.element_size()))
        for start in range(0, flat.numel(), step):
            part = flat[start : start + step].cpu().contiguous()
            h.update(part.view(torch.uint8).numpy())
    return h.hexdigest()


def checkpoint_digest(files: Iterable[str | Path],
                      aliases: Mapping[str, str] | None = None) -> str:
    """:func:`state_dict_digest` of the model a safetensors checkpoint loads into, read from
    the files (no model built): the checkpoint's tensors, plus ``aliases``, the tied weights
    the files do not hold (name -> the tensor it shares: ``{"lm_head.weight":
    "model.embed_tokens.weight"}``). Equal to ``state_dict_digest`` of the loaded model when
    its state dict is exactly those names, dtypes and bytes: what
    :mod:`~mono_quant.pipeline.auto_stream` checks and tests per model family.
    """
    from mono_quant.io._safetensors_header import read_header

    entries = {}
    for path in files:
        header = read_header(path)
        entries.update({name: (header, e) for name, e in header.tensors.items()})
    entries.update({alias: entries[owner] for alias, owner in (aliases or {}).items()})
    h = hashlib.sha256()
    buffer = memoryview(bytearray(16 * _BLOCK))
    handles: dict[Path, Any] = {}
    with contextlib.ExitStack() as stack:
        for name in sorted(entries):
            header, e = entries[name]
            h.update(f"{name}\0{e.torch_dtype}\0{tuple(e.shape)}\n".encode())
            f = handles.get(header.path)
            if f is None:
                f = handles[header.path] = stack.enter_context(open(header.path, "rb"))
            f.seek(header.data_start + e.begin)
            left = e.nbytes
            while left:
                n = f.readinto(buffer[: min(left, len(buffer))])
                if not n:
                    raise OSError(f"{header.path}: truncated in tensor {name!r}")
                h.update(buffer[:n])  # hashlib releases the GIL on large buffers
                left -= n
    return h.hexdigest()
