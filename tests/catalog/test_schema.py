"""Migrations agree with the models; the constraints keep the catalog honest."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from mono_quant.catalog import (
    Base,
    Batch,
    Catalog,
    Job,
    JobStatus,
    current_revision,
    head_revision,
    make_engine,
    upgrade,
)
from mono_quant.errors import BadConfigError, MonoQuantError, TransientError


def _diff(engine) -> list:
    def made_here(obj, name, type_, reflected, compare_to) -> bool:
        # a model index made on one database only (``ddl_if``: ix_jobs_id_record, PostgreSQL)
        only = getattr(obj, "_ddl_if", None)
        return reflected or only is None or only.dialect in (None, engine.dialect.name)

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": made_here})
        return compare_metadata(ctx, Base.metadata)


def test_upgrade_from_empty_matches_the_models(empty_url):
    engine = make_engine(empty_url)
    try:
        assert current_revision(engine) is None
        assert upgrade(engine) == (None, head_revision())
        assert set(inspect(engine).get_table_names()) == {
            "alembic_version", "artifacts", "attempts", "batches", "jobs"}
        assert _diff(engine) == []
        assert upgrade(engine) == (head_revision(), head_revision())  # idempotent

        # the comparison is not vacuous: a missing index is reported
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_artifacts_latest"))
        diff = _diff(engine)
        assert [(d[0], d[1].name) for d in diff] == [("add_index", "ix_artifacts_latest")]
    finally:
        engine.dispose()


def test_jobs_record_index_is_made_on_postgresql_only(catalog_url):
    """``ix_jobs_id_record`` (the job's record fields beside its id, for index-only probes
    of ``--latest``) exists on PostgreSQL, with its included columns; SQLite reads a job by
    its rowid and has no such index."""
    engine = make_engine(catalog_url)
    try:
        indexes = {i["name"]: i for i in inspect(engine).get_indexes("jobs")}
        if engine.dialect.name == "sqlite":
            assert "ix_jobs_id_record" not in indexes
        else:
            index = indexes["ix_jobs_id_record"]
            assert index["column_names"] == ["id"]
            assert index["dialect_options"]["postgresql_include"] == ["batch_id", "status", "name"]
    finally:
        engine.dispose()


def test_latest_index_is_in_window_order(catalog_url):
    # --latest reads this index in its own order: newest first, id breaking ties
    engine = make_engine(catalog_url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                rows = conn.execute(text("PRAGMA index_xinfo(ix_artifacts_latest)")).all()
                got = [(r.name, bool(r.desc)) for r in rows if r.key]
                assert got == [("model_source", False), ("config_digest", False),
                               ("format", False), ("created_at", True), ("id", True)]
            else:
                ddl = conn.execute(text("SELECT indexdef FROM pg_indexes "
                                        "WHERE indexname = 'ix_artifacts_latest'")).scalar_one()
                assert ddl.endswith("(model_source, config_digest, format, created_at DESC, "
                                    "id DESC)")
    finally:
        engine.dispose()


def test_downgrade_to_base_removes_everything(empty_url):
    from alembic import command

    from mono_quant.catalog.db import _alembic_config

    engine = make_engine(empty_url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            command.downgrade(_alembic_config(conn), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


def test_require_schema(empty_url):
    catalog = Catalog(empty_url)
    try:
        with pytest.raises(MonoQuantError, match="no catalog schema; run `mono-quant db upgrade`"):
            catalog.require_schema()
        catalog.upgrade()
        catalog.require_schema()
    finally:
        catalog.dispose()


def test_sqlite_folder_is_created(tmp_path):
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'catalog.db'}"
    upgrade(url)
    assert (tmp_path / "a" / "b" / "catalog.db").is_file()


def test_unreachable_server_is_transient():
    catalog = Catalog("postgresql+psycopg://postgres:secret@127.0.0.1:1/nowhere")
    with pytest.raises(TransientError, match=r"127\.0\.0\.1:1/nowhere is unreachable") as e:
        catalog.require_schema()
    assert "secret" not in str(e.value)


@pytest.mark.parametrize(
    "url", ["not a url", "mysql://x@y/z"], ids=["garbage", "unsupported-backend"])
def test_bad_url_is_bad_config(url):
    with pytest.raises(BadConfigError, match="catalog URL"):
        make_engine(url)


def _job(batch, **kw) -> Job:
    fields = {"batch": batch, "name": "j", "model_source": "hf:o/m", "spec": {},
              "idempotency_key": "a" * 64, "queue": "cpu"}
    return Job(**(fields | kw))


def test_job_defaults_and_enum_round_trip(catalog_url):
    catalog = Catalog(catalog_url)
    with catalog.begin() as s:
        job = _job(Batch(name="b"))
        s.add(job)
    with catalog.begin() as s:
        job = s.get(Job, job.id)
        assert job.status is JobStatus.PENDING and job.attempts == 0 and job.max_attempts == 3
        assert job.created_at.tzinfo is not None
        assert job.batch.submitted_at <= datetime.now(timezone.utc)
        raw = s.execute(text("SELECT status FROM jobs")).scalar_one()
        assert raw == "pending"  # the value, not the enum member's name
    catalog.dispose()


CONSTRAINTS = {
    "artifact-without-job": (
        "INSERT INTO artifacts (job_id, idempotency_key, model_source, config_digest,"
        " storage_key, format, sha256, size_bytes, created_at, dtype, scheme, granularity,"
        " mode, per_channel, observer, calibration_samples, info) VALUES (999, :k, 'm', 'c',"
        " 'x.pt', 'pt', 's', 1, :t, 'int8', 'symmetric', 'per_tensor', 'weight_only', :f,"
        " 'minmax', 0, '{}')"
    ),
    "job-bad-status": (
        "INSERT INTO jobs (batch_id, name, model_source, model_source_json, spec,"
        " idempotency_key, queue, status, attempts, max_attempts, created_at)"
        " VALUES (:b, 'j', 'm', '{}', '{}', :k, 'cpu', 'done', 0, 3, :t)"
    ),
    "job-without-batch": (
        "INSERT INTO jobs (batch_id, name, model_source, model_source_json, spec,"
        " idempotency_key, queue, status, attempts, max_attempts, created_at)"
        " VALUES (999, 'j', 'm', '{}', '{}', :k, 'cpu', 'pending', 0, 3, :t)"
    ),
    "artifact-bad-format": (
        "INSERT INTO artifacts (job_id, idempotency_key, model_source, config_digest,"
        " storage_key, format, sha256, size_bytes, created_at, dtype, scheme, granularity,"
        " mode, per_channel, observer, calibration_samples, info) VALUES (:j, :k, 'm', 'c',"
        " 'x.gguf', 'gguf', 's', 1, :t, 'int8', 'symmetric', 'per_tensor', 'weight_only', :f,"
        " 'minmax', 0, '{}')"
    ),
}


@pytest.mark.parametrize("name", list(CONSTRAINTS), ids=list(CONSTRAINTS))
def test_database_refuses_dishonest_rows(catalog_url, name):
    catalog = Catalog(catalog_url)
    with catalog.begin() as s:
        job = _job(Batch(name="b"))
        s.add(job)
    params = {"k": "b" * 64, "t": datetime.now(timezone.utc), "f": False,
              "b": job.batch_id, "j": job.id}
    with pytest.raises(IntegrityError), catalog.begin() as s:
        # text() bypasses the ORM: the database itself must refuse
        stmt = text(CONSTRAINTS[name])
        s.execute(stmt, {k: v for k, v in params.items() if f":{k}" in CONSTRAINTS[name]})
    catalog.dispose()


def test_catalog_import_is_not_pulled_by_mono_quant():
    # a fresh interpreter: importing the catalog loads SQLAlchemy, the library does not
    code = ("import sys, mono_quant; a = 'sqlalchemy' in sys.modules\n"
            "import mono_quant.catalog; print(a, 'sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
