"""GPTQ against an independent numpy reference: the column-by-column algorithm of the paper
(Frantar et al., 2022, Algorithm 1 without lazy batches), written here in float64 numpy.

The blocked torch implementation must give the same int8 weight: the lazy batch update is an
exact reordering of the same updates; float64 rounding could only flip a value that lies
within ~1e-12 of a rounding boundary, which the seeded inputs here do not. Also exact values
of ``hessian``
and ``reconstruction_error`` computed by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mono_quant import BadInputError
from mono_quant.quant.gptq import (
    collect_hessians,
    gptq_quantize,
    hessian,
    reconstruction_error,
)
from mono_quant.quant.primitives import quantize_weight_int8


def _reference(w, h, scale, zp, qmin, qmax, damping, act_order, dead_value=1.0):
    """int values of GPTQ with per-element ``scale`` / ``zp`` (numpy float64); a dead input's
    ``H_jj`` becomes ``dead_value``."""
    w, h = w.astype(np.float64).copy(), h.astype(np.float64).copy()
    n = w.shape[1]
    dead = np.diag(h) == 0
    h[dead, dead] = dead_value
    w[:, dead] = 0.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(n)
    w, h, scale, zp = w[:, perm], h[np.ix_(perm, perm)], scale[:, perm], zp[:, perm]
    h = h + damping * np.mean(np.diag(h)) * np.eye(n)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H^-1
    q = np.zeros_like(w)
    for i in range(n):
        q[:, i] = np.clip(np.round(w[:, i] / scale[:, i]) + zp[:, i], qmin, qmax)
        err = (w[:, i] - (q[:, i] - zp[:, i]) * scale[:, i]) / u[i, i]
        w[:, i:] -= np.outer(err, u[i, i:])
    out = np.zeros_like(q)
    out[:, perm] = q
    return out.astype(np.int8)


def _per_element(qt, shape):
    s = qt.scale.double().numpy()
    z = qt.zero_point.double().numpy()
    if s.shape == (1,):
        return np.full(shape, s[0]), np.full(shape, z[0])
    g = shape[1] // s.shape[1]
    return np.repeat(s, g, axis=1), np.repeat(z, g, axis=1)


CASES = [
    pytest.param("symmetric", "per_channel", None, False, 128, id="sym-channel-one-block"),
    pytest.param("symmetric", "per_channel", None, False, 8, id="sym-channel-blocks"),
    pytest.param("asymmetric", "per_group", 16, True, 8, id="asym-group-act-order"),
    pytest.param("asymmetric", "per_tensor", None, True, 24, id="asym-tensor-act-order"),
]


@pytest.mark.parametrize(("scheme", "gran", "group", "act_order", "block"), CASES)
def test_gptq_equals_the_column_by_column_reference(scheme, gran, group, act_order, block):
    g = torch.Generator().manual_seed(11)
    w = torch.randn(12, 48, generator=g)
    x = torch.randn(200, 48, generator=g) * torch.linspace(0.2, 3.0, 48)
    x[:, 5] = 0.0  # a dead input: H_55 = 0
    rtn = quantize_weight_int8(w, scheme, gran, group_size=group)
    h = hessian(x)
    result = gptq_quantize(w, h, rtn, damping=0.05, block_size=block, act_order=act_order)
    assert result.used == "gptq"
    s, z = _per_element(rtn, tuple(w.shape))
    qmin = -127 if scheme == "symmetric" else -128
    expected = _reference(w.numpy(), h.numpy(), s, z, qmin, 127, 0.05, act_order)
    assert np.array_equal(result.qweight.data.numpy(), expected)
    assert result.qweight.data[:, 5].tolist() == expected[:, 5].tolist()
    assert result.qweight.scale is rtn.scale and result.qweight.zero_point is rtn.zero_point
    assert (result.qweight.scheme, result.qweight.granularity) == (rtn.scheme, rtn.granularity)
    # the recorded errors are the layer's, for the chosen and for the RTN weight
    w64, h64 = w.double().numpy(), h.numpy()
    s32, z32 = s.astype(np.float32), z.astype(np.float32)
    for got, q in ((result.error, expected), (result.rtn_error, rtn.data.numpy())):
        d = w64 - ((q.astype(np.float32) - z32) * s32).astype(np.float64)  # dequantized in f32
        assert got == pytest.approx(float(np.trace(d @ h64 @ d.T)), rel=1e-9)
    assert result.error < result.rtn_error


def test_hessian_and_reconstruction_error_by_hand():
    x = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]], [[0.0, 0.0]], [[0.0, 0.0]]])  # 4 rows of 2
    h = hessian(x)
    assert h.dtype == torch.float64
    assert h.tolist() == [[2.5, 3.5], [3.5, 5.0]]  # X^T X / 4
    assert hessian(torch.tensor([[2.0, 4.0]])).tolist() == [[4.0, 8.0], [8.0, 16.0]]  # 1 row
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    w_hat = torch.tensor([[0.0, 0.0], [0.0, 1.0]])  # D = [[1, 0], [0, 1]]
    assert reconstruction_error(w, w_hat, h) == 7.5  # tr(D H D^T) = 2.5 + 5
    w_hat = torch.tensor([[0.0, 1.0], [0.0, 2.0]])  # D = [[1, -1], [0, 0]]
    assert reconstruction_error(w, w_hat, h) == 0.5  # 2.5 - 2*3.5 + 5


def test_a_hessian_that_is_not_positive_definite_keeps_rtn():
    w = torch.randn(4, 8)
    rtn = quantize_weight_int8(w)
    h = -torch.eye(8, dtype=torch.float64)  # damping cannot make it positive definite
    result = gptq_quantize(w, h, rtn)
    assert result.qweight is rtn and result.used == "rtn"
    d = (w.double() - rtn.dequantize(torch.float64))
    assert result.error == result.rtn_error == pytest.approx(-float((d * d).sum()), rel=1e-12)


def test_a_diagonal_hessian_gives_rtn_and_the_tie_goes_to_gptq():
    # uncorrelated inputs: H^-1 and its factor are diagonal, no error is fed forward, so GPTQ
    # rounds exactly as RTN does and both errors are equal
    w = torch.tensor([[0.3, -1.0, 0.71, 0.2]])
    rtn = quantize_weight_int8(w)
    h = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    result = gptq_quantize(w, h, rtn)
    assert torch.equal(result.qweight.data, rtn.data)  # diagonal H: no error feedback
    assert result.used == "gptq" and result.error == result.rtn_error


def test_collect_hessians_averages_each_linear_input_over_the_samples_asked_for():
    g = torch.Generator().manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2),
                                torch.nn.Identity())
    model.train()
    batches = [torch.randn(2, 1, 3, generator=g) for _ in range(3)]  # [batch, seq, in]
    hs = collect_hessians(model, [*batches[:2], torch.full((2, 1, 3), float("nan"))],
                          ["0", "2"], num_samples=3)  # reached within batch 2
    assert sorted(hs) == ["0", "2"] and model.training  # the third batch was never run
    x0 = np.concatenate([b.double().numpy().reshape(-1, 3) for b in batches[:2]])  # [4, 3]
    np.testing.assert_allclose(hs["0"].numpy(), x0.T @ x0 / 4, rtol=1e-12)
    with torch.no_grad():
        x2 = torch.relu(model[0](torch.cat(batches[:2]))).double().numpy().reshape(-1, 4)
    np.testing.assert_allclose(hs["2"].numpy(), x2.T @ x2 / 4, rtol=1e-6)
    all3 = collect_hessians(model.eval(), batches, ["0", "3"])  # "3" is not a Linear: skipped
    x = np.concatenate([b.double().numpy().reshape(-1, 3) for b in batches])
    assert sorted(all3) == ["0"] and not model.training
    np.testing.assert_allclose(all3["0"].numpy(), x.T @ x / 6, rtol=1e-12)
    assert not model[0]._forward_pre_hooks  # the hooks are removed


def test_a_batch_the_model_cannot_take_is_named():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(BadInputError) as err:
        collect_hessians(model, [torch.zeros(2, 3), torch.zeros(2, 5)], ["0"])
    assert str(err.value).startswith(
        "calibration batch 1 (tensor [2, 5]) does not run through the model: RuntimeError:")


def _layer(seed=11, n_in=48, x_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, n_in, generator=g)
    x = torch.randn(200, n_in, generator=g) * torch.linspace(0.2, 3.0, n_in) * x_scale
    return w, x


def test_the_defaults_are_damping_one_percent_in_natural_order():
    """No options: damping 0.01 and columns in their own order (the input scales grow with the
    column index, so ordering by H_jj would reverse them)."""
    w, x = _layer()
    rtn = quantize_weight_int8(w)
    h = hessian(x)
    s, z = _per_element(rtn, tuple(w.shape))
    expected = _reference(w.numpy(), h.numpy(), s, z, -127, 127, 0.01, False)
    result = gptq_quantize(w, h, rtn)
    assert result.qweight.data.dtype == torch.int8 and result.used == "gptq"
    assert np.array_equal(result.qweight.data.numpy(), expected)
    # and the other choices really give other weights here
    assert not np.array_equal(expected, _reference(w.numpy(), h.numpy(), s, z, -127, 127, 1.01,
                                                   False))
    assert not np.array_equal(expected, _reference(w.numpy(), h.numpy(), s, z, -127, 127, 0.01,
                                                   True))


def test_a_float32_hessian_is_taken_in_float64():
    w, x = _layer(seed=4)
    rtn = quantize_weight_int8(w)
    h32 = hessian(x).float()
    got = gptq_quantize(w, h32, rtn, damping=0.05)
    want = gptq_quantize(w, h32.double(), rtn, damping=0.05)
    assert torch.equal(got.qweight.data, want.qweight.data)
    assert (got.error, got.rtn_error) == (want.error, want.rtn_error)


def test_a_dead_input_counts_as_one_in_the_damping_mean():
    """Correlated inputs of ~0.1 (H_jj ~ 0.01) and one dead input: its H_jj = 1 is most of the
    mean of the diagonal, so the damping (and the weight) depends on that value being 1."""
    g = torch.Generator().manual_seed(8)
    w = torch.randn(64, 16, generator=g)
    x = (torch.randn(200, 3, generator=g) @ torch.randn(3, 16, generator=g)
         + 0.1 * torch.randn(200, 16, generator=g)) * 0.1
    x[:, 2] = 0.0
    rtn = quantize_weight_int8(w, "asymmetric")
    h = hessian(x)
    s, z = _per_element(rtn, tuple(w.shape))
    got = gptq_quantize(w, h, rtn, damping=0.05).qweight.data.numpy()
    args = (w.numpy(), h.numpy(), s, z, -128, 127, 0.05, False)
    assert np.array_equal(got, _reference(*args))
    assert not np.array_equal(got, _reference(*args, dead_value=2.0))  # it matters here


def test_symmetric_weights_are_clamped_at_minus_127():
    """Correlated inputs feed enough error forward to push one value past -127: it is clamped
    there, never to -128 (the symmetric range vLLM's kernels assume)."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 16, generator=g)
    x = torch.randn(64, 4, generator=g) @ torch.randn(4, 16, generator=g) \
        + 0.05 * torch.randn(64, 16, generator=g)
    rtn = quantize_weight_int8(w, "symmetric", "per_tensor")
    h = hessian(x)
    s, z = _per_element(rtn, tuple(w.shape))
    got = gptq_quantize(w, h, rtn).qweight.data.numpy()
    expected = _reference(w.numpy(), h.numpy(), s, z, -127, 127, 0.01, False)
    assert np.array_equal(got, expected) and int(got.min()) == -127
    assert not np.array_equal(expected, _reference(w.numpy(), h.numpy(), s, z, -128, 127, 0.01,
                                                   False))  # the clamp binds here


def test_rtn_is_kept_where_gptq_would_be_worse():
    """Damping 1.0 on inputs whose scales span four orders of magnitude: the GPTQ weight of
    the reference has a larger layer error than RTN, so RTN is returned with its own error."""
    g = torch.Generator().manual_seed(8)
    w = torch.randn(4, 8, generator=g)
    x = torch.randn(6, 8, generator=g) * torch.logspace(-2, 2, 8)
    rtn = quantize_weight_int8(w, "symmetric", "per_tensor")
    h = hessian(x)
    s, z = _per_element(rtn, tuple(w.shape))
    h64, w64 = h.numpy(), w.double().numpy()

    def layer_error(q):
        d = w64 - ((q.astype(np.float32) - z.astype(np.float32)) * s.astype(np.float32))
        return float(np.trace(d @ h64 @ d.T))

    gptq_ints = _reference(w.numpy(), h64, s, z, -127, 127, 1.0, False)
    assert layer_error(gptq_ints) > layer_error(rtn.data.numpy())
    result = gptq_quantize(w, h, rtn, damping=1.0)
    assert result.qweight is rtn and result.used == "rtn"
    assert result.error == result.rtn_error
    assert result.rtn_error == pytest.approx(layer_error(rtn.data.numpy()), rel=1e-9)


def test_collect_hessians_stops_at_exactly_num_samples():
    """Batches of 2 and num_samples=4: the second batch reaches it, the third is never run."""
    g = torch.Generator().manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    batches = [torch.randn(2, 3, generator=g) for _ in range(2)]
    hs = collect_hessians(model, [*batches, torch.full((2, 3), float("nan"))], ["0"],
                          num_samples=4)
    x = torch.cat(batches).double().numpy()
    np.testing.assert_allclose(hs["0"].numpy(), x.T @ x / 4, rtol=1e-12)


class _KeywordCall(torch.nn.Module):
    """Calls ``a`` with a positional input and ``b`` with a keyword one (its pre-hook sees no
    positional arguments)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.b(input=self.a(x))


def test_collect_hessians_skips_a_layer_called_with_keywords_and_a_model_without_weights():
    hs = collect_hessians(_KeywordCall(), [torch.ones(2, 3)], ["a", "b"])
    assert sorted(hs) == ["a"] and hs["a"].tolist() == [[1.0] * 3] * 3
    # no parameters at all (nothing to quantize): the data still runs, on the CPU
    assert collect_hessians(torch.nn.Sequential(torch.nn.ReLU()), [torch.ones(2, 3)], []) == {}


def test_act_order_keeps_the_natural_order_among_equal_diagonals():
    """Every H_jj equal: act_order's stable sort leaves the columns in their own order."""
    w, x = _layer(seed=3, n_in=24)
    h = hessian(x)
    h += torch.diag(float(torch.diagonal(h).max()) + 1.0 - torch.diagonal(h))  # diag all equal
    assert len(set(torch.diagonal(h).tolist())) == 1
    rtn = quantize_weight_int8(w)
    s, z = _per_element(rtn, tuple(w.shape))
    got = gptq_quantize(w, h, rtn, act_order=True).qweight.data.numpy()
    assert np.array_equal(got, _reference(w.numpy(), h.numpy(), s, z, -127, 127, 0.01, False))
