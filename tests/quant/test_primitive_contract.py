"""The public fields and error messages of ``quantize_weight_int8`` / ``quantize_with_qparams``.

Written against the surviving mutants of ``quant/primitives.py`` (docs/mutation.md): each case
checks one documented fact (a field's value or dtype, a default name, a refused input) with
values written here.
"""

from __future__ import annotations

import pytest
import torch

from mono_quant import BadInputError, quantize_weight_int8, quantize_with_qparams

NAN = float("nan")


def test_non_finite_weight_message_in_full():
    with pytest.raises(BadInputError) as err:
        quantize_weight_int8(torch.tensor([[1.0, NAN]]), name="fc.weight")
    assert str(err.value) == (
        "fc.weight: contains NaN or infinite values; int8 quantization needs finite values "
        "(check the checkpoint, or exclude this layer)")


def test_default_names_in_messages():
    with pytest.raises(BadInputError, match=r"^weight: contains NaN"):
        quantize_weight_int8(torch.tensor([[NAN]]))
    with pytest.raises(BadInputError, match=r"^tensor: scale \(3, 1\)"):
        quantize_with_qparams(torch.ones(4, 2), torch.ones(3, 1), torch.zeros(4, 1))


def test_not_a_tensor():
    with pytest.raises(BadInputError) as err:
        quantize_weight_int8([[1.0, 2.0]], name="fc.weight")
    assert str(err.value) == "fc.weight: expected a torch.Tensor, got list"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_weights_are_quantized_in_float32(dtype):
    # 1/3 and 2/3 are not exact in half precision: scales computed in half would differ
    w = torch.tensor([[1.0, 1 / 3, -2 / 3, 0.1]], dtype=dtype)
    qt = quantize_weight_int8(w, "asymmetric", "per_tensor")
    lo, hi = float(w.float().min()), float(w.float().max())
    expected = torch.tensor([(hi - lo) / 255], dtype=torch.float64).float()
    assert qt.scale.dtype == torch.float32
    assert torch.equal(qt.scale, expected)


def test_fields_of_the_result():
    qt = quantize_weight_int8(torch.tensor([[0.0, 1.0, 2.0, -0.5]]), "asymmetric",
                              "per_tensor")
    assert qt.scheme == "asymmetric" and qt.zero_point.dtype == torch.int8
    # lo = -0.5, hi = 2: scale 2.5/255, zp = -128 - round(-0.5 / scale) = -128 + 51
    assert qt.zero_point.tolist() == [-77]
    given = quantize_with_qparams(torch.ones(2, 4), torch.full((2, 1), 0.5),
                                  torch.tensor([[1], [2]], dtype=torch.int8), "asymmetric")
    assert given.scheme == "asymmetric" and given.zero_point.dtype == torch.int8
    assert given.data.tolist() == [[3] * 4, [4] * 4]


def test_qparams_per_group_use_the_group_size():
    x = torch.arange(8 * 64, dtype=torch.float32).reshape(8, 64) / 64
    scale = torch.full((8, 2), 0.25)
    qt = quantize_with_qparams(x, scale, torch.zeros(8, 2), "symmetric", "per_group",
                               group_size=32)
    assert qt.granularity.group_size == 32
    assert torch.equal(qt.data, torch.clamp(torch.round(x * 4), -127, 127).to(torch.int8))


@pytest.mark.parametrize(
    ("scale", "zp", "message"),
    [
        pytest.param(torch.ones(4, 1), torch.zeros(3, 1),
                     "x: scale (4, 1) / zero point (3, 1) do not match per_channel qparams of "
                     "shape (4, 1) for a tensor of shape (4, 2)", id="zero-point-shape"),
        pytest.param(torch.tensor([[1.0], [0.0], [1.0], [1.0]]), torch.zeros(4, 1),
                     "x: every scale must be > 0", id="zero-scale"),
        pytest.param(torch.tensor([[1.0], [NAN], [1.0], [1.0]]), torch.zeros(4, 1),
                     "x: contains NaN or infinite values", id="nan-scale"),
    ],
)
def test_qparams_are_checked(scale, zp, message):
    with pytest.raises(BadInputError) as err:
        quantize_with_qparams(torch.ones(4, 2), scale, zp, name="x")
    assert str(err.value).startswith(message)


def test_qparams_tensor_checks_name_the_tensor():
    with pytest.raises(BadInputError) as err:
        quantize_with_qparams(torch.ones(4, 2, dtype=torch.int32), torch.ones(4, 1),
                              torch.zeros(4, 1), name="x")
    assert str(err.value) == "x: expected a floating-point tensor, got dtype torch.int32"


def test_qparams_move_to_the_tensors_device():
    # Stand-in for a GPU (none here): a tensor on the meta device with qparams on the CPU,
    # as an observer on the CPU hands them to a weight elsewhere; the result is on x's device
    x = torch.empty(4, 8, device="meta")
    qt = quantize_with_qparams(x, torch.ones(4, 1), torch.zeros(4, 1))
    assert (qt.data.device.type, qt.scale.device.type, qt.zero_point.device.type) == (
        "meta", "meta", "meta")
