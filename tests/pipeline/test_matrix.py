"""The architecture matrix: tiny random checkpoints of real transformers classes and a
torchvision ResNet, quantized in every mode (weight-only, static and dynamic W8A8) to every
format their family supports, loaded the way each format is served (transformers for
compressed-tensors, load_quantized otherwise); a format that cannot hold the family's layers is
refused before anything is written.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from mono_quant import QuantConfig, load_quantized, quantize_model, save_model
from mono_quant.errors import BadConfigError
from mono_quant.pipeline.served import served_check
from mono_quant.quant.calibration import call_model
from mono_quant.quant.metrics import first_tensor
from mono_quant.quant.ties import output_embedding_name, shared_weights
from tests.pipeline.archs import ARCHS, Arch, import_torchvision

pytest.importorskip("transformers", reason="transformers is not installed (the 'hf' extra)")
pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed")

pytestmark = pytest.mark.slow

CT = "compressed-tensors"
CASES = [
    pytest.param(arch, mode, fmt, id=f"{arch.name}-{mode}-{fmt}")
    for arch in ARCHS
    for mode in arch.modes
    for fmt in arch.formats
    if not (mode != "weight_only" and fmt == "pt")  # .pt holds what safetensors holds
]
REFUSED = [pytest.param(arch, fmt, id=f"{arch.name}-{fmt}")
           for arch in ARCHS for fmt in arch.refused_formats]


def _logits(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return first_tensor(call_model(model, batch)).float()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _expected_ratio(model: torch.nn.Module, selected: list[str]) -> float:
    """float bytes / quantized bytes, from the float model alone: each selected layer's
    float32 weight becomes int8 plus a float32 scale and an int8 zero point per output
    channel; tied tensors count once."""
    distinct = {t.data_ptr(): t for t in model.state_dict().values()}
    fp = sum(t.numel() * t.element_size() for t in distinct.values())
    q = fp
    for name in selected:
        w = model.get_submodule(name).weight
        out = w.shape[1] if type(model.get_submodule(name)).__name__ == "Conv1D" else w.shape[0]
        q += -w.numel() * 4 + w.numel() + out * (4 + 1)
    return fp / q


@pytest.mark.parametrize(("arch", "mode", "fmt"), CASES)
def test_quantized_model_loads_where_it_is_served(tmp_path, arch: Arch, mode: str, fmt: str):
    model = arch.build()
    batch = arch.batch(model)
    exclude = list(arch.exclude)
    qmodel, info = quantize_model(model, QuantConfig(mode=mode, exclude=exclude), [batch],
                                  progress=False)
    head = output_embedding_name(model)
    if arch.tied:  # the default keeps a tied head in float, and tied
        assert head is not None and head not in info.selected_layers
        assert info.metrics["tied_weights"] == shared_weights(model)
    if arch.conv1d:
        assert {n.rpartition(".")[2] for n in info.selected_layers} == {
            "c_attn", "c_proj", "c_fc"}
    path = save_model(qmodel, tmp_path / ("m" if fmt == CT else f"m.{fmt}"), info, format=fmt)

    served_check(path, fmt, arch.build(seed=1), qmodel, info, batch)
    assert info.metrics["served_check"] == ("transformers" if fmt == CT else "load_quantized")
    if fmt == CT:
        served = type(model).from_pretrained(path, local_files_only=True).eval()
    else:
        served = load_quantized(path, arch.build(seed=2)).eval()

    ref, out = _logits(model, batch), _logits(served, batch)
    assert _cosine(ref, out) >= (0.999 if mode == "weight_only" else 0.98), _cosine(ref, out)
    assert _cosine(_logits(qmodel, batch), out) >= 0.9999
    if arch.tied:
        emb, head_w = served.get_input_embeddings().weight, served.get_output_embeddings().weight
        assert emb is head_w or emb.data_ptr() == head_w.data_ptr()
        assert torch.equal(emb, model.get_input_embeddings().weight)
    if fmt != "pt":
        stored = path / "model.safetensors" if fmt == CT else path
        with safe_open(stored, "pt") as f:
            names = set(f.keys())
        for group in shared_weights(model):  # a tie is stored once, under its first name
            assert group[0] in names and not names & set(group[1:]), group
    if mode == "weight_only":
        assert info.metrics["compression_ratio"] == pytest.approx(
            _expected_ratio(model, info.selected_layers), rel=1e-12)


@pytest.mark.parametrize(("arch", "fmt"), REFUSED)
def test_a_format_that_cannot_hold_the_family_is_refused_before_writing(tmp_path, arch, fmt):
    model = arch.build()
    qmodel, info = quantize_model(model, QuantConfig(), [arch.batch(model)], progress=False)
    with pytest.raises(BadConfigError, match=r"layer 'conv1' has a 4-D weight \(a Conv2d\?\): "
                                             r"exclude it \(e.g. --exclude Conv2d\)"):
        save_model(qmodel, tmp_path / "m", info, format=fmt)
    assert not any(tmp_path.iterdir())


def test_a_torchvision_factory_runs_once_its_package_is_allowed(tmp_path):
    """``factory:torchvision.models:resnet18`` is code like any factory: the default allow-list
    refuses it, ``torchvision.models.*`` lets it run (docs/models.md)."""
    from mono_quant.pipeline.allowlist import FactoryAllowList
    from mono_quant.pipeline.run import run_pipeline
    from mono_quant.pipeline.sources import parse_model_source
    from mono_quant.pipeline.spec import JobSpec

    import_torchvision()  # tests/pipeline/archs.py: this machine's torchvision build
    text = "factory:torchvision.models:resnet18?num_classes=10"
    with pytest.raises(BadConfigError, match=r"factory module 'torchvision.models' is not "
                                             r"allowed by MONO_QUANT_ALLOWED_FACTORIES"):
        parse_model_source(text, factories=FactoryAllowList.parse("mono_quant.*"))
    allow = FactoryAllowList.parse("mono_quant.*,torchvision.models.*")
    spec = JobSpec(model=parse_model_source(text, factories=allow))
    result = run_pipeline(spec, tmp_path / "resnet18.safetensors", factories=allow)
    layers = result.info.selected_layers
    assert len(layers) == 21 and "fc" in layers  # 20 convs + fc, in the canonical order:
    assert layers[:3] == ["conv1", "fc", "layer1.0.conv1"] and layers[-1] == "layer4.1.conv2"
    assert result.info.metrics["served_check"] == "load_quantized"
    assert result.info.metrics["compression_ratio"] > 3.9


def test_t5_weight_only_folder_is_int_quantized_and_loads_in_both_runtimes(tmp_path):
    """transformers 5 runs T5's weight init on every load and reads ``q.weight``, which a
    pack-quantized layer lacks: the T5 family's weight-only folders hold an int8 ``weight``."""
    import json

    from mono_quant.quant.calibration import call_model as run

    t5 = next(a for a in ARCHS if a.name == "t5")
    model = t5.build()
    batch = t5.batch(model)
    qmodel, info = quantize_model(model, QuantConfig(), [batch], progress=False)
    path = save_model(qmodel, tmp_path / "t5", info, format=CT)
    block = json.loads((path / "config.json").read_text())["quantization_config"]
    group = block["config_groups"]["group_0"]
    assert block["format"] == group["format"] == "int-quantized"
    assert group["input_activations"] is None and group["weights"]["strategy"] == "channel"
    with safe_open(path / "model.safetensors", "pt") as f:
        names = set(f.keys())
        assert not [k for k in names if k.endswith("weight_packed")]
        assert f.get_tensor("encoder.block.0.layer.0.SelfAttention.q.weight").dtype == torch.int8

    assert served_check(path, CT, t5.build(seed=1), qmodel, info, batch).startswith(
        "ok (transformers): outputs cosine ")
    assert info.metrics["serveable_by"] == "none"
    assert info.metrics["serveable_reason"].startswith("vLLM has no t5 model")
    reloaded = load_quantized(path, t5.build(seed=2)).eval()  # reads the folder's format
    with torch.inference_mode():
        assert torch.equal(first_tensor(run(reloaded, batch)), first_tensor(run(qmodel, batch)))
