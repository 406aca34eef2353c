"""The int8 ranges are facts of the format, written here as numbers, not read from the library.

vLLM's int8 kernels assume symmetric weights in ``[-127, 127]`` (zero point 0, so ``-q`` is
always representable); the asymmetric scheme uses the full ``[-128, 127]``. The runtime range
check in ``quantize_model`` takes its bounds from ``qrange``, so it cannot notice a wrong
``qrange``: these tests pin the bounds themselves, on every observer (the clipping ones, MSE
and percentile, are the ones that actually reach the bounds by clamping) and on static
activations.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mono_quant import QuantConfig, make_observer, quantize_model, quantize_with_qparams
from mono_quant.quant.primitives import fake_quantize
from mono_quant.quant.quantize import quantize_weight
from mono_quant.quant.specs import qrange

#: scheme -> (lowest, highest) int8 value it may use. Hard-coded on purpose.
BOUNDS = {"symmetric": (-127, 127), "asymmetric": (-128, 127)}
SCHEMES = [pytest.param(s, id=s[:4]) for s in BOUNDS]
OBSERVERS = ["minmax", "moving_average", "percentile", "mse"]


def _weight() -> torch.Tensor:
    """(8, 4096) Gaussian rows with their negation appended: both ends of each row have the
    same magnitude, so a symmetric range is reached (or clamped to) at both ends, and the
    clipping observers (MSE, percentile) do clip the tails of a Gaussian."""
    g = torch.randn(8, 2048)
    return torch.cat([g, -g], dim=1)


def test_qrange_is_the_documented_int8_range():
    assert qrange("symmetric") == (-127, 127)
    assert qrange("asymmetric") == (-128, 127)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("observer", OBSERVERS)
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_weights_reach_exactly_the_int8_bounds(observer, scheme, granularity):
    config = QuantConfig(scheme=scheme, granularity=granularity, weight_observer=observer)
    qw = quantize_weight(_weight(), config, "fc.weight")
    lo, hi = BOUNDS[scheme]
    assert qw.data.dtype == torch.int8
    # The negative outlier sits on (or is clamped to) the low end, never one step beyond; the
    # positive one on the high end (asymmetric min-max may land one below it: the zero point
    # is rounded, so 4.0 can map to 126.5 - 0.5).
    assert int(qw.data.min()) == lo
    assert int(qw.data.max()) in ((hi - 1, hi) if scheme == "asymmetric" else (hi,))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("observer", "kwargs"), [("percentile", {"percentile": 99.0}),
                                                  ("mse", {})], ids=["percentile", "mse"])
def test_clipping_observers_clamp_every_row_to_the_bounds(observer, kwargs, scheme):
    w = _weight()
    obs = make_observer(observer, scheme, "per_channel", **kwargs)
    obs.update(w)
    scale, zp = obs.compute_qparams()
    qw = quantize_with_qparams(w, scale, zp, scheme, "per_channel")
    lo, hi = BOUNDS[scheme]
    assert qw.data.amin(dim=1).tolist() == [lo] * 8
    assert qw.data.amax(dim=1).tolist() == [hi] * 8
    # the range was clipped (in most rows: MSE keeps the full range where that is best), so
    # the clamp at both ends was exercised
    assert int((qw.dequantize().amax(dim=1) < w.amax(dim=1)).sum()) >= 4
    assert int((qw.dequantize().amin(dim=1) > w.amin(dim=1)).sum()) >= 4


@pytest.mark.parametrize("scheme", SCHEMES)
def test_static_activations_saturate_at_the_bounds(scheme):
    x = torch.tensor([-1000.0, -2.0, 0.0, 2.0, 1000.0])
    out = fake_quantize(x, torch.tensor([1.0]), torch.tensor([0], dtype=torch.int8), scheme)
    lo, hi = BOUNDS[scheme]
    assert out.tolist() == [float(lo), -2.0, 0.0, 2.0, float(hi)]


@pytest.mark.parametrize("act_scheme", SCHEMES)
@pytest.mark.parametrize("observer", OBSERVERS)
def test_static_layer_clamps_out_of_range_inputs(observer, act_scheme):
    """Calibrate on small inputs, then feed a huge one: the layer sees it clamped to the end
    of the int8 range of its activation scheme (recovered as ``round(x / scale) + zp``)."""
    model = nn.Sequential(nn.Linear(16, 4))
    calib = [torch.randn(8, 16) for _ in range(3)]
    config = QuantConfig(mode="static", activation_observer=observer,
                         activation_scheme=act_scheme)
    qmodel, _ = quantize_model(model, config, calib, progress=False)
    layer = qmodel[0]
    x = torch.zeros(1, 16)
    x[0, 0], x[0, 1] = -1e4, 1e4
    xq, _ = layer._prepare(x)
    scale, zp = float(layer.input_scale), int(layer.input_zero_point)
    q = torch.round(xq / scale) + zp
    lo, hi = BOUNDS[act_scheme]
    assert (int(q[0, 0]), int(q[0, 1])) == (lo, hi)
