"""Batches, jobs and artifacts named on the command line: by id or by name, or a clear error.

Every command that takes a batch (``status``, ``retry --batch``, ``cancel``, ``jobs --batch``,
``catalog list --batch``) resolves it here, so "by id or name" and "whatever names something
that does not exist exits 2" hold everywhere in one place. A batch reference that is all
digits is an id; anything else is a name, and a name means the newest batch of that name that
has jobs (names repeat when a manifest is submitted again).

Example:
    with catalog.begin() as session:
        batch = resolve_batch(session, "nightly")      # the newest batch named "nightly"
        ids = resolve_batch_ids(session, ["3", "weekly"])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from mono_quant.catalog import Artifact, Batch, Job
from mono_quant.errors import BadInputError

__all__ = [
    "latest_batch",
    "resolve_artifact_id",
    "resolve_batch",
    "resolve_batch_ids",
    "resolve_job",
    "resolve_job_ids",
]


def _shown(ref: object) -> str:
    """A user's reference, quoted with control characters escaped (it goes to a terminal)."""
    return repr(str(ref))


def _as_id(ref: str | int) -> int | None:
    """An id when ``ref`` is one (ASCII digits, in the id column's range), None for a name.
    Other digits (``²``, ``٢``, which ``int()`` would read) are refused, never a name."""
    if isinstance(ref, int):
        return ref
    text = ref.strip()
    if any(c.isdigit() for c in text) and text.isdigit():
        from mono_quant.catalog.limits import parse_id

        return parse_id(text)  # BadInputError for non-ASCII digits or an id out of range
    return None


def resolve_batch(session: Session, ref: str | int) -> Batch:
    """The batch with this id, or the newest batch with this name (one with jobs first);
    BadInputError if there is none."""
    batch_id = _as_id(ref)
    if batch_id is not None:
        batch = session.get(Batch, batch_id)
    else:
        # the newest batch of that name that has jobs: a re-run where every job was
        # skipped leaves an empty batch that would hide the real one
        has_jobs = select(Job.id).where(Job.batch_id == Batch.id).exists()
        batch = session.scalars(
            select(Batch).where(Batch.name == str(ref).strip())
            .order_by(case((has_jobs, 1), else_=0).desc(), Batch.id.desc()).limit(1)
        ).first()
    if batch is None:
        kind = "id" if batch_id is not None else "name"
        raise BadInputError(
            f"no batch with {kind} {_shown(ref)} in the catalog; `mono-quant batches` lists them"
        )
    return batch


def resolve_batch_ids(session: Session, refs: Iterable[str | int]) -> list[int]:
    """Ids of the batches named by ``refs`` (each an id or a name: every batch of that name)."""
    found: list[int] = []
    for ref in refs:
        if _as_id(ref) is not None:
            found.append(resolve_batch(session, ref).id)
            continue
        ids = list(session.scalars(select(Batch.id).where(Batch.name == str(ref).strip())))
        if not ids:
            raise BadInputError(
                f"no batch named {_shown(ref)} in the catalog; `mono-quant batches` lists them"
            )
        found.extend(ids)
    return sorted(set(found))


def latest_batch(session: Session) -> Batch:
    """The newest batch that has jobs (a re-run where every job was skipped has none)."""
    batch = session.scalars(
        select(Batch).where(select(Job.id).where(Job.batch_id == Batch.id).exists())
        .order_by(Batch.id.desc()).limit(1)
    ).first()
    if batch is None:
        raise BadInputError("the catalog has no batches with jobs yet; submit a manifest first")
    return batch


def resolve_job(session: Session, ref: str | int) -> Job:
    """The job with this id; BadInputError if there is none."""
    job_id = _as_id(ref)
    if job_id is None:
        raise BadInputError(f"job {_shown(ref)}: expected a job id (a whole number)")
    job = session.get(Job, job_id)
    if job is None:
        raise BadInputError(
            f"no job with id {job_id} in the catalog; `mono-quant jobs` lists them"
        )
    return job


def resolve_job_ids(session: Session, refs: Sequence[str | int]) -> list[int]:
    """The ids of ``refs``, every one checked to exist (the first missing one is named)."""
    ids = [_as_id(r) for r in refs]
    bad = [r for r, i in zip(refs, ids, strict=True) if i is None]
    if bad:
        raise BadInputError(f"job {_shown(bad[0])}: expected a job id (a whole number)")
    wanted = sorted({i for i in ids if i is not None})
    have = set(session.scalars(select(Job.id).where(Job.id.in_(wanted))))
    missing = [i for i in wanted if i not in have]
    if missing:
        raise BadInputError(
            f"no job with id {', '.join(map(str, missing))} in the catalog; "
            "`mono-quant jobs` lists them"
        )
    return wanted


def resolve_artifact_id(session: Session, ref: str | int) -> int:
    """The id of an existing artifact; BadInputError naming it if there is none."""
    artifact_id = _as_id(ref)
    if artifact_id is None:
        raise BadInputError(f"artifact {_shown(ref)}: expected an artifact id (a whole number)")
    if session.scalar(select(func.count()).where(Artifact.id == artifact_id)) == 0:
        raise BadInputError(
            f"no artifact with id {artifact_id} in the catalog; `mono-quant catalog list` "
            "lists them"
        )
    return artifact_id
