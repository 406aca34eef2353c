"""``hf:org/name[@revision]``: Hugging Face Hub ids resolved from the local cache only.

Workers never download: a hub id names a snapshot that is already in the cache, which
``huggingface_hub`` lays out as ``<cache>/models--org--name/{refs,snapshots,blobs}``. The cache
is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (read when a
source is resolved, so a worker's environment decides, as for ``huggingface_hub`` itself). A
miss is a ``BadInputError`` naming the id, the revision and the folder searched.

An ``hf:`` target that is an existing folder is a folder (relative paths keep working); a
target that is not one, looks like ``org/name`` and either names a ``@revision`` or is in the
cache is a hub id (:func:`in_cache`). Any other missing ``org/name`` stays a path; loading it
fails with the cache-miss message, which names the id, the revision and the cache.

Example:
    >>> hub_id("meta-llama/Llama-3.2-1B@main")
    ('meta-llama/Llama-3.2-1B', 'main')
    >>> hub_id("./models/llama") is None
    True
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mono_quant.errors import BadConfigError, BadInputError

__all__ = ["cache_dir", "hub_id", "in_cache", "resolve_snapshot"]

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")


def hub_id(target: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``target`` has the form of a hub id, else None."""
    m = _HUB_ID.match(target)
    return None if m is None else (m["repo"], m["rev"])


def in_cache(target: str) -> bool:
    """Whether an ``hf:`` target that is not a folder is read as a hub id: it has the form
    ``org/name`` and either names a revision (``@rev``) or has a repository folder in the
    cache. Otherwise it stays a (relative) path, and a miss names both places."""
    found = hub_id(target)
    if found is None:
        return False
    repo, revision = found
    return revision is not None or (cache_dir() / f"models--{repo.replace('/', '--')}").is_dir()


def cache_dir() -> Path:
    """The hub cache folder, as ``huggingface_hub`` finds it (module docstring)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return Path(home).expanduser() / "hub"


def resolve_snapshot(repo_id: str, revision: str | None, text: str) -> Path:
    """The cached snapshot folder of ``repo_id`` at ``revision`` (default ``main``)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:
        raise BadConfigError(
            f"{text}: hub ids need huggingface_hub: pip install 'mono-quant[hf]'"
        ) from e
    cache = cache_dir()
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                   local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError) as e:
        raise BadInputError(
            f"{text}: model {repo_id!r} at revision {revision or 'main'!r} is not in the local "
            f"Hugging Face cache {cache} (searched: HF_HUB_CACHE, else HF_HOME/hub); nothing is "
            f"downloaded at run time: fetch it first (huggingface-cli download {repo_id}"
            f"{' --revision ' + revision if revision else ''}) or point HF_HOME at the cache"
        ) from e
    return Path(folder)
