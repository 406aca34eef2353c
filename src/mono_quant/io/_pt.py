"""``.pt`` files: written for compatibility, read only with ``torch.load(weights_only=True)``.

The payload is ``{"state_dict": {name: tensor}, "metadata": {str: str}}`` — the tensors plus
the same string metadata a safetensors header carries (so the info JSON is identical in both).
A plain state dict (``torch.save(model.state_dict(), path)``) is accepted too, without
metadata. Anything that needs pickle code beyond tensors and containers is refused before it
can run: ``weights_only=True`` is the security boundary, there is no unsafe fallback.

Example:
    >>> import tempfile, torch
    >>> path = tempfile.mkdtemp() + "/w.pt"
    >>> write_pt({"w": torch.ones(2)}, path, {"format": "pt"})
    >>> read_pt(path)
    ({'w': tensor([1., 1.])}, {'format': 'pt'})
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from mono_quant.errors import BadInputError
from mono_quant.io._atomic import atomic_file

__all__ = ["read_pt", "write_pt"]

_KEYS = {"state_dict", "metadata"}


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor that owns exactly its data (torch.save would store a view's whole base)."""
    t = t.detach().to("cpu")
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def write_pt(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str],
    metadata: Mapping[str, str],
) -> None:
    """Atomically write tensors and string metadata as a ``.pt`` payload."""
    payload = {"state_dict": {k: _plain(t) for k, t in tensors.items()},
               "metadata": dict(metadata)}
    with atomic_file(path) as f:
        torch.save(payload, f)


def read_pt(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """(tensors, metadata or None) of a ``.pt`` file, loaded with ``weights_only=True``.

    Raises:
        BadInputError: missing, truncated or corrupt file; a file that needs pickle code
            (refused, never run); content that is not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        what = f" (it calls {found.group(1)})" if found else ""
        raise BadInputError(
            f"{path}: refused: this .pt file needs arbitrary pickle code to load{what}, which "
            "could run anything on this machine; mono-quant loads .pt only with "
            "torch.load(weights_only=True), i.e. a plain state dict of tensors. Re-save the "
            "weights as a state dict, or better, use .safetensors"
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise BadInputError(f"{path}: not a readable .pt file (truncated or corrupt): {e}") from e
    metadata = None
    tensors = obj
    if isinstance(obj, Mapping) and set(obj) == _KEYS:
        tensors, metadata = obj["state_dict"], obj["metadata"]
        if not isinstance(metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise BadInputError(f"{path}: the 'metadata' entry must map strings to strings")
        metadata = dict(metadata)
    if not isinstance(tensors, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise BadInputError(
            f"{path}: expected a state dict (str -> tensor) or mono-quant's "
            f"{{'state_dict', 'metadata'}} payload, got {type(obj).__name__}"
        )
    return dict(tensors), metadata
