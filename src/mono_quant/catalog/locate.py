"""From an artifact id to its file, and to a runnable model: the catalog's Python API.

The catalog stores a storage key relative to the storage root (so the root can move); people
and scripts want the absolute path, a URI and the model itself. These helpers give all three,
checking on the way that the key stays inside the root.

Example:
    from mono_quant.catalog import Catalog, artifact_path_by_id, load_artifact

    catalog = Catalog()                                   # the configured catalog
    path = artifact_path_by_id(catalog, 17)               # /data/artifacts/models/…/x.safetensors
    qmodel = load_artifact(catalog, 17)                   # a runnable quantized model
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mono_quant.catalog.artifacts import resolve_storage_key
from mono_quant.catalog.models import Artifact
from mono_quant.errors import BadInputError
from mono_quant.io.store import is_store_url, open_store

__all__ = [
    "artifact_path",
    "artifact_path_by_id",
    "artifact_uri",
    "load_artifact",
    "storage_key_path",
]


def _root(storage_root: str | Path | None) -> str | Path:
    if storage_root is not None:
        return storage_root
    from mono_quant.config import get_settings

    return get_settings().storage_root


def artifact_path(artifact: Artifact, storage_root: str | Path | None = None) -> Path | str:
    """The absolute path of an artifact row's file (or compressed-tensors folder); on an
    object store, its URL (a str: ``s3://bucket/prefix/…``).

    ``storage_root`` defaults to MONO_QUANT_STORAGE_ROOT (see ``mono-quant where``).
    """
    return storage_key_path(artifact.storage_key, storage_root)


def storage_key_path(storage_key: str, storage_root: str | Path | None = None) -> Path | str:
    """:func:`artifact_path` from a storage key (for rows read without ORM objects)."""
    root = _root(storage_root)
    if is_store_url(root):
        return open_store(root).url(storage_key)
    return resolve_storage_key(root, storage_key).absolute()


def artifact_uri(artifact: Artifact, storage_root: str | Path | None = None) -> str:
    """The ``file://`` URI of :func:`artifact_path` (an object store's URL as it is)."""
    path = artifact_path(artifact, storage_root)
    return path if isinstance(path, str) else path.as_uri()


def _row(catalog: Any, artifact_id: int) -> Artifact:
    from mono_quant.catalog.queries import get_artifact

    with catalog.begin() as session:
        artifact = get_artifact(session, artifact_id)
        session.expunge(artifact)
    return artifact


def artifact_path_by_id(catalog: Any, artifact_id: int,
                        storage_root: str | Path | None = None) -> Path:
    """The absolute path of artifact ``artifact_id``; BadInputError if the catalog has none."""
    return artifact_path(_row(catalog, artifact_id), storage_root)


def load_artifact(catalog: Any, artifact_id: int, model: Any = None, *,
                  storage_root: str | Path | None = None) -> Any:
    """Load artifact ``artifact_id`` into a runnable quantized model.

    ``model`` is the float model to rebuild in place (as for
    :func:`mono_quant.io.load_quantized`); without it, the job's model source is built again
    (``hf:`` folders, ``factory:`` sources).
    """
    artifact = _row(catalog, artifact_id)
    store = open_store(_root(storage_root))
    if not store.exists(artifact.storage_key):
        raise BadInputError(
            f"artifact {artifact_id}: {store.url(artifact.storage_key)} is missing from storage "
            "(`mono-quant catalog verify` checks every artifact)"
        )
    from mono_quant.io import load_quantized
    from mono_quant.pipeline import parse_model_source

    if model is None:
        model = parse_model_source(artifact.model_source).load()
    return load_quantized(store.local(artifact.storage_key), model)
