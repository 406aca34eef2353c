from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mono_quant import (
    BadInputError,
    PerChannel,
    PerGroup,
    PerTensor,
    dequantize,
    quantize_weight_int8,
    quantize_with_qparams,
)
from mono_quant.quant import _kernels
from tests.quant import reference
from tests.quant.cuda_emulation import CudaScalarDivision

GRANULARITIES = [
    pytest.param("per_tensor", 0, id="per_tensor"),
    pytest.param("per_channel", 0, id="per_channel"),
    pytest.param("per_group", 32, id="per_group32"),
    pytest.param("per_group", 128, id="per_group128"),
]
SCHEMES = [pytest.param("symmetric", id="sym"), pytest.param("asymmetric", id="asym")]
SHAPES = [pytest.param((96, 256), id="linear"), pytest.param((32, 16, 4, 4), id="conv")]


def _spec(granularity, group_size):
    return {"per_tensor": PerTensor(), "per_channel": PerChannel(),
            "per_group": PerGroup(group_size or 128)}[granularity]


def _weights(shape, dtype=torch.float32):
    w = torch.randn(shape) * torch.rand(shape[0]).reshape(-1, *[1] * (len(shape) - 1))
    w[0] = 0.0  # an all-zero row
    w[1] = w[1].abs()  # an all-positive row: the asymmetric range still contains 0
    return w.to(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("granularity", "group_size"), GRANULARITIES)
@pytest.mark.parametrize("path", ["eager", "compiled"])
def test_matches_float64_reference_exactly(shape, scheme, granularity, group_size, path,
                                           kernel_path):
    kernel_path(path)
    w = _weights(shape)
    qt = quantize_weight_int8(w, scheme, _spec(granularity, group_size))
    q_ref, s_ref, z_ref = reference.quantize_weight(w.numpy(), scheme == "symmetric",
                                                    granularity, group_size)
    assert qt.data.dtype == torch.int8 and qt.scale.dtype == torch.float32
    assert np.array_equal(qt.data.numpy(), q_ref)
    assert np.array_equal(qt.scale.numpy().reshape(-1), s_ref)
    assert np.array_equal(qt.zero_point.numpy().reshape(-1).astype(np.float32), z_ref)
    if path == "compiled" and granularity != "per_tensor":  # the compiled kernel really ran
        assert _kernels._compiled and not _kernels._compile_failed


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("granularity", "group_size"), GRANULARITIES)
def test_matches_torch_fake_quantize(scheme, granularity, group_size):
    """torch's own fake-quant kernels give the same dequantized values as ours."""
    w = _weights((64, 256))
    qt = quantize_weight_int8(w, scheme, _spec(granularity, group_size))
    qmin = -127 if scheme == "symmetric" else -128
    rows = reference.rows_of(w.numpy(), granularity, group_size)
    rows = torch.from_numpy(rows.copy())
    scale = qt.scale.reshape(-1)
    zp = qt.zero_point.reshape(-1).to(torch.int32)
    if granularity == "per_tensor":
        ref = torch.fake_quantize_per_tensor_affine(rows, float(scale), int(zp), qmin, 127)
    else:
        ref = torch.fake_quantize_per_channel_affine(rows, scale, zp, 0, qmin, 127)
    assert torch.equal(dequantize(qt).reshape(rows.shape), ref)


def test_scale_and_zero_point_shapes():
    w = torch.randn(48, 256)
    assert quantize_weight_int8(w, granularity="per_tensor").scale.shape == (1,)
    assert quantize_weight_int8(w).scale.shape == (48, 1)
    assert quantize_weight_int8(w, granularity="per_group", group_size=64).scale.shape == (48, 4)
    conv = quantize_weight_int8(torch.randn(8, 4, 3, 3))
    assert conv.scale.shape == (8, 1, 1, 1) and conv.zero_point.shape == (8, 1, 1, 1)


def test_round_half_to_even_and_symmetric_range():
    # amax 127 makes the scale exactly 1.0, so x * (1/scale) hits the .5 ties exactly.
    w = torch.tensor([[127.0, 2.5, -3.5, 0.5, -0.5, 1.5, -127.0, 0.0]])
    qt = quantize_weight_int8(w)
    assert float(qt.scale) == 1.0
    assert qt.data.tolist() == [[127, 2, -4, 0, 0, 2, -127, 0]]


def test_asymmetric_uses_full_range_and_exact_zero():
    w = torch.tensor([[-1.0, 0.0, 3.0, 1.2]])
    qt = quantize_weight_int8(w, "asymmetric")
    assert int(qt.data.min()) == -128 and int(qt.data.max()) == 127
    assert float(dequantize(qt)[0, 1]) == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_input_is_quantized_in_float32(dtype):
    w = _weights((32, 64), dtype)
    assert torch.equal(quantize_weight_int8(w).data, quantize_weight_int8(w.float()).data)
    assert dequantize(quantize_weight_int8(w), dtype).dtype == dtype


def test_weight_sqnr_floor_per_channel_gaussian():
    w = torch.randn(512, 512) * 0.02
    w_hat = dequantize(quantize_weight_int8(w))
    sqnr = 10 * math.log10(float(w.square().sum() / (w - w_hat).square().sum()))
    assert sqnr >= 35.0


def test_device(device):
    w = torch.randn(64, 128, device=device)
    qt = quantize_weight_int8(w, "asymmetric", "per_group", group_size=64)
    assert qt.data.device.type == device
    cpu = quantize_weight_int8(w.cpu(), "asymmetric", "per_group", group_size=64)
    assert torch.equal(qt.data.cpu(), cpu.data) and torch.equal(qt.scale.cpu(), cpu.scale)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scales_do_not_depend_on_how_the_device_divides(scheme):
    # The CUDA case of test_device failed on an H200: int8 data equal, per-group scales not.
    w = torch.randn(64, 128)
    with CudaScalarDivision() as mode:
        gpu_like = quantize_weight_int8(w, scheme, "per_group", group_size=64)
    assert mode.calls > 0  # the emulation did see the scale's division
    cpu = quantize_weight_int8(w, scheme, "per_group", group_size=64)
    q, scale, zp = reference.quantize_weight(w.numpy(), scheme == "symmetric", "per_group", 64)
    for qt in (gpu_like, cpu):
        assert np.array_equal(qt.scale.flatten().numpy(), scale)
        assert np.array_equal(qt.zero_point.flatten().numpy(), zp.astype(np.int8))
        assert np.array_equal(qt.data.numpy(), q)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param(torch.tensor([[1.0, float("nan")]]), "layer.weight: contains NaN", id="nan"),
        pytest.param(torch.tensor([[1.0, float("inf")]]), "layer.weight: contains NaN", id="inf"),
        pytest.param(torch.ones(2, 3, dtype=torch.int32), "floating-point", id="int"),
        pytest.param(torch.ones(0, 3), "empty", id="empty"),
    ],
)
def test_bad_input_names_the_tensor(bad, message):
    with pytest.raises(BadInputError, match=message):
        quantize_weight_int8(bad, name="layer.weight")


def test_group_size_must_divide_input():
    with pytest.raises(BadInputError, match=r"fc\.weight: input size 100 .* group_size=64"):
        quantize_weight_int8(torch.randn(4, 100), granularity="per_group", group_size=64,
                             name="fc.weight")


def test_quantize_with_qparams_checks_shapes():
    with pytest.raises(BadInputError, match="do not match per_channel qparams"):
        quantize_with_qparams(torch.randn(4, 8), torch.ones(3, 1), torch.zeros(3, 1))


# --- properties -------------------------------------------------------------------------------

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)
matrices = hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1,
                                                   max_side=24), elements=finite)


@settings(max_examples=200, deadline=None)
@given(w=matrices, scheme=st.sampled_from(["symmetric", "asymmetric"]),
       granularity=st.sampled_from(["per_tensor", "per_channel"]))
def test_error_is_at_most_half_a_step(w, scheme, granularity):
    w = torch.from_numpy(w)
    qt = quantize_weight_int8(w, scheme, granularity)
    err = (dequantize(qt) - w).abs()
    # Half a step, plus float32 rounding of x * (1/scale) and of (q - zp) * scale.
    bound = qt.scale * 0.5 * (1 + 1e-5) + w.abs() * 1e-6
    assert bool((err <= bound).all())


@settings(max_examples=200, deadline=None)
@given(w=matrices, scheme=st.sampled_from(["symmetric", "asymmetric"]))
def test_zero_is_exactly_representable(w, scheme):
    w[:, 0] = 0.0
    qt = quantize_weight_int8(torch.from_numpy(w), scheme)
    assert bool((dequantize(qt)[:, 0] == 0.0).all())


@settings(max_examples=200, deadline=None)
@given(w=matrices, scheme=st.sampled_from(["symmetric", "asymmetric"]),
       granularity=st.sampled_from(["per_tensor", "per_channel"]))
def test_quantize_dequantize_is_idempotent(w, scheme, granularity):
    qt = quantize_weight_int8(torch.from_numpy(w), scheme, granularity)
    again = quantize_with_qparams(dequantize(qt), qt.scale, qt.zero_point, scheme, granularity)
    assert torch.equal(again.data, qt.data)
    assert torch.equal(dequantize(again), dequantize(qt))
