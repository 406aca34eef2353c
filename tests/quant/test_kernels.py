"""``quant/_kernels.py`` below the public API: chunking, the compile decision, the overflow
branch of the qparams and the compile fallback, with expected values written here or taken from
the numpy reference (``tests/quant/reference.py``)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

# imported here, not first inside _run_compiled: importing Inductor takes seconds, which every
# mutation-test child would pay again
from torch._inductor import config as inductor_config

from mono_quant.quant import _kernels, options
from tests.quant import reference


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 8 elements, so small tensors take the multi-chunk and the one-huge-row paths."""
    monkeypatch.setattr(_kernels, "_CHUNK", 8)


def _slices(rows, cols):
    return [((r.start, r.stop), (c.start, c.stop))
            for r, c in _kernels._row_chunks(torch.empty(rows, cols))]


def test_row_chunks_cover_every_element_once(small_chunks):
    # 3 columns: 8 // 3 = 2 rows per chunk, the last one shorter
    assert _slices(5, 3) == [((0, 2), (0, 3)), ((2, 4), (0, 3)), ((4, 5), (0, 3))]
    # rows longer than a chunk: one row at a time, cut into 8-column pieces
    assert _slices(2, 20) == [((0, 1), (0, 8)), ((0, 1), (8, 16)), ((0, 1), (16, 20)),
                              ((1, 2), (0, 8)), ((1, 2), (8, 16)), ((1, 2), (16, 20))]
    assert _slices(3, 8) == [((0, 1), (0, 8)), ((1, 2), (0, 8)), ((2, 3), (0, 8))]
    assert _slices(2, 0) == [((0, 2), (0, 0))]
    # one column: 8 // 1 = 8 rows per chunk
    assert _slices(9, 1) == [((0, 8), (0, 1)), ((8, 9), (0, 1))]


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("shape", [(7, 3), (3, 20), (1, 50)], ids=["chunked", "long", "huge"])
def test_small_chunks_match_the_reference(small_chunks, symmetric, shape):
    g = torch.Generator().manual_seed(11)
    rows = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, generator=g) * 10
    q, scale, zp = _kernels.fused_minmax_quantize(rows, symmetric)
    q_ref, s_ref, z_ref = reference.quantize_weight(rows.numpy(), symmetric, "per_channel")
    assert np.array_equal(q.numpy(), q_ref)
    assert np.array_equal(scale.numpy().reshape(-1), s_ref)
    assert np.array_equal(zp.numpy().reshape(-1), z_ref)
    assert (q.dtype, scale.dtype, zp.dtype) == (torch.int8, torch.float32, torch.float32)


def test_quantize_rows_in_chunks(small_chunks):
    rows = torch.tensor([[0.25 * i - 2.0 for i in range(20)]] * 2)
    scale = torch.tensor([[0.25], [0.5]])
    zp = torch.tensor([[3.0], [-1.0]])
    q = _kernels.quantize_rows(rows, scale, zp, -4, 10)
    # row 0: round(x / 0.25) + 3 = i - 8 + 3, clamped to [-4, 10]; row 1: round(x / 0.5) - 1
    expected0 = [min(max(i - 5, -4), 10) for i in range(20)]
    expected1 = [min(max(round((0.25 * i - 2.0) / 0.5) - 1, -4), 10) for i in range(20)]
    assert q.tolist() == [expected0, expected1]


def test_empty_rows_have_no_range():
    with pytest.raises(ValueError, match="^cannot take the range of empty rows$"):
        _kernels.minmax_rows(torch.empty(3, 0))


def test_range_wider_than_float32_divides_first():
    lo, hi = torch.tensor([[-3e38]]), torch.tensor([[3e38]])  # hi - lo overflows float32
    scale, zp = _kernels.qparams_from_minmax(lo, hi, symmetric=False)
    lo32, hi32 = np.float32(-3e38), np.float32(3e38)
    expected = np.float32(hi32 / np.float32(255) - lo32 / np.float32(255))
    assert float(scale) == float(expected) and np.isfinite(expected)
    assert float(zp) == float(np.clip(-128 - np.round(lo32 / expected), -128, 127))
    # an ordinary range keeps the subtract-then-divide formula
    scale, _ = _kernels.qparams_from_minmax(torch.tensor([[-1.0]]), torch.tensor([[2.0]]), False)
    assert float(scale) == float(np.float32(3.0) / np.float32(255))


def test_qparams_of_half_inputs_are_float32():
    scale, zp = _kernels.qparams_from_minmax(torch.tensor([[-1.0]], dtype=torch.float16),
                                             torch.tensor([[1.0]], dtype=torch.float16), True)
    assert scale.dtype == torch.float32 and float(scale) == float(np.float32(1) / 127)
    assert float(zp) == 0.0


@pytest.fixture
def fresh_compile_state(monkeypatch):
    monkeypatch.setattr(_kernels, "_compiled", {})
    monkeypatch.setattr(_kernels, "_compile_failed", False)
    monkeypatch.setenv("MONO_QUANT_COMPILE_MIN_NUMEL", "100")


@pytest.mark.parametrize(
    ("mode", "numel", "work", "compiled", "expected"),
    [
        pytest.param("never", 1000, 0, True, False, id="never"),
        pytest.param("always", 1, 0, False, True, id="always"),
        pytest.param("auto", 99, options.COMPILE_MIN_WORK, True, False, id="auto-too-small"),
        pytest.param("auto", 100, 0, False, False, id="auto-no-work"),
        pytest.param("auto", 100, options.COMPILE_MIN_WORK - 1, False, False,
                     id="auto-work-below"),
        pytest.param("auto", 100, options.COMPILE_MIN_WORK, False, True, id="auto-work-pays"),
        pytest.param("auto", 100, 0, True, True, id="auto-kernel-exists"),
    ],
)
def test_when_the_inductor_kernel_is_used(fresh_compile_state, mode, numel, work, compiled,
                                          expected):
    if compiled:
        _kernels._compiled["sym"] = object()
    with options.compile_override(mode), options.job_work(work):
        assert _kernels._use_compiled(torch.empty(numel), "sym") is expected
        assert _kernels._use_compiled(torch.empty(numel), "asym") is (expected and (
            mode != "auto" or work >= options.COMPILE_MIN_WORK))


def test_no_inductor_kernel_off_the_cpu_or_after_a_failure(fresh_compile_state, monkeypatch):
    with options.compile_override("always"):
        assert _kernels._use_compiled(torch.empty(1000, device="meta"), "sym") is False
        monkeypatch.setattr(_kernels, "_compile_failed", True)
        assert _kernels._use_compiled(torch.empty(1000), "sym") is False


def test_a_failing_compiler_falls_back_once_and_loudly(fresh_compile_state, monkeypatch, caplog):
    # no compiler is broken on purpose here: _get_compiled is replaced by one that raises, as
    # torch.compile does when the C++ toolchain is missing
    def broken(name, fn):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(_kernels, "_get_compiled", broken)
    rows = torch.tensor([[-1.0, 0.5, 2.0], [4.0, -4.0, 1.0]])
    with options.compile_override("always"), caplog.at_level(logging.WARNING):
        q, scale, _ = _kernels.fused_minmax_quantize(rows, symmetric=True)
    assert _kernels._compile_failed is True
    assert [r.getMessage() for r in caplog.records] == [
        "torch.compile is unavailable (RuntimeError: no C++ compiler); using eager kernels"]
    q_ref, s_ref, _ = reference.quantize_weight(rows.numpy(), True, "per_channel")
    assert np.array_equal(q.numpy(), q_ref) and np.array_equal(scale.numpy().reshape(-1), s_ref)


def test_inductor_result_goes_through_the_same_qparams(fresh_compile_state, monkeypatch):
    # the compiled kernel returns (q, lo, hi); scale and zero point are taken from lo and hi
    # (stand-in kernel: an eager function, so no compiler is needed)
    def eager(name, fn, *args):
        assert name == "asym" and fn is _kernels._fused_asym
        return fn(*args)

    monkeypatch.setattr(_kernels, "_run_compiled", eager)
    rows = torch.tensor([[-1.0, 0.5, 2.0], [4.0, 3.0, 1.0]])
    with options.compile_override("always"):
        q, scale, zp = _kernels.fused_minmax_quantize(rows, symmetric=False)
    q_ref, s_ref, z_ref = reference.quantize_weight(rows.numpy(), False, "per_channel")
    assert np.array_equal(q.numpy(), q_ref)
    assert np.array_equal(scale.numpy().reshape(-1), s_ref)
    assert np.array_equal(zp.numpy().reshape(-1), z_ref)


#: float32 ranges (found by a search over 20M random ones, about 1 in 300,000) whose
#: asymmetric rounding steps one past the int8 range: round(hi / scale) + zp = 128 and
#: round(lo / scale) + zp = -129 before the clamp
PAST_THE_RANGE = [[-1.2641713619232178, 0.38474780321121216],
                  [-0.27819550037384033, 0.6614052653312683]]


def test_asymmetric_rounding_past_the_range_is_clamped(monkeypatch):
    rows = torch.tensor(PAST_THE_RANGE)
    x = rows.numpy()
    scale, zp = reference.qparams(x.min(axis=1), x.max(axis=1), symmetric=False)
    inv = reference.f32(1.0 / scale.astype("float64"))[:, None]
    unclamped = np.round(reference.f32(x.astype("float64") * inv)) + zp[:, None]
    assert unclamped[0, 1] == 128 and unclamped[1, 0] == -129  # the clamp is what saves them
    q_ref, _, _ = reference.quantize_weight(x, False, "per_channel")
    assert q_ref.tolist() == [[-128, 127], [-128, 127]]
    eager, _, _ = _kernels.fused_minmax_quantize(rows, symmetric=False)
    assert np.array_equal(eager.numpy(), q_ref)
    # the same rows through the kernel torch.compile would trace, run eagerly
    monkeypatch.setattr(_kernels, "_run_compiled", lambda name, fn, *args: fn(*args))
    with options.compile_override("always"):
        traced, _, _ = _kernels.fused_minmax_quantize(rows, symmetric=False)
    assert traced.dtype == torch.int8 and np.array_equal(traced.numpy(), q_ref)


def test_symmetric_kernel_as_traced(monkeypatch):
    rows = torch.tensor([[-1.0, 0.5, 2.0, 0.0], [4.0, 3.0, 1.0, -0.25]])
    monkeypatch.setattr(_kernels, "_run_compiled", lambda name, fn, *args: fn(*args))
    with options.compile_override("always"):
        q, scale, zp = _kernels.fused_minmax_quantize(rows, symmetric=True)
    q_ref, s_ref, _ = reference.quantize_weight(rows.numpy(), True, "per_channel")
    assert q.dtype == torch.int8 and np.array_equal(q.numpy(), q_ref)
    assert np.array_equal(scale.numpy().reshape(-1), s_ref) and not zp.any()


def test_round_clamps_to_the_given_bounds():
    x = torch.tensor([[-10.0, -2.0, 0.0, 2.0, 10.0]])
    q = _kernels._round(x, torch.tensor([[0.5]]), torch.tensor([[1.0]]), -3.0, 4.0)
    # round(x / 0.5) + 1 = -19, -3, 1, 5, 21, clamped to [-3, 4]
    assert q.dtype == torch.int8 and q.tolist() == [[-3, -3, 1, 4, 4]]


def test_outputs_are_on_the_rows_device():
    # the meta device stands in for a GPU (none here): buffers follow the rows' device
    rows = torch.empty(4, 8, device="meta")
    q = _kernels.quantize_rows(rows, torch.ones(4, 1, device="meta"),
                               torch.zeros(4, 1, device="meta"), -128, 127)
    assert q.device.type == "meta" and q.dtype == torch.int8
    q, scale, zp = _kernels.fused_minmax_quantize(rows, symmetric=False)
    assert {q.device.type, scale.device.type, zp.device.type} == {"meta"}


def test_inductor_kernel_is_built_once_per_name(fresh_compile_state, monkeypatch):
    # torch.compile is replaced by a recorder (mutation runs cannot trace the real one): each
    # kernel name is built once, with dynamic shapes, as one graph, on one compile thread
    built: list[tuple[object, dict]] = []

    def recorder(fn, **kwargs):
        built.append((fn, kwargs))

        def run(*args):
            assert inductor_config.compile_threads == 1
            return fn(*args)

        return run

    monkeypatch.setattr(torch, "compile", recorder)
    rows = torch.tensor([[-1.0, 0.5, 2.0], [4.0, 3.0, 1.0]])
    for _ in range(2):
        out = _kernels._run_compiled("sym", _kernels._fused_sym, rows)
        assert out is not None and torch.equal(out[1], rows.amin(dim=1, keepdim=True))
    assert built == [(_kernels._fused_sym, {"dynamic": True, "fullgraph": True})]
    assert set(_kernels._compiled) == {"sym"} and _kernels._compile_failed is False


def _recorded_builds(monkeypatch) -> list[object]:
    """torch.compile replaced by a recorder that returns the eager function."""
    built: list[object] = []

    def recorder(fn, **kwargs):
        built.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", recorder)
    return built


def test_which_tensors_take_the_inductor_kernel(fresh_compile_state, monkeypatch):
    built = _recorded_builds(monkeypatch)
    with options.compile_override("never"):  # several rows, but the mode says no
        _kernels.fused_minmax_quantize(torch.ones(4, 8), symmetric=True)
    assert built == []
    with options.compile_override("always"):
        _kernels.fused_minmax_quantize(torch.ones(1, 8), symmetric=True)  # one row: eager
        assert built == []
        _kernels.fused_minmax_quantize(torch.ones(2, 8), symmetric=True)
    assert built == [_kernels._fused_sym]


def test_auto_reuses_a_kernel_this_process_built(fresh_compile_state, monkeypatch):
    # under auto a kernel already built is used for any large-enough tensor, even when the
    # job is too small to pay for compiling
    calls: list[str] = []

    def kernel(rows):
        calls.append("sym")
        return _kernels._fused_sym(rows)

    _kernels._compiled["sym"] = kernel
    rows = torch.arange(200, dtype=torch.float32).reshape(2, 100)
    with options.compile_override("auto"), options.job_work(0):
        q, _, _ = _kernels.fused_minmax_quantize(rows, symmetric=True)
    assert calls == ["sym"]
    q_ref, _, _ = reference.quantize_weight(rows.numpy(), True, "per_channel")
    assert np.array_equal(q.numpy(), q_ref)


def test_one_huge_row_past_the_range_is_clamped(small_chunks):
    # the one-huge-row path (a row longer than a chunk) with a range of PAST_THE_RANGE
    lo, hi = PAST_THE_RANGE[0]
    rows = torch.tensor([[lo, hi, 0.0, 0.1, -0.1, 0.2, -0.2, 0.3, -0.3, 0.0]])
    q, _, _ = _kernels.fused_minmax_quantize(rows, symmetric=False)
    q_ref, _, _ = reference.quantize_weight(rows.numpy(), False, "per_tensor")
    assert q_ref[0, :2].tolist() == [-128, 127]
    assert np.array_equal(q.numpy(), q_ref)


@pytest.mark.parametrize(("mode", "shape", "built", "symmetric", "expected"), [
    pytest.param("always", (2, 64), (), True, True, id="always-two-rows"),
    pytest.param("always", (1, 64), (), True, False, id="always-one-row"),
    pytest.param("always", (2, 1), (), False, True, id="always-one-column"),
    pytest.param("never", (2, 64), ("sym", "asym"), True, False, id="never"),
    pytest.param("auto", (4, 32), ("sym",), True, True, id="auto-sym-built"),
    pytest.param("auto", (4, 32), ("sym",), False, False, id="auto-asym-not-built"),
    pytest.param("auto", (4, 32), ("asym",), False, True, id="auto-asym-built"),
    pytest.param("auto", (4, 32), ("asym",), True, False, id="auto-sym-not-built"),
])
def test_which_kernel_fused_minmax_quantize_takes_as_the_one_pass_asks(
        fresh_compile_state, mode, shape, built, symmetric, expected):
    # _kernels.compiled_for (no "compiled" in this test's name: mutation runs leave out
    # -k compiled). A kernel "built in this process" is a stand-in in its cache slot
    # (building one takes seconds and a C++ compiler); under auto with no job work only a
    # built one is used
    for name in built:
        _kernels._compiled[name] = _kernels._fused_sym if name == "sym" else _kernels._fused_asym
    with options.compile_override(mode), options.job_work(0):
        assert _kernels.compiled_for(torch.zeros(shape), symmetric) is expected


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_scales_stay_float32_under_a_float64_default_dtype(float64_default, symmetric):
    rows = torch.tensor([[-1.0, 0.5, 2.0], [4.0, 3.0, 1.0]], dtype=torch.float32)
    q, scale, zp = _kernels.fused_minmax_quantize(rows, symmetric)
    assert (q.dtype, scale.dtype, zp.dtype) == (torch.int8, torch.float32, torch.float32)
    q_ref, s_ref, z_ref = reference.quantize_weight(rows.numpy(), symmetric, "per_channel")
    assert np.array_equal(q.numpy(), q_ref)
    assert np.array_equal(scale.numpy().reshape(-1), s_ref)
    assert np.array_equal(zp.numpy().reshape(-1), z_ref)


def test_round_float_writes_into_the_buffer_it_is_given():
    # x / 0.5 = -2, 1, 4; + 1 = -1, 2, 5; clamped to [-2, 3]
    x = torch.tensor([[-1.0, 0.5, 2.0]])
    scale, zp = torch.tensor([[0.5]]), torch.tensor([[1.0]])
    buf = torch.full((1, 3), 99.0)
    got = _kernels.round_float(x, scale, zp, -2.0, 3.0, out=buf)
    assert got is buf and buf.tolist() == [[-1.0, 2.0, 3.0]]
    fresh = _kernels.round_float(x, scale, zp, -2.0, 3.0)  # no buffer: a new tensor
    assert fresh.tolist() == [[-1.0, 2.0, 3.0]] and fresh.data_ptr() != x.data_ptr()
    assert x.tolist() == [[-1.0, 0.5, 2.0]]
