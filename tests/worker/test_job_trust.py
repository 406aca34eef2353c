"""Issue 13: the worker runs only what its validated payload allows, records what it ran, and
never writes outside the storage root, even when a symlink is planted while the job runs."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from mono_quant.catalog import Artifact, Catalog, ErrorKind, Job, JobStatus
from mono_quant.catalog.batches import create_batch
from mono_quant.config import Settings
from mono_quant.scheduler.manifest import parse_manifest
from mono_quant.scheduler.service import _rows
from mono_quant.worker.job import run_job

TRUSTED = "mono_quant.*,tests.*"


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings.from_env({"MONO_QUANT_DATA_DIR": str(tmp_path / "data"),
                           "MONO_QUANT_COMPILE": "never", "MONO_QUANT_HEARTBEAT_INTERVAL": "30",
                           "MONO_QUANT_ALLOWED_FACTORIES": TRUSTED})
    Catalog(s.catalog_url).upgrade()
    return s


def _submit(settings, model) -> int:
    _, specs = parse_manifest({"jobs": [{"name": "a", "model": model}]})
    with Catalog(settings.catalog_url).begin() as session:
        _, (job_id,) = create_batch(session, _rows(specs), name="t")
    return job_id


def _rewrite_model(settings, job_id: int, model: dict) -> None:
    """What anyone with write access to the catalog can do: change the job's payload."""
    with Catalog(settings.catalog_url).begin() as session:
        job = session.get(Job, job_id)
        spec = {**job.spec, "model": model}
        session.execute(update(Job).where(Job.id == job_id).values(spec=spec))


def test_a_factory_written_into_the_catalog_row_is_refused_before_import(settings, tmp_path):
    marker = tmp_path / "pwned"
    job_id = _submit(settings, "factory:tests.jobfixtures:tiny")
    _rewrite_model(settings, job_id, {"scheme": "factory", "target": "os:system",
                                      "kwargs": {"command": f"touch {marker}"}})
    out = run_job(job_id, "w@test", settings=settings)
    assert out.status == "failed"
    assert not marker.exists()
    with Catalog(settings.catalog_url).begin() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.error_kind) == (JobStatus.FAILED, ErrorKind.BAD_CONFIG)
        assert "factory module 'os' is not allowed by MONO_QUANT_ALLOWED_FACTORIES" in \
            job.last_error
        assert session.scalars(select(Artifact)).first() is None


def test_the_catalog_records_the_model_that_ran_not_the_rows_label(settings):
    job_id = _submit(settings, "factory:tests.jobfixtures:tiny")
    _rewrite_model(settings, job_id, {"scheme": "factory", "target": "tests.jobfixtures:tiny",
                                      "kwargs": {"seed": 7}})
    assert run_job(job_id, "w@test", settings=settings).status == "succeeded"
    with Catalog(settings.catalog_url).begin() as session:
        job = session.get(Job, job_id)
        artifact = session.scalars(select(Artifact)).one()
        assert job.model_source == "factory:tests.jobfixtures:tiny"  # the stale label
        assert artifact.model_source == "factory:tests.jobfixtures:tiny?seed=7"


def test_a_symlink_planted_mid_job_does_not_redirect_the_write(settings, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = settings.storage_root
    job_id = _submit(settings, {"factory": "tests.jobfixtures:hijack_storage",
                                "kwargs": {"root": str(root), "outside": str(outside)}})
    out = run_job(job_id, "w@test", settings=settings)
    assert list(outside.rglob("*")) == []  # nothing landed outside the root
    assert out.status == "failed", out
    with Catalog(settings.catalog_url).begin() as session:
        job = session.get(Job, job_id)
        assert "was replaced while the job ran" in job.last_error or \
            "symbolic link" in job.last_error
        assert session.scalars(select(Artifact)).first() is None
    # and nothing of this attempt is left inside it either
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_status_shows_the_model_of_the_payload(settings):
    from mono_quant.scheduler.service import batch_status

    job_id = _submit(settings, "factory:tests.jobfixtures:tiny")
    _rewrite_model(settings, job_id, {"scheme": "factory", "target": "os:system",
                                      "kwargs": {"command": "id"}})
    run_job(job_id, "w@test", settings=settings)
    (failure,) = batch_status(Catalog(settings.catalog_url)).failures
    assert failure["model"] == "factory:os:system?command=id"  # not the row's stale label
