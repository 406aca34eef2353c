"""``fake_quantize`` (static activations) and ``QuantizedTensor.dequantize``, by hand.

scale 0.25, zero point 3 (asymmetric): q = clamp(round(x / 0.25) + 3, -128, 127) and the
output is (q - 3) * 0.25.
"""

from __future__ import annotations

import torch

from mono_quant import quantize_weight_int8
from mono_quant.quant.primitives import fake_quantize

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
