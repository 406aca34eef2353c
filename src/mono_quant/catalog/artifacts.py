"""Recording artifacts in the catalog, and checking storage against it.

:func:`add_artifact` is what a worker calls after the artifact file (or folder) is renamed
into place under the storage root: it hashes it, fills the typed columns from the
``QuantizationInfo`` and inserts the row. Calling it again for the same job with the same
content is a no-op (it returns the existing row), so a re-delivered job cannot record twice.

:func:`verify_artifacts` re-hashes artifacts with the same functions and reports the ones that
are missing or changed.

Storage keys are POSIX paths relative to the storage root; absolute keys, ``..`` and
backslashes are refused, so a key from the database can never point outside the root.

Example:
    >>> normalize_storage_key("models/mlp/ab12.safetensors")
    'models/mlp/ab12.safetensors'
    >>> normalize_storage_key("../etc/passwd")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mono_quant.errors.BadInputError: storage key '../etc/passwd': '..' is not allowed; ...
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mono_quant.catalog import latest
from mono_quant.catalog.models import Artifact, ArtifactFormat, Job
from mono_quant.errors import BadInputError, MonoQuantError, StorageError
from mono_quant.io.hashing import sha256_path, size_path
from mono_quant.io.store import (
    Store,
    is_store_url,
    normalize_storage_key,
    open_store,
    resolve_storage_key,
)
from mono_quant.quant.info import QuantizationInfo

__all__ = [
    "VerifyResult",
    "add_artifact",
    "artifact_for_key",
    "config_digest",
    "infer_format",
    "info_columns",
    "normalize_storage_key",
    "resolve_storage_key",
    "verify_artifacts",
]

def _key_from_path(path: str | Path, storage_root: Path) -> str:
    path = Path(path)
    if not path.is_absolute():
        return normalize_storage_key(path.as_posix())
    root = storage_root.resolve()
    try:
        rel = path.resolve().relative_to(root)
    except ValueError as e:
        raise BadInputError(
            f"artifact {path} is not under the storage root {root}; write artifacts under "
            "MONO_QUANT_STORAGE_ROOT (or pass storage_root=)"
        ) from e
    return normalize_storage_key(rel.as_posix())


def infer_format(path: str | Path) -> ArtifactFormat:
    """The artifact format of a path: a folder is compressed-tensors, else by suffix."""
    from mono_quant.io.layout import detect_format

    try:
        return ArtifactFormat(detect_format(path))
    except BadInputError as e:
        raise BadInputError(f"artifact {e}; or pass format=") from e


def config_digest(info: QuantizationInfo) -> str:
    """sha256 of the canonical QuantConfig JSON: what ``--latest`` groups artifacts by."""
    text = json.dumps(info.config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def info_columns(info: QuantizationInfo) -> dict[str, Any]:
    """The artifact columns that come from a QuantizationInfo (typed, plus the full JSON)."""
    m, versions, config = info.metrics, info.library_versions, info.config
    static = info.mode == "static"
    w8a8 = info.mode in ("static", "dynamic")
    return {
        "config_digest": config_digest(info),
        "dtype": info.dtype,
        "scheme": info.scheme,
        "granularity": info.granularity,
        "group_size": info.group_size,
        "mode": info.mode,
        "per_channel": bool(info.per_channel),
        "weight_observer": info.observer,
        "activation_observer": config.activation_observer if static else None,
        "activation_scheme": config.activation_scheme if w8a8 else None,
        "calibration_samples": int(info.calibration_samples),
        "layers_quantized": _int_or_none(m.get("layers_quantized")),
        "layers_total": _int_or_none(m.get("layers_total")),
        "weight_sqnr_db": _float_or_none(m.get("weight_sqnr_db")),
        "weight_sqnr_db_min": _float_or_none(m.get("weight_sqnr_db_min")),
        "output_sqnr_db": _float_or_none(m.get("output_sqnr_db")),
        "output_cosine": _float_or_none(m.get("output_cosine")),
        "size_bytes_fp": _int_or_none(m.get("size_bytes_fp")),
        "size_bytes_quant": _int_or_none(m.get("size_bytes_quant")),
        "compression_ratio": _float_or_none(m.get("compression_ratio")),
        "smoothquant_alpha": config.smoothquant,
        "weight_algorithm": config.weight_algorithm,
        "layers_excluded_for_accuracy": len(
            (m.get("accuracy_target") or {}).get("excluded_layers", [])),
        "perplexity_fp": _float_or_none(m.get("perplexity_fp")),
        "perplexity_quant": _float_or_none(m.get("perplexity_quant")),
        "perplexity_increase": _float_or_none(m.get("perplexity_increase")),
        "torch_version": versions.get("torch"),
        "mono_quant_version": versions.get("mono-quant"),
        "safetensors_version": versions.get("safetensors"),
        "python_version": versions.get("python"),
        "serveable_by": _str_or_none(m.get("serveable_by")),
        "serveable_reason": _str_or_none(m.get("serveable_reason")),
        "low_compression": any(str(w).startswith("low compression")
                               for w in m.get("warnings") or ()),
        "info": info.to_dict(),
    }


def artifact_for_key(session: Session, idempotency_key: str) -> Artifact | None:
    """The artifact recorded for an idempotency key, if any."""
    return session.scalars(
        select(Artifact).where(Artifact.idempotency_key == idempotency_key)
    ).one_or_none()


def add_artifact(
    session: Session,
    job: Job,
    path: str | Path,
    info: QuantizationInfo,
    *,
    storage_root: str | Path | None = None,
    format: ArtifactFormat | str | None = None,
    sha256: str | None = None,
    size_bytes: int | None = None,
    model_digest: str | None = None,
    created_at: datetime | None = None,
    model_source: str | None = None,
) -> Artifact:
    """Record the artifact of ``job`` stored at ``path`` (absolute under the root, or a key).

    The sha256 and size are computed from the file or folder unless both are given (for
    storage that is not mounted here). The row is added to ``session`` and flushed; the
    caller's transaction commits it (with the job's status change, in the same transaction).

    Raises BadInputError for a path outside the storage root or an unknown format, and
    StorageError when the file is missing or the key already has a different artifact.

    Example:
        with catalog.begin() as session:
            job = session.get(Job, job_id)
            add_artifact(session, job, root / key, info, storage_root=root)
            ...  # mark the job succeeded in the same transaction
    """
    key, fmt, sha256, size_bytes = _located(path, storage_root, format, sha256, size_bytes)
    if job.id is None:
        session.flush()  # the job needs its id before the artifact can point at it
    existing = artifact_for_key(session, job.idempotency_key)
    if existing is not None:
        if existing.sha256 == sha256 and existing.storage_key == key:
            return existing  # a re-delivered job recording the same artifact
        raise StorageError(
            f"job {job.id}: idempotency key {job.idempotency_key[:12]}… already has artifact "
            f"{existing.id} ({existing.storage_key}, sha256 {existing.sha256[:12]}…); "
            f"refusing to record {key} (sha256 {sha256[:12]}…) for it"
        )
    artifact = Artifact(
        job=job,
        idempotency_key=job.idempotency_key,
        model_source=job.model_source if model_source is None else model_source,
        model_digest=model_digest,
        storage_key=key,
        format=fmt,
        sha256=sha256,
        size_bytes=int(size_bytes),
        **info_columns(info),
    )
    if created_at is not None:
        artifact.created_at = created_at
    session.add(artifact)
    session.flush()
    latest.on_insert(session, artifact)
    return artifact


def _located(path: str | Path, storage_root: str | Path | None, format: ArtifactFormat | str | None,
             sha256: str | None, size_bytes: int | None) -> tuple[str, ArtifactFormat, str, int]:
    """(storage key, format, sha256, size) of the artifact at ``path``: the key checked to
    stay under the root, the format from the name unless given, the bytes hashed unless
    both sha256 and size are given."""
    if storage_root is None:
        from mono_quant.config import get_settings

        storage_root = get_settings().storage_root
    if is_store_url(storage_root):  # an object store: a key, and the digest the upload made
        return _located_object(path, format, sha256, size_bytes)
    root = Path(storage_root)
    key = _key_from_path(path, root)
    full = root / key
    if format is None:
        format = infer_format(full)
    try:
        fmt = ArtifactFormat(format)
    except ValueError as e:
        allowed = ", ".join(f.value for f in ArtifactFormat)
        raise BadInputError(f"artifact format {format!r}: expected one of {allowed}") from e
    if sha256 is None or size_bytes is None:
        if not full.exists():
            raise StorageError(f"artifact {full} does not exist; write it before recording it")
        try:
            sha256, size_bytes = sha256_path(full), size_path(full)
        except OSError as e:
            raise StorageError(f"artifact {full}: cannot read it to hash it: {e}") from e
    return key, fmt, sha256, int(size_bytes)


def _located_object(key: str | Path, format: ArtifactFormat | str | None, sha256: str | None,
                    size_bytes: int | None) -> tuple[str, ArtifactFormat, str, int]:
    if format is None or sha256 is None or size_bytes is None:
        raise BadInputError(
            f"artifact {key}: on an object store, record a storage key with its format, sha256 "
            "and size (the worker computes them while uploading)"
        )
    try:
        fmt = ArtifactFormat(format)
    except ValueError as e:
        allowed = ", ".join(f.value for f in ArtifactFormat)
        raise BadInputError(f"artifact format {format!r}: expected one of {allowed}") from e
    return normalize_storage_key(str(key)), fmt, sha256, int(size_bytes)


@dataclass(frozen=True)
class VerifyResult:
    """The check of one artifact against storage.

    ``status``: ``ok``; ``missing`` (no file or folder at the key); ``changed`` (the sha256 or
    size differs from the catalog); ``invalid_key`` (the recorded key is not a safe relative
    path — the row was not written by mono-quant); ``unreadable`` (an OS error while hashing).
    """

    artifact_id: int
    storage_key: str
    status: str
    expected_sha256: str
    actual_sha256: str | None = None
    expected_size: int | None = None
    actual_size: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _verify_one(store: Store, a: Artifact, deep: bool) -> VerifyResult:
    base = {"artifact_id": a.id, "storage_key": a.storage_key,
            "expected_sha256": a.sha256, "expected_size": a.size_bytes}
    try:
        where = store.url(a.storage_key)
    except (BadInputError, StorageError) as e:  # a bad key, or a symlink out of the root
        return VerifyResult(status="invalid_key", detail=str(e), **base)
    try:
        size = store.size(a.storage_key)
        digest = store.sha256(a.storage_key) if deep else None
    except FileNotFoundError:
        return VerifyResult(status="missing", detail=f"{where} does not exist", **base)
    except (OSError, MonoQuantError) as e:  # BadInputError: a FIFO or device (never opened)
        return VerifyResult(status="unreadable", detail=f"{where}: {e}", **base)
    if size != a.size_bytes or (deep and digest != a.sha256):
        shown = f"sha256 {digest[:12]}… " if digest else ""
        return VerifyResult(
            status="changed", actual_sha256=digest, actual_size=size,
            detail=f"{where}: {shown}size {size}, "
                   f"catalog has {a.sha256[:12]}… size {a.size_bytes}",
            **base,
        )
    return VerifyResult(status="ok", actual_sha256=digest, actual_size=size, **base)


def verify_artifacts(
    session: Session, storage_root: str | Path, ids: Sequence[int] | None = None,
    *, deep: bool | None = None,
) -> Iterator[VerifyResult]:
    """Check artifacts (``ids``, or all of them in id order) and yield one result each.

    ``deep``: re-hash them (streamed, never downloaded whole) as well as comparing sizes.
    Default: on a folder, yes (as always); on an object store, sizes only, since hashing
    reads every byte back over the network. Unknown ids raise BadInputError before anything
    is read.
    """
    store = open_store(storage_root)
    deep = not is_store_url(storage_root) if deep is None else deep
    stmt = select(Artifact).order_by(Artifact.id)
    if ids is not None:
        wanted = sorted(set(ids))
        rows = list(session.scalars(stmt.where(Artifact.id.in_(wanted))))
        unknown = sorted(set(wanted) - {a.id for a in rows})
        if unknown:
            raise BadInputError(
                f"no artifact with id {', '.join(map(str, unknown))} in the catalog"
            )
        yield from (_verify_one(store, a, deep) for a in rows)
        return
    for a in session.scalars(stmt.execution_options(yield_per=500)):
        yield _verify_one(store, a, deep)
