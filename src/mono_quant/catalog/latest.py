"""The maintained "latest" flag: ``artifacts.is_latest`` marks the newest artifact of its group.

A group is (model source, config digest, format); newest means the largest
``(created_at, id)``, the order of ``ix_artifacts_latest``. ``catalog list --latest`` then
reads the few flagged rows through the partial unique index ``ix_artifacts_latest_flag``
(``WHERE is_latest``) instead of ranking every artifact of the selected models with a window
function: 300 index entries instead of ~5,000 at 1M artifacts.

The flag is kept right by the only code that adds or removes artifacts: :func:`on_insert`
after an artifact row is flushed, :func:`on_delete` after one is deleted (a forced re-run
replacing an artifact does both). Both first take a per-group lock — PostgreSQL
``pg_advisory_xact_lock`` (SQLite serialises writers anyway) — so two workers finishing
artifacts of one group at once cannot both flag theirs; the unique partial index would
refuse that anyway.

Example:
    with catalog.begin() as session:
        artifact = add_artifact(session, job, path, info)   # calls on_insert
"""

from __future__ import annotations

import hashlib

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.orm import Session

from mono_quant.catalog.models import Artifact

__all__ = ["on_delete", "on_insert", "recompute"]

Group = tuple[str, str, str]


def _group_of(artifact: Artifact) -> Group:
    fmt = artifact.format
    return artifact.model_source, artifact.config_digest, getattr(fmt, "value", fmt)


def _in_group(group: Group):
    model, config, fmt = group
    return and_(Artifact.model_source == model, Artifact.config_digest == config,
                Artifact.format == fmt)


def _lock(session: Session, group: Group) -> None:
    """Serialise flag changes of one group until the transaction ends (PostgreSQL)."""
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite: the transaction already holds the database's only write lock
    digest = hashlib.sha256("\0".join(group).encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def on_insert(session: Session, artifact: Artifact) -> None:
    """Flag ``artifact`` if it is now the newest of its group (and unflag the previous one).

    Call it after the row is flushed (it needs the id).
    """
    group = _group_of(artifact)
    _lock(session, group)
    newer = or_(Artifact.created_at > artifact.created_at,
                and_(Artifact.created_at == artifact.created_at, Artifact.id > artifact.id))
    current = session.execute(
        select(Artifact.id, Artifact.created_at).where(_in_group(group), Artifact.is_latest)
    ).first()
    if current is not None:
        if current.id == artifact.id:
            return
        if session.scalar(select(Artifact.id).where(Artifact.id == current.id, newer)):
            return  # the flagged one is newer: this is an older artifact recorded late
        # unflag first: the unique partial index allows one flagged row per group
        session.execute(update(Artifact).where(Artifact.id == current.id)
                        .values(is_latest=False))
    session.execute(update(Artifact).where(Artifact.id == artifact.id).values(is_latest=True))


def on_delete(session: Session, group: Group) -> None:
    """After an artifact of ``group`` was deleted (and flushed): flag the newest one left."""
    _lock(session, group)
    if session.scalar(select(Artifact.id).where(_in_group(group), Artifact.is_latest)):
        return  # the deleted one was not the latest
    newest = session.scalar(
        select(Artifact.id).where(_in_group(group))
        .order_by(Artifact.created_at.desc(), Artifact.id.desc()).limit(1)
    )
    if newest is not None:
        session.execute(update(Artifact).where(Artifact.id == newest).values(is_latest=True))


def recompute(session: Session) -> None:
    """Set every artifact's flag from scratch (what migration 0003 does for existing rows)."""
    for statement in RECOMPUTE_SQL:
        session.execute(text(statement))


#: Same on both databases: unflag all, then flag the first row of each group in window order
#: (two statements: the unique partial index is checked row by row).
RECOMPUTE_SQL = (
    "UPDATE artifacts SET is_latest = false WHERE is_latest",
    """UPDATE artifacts SET is_latest = true WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (
            PARTITION BY model_source, config_digest, format
            ORDER BY created_at DESC, id DESC) AS rank
        FROM artifacts) AS ranked
    WHERE rank = 1)""",
)
