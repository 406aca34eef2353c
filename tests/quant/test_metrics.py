"""SQNR and cosine against numbers worked out by hand (written here, not recomputed by us).

These numbers go into ``QuantizationInfo.metrics`` and the catalog, and ``--min-sqnr``
filters on them, so comparing the library with itself (or with a floor) is not enough.
SQNR is ``10 * log10(signal / noise)`` dB (a power ratio): 25 / 1 is 13.979... dB.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mono_quant import QuantConfig, quantize_model
from mono_quant.quant.metrics import (
    ErrorAccumulator,
    check_int8_ranges,
    cosine_similarity,
    first_tensor,
    sqnr_db,
    state_dict_bytes,
)

T = torch.tensor

# (ref, approx, sqnr dB, cosine), each pair worked out by hand
PAIRS = {
    # signal 9 + 16 = 25, noise 1: 10 log10 25; dot 21 / (5 * sqrt 18)
    "3-4": ([3.0, 4.0], [3.0, 3.0], 13.979400086720377, 0.9899494936611667),
    # noise 8, signal 4: 10 log10 0.5; orthogonal
    "orthogonal": ([2.0, 0.0], [0.0, 2.0], -3.010299956639812, 0.0),
    # noise 4 + 16 = 20, signal 5: 10 log10 0.25; opposite
    "negated": ([1.0, 2.0], [-1.0, -2.0], -6.020599913279624, -1.0),
    # noise equals signal: 0 dB; approx is zero: cosine 0
    "approx-zero": ([1.0, -1.0], [0.0, 0.0], 0.0, 0.0),
    "exact": ([1.5, -2.0], [1.5, -2.0], math.inf, 1.0),
    "ref-zero": ([0.0, 0.0], [1.0, 0.0], -math.inf, 0.0),
    "both-zero": ([0.0, 0.0], [0.0, 0.0], math.inf, 1.0),
}


@pytest.mark.parametrize("name", list(PAIRS), ids=list(PAIRS))
def test_sqnr_and_cosine_hand_computed(name):
    ref, approx, sqnr, cosine = PAIRS[name]
    assert sqnr_db(T(ref), T(approx)) == pytest.approx(sqnr, abs=1e-12)
    assert cosine_similarity(T(ref), T(approx)) == pytest.approx(cosine, abs=1e-12)


def test_accumulator_sums_before_the_ratio():
    """Overall SQNR weights by size: (25 + 100) / (1 + 25), not the mean of the dB values.
    Sums: signal 9+16+100, noise 0+1+25, approx² 9+9+25, dot 9+12+50."""
    acc = ErrorAccumulator()
    acc.add(T([3.0, 4.0]), T([3.0, 3.0]))
    acc.add(T([10.0]), T([5.0]))
    assert (acc.signal, acc.noise, acc.approx_sq, acc.dot) == (125.0, 26.0, 43.0, 71.0)
    assert acc.sqnr_db == pytest.approx(6.819366650372385, abs=1e-12)  # 10 log10(125 / 26)
    assert acc.cosine == pytest.approx(0.9684319620480724, abs=1e-12)  # 71 / sqrt(125 * 43)
    merged, second = ErrorAccumulator(), ErrorAccumulator()
    merged.add(T([3.0, 4.0]), T([3.0, 3.0]))
    second.add(T([10.0]), T([5.0]))
    merged.merge(second)
    assert (merged.signal, merged.noise, merged.approx_sq, merged.dot) == (125.0, 26.0, 43.0,
                                                                          71.0)


def test_large_tensors_are_summed_over_every_chunk():
    n = (1 << 20) * 2 + 3  # two full float64 chunks and a partial one
    ref, approx = torch.ones(n), torch.full((n,), 0.5)
    acc = ErrorAccumulator()
    acc.add(ref.reshape(-1, 1), approx.reshape(-1, 1))
    assert (acc.signal, acc.noise, acc.approx_sq, acc.dot) == (n, n * 0.25, n * 0.25, n * 0.5)
    assert acc.sqnr_db == pytest.approx(6.020599913279624, abs=1e-12)  # 10 log10 4
    assert acc.cosine == pytest.approx(1.0, abs=1e-12)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"shape mismatch: \(2,\) vs \(3,\)"):
        ErrorAccumulator().add(torch.zeros(2), torch.zeros(3))


def test_quantize_model_records_hand_computed_metrics():
    """One weight ``[1, 0.25]``: 1 maps to 127, 0.25 * 127 = 31.75 rounds to 32, so the error
    is 0.25 / 127. SQNR = 10 log10(1.0625 / (0.25 / 127)**2) = 54.3806 dB. Fed the unit vectors,
    the layer's outputs are its weights, so the output metrics are the same numbers."""
    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(T([[1.0, 0.25]]))
    data = [torch.eye(2)]
    _, info = quantize_model(model, QuantConfig(), data, progress=False)
    m = info.metrics
    assert m["weight_sqnr_db"] == pytest.approx(54.3805636329019, abs=1e-3)
    assert m["weight_sqnr_db_min"] == pytest.approx(54.3805636329019, abs=1e-3)
    assert m["layer_weight_sqnr_db"]["0"] == pytest.approx(54.3805636329019, abs=1e-3)
    assert m["output_sqnr_db"] == pytest.approx(54.3805636329019, abs=1e-3)
    # (1 + 0.25 * 32/127) / (sqrt(1.0625) * sqrt(1 + (32/127)**2))
    assert m["output_cosine"] == pytest.approx(0.9999982853267695, abs=1e-9)


def test_state_dict_bytes_counts_tied_tensors_once():
    lin = nn.Linear(4, 3)  # 12 + 3 float32
    assert state_dict_bytes(lin) == 60
    tied = nn.Sequential(*(nn.Linear(4, 4, bias=False) for _ in range(3)))
    tied[1].weight = tied[0].weight  # counted once; the layer after it still counts
    assert state_dict_bytes(tied) == 128
    half = nn.Linear(4, 3).half()
    assert state_dict_bytes(half) == 30
    empty = nn.Module()
    empty.register_buffer("e", torch.zeros(0))
    empty.register_buffer("f", torch.zeros(0))
    assert state_dict_bytes(empty) == 0


class _Output:
    """Dict-like but not a ``Mapping`` (as some model output classes are)."""

    def __init__(self, **items):
        self._items = items

    def keys(self):
        return self._items.keys()

    def values(self):
        return self._items.values()

    def __contains__(self, key):
        return key in self._items

    def __getitem__(self, key):
        return self._items[key]


def test_first_tensor_finds_the_output():
    a, b = T([1.0]), T([2.0])
    assert first_tensor(_Output(hidden=b, logits=a)) is a
    assert first_tensor(_Output(hidden=b)) is b
    assert first_tensor(a) is a
    assert first_tensor({"hidden": b, "logits": a}) is a
    assert first_tensor({"hidden": b, "other": a}) is b
    assert first_tensor([None, (3, {"x": a}), b]) is a
    assert first_tensor((b, a)) is b
    assert first_tensor(3) is None
    assert first_tensor([1, "x"]) is None


def test_check_int8_ranges_names_each_problem():
    data = torch.tensor([-128, 0, 127], dtype=torch.int8)
    ones, zero = torch.ones(1), torch.zeros(1, dtype=torch.int8)
    assert check_int8_ranges("w", data, ones, zero, -128, 127) == []
    assert check_int8_ranges("w", data, ones, zero, -127, 127) == [
        "w: int8 values span [-128, 127], outside [-127, 127]"]
    assert check_int8_ranges("w", data[1:], ones, zero, -127, 126) == [
        "w: int8 values span [0, 127], outside [-127, 126]"]
    assert check_int8_ranges("w", data.float(), ones, zero, -128, 127) == [
        "w: data dtype is torch.float32, expected torch.int8"]
    for bad in (torch.zeros(1), T([-1.0]), T([math.nan]), T([math.inf])):
        assert check_int8_ranges("w", data, bad, zero, -128, 127) == [
            "w: scales must be finite and > 0"]
    edges = torch.tensor([-128, 127], dtype=torch.int8)  # zero points on the bounds are fine
    assert check_int8_ranges("w", data, ones, edges, -128, 127) == []
    low = torch.tensor([-128], dtype=torch.int8)
    assert check_int8_ranges("w", data[1:], ones, low, -127, 127) == [
        "w: zero points outside [-127, 127]"]
    high = torch.tensor([127], dtype=torch.int8)
    assert check_int8_ranges("w", data[1:2], ones, high, -128, 126) == [
        "w: zero points outside [-128, 126]"]
    assert check_int8_ranges("w", data[:0], ones, zero[:0], -127, 127) == []
