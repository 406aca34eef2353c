"""The chunked weight-error sums (``quant/metrics.py``: ``weight_error``, ``error_chunk_rows``,
``add_chunk_error``) against sums worked out by hand from hand-made quantized tensors.

``quantize_model``'s default config takes the one pass of ``quant/_measured.py``, which
reuses ``error_chunk_rows`` and ``add_chunk_error``; ``weight_error`` itself serves the other
granularities and observers. The quantized tensors here are written out (data, scale, zero
point), so the sums do not depend on our rounding.
"""

from __future__ import annotations

import pytest
import torch

from mono_quant.quant import metrics
from mono_quant.quant.metrics import ErrorAccumulator, add_chunk_error, error_chunk_rows
from mono_quant.quant.primitives import QuantizedTensor
from mono_quant.quant.specs import PerChannel, PerGroup, PerTensor

T = torch.tensor


def _sums(acc: ErrorAccumulator) -> tuple[float, float, float, float]:
    return acc.signal, acc.noise, acc.approx_sq, acc.dot


@pytest.mark.parametrize(("row_numel", "rows"), [
    (1, 262144), (3, 87381), (700, 374), (262144, 1), (262145, 1), (1 << 19, 1), (0, 262144),
], ids=["1", "3", "700", "chunk", "chunk+1", "2-chunks", "0"])
def test_chunk_rows_hold_about_256k_values(row_numel, rows):
    got = error_chunk_rows(row_numel)
    assert type(got) is int and got == rows


def test_a_chunk_adds_its_four_sums_and_leaves_the_error_in_the_approximation():
    acc = ErrorAccumulator(1.0, 2.0, 3.0, 4.0)
    r, a = T([3.0, 4.0]), T([3.0, 3.0])
    add_chunk_error(acc, r, a)
    # signal 9 + 16, noise 0 + 1, approx 9 + 9, dot 9 + 12, added to what was there
    assert _sums(acc) == (26.0, 3.0, 21.0, 25.0)
    assert a.tolist() == [0.0, -1.0] and r.tolist() == [3.0, 4.0]


# (granularity, data, scale, zero point, weight, (signal, noise, approx_sq, dot)); every
# dequantized value (q - zp) * scale is exact, the sums are worked out by hand
CASES = {
    # rows (3, 3) * 1 and (5, 0) * 2 = (10, 0): signal 9+16+100, noise 1, approx 9+9+100,
    # dot 9+12+100
    "per_channel": (PerChannel(), [[3, 3], [5, 0]], [[1.0], [2.0]], [[0], [0]],
                    [[3.0, 4.0], [10.0, 0.0]], (125.0, 1.0, 118.0, 121.0)),
    # (4 - 1, 0 - 1) * 0.5 = (1.5, -0.5) and (-2 + 2, 6 + 2) * 0.25 = (0, 2): signal
    # 2.25+1+1+4, noise 0+0.25+1+0, approx 2.25+0.25+0+4, dot 2.25+0.5+0+4
    "asymmetric": (PerChannel(), [[4, 0], [-2, 6]], [[0.5], [0.25]], [[1], [-2]],
                   [[1.5, -1.0], [1.0, 2.0]], (8.25, 1.25, 6.5, 6.75)),
    # one scale 0.5 for all: (2, 4, -6) * 0.5 = (1, 2, -3): signal 1+4+9+1, noise 0+0+0+1
    "per_tensor": (PerTensor(), [[2, 4], [-6, 0]], [0.5], [0],
                   [[1.0, 2.0], [-3.0, 1.0]], (15.0, 1.0, 14.0, 14.0)),
    # one scale 0.5 and one zero point 2 for all (read again for every chunk of rows):
    # (0, 2, -8, -2) * 0.5 = (0, 1, -4, -1): signal 0+1+16+0, noise 0+0+0+1, approx
    # 0+1+16+1, dot 0+1+16+0
    "per_tensor_asymmetric": (PerTensor(), [[2, 4], [-6, 0]], [0.5], [2],
                              [[0.0, 1.0], [-4.0, 0.0]], (17.0, 1.0, 18.0, 17.0)),
    # groups of 2: (1, 1) * 2, (3, -1) * 1 and (0, 2) * 0.5, (4, 4) * 1: signal
    # 4+4+9+0 + 0+1+16+16, noise 0+0+0+1 + 0, approx 4+4+9+1 + 0+1+16+16, dot 4+4+9+0 + 0+1+16+16
    "per_group": (PerGroup(2), [[1, 1, 3, -1], [0, 2, 4, 4]], [[2.0, 1.0], [0.5, 1.0]],
                  [[0, 0], [0, 0]], [[2.0, 2.0, 3.0, 0.0], [0.0, 1.0, 4.0, 4.0]],
                  (50.0, 1.0, 51.0, 50.0)),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("chunk", [1 << 20, 8], ids=["one-chunk", "row-chunks"])
def test_weight_error_sums_by_hand(case, chunk, monkeypatch):
    # chunk 8: error_chunk_rows gives max(1, 2 // row_numel) = 1 row per chunk here
    monkeypatch.setattr(metrics, "_CHUNK", chunk)
    gran, data, scale, zp, w, expected = CASES[case]
    scheme = "asymmetric" if "asymmetric" in case else "symmetric"
    qt = QuantizedTensor(T(data, dtype=torch.int8), T(scale), T(zp, dtype=torch.int8),
                         scheme, gran)
    weight = T(w)
    acc = metrics.weight_error(weight, qt)
    assert _sums(acc) == expected
    assert weight.tolist() == w  # the reference is read, never changed


def test_weight_error_of_a_half_precision_weight_and_a_conv_shape():
    # bfloat16 weight [2, 1, 2]: compared as float32 against (q * scale) per output channel;
    # rows (1, -2) * 0.5 = (0.5, -1) and (3, 1) * 1 = (3, 1): signal 0.25+1+9+0.25, noise
    # 0+0+0+0.25, approx 0.25+1+9+1, dot 0.25+1+9+0.5
    w = T([[[0.5, -1.0]], [[3.0, 0.5]]], dtype=torch.bfloat16)
    qt = QuantizedTensor(T([[[1, -2]], [[3, 1]]], dtype=torch.int8), T([[[0.5]], [[1.0]]]),
                         T([[[0]], [[0]]], dtype=torch.int8), "symmetric", PerChannel())
    assert _sums(metrics.weight_error(w, qt)) == (10.5, 0.25, 11.25, 10.75)


def test_weight_error_of_a_0_d_weight():
    # a scalar quantized per tensor: 3 * 0.25 = 0.75 against 0.8; signal 0.64, noise 0.05**2,
    # approx 0.5625, dot 0.6 (float32 products summed in float64: compared to the float32
    # values' own products)
    w = T(0.8)
    qt = QuantizedTensor(T(3, dtype=torch.int8), T([0.25]), T([0], dtype=torch.int8),
                         "symmetric", PerTensor())
    f = float(T(0.8))  # 0.800000011920929 in float32
    acc = metrics.weight_error(w, qt)
    assert _sums(acc) == pytest.approx((f * f, (f - 0.75) ** 2, 0.5625, f * 0.75), rel=1e-6)
    assert acc.approx_sq == 0.5625
