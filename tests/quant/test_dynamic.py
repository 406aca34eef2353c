"""mode="dynamic": per-token int8 activations and an int8 GEMM, checked against references
written here from vLLM's kernel description (not with the code under test)."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from mono_quant import BadConfigError, QuantConfig, demo_models, quantize_model, save_model
from mono_quant.io import load_quantized
from mono_quant.quant.dynamic import fake_quantize_per_token, int8_linear, quantize_per_token
from mono_quant.quant.modules import QuantLinear
from tests.quant.cuda_emulation import CudaScalarDivision


def _reference_per_token(x: torch.Tensor):
    """float64: absmax per row, q = round(x * 127 / absmax), scale = absmax / 127."""
    x64 = x.double().reshape(-1, x.shape[-1])
    absmax = x64.abs().max(dim=1, keepdim=True).values
    t = torch.where(absmax > 0, x64 * 127.0 / absmax, torch.zeros_like(x64))
    return t, torch.round(t), absmax / 127.0


def test_per_token_matches_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=g) * torch.logspace(-3, 2, 64).unsqueeze(1)
    x[5] = 0.0  # a zero row: vLLM's NaN -> 0 convert
    q, scale = quantize_per_token(x)
    t, q_ref, scale_ref = _reference_per_token(x)
    # float32 (the kernel) and float64 can only disagree on values within 1e-4 of a .5 tie
    tie = ((t - t.floor()) - 0.5).abs() < 1e-4
    assert torch.equal(q.long()[~tie], q_ref.long()[~tie])
    assert int(tie.sum()) < 5
    assert torch.allclose(scale.double(), scale_ref, rtol=1e-7, atol=0)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127 and q.shape == x.shape
    assert torch.equal(q[5], torch.zeros(96, dtype=torch.int8)) and float(scale[5]) == 0.0


def _vllm_per_token(x: np.ndarray):
    """vLLM's ``dynamic_scaled_int8_quant_kernel`` in numpy float32, operation by operation:
    ``scale = absmax / 127.0f``, ``tmp = 127.0f / absmax`` (IEEE divisions), then
    ``cvt.rni.sat.s8.f32(x * tmp)``: round half to even, saturate, NaN (the zero row) -> 0."""
    absmax = np.abs(x).max(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = absmax / np.float32(127.0)
        prod = x * (np.float32(127.0) / absmax)
    return np.clip(np.rint(np.nan_to_num(prod, nan=0.0)), -128, 127).astype(np.int8), scale


def _boundary_rows(n: int = 32):
    """Rows ``[a, x...]`` whose ``x * (127 / a)`` lies next to a .5 rounding tie, where a
    ``127 / a`` one bit off (``reciprocal(a) * 127``, two roundings) changes the int8 value."""
    rng = np.random.default_rng(7)
    rows = []
    for a in rng.uniform(0.5, 8.0, 4000).astype(np.float32):
        exact, twice = np.float32(127.0) / a, (np.float32(1.0) / a) * np.float32(127.0)
        if exact == twice:
            continue
        xs = [x for k in range(1, 127)
              for x0 in [np.float32((k + 0.5) / np.float64(exact))]
              for x in (np.nextafter(x0, np.float32(0)), x0, np.nextafter(x0, np.float32(9)))
              if np.rint(x * exact) != np.rint(x * twice)]
        if xs:
            rows.append(np.array([a, *xs[:7], *[-v for v in xs[:7]], 0.0][:16], np.float32))
        if len(rows) == n:
            return np.stack([np.pad(r, (0, 16 - len(r))) for r in rows])
    raise AssertionError("no boundary rows found")


@pytest.mark.parametrize("divides", ["cpu", "cuda"])
def test_per_token_is_vllms_float32_kernel_on_every_device(divides):
    # the scale and the multiplier are IEEE float32 quotients in vLLM's kernel; a GPU divides
    # a tensor by a number as a * (1 / b), and 127 / t is reciprocal(t) * 127 everywhere
    g = torch.Generator().manual_seed(3)
    rand = torch.randn(256, 16, generator=g) * torch.logspace(-4, 4, 256).unsqueeze(1)
    x = np.concatenate([_boundary_rows(), rand.numpy(), np.zeros((1, 16), np.float32)])
    with CudaScalarDivision() if divides == "cuda" else contextlib.nullcontext():
        q, scale = quantize_per_token(torch.from_numpy(x))
    q_ref, scale_ref = _vllm_per_token(x)
    assert np.array_equal(scale.numpy(), scale_ref)
    assert np.array_equal(q.numpy(), q_ref)


def test_a_subnormal_row_saturates_like_vllms_kernel():
    # absmax 1e-40 (float32 subnormal): 127 / absmax overflows float32 to inf, x * inf is
    # +-inf for x != 0 and NaN for 0; the kernel's saturating convert gives 127, -128 and 0
    x = torch.tensor([[1e-40, -1e-40, 0.0, 5e-41]])
    q, scale = quantize_per_token(x)
    assert q.tolist() == [[127, -128, 0, 127]]
    q_ref, scale_ref = _vllm_per_token(x.numpy())
    assert q_ref.tolist() == [[127, -128, 0, 127]]
    assert np.array_equal(scale.numpy(), scale_ref) and float(scale) > 0


def test_per_token_takes_the_last_axis_of_a_3d_input():
    # rows [1, -2], [4, 0.5], [0, 0], [-8, 2]: 127 / absmax = 63.5, 31.75, inf, 15.875;
    # 63.5 rounds half to even (64), 15.875 -> 16, 31.75 -> 32
    x = torch.tensor([[[1.0, -2.0], [4.0, 0.5]], [[0.0, 0.0], [-8.0, 2.0]]])
    q, scale = quantize_per_token(x)
    assert q.tolist() == [[[64, -127], [127, 16]], [[0, 0], [-127, 32]]]
    assert scale.shape == (2, 2, 1)
    expected = np.array([2.0, 4.0, 0.0, 8.0], np.float32) / np.float32(127.0)
    assert np.array_equal(scale.flatten().numpy(), expected)


def test_fake_quantize_and_int8_linear_keep_the_input_dtype():
    x = torch.tensor([[1.0, -2.0]], dtype=torch.bfloat16)
    # q = [64, -127], scale 2/127: 64 * 2/127 = 1.00787 -> bfloat16 1.0078125 (step 2**-7)
    fq = fake_quantize_per_token(x)
    assert fq.dtype == torch.bfloat16 and fq.tolist() == [[1.0078125, -2.0]]
    w = torch.tensor([[1, 1], [2, 0]], dtype=torch.int8)
    # acc = [64 - 127, 128] = [-63, 128]; out = 2/127 * [0.5 * -63, 1.0 * 128]
    # = [-0.496063, 2.015748] -> bfloat16 [-0.49609375, 2.015625]
    out = int8_linear(x, w, torch.tensor([[0.5], [1.0]]), None)
    assert out.dtype == torch.bfloat16 and out.tolist() == [[-0.49609375, 2.015625]]


def test_int8_linear_is_the_int32_accumulate_then_rescale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 200, generator=g)
    w = torch.randint(-127, 128, (48, 200), generator=g, dtype=torch.int8)
    sw = torch.rand(48, 1, generator=g) * 0.01 + 1e-4
    bias = torch.randn(48, generator=g)
    out = int8_linear(x, w, sw, bias)
    # the integer reference: int64 accumulation, then vLLM's epilogue order in float32
    q, sx = quantize_per_token(x.reshape(-1, 200))
    acc = q.long() @ w.long().t()
    expected = (sx * (sw.reshape(1, -1) * acc.float()) + bias).reshape(3, 7, 48)
    assert torch.equal(out, expected)
    # and the float64 reference of the whole layer agrees to float32 rounding
    _, q_ref, s_ref = _reference_per_token(x)
    ref = (q_ref @ w.double().t()) * s_ref * sw.double().reshape(1, -1) + bias.double()
    assert torch.allclose(out.reshape(-1, 48).double(), ref, rtol=1e-5, atol=1e-6)


def test_quant_linear_dynamic_forward_and_no_input_buffers():
    model = demo_models.mlp(64, 96, 16)
    qmodel, info = quantize_model(model, QuantConfig(mode="dynamic"), progress=False)
    layer = qmodel[0]
    assert isinstance(layer, QuantLinear) and layer.mode == "dynamic"
    assert "input_scale" not in dict(layer.named_buffers())
    assert info.config.activation_scheme == "symmetric" and info.calibration_samples == 0
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(2))
    _, q_ref, s_ref = _reference_per_token(x)
    w = layer.weight.double()
    ref = (q_ref @ w.t()) * s_ref * layer.weight_scale.double().reshape(1, -1)
    assert torch.allclose(layer(x).double(), ref + layer.bias.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", ["safetensors", "compressed-tensors"])
def test_dynamic_artifact_round_trips(tmp_path, fmt):
    model = demo_models.mlp(64, 96, 16)
    qmodel, info = quantize_model(model, QuantConfig(mode="dynamic"), progress=False)
    path = save_model(qmodel, tmp_path / ("m.safetensors" if fmt == "safetensors" else "ct"),
                      info, format=fmt)
    again = load_quantized(path, demo_models.mlp(64, 96, 16, seed=5))
    x = torch.randn(4, 64)
    assert torch.equal(again(x), qmodel(x))
    if fmt == "compressed-tensors":
        block = json.loads((path / "config.json").read_text())["quantization_config"]
        group = block["config_groups"]["group_0"]
        assert block["format"] == "int-quantized"
        acts = group["input_activations"]
        assert (acts["dynamic"], acts["strategy"], acts["symmetric"], acts["num_bits"]) == (
            True, "token", True, 8)


def test_transformers_loads_a_dynamic_folder(tmp_path):
    pytest.importorskip("compressed_tensors", reason="the 'interop' extra is not installed")
    pytest.importorskip("transformers", reason="the 'hf' extra is not installed")
    from transformers import AutoModelForCausalLM

    batch = demo_models.token_batches(n=1)[0]
    qmodel, info = quantize_model(demo_models.tiny_transformer(),
                                  QuantConfig(mode="dynamic", exclude=["lm_head"]),
                                  progress=False)
    folder = save_model(qmodel, tmp_path / "tiny", info, format="compressed-tensors")
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    with torch.inference_mode():
        theirs, ours = hf(**batch).logits, qmodel(**batch).logits
    # compressed-tensors simulates per-token scales as absmax/127.5, vLLM (and we) absmax/127:
    # the same int8 weights, activations within one rounding step of each other
    cos = torch.nn.functional.cosine_similarity(theirs.flatten(), ours.flatten(), dim=0)
    assert float(cos) > 0.9999
    for name in info.selected_layers:
        module = hf.get_submodule(name)
        assert torch.equal(module.weight_scale.flatten().float(),
                           qmodel.get_submodule(name).weight_scale.flatten()), name


def test_dynamic_conv_is_per_position():
    model = demo_models.cnn()
    qmodel, _ = quantize_model(model, QuantConfig(mode="dynamic"), progress=False)
    x = demo_models.image_batches(n=1)[0]
    with torch.inference_mode():
        cos = torch.nn.functional.cosine_similarity(model(x).flatten(), qmodel(x).flatten(),
                                                    dim=0)
    assert float(cos) > 0.99


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"activation_scheme": "asymmetric"}, "activation_scheme='asymmetric'",
                     id="asym-acts"),
        pytest.param({"scheme": "asymmetric"}, "symmetric per_channel or per_tensor",
                     id="asym-weights"),
        pytest.param({"granularity": "per_group"}, "granularity='per_group'", id="group"),
    ],
)
def test_dynamic_bad_configs_name_the_option(kwargs, message):
    with pytest.raises(BadConfigError, match=message):
        QuantConfig(mode="dynamic", **kwargs)


def test_dynamic_beats_static_on_a_linear_with_outlier_tokens():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    data = [torch.randn(16, 64) * torch.logspace(-1, 1.5, 16).unsqueeze(1) for _ in range(2)]
    ref = torch.cat([layer(x) for x in data]).detach()

    def err(mode: str) -> float:
        q, _ = quantize_model(nn.Sequential(layer), QuantConfig(mode=mode), data,
                              progress=False)
        out = torch.cat([q(x) for x in data]).detach()
        # per token: the small tokens are where one per-tensor scale fails
        return float(((out - ref).norm(dim=1) / ref.norm(dim=1)).mean())

    assert err("dynamic") * 3 < err("static")
