"""A worker SIGKILLed in the middle of a sequential job: the retry resumes at the first
unfinished block and writes the artifact an uninterrupted run writes.

The worker's pool child is held after block 1 (``tests/worker/inject/sitecustomize.py``
delays it, nothing else) and killed with SIGKILL like the OOM killer would; Celery
redelivers the message (``task_reject_on_worker_lost``) and the same worker claims attempt 2.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from mono_quant.catalog import AttemptOutcome, JobStatus
from mono_quant.io.formats import load_model, read_info
from mono_quant.pipeline import run_pipeline
from tests.io.hf_fixture import CALIBRATION_TEXT
from tests.pipeline.test_sequential import make_folder, spec_of
from tests.worker import test_queue_e2e as e2e
from tests.worker.harness import REPO, cli, wait_until

# the end-to-end tests' fixtures: a flushed Redis database, a fresh catalog, worker processes
pg_url, env, workers = e2e.pg_url, e2e.env, e2e.workers

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

INJECT = Path(__file__).parent / "inject"


def _stage_events(log: Path) -> list[dict]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        start = line.find('{"event": "stage"')
        if start >= 0:
            events.append(json.loads(line[start:]))
    return events


def test_a_killed_sequential_job_resumes_at_the_unfinished_block(env, workers, tmp_path):
    folder = make_folder(tmp_path, "llama-untied", num_hidden_layers=4)
    cal = tmp_path / "cal.txt"
    cal.write_text(CALIBRATION_TEXT * 2)
    quant = {"mode": "static", "smoothquant": 0.5}
    reference = load_model(run_pipeline(spec_of(folder, cal, "sequential", **quant),
                                        tmp_path / "reference.safetensors").path)
    flag = tmp_path / "paused"
    env = {**env, "PYTHONPATH": f"{INJECT}{os.pathsep}{REPO}",
           "MQ_TEST_PAUSE_AT_BLOCK": "1", "MQ_TEST_PAUSE_FLAG": str(flag)}
    manifest = e2e._manifest(tmp_path / "jobs.yaml", [{
        "name": "seq", "model": f"hf:{folder}", "pipeline": "sequential", **quant,
        "calibration": f"text:{cal}?batch_size=4&max_length=16"}])
    w = workers("w1@seq", environ=env)
    assert cli("submit", str(manifest), env=env).returncode == 0
    wait_until(flag.exists, 120, what="block 1 to be committed")
    child = int(flag.read_text())
    assert child in w.children()
    os.kill(child, signal.SIGKILL)  # mid-model: blocks 0 and 1 done, 2 and 3 not
    (job,) = e2e._wait_final(env, 1, timeout=180)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert [a.outcome for a in job.attempt_rows] == [AttemptOutcome.LOST,
                                                     AttemptOutcome.SUCCEEDED]
    starts = [(e["attempt"], e["first_block"], e["resumed"]) for e in _stage_events(w.log_path)
              if "first_block" in e]
    assert starts == [(1, 0, False), (2, 2, True)]
    root = Path(env["MONO_QUANT_STORAGE_ROOT"])
    (artifact,) = root.rglob("*.safetensors")
    assert read_info(artifact).metrics["sequential"]["resumed_at_block"] == 2
    got = load_model(artifact)
    assert sorted(got) == sorted(reference)
    assert [k for k in got if not torch.equal(got[k], reference[k])] == []
    assert not list(root.rglob("*.work"))  # the progress folder went with the success
    e2e._no_temporaries(root)
