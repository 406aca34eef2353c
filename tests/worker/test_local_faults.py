"""The embedded runner outlives its jobs: exits, interrupts and dead processes from user code
fail (or lose) one job, never the run; a killed run's jobs are picked up by the next.

Real `mono-quant run` subprocesses on a throwaway SQLite catalog; factories in
tests/jobfixtures.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import select

from mono_quant.catalog import Catalog, Job, JobStatus
from mono_quant.config import Settings
from tests.worker.harness import base_env, cli, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _env(tmp_path) -> dict[str, str]:
    env = base_env(MONO_QUANT_DATA_DIR=str(tmp_path / "data"))
    for name in ("MONO_QUANT_CATALOG_URL", "MONO_QUANT_STORAGE_ROOT", "MONO_QUANT_BROKER_URL",
                 "MONO_QUANT_REDIS_HOST"):
        env.pop(name, None)
    return env


def _manifest(tmp_path, jobs: list[dict]) -> str:
    path = tmp_path / "jobs.yaml"
    path.write_text(json.dumps({"jobs": jobs}))
    return str(path)


def _jobs(env) -> dict[str, Job]:
    catalog = Catalog(Settings.from_env(env).catalog_url)
    with catalog.begin() as session:
        jobs = list(session.scalars(select(Job).order_by(Job.id)))
        for j in jobs:
            _ = j.attempt_rows
    catalog.dispose()
    return {j.name: j for j in jobs}


def test_exits_and_interrupts_from_a_factory_fail_only_their_job(tmp_path):
    env = _env(tmp_path)
    manifest = _manifest(tmp_path, [
        {"name": "exits", "model": "factory:tests.jobfixtures:exits?code=3"},
        {"name": "interrupts", "model": "factory:tests.jobfixtures:interrupts"},
        {"name": "hard", "model":
            f"factory:tests.jobfixtures:hard_exit_first?marker={tmp_path / 'hard'}"},
        {"name": "fine", "model": "factory:tests.jobfixtures:tiny"},
    ])
    out = cli("run", manifest, "--quiet", env=env, timeout=240)
    assert out.returncode == 1, out.stdout + out.stderr  # two jobs failed, the run finished
    assert "concurrent/futures" not in out.stderr  # the runner itself did not crash
    jobs = _jobs(env)
    assert jobs["fine"].status is JobStatus.SUCCEEDED
    for name, raised in (("exits", "SystemExit(3)"),
                         ("interrupts", "KeyboardInterrupt('raised by the model factory')")):
        job = jobs[name]
        assert job.status is JobStatus.FAILED and job.error_kind.value == "internal", name
        assert f"the job's own code raised {raised}" in job.last_error
        assert [a.outcome.value for a in job.attempt_rows] == ["failed"]  # not retried
    hard = jobs["hard"]  # os._exit: the attempt is lost like a crash, the retry succeeds
    assert hard.status is JobStatus.SUCCEEDED
    assert [a.outcome.value for a in hard.attempt_rows] == ["lost", "succeeded"]
    assert "failed job 1 exits: [internal] the job's own code raised SystemExit(3)" in out.stdout


def _start_run(manifest: str, env, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mono_quant.scheduler.cli", "run", manifest, "--quiet", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )


def test_a_job_left_running_by_a_killed_run_is_rerun_by_the_next(tmp_path):
    env = _env(tmp_path)
    marker = tmp_path / "slow"
    manifest = _manifest(tmp_path, [
        {"name": "slow", "model": f"factory:tests.jobfixtures:slow_first?marker={marker}"}])
    run = _start_run(manifest, env)
    wait_until(marker.exists, 120, what="the job to start")
    os.killpg(run.pid, signal.SIGKILL)  # the runner and its pool child, mid-job
    run.communicate(timeout=30)
    assert _jobs(env)["slow"].status is JobStatus.RUNNING  # what the dead runner left
    out = cli("run", manifest, "--quiet", "--force", env=env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    (job,) = _jobs(env).values()  # the same job ran again: no second job for the key
    assert job.status is JobStatus.SUCCEEDED
    assert [a.outcome.value for a in job.attempt_rows] == ["lost", "succeeded"]
    assert f"resumed job {job.id} slow (batch 1): succeeded" in out.stdout


def test_ctrl_c_stops_the_batch_and_the_next_run_finishes_it(tmp_path):
    env = _env(tmp_path)
    marker = tmp_path / "slow"
    manifest = _manifest(tmp_path, [
        {"name": "slow", "model": f"factory:tests.jobfixtures:slow_first?marker={marker}"},
        {"name": "a", "model": "factory:tests.jobfixtures:tiny?seed=1"},
        {"name": "b", "model": "factory:tests.jobfixtures:tiny?seed=2"},
    ])
    run = _start_run(manifest, env)  # one worker process: a and b wait behind slow
    wait_until(marker.exists, 120, what="the slow job to start")
    child_pid = int(marker.read_text())
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
    stdout, stderr = run.communicate(timeout=180)  # generous: CI machines are loaded
    assert run.returncode == 130, stdout + stderr
    assert ("interrupted: Ctrl-C stopped the run; no new job started; 1 running job(s) "
            "stopped and returned to the queue (1), 2 job(s) not started (2, 3)") in stdout
    assert "Traceback" not in stderr
    with pytest.raises(ProcessLookupError):  # the running job's process is gone
        os.kill(child_pid, 0)
    jobs = _jobs(env)
    assert jobs["slow"].status is JobStatus.QUEUED and jobs["slow"].attempts == 0
    assert [a.outcome.value for a in jobs["slow"].attempt_rows] == ["lost"]
    assert "Ctrl-C" in jobs["slow"].attempt_rows[0].error
    for name in ("a", "b"):  # never started
        assert jobs[name].status is JobStatus.PENDING and not jobs[name].attempt_rows

    again = cli("run", manifest, "--quiet", env=env, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    jobs = _jobs(env)
    assert len(jobs) == 3 and all(j.status is JobStatus.SUCCEEDED for j in jobs.values())
    assert [a.outcome.value for a in jobs["slow"].attempt_rows] == ["lost", "succeeded"]
    assert "resumed job 1 slow (batch 1): succeeded" in again.stdout


def test_retry_without_a_broker_marks_jobs_for_run_and_never_publishes(tmp_path):
    env = _env(tmp_path)
    weights = tmp_path / "weights"
    manifest = _manifest(tmp_path, [
        {"name": "needs", "model": f"factory:tests.jobfixtures:needs_file?path={weights}"},
        {"name": "needs2", "model":
            f"factory:tests.jobfixtures:needs_file?path={weights}-2"},
    ])
    assert cli("run", manifest, "--quiet", env=env, timeout=240).returncode == 1
    weights.write_text("ok")  # the cause is fixed
    (tmp_path / "weights-2").write_text("ok")
    out = cli("retry", "--batch", "1", "--include-bad-input", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "marked 2 job(s) for re-run: 1, 2" in out.stdout
    assert "run them with `mono-quant run MANIFEST`" in out.stdout
    jobs = _jobs(env)
    assert [j.status for j in jobs.values()] == [JobStatus.PENDING] * 2  # nothing published
    assert all(j.queued_at is None for j in jobs.values())
    again = cli("run", manifest, "--quiet", env=env, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already working" not in again.stdout
    jobs = _jobs(env)
    assert [j.status for j in jobs.values()] == [JobStatus.SUCCEEDED] * 2


def test_retry_run_runs_failed_jobs_here(tmp_path):
    env = _env(tmp_path)
    weights = tmp_path / "weights"
    manifest = _manifest(tmp_path, [
        {"name": "needs", "model": f"factory:tests.jobfixtures:needs_file?path={weights}"}])
    assert cli("run", manifest, "--quiet", env=env, timeout=240).returncode == 1
    weights.write_text("ok")
    out = cli("retry", "--all-failed", "--include-bad-input", "--run", env=env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "marked 1 job(s) for re-run: 1" in out.stdout and "job 1 needs: succeeded" in out.stdout
    (job,) = _jobs(env).values()
    assert job.status is JobStatus.SUCCEEDED and len(job.attempt_rows) == 2
