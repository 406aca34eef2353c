"""The in-memory pipeline hashes while other work runs (issue 9): the float model's digest
while the model is quantized, the artifact's sha256 while the served check runs. The numbers
are those of the same computations run one after the other, and a failing check leaves no
hashing thread behind."""

from __future__ import annotations

import threading

import pytest

from mono_quant.errors import MonoQuantError
from mono_quant.io import hashing
from mono_quant.io.hashing import sha256_path, size_path, state_dict_digest
from mono_quant.pipeline import JobSpec, parse_model_source, run_pipeline
from mono_quant.pipeline import served as served_module

SOURCE = "factory:mono_quant.demo_models:mlp?hidden=32"


def _hash_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("mono-quant-hash")]


def test_the_artifact_is_hashed_while_the_served_check_runs(tmp_path, monkeypatch):
    hashed_in: list[str] = []
    hashed = threading.Event()
    real_sha, real_check = hashing.sha256_path, served_module.served_check

    def sha(path):
        hashed_in.append(threading.current_thread().name)
        hashed.set()
        return real_sha(path)

    def check(*args, **kwargs):
        outcome = real_check(*args, **kwargs)
        # still inside the check: the hash has started without waiting for it
        assert hashed.wait(30), "the artifact was not hashed during the served check"
        return outcome

    monkeypatch.setattr(hashing, "sha256_path", sha)
    monkeypatch.setattr(served_module, "served_check", check)
    spec = JobSpec(parse_model_source(SOURCE))
    out = tmp_path / "a.safetensors"
    result = run_pipeline(spec, out)
    assert hashed_in and hashed_in[0] != threading.main_thread().name
    assert (result.sha256, result.size_bytes) == (real_sha(out), size_path(out))
    assert result.model_digest == state_dict_digest(spec.model.load())
    assert result.info.metrics["reload_check"].startswith("ok (load_quantized)")
    assert _hash_threads() == []


def test_a_failing_served_check_raises_and_leaves_no_hashing_thread(tmp_path, monkeypatch):
    def failing(*_args, **_kwargs):
        raise MonoQuantError("outputs differ")

    monkeypatch.setattr(served_module, "served_check", failing)
    with pytest.raises(MonoQuantError, match="outputs differ"):
        run_pipeline(JobSpec(parse_model_source(SOURCE)), tmp_path / "a.safetensors")
    assert _hash_threads() == []


def test_the_digest_is_the_float_models_before_the_served_check_rebuilds_it(tmp_path):
    spec = JobSpec(parse_model_source(SOURCE))
    result = run_pipeline(spec, tmp_path / "a.safetensors")
    assert result.model_digest == state_dict_digest(spec.model.load())
    assert result.sha256 == sha256_path(tmp_path / "a.safetensors")
