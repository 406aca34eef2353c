"""``submit --wait`` ends with the artifact table, ``retry`` skips bad input and ``retry
--wait`` follows the retried jobs: a real worker process, real Redis, a real SQLite catalog."""

from __future__ import annotations

import json

import pytest
import redis

from tests.worker.harness import REPO, Worker, base_env, cli, flush, redis_db

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BROKER = redis_db(11)


@pytest.fixture
def env(tmp_path):
    try:
        redis.Redis.from_url(BROKER).ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis at {BROKER} is unreachable: {e}")
    flush(BROKER)
    e = base_env(MONO_QUANT_BROKER_URL=BROKER, MONO_QUANT_DATA_DIR=str(tmp_path / "data"),
                 PYTHONPATH=f"{REPO / 'src'}:{REPO}")
    for name in ("MONO_QUANT_CATALOG_URL", "MONO_QUANT_STORAGE_ROOT"):
        e.pop(name, None)
    assert cli("db", "upgrade", env=e).returncode == 0
    worker = Worker("cpu-wait@test", e, tmp_path, "--queues", "cpu")
    worker.wait_ready()
    yield e
    worker.stop()
    flush(BROKER)


def test_submit_wait_prints_artifacts_and_retry_wait_follows(env, tmp_path):
    weights = tmp_path / "weights-arrive-later"
    manifest = tmp_path / "waits.yaml"
    manifest.write_text(json.dumps({"name": "waits", "defaults": {"device": "cpu"}, "jobs": [
        {"name": "ok", "model": "factory:tests.jobfixtures:tiny"},
        {"name": "needs", "model": f"factory:tests.jobfixtures:needs_file?path={weights}"},
    ]}))
    out = cli("submit", str(manifest), "--wait", "--quiet", env=env, timeout=240)
    assert out.returncode == 1, out.stderr  # one job failed
    lines = out.stdout.splitlines()
    assert lines[0] == "batch 1 (waits): 2 job(s): failed 1, succeeded 1; 1 artifact(s)"
    table = lines[lines.index(next(x for x in lines if x.startswith("ID"))):]
    assert table[0].split()[:3] == ["ID", "JOB", "MODEL"]
    assert [row.split()[1:3] for row in table[1:]] == [["1", "ok"]]

    out = cli("retry", "--batch", "waits", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "re-enqueued 0 job(s)",
        "not retried 1 job(s) 2: failed with bad_input: retrying cannot help until the input "
        "changes (--include-bad-input retries anyway)"]

    weights.write_text("the cause is fixed")
    out = cli("retry", "--batch", "waits", "--include-bad-input", "--wait", "--quiet",
              env=env, timeout=240)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "re-enqueued 1 job(s): 2"
    assert "batch 1 (waits): 2 job(s): succeeded 2; 2 artifact(s)" in out.stdout
