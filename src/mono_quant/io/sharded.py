"""Sharded safetensors: ``model-0000i-of-0000N.safetensors`` files and the standard
``model.safetensors.index.json``, as transformers and vLLM read large checkpoints.

A sharded artifact is a folder. For the ``safetensors`` format it keeps the artifact's name
(``…/ab12.safetensors`` is then a folder, so storage keys and formats do not change with the
layout); a compressed-tensors folder holds ``config.json`` beside the shards. With
``max_shard_size`` set the layout is always sharded, even when everything fits in one shard
(``model-00001-of-00001.safetensors``): the layout follows from the job, not from the model.

The index (``json.dumps(index, indent=2, sort_keys=True) + "\\n"``, like ``save_pretrained``)::

    {"metadata": {"mono_quant.info": "<QuantizationInfo JSON>", "total_size": 1234},
     "weight_map": {"<tensor name>": "model-00001-of-00002.safetensors", ...}}

``total_size`` is the tensors' bytes (headers excluded). The info lives in the index only
(one home): each shard's header metadata is ``{"format": "pt"}``, which transformers needs.

Shards fill in the order tensors arrive: a tensor that would take the current shard past
``max_shard_size`` starts a new one; a tensor larger than the limit gets a shard of its own.

Example (the streaming writer the sequential pipeline uses, one block at a time):
    >>> import tempfile, torch, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "m.safetensors"
    >>> with sharded_folder(out, max_shard_size=64) as w:
    ...     for i in range(3):                      # e.g. one decoder block after another
    ...         w.add(f"layers.{i}.weight", torch.zeros(4, 4))  # 64 bytes: one shard each
    ...     w.set_metadata({"note": "done"})   # e.g. the info JSON, known only at the end
    >>> sorted(p.name for p in out.iterdir())[:2]
    ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors']
    >>> sorted(read_sharded(out)[0])
    ['layers.0.weight', 'layers.1.weight', 'layers.2.weight']
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import torch

from mono_quant.errors import BadConfigError, BadInputError
from mono_quant.io._atomic import atomic_dir, atomic_file
from mono_quant.io._safetensors_header import IO_CHUNK, byte_view
from mono_quant.io._safetensors_stream import SafetensorsWriter, TensorSpec

__all__ = [
    "INDEX_FILE",
    "ShardedWriter",
    "is_shard_file",
    "is_sharded",
    "parse_size",
    "read_index",
    "read_sharded",
    "shard_name",
    "shard_writer",
    "sharded_folder",
]

#: The index file of a sharded checkpoint (transformers' ``SAFE_WEIGHTS_INDEX_NAME``).
INDEX_FILE = "model.safetensors.index.json"
#: Each shard's header metadata (transformers refuses safetensors without ``format``).
SHARD_METADATA = {"format": "pt"}
_SHARD_RE = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(value: int | str, what: str = "max_shard_size") -> int:
    """Bytes from an int or a string such as ``"5GB"`` (10**9) or ``"500MiB"`` (2**20), the
    units transformers' ``max_shard_size`` takes (case-insensitive; ``B`` optional).

    Example:
        >>> parse_size("5GB"), parse_size("2MiB"), parse_size(1000), parse_size("1.5kb")
        (5000000000, 2097152, 1000, 1500)
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadConfigError(f"{what}={value!r}: expected bytes (an integer) or a size such "
                             "as '5GB' or '500MiB'")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE_RE.fullmatch(value)
        unit = m and _UNITS.get(m.group(2).upper())
        if not m or unit is None:
            raise BadConfigError(f"{what}={value!r}: expected a size such as '5GB', '500MB' or "
                                 f"'2GiB' (units: {', '.join(u for u in _UNITS if u)})")
        size = int(float(m.group(1)) * unit)
    if size < 1:
        raise BadConfigError(f"{what}={value!r}: expected a positive size")
    return size


def shard_name(index: int, count: int) -> str:
    """``model-00001-of-00003.safetensors`` for shard 1 (1-based) of 3."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"


class ShardedWriter:
    """Write tensors one at a time into shards of at most ``max_shard_size`` tensor bytes.

    Memory stays at one tensor: each tensor's bytes go straight to a scratch file of the
    current shard; when the shard is full its safetensors file is written (header, then the
    scratch data copied in ``IO_CHUNK`` pieces) and the scratch removed. :meth:`finish` names
    the shards ``model-0000i-of-0000N`` once N is known and writes the index. Use it through
    :func:`sharded_folder`, which makes the whole folder appear atomically.

    Methods: :meth:`add` (name, tensor), :meth:`add_all` (tensors already in memory, written
    in one pass), :meth:`set_metadata` (the index's extra metadata, str → str, e.g. the
    QuantizationInfo JSON known only at the end), :meth:`finish`.
    """

    def __init__(self, folder: Path, max_shard_size: int) -> None:
        self.folder = Path(folder)
        self.max_shard_size = parse_size(max_shard_size)
        self._parts: list[Path] = []
        self._map: dict[str, int] = {}  # tensor name -> 0-based shard
        self._specs: dict[str, TensorSpec] = {}  # of the open shard, in arrival order
        self._scratch: BinaryIO | None = None
        self._used = 0
        self._total = 0
        self._metadata: dict[str, str] = {}

    def _check(self, name: str, tensor: torch.Tensor) -> TensorSpec:
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise BadInputError(f"sharded writer: {name!r} is not a str -> torch.Tensor pair")
        if name in self._map:
            raise BadInputError(f"sharded writer: tensor {name!r} was added twice")
        if tensor.is_meta:
            raise BadInputError(f"sharded writer: tensor {name!r} is on the meta device")
        spec = TensorSpec.of(tensor)
        _ = spec.st_dtype  # a dtype safetensors cannot hold fails here, naming it
        return spec

    def _full(self, used: int, nbytes: int) -> bool:
        """Whether a non-empty shard holding ``used`` bytes has no room for ``nbytes``."""
        return used > 0 and used + nbytes > self.max_shard_size

    def add_all(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Add tensors that are all in memory already (``save_model``): the same shards as
        :meth:`add` one by one, but each written in one pass, with no scratch copy."""
        if self._scratch is not None:
            self._close_shard()
        group: dict[str, torch.Tensor] = {}
        used = 0
        for name, t in tensors.items():
            nbytes = self._check(name, t).nbytes
            if self._full(used, nbytes):
                self._write_shard(group)
                group, used = {}, 0
            group[name] = t
            used += nbytes
        if group:
            self._write_shard(group)

    def _write_shard(self, group: Mapping[str, torch.Tensor]) -> None:
        part = self.folder / f".part-{len(self._parts):05d}.safetensors"
        specs = {k: TensorSpec.of(t) for k, t in group.items()}
        with atomic_file(part) as f:
            writer = SafetensorsWriter(f, specs, SHARD_METADATA, order=list(specs))
            for name, t in group.items():
                writer.write(name, t)
            writer.finish()
        for name, spec in specs.items():
            self._map[name] = len(self._parts)
            self._total += spec.nbytes
        self._parts.append(part)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append one tensor (any device; copied to the CPU alone) to the current shard."""
        spec = self._check(name, tensor)
        if self._scratch is not None and self._full(self._used, spec.nbytes):
            self._close_shard()
        if self._scratch is None:
            fd, tmp = tempfile.mkstemp(prefix=".shard.", suffix=".data", dir=self.folder)
            self._scratch = os.fdopen(fd, "w+b")
            os.unlink(tmp)  # anonymous: gone with the file object, whatever happens
        t = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
        self._scratch.write(byte_view(t))
        self._specs[name] = spec
        self._map[name] = len(self._parts)
        self._used += spec.nbytes
        self._total += spec.nbytes

    def set_metadata(self, metadata: Mapping[str, str]) -> None:
        """Extra index metadata (str → str); ``total_size`` is the writer's."""
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)
               or k == "total_size"]
        if bad:
            raise BadInputError(f"sharded writer: metadata {bad[0]!r} must be a str -> str "
                                "entry other than total_size")
        self._metadata = dict(metadata)

    def _close_shard(self) -> None:
        scratch, self._scratch = self._scratch, None
        assert scratch is not None  # internal invariant: called with a shard open
        part = self.folder / f".part-{len(self._parts):05d}.safetensors"
        with scratch, atomic_file(part) as f:
            writer = SafetensorsWriter(f, self._specs, SHARD_METADATA, order=list(self._specs))
            f.seek(writer.data_start)
            scratch.seek(0)
            shutil.copyfileobj(scratch, f, IO_CHUNK)
            writer.mark_all_written()
            writer.finish()
        self._parts.append(part)
        self._specs, self._used = {}, 0

    def finish(self) -> dict[str, object]:
        """Close the last shard, name the shards, write the index; return the index."""
        if self._scratch is not None:
            self._close_shard()
        if not self._parts:
            raise BadInputError("sharded writer: no tensors were added")
        n = len(self._parts)
        for i, part in enumerate(self._parts):
            os.replace(part, self.folder / shard_name(i + 1, n))
        index = {
            "metadata": {**self._metadata, "total_size": self._total},
            "weight_map": {k: shard_name(i + 1, n) for k, i in sorted(self._map.items())},
        }
        with atomic_file(self.folder / INDEX_FILE) as f:
            f.write(json.dumps(index, indent=2, sort_keys=True).encode() + b"\n")
        return index

    def abort(self) -> None:
        """Drop the open shard's scratch data (the folder itself is the caller's)."""
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None


@contextlib.contextmanager
def shard_writer(folder: Path, max_shard_size: int) -> Iterator[ShardedWriter]:
    """A :class:`ShardedWriter` into ``folder`` (already a temporary one) finished when the
    block succeeds; its open scratch data is dropped whatever happens."""
    writer = ShardedWriter(folder, max_shard_size)
    try:
        yield writer
        writer.finish()
    finally:
        writer.abort()


@contextlib.contextmanager
def sharded_folder(path: str | os.PathLike[str], max_shard_size: int) -> Iterator[ShardedWriter]:
    """A :class:`ShardedWriter` into a temporary folder that replaces ``path`` only when the
    block succeeds (:func:`~mono_quant.io._atomic.atomic_dir`): a failure at any point leaves
    the previous artifact, or nothing, at ``path``. Other files may be written into
    ``writer.folder`` too (a compressed-tensors ``config.json``)."""
    with atomic_dir(path) as tmp, shard_writer(tmp, max_shard_size) as writer:
        yield writer


def is_sharded(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a sharded checkpoint's index."""
    return (Path(path) / INDEX_FILE).is_file()


def is_shard_file(name: str) -> bool:
    """Whether ``name`` is a file name a sharded artifact of mono-quant holds."""
    return name == INDEX_FILE or _SHARD_RE.fullmatch(name) is not None


def read_index(folder: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, object]]:
    """(weight_map, metadata) of ``folder``'s index, checked: shard names are plain file
    names of this folder (nothing outside it is ever opened)."""
    folder = Path(folder)
    index_path = folder / INDEX_FILE
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"{index_path}: cannot read the shard index: {e}") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    metadata = index.get("metadata", {}) if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise BadInputError(f"{index_path}: not a shard index (expected JSON with a "
                            "'weight_map' object of tensor name -> shard file)")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard or not shard.endswith(".safetensors") or \
                shard.startswith("."):
            raise BadInputError(f"{index_path}: shard {shard!r} is not a .safetensors file "
                                "name of this folder")
    return weight_map, metadata


def read_sharded(
    folder: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """(tensors, index metadata) of a sharded folder. Each shard must hold exactly the
    tensors the index maps to it; a missing shard or tensor is a BadInputError naming it."""
    from mono_quant.io.formats import read_safetensors

    folder = Path(folder)
    weight_map, metadata = read_index(folder)
    by_shard: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(name)
    tensors: dict[str, torch.Tensor] = {}
    for shard, names in sorted(by_shard.items()):
        path = folder / shard
        if not path.is_file() or path.is_symlink():
            raise BadInputError(f"{folder}: shard {shard} named by {INDEX_FILE} is missing")
        part, _ = read_safetensors(path)
        if set(part) != names:
            extra = sorted(set(part) - names) or sorted(names - set(part))
            raise BadInputError(f"{path}: holds other tensors than {INDEX_FILE} maps to it "
                                f"(e.g. {extra[0]!r})")
        tensors.update(part)
    return tensors, metadata

