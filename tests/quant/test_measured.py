"""One pass per weight (``quant/_measured.py``): the rounding and the weight-error sums of
``quantize_model`` come from one read of each weight, with the same numbers as
``quantize_weight`` followed by ``weight_error``.

The bound: the int8 data, scales and zero points are bit-identical, and so are the four
error sums (the same float32 dot products over the same chunks of rows, accumulated in
float64: only the order of the passes over memory changed, not the order of summation).
Against a float64 reference they keep weight_error's own accuracy: float32 dot products over
chunks of about 256K values, 1.3e-5 relative at worst here (a one-row chunk of 512K values
with an offset), so the test allows 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mono_quant import BadInputError, QuantConfig, quantize_model
from mono_quant.quant import _measured
from mono_quant.quant import quantize as quantize_module
from mono_quant.quant.metrics import ErrorAccumulator, weight_error
from mono_quant.quant.primitives import dequantize
from mono_quant.quant.quantize import quantize_weight

SUMS = ("signal", "noise", "approx_sq", "dot")

# (shape, dtype): wide rows (one row is more than a chunk), narrow rows, conv, half types, and
# a row count that is not a multiple of the chunk's rows
CASES = [((300, 700), torch.float32), ((5, 1 << 19), torch.float32),
         ((1031, 129), torch.float32), ((16, 3, 3, 3), torch.float32),
         ((513, 129), torch.bfloat16), ((64, 96), torch.float16), ((1, 10), torch.float32)]


def _weight(shape, dtype, scheme):
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(*shape, generator=gen) * 0.02
    if scheme == "asymmetric":
        w += 0.01  # a non-zero zero point in most rows
    w[0] = 0.0  # an all-zero row: scale TINY, exact zeros
    return w.to(dtype)


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize(("shape", "dtype"), CASES, ids=[f"{s}-{d}" for s, d in CASES])
def test_one_pass_matches_quantize_then_weight_error_bit_for_bit(scheme, shape, dtype):
    cfg = QuantConfig(scheme=scheme)
    w = _weight(shape, dtype, scheme)
    assert _measured.applies(w, cfg)
    expected = quantize_weight(w, cfg, "w")
    qw, acc = _measured.quantize_measured(w, cfg, "w")
    for field in ("data", "scale", "zero_point"):
        got, want = getattr(qw, field), getattr(expected, field)
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
    assert (qw.scheme, qw.granularity) == (expected.scheme, expected.granularity)
    assert acc == weight_error(w, expected)  # all four sums, exactly
    ref = ErrorAccumulator()  # float64 throughout
    ref.add(w.float(), dequantize(expected))
    for name in SUMS:
        assert getattr(acc, name) == pytest.approx(getattr(ref, name), rel=1e-4)


def test_a_non_finite_weight_is_refused_with_its_name():
    w = torch.randn(8, 16)
    w[5, 3] = float("inf")
    with pytest.raises(BadInputError, match=r"layers\.3\.fc\.weight: contains NaN or infinite"):
        _measured.quantize_measured(w, QuantConfig(), "layers.3.fc.weight")


@pytest.mark.parametrize("config", [
    QuantConfig(granularity="per_group", group_size=16), QuantConfig(granularity="per_tensor"),
    QuantConfig(weight_observer="percentile"),
], ids=["per_group", "per_tensor", "percentile"])
def test_other_granularities_and_observers_keep_the_two_pass_path(config):
    assert not _measured.applies(torch.randn(32, 64), config)


def test_quantize_model_reads_each_weight_once_for_rounding_and_metrics(monkeypatch):
    """The default config never calls weight_error (a second pass over every weight) and
    reports what the two passes reported."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 70),
                          nn.Conv2d(3, 8, 3))
    _, before = quantize_model(model, QuantConfig(), progress=False)
    expected = {name: weight_error(model.get_submodule(name).weight,
                                   quantize_weight(model.get_submodule(name).weight,
                                                   QuantConfig(), name))
                for name in before.selected_layers}

    def second_pass(*_args, **_kwargs):
        raise AssertionError("weight_error read the weight a second time")

    monkeypatch.setattr(quantize_module, "weight_error", second_pass)
    _, info = quantize_model(model, QuantConfig(), progress=False)
    assert info.metrics["layer_weight_sqnr_db"] == {
        name: acc.sqnr_db for name, acc in expected.items()}
    total = ErrorAccumulator()
    for acc in expected.values():
        total.merge(acc)
    assert info.metrics["weight_sqnr_db"] == total.sqnr_db
