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
from mono_quant.quant import _kernels, _measured, options
from mono_quant.quant import quantize as quantize_module
from mono_quant.quant.metrics import ErrorAccumulator, weight_error
from mono_quant.quant.primitives import dequantize
from mono_quant.quant.quantize import quantize_weight

SUMS = ("signal", "noise", "approx_sq", "dot")

# (shape, dtype): wide rows (one row is more than a chunk), narrow rows, conv, half types, a
# row count that is not a multiple of the chunk's rows, and 4100 rows of 64 (one rounding step
# of 16384 rows holding two of weight_error's chunks of 4096 rows)
CASES = [((300, 700), torch.float32), ((5, 1 << 19), torch.float32), ((4100, 64), torch.float32),
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


#: two float32 rows (tests/quant/test_kernels.py's PAST_THE_RANGE) whose asymmetric rounding
#: steps one past the int8 range before the clamp: round(hi / scale) + zp = 128 in the first
#: row, round(lo / scale) + zp = -129 in the second
PAST_THE_RANGE = [[-1.2641713619232178, 0.38474780321121216],
                  [-0.27819550037384033, 0.6614052653312683]]


def test_rounding_past_the_int8_range_is_clamped_at_both_ends():
    w = torch.tensor(PAST_THE_RANGE)
    cfg = QuantConfig(scheme="asymmetric")
    qw, acc = _measured.quantize_measured(w, cfg, "w")
    assert qw.data.tolist() == [[-128, 127], [-128, 127]]  # not 128 or -129 wrapped around
    assert acc == weight_error(w, quantize_weight(w, cfg, "w"))


def test_scales_and_sums_stay_float32_under_a_float64_default_dtype(float64_default):
    # a caller's torch.set_default_dtype(float64) must not change the scale buffer, the
    # scratch the rounding writes or the float32 dot products
    w = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.0, -0.75]], dtype=torch.float32)
    qw, acc = _measured.quantize_measured(w, QuantConfig(), "w")
    assert qw.scale.dtype == torch.float32
    # amax / 127 rounded to float32 (1 / 127 is 0.0078740157480..., its float32 ...7187)
    assert qw.scale.reshape(-1).tolist() == [0.007874015718698502, 0.015748031437397003]
    assert qw.data.tolist() == [[64, -127, 32], [127, 0, -48]]  # x * 63.5 or 127, half-even
    assert acc.signal == 5.875  # 0.25 + 1 + 0.0625 + 4 + 0 + 0.5625
    assert acc == weight_error(w, quantize_weight(w, QuantConfig(), "w"))


@pytest.mark.parametrize(("shape", "dtype", "expected"), [
    pytest.param((16,), torch.float32, False, id="1-D"),
    pytest.param((0, 16), torch.float32, False, id="empty"),
    pytest.param((4, 4), torch.int8, False, id="int8"),
    pytest.param((1, 1), torch.float32, True, id="one-value"),
    pytest.param((1, 64), torch.float32, True, id="one-row"),
])
def test_which_weights_the_one_pass_covers(shape, dtype, expected):
    assert _measured.applies(torch.zeros(shape, dtype=dtype), QuantConfig()) is expected


def test_a_single_row_takes_the_one_pass_even_when_every_tensor_compiles():
    # the compiled kernel never takes a single row (fused_minmax_quantize's rows.shape[0] > 1),
    # so the one-pass path does; two rows under "always" are the compiled kernel's
    with options.compile_override("always"):
        assert _measured.applies(torch.zeros(1, 64), QuantConfig())
        assert not _measured.applies(torch.zeros(2, 64), QuantConfig())


def test_the_kernel_already_built_is_asked_for_the_scheme_of_the_config(monkeypatch):
    # under auto, only the symmetric kernel built in this process (a stand-in in its cache
    # slot: building it takes seconds and a C++ compiler): a symmetric weight goes to it, an
    # asymmetric one of the same size takes the one pass
    monkeypatch.setattr(_kernels, "_compiled", {"sym": _kernels._fused_sym})
    monkeypatch.setattr(_kernels, "_compile_failed", False)
    monkeypatch.setenv("MONO_QUANT_COMPILE_MIN_NUMEL", "100")
    w = torch.zeros(4, 32)
    with options.compile_override("auto"), options.job_work(0):
        assert not _measured.applies(w, QuantConfig(scheme="symmetric"))
        assert _measured.applies(w, QuantConfig(scheme="asymmetric"))


def test_a_non_float_weight_is_refused_with_its_name():
    with pytest.raises(BadInputError, match=r"^layers\.0\.fc\.weight: expected a floating-point "
                       r"tensor, got dtype torch\.int32$"):
        _measured.quantize_measured(torch.ones(4, 4, dtype=torch.int32), QuantConfig(),
                                    "layers.0.fc.weight")


def test_one_pass_keeps_the_weight_on_its_device(device):
    # on a GPU the int8, scale and scratch buffers must be CUDA tensors (the device mutants of
    # quant/_measured.py, which only a GPU tells apart); the numbers are the CPU's (the
    # float32 dot products may sum in another order there)
    cfg = QuantConfig(scheme="asymmetric")
    w = _weight((300, 700), torch.float32, "asymmetric").to(device)
    assert _measured.applies(w, cfg)
    qw, acc = _measured.quantize_measured(w, cfg, "w")
    assert {t.device.type for t in (qw.data, qw.scale, qw.zero_point)} == {device}
    cpu, cpu_acc = _measured.quantize_measured(w.cpu(), cfg, "w")
    for field in ("data", "scale", "zero_point"):
        assert torch.equal(getattr(qw, field).cpu(), getattr(cpu, field))
    for name in SUMS:
        assert getattr(acc, name) == pytest.approx(getattr(cpu_acc, name), rel=1e-5)
