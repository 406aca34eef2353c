"""Where a write may go: never over what mono-quant did not write, never into the source.

``save_model`` replaces an existing target only when it is a mono-quant artifact of the same
kind — a file whose metadata holds mono-quant's ``QuantizationInfo``, or a compressed-tensors
folder holding nothing but the two files mono-quant writes. Anything else (a user's notes, a
model's own weights, a symlink, a folder with other files in it) is refused with
``BadInputError`` and left untouched. A target equal to, or inside, the folder the model
was loaded from is refused too: writing there would replace or mix with the source.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "notes.txt").write_text("mine")
    >>> check_replaceable(d, "compressed-tensors")
    Traceback (most recent call last):
    ...
    mono_quant.errors.BadInputError: ...: exists and is not a compressed-tensors artifact \
written by mono-quant (it holds notes.txt); refusing to replace it: choose another path or \
remove it yourself
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mono_quant.errors import BadInputError, StorageError
from mono_quant.io._files import kind_of

__all__ = ["check_outside_source", "check_replaceable"]

def _refuse(path: Path, fmt: str, why: str) -> BadInputError:
    return BadInputError(
        f"{path}: exists and is not a {fmt} artifact written by mono-quant ({why}); refusing "
        "to replace it: choose another path or remove it yourself"
    )


def _has_info(path: Path, fmt: str) -> bool:
    """Whether a regular file of format ``fmt`` carries mono-quant's info (any error: no)."""
    from mono_quant.io.formats import INFO_KEY

    try:
        if fmt == "pt":
            from mono_quant.io._pt import read_pt

            metadata = read_pt(path)[1]
        else:
            from mono_quant.io._safetensors_stream import read_header

            metadata = read_header(path).metadata
    except Exception:  # unreadable or not this format: not ours
        return False
    return bool(metadata) and INFO_KEY in metadata


def _check_folder(path: Path, fmt: str, mode: int) -> None:
    """A compressed-tensors folder, or a sharded safetensors folder, that mono-quant wrote:
    only its own file names, and its info in the model file or the shard index."""
    from mono_quant.io.formats import INFO_KEY
    from mono_quant.io.interop import CONFIG_FILE, MODEL_FILE
    from mono_quant.io.sharded import INDEX_FILE, is_shard_file, read_index

    if not stat.S_ISDIR(mode):
        raise _refuse(path, fmt, f"it is {kind_of(mode)}")
    names = sorted(os.listdir(path))
    own = (MODEL_FILE, CONFIG_FILE) if fmt == "compressed-tensors" else ()
    other = [n for n in names if n not in own and not is_shard_file(n)]
    if other:
        raise _refuse(path, fmt, f"it holds {', '.join(other[:5])}")
    if not names:
        return
    index, model = path / INDEX_FILE, path / MODEL_FILE
    if index.is_file() and not index.is_symlink():
        try:
            ours = INFO_KEY in read_index(path)[1]
        except BadInputError:
            ours = False
    else:
        ours = model.is_file() and not model.is_symlink() and _has_info(model, "safetensors")
    if not ours:
        weights = MODEL_FILE if fmt == "compressed-tensors" else INDEX_FILE
        raise _refuse(path, fmt, f"its {weights} has no mono-quant metadata")


def check_replaceable(path: str | os.PathLike[str], fmt: str) -> None:
    """BadInputError unless ``path`` is absent or a mono-quant ``fmt`` artifact (see above)."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there; the writer reports a
        return  # folder it cannot create
    except OSError as e:
        raise StorageError(f"{path}: cannot look at the target: {e}") from e
    mode = st.st_mode
    if fmt == "compressed-tensors" or (fmt == "safetensors" and stat.S_ISDIR(mode)):
        _check_folder(path, fmt, mode)
        return
    if not stat.S_ISREG(mode):
        raise _refuse(path, fmt, f"it is {kind_of(mode)}")
    if st.st_size and not _has_info(path, fmt):
        raise _refuse(path, fmt, "it has no mono-quant metadata")


def check_outside_source(target: str | os.PathLike[str], source: str | os.PathLike[str]) -> None:
    """BadInputError when ``target`` is the ``source`` folder or inside it (real paths)."""
    real_target = Path(os.path.realpath(target))
    real_source = Path(os.path.realpath(source))
    if real_target == real_source or real_source in real_target.parents:
        raise BadInputError(
            f"{target}: is inside the model's source folder {source}; write the artifact "
            "somewhere else (writing there would replace or mix with the model's own files)"
        )
