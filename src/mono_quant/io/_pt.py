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
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mono_quant.errors import BadInputError, StorageError
from mono_quant.io._atomic import atomic_file
from mono_quant.io._files import refuse_special_file

__all__ = ["read_pt", "write_pt"]

_KEYS = {"state_dict", "metadata"}

#: What torch.load raises on a damaged file, found by truncating and byte-flipping legacy and
#: zip ``.pt`` files (tests/io/test_pt_fuzz.py): the zip reader's RuntimeError and OSError, the
#: legacy reader's struct.error / IndexError / EOFError, and whatever a garbled pickle stream
#: makes the unpickler or the tensor rebuild functions raise. MemoryError is not among them.
_CORRUPT = (
    EOFError, OSError, RuntimeError, ValueError, IndexError, KeyError, TypeError,
    AttributeError, AssertionError, OverflowError, struct.error,
)

#: torch's weights_only unpickler refusing a global (torch 2.4 through 2.13 word it so):
#: "Unsupported global: GLOBAL io.open was not an allowed global by default. ..." and
#: "Trying to load unsupported GLOBAL os.system whose module os is blocked."
_GLOBAL = re.compile(r"GLOBAL (.+?) (?:was not an allowed global|whose module \S+ is blocked)")


def _rejected_global(message: str) -> str | None:
    """The global torch refused to load ("" if unnamed), or None when it refused none."""
    found = _GLOBAL.search(message)
    if found:
        return "".join(c if c.isprintable() else "?" for c in found.group(1))[:120]
    return "" if "Unsupported global" in message else None


def _reason(e: BaseException) -> str:
    """``Type: detail`` of a load failure, without torch's advice (which suggests
    ``weights_only=False``: the one thing never to do with an untrusted file)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.rpartition("WeightsUnpickler error:")[2]
    text = text.split("Check the documentation of torch.load")[0]
    text = text.split("This is an internal miniz error")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = lines[0].rstrip(".") if lines else ""
    if len(detail) > 200:
        detail = detail[:200] + "..."
    if isinstance(e, pickle.UnpicklingError):
        return detail or "unreadable pickle stream"
    if isinstance(e, EOFError) and not detail:
        detail = "the file ends early"
    return f"{type(e).__name__}: {detail}" if detail else type(e).__name__


def _origin(path: Path) -> str:
    """Why the weights-only unpickler could not parse a file: which pickle it is, if any."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        head = b""
    if len(head) == 2 and head[0] == pickle.PROTO[0] and head[1] > 2:
        # torch.save writes protocol 2, whose opcodes are all the unpickler knows
        return f"a protocol-{head[1]} pickle, not torch.save output"
    return "corrupt, or not written by torch.save"


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
        out = _KeepsWriteErrors(f)
        try:
            torch.save(payload, out)
        except RuntimeError:
            if out.error is None:
                raise
            # torch's zip writer reports a failed write as "unexpected pos"; the OSError it
            # swallowed (ENOSPC: "no space left on device") says what happened
            raise StorageError(f"{path}: writing failed: {out.error}") from out.error


class _KeepsWriteErrors:
    """A file for ``torch.save`` that keeps the OSError of a failed write (torch drops it)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()


def read_pt(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """(tensors, metadata or None) of a ``.pt`` file, loaded with ``weights_only=True``.

    Raises:
        BadInputError: missing, truncated or corrupt file ("not a readable .pt file"); a file
            whose pickle calls a global outside torch's weights_only allow-list ("refused",
            never run); content that is not a state dict.
    """
    path = Path(path)
    refuse_special_file(path)  # a FIFO: refused by what it is, not "no such file"
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _rejected_global(str(e))
        if refused is None:  # not a refusal: the unpickler could not parse the stream
            raise BadInputError(
                f"{path}: not a readable .pt file ({_origin(path)}: {_reason(e)})"
            ) from e
        what = f" (it calls {refused})" if refused else ""
        raise BadInputError(
            f"{path}: refused: this .pt file needs arbitrary pickle code to load{what}, which "
            "could run anything on this machine; mono-quant loads .pt only with "
            "torch.load(weights_only=True), i.e. a plain state dict of tensors. Re-save the "
            "weights as a state dict, or better, use .safetensors"
        ) from e
    except _CORRUPT as e:
        raise BadInputError(
            f"{path}: not a readable .pt file (truncated or corrupt: {_reason(e)})"
        ) from e
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
