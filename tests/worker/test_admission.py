"""Admission: estimates from checkpoint headers, verdicts with their numbers, the per-device
reservation ledger, and run_job's handling (in this process, SQLite catalog).

There is no GPU here: the CUDA path is tested with ``torch.cuda.mem_get_info`` and
``torch.cuda.get_device_name`` mocked (and ``pick_device`` answering ``cuda:0``), which is
all admission asks of CUDA. The requeue through a real Celery worker is in
``test_admission_e2e.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mono_quant.catalog import Catalog, ErrorKind, Job, JobStatus
from mono_quant.catalog.batches import create_batch
from mono_quant.config import Settings
from mono_quant.pipeline import JobSpec, parse_model_source
from mono_quant.scheduler.manifest import parse_manifest
from mono_quant.scheduler.service import _rows
from mono_quant.worker import admission as adm
from mono_quant.worker import pinning
from mono_quant.worker.job import OutcomeStatus, run_job
from mono_quant.worker.reservations import Ledger, process_start
from tests.io.hf_fixture import make_hf_folder

MiB = 1 << 20


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    pytest.importorskip("transformers", reason="transformers is not installed (the 'hf' extra)")
    return make_hf_folder(tmp_path_factory.mktemp("hf") / "tiny-llama")


def test_summary_comes_from_headers_and_matches_the_weights(llama):
    summary = adm.summarize_checkpoint(llama)
    weights = load_file(llama / "model.safetensors")  # the independent reference
    assert summary.float_bytes == sum(t.numel() * 4 for t in weights.values())
    assert summary.int8_bytes == sum(t.numel() for t in weights.values() if t.ndim >= 2)
    blocks: dict[str, int] = {}
    for name, t in weights.items():
        key = re.match(r"(model\.layers\.\d+)\.", name)
        blocks[key.group(1) if key else name] = blocks.get(key.group(1) if key else name, 0) \
            + t.numel() * 4
    assert summary.largest_block_bytes == max(blocks.values())
    assert (summary.hidden_size, summary.max_positions) == (64, 128)


def test_strategies_and_auto(llama):
    s = adm.CheckpointSummary(float_bytes=40 << 30, int8_bytes=10 << 30,
                              largest_block_bytes=1 << 30, hidden_size=8192,
                              max_positions=131072)
    mem = adm.estimate_from_summary(s, "in_memory", None)
    assert mem.parts == {"float model": 40 << 30, "int8 copy": 10 << 30,
                         "activations": (40 << 30) // 10}
    never_offloaded = adm.Context(samples=64, offload_bytes=None)
    seq = adm.estimate_from_summary(s, "sequential", never_offloaded)
    assert seq.parts == {"largest block x2": 2 << 30,
                         "activation cache": 64 * 2048 * 8192 * 4 * 2}
    assert adm.estimate_from_summary(s, "auto", 64, total=80 << 30).strategy == "in_memory"
    assert adm.estimate_from_summary(s, "auto", 64, total=40 << 30).strategy == "sequential"
    with pytest.raises(Exception, match="no estimate for pipeline strategy 'magic'"):
        adm.estimate_from_summary(s, "magic", None)
    spec = JobSpec(parse_model_source(f"hf:{llama}"), stream=False)
    assert adm.estimate_memory(spec).strategy == "in_memory"  # JobSpec has no `pipeline` yet
    # unset stream: this weight-only llama streams by itself, which bounds its own memory
    assert adm.estimate_memory(JobSpec(parse_model_source(f"hf:{llama}"))) is None
    assert adm.estimate_memory(JobSpec(parse_model_source(
        "factory:mono_quant.demo_models:mlp"))) is None


def test_the_sequential_estimate_counts_only_the_activations_kept_in_memory():
    """The caches go to disk beyond the offload limit (each of the two: a block's inputs
    and its outputs), and on a GPU they never leave host memory: one batch goes over."""
    s = adm.CheckpointSummary(float_bytes=40 << 30, int8_bytes=10 << 30,
                              largest_block_bytes=1 << 30, hidden_size=8192,
                              max_positions=131072)
    sample = 2048 * 8192 * 4  # one sample's hidden states (64 MiB)

    def cache(**ctx) -> dict[str, int]:
        parts = adm.estimate_from_summary(s, "sequential", adm.Context(**ctx)).parts
        assert parts.pop("largest block x2") == 2 << 30
        return parts

    # 64 samples: 4 GiB per cache, over the default 1 GiB limit: 1 GiB each stays
    assert cache(samples=64) == {"activation cache (rest on disk)": 2 << 30}
    assert cache(samples=64, offload_bytes=3 << 30) == {"activation cache (rest on disk)": 6 << 30}
    # under the limit, or never offloaded: both caches whole
    assert cache(samples=8, offload_bytes=1 << 30) == {"activation cache": 2 * 8 * sample}
    assert cache(samples=64, offload_bytes=None) == {"activation cache": 2 * 64 * sample}
    # 0 offloads everything: one batch in memory at a time (the source's batch size)
    assert cache(samples=64, batch=4, offload_bytes=0) == {
        "activation cache (rest on disk)": 2 * 4 * sample}
    # a GPU holds one batch in and out, whatever the limit
    for limit in (None, 0, 1 << 30):
        assert cache(samples=64, batch=4, device="cuda:0", offload_bytes=limit) == {
            "activations (one batch in and out)": 2 * 4 * sample}
    # a plain sample count is a CPU context with the default limit (1 GiB)
    assert adm.estimate_from_summary(s, "sequential", 64).bytes == (2 << 30) + (2 << 30)


def test_a_sequential_job_reserves_what_its_offload_limit_keeps(settings, llama, monkeypatch):
    """The worker's MONO_QUANT_ACTIVATION_OFFLOAD_BYTES reaches the estimate it reserves."""
    import mono_quant.pipeline as pipeline

    seen = []
    real = pipeline.run_pipeline

    def spy(*args, **kwargs):
        seen.append(Ledger(s.data_dir / "admission", "cpu").reserved())
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run_pipeline", spy)
    s = Settings.from_env({"MONO_QUANT_DATA_DIR": str(settings.data_dir),
                           "MONO_QUANT_COMPILE": "never",
                           "MONO_QUANT_ACTIVATION_OFFLOAD_BYTES": "0"})
    job_id = _submit(s, f"hf:{llama}", pipeline="sequential")
    assert run_job(job_id, "w@test", settings=s).status is OutcomeStatus.SUCCEEDED
    summary = adm.summarize_checkpoint(llama)
    sample = summary.max_positions * summary.hidden_size * 4
    (held,) = seen
    assert held[str(job_id)]["bytes"] == 2 * summary.largest_block_bytes + 2 * 8 * sample
    whole = adm.estimate_memory(JobSpec(parse_model_source(f"hf:{llama}"),
                                        pipeline="sequential"), offload_bytes=None)
    assert held[str(job_id)]["bytes"] < whole.bytes


def test_verdicts_carry_the_numbers():
    est = adm.Estimate("in_memory", {"float model": 30 << 30, "int8 copy": 8 << 30})
    gpu = adm.DeviceMemory("gpu0", "NVIDIA H100 (cuda:0, GPU 0)", total=80 << 30,
                           free=70 << 30)
    assert adm.decide(est, gpu, reserved=0).verdict is adm.Verdict.ADMIT
    wait = adm.decide(est, gpu, reserved=50 << 30)  # 80 - 50 = 30 GiB left < 38
    assert wait.verdict is adm.Verdict.WAIT and wait.available == 30 << 30
    assert wait.reason == (
        "the job needs about 38.00 GiB (in_memory: float model 30.00 GiB + int8 copy 8.00 GiB); "
        "NVIDIA H100 (cuda:0, GPU 0) has 30.00 GiB available now (free 70.00 GiB, reserved by "
        "running jobs 50.00 GiB, total 80.00 GiB)")
    small = adm.DeviceMemory("gpu0", "NVIDIA T4 (cuda:0, GPU 0)", total=16 << 30, free=16 << 30)
    never = adm.decide(est, small, reserved=0)
    assert never.verdict is adm.Verdict.NEVER
    assert never.reason.startswith("the job needs about 38.00 GiB (in_memory: float model "
                                   "30.00 GiB + int8 copy 8.00 GiB) but NVIDIA T4 (cuda:0, "
                                   "GPU 0) has 16.00 GiB in all: it fits no device")


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def test_two_jobs_never_oversubscribe_and_a_killed_holder_releases(tmp_path):
    ledger = Ledger(tmp_path, "gpu0")
    gpu = adm.DeviceMemory("gpu0", "test GPU", total=100 * MiB, free=100 * MiB)
    job = adm.Estimate("in_memory", {"model": 60 * MiB})
    holder = _sleeper()  # stands for the worker process running job 1
    try:
        assert ledger.admit(job, gpu, job_id=1, pid=holder.pid).verdict is adm.Verdict.ADMIT
        # mem_get_info still shows 100 MiB free: job 1 has not allocated yet
        assert ledger.admit(job, gpu, job_id=2).verdict is adm.Verdict.WAIT
        assert set(ledger.reserved()) == {"1"}
    finally:
        holder.kill()
        holder.wait()
    assert ledger.reserved() == {}  # its process is gone: the entry is dropped
    assert ledger.admit(job, gpu, job_id=2).verdict is adm.Verdict.ADMIT


def test_a_reused_pid_does_not_keep_a_reservation(tmp_path):
    ledger = Ledger(tmp_path, "cpu")
    gpu = adm.DeviceMemory("cpu", "host", total=100, free=100)
    ledger.admit(adm.Estimate("in_memory", {"m": 60}), gpu, job_id=1)
    data = ledger.path.read_text().replace(f'"start": "{process_start(os.getpid())}"',
                                           '"start": "1"')
    assert data != ledger.path.read_text()
    ledger.path.write_text(data)  # same pid, another start time: another process
    assert ledger.reserved() == {}


# --- run_job --------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path) -> Settings:
    env = {"MONO_QUANT_DATA_DIR": str(tmp_path), "MONO_QUANT_COMPILE": "never",
           "MONO_QUANT_HEARTBEAT_INTERVAL": "30", "MONO_QUANT_ADMISSION_RETRY": "7"}
    s = Settings.from_env(env)
    Catalog(s.catalog_url).upgrade()
    return s


def _submit(settings, model: str, **fields) -> int:
    _, specs = parse_manifest({"jobs": [{"name": "a", "model": model, **fields}]})
    with Catalog(settings.catalog_url).begin() as session:
        _, (job_id,) = create_batch(session, _rows(specs), name="t")
    return job_id


def _job(settings, job_id) -> Job:
    with Catalog(settings.catalog_url).begin() as session:
        job = session.get(Job, job_id)
        _ = job.attempt_rows
        return job


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device as admission sees it (mocked: no GPU on CI); set ``free``/``total``."""
    state = {"free": 0, "total": 0}
    monkeypatch.setattr(pinning, "pick_device", lambda: "cuda:0")
    monkeypatch.setenv("MONO_QUANT_GPU_INDEX", "3")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"],
                                                                         state["total"]))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Test GPU")
    return state


def test_a_job_that_fits_no_gpu_fails_as_bad_config_with_the_numbers(settings, llama, fake_gpu):
    fake_gpu.update(free=64 * MiB, total=64 * MiB)
    # in_memory: with `auto`, a job that does not fit whole runs sequentially (smaller)
    job_id = _submit(settings, f"hf:{llama}", pipeline="in_memory")
    out = run_job(job_id, "w@test", settings=settings)
    assert out.status is OutcomeStatus.FAILED
    job = _job(settings, job_id)
    assert job.status is JobStatus.FAILED and job.error_kind is ErrorKind.BAD_CONFIG
    s = adm.summarize_checkpoint(llama)
    total = s.float_bytes + s.int8_bytes + 256 * MiB
    assert job.last_error.startswith(
        f"admission: the job needs about {total / MiB:.1f} MiB (in_memory: float model "
        f"{s.float_bytes / MiB:.1f} MiB + int8 copy {s.int8_bytes / MiB:.1f} MiB + activations "
        "256.0 MiB) but NVIDIA Test GPU (cuda:0, GPU 3) has 64.0 MiB in all: it fits no device "
        "of this queue"), job.last_error
    assert len(job.attempt_rows) == 1  # claimed to record the failure; never retried


def test_a_job_that_fits_but_not_now_stays_queued_without_an_attempt(settings, llama, fake_gpu):
    fake_gpu.update(free=100 * MiB, total=8 << 30)  # another process holds the GPU
    job_id = _submit(settings, f"hf:{llama}")
    before = _job(settings, job_id).status
    out = run_job(job_id, "w@test", settings=settings)
    assert out.status is OutcomeStatus.WAITING and out.retry_in == 7.0
    assert "NVIDIA Test GPU (cuda:0, GPU 3) has 100.0 MiB available now (free 100.0 MiB, " \
        "reserved by running jobs 0.0 MiB, total 8.00 GiB)" in out.error
    job = _job(settings, job_id)
    assert job.status is before and job.attempts == 0 and job.attempt_rows == []  # unclaimed
    assert Ledger(settings.data_dir / "admission", "gpu3").reserved() == {}


def test_an_admitted_job_holds_its_reservation_until_it_ends(settings, llama, monkeypatch):
    import mono_quant.pipeline as pipeline

    seen = []
    real = pipeline.run_pipeline

    def spy(*args, **kwargs):
        seen.append(Ledger(settings.data_dir / "admission", "cpu").reserved())
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run_pipeline", spy)
    job_id = _submit(settings, f"hf:{llama}", stream=False)  # in memory: an estimate
    assert run_job(job_id, "w@test", settings=settings).status is OutcomeStatus.SUCCEEDED
    expected = adm.estimate_memory(JobSpec(parse_model_source(f"hf:{llama}"),
                                           stream=False)).bytes
    (held,) = seen
    assert list(held) == [str(job_id)] and held[str(job_id)]["bytes"] == expected
    assert Ledger(settings.data_dir / "admission", "cpu").reserved() == {}  # released


def test_admission_off_claims_without_estimating(settings, llama, fake_gpu, monkeypatch):
    fake_gpu.update(free=1, total=1)
    s = Settings.from_env({"MONO_QUANT_DATA_DIR": str(settings.data_dir),
                           "MONO_QUANT_ADMISSION": "off"})
    assert s.admission is False
    called = []
    monkeypatch.setattr(adm, "estimate_memory", lambda *a, **k: called.append(1))
    job_id = _submit(s, f"hf:{llama}")
    run_job(job_id, "w@test", settings=s)  # runs (and fails on the fake cuda device)
    assert called == [] and _job(s, job_id).attempts == 1
