"""vLLM's int8 kernel constraints, as read from its compressed-tensors schemes."""

from __future__ import annotations

import pytest

from mono_quant.io.serveability import Serveability, check_layers, check_scheme
from mono_quant.quant.qconfig import QuantConfig

CT = "compressed-tensors"


@pytest.mark.parametrize(
    ("config", "by", "reason_start"),
    [
        (QuantConfig(mode="static"), "vllm", "CompressedTensorsW8A8Int8: W8A8, symmetric "
                                             "per_channel weights, static per-tensor asymmetric"),
        (QuantConfig(mode="static", granularity="per_tensor", activation_scheme="symmetric"),
         "vllm", "CompressedTensorsW8A8Int8"),
        (QuantConfig(mode="static", scheme="asymmetric"), "none",
         "vLLM's CompressedTensorsW8A8Int8 takes symmetric per-channel or per-tensor weights; "
         "got asymmetric per_channel"),
        (QuantConfig(mode="static", granularity="per_group", group_size=128), "none",
         "vLLM's CompressedTensorsW8A8Int8 takes symmetric"),
        (QuantConfig(), "vllm", "CompressedTensorsWNA16 (Marlin): W8A16, symmetric per_channel"),
        (QuantConfig(granularity="per_group", group_size=64), "vllm", "CompressedTensorsWNA16"),
        (QuantConfig(granularity="per_group", group_size=256), "none",
         "vLLM's CompressedTensorsWNA16 (Marlin) takes per-channel or per-group weights (group "
         "size 32, 64 or 128); got per_group 256"),
        (QuantConfig(granularity="per_tensor"), "none", "vLLM's CompressedTensorsWNA16"),
        (QuantConfig(scheme="asymmetric"), "none",
         "vLLM's CompressedTensorsWNA16 (Marlin) runs 8-bit weights without zero points"),
    ],
    ids=["w8a8-channel", "w8a8-tensor", "w8a8-asym-weights", "w8a8-group", "w8a16-channel",
         "w8a16-g64", "w8a16-g256", "w8a16-tensor", "w8a16-asym"],
)
def test_schemes_against_vllm(config, by, reason_start):
    verdict = check_scheme(config, CT)
    assert verdict.serveable_by == by and verdict.reason.startswith(reason_start)


def test_other_formats_are_served_by_load_quantized():
    verdict = check_scheme(QuantConfig(scheme="asymmetric"), "safetensors")
    assert verdict.serveable_by == "mono-quant"
    assert verdict.metrics() == {"serveable_by": "mono-quant",
                                 "serveable_reason": verdict.reason}


def test_marlin_shapes():
    config = QuantConfig(granularity="per_group", group_size=128)
    assert check_layers(config, CT, {"a": (256, 512)}).serveable_by == "vllm"
    bad = check_layers(config, CT, {"a": (256, 512), "b": (96, 512)})
    assert bad.serveable_by == "none"
    assert bad.reason == ("vLLM's CompressedTensorsWNA16 (Marlin) needs out % 64 == 0 and "
                          "in % 128 == 0 and in % 128 == 0; layer 'b' is out=96, in=512")
    assert check_layers(QuantConfig(), CT, {"a": (64, 192)}).serveable_by == "none"
    # W8A8 has no shape rule here; other formats none at all
    assert check_layers(QuantConfig(mode="static"), CT, {"a": (3, 5)}).serveable_by == "vllm"


def test_fused_shards_need_one_scheme():
    # vLLM loads q/k/v as one qkv_proj and gate/up as one gate_up_proj: a k_proj left in
    # float (an exclude, or an accuracy target keeping it) makes the checkpoint unloadable.
    config = QuantConfig(mode="dynamic")
    attn = ["m.0.attn.q_proj", "m.0.attn.k_proj", "m.0.attn.v_proj", "m.0.attn.o_proj"]
    shapes = {n: (64, 64) for n in attn}
    assert check_layers(config, CT, shapes, attn).serveable_by == "vllm"
    del shapes["m.0.attn.k_proj"]
    bad = check_layers(config, CT, shapes, attn)
    assert bad == Serveability(
        "none", "vLLM fuses q_proj, k_proj, v_proj into one layer and needs one scheme for all "
                "of them; m.0.attn.k_proj stay(s) float while the others are quantized")
    shapes = {"up_proj": (64, 64)}
    assert check_layers(config, CT, shapes, ["gate_proj", "up_proj"]).serveable_by == "none"
    assert check_layers(config, CT, {"o_proj": (64, 64)}, attn).serveable_by == "vllm"


def test_the_pipeline_records_mixed_shards(tmp_path):
    pytest.importorskip("transformers", reason="the 'hf' extra is not installed")
    from mono_quant import demo_models, quantize_model
    from mono_quant.pipeline.served import record_serveability

    config = QuantConfig(mode="dynamic", exclude=["lm_head", "*.k_proj"])
    qmodel, info = quantize_model(demo_models.tiny_transformer(), config, progress=False)
    record_serveability("compressed-tensors", qmodel, info)
    assert info.metrics["serveable_by"] == "none"
    assert "model.layers.0.self_attn.k_proj stay(s) float" in info.metrics["serveable_reason"]
