"""Activations offloaded to disk: the sequential pipeline's cache goes to the job's work
folder beyond ``activation_offload_bytes`` (the service's MONO_QUANT_ACTIVATION_OFFLOAD_BYTES),
gives the same artifact as a cache in memory, and resumes from its files."""

from __future__ import annotations

import json

import pytest
import torch

from mono_quant.config import DEFAULT_ACTIVATION_OFFLOAD_BYTES, Settings
from mono_quant.errors import BadConfigError
from mono_quant.io.formats import load_model
from mono_quant.pipeline import run_pipeline
from mono_quant.pipeline.activations import DEFAULT_OFFLOAD_BYTES, ActivationCache, item_nbytes
from tests.io.hf_fixture import CALIBRATION_TEXT
from tests.pipeline.test_sequential import make_folder, spec_of


def test_cache_stays_in_memory_up_to_its_limit_then_goes_to_disk(tmp_path):
    batches = [{"h": torch.full((2, 8), float(i)), "mask": torch.ones(2, 8, dtype=torch.bool)}
               for i in range(5)]
    size = item_nbytes(batches[0])
    assert size == 2 * 8 * 4 + 2 * 8
    cache = ActivationCache(tmp_path / "acts", limit=2 * size)
    for b in batches[:2]:
        cache.append(b)
    assert not cache.offloaded and not (tmp_path / "acts").exists()  # exactly at the limit
    for b in batches[2:]:
        cache.append(b)
    assert cache.offloaded and cache.nbytes == 5 * size
    assert sorted(p.name for p in (tmp_path / "acts").iterdir()) == [
        f"{i:05d}.pt" for i in range(5)]
    with pytest.raises(ValueError, match="offloaded"):
        cache.in_memory()
    again = ActivationCache.on_disk(tmp_path / "acts")  # what a retried attempt reopens
    for got in (list(cache), list(again), [cache[-1]], cache[1:3]):
        want = batches[-1:] if len(got) == 1 else batches[1:3] if len(got) == 2 else batches
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert sorted(g) == sorted(w) and all(torch.equal(g[k], w[k]) for k in w)
    with pytest.raises(IndexError):
        cache[5]
    never = ActivationCache(tmp_path / "never", limit=None)
    never.append(batches[0])
    assert not never.offloaded and never.in_memory() == [batches[0]]


def test_the_service_setting(monkeypatch):
    assert DEFAULT_ACTIVATION_OFFLOAD_BYTES == DEFAULT_OFFLOAD_BYTES  # one value, two layers
    assert Settings.from_env({}).activation_offload_bytes == DEFAULT_OFFLOAD_BYTES
    env = {"MONO_QUANT_ACTIVATION_OFFLOAD_BYTES": "0"}
    assert Settings.from_env(env).activation_offload_bytes == 0
    with pytest.raises(BadConfigError, match="ACTIVATION_OFFLOAD_BYTES=-1: expected 0 or more"):
        Settings.from_env({"MONO_QUANT_ACTIVATION_OFFLOAD_BYTES": "-1"})


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("offload")
    folder = make_folder(root, "llama-untied", num_hidden_layers=3)
    (root / "cal.txt").write_text(CALIBRATION_TEXT * 2)
    spec = spec_of(folder, root / "cal.txt", "sequential", mode="static", smoothquant=0.5)
    reference = run_pipeline(spec, root / "memory.safetensors")
    return spec, reference


class Stopped(Exception):
    pass


@pytest.mark.slow
def test_offloaded_run_equals_the_in_memory_cache_and_resumes_from_disk(job, tmp_path):
    spec, reference = job
    assert reference.info.metrics["sequential"]["activations"] == "memory"
    cache_bytes = reference.info.metrics["sequential"]["activation_cache_bytes"]
    assert cache_bytes > 0
    out, work = tmp_path / "q.safetensors", tmp_path / "q.safetensors.work"
    seen = {}

    def stop_after_2(stage: str, **extra) -> None:
        if stage == "quantizing block":
            seen[extra["block"]] = sorted(p.name for p in work.iterdir())
            if extra["block"] == 2:
                raise Stopped

    with pytest.raises(Stopped):  # a limit below one block's cache: on disk
        run_pipeline(spec, out, on_stage=stop_after_2, activation_offload_bytes=cache_bytes - 1)
    assert seen[1] == ["acts-00001", "parts", "state.json"]  # block 1's inputs: a folder
    state = json.loads((work / "state.json").read_text())
    assert state["blocks_done"] == 2 and state["activations"] == "acts-00002"
    batches = spec.calibration.load(spec.model, spec.samples, None)
    assert len(list((work / "acts-00002").glob("*.pt"))) == len(batches) > 1  # one per batch
    assert not (work / "acts-00001").exists()  # the previous block's inputs are gone
    stages = []
    result = run_pipeline(spec, out, on_stage=lambda s, **e: stages.append((s, e)),
                          activation_offload_bytes=0)
    assert result.info.metrics["sequential"]["resumed_at_block"] == 2
    assert result.info.metrics["sequential"]["activations"] == "disk"
    a, b = load_model(reference.path), load_model(out)
    assert sorted(a) == sorted(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert not work.exists()  # the offloaded caches went with the work folder


@pytest.mark.slow
def test_always_offloaded_run_from_the_start_equals_the_reference(job, tmp_path):
    spec, reference = job
    result = run_pipeline(spec, tmp_path / "q.safetensors", activation_offload_bytes=0)
    assert result.info.metrics["sequential"]["activations"] == "disk"
    a, b = load_model(reference.path), load_model(result.path)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.safetensors"]


@pytest.mark.slow
def test_out_of_memory_in_a_block_runs_it_again_with_batches_halved(job, tmp_path,
                                                                   monkeypatch):
    """MOCK: no GPU here, so block 1's propagation raises torch.OutOfMemoryError once, after
    its layers were smoothed and swapped for int8 ones (what a CUDA OOM there would leave).
    The block is run again from its float weights with every batch halved: its weights equal
    the reference's; its activation scales come from the same samples (min/max observers)
    and are equal up to float rounding of the smaller batches' matmuls."""
    from mono_quant.pipeline import sequential

    spec, reference = job
    real, calls = sequential._propagate, []

    def propagate(host, items, device, stats, out):
        calls.append((host.prefix, len(items)))
        if host.prefix.endswith(".1") and len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (mock)")
        return real(host, items, device, stats, out)

    monkeypatch.setattr(sequential, "_propagate", propagate)
    stages = []
    result = run_pipeline(spec, tmp_path / "q.safetensors",
                          on_stage=lambda s, **e: stages.append((s, e)),
                          activation_offload_bytes=0)  # the halved cache goes to disk too
    n = calls[0][1]
    assert calls == [("model.layers.0", n), ("model.layers.1", n), ("model.layers.1", 2 * n),
                     ("model.layers.2", 2 * n)]
    assert ("quantizing (smaller calibration batches)", {"block": 2, "blocks": 3}) in stages
    a, b = load_model(reference.path), load_model(result.path)
    assert sorted(a) == sorted(b)
    for k in a:
        if k.endswith(("input_scale", "input_zero_point")) and ".layers.0." not in k:
            assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-4), k
        else:
            assert torch.equal(a[k], b[k]), k
    m = result.info.metrics
    assert m["smoothquant"]["strengths"] == reference.info.metrics["smoothquant"]["strengths"]
    assert not (tmp_path / "q.safetensors.work").exists()
