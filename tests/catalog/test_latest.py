"""The maintained "latest" flag against a Python reference, on SQLite and PostgreSQL.

Artifacts are recorded through ``add_artifact`` (in random time order, with ties, some older
than the group's newest), replaced through ``jobs.succeed`` (a forced re-run), and the
migration's backfill is checked on rows written before the flag existed.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from mono_quant import QuantConfig, QuantizationInfo
from mono_quant.catalog import (
    Artifact,
    ArtifactQuery,
    Batch,
    Catalog,
    Job,
    JobStatus,
    add_artifact,
    artifacts_statement,
    list_artifacts,
    make_engine,
    upgrade,
)
from mono_quant.catalog import jobs as js
from mono_quant.catalog.batches import JobRow, create_batch
from mono_quant.catalog.latest import recompute
from mono_quant.catalog.types import utcnow

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
MODELS = ("hf:org/a@main", "hf:org/b@main", "file:models/c.pt")
CONFIGS = (QuantConfig(), QuantConfig(scheme="asymmetric"))
FORMATS = ("safetensors", "pt")


@pytest.fixture
def catalog(catalog_url):
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.dispose()


def _info(config: QuantConfig) -> QuantizationInfo:
    return QuantizationInfo(config, selected_layers=["fc"], calibration_samples=0,
                            library_versions={}, metrics={})


def _record(session, i: int, model: str, config: QuantConfig, fmt: str,
            created: datetime) -> Artifact:
    batch = session.get(Batch, 1) or Batch(name="b")
    key = hashlib.sha256(f"k{i}".encode()).hexdigest()
    job = Job(batch=batch, name=f"j{i}", model_source=model, spec={}, idempotency_key=key,
              queue="cpu", status=JobStatus.SUCCEEDED)
    session.add(job)
    session.flush()
    return add_artifact(session, job, f"a/{key}.{fmt}", _info(config), storage_root="/none",
                        format=fmt, sha256=key, size_bytes=1, created_at=created)


def _reference(session) -> set[int]:
    """The newest artifact of each group, computed in Python from every row."""
    newest: dict[tuple, tuple] = {}
    for a in session.scalars(select(Artifact)):
        group = (a.model_source, a.config_digest, a.format.value)
        newest[group] = max(newest.get(group, (a.created_at, a.id)), (a.created_at, a.id))
    return {ident for _, ident in newest.values()}


def _flagged(session) -> set[int]:
    return set(session.scalars(select(Artifact.id).where(Artifact.is_latest)))


def test_flag_follows_inserts_in_any_order(catalog):
    rng = random.Random(7)
    with catalog.begin() as s:
        for i in range(120):
            # hours from a small range: many ties (id breaks them) and many late arrivals
            created = T0 + timedelta(hours=rng.randrange(12))
            _record(s, i, rng.choice(MODELS), rng.choice(CONFIGS), rng.choice(FORMATS),
                    created)
            if i % 10 == 9:
                assert _flagged(s) == _reference(s)
        assert len(_flagged(s)) == len(MODELS) * len(CONFIGS) * len(FORMATS)
        # --latest reads the flag for these filters (no window function) …
        for q in (ArtifactQuery(latest=True, limit=None),
                  ArtifactQuery(latest=True, models=MODELS[:2], formats=("pt",), limit=None),
                  ArtifactQuery(latest=True, schemes=("asymmetric",), limit=5)):
            sql = str(artifacts_statement(q))
            assert "row_number" not in sql and "is_latest" in sql
            via_flag = [a.id for a in list_artifacts(s, q)]
            # … and answers what the window function answers
            window = ArtifactQuery(**{**q.__dict__, "since": T0 - timedelta(days=1)})
            assert "row_number" in str(artifacts_statement(window))
            assert via_flag == [a.id for a in list_artifacts(s, window)]
            assert via_flag


def test_forced_rerun_moves_the_flag_and_a_replaced_latest_hands_it_back(catalog, tmp_path):
    info = _info(CONFIGS[0])
    rows = [JobRow(name=f"r{i}", model_source=MODELS[0], model_source_json={}, spec={},
                   idempotency_key=hashlib.sha256(f"key{i % 2}".encode()).hexdigest(),
                   queue="cpu", max_attempts=3) for i in range(3)]
    with catalog.begin() as s:
        _, (a, b, c) = create_batch(s, rows, name="rerun")  # a and c share a key

    def run(job_id: int) -> None:
        with catalog.begin() as s:
            js.claim(s, job_id, worker="w", device="cpu",
                     stale_before=utcnow() - timedelta(seconds=60))
        with catalog.begin() as s:
            js.succeed(s, job_id, "w", storage_root=tmp_path, storage_key=f"x/{job_id}.pt",
                       fmt="pt", sha256=f"{job_id:064d}", size_bytes=1, info=info)

    def flagged_job() -> list[int]:
        with catalog.begin() as s:
            assert _flagged(s) == _reference(s)
            return list(s.scalars(select(Artifact.job_id).where(Artifact.is_latest)))

    run(a)
    assert flagged_job() == [a]
    run(b)
    assert flagged_job() == [b]
    # c re-runs a's key: a's artifact is deleted, c's is the newest
    run(c)
    assert flagged_job() == [c]
    with catalog.begin() as s:
        assert sorted(s.scalars(select(Artifact.job_id))) == [b, c]
        # replacing the latest artifact by an OLDER one: the flag goes back to b
        newest = s.scalar(select(Artifact).where(Artifact.job_id == c))
        group = (newest.model_source, newest.config_digest, newest.format.value)
        s.delete(newest)
        s.flush()
        from mono_quant.catalog.latest import on_delete

        on_delete(s, group)
        assert _flagged(s) == _reference(s) == {
            s.scalar(select(Artifact.id).where(Artifact.job_id == b))}


def test_one_flag_per_group_is_enforced(catalog):
    with catalog.begin() as s:
        first = _record(s, 1, MODELS[0], CONFIGS[0], "pt", T0)
        _record(s, 2, MODELS[0], CONFIGS[0], "pt", T0 + timedelta(hours=1))
        first_id = first.id
    with pytest.raises(IntegrityError), catalog.begin() as s:
        s.execute(text("UPDATE artifacts SET is_latest = true WHERE id = :i"), {"i": first_id})


def test_recompute_and_the_migration_backfill_agree_with_the_reference(empty_url):
    engine = make_engine(empty_url)
    rng = random.Random(3)
    try:
        upgrade(engine, "0002")  # rows written before the flag existed
        catalog = Catalog(engine=engine)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO batches (id, name, submitted_at, labels) "
                              "VALUES (1, 'old', :t, '{}')"), {"t": T0})
        for i in range(60):
            model, fmt = rng.choice(MODELS), rng.choice(FORMATS)
            with engine.begin() as conn:
                conn.execute(text(
                    "INSERT INTO jobs (id, batch_id, name, model_source, model_source_json, "
                    "spec, idempotency_key, queue, status, attempts, max_attempts, "
                    "created_at) VALUES (:i, 1, 'j', :m, '{}', '{}', :k, 'cpu', 'succeeded', "
                    "1, 3, :t)"), {"i": i + 1, "m": model, "k": f"{i:064d}", "t": T0})
                conn.execute(text(
                    "INSERT INTO artifacts (job_id, idempotency_key, model_source, "
                    "config_digest, storage_key, format, sha256, size_bytes, created_at, "
                    "dtype, scheme, granularity, mode, per_channel, observer, "
                    "calibration_samples, info) VALUES (:i, :k, :m, :c, :s, :f, :h, 1, :t, "
                    "'int8', 'symmetric', 'per_channel', 'weight_only', true, 'minmax', 0, "
                    "'{}')"),
                    {"i": i + 1, "k": f"{i:064d}", "s": f"a/{i}", "h": "0" * 64, "m": model,
                     "c": str(rng.randrange(2)) * 64,
                     "f": fmt, "t": T0 + timedelta(hours=rng.randrange(5))})
        upgrade(engine)
        with catalog.begin() as s:
            expected = _reference(s)
            assert _flagged(s) == expected and len(expected) > 5
            s.execute(text("UPDATE artifacts SET is_latest = false"))
            recompute(s)
            assert _flagged(s) == expected
    finally:
        engine.dispose()


def _plan(catalog, query: ArtifactQuery) -> str:
    stmt = artifacts_statement(query)
    with catalog.engine.connect() as conn:
        sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
        if catalog.engine.dialect.name == "sqlite":
            return " | ".join(r[3] for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
        for scan in ("seqscan", "bitmapscan"):  # the plan at size, on an empty table
            conn.execute(text(f"SET enable_{scan} = off"))
        return " | ".join(conn.execute(text("EXPLAIN (COSTS OFF) " + sql)).scalars())


def test_latest_pages_newest_first_from_the_flagged_rows_index(catalog):
    """The first page of ``--latest`` without a model reads ``ix_artifacts_latest_newest`` in
    order (no sort of every flagged row); with models it looks each model up in
    ``ix_artifacts_latest_flag`` (SQLite, without range statistics, would otherwise walk all
    flagged rows to skip sorting a few)."""
    page = _plan(catalog, ArtifactQuery(latest=True))
    assert "ix_artifacts_latest_newest" in page and "TEMP B-TREE" not in page
    assert "Sort" not in page, page
    by_model = _plan(catalog, ArtifactQuery(latest=True, models=list(MODELS), limit=None))
    assert "ix_artifacts_latest_flag" in by_model, by_model
    assert "ix_artifacts_latest_newest" not in by_model, by_model
