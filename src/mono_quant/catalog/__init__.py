"""The artifact catalog: every batch, job, attempt and artifact, queryable.

SQLAlchemy 2.0 models (:mod:`.models`), Alembic migrations shipped in the package
(:func:`upgrade`), artifact recording and verification (:mod:`.artifacts`) and queries
(:mod:`.queries`, :class:`ArtifactQuery`). Works on SQLite (the embedded default) and
PostgreSQL. ``import mono_quant`` does not import this package (nor SQLAlchemy).

Example:
    >>> import tempfile, os
    >>> from mono_quant.catalog import ArtifactQuery, Catalog, list_artifacts
    >>> catalog = Catalog("sqlite:///" + os.path.join(tempfile.mkdtemp(), "catalog.db"))
    >>> _ = catalog.upgrade()
    >>> with catalog.begin() as session:
    ...     list_artifacts(session, ArtifactQuery(schemes=["asymmetric"], min_sqnr=40))
    []
"""

from mono_quant.catalog.artifacts import (
    VerifyResult,
    add_artifact,
    artifact_for_key,
    config_digest,
    info_columns,
    normalize_storage_key,
    resolve_storage_key,
    verify_artifacts,
)
from mono_quant.catalog.db import (
    Catalog,
    current_revision,
    head_revision,
    make_engine,
    make_sessionmaker,
    upgrade,
)
from mono_quant.catalog.filters import ArtifactQuery, parse_since, parse_size
from mono_quant.catalog.locate import (
    artifact_path,
    artifact_path_by_id,
    artifact_uri,
    load_artifact,
)
from mono_quant.catalog.models import (
    FINAL_STATUSES,
    Artifact,
    ArtifactFormat,
    Attempt,
    AttemptOutcome,
    Base,
    Batch,
    ErrorKind,
    Job,
    JobStatus,
)
from mono_quant.catalog.queries import (
    artifact_record,
    artifacts_statement,
    get_artifact,
    job_status_counts,
    list_artifact_records,
    list_artifacts,
)

__all__ = [
    "FINAL_STATUSES",
    "Artifact",
    "ArtifactFormat",
    "ArtifactQuery",
    "Attempt",
    "AttemptOutcome",
    "Base",
    "Batch",
    "Catalog",
    "ErrorKind",
    "Job",
    "JobStatus",
    "VerifyResult",
    "add_artifact",
    "artifact_for_key",
    "artifact_path",
    "artifact_path_by_id",
    "artifact_record",
    "artifact_uri",
    "artifacts_statement",
    "config_digest",
    "current_revision",
    "get_artifact",
    "head_revision",
    "info_columns",
    "job_status_counts",
    "list_artifact_records",
    "list_artifacts",
    "load_artifact",
    "make_engine",
    "make_sessionmaker",
    "normalize_storage_key",
    "parse_since",
    "parse_size",
    "resolve_storage_key",
    "upgrade",
    "verify_artifacts",
]
