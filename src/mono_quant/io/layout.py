"""Artifact formats and file names: which format a path is, and what a format's file is called.

Pure path logic (no torch), shared by ``save_model``/``load_model``, the manifest, the CLI and
the worker's storage keys.

Example:
    >>> detect_format("model.safetensors"), detect_format("out.pth"), SUFFIX["pt"]
    ('safetensors', 'pt', '.pt')
"""

from __future__ import annotations

import os
from pathlib import Path

from mono_quant._storage_url import is_url
from mono_quant.errors import BadInputError

__all__ = ["FORMATS", "SUFFIX", "detect_format"]

#: The formats ``save_model`` writes (the ``format`` argument and the catalog's column).
FORMATS = ("safetensors", "pt", "compressed-tensors")
#: The name ending of each format's artifact (compressed-tensors artifacts are folders).
SUFFIX = {"safetensors": ".safetensors", "pt": ".pt", "compressed-tensors": ""}
_EXTENSIONS = {".safetensors": "safetensors", ".pt": "pt", ".pth": "pt"}


def detect_format(path: str | os.PathLike[str], format: str | None = None) -> str:
    """The artifact format for ``path``: ``format`` if given (checked), else from the name.

    A folder (or an existing folder with ``config.json``) is ``compressed-tensors``.
    """
    url = is_url(path)  # an object store's URL: a name without an extension is a folder
    path = Path(path)
    ext = path.suffix.lower()
    if format is not None:
        if format not in FORMATS:
            raise BadInputError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
        if format == "compressed-tensors" and ext in _EXTENSIONS:
            raise BadInputError(
                f"{path}: a compressed-tensors artifact is a folder; give a path without the "
                f"{ext} extension"
            )
        if format != "compressed-tensors" and _EXTENSIONS.get(ext) != format:
            raise BadInputError(
                f"{path}: extension {ext or '(none)'} does not match format {format!r} "
                f"(use {' or '.join(e for e, f in _EXTENSIONS.items() if f == format)})"
            )
        return format
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if url or path.is_dir():
        return "compressed-tensors"
    raise BadInputError(
        f"{path}: cannot tell the format from the extension {ext or '(none)'}; accepted: "
        ".safetensors, .pt, .pth, or a folder with format='compressed-tensors'"
    )
