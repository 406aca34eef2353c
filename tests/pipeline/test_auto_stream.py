"""An unset ``stream`` streams a job only where the artifact is the in-memory one, byte for
byte: the proof behind :data:`~mono_quant.pipeline.auto_stream.FAMILIES`, family by family,
and the jobs it must leave in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mono_quant.errors import BadConfigError
from mono_quant.io.hashing import sha256_path, state_dict_digest
from mono_quant.pipeline import JobSpec, parse_calibration_source, parse_model_source
from mono_quant.pipeline.auto_stream import FAMILIES, auto_problems, stream_plan
from mono_quant.pipeline.run import run_pipeline
from mono_quant.quant.qconfig import QuantConfig
from tests.pipeline.archs import ARCHS, Arch

transformers = pytest.importorskip("transformers", reason="hf: sources need the 'hf' extra")

_LM = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
_BY_NAME = {a.name: a for a in ARCHS}
#: Every verified family, tied and untied where the family is used both ways.
FAMILY_ARCHS = [
    _BY_NAME["llama-tied"], _BY_NAME["llama-untied"], _BY_NAME["mistral"], _BY_NAME["qwen2"],
    Arch("qwen2-untied", "Qwen2ForCausalLM", "Qwen2Config", {**_LM, "tie_word_embeddings": False}),
    _BY_NAME["gpt2"], _BY_NAME["phi3"],
    Arch("gemma", "GemmaForCausalLM", "GemmaConfig", {**_LM, "head_dim": 16}, tied=True),
]
CONFIGS = {
    "per-channel": QuantConfig(),
    "per-tensor-asym": QuantConfig(granularity="per_tensor", scheme="asymmetric"),
    "per-group-patterns": QuantConfig(granularity="per_group", group_size=16,
                                      include=["re:.*(mlp|attn).*"],
                                      exclude=["*.0.*", "lm_head"]),
    "class-names": QuantConfig(include=["Conv1D", "Linear"], exclude=["Linear"]),
}


def _save(arch: Arch, folder: Path, dtype: torch.dtype = torch.float32, **save) -> torch.nn.Module:
    model = arch.build().to(dtype)
    model.save_pretrained(folder, **save)
    return model


def _both(folder: Path, tmp_path: Path, config: QuantConfig, **spec):
    """(auto result, in-memory result) of one job."""
    model = parse_model_source(f"hf:{folder}")
    auto = run_pipeline(JobSpec(model, config, **spec), tmp_path / "auto.safetensors")
    never = run_pipeline(JobSpec(model, config, stream=False, **spec),
                         tmp_path / "never.safetensors")
    return auto, never


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
@pytest.mark.parametrize("arch", FAMILY_ARCHS, ids=[a.name for a in FAMILY_ARCHS])
def test_auto_streams_verified_families_to_the_in_memory_file(tmp_path, arch, config):
    model = _save(arch, tmp_path / "model")
    spec = JobSpec(parse_model_source(f"hf:{tmp_path / 'model'}"), config)
    plan = stream_plan(spec)
    assert plan is not None and plan.auto, auto_problems(spec)
    try:
        auto, never = _both(tmp_path / "model", tmp_path, config)
    except BadConfigError as e:  # nothing selected: both paths say so
        assert "no layers selected" in str(e)
        return
    assert "streamed (auto)" in auto.info.metrics["reload_check"]
    assert "served_check" not in auto.info.metrics and "served_check" in never.info.metrics
    # the streamed hash is taken while the data moves under the final header: the file's
    assert auto.sha256 == never.sha256 == sha256_path(auto.path)
    assert auto.size_bytes == never.size_bytes == auto.path.stat().st_size
    assert auto.path.read_bytes() == never.path.read_bytes()
    assert auto.model_digest == never.model_digest == state_dict_digest(model)


@pytest.mark.parametrize("layout", ["sharded", "bfloat16"])
def test_sharded_and_half_precision_checkpoints(tmp_path, layout):
    arch = _BY_NAME["qwen2"]
    if layout == "sharded":
        model = _save(arch, tmp_path / "model", max_shard_size="40KB")
        assert (tmp_path / "model" / "model.safetensors.index.json").is_file()
    else:
        model = _save(arch, tmp_path / "model", torch.bfloat16)
    auto, never = _both(tmp_path / "model", tmp_path, QuantConfig())
    assert "streamed (auto)" in auto.info.metrics["reload_check"]
    assert auto.sha256 == never.sha256
    assert auto.model_digest == never.model_digest == state_dict_digest(model)


def test_the_family_table_matches_the_installed_transformers():
    for model_type, family in FAMILIES.items():
        config_class = transformers.CONFIG_MAPPING[model_type]
        assert bool(config_class().tie_word_embeddings) is family.tied_default, model_type
        model_class = getattr(transformers, family.architecture)
        assert model_class.config_class is config_class
    for arch in FAMILY_ARCHS:
        model = arch.build()
        family = FAMILIES[model.config.model_type]
        embedding = model.get_input_embeddings()
        names = [n for n, m in model.named_modules() if m is embedding]
        assert [f"{n}.weight" for n in names] == [family.embedding], arch.name
        assert all(n.startswith(family.prefixes) for n in model.state_dict()), arch.name


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llama") / "model"
    _save(_BY_NAME["llama-untied"], folder)
    return folder


@pytest.mark.parametrize(("change", "problem"), [
    ({"config": QuantConfig(mode="static"), "calibration": "factory:m:c"}, "weight-only"),
    ({"format": "pt"}, "one .safetensors file"),
    ({"max_shard_size": 4096}, "one .safetensors file"),
    ({"pipeline": "in_memory"}, "pipeline 'in_memory' was asked for"),
    ({"device": "cuda:0"}, "the streaming kernels run on the CPU"),
], ids=["calibration", "pt", "shards", "in-memory", "gpu"])
def test_jobs_auto_leaves_in_memory(llama, change, problem):
    change = dict(change)
    device = change.pop("device", "cpu")
    cal = change.pop("calibration", None)
    model = parse_model_source(f"hf:{llama}")
    spec = JobSpec(model, calibration=cal and parse_calibration_source(cal), **change)
    problems = auto_problems(spec, device)
    assert any(problem in p for p in problems), problems
    assert stream_plan(spec, device) is None


@pytest.mark.parametrize("edit", ["unknown-family", "dtype", "renamed-keys", "tie-mismatch"])
def test_checkpoints_auto_leaves_in_memory(tmp_path, edit):
    arch = _BY_NAME["llama-untied"]
    folder = tmp_path / "model"
    if edit == "unknown-family":
        _save(_BY_NAME["opt"], folder)
    elif edit == "renamed-keys":  # a base-model checkpoint under a causal-LM config
        model = arch.build()
        model.model.save_pretrained(folder)
        _edit_config(folder, architectures=["LlamaForCausalLM"])
    else:
        _save(arch, folder)
        _edit_config(folder, **({"dtype": "float16"} if edit == "dtype"
                                else {"tie_word_embeddings": True}))
    spec = JobSpec(parse_model_source(f"hf:{folder}"))
    assert auto_problems(spec) and stream_plan(spec) is None


def test_a_tied_head_named_by_include_is_quantized_in_memory(tmp_path):
    _save(_BY_NAME["llama-tied"], tmp_path / "model")
    config = QuantConfig(include=["lm_head", "Linear"])
    spec = JobSpec(parse_model_source(f"hf:{tmp_path / 'model'}"), config)
    assert any("unties lm_head" in p for p in auto_problems(spec))
    result = run_pipeline(spec, tmp_path / "q.safetensors")
    assert "lm_head" in result.info.selected_layers and "served_check" in result.info.metrics


def test_stream_is_three_valued_in_payloads_and_keys(llama):
    model = parse_model_source(f"hf:{llama}")
    auto, never, always = (JobSpec(model, stream=s) for s in (None, False, True))
    assert [JobSpec.from_payload(s.to_payload()).stream for s in (auto, never, always)] == [
        None, False, True]
    v2 = {**never.to_payload(), "version": 2}  # before version 3, false meant "not asked"
    assert JobSpec.from_payload(v2).stream is None
    # auto and false write the same artifact: one key, the key of jobs from before auto
    assert auto.idempotency_key == never.idempotency_key != always.idempotency_key
    assert auto.idempotency_key == JobSpec.from_payload(v2).idempotency_key
    with pytest.raises(BadConfigError, match="expected true, false or null"):
        JobSpec(model, stream="yes")  # type: ignore[arg-type]
