"""Durable progress of a sequential job, and the one writer of its tensors.

A work folder (next to the artifact; the worker names it per job, so every attempt of a
job finds it) holds::

    state.json           {"fingerprint", "blocks_done", "parts", "activations", "stats"}
    parts/00003.safetensors   the quantized tensors of block 3 (full names)
    parts/tail.safetensors    embeddings, final norm, head
    acts-00004.pt        the cached inputs of block 4 (weights_only pickle of tensors), or
    acts-00004/          the same offloaded to disk, one file per batch (activations.py)

Order of writes after block ``i``: its part file and the next block's inputs (each to a
temporary name, fsynced, renamed), then ``state.json`` the same way, then the previous
activations are removed. A crash at any point leaves either the old state (block ``i`` is
redone) or the new one: never a state naming a file that is not complete.

:meth:`Progress.resume` returns the saved state only when its fingerprint (model files,
config, calibration tensors) equals the job's: a changed input starts over from block 0.

With ``remote`` (the URL of a prefix in an object store, ``s3://bucket/…/7.work``), the
folder is this attempt's local scratch copy and the store holds the durable one, so an
attempt on another node resumes too: after block ``i`` its part file and the next inputs
are uploaded under the prefix, then ``state.json`` (one PUT: the commit point, so the stored
state never names an object that is not complete), then the previous inputs are deleted
there. :meth:`Progress.resume` downloads what the stored state names into the folder;
:meth:`Progress.remove` deletes the prefix as well.
:meth:`Progress.assemble` copies the parts into the artifact (one file, or shards) one part
at a time, converting them when the format asks (compressed-tensors); :meth:`Progress.remove`
deletes the folder once the artifact is in place, so a succeeded job leaves only the
artifact.

Example:
    >>> import tempfile, torch
    >>> p = Progress(tempfile.mkdtemp() + "/work", "f1")
    >>> p.resume() is None
    True
    >>> p.commit_block(0, {"b.0.w": torch.ones(2)}, [{"x": torch.zeros(1)}], {"n": 1})
    >>> state = Progress(p.folder, "f1").resume()
    >>> state.blocks_done, state.stats, Progress(p.folder, "changed").resume() is None
    (1, {'n': 1}, True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mono_quant.errors import MonoQuantError
from mono_quant.pipeline.activations import DEFAULT_OFFLOAD_BYTES, ActivationCache

__all__ = ["Convert", "Progress", "SavedState", "fingerprint"]

_STATE = "state.json"
#: Maps one part's tensors to the artifact's (e.g. to the compressed-tensors layout).
Convert = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
#: The files of a work folder besides ``parts/`` (temporaries included).
_OURS = re.compile(r"^\.?(state\.json|acts-\d+\.pt)(\.tmp)?$")
#: A stored state's activations: a file (the cache in memory) or a folder (offloaded).
_ACTS = re.compile(r"acts-\d{5,}(\.pt)?")
#: The files of an offloaded activation cache (:class:`ActivationCache`).
_BATCH_FILE = re.compile(r"\d{5,}\.pt")
#: Its folders besides ``parts/``: offloaded activation caches (committed and filling).
_OURS_DIRS = re.compile(r"^(acts-\d+|\.acts-\d+(-half)?\.tmp)$")


@dataclass
class SavedState:
    """What a previous attempt finished: blocks ``0 .. blocks_done - 1``."""

    blocks_done: int
    activations: list[Any] | None
    stats: dict[str, Any] = field(default_factory=dict)


def fingerprint(payload: dict[str, Any], files: list[Path], batches: list[Any] | None) -> str:
    """sha256 of the job's config, the checkpoint files (name, size, mtime; config.json's
    bytes) and the calibration tensors' bytes."""
    h = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        if f.name == "config.json":
            h.update(f.read_bytes())
    _hash_item(h, batches)
    return h.hexdigest()


def _hash_item(h: Any, item: Any) -> None:
    if isinstance(item, torch.Tensor):
        t = item.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(item, dict):
        for k in sorted(item):
            h.update(str(k).encode())
            _hash_item(h, item[k])
    elif isinstance(item, (list, tuple)):
        h.update(f"[{len(item)}".encode())
        for v in item:
            _hash_item(h, v)
    else:
        h.update(repr(item).encode())


class _Remote:
    """The durable copy of a work folder under a prefix of an object store."""

    def __init__(self, url: str) -> None:
        from mono_quant.io.store import split_url

        self.url = url.rstrip("/")
        self.store, self.prefix = split_url(self.url)

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def state(self) -> dict[str, Any] | None:
        try:
            with self.store.open(self._key(_STATE)) as f:
                return json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return None

    def push(self, folder: Path, rel: str) -> None:
        self.store.put(folder / rel, self._key(rel))

    def pull(self, rel: str, folder: Path) -> None:
        """Download the file or folder ``rel`` into ``folder``. A folder is an offloaded
        activation cache: only its batch files (``00000.pt``...) are taken; any other name
        is not ours (FileNotFoundError: the caller starts over)."""
        names = self.store.files(self._key(rel))  # [""] for a file
        if names != [""] and not all(_BATCH_FILE.fullmatch(n) for n in names):
            raise FileNotFoundError(f"{self._key(rel)}: not an activation cache of mono-quant")
        for name in names:
            self._pull_file(f"{rel}/{name}" if name else rel, folder)

    def _pull_file(self, rel: str, folder: Path) -> None:
        """Download the file ``rel`` into ``folder`` (a temporary name, fsynced, renamed)."""
        from mono_quant.io.store import PART_SIZE

        final = folder / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp")
        with self.store.open(self._key(rel)) as src, open(tmp, "wb") as dst:
            while block := src.read(PART_SIZE):  # one ranged GET each
                dst.write(block)
        _fsync_rename(tmp, final)

    def delete(self, rel: str | None = None) -> None:
        self.store.delete(self._key(rel) if rel else self.prefix)


def _well_formed(state: Any) -> bool:
    """Whether a stored state is one this class writes: it names files by these rules only,
    so a state changed by hand cannot send a download anywhere else."""
    return (isinstance(state, dict) and isinstance(state.get("fingerprint"), str)
            and type(state.get("blocks_done")) is int and state["blocks_done"] >= 0
            and (state.get("activations") is None
                 or bool(_ACTS.fullmatch(str(state["activations"])))))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_rename(tmp: Path, final: Path) -> None:
    _fsync(tmp)
    os.replace(tmp, final)
    _fsync(final.parent)


def _fsync_rename_dir(tmp: Path, final: Path) -> None:
    """Rename a folder whose files are synced; a folder already at ``final`` (a redone
    block's) is removed first."""
    _fsync(tmp)
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(final.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class Progress:
    """The work folder of one sequential job, and its copy in an object store when
    ``remote`` is a URL (see the module docstring)."""

    def __init__(self, folder: str | Path, fingerprint: str, remote: str | None = None,
                 offload_bytes: int | None = DEFAULT_OFFLOAD_BYTES) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.remote = None if remote is None else _Remote(remote)
        self.offload_bytes = offload_bytes

    def new_cache(self, index: int, variant: str = "") -> ActivationCache:
        """An empty activation cache for block ``index``'s inputs; offloaded, its files go
        to ``.acts-0000i.tmp/`` (``.acts-0000i-half.tmp/``: the ``half`` variant, a block's
        batches halved after an out-of-memory) until :meth:`commit_block` renames or
        removes the folder."""
        folder = self.folder / f".acts-{index:05d}{'-' + variant if variant else ''}.tmp"
        if folder.is_dir() and not folder.is_symlink():  # left by a killed attempt
            shutil.rmtree(folder)
        return ActivationCache(folder, self.offload_bytes)

    @property
    def parts(self) -> Path:
        return self.folder / "parts"

    def _state(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / _STATE).read_text())
        except (OSError, ValueError):
            return None

    def resume(self) -> SavedState | None:
        """The saved state if it belongs to this fingerprint; otherwise None (and the
        folder is emptied: a changed input starts over). With a remote copy, the folder is
        first replaced by what the stored state names."""
        if self.remote is not None:
            self._pull()
        state = self._state()
        if state is None or state.get("fingerprint") != self.fingerprint:
            self.remove()
            return None
        acts = state.get("activations")
        activations: Any = None
        if acts is not None and (self.folder / acts).is_dir():  # an offloaded cache
            activations = ActivationCache.on_disk(self.folder / acts)
        elif acts is not None:
            activations = torch.load(self.folder / acts, weights_only=True)
        return SavedState(state["blocks_done"], activations, state.get("stats", {}))

    def _pull(self) -> None:
        """Make the folder the store's copy: the parts of the blocks the stored state counts,
        its activations, then its ``state.json`` (nothing when there is no stored state of
        this fingerprint: :meth:`resume` then starts over and removes both copies)."""
        self._remove_local()
        state = self.remote.state()
        if not _well_formed(state) or state["fingerprint"] != self.fingerprint:
            return
        names = [f"parts/{i:05d}.safetensors" for i in range(state["blocks_done"])]
        if state.get("activations"):
            names.append(state["activations"])
        try:
            for rel in names:
                self.remote.pull(rel, self.folder)
        except FileNotFoundError:  # not written by this class: start over
            self._remove_local()
            return
        tmp = self.folder / f".{_STATE}.tmp"
        tmp.write_text(json.dumps(state, allow_nan=True))
        _fsync_rename(tmp, self.folder / _STATE)

    def _write_part(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        self.parts.mkdir(parents=True, exist_ok=True)
        tmp = self.parts / f".{name}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        _fsync_rename(tmp, self.parts / f"{name}.safetensors")

    def commit_block(self, index: int, tensors: dict[str, torch.Tensor],
                     activations: list[Any] | None, stats: dict[str, Any]) -> None:
        """Make block ``index`` durable: its tensors, the next block's inputs, the stats."""
        self._write_part(f"{index:05d}", tensors)
        acts = None
        if isinstance(activations, ActivationCache) and activations.offloaded:
            acts = f"acts-{index + 1:05d}"
            for f in activations.files():
                _fsync(f)
            _fsync_rename_dir(activations.folder, self.folder / acts)
            activations.folder = self.folder / acts  # the next block reads it there
        elif activations is not None:
            if isinstance(activations, ActivationCache):
                activations = activations.in_memory()
            acts = f"acts-{index + 1:05d}.pt"
            tmp = self.folder / f".{acts}.tmp"
            torch.save(activations, tmp)
            _fsync_rename(tmp, self.folder / acts)
        old = self._state()
        state = {"fingerprint": self.fingerprint, "blocks_done": index + 1,
                 "activations": acts, "stats": stats}
        tmp = self.folder / f".{_STATE}.tmp"
        tmp.write_text(json.dumps(state, allow_nan=True))
        _fsync_rename(tmp, self.folder / _STATE)
        stale = old.get("activations") if old else None
        if stale == acts:
            stale = None
        if self.remote is not None:  # the same order in the store: state.json commits
            for rel in (f"parts/{index:05d}.safetensors", acts, _STATE):
                if rel is not None:
                    self.remote.push(self.folder, rel)
            if stale:
                self.remote.delete(stale)
        if stale:
            _remove(self.folder / stale)
        _remove(self.folder / f".acts-{index:05d}.tmp")  # block 0's captured inputs
        _remove(self.folder / f".acts-{index:05d}-half.tmp")  # its inputs, halved

    def write_tail(self, tensors: dict[str, torch.Tensor]) -> None:
        """The tensors outside the blocks (written last, never resumed from)."""
        self._write_part("tail", tensors)

    def part_files(self) -> list[Path]:
        return sorted(self.parts.glob("*.safetensors"))

    def meta_tensors(self) -> dict[str, torch.Tensor]:
        """Every part's tensors as meta tensors (name, dtype, shape; no data), in the parts'
        order: what a converter needs to know the output's header before any data is read."""
        from mono_quant.io._safetensors_stream import read_header

        out: dict[str, torch.Tensor] = {}
        for f in self.part_files():
            for name, e in read_header(f).tensors.items():
                if name in out:
                    raise MonoQuantError(f"{f}: tensor {name!r} written twice")
                out[name] = torch.empty(e.shape, dtype=e.torch_dtype, device="meta")
        return out

    def part_tensors(self) -> Iterator[dict[str, torch.Tensor]]:
        """The parts' tensors, one part (one block) in memory at a time (plain reads)."""
        from mono_quant.pipeline.skeleton import read_tensors

        for part in self.part_files():
            yield read_tensors(part)

    def assemble(self, dst: Path, metadata: dict[str, str],
                 max_shard_size: int | None = None, convert: Convert | None = None) -> None:
        """Write the artifact ``dst`` from the parts: one safetensors file, or with
        ``max_shard_size`` a sharded folder (:mod:`mono_quant.io.sharded`) written one tensor
        at a time, in the parts' order (blocks, then the tail). ``convert`` maps one part's
        tensors to what the artifact holds (the compressed-tensors layout); without it the
        tensor bytes are copied in chunks."""
        from mono_quant.io._atomic import atomic_file
        from mono_quant.io.sharded import sharded_folder

        if max_shard_size is not None:
            with sharded_folder(dst, max_shard_size) as writer:
                self.add_to_shards(writer, convert)
                writer.set_metadata(metadata)
            return
        with atomic_file(dst) as out:
            self.write_file(out, metadata, convert)

    def write_file(self, out: BinaryIO, metadata: dict[str, str],
                   convert: Convert | None = None) -> None:
        """One safetensors file of every part's tensors into ``out`` (see :meth:`assemble`).
        The header comes first, from the parts' headers (converted as meta tensors), so
        memory holds one part at most."""
        from mono_quant.io._safetensors_stream import (
            SafetensorsWriter,
            TensorSpec,
            copy_tensor_bytes,
            read_header,
        )

        meta = self.meta_tensors()
        if convert is not None:
            meta = convert(meta)
        writer = SafetensorsWriter(out, {k: TensorSpec.of(t) for k, t in meta.items()},
                                   metadata)
        if convert is None:
            for h in (read_header(f) for f in self.part_files()):
                with open(h.path, "rb") as f:
                    for name in h.tensors:
                        copy_tensor_bytes(f, h, name, writer)
        else:
            for tensors in self.part_tensors():
                for name, t in convert(tensors).items():
                    writer.write(name, t)
        writer.finish()

    def add_to_shards(self, writer: Any, convert: Convert | None = None) -> None:
        """Add every part's tensors (converted) to a :class:`~mono_quant.io.sharded.
        ShardedWriter`, one part in memory at a time."""
        if convert is not None:
            for tensors in self.part_tensors():
                for name, t in convert(tensors).items():
                    writer.add(name, t)
            return
        from mono_quant.io._safetensors_stream import read_header, read_tensor

        for part in self.part_files():  # one tensor at a time, plain reads
            header = read_header(part)
            with open(part, "rb") as f:
                for name in header.tensors:
                    writer.add(name, read_tensor(f, header, name))

    def remove(self) -> None:
        """Delete what this class writes (and the folder once it is empty): never a file
        of someone else's that happens to be in the folder; and the remote copy's prefix."""
        self._remove_local()
        if self.remote is not None:
            self.remote.delete()

    def _remove_local(self) -> None:
        if not self.folder.is_dir():
            return
        for entry in self.folder.iterdir():
            if (entry.name == "parts" or _OURS_DIRS.match(entry.name)) and entry.is_dir() \
                    and not entry.is_symlink():
                shutil.rmtree(entry)
            elif _OURS.match(entry.name) and entry.is_file():
                entry.unlink()
        with contextlib.suppress(OSError):
            self.folder.rmdir()
