"""The compressed-tensors folders we write, read the way vLLM's loader reads them.

vLLM has no CPU wheel here, so its scheme selection is restated below from its source
(``vllm/model_executor/layers/quantization/compressed_tensors/compressed_tensors.py`` at
commit be696453ee1b, ``CompressedTensorsConfig._quantization_scheme_map_from_config`` and
``_get_scheme_from_parts``; the W8A8 parameters from ``schemes/compressed_tensors_w8a8_int8.py``
``create_weights``). Each config group's ``weights`` and ``input_activations`` go through
compressed-tensors' own ``QuantizationArgs`` model, as vLLM parses them. The verdict
``serveable_by`` must agree with the scheme vLLM would pick, for every mode x weight
scheme x granularity, and a W8A8 layer must hold exactly the tensors that scheme creates
(a leftover ``weight_zero_point`` fails vLLM's strict load). The GPU check that vLLM really
serves the folders is ``benchmarks/vllm_serve.py`` (docs/operations.md).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mono_quant import QuantConfig, quantize_model, save_model
from mono_quant.io.serveability import check_scheme

ct = pytest.importorskip("compressed_tensors.quantization",
                         reason="the 'interop' extra is not installed")

#: vLLM's ``is_activation_quantization_format`` (utils.py): the formats whose groups may carry
#: input activations (naive-, int-, float-, nvfp4-pack-, mxfp4-pack-quantized).
ACTIVATION_FORMATS = ("naive-quantized", "int-quantized", "float-quantized",
                      "nvfp4-pack-quantized", "mxfp4-pack-quantized")
WNA16_SUPPORTED_BITS = (4, 8)  # vLLM schemes/compressed_tensors_wNa16.py


def vllm_scheme(qc: dict, group: dict) -> str | None:
    """The int8 scheme vLLM selects for a config group; None where it raises
    NotImplementedError ("No compressed-tensors compatible scheme was found")."""
    fmt = group.get("format") or qc["format"]
    weights = ct.QuantizationArgs.model_validate(group["weights"])
    acts = group.get("input_activations")
    acts = ct.QuantizationArgs.model_validate(acts) if acts else None
    channel_or_tensor = weights.strategy in ("channel", "tensor")
    if (acts is None and weights.strategy in ("channel", "group") and not weights.dynamic
            and weights.symmetric and fmt == "pack-quantized"
            and weights.num_bits in WNA16_SUPPORTED_BITS):
        return "CompressedTensorsWNA16"
    if fmt not in ACTIVATION_FORMATS or acts is None or weights.type != "int":
        return None
    eight_bits = weights.num_bits == acts.num_bits == 8
    if (eight_bits and channel_or_tensor and acts.strategy == "tensor" and weights.symmetric
            and not weights.dynamic and not acts.dynamic):
        return "CompressedTensorsW8A8Int8"  # static per-tensor input scale
    if (eight_bits and channel_or_tensor and acts.strategy == "token" and weights.symmetric
            and not weights.dynamic and acts.dynamic):
        return "CompressedTensorsW8A8Int8"  # dynamic per-token
    return None


def w8a8_tensors(layer: str, weights: str, acts: dict, out: int, inp: int) -> dict:
    """What ``CompressedTensorsW8A8Int8.create_weights`` registers (dtype, shape)."""
    want = {f"{layer}.weight": (torch.int8, (out, inp)),
            f"{layer}.weight_scale": (torch.float32, (out, 1) if weights == "channel" else (1,))}
    if not acts["dynamic"]:
        want[f"{layer}.input_scale"] = (torch.float32, (1,))
        if not acts["symmetric"]:  # vLLM's parameter is int32 [1]; its loader casts on copy
            want[f"{layer}.input_zero_point"] = (torch.int8, (1,))
    return want


CONFIGS = [
    pytest.param(dict(mode=m, scheme=s, granularity=g, **({"group_size": 64} if g == "per_group"
                                                          else {})),
                 id=f"{m}-{s}-{g}")
    for m in ("static", "dynamic", "weight_only")
    for s in ("symmetric", "asymmetric")
    for g in ("per_channel", "per_tensor", "per_group")
    # dynamic refuses other weights at construction (its int8 GEMM needs them symmetric)
    if m != "dynamic" or (s == "symmetric" and g != "per_group")
] + [pytest.param(dict(mode="static", activation_scheme="symmetric"), id="static-sym-acts")]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_serveable_by_agrees_with_vllms_scheme_selection(tmp_path, kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 64))
    config = QuantConfig(**kwargs)
    data = [torch.randn(4, 128) for _ in range(2)]
    qmodel, info = quantize_model(model, config, data, progress=False)
    path = save_model(qmodel, tmp_path / "ct", info, format="compressed-tensors")
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    (group,) = qc["config_groups"].values()
    assert group["targets"] == ["0", "2"]
    scheme = vllm_scheme(qc, group)
    verdict = check_scheme(config, "compressed-tensors")
    assert (verdict.serveable_by == "vllm") == (scheme is not None), (scheme, verdict)
    assert scheme is None or verdict.reason.startswith(scheme)
    if scheme == "CompressedTensorsW8A8Int8":
        _assert_w8a8_tensors(path, group)


def _assert_w8a8_tensors(path, group):
    from safetensors.torch import load_file

    tensors = load_file(path / "model.safetensors")
    for layer, (out, inp) in {"0": (64, 128), "2": (64, 64)}.items():
        want = w8a8_tensors(layer, group["weights"]["strategy"], group["input_activations"],
                            out, inp)
        got = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()
               if k.startswith(f"{layer}.") and k != f"{layer}.bias"}
        assert got == want


def test_dynamic_activations_are_vllms_per_token_preset():
    acts = {"num_bits": 8, "type": "int", "symmetric": True, "group_size": None,
            "strategy": "token", "dynamic": True}
    parsed = ct.QuantizationArgs.model_validate(acts)
    assert (parsed.strategy, parsed.dynamic, parsed.symmetric) == ("token", True, True)
    from mono_quant.io.interop import _input_args

    assert _input_args(QuantConfig(mode="dynamic")) == acts
