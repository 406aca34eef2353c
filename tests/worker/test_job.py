"""run_job in this process against a SQLite catalog: stages, failures, OOM, cancellation."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

import mono_quant.quant.quantize
from mono_quant.catalog import Artifact, Catalog, ErrorKind, Job, JobStatus
from mono_quant.catalog import jobs as js
from mono_quant.catalog.batches import create_batch
from mono_quant.config import Settings
from mono_quant.errors import BadConfigError, BadInputError, StorageError, TransientError
from mono_quant.pipeline.run import _halve
from mono_quant.scheduler.manifest import parse_manifest
from mono_quant.scheduler.service import _rows
from mono_quant.worker import job as job_module
from mono_quant.worker.job import backoff, classify, run_job
from mono_quant.worker.storage import artifact_key, resolve


@pytest.fixture
def settings(tmp_path) -> Settings:
    env = {"MONO_QUANT_DATA_DIR": str(tmp_path), "MONO_QUANT_COMPILE": "never",
           "MONO_QUANT_RETRY_BACKOFF": "0.5", "MONO_QUANT_HEARTBEAT_INTERVAL": "30",
           "MONO_QUANT_ALLOWED_FACTORIES": "mono_quant.*,tests.*"}
    s = Settings.from_env(env)
    Catalog(s.catalog_url).upgrade()
    return s


def _submit(settings, jobs: list[dict]) -> list[int]:
    _, specs = parse_manifest({"jobs": jobs})
    catalog = Catalog(settings.catalog_url)
    with catalog.begin() as session:
        _, ids = create_batch(session, _rows(specs), name="t")
    return ids


def _job(settings, job_id) -> Job:
    with Catalog(settings.catalog_url).begin() as session:
        job = session.get(Job, job_id)
        _ = job.attempt_rows
        return job


def test_success_writes_the_artifact_and_its_row(settings):
    (job_id,) = _submit(settings, [{"name": "a", "model": "factory:tests.jobfixtures:tiny",
                                    "format": "compressed-tensors"}])
    out = run_job(job_id, "w@test", settings=settings)
    assert out == job_module.Outcome("succeeded")
    job = _job(settings, job_id)
    with Catalog(settings.catalog_url).begin() as session:
        artifact = session.scalars(select(Artifact)).one()
        assert artifact.storage_key == artifact_key(job.idempotency_key, "compressed-tensors",
                                                    job_id, 1)
        assert artifact.info["metrics"]["reload_check"].startswith("ok")
        assert artifact.info["metrics"]["served_check"] == "load_quantized"  # not a HF model
        assert artifact.model_digest == mono_quant.io.hashing.state_dict_digest(
            __import__("tests.jobfixtures").jobfixtures.tiny())
    assert (settings.storage_root / artifact.storage_key / "config.json").exists()
    # a second delivery of the same message is a no-op
    assert run_job(job_id, "w@test", settings=settings).status == "succeeded"
    assert len(_job(settings, job_id).attempt_rows) == 1


def test_one_structured_log_line_per_job_event(settings, caplog):
    (job_id,) = _submit(settings, [{"name": "a", "model": "factory:tests.jobfixtures:tiny"}])
    with caplog.at_level("INFO", logger="mono_quant.job"):
        run_job(job_id, "w@test", settings=settings)
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mono_quant.job"]
    assert [e["event"] for e in events] == ["started"] + ["stage"] * 6 + ["succeeded"]
    assert [e["stage"] for e in events if e["event"] == "stage"] == [
        "loading", "quantizing", "writing", "reloading", "hashing", "recording"]
    for e in events:
        assert (e["job"], e["batch"], e["attempt"], e["node"], e["device"]) == (
            job_id, 1, 1, "w@test", "cpu")
    assert events[-1]["bytes"] > 0 and events[-1]["artifact"].endswith(".safetensors")


def test_leftovers_of_killed_attempts_are_removed(settings):
    (job_id,) = _submit(settings, [{"name": "a", "model": "factory:tests.jobfixtures:tiny"}])
    with Catalog(settings.catalog_url).begin() as session:  # attempt 1 "dies" mid-write
        js.claim(session, job_id, worker="w@test", device="cpu",
                 stale_before=js.stale_cutoff(settings.stale_after))
    job = _job(settings, job_id)
    first = resolve(settings.storage_root,
                    artifact_key(job.idempotency_key, "safetensors", job_id, 1))
    first.parent.mkdir(parents=True)
    leftovers = [first, first.parent / f".{first.name}.abc123.tmp"]
    for p in leftovers:
        p.write_bytes(b"half an artifact")
    other_job = first.parent / f"{job_id + 1}-1.safetensors"  # another job's: not touched
    other_job.write_bytes(b"x")
    assert run_job(job_id, "w@test", settings=settings).status == "succeeded"  # attempt 2
    assert not any(p.exists() for p in leftovers) and other_job.exists()
    assert (first.parent / f"{job_id}-2.safetensors").exists()


def test_a_failure_after_writing_leaves_no_file(settings, monkeypatch):
    """The record step fails (the catalog goes away, say): the attempt's file is removed."""
    (job_id,) = _submit(settings, [{"name": "a", "model": "factory:tests.jobfixtures:tiny"}])

    def broken(*a, **kw):
        raise TransientError("catalog connection lost while recording")

    monkeypatch.setattr(js, "succeed", broken)
    out = run_job(job_id, "w@test", settings=settings)
    assert out.status == "queued"
    assert [p for p in settings.storage_root.rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    assert run_job(job_id, "w@test", settings=settings).status == "succeeded"


def test_a_forced_rerun_replaces_the_artifact_file(settings):
    jobs = [{"name": "a", "model": "factory:tests.jobfixtures:tiny"}]
    (first,) = _submit(settings, jobs)
    assert run_job(first, "w@test", settings=settings).status == "succeeded"
    (second,) = _submit(settings, jobs)  # what `submit --force` writes
    assert run_job(second, "w@test", settings=settings).status == "succeeded"
    with Catalog(settings.catalog_url).begin() as session:
        (artifact,) = session.scalars(select(Artifact)).all()
        assert artifact.job_id == second
    files = [p for p in settings.storage_root.rglob("*") if p.is_file()]
    assert files == [settings.storage_root / artifact.storage_key]


def test_cuda_out_of_memory_retries_once_with_halved_batches(settings, monkeypatch):
    # No GPU here: the OOM is injected (the one thing these tests cannot produce for real).
    calls: list[list[int]] = []
    real = mono_quant.quant.quantize.quantize_model

    def fake(model, config, data, **kw):
        calls.append([b.shape[0] for b in data])
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, config, data, **kw)

    monkeypatch.setattr(mono_quant.quant.quantize, "quantize_model", fake)
    (job_id,) = _submit(settings, [{
        "name": "a", "model": "factory:tests.jobfixtures:tiny", "mode": "static",
        "calibration": "factory:mono_quant.demo_models:vector_batches?n=2&batch=8&features=64"}])
    assert run_job(job_id, "w@test", settings=settings).status == "succeeded"
    assert calls == [[8, 8], [4, 4, 4, 4]]
    assert _job(settings, job_id).attempts == 1


def test_out_of_memory_twice_is_transient(settings, monkeypatch):
    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(mono_quant.quant.quantize, "quantize_model", oom)
    (job_id,) = _submit(settings, [{
        "name": "a", "model": "factory:tests.jobfixtures:tiny", "mode": "static",
        "calibration": "factory:mono_quant.demo_models:vector_batches?n=1&features=64"}])
    out = run_job(job_id, "w@test", settings=settings)
    assert out.status == "queued" and 0.25 <= out.retry_in <= 0.5
    job = _job(settings, job_id)
    assert job.status is JobStatus.QUEUED and job.error_kind is ErrorKind.TRANSIENT


def test_an_artifact_failing_the_served_check_fails_the_job(settings):
    (job_id,) = _submit(settings, [{
        "name": "a", "model": "factory:tests.jobfixtures:misreported",
        "calibration": "factory:mono_quant.demo_models:vector_batches?n=1&features=64"}])
    out = run_job(job_id, "w@test", settings=settings)
    assert out.status == "failed"
    job = _job(settings, job_id)
    assert "the artifact loaded with load_quantized does not reproduce the quantized " \
        "model: tensor '0.weight_scale' differs" in job.last_error
    assert not list(settings.storage_root.rglob("*.safetensors"))  # nothing recorded or left


def test_bad_config_fails_without_retry(settings):
    (job_id,) = _submit(settings, [{"name": "a", "model": "factory:tests.jobfixtures:tiny",
                                    "include": ["Conv2d"]}])
    out = run_job(job_id, "w@test", settings=settings)
    assert out.status == "failed" and out.retry_in is None
    job = _job(settings, job_id)
    assert job.error_kind is ErrorKind.BAD_CONFIG and "no layers selected" in job.last_error


def test_cancel_while_running_stops_before_writing(settings):
    (job_id,) = _submit(settings, [{
        "name": "a",
        "model": f"factory:tests.jobfixtures:cancels_itself?catalog_url={settings.catalog_url}"}])
    out = run_job(job_id, "w@test", settings=settings)
    assert out.status == "stopped"
    job = _job(settings, job_id)
    assert job.status is JobStatus.CANCELLED
    assert [a.outcome.value for a in job.attempt_rows] == ["cancelled"]
    assert [p for p in settings.storage_root.rglob("*") if p.is_file()] == []


def test_a_job_held_by_a_live_worker_is_looked_at_again_later(settings):
    (job_id,) = _submit(settings, [{"name": "a", "model": "factory:tests.jobfixtures:tiny"}])
    with Catalog(settings.catalog_url).begin() as session:
        assert js.claim(session, job_id, worker="other@host", device="cpu",
                        stale_before=js.stale_cutoff(settings.stale_after)).claimed
    out = run_job(job_id, "w@test", settings=settings)
    assert out == job_module.Outcome("running", retry_in=settings.stale_after)
    assert _job(settings, job_id).worker == "other@host"


def test_unreachable_catalog_asks_for_a_later_retry(tmp_path):
    s = Settings.from_env({"MONO_QUANT_CATALOG_URL":
                           "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    out = run_job(1, "w@test", settings=s)
    assert out.status == "unreachable"  # the task retries it with backoff


def _wrapped(cause: OSError) -> StorageError:
    """A StorageError as our writers raise it: no errno of its own, the OSError as cause."""
    try:
        try:
            raise cause
        except OSError as e:
            raise StorageError(f"/store/x.safetensors: writing failed: {e}") from e
    except StorageError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(BadInputError("x"), (ErrorKind.BAD_INPUT, False), id="bad-input"),
        pytest.param(BadConfigError("x"), (ErrorKind.BAD_CONFIG, False), id="bad-config"),
        pytest.param(TransientError("x"), (ErrorKind.TRANSIENT, True), id="transient"),
        pytest.param(torch.OutOfMemoryError("x"), (ErrorKind.TRANSIENT, True), id="oom"),
        pytest.param(_wrapped(OSError(errno.EIO, "I/O error")), (ErrorKind.TRANSIENT, True),
                     id="storage-eio"),
        pytest.param(_wrapped(PermissionError(errno.EACCES, "denied")),
                     (ErrorKind.INTERNAL, False), id="storage-eacces"),
        pytest.param(StorageError("storage key 'x' resolves outside the storage root"),
                     (ErrorKind.INTERNAL, False), id="storage-escape"),
        pytest.param(OSError(errno.ENOSPC, "full"), (ErrorKind.TRANSIENT, True), id="enospc"),
        pytest.param(OSError(errno.EACCES, "denied"), (ErrorKind.INTERNAL, False), id="eacces"),
        pytest.param(ZeroDivisionError(), (ErrorKind.INTERNAL, False), id="bug"),
    ],
)
def test_classify(exc, expected):
    assert classify(exc) == expected


def test_backoff_grows_with_jitter_and_a_cap():
    s = Settings.from_env({"MONO_QUANT_RETRY_BACKOFF": "2", "MONO_QUANT_RETRY_BACKOFF_MAX": "10"})
    for attempt, (lo, hi) in {1: (1, 2), 2: (2, 4), 3: (4, 8), 10: (5, 10)}.items():
        delays = [backoff(attempt, s) for _ in range(50)]
        assert all(lo <= d <= hi for d in delays) and len(set(delays)) > 1


def test_halve_keeps_every_sample():
    t = torch.arange(10).reshape(5, 2)
    assert [x.shape[0] for x in _halve([t])] == [3, 2]
    d = _halve([{"input_ids": t, "attention_mask": t}])
    assert len(d) == 2 and torch.equal(torch.cat([x["input_ids"] for x in d]), t)
    tup = _halve([(t, t)])
    assert len(tup) == 2 and isinstance(tup[0], tuple)
    assert _halve([torch.ones(1, 3)])[0].shape == (1, 3)


def test_storage_keys_never_leave_the_root(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    key = artifact_key("ab" * 32, "pt", 7, 2)
    assert key == f"ab/{'ab' * 32}/7-2.pt"
    assert resolve(root, key) == root / key
    for bad in ("../x.pt", "/etc/passwd", "a/../../x", "C:\\x", ""):
        with pytest.raises((BadInputError, StorageError)):
            resolve(root, bad)
    (root / "link").symlink_to(tmp_path)  # a symlink inside the root pointing out of it
    with pytest.raises(StorageError, match="outside the storage root"):
        resolve(root, "link/x.pt")
    with pytest.raises(BadInputError):
        artifact_key("../../etc", "pt", 1, 1)


def test_gpu_pinning_is_what_the_pool_child_sees(tmp_path):
    """`mono-quant worker --gpu 3` on a machine without GPUs: the job's process sees only GPU 3
    and the worker's main process never even loads torch (so it cannot initialise CUDA)."""
    from tests.worker.harness import Worker, base_env, cli, flush, redis_db

    broker = redis_db(10)
    flush(broker)
    env = base_env(MONO_QUANT_BROKER_URL=broker, MONO_QUANT_DATA_DIR=str(tmp_path))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    assert cli("db", "upgrade", env=env).returncode == 0
    probe = tmp_path / "probe.json"
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(json.dumps({"jobs": [{
        "name": "p", "device": "gpu", "model": f"factory:tests.jobfixtures:probe?out={probe}"}]}))
    worker = Worker("gpu3@pin", env, tmp_path, "--gpu", "3")
    try:
        worker.wait_ready()
        assert cli("submit", str(manifest), "--wait", "--quiet", env=env).returncode == 0
        seen = json.loads(probe.read_text())
        assert seen["CUDA_VISIBLE_DEVICES"] == "3" and seen["cuda_initialized"] is False
        assert seen["ppid"] == worker.proc.pid  # it ran in the pool child
        maps = Path(f"/proc/{worker.proc.pid}/maps").read_text()
        assert "libtorch" not in maps
    finally:
        worker.stop()
        flush(broker)


def test_layer_and_batch_progress_reach_the_job_row(settings):
    """quantize_model's on_progress lands in the heartbeat's progress, which the next beat
    writes to the catalog (what `mono-quant status` shows)."""
    from mono_quant import QuantConfig, demo_models, quantize_model
    from mono_quant.worker.job import _Heartbeat

    (job_id,) = _submit(settings, [{"name": "a", "model": "factory:tests.jobfixtures:tiny"}])
    catalog = Catalog(settings.catalog_url)
    with catalog.begin() as session:
        js.claim(session, job_id, worker="w@test", device="cpu",
                 stale_before=js.stale_cutoff(settings.stale_after))
    beat = _Heartbeat(catalog, job_id, "w@test", 3600, {"job": job_id})
    seen = []

    def record(stage, done, total):
        beat.step(stage, done, total)
        beat._beat()
        seen.append(dict(_job(settings, job_id).progress))

    quantize_model(demo_models.mlp(), QuantConfig(mode="static"),
                   demo_models.vector_batches(n=2), progress=False, on_progress=record)
    assert {"stage": "calibrating", "done": 2, "total": 2} in seen
    assert seen[-3:] == [{"stage": "quantizing", "done": 3, "total": 3},
                         {"stage": "evaluating", "done": 1, "total": 2},
                         {"stage": "evaluating", "done": 2, "total": 2}]
