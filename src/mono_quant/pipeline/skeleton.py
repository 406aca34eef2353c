"""A model without memory, its repeated blocks, and its weights loaded one module at a time.

The sequential pipeline (:mod:`~mono_quant.pipeline.sequential`) builds an ``hf:`` model
from its ``config.json`` with every **parameter** on the meta device (no storage), while
buffers stay real: rotary frequencies and position ids are computed at construction and are
not in the checkpoint. Weights are then read from the safetensors shards only for the
module being worked on (:class:`CheckpointWeights`), and dropped back to meta after.

Blocks are the model's repeated layers: a registry names the ``ModuleList`` of the common
families (:data:`BLOCK_LISTS`, :func:`register_blocks`); other models fall back to the
largest ``ModuleList`` whose children all have one type.

Example:
    >>> from torch import nn
    >>> with params_on_meta():
    ...     net = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.Linear(4, 4)] * 3))
    >>> net[0].weight.is_meta, find_blocks(net)
    (True, '1')
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mono_quant.errors import BadInputError

__all__ = ["BLOCK_LISTS", "CheckpointWeights", "build_skeleton", "find_blocks", "free",
           "move_buffers", "params_on_meta", "read_tensors", "register_blocks"]

#: ``config.model_type`` -> the qualified-name suffix of the block ModuleList.
BLOCK_LISTS: dict[str, str] = {
    "llama": "layers", "mistral": "layers", "qwen2": "layers",
    "opt": "decoder.layers", "bert": "encoder.layer", "roberta": "encoder.layer",
    "gpt2": "h",
}


def register_blocks(model_type: str, suffix: str) -> None:
    """Name the block ModuleList of an architecture (``"layers"``, ``"encoder.layer"``)."""
    BLOCK_LISTS[model_type] = suffix


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device; buffers stay real.

    Each parameter exists in memory only while its constructor runs (one tensor at a time).
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=False)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def build_skeleton(folder: str | Path, text: str) -> nn.Module:
    """The ``hf:`` folder's model class from its config, parameters on meta, eval mode."""
    from mono_quant.pipeline.sources import _transformers

    transformers = _transformers(text)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise BadInputError(f"{text}: cannot read {Path(folder) / 'config.json'}: {e}") from e
    config.use_cache = False  # layers get no KV cache object (activations are cached as data)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    with params_on_meta():
        if cls is not None:
            model = cls._from_config(config)
        else:
            model = transformers.AutoModel.from_config(config)
    return model.eval()


def find_blocks(model: nn.Module) -> str:
    """Qualified name of the model's block ModuleList: the registered one for its
    ``config.model_type``, else the largest ModuleList of children of one type."""
    lists = {n: m for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)}
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    suffix = BLOCK_LISTS.get(model_type or "")
    if suffix is not None:
        for name in lists:
            if name == suffix or name.endswith("." + suffix):
                return name
    uniform = [(sum(p.numel() for p in m.parameters()), n) for n, m in lists.items()
               if len({type(c) for c in m}) == 1]
    if not uniform:
        raise BadInputError(
            f"{type(model).__name__}: no repeated blocks found (no ModuleList of layers of "
            "one type); use pipeline: in_memory, or register_blocks(model_type, suffix)"
        )
    return max(uniform)[1]


def _ties(model: nn.Module) -> dict[str, list[str]]:
    """Every parameter name -> all names of the same (tied) parameter object."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return {n: names for names in groups.values() for n in names}


class CheckpointWeights:
    """Reads the tensors of one module at a time from an ``hf:`` folder's safetensors."""

    def __init__(self, folder: str | Path, model: nn.Module) -> None:
        from mono_quant.pipeline.streaming import checkpoint_files

        self.folder = Path(folder)
        self.files: dict[str, Path] = {}
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {k: self.folder / v for k, v in weight_map.items()}
        else:
            from mono_quant.io._safetensors_stream import read_header

            for f in checkpoint_files(self.folder):
                self.files.update(dict.fromkeys(read_header(f).tensors, f))
        self.ties = _ties(model)

    @property
    def nbytes(self) -> int:
        from mono_quant.io._safetensors_stream import read_header

        return sum(e.nbytes for f in set(self.files.values())
                   for e in read_header(f).tensors.values())

    def _read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors ``names`` (safetensors' zero-copy mmap: a tensor's pages are resident
        while it lives, which is the block's lifetime)."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.files[n], []).append(n)
        out = {}
        for f, keys in by_file.items():
            with safe_open(str(f), framework="pt") as handle:
                out.update({k: handle.get_tensor(k) for k in keys})
        return out

    def load(self, root: nn.Module, prefix: str, device: Any) -> None:
        """Materialize the meta parameters of ``root.get_submodule(prefix)`` (all of
        ``root`` when ``prefix`` is empty, blocks excluded by the caller making them meta)
        from the checkpoint, on ``device``; a tied parameter is found under any of its names.
        """
        module = root.get_submodule(prefix) if prefix else root
        dot = f"{prefix}." if prefix else ""
        wanted = [dot + n for n, p in module.named_parameters() if p.is_meta]
        found: dict[str, str] = {}
        for name in wanted:
            key = next((k for k in self.ties.get(name, [name]) if k in self.files), None)
            if key is None:
                raise BadInputError(
                    f"{self.folder}: the checkpoint has no tensor {name!r} (the model built "
                    "from config.json expects it): is the folder complete?"
                )
            found[name] = key
        tensors = self._read(sorted(set(found.values())))
        for name, key in found.items():
            _set_param(root, name, tensors[key].to(device))

    def materialize_outside(self, model: nn.Module, blocks: str, device: Any) -> None:
        """Materialize every meta parameter outside the block list (embeddings, norms, head)."""
        inside = {id(p) for p in model.get_submodule(blocks).parameters()}
        for name, p in list(model.named_parameters()):
            if p.is_meta and id(p) not in inside:
                key = next((k for k in self.ties.get(name, [name]) if k in self.files), None)
                if key is None:
                    raise BadInputError(f"{self.folder}: the checkpoint has no tensor {name!r} "
                                        "(the model built from config.json expects it)")
                _set_param(model, name, self._read([key])[key].to(device))


def read_tensors(path: str | Path, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """``names`` (default: all, in file order) of a safetensors file, each read with plain
    reads into its own memory (:func:`~mono_quant.io._safetensors_stream.read_tensor`), not
    through an mmap whose touched pages count in the process's RSS until it is closed.
    """
    from mono_quant.io._safetensors_stream import read_header, read_tensor

    header = read_header(path)
    with open(header.path, "rb") as f:
        return {n: read_tensor(f, header, n) for n in (names or list(header.tensors))}


def _set_param(root: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set parameter ``name`` and every name tied to it to one new Parameter."""
    old = root.get_parameter(name)
    new = nn.Parameter(value, requires_grad=False)
    for module in root.modules():
        for pname, p in list(module._parameters.items()):
            if p is old:
                module._parameters[pname] = new


def move_buffers(model: nn.Module, device: Any) -> None:
    """Move the real buffers (rotary frequencies, position ids) to ``device``: they were
    built on the CPU with the skeleton; parameters are loaded where they are needed."""
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and not buf.is_meta:
                module._buffers[name] = buf.to(device)


def free(module: nn.Module) -> None:
    """Drop a module's tensors back to the meta device (its memory is released)."""
    module.to("meta")
