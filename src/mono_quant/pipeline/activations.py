"""The sequential pipeline's activation cache: one block's inputs, for every calibration
batch, in host memory or, when large, on disk in the job's work folder.

A cache fills one batch at a time (the first block's inputs as the embeddings produce them,
then each block's outputs). While its tensors stay within ``limit`` bytes it keeps them in
host memory (each batch goes to the device when it runs). Once they pass it, the cache is
**offloaded**: what it holds is written to its folder, one ``torch.save`` file per batch
(``00000.pt``, read back with ``weights_only=True``), and from then on every batch is written
as it arrives and read back when it runs, so host memory holds one batch at a time (SmoothQuant,
the observers and GPTQ iterate the cache like a list, several passes each).

The folder lives in the job's work folder (:class:`~mono_quant.pipeline.progress.Progress`
names it ``.acts-00004.tmp`` while block 3 fills it and renames it ``acts-00004`` when the
block is committed), so it is part of the resumable state and is removed with it.

``limit``: :data:`DEFAULT_OFFLOAD_BYTES` by default; ``0`` always offloads; ``None`` never
does. The service sets it with ``MONO_QUANT_ACTIVATION_OFFLOAD_BYTES``.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> cache = ActivationCache(Path(tempfile.mkdtemp()) / "acts", limit=64)
    >>> cache.append({"h": torch.zeros(4)})          # 16 bytes: in memory
    >>> cache.offloaded
    False
    >>> cache.append({"h": torch.ones(16)})          # 80 bytes in all: offloaded
    >>> cache.offloaded, len(cache), sorted(p.name for p in cache.folder.iterdir())
    (True, 2, ['00000.pt', '00001.pt'])
    >>> [float(item["h"].sum()) for item in cache]
    [0.0, 16.0]
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_OFFLOAD_BYTES", "ActivationCache", "Column", "item_nbytes"]

#: Cached activations beyond this many bytes go to disk (torch is imported when a cache is
#: used: the constant is read by run_pipeline's signature) (1 GiB: a 70B model's 8192-wide
#: hidden states for 512 samples of 128 tokens in float32 are 2 GiB).
DEFAULT_OFFLOAD_BYTES = 1 << 30


def item_nbytes(item: Any) -> int:
    """Bytes of the tensors in a batch (a tensor, or dicts / lists / tuples of them)."""
    import torch

    if isinstance(item, torch.Tensor):
        return item.numel() * item.element_size()
    if isinstance(item, dict):
        return sum(item_nbytes(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return sum(item_nbytes(v) for v in item)
    return 0


class ActivationCache(Sequence):
    """One block's cached inputs (module docstring); a read-only sequence of batches."""

    def __init__(self, folder: str | Path, limit: int | None = DEFAULT_OFFLOAD_BYTES) -> None:
        self.folder = Path(folder)
        self.limit = limit
        self.nbytes = 0
        self._items: list[Any] | None = []  # None once offloaded
        self._count = 0

    @classmethod
    def on_disk(cls, folder: str | Path) -> ActivationCache:
        """A cache an earlier attempt offloaded into ``folder`` (files ``00000.pt`` ...)."""
        cache = cls(folder, limit=0)
        cache._items = None
        cache._count = len(list(cache.folder.glob("[0-9]*.pt")))
        return cache

    @property
    def offloaded(self) -> bool:
        return self._items is None

    def _path(self, index: int) -> Path:
        return self.folder / f"{index:05d}.pt"

    def files(self) -> list[Path]:
        return [self._path(i) for i in range(self._count)] if self.offloaded else []

    def append(self, item: Any) -> None:
        """Add the next batch (on the CPU); offload when the cache passes its limit."""
        import torch

        self.nbytes += item_nbytes(item)
        if self._items is not None and self.limit is not None and self.nbytes > self.limit:
            self._spill()
        if self._items is None:
            torch.save(item, self._path(self._count))
        else:
            self._items.append(item)
        self._count += 1

    def _spill(self) -> None:
        import torch

        if self.folder.exists():  # what a killed attempt left half written
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        for i, item in enumerate(self._items or []):
            torch.save(item, self._path(i))
        self._items = None

    def in_memory(self) -> list[Any]:
        """The batches of a cache that is not offloaded (to save them in one file)."""
        if self._items is None:
            raise ValueError("the cache is offloaded: its batches are files")
        return self._items

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        i = index + self._count if index < 0 else index
        if not 0 <= i < self._count:
            raise IndexError(f"activation cache index {index} out of range ({self._count})")
        if self._items is not None:
            return self._items[i]
        import torch

        return torch.load(self._path(i), weights_only=True)

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(self._count))


class Column(Sequence):
    """One entry of every cached batch (``cache[i][key]``), read when asked for: the final
    hidden states the tail's replays return, without holding them all."""

    def __init__(self, cache: Sequence, key: str) -> None:
        self.cache, self.key = cache, key

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.cache[index][self.key]
