"""``fake_quantize`` (static activations) and ``QuantizedTensor.dequantize``, by hand.

scale 0.25, zero point 3 (asymmetric): q = clamp(round(x / 0.25) + 3, -128, 127) and the
output is (q - 3) * 0.25.
"""

from __future__ import annotations

import pytest
import torch

from mono_quant import quantize_weight_int8
from mono_quant.quant.primitives import QuantizedTensor, dequantize, fake_quantize

SCALE = torch.tensor([0.25])
ZP = torch.tensor([3], dtype=torch.int8)


def test_fake_quantize_hand_computed():
    x = torch.tensor([-40.0, -1.0, 0.3, 1.0, 40.0])
    # q: -157 -> -128, -1, 4 (1.2 rounds to 1, +3), 7, 163 -> 127
    expected = [(-128 - 3) * 0.25, -1.0, 0.25, 1.0, (127 - 3) * 0.25]
    assert fake_quantize(x, SCALE, ZP, "asymmetric").tolist() == expected
    # symmetric: same grid, the low end is -127
    assert fake_quantize(x, SCALE, ZP, "symmetric").tolist()[0] == (-127 - 3) * 0.25


def test_fake_quantize_keeps_the_dtype():
    x = torch.tensor([1.0, -1.0], dtype=torch.float16)
    out = fake_quantize(x, SCALE, ZP, "asymmetric")
    assert out.dtype == torch.float16 and out.tolist() == [1.0, -1.0]


def test_dequantize_method_takes_a_dtype():
    qt = quantize_weight_int8(torch.tensor([[1.0, -0.5]]))
    assert qt.dequantize().dtype == torch.float32
    half = qt.dequantize(torch.float16)
    assert half.dtype == torch.float16
    # -0.5 * 127 = -63.5 rounds (half to even) to -64: -64/127 = -0.50394, -0.50390625 in fp16
    assert half.tolist() == [[1.0, -0.50390625]]


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_group"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
def test_dequantize_is_the_formula_bit_for_bit(scheme, granularity, dtype):
    """dequantize works in one buffer, in place (and skips subtracting zero points that are
    all 0): the bits must stay those of ``((q - zp) * scale).to(dtype)`` in float32."""
    torch.manual_seed(0)
    w = torch.randn(48, 256) * 3 + (0.5 if scheme == "asymmetric" else 0.0)
    qt = quantize_weight_int8(w, scheme, granularity)
    q, zp, scale = qt.data.float(), qt.zero_point.float(), qt.scale
    if granularity == "per_group":  # scale [48, 2]: each group of 128 columns has its own
        q, zp, scale = q.reshape(48, 2, 128), zp.unsqueeze(-1), scale.unsqueeze(-1)
    expected = ((q - zp) * scale).reshape(48, 256).to(dtype)
    got = dequantize(qt, dtype)
    assert got.dtype == dtype and torch.equal(got, expected)
    assert bool(qt.zero_point.any()) == (scheme == "asymmetric")  # both branches are run


def test_dequantize_uses_nonzero_zero_points_of_a_symmetric_tensor():
    """The zero-point check looks at the values, not at the scheme's name."""
    q = torch.tensor([[10, -10]], dtype=torch.int8)
    qt = QuantizedTensor(q, torch.tensor([[0.5]]), torch.tensor([[2]], dtype=torch.int8),
                         "symmetric", quantize_weight_int8(torch.ones(1, 2)).granularity)
    assert dequantize(qt).tolist() == [[4.0, -6.0]]
