"""The architecture matrix: tiny random checkpoints of real transformers classes, quantized
weight-only and static to every format their family supports, loaded the way each format is
served (transformers for compressed-tensors, load_quantized otherwise).

torchvision's ResNet is not in the matrix: torchvision is not a dependency of mono-quant (no
extra installs it), and a ResNet is Conv2d + Linear layers that the Conv2d tests of
tests/quant already cover.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from mono_quant import QuantConfig, load_quantized, quantize_model, save_model
from mono_quant.errors import MonoQuantError
from mono_quant.pipeline.served import probe_batch, served_check
from mono_quant.quant.metrics import first_tensor
from mono_quant.quant.ties import output_embedding_name, shared_weights
from tests.pipeline.archs import ARCHS, Arch

pytest.importorskip("transformers", reason="transformers is not installed (the 'hf' extra)")
pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed")

pytestmark = pytest.mark.slow

CT = "compressed-tensors"
CASES = [
    pytest.param(arch, mode, fmt, id=f"{arch.name}-{mode}-{fmt}")
    for arch in ARCHS
    for mode in ("weight_only", "static")
    for fmt in arch.formats
    if not (mode == "static" and fmt == "pt")  # .pt holds what safetensors holds
]


def _logits(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return first_tensor(model(**batch)).float()


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
    batch = probe_batch(model)
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

    refusal = [why for m, f, why in arch.unservable if (m, f) == (mode, fmt)]
    if refusal:  # the check exists for this: the folder is written but does not load
        with pytest.raises(MonoQuantError, match="does not load in transformers") as err:
            served_check(path, fmt, arch.build(seed=1), qmodel, info, batch)
        assert refusal[0] in str(err.value)
        return
    served_check(path, fmt, arch.build(seed=1), qmodel, info, batch)
    assert info.metrics["served_check"] == ("transformers" if fmt == CT else "load_quantized")
    if fmt == CT:
        served = type(model).from_pretrained(path, local_files_only=True).eval()
    else:
        served = load_quantized(path, arch.build(seed=2)).eval()

    ref, out = _logits(model, batch), _logits(served, batch)
    assert _cosine(ref, out) >= (0.999 if mode == "weight_only" else 0.98)
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
