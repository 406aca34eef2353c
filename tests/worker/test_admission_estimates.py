"""Admission's numbers, each against a value worked out by hand: the sizes read from a
checkpoint's headers, the estimate of each strategy, the host's memory, the verdicts at their
boundaries and the sentences they show."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mono_quant.errors import BadInputError
from mono_quant.pipeline import JobSpec, parse_model_source
from mono_quant.worker import admission as adm

GiB, MiB = 1 << 30, 1 << 20


@pytest.mark.parametrize(("n", "text"), [
    (GiB, "1.00 GiB"), (3 * GiB + GiB // 2, "3.50 GiB"), (GiB - MiB, "1023.0 MiB"),
    (300 * MiB, "300.0 MiB"), (0, "0.0 MiB"),
])
def test_gib(n, text):
    assert adm.gib(n) == text


def _checkpoint(folder, config: object = None):
    folder.mkdir()
    save_file({
        "model.embed_tokens.weight": torch.zeros(10, 4, dtype=torch.float16),  # 40 el.
        "model.layers.0.q.weight": torch.zeros(4, 4, dtype=torch.bfloat16),  # 16
        "model.layers.0.norm.weight": torch.zeros(4),  # 4, 1-D: no int8 copy
        "model.layers.1.mlp.weight": torch.zeros(8, 8, dtype=torch.float64),  # 64
        "model.layers.1.idx": torch.zeros(3, dtype=torch.int64),  # not float: as stored
        "model.layers.1.mask": torch.zeros(2, 5, dtype=torch.uint8),  # 2-D, not float
        "lm_head.weight": torch.zeros(12, 4),  # 48
    }, folder / "model.safetensors")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_summary_by_hand(tmp_path):
    s = adm.summarize_checkpoint(_checkpoint(
        tmp_path / "m", {"hidden_size": 4, "max_position_embeddings": 64}))
    # loaded as float32: 4 B per float element; others as stored (24 + 10 bytes)
    assert s.float_bytes == 4 * (40 + 16 + 4 + 64 + 48) + 24 + 10
    assert s.int8_bytes == 40 + 16 + 64 + 48
    # layers.1: 64 x 4 + 24 + 10 = 290 (its largest tensor alone is 256; lm_head 192)
    assert s.largest_block_bytes == 290
    assert (s.hidden_size, s.max_positions) == (4, 64)
    # whole bytes: the ledger stores them and the messages format them
    assert [type(v) for v in (s.float_bytes, s.int8_bytes, s.largest_block_bytes)] == [int] * 3


def test_summary_of_a_checkpoint_without_tensors(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({}, folder / "model.safetensors")
    assert adm.summarize_checkpoint(folder) == adm.CheckpointSummary(0, 0, 0)


@pytest.mark.parametrize(("config", "hidden", "positions"), [
    ({"d_model": 8, "max_position_embeddings": 0}, 8, None),
    ({"hidden_size": True, "max_position_embeddings": -5}, None, None),
    ({"hidden_size": 2.0, "max_position_embeddings": "64"}, None, None),
    ({"hidden_size": 0, "d_model": 16}, 16, None),
    ({"hidden_size": 1, "max_position_embeddings": 1}, 1, 1),  # the smallest kept
    (["hidden_size", 4], None, None),
    (None, None, None),  # no config.json
])
def test_summary_config_fields(tmp_path, config, hidden, positions):
    s = adm.summarize_checkpoint(_checkpoint(tmp_path / "m", config))
    assert (s.hidden_size, s.max_positions) == (hidden, positions)


def test_summary_of_an_unreadable_config(tmp_path):
    folder = _checkpoint(tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    assert adm.summarize_checkpoint(folder).hidden_size is None


@pytest.mark.parametrize("prefix", ["transformer.h.3", "encoder.layer.0", "blocks.11",
                                    "model.block.2"])
def test_block_names_group_their_tensors(tmp_path, prefix):
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({f"{prefix}.a": torch.zeros(10), f"{prefix}.b": torch.zeros(10),
               "head": torch.zeros(15)}, folder / "model.safetensors")
    assert adm.summarize_checkpoint(folder).largest_block_bytes == 80  # not head's 60


S = adm.CheckpointSummary(float_bytes=5 * GiB, int8_bytes=GiB, largest_block_bytes=100 * MiB,
                          hidden_size=1024, max_positions=4096)


def test_in_memory_activations_are_a_tenth_or_the_minimum():
    assert adm.estimate_from_summary(S, "in_memory", None).parts == {
        "float model": 5 * GiB, "int8 copy": GiB, "activations": GiB // 2}
    small = adm.CheckpointSummary(float_bytes=10 * 256 * MiB - 10, int8_bytes=0,
                                  largest_block_bytes=0)
    assert adm.estimate_from_summary(small, "in_memory", None).parts["activations"] == 256 * MiB
    edge = adm.CheckpointSummary(float_bytes=10 * 256 * MiB + 10, int8_bytes=0,
                                 largest_block_bytes=0)
    assert adm.estimate_from_summary(edge, "in_memory", None).parts["activations"] == \
        256 * MiB + 1
    whole = adm.CheckpointSummary(float_bytes=10 * 256 * MiB + 19, int8_bytes=0,
                                  largest_block_bytes=0)  # a tenth rounds down to bytes
    got = adm.estimate_from_summary(whole, "in_memory", None).parts["activations"]
    assert (got, type(got)) == (256 * MiB + 1, int)


@pytest.mark.parametrize(("summary", "samples", "cache"), [
    (S, 16, 16 * 2048 * 1024 * 8),  # max_positions above the cap: 2048
    (S, None, 128 * 2048 * 1024 * 8),  # samples not said: 128
    (adm.CheckpointSummary(1, 1, 7, hidden_size=64, max_positions=100), 3, 3 * 100 * 64 * 8),
    (adm.CheckpointSummary(1, 1, 7, hidden_size=64), 3, 3 * 2048 * 64 * 8),
    (adm.CheckpointSummary(1, 1, 7), 3, 0),  # no hidden size known
])
def test_sequential_estimate(summary, samples, cache):
    est = adm.estimate_from_summary(summary, "sequential", samples)
    assert est.strategy == "sequential"
    assert est.parts == {"largest block x2": 2 * summary.largest_block_bytes,
                         "activation cache": cache}


def test_auto_takes_in_memory_up_to_the_total():
    in_memory = 5 * GiB + GiB + GiB // 2
    assert adm.estimate_from_summary(S, "auto", 1, total=in_memory).strategy == "in_memory"
    assert adm.estimate_from_summary(S, "auto", 1, total=in_memory - 1).strategy == "sequential"
    assert adm.estimate_from_summary(S, "auto", 1).strategy == "in_memory"  # total unknown


def test_an_unknown_strategy_lists_the_known():
    with pytest.raises(BadInputError) as err:
        adm.estimate_from_summary(S, "magic", None)
    assert str(err.value) == ("admission: no estimate for pipeline strategy 'magic'; known: "
                              "in_memory, sequential")


def test_estimate_memory_of_a_spec(tmp_path):
    folder = _checkpoint(tmp_path / "m", {"hidden_size": 4, "max_position_embeddings": 64})
    model = parse_model_source(f"hf:{folder}")
    float_bytes = 4 * (40 + 16 + 4 + 64 + 48) + 24 + 10
    est = adm.estimate_memory(JobSpec(model, pipeline="sequential"))
    assert est.parts == {"largest block x2": 580, "activation cache": 128 * 64 * 4 * 8}
    est = adm.estimate_memory(JobSpec(model, pipeline="auto"), total=1)  # fits nothing
    assert est.strategy == "sequential"
    est = adm.estimate_memory(JobSpec(model), total=GiB)
    assert est.strategy == "in_memory" and est.parts["float model"] == float_bytes
    assert adm.estimate_memory(JobSpec(model, stream=True)) is None
    assert adm.estimate_memory(JobSpec(parse_model_source(
        "factory:mono_quant.demo_models:mlp"))) is None


def test_estimate_bytes_and_description():
    est = adm.Estimate("sequential", {"a": GiB, "b": 512 * MiB})
    assert est.bytes == GiB + 512 * MiB
    assert est.describe() == "1.50 GiB (sequential: a 1.00 GiB + b 512.0 MiB)"
    assert adm.Estimate("x").bytes == 0


def test_meminfo_parses_kilobytes(tmp_path):
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       16 kB\nMemAvailable:    8 kB\nHugePages_Total:       0\n"
                    "HugePages_Free:        3\nOdd: x kB\nEmpty:\n")
    assert adm._meminfo(str(path)) == {"MemTotal": 16384, "MemAvailable": 8192,
                                       "HugePages_Total": 0, "HugePages_Free": 3}  # no unit
    assert adm._meminfo(str(tmp_path / "missing")) == {}


def test_host_memory():
    with open("/proc/meminfo", encoding="ascii") as f:  # the independent reading
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    mem = adm.device_memory("cpu")
    assert (mem.key, mem.name, mem.total) == ("cpu", "host memory (MemAvailable)", total)
    assert 0 < mem.free <= total


def test_gpu_memory(monkeypatch):
    """No GPU here: the two CUDA calls admission makes are answered by stand-ins."""
    info = {"cuda:0": (GiB, 2 * GiB), "cuda:1": (3 * GiB, 8 * GiB)}  # per device asked
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: info[device])
    monkeypatch.setattr(torch.cuda, "get_device_name",
                        lambda device: {"cuda:0": "NVIDIA Y", "cuda:1": "NVIDIA X"}[device])
    assert adm.device_memory("cuda:1", "3") == adm.DeviceMemory(
        "gpu3", "NVIDIA X (cuda:1, GPU 3)", 8 * GiB, 3 * GiB)
    assert adm.device_memory("cuda:0") == adm.DeviceMemory(
        "gpu0", "NVIDIA Y (cuda:0, GPU ?)", 2 * GiB, GiB)


EST = adm.Estimate("in_memory", {"float model": 6 * GiB, "int8 copy": 2 * GiB})  # 8 GiB
DEV = adm.DeviceMemory("gpu0", "GPU-A", total=8 * GiB, free=8 * GiB)


def test_a_job_of_exactly_the_total_is_admitted():
    d = adm.decide(EST, DEV, reserved=0)
    assert d == adm.Decision(adm.Verdict.ADMIT, 8 * GiB, 8 * GiB, (
        "admitted: 8.00 GiB (in_memory: float model 6.00 GiB + int8 copy 2.00 GiB) of 8.00 "
        "GiB on GPU-A"))


def test_one_byte_over_the_total_never_fits():
    dev = adm.DeviceMemory("gpu0", "GPU-A", total=8 * GiB - 1, free=MiB)
    d = adm.decide(EST, dev, reserved=0)
    assert (d.verdict, d.needed, d.available) == (adm.Verdict.NEVER, 8 * GiB, 8 * GiB - 1)
    assert d.reason == (
        "the job needs about 8.00 GiB (in_memory: float model 6.00 GiB + int8 copy 2.00 GiB) "
        "but GPU-A has 8.00 GiB in all: it fits no device of this queue (use a larger device "
        "class, pipeline: sequential, or fewer calibration samples)")


@pytest.mark.parametrize(("free", "reserved", "available"), [
    (8 * GiB - 1, 0, 8 * GiB - 1),  # free now is the bound
    (8 * GiB, 1, 8 * GiB - 1),  # the others' reservations are
    (8 * GiB, 9 * GiB, 0),  # reserved past the total: nothing, not a negative number
])
def test_one_byte_short_waits(free, reserved, available):
    dev = adm.DeviceMemory("gpu0", "GPU-A", total=8 * GiB, free=free)
    d = adm.decide(EST, dev, reserved=reserved)
    assert (d.verdict, d.needed, d.available) == (adm.Verdict.WAIT, 8 * GiB, available)


def test_a_waiting_job_shows_the_numbers():
    small = adm.Estimate("in_memory", {"float model": MiB})
    dev = adm.DeviceMemory("gpu0", "GPU-A", total=8 * GiB, free=GiB // 2)
    d = adm.decide(small, dev, reserved=8 * GiB)
    assert d.reason == (
        "the job needs about 1.0 MiB (in_memory: float model 1.0 MiB); GPU-A has 0.0 MiB "
        "available now (free 512.0 MiB, reserved by running jobs 8.00 GiB, total 8.00 GiB)")


def test_a_cache_of_exactly_the_offload_limit_stays_in_memory():
    """A cache is offloaded only past the limit (ActivationCache: ``nbytes > limit``)."""
    sample = 2048 * 1024 * 4  # S: 4 MiB per sample
    at = adm.estimate_from_summary(S, "sequential", adm.Context(samples=16, offload_bytes=
                                                                16 * sample)).parts
    assert at["activation cache"] == 2 * 16 * sample
    over = adm.estimate_from_summary(S, "sequential", adm.Context(samples=16, offload_bytes=
                                                                  16 * sample - 1)).parts
    assert over["activation cache (rest on disk)"] == 2 * (16 * sample - 1)


def test_estimate_memory_reads_samples_batch_device_and_offload(tmp_path):
    """What the spec says (samples, the calibration source's batch_size) and what the worker
    says (device, offload limit) each reach the estimate."""
    from mono_quant.pipeline.sources import parse_calibration_source

    folder = _checkpoint(tmp_path / "m", {"hidden_size": 4, "max_position_embeddings": 64})
    (tmp_path / "cal.txt").write_text("some text\n")
    spec = JobSpec(parse_model_source(f"hf:{folder}"), pipeline="sequential", samples=16,
                   calibration=parse_calibration_source(f"text:{tmp_path / 'cal.txt'}"
                                                        "?batch_size=2"))
    sample = 64 * 4 * 4
    block = {"largest block x2": 580}
    assert adm.estimate_memory(spec, offload_bytes=None).parts == {
        **block, "activation cache": 2 * 16 * sample}
    assert adm.estimate_memory(spec, offload_bytes=0).parts == {
        **block, "activation cache (rest on disk)": 2 * 2 * sample}
    assert adm.estimate_memory(spec, device="cuda:0").parts == {
        **block, "activations (one batch in and out)": 2 * 2 * sample}
    assert adm.estimate_memory(spec).parts == {  # the default limit (1 GiB) keeps it all
        **block, "activation cache": 2 * 16 * sample}


@pytest.mark.parametrize("pipeline", [None, "absent"])
def test_a_spec_without_a_pipeline_is_estimated_in_memory(tmp_path, pipeline):
    """``estimate_memory`` takes any spec-like object: without a ``pipeline`` (or with
    None) its estimate is in_memory's."""
    from types import SimpleNamespace

    folder = _checkpoint(tmp_path / "m", {"hidden_size": 4})
    spec = SimpleNamespace(model=parse_model_source(f"hf:{folder}"), stream=False, samples=None)
    if pipeline is None:
        spec.pipeline = None
    assert adm.estimate_memory(spec).strategy == "in_memory"


def test_a_host_without_memavailable_is_not_compared_with(monkeypatch):
    """Kernels before 3.14 have no MemAvailable (this host has): ``_meminfo`` answers as such a
    host's /proc/meminfo would. Without both numbers admission knows nothing (None)."""
    for info in ({"MemTotal": 16384}, {"MemAvailable": 8192}, {}):
        monkeypatch.setattr(adm, "_meminfo", lambda info=info: info)
        assert adm.device_memory("cpu") is None


def test_register_strategy_adds_an_estimate(monkeypatch):
    monkeypatch.setattr(adm, "_STRATEGIES", dict(adm._STRATEGIES))  # this test's registry

    def tiny(summary, ctx):
        return {"model": summary.float_bytes, "samples": ctx.samples}

    assert adm.register_strategy("tiny")(tiny) is tiny
    assert adm.estimate_from_summary(S, "tiny", 3).parts == {"model": 5 * GiB, "samples": 3}
