"""Workers that share nothing but an object store: real moto S3 server, Redis, PostgreSQL and
``mono-quant worker`` processes.

Each worker has its own working folder, TMPDIR, data folder and download cache; the storage
root is ``s3://bucket/artifacts`` and nothing else. What the catalog says is checked against
the server's own view through plain s3fs (no mono-quant code), hashes with hashlib.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
import redis
import torch
from sqlalchemy import select, text

from mono_quant.catalog import Catalog, ErrorKind, Job, JobStatus
from mono_quant.io.hashing import sha256_path
from tests.catalog.backends import _temporary_database
from tests.s3server import SECRET, client, moto_server, multipart_uploads, new_bucket, s3_env
from tests.worker.harness import Worker, base_env, cli, flush, redis_db, wait_until

pytestmark = pytest.mark.timeout(300)

BROKER = redis_db(15)


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def pg_url(pg_server):
    with _temporary_database("_s3") as url:
        yield url


@pytest.fixture
def env(pg_url, endpoint, tmp_path):
    try:
        redis.Redis.from_url(BROKER).ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis at {BROKER} is unreachable: {e}")
    flush(BROKER)
    bucket = new_bucket(endpoint)
    e = base_env(MONO_QUANT_BROKER_URL=BROKER, MONO_QUANT_CATALOG_URL=pg_url,
                 MONO_QUANT_STORAGE_ROOT=f"s3://{bucket}/artifacts",
                 MONO_QUANT_DATA_DIR=str(tmp_path / "client"), **s3_env(endpoint))
    out = cli("db", "upgrade", env=e)
    assert out.returncode == 0, out.stderr
    catalog = Catalog(pg_url)
    with catalog.begin() as s:  # each test starts from an empty catalog, ids from 1
        s.execute(text("TRUNCATE artifacts, attempts, jobs, batches RESTART IDENTITY CASCADE"))
    catalog.dispose()
    yield e
    flush(BROKER)


@pytest.fixture
def workers(env, tmp_path):
    """Start a worker in a home of its own (cwd, TMPDIR, data folder, cache): no shared disk."""
    started: list[Worker] = []

    def start(name: str, **extra: str) -> tuple[Worker, Path]:
        home = tmp_path / name.replace("@", "_")
        (home / "tmp").mkdir(parents=True)
        w = Worker(name, {**env, **extra, "TMPDIR": str(home / "tmp"),
                          "MONO_QUANT_DATA_DIR": str(home / "data"),
                          "XDG_CACHE_HOME": str(home / "cache")}, tmp_path, cwd=home)
        started.append(w)
        w.wait_ready()
        return w, home

    yield start
    for w in started:
        w.stop()


def _jobs(env) -> list[Job]:
    catalog = Catalog(env["MONO_QUANT_CATALOG_URL"])
    with catalog.begin() as s:
        jobs = list(s.scalars(select(Job).order_by(Job.id)))
        for j in jobs:
            _ = j.attempt_rows, j.artifact
    catalog.dispose()
    return jobs


def _bucket_path(env) -> str:
    return env["MONO_QUANT_STORAGE_ROOT"].removeprefix("s3://")


def _server_digest(fs, path: str, local: Path) -> str:
    """sha256 of an object (hashlib over its bytes), or of a folder's objects (downloaded,
    then mono-quant's folder formula over the local copy)."""
    if fs.info(path)["type"] == "file":
        return hashlib.sha256(fs.cat(path)).hexdigest()
    fs.get(path, str(local), recursive=True)
    return sha256_path(local)


def _manifest(path: Path, jobs: list[dict], **top) -> Path:
    path.write_text(json.dumps({"defaults": {"device": "cpu"}, **top, "jobs": jobs}))
    return path


@pytest.mark.slow
def test_batch_on_two_workers_with_only_an_object_store(env, workers, tmp_path):
    manifest = _manifest(tmp_path / "jobs.yaml", [
        {"name": "a", "model": "factory:tests.jobfixtures:tiny?seed=1"},
        {"name": "b", "model": "factory:tests.jobfixtures:tiny?seed=2", "format": "pt"},
        {"name": "c", "model": "factory:tests.jobfixtures:tiny?seed=3",
         "format": "compressed-tensors"},
    ], matrix={"scheme": ["symmetric", "asymmetric"]})
    homes = [workers("w1@s3")[1], workers("w2@s3")[1]]
    out = cli("submit", str(manifest), "--wait", "--quiet", env=env, timeout=240)
    assert out.returncode == 0, out.stderr
    done = _jobs(env)
    assert len(done) == 6 and all(j.status is JobStatus.SUCCEEDED for j in done)
    assert {j.worker for j in done} == {"w1@s3", "w2@s3"}  # both took work
    fs, base = client(env["AWS_ENDPOINT_URL"]), _bucket_path(env)
    for j in done:  # the catalog row matches the server's object, hashed independently
        a = j.artifact
        path = f"{base}/{a.storage_key}"
        assert _server_digest(fs, path, tmp_path / f"dl{a.id}") == a.sha256
        assert sum(fs.du(path, total=False).values()) == a.size_bytes
    stored = {p.removeprefix(base + "/") for p in fs.find(base)}
    expected = set()
    for j in done:
        names = [""] if j.artifact.format.value != "compressed-tensors" else \
            [p.name for p in (tmp_path / f"dl{j.artifact.id}").rglob("*") if p.is_file()]
        expected |= {f"{j.artifact.storage_key}/{n}".rstrip("/") for n in names}
    assert stored == expected  # no leftovers, no temporaries
    assert multipart_uploads(env["AWS_ENDPOINT_URL"], base.split("/")[0]) == []
    for home in homes:  # scratch files removed; nothing written as a local "s3:" folder
        assert not [p for p in (home / "tmp").rglob("mono-quant-upload-*")]
        assert not [p for p in home.rglob("*") if p.name.startswith("s3:")]
    where = cli("catalog", "path", str(done[0].artifact.id), env=env)
    assert where.stdout.strip() == f"s3://{base}/{done[0].artifact.storage_key}"
    _flipped_byte_found_by_deep_verify(env, fs, base, done[0].artifact)
    for log in tmp_path.glob("*.log"):
        assert SECRET not in log.read_text(errors="replace")


def _flipped_byte_found_by_deep_verify(env, fs, base, artifact) -> None:
    ok = cli("catalog", "verify", "--all", "--deep", env=env)
    assert ok.returncode == 0 and "6 ok" in ok.stdout, ok.stdout + ok.stderr
    path = f"{base}/{artifact.storage_key}"
    data = bytearray(fs.cat(path))
    data[len(data) // 2] ^= 0x01  # same size: only a hash can tell
    fs.pipe(path, bytes(data))
    shallow = cli("catalog", "verify", "--all", env=env)
    assert shallow.returncode == 0 and "6 ok" in shallow.stdout  # sizes only
    deep = cli("catalog", "verify", "--all", "--deep", env=env)
    assert deep.returncode == 1 and "1 changed, 5 ok" in deep.stdout, deep.stdout
    assert f"artifact {artifact.id} {artifact.storage_key}: CHANGED" in deep.stdout
    assert SECRET not in deep.stdout + deep.stderr + ok.stdout + shallow.stdout


@pytest.mark.slow
def test_worker_killed_mid_upload(env, workers, tmp_path):
    """SIGKILL while the artifact's multipart upload is open: no object is visible, the job
    is re-run by the other worker, and its attempt aborts the dead upload."""
    manifest = _manifest(tmp_path / "jobs.yaml", [
        {"name": "wide", "model": "factory:tests.jobfixtures:wide"}])
    w1, _ = workers("w1@s3")
    out = cli("submit", str(manifest), "--quiet", env=env)
    assert out.returncode == 0, out.stderr
    endpoint, base = env["AWS_ENDPOINT_URL"], _bucket_path(env)
    bucket = base.split("/")[0]
    fs = client(endpoint)  # one client, so each look is one request: the upload lasts seconds
    uploads = wait_until(lambda: multipart_uploads(endpoint, bucket, fs=fs), 180,
                         interval=0.02, what="the artifact's upload to begin")
    w1.kill(signal.SIGKILL)
    assert fs.find(base) == []  # the half-sent artifact is nowhere to be seen
    assert multipart_uploads(endpoint, bucket) and uploads[0]["Key"].endswith("-1.safetensors")
    workers("w2@s3")
    final = wait_until(lambda: (jobs := _jobs(env)) and jobs[0].status is JobStatus.SUCCEEDED
                       and jobs, 180, interval=0.5, what="the job to be re-run")
    a = final[0].artifact
    assert final[0].worker == "w2@s3" and a.storage_key.endswith("-2.safetensors")
    assert fs.find(base) == [f"{base}/{a.storage_key}"]  # attempt 1 left nothing
    assert hashlib.sha256(fs.cat(f"{base}/{a.storage_key}")).hexdigest() == a.sha256
    assert multipart_uploads(endpoint, bucket) == []  # the dead upload was aborted


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["missing-bucket", "refused-credentials"])
def test_store_problems_fail_the_job_as_bad_config(env, endpoint, tmp_path, problem):
    """With the embedded runner: the job fails at once as bad_config, naming the problem;
    the secret key appears in no output and nowhere in the catalog's file."""
    manifest = _manifest(tmp_path / "jobs.yaml", [
        {"name": "a", "model": "factory:tests.jobfixtures:tiny"}])
    local = {k: v for k, v in env.items() if k not in ("MONO_QUANT_BROKER_URL",
                                                       "MONO_QUANT_CATALOG_URL")}
    local["MONO_QUANT_DATA_DIR"] = str(tmp_path / "embedded")
    if problem == "missing-bucket":
        local["MONO_QUANT_STORAGE_ROOT"] = "s3://mq-no-such-bucket/artifacts"
        out = cli("run", str(manifest), env=local, timeout=240)
        expected = "the bucket 'mq-no-such-bucket' does not exist"
    else:
        with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as strict:
            out = cli("run", str(manifest), env={**local, "AWS_ENDPOINT_URL": strict},
                      timeout=240)
        expected = "was refused"
    assert out.returncode == 1, out.stdout + out.stderr
    catalog = Catalog(f"sqlite:///{tmp_path / 'embedded' / 'catalog.db'}")
    with catalog.begin() as s:
        (job,) = s.scalars(select(Job))
        assert job.status is JobStatus.FAILED and job.error_kind is ErrorKind.BAD_CONFIG
        assert expected in job.last_error and job.attempts == 1
    catalog.dispose()
    assert SECRET not in out.stdout + out.stderr
    assert not [p for p in (tmp_path / "embedded").rglob("*")
                if p.is_file() and SECRET.encode() in p.read_bytes()]


@pytest.mark.slow
def test_sequential_job_killed_after_block_1_resumes_on_another_worker(env, workers, tmp_path):
    """The progress is in the store: worker 1 (SIGKILLed, whole process group, after block 1)
    and worker 2 share no folder, and worker 2 starts at block 2. The model is a folder in
    the store too, downloaded by each worker into its own cache."""
    pytest.importorskip("transformers", reason="needs the hf extra")
    from mono_quant.io.formats import load_model, read_info
    from mono_quant.pipeline import run_pipeline
    from tests.io.hf_fixture import CALIBRATION_TEXT
    from tests.pipeline.test_sequential import make_folder, spec_of
    from tests.worker.harness import REPO
    from tests.worker.test_sequential_resume import INJECT, _stage_events

    folder = make_folder(tmp_path / "src", "llama-untied", num_hidden_layers=4)
    cal = tmp_path / "cal.txt"
    cal.write_text(CALIBRATION_TEXT * 2)
    quant = {"mode": "static", "smoothquant": 0.5}
    reference = load_model(run_pipeline(spec_of(folder, cal, "sequential", **quant),
                                        tmp_path / "reference.safetensors").path)
    endpoint, base = env["AWS_ENDPOINT_URL"], _bucket_path(env)
    bucket, fs = base.split("/")[0], client(endpoint)
    for f in folder.iterdir():
        fs.put_file(str(f), f"{bucket}/models/llama/{f.name}")
    manifest = _manifest(tmp_path / "jobs.yaml", [{
        "name": "seq", "model": f"hf:s3://{bucket}/models/llama", "pipeline": "sequential",
        **quant, "calibration": f"text:{cal}?batch_size=4&max_length=16"}])
    flag = tmp_path / "paused"
    w1, home1 = workers("w1@s3", PYTHONPATH=f"{INJECT}{os.pathsep}{REPO}",
                        MQ_TEST_PAUSE_AT_BLOCK="1", MQ_TEST_PAUSE_FLAG=str(flag))
    assert cli("submit", str(manifest), "--quiet", env=env).returncode == 0
    wait_until(flag.exists, 180, what="block 1 to be committed")
    w1.kill(signal.SIGKILL)  # the worker and its pool child: that node is gone
    (state_key,) = [p for p in fs.find(base) if p.endswith("/1.work/state.json")]
    assert json.loads(fs.cat(state_key))["blocks_done"] == 2
    w2, home2 = workers("w2@s3")
    final = wait_until(lambda: (jobs := _jobs(env)) and jobs[0].status.value in (
        "succeeded", "failed") and jobs, 240, interval=0.5, what="the job to finish")
    job = final[0]
    assert job.status is JobStatus.SUCCEEDED and job.worker == "w2@s3", job.last_error
    starts = [(e["attempt"], e["first_block"], e["resumed"]) for e in _stage_events(w2.log_path)
              if "first_block" in e]
    assert starts == [(2, 2, True)]
    key = job.artifact.storage_key
    assert fs.find(base) == [f"{base}/{key}"]  # only the artifact: the progress went with it
    assert multipart_uploads(endpoint, bucket) == []
    fs.get(f"{base}/{key}", str(tmp_path / "got.safetensors"))
    got_path = tmp_path / "got.safetensors"
    assert read_info(got_path).metrics["sequential"]["resumed_at_block"] == 2
    got = load_model(got_path)
    assert sorted(got) == sorted(reference)
    assert [k for k in got if not torch.equal(got[k], reference[k])] == []
    for home in (home1, home2):  # each worker downloaded the model into its own cache
        assert list((home / "cache").rglob("config.json"))
    assert not list((home2 / "tmp").rglob("*.work"))
