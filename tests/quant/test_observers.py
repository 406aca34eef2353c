from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.ao.quantization import observer as ao

from mono_quant import (
    BadConfigError,
    BadInputError,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    PerChannel,
    PerTensor,
    dequantize,
    make_observer,
    quantize_weight_int8,
    quantize_with_qparams,
)

TINY = torch.finfo(torch.float32).tiny
SCHEMES = [pytest.param("symmetric", id="sym"), pytest.param("asymmetric", id="asym")]


def _torch_ao(cls, scheme, per_channel, **kw):
    """torch.ao's observer with our int8 ranges and our scale floor."""
    if per_channel:
        qscheme = torch.per_channel_symmetric if scheme == "symmetric" else torch.per_channel_affine
        kw["ch_axis"] = 0
    else:
        qscheme = torch.per_tensor_symmetric if scheme == "symmetric" else torch.per_tensor_affine
    qmin = -127 if scheme == "symmetric" else -128
    return cls(dtype=torch.qint8, qscheme=qscheme, quant_min=qmin, quant_max=127, eps=TINY, **kw)


def _batches(n=5):
    return [torch.randn(16, 32) * (i + 1) + i for i in range(n)]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_minmax_matches_torch_ao(scheme, per_channel):
    ours = MinMaxObserver(scheme, PerChannel(0) if per_channel else PerTensor())
    theirs = _torch_ao(ao.PerChannelMinMaxObserver if per_channel else ao.MinMaxObserver,
                       scheme, per_channel)
    for x in _batches():
        ours.update(x)
        theirs(x)
    scale, zp = ours.compute_qparams()
    ref_scale, ref_zp = theirs.calculate_qparams()
    assert torch.equal(scale.reshape(-1), ref_scale.reshape(-1))
    assert torch.equal(zp.reshape(-1).to(torch.int64), ref_zp.reshape(-1).to(torch.int64))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_moving_average_matches_torch_ao(scheme):
    ours = MovingAverageMinMaxObserver(scheme, averaging_constant=0.1)
    theirs = _torch_ao(ao.MovingAverageMinMaxObserver, scheme, False, averaging_constant=0.1)
    for x in _batches():
        ours.update(x)
        theirs(x)
    scale, zp = ours.compute_qparams()
    ref_scale, ref_zp = theirs.calculate_qparams()
    assert torch.allclose(scale.reshape(-1), ref_scale.reshape(-1), rtol=1e-6, atol=0)
    assert int(zp) == int(ref_zp)


def test_minmax_observer_agrees_with_fused_weight_quantizer():
    w = torch.randn(64, 128)
    for scheme in ("symmetric", "asymmetric"):
        obs = MinMaxObserver(scheme, PerChannel(0))
        obs.update(w)
        via_observer = quantize_with_qparams(w, *obs.compute_qparams(), scheme)
        fused = quantize_weight_int8(w, scheme)
        assert torch.equal(via_observer.data, fused.data)
        assert torch.equal(via_observer.scale, fused.scale)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_percentile_single_update_is_exact_order_statistic(scheme):
    x = torch.randn(10_000)
    obs = PercentileObserver(scheme, percentile=99.0)
    obs.update(x)
    v = x.numpy().astype(np.float64)
    if scheme == "symmetric":
        hi = np.percentile(np.abs(v), 99.0, method="inverted_cdf")
        assert float(obs.max_val) == pytest.approx(hi, abs=0) and float(obs.min_val) == -hi
    else:
        assert float(obs.max_val) == np.percentile(v, 99.0, method="inverted_cdf")
        assert float(obs.min_val) == np.percentile(v, 1.0, method="inverted_cdf")


def test_percentile_averages_batches_by_size():
    a, b = torch.randn(1000), torch.randn(3000) * 2
    obs = PercentileObserver("asymmetric", percentile=99.0)
    obs.update(a)
    obs.update(b)
    pa = np.percentile(a.numpy(), 99.0, method="inverted_cdf")
    pb = np.percentile(b.numpy(), 99.0, method="inverted_cdf")
    assert float(obs.max_val) == pytest.approx(0.25 * pa + 0.75 * pb, rel=1e-6)


def test_percentile_clips_outliers_minmax_does_not():
    x = torch.randn(100_000)
    x[0] = 1000.0
    p, m = PercentileObserver(percentile=99.9), MinMaxObserver()
    p.update(x)
    m.update(x)
    assert float(p.max_val) < 5.0 and float(m.max_val) == 1000.0


def _mse(x, scale, zp, scheme, granularity):
    qt = quantize_with_qparams(x, scale, zp, scheme, granularity)
    return (dequantize(qt) - x).square().sum(dim=1)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("heavy_tails", [False, True], ids=["gaussian", "laplace"])
def test_mse_never_worse_than_minmax(scheme, heavy_tails):
    x = torch.randn(32, 4096)
    if heavy_tails:
        x = torch.distributions.Laplace(0.0, 1.0).sample((32, 4096))
    gran = PerChannel(0)
    mse, mm = MSEObserver(scheme, gran), MinMaxObserver(scheme, gran)
    mse.update(x)
    mm.update(x)
    err_mse = _mse(x, *mse.compute_qparams(), scheme, gran)
    err_mm = _mse(x, *mm.compute_qparams(), scheme, gran)
    assert bool((err_mse <= err_mm).all())
    if heavy_tails:  # clipping the tails pays off (by ~1.5-2.5% at 8 bits: rounding is fine)
        assert float(err_mse.sum()) < 0.99 * float(err_mm.sum())


def test_mse_picks_the_grid_minimum():
    x = torch.randn(4, 256)
    x[:, 3] = 12.0
    obs = MSEObserver("symmetric", PerChannel(0), grid=20, max_shrink=0.5)
    obs.update(x)
    best = _mse(x, *obs.compute_qparams(), "symmetric", PerChannel(0))
    amax = x.abs().amax(dim=1, keepdim=True)
    for i in range(21):  # brute force over the same grid
        scale = torch.clamp(amax * (1 - 0.5 * i / 20) / 127.0, min=TINY)
        err = _mse(x, scale, torch.zeros_like(scale, dtype=torch.int8), "symmetric", PerChannel(0))
        assert bool((best <= err).all())


def test_make_observer_allow_list():
    assert isinstance(make_observer("mse"), MSEObserver)
    with pytest.raises(BadConfigError, match="observer 'histo' is unknown"):
        make_observer("histo")


def test_errors():
    with pytest.raises(BadInputError, match="no data observed"):
        MinMaxObserver().compute_qparams()
    obs = MinMaxObserver(granularity=PerChannel(0))
    obs.update(torch.randn(4, 8))
    with pytest.raises(BadInputError, match="got 5 channel"):
        obs.update(torch.randn(5, 8))
    with pytest.raises(BadConfigError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=0.0)
    with pytest.raises(BadConfigError, match="percentile"):
        PercentileObserver(percentile=20)


def test_percentile_of_a_small_batch_is_its_extreme():
    """On 10 values the 0.01th percentile has rank ceil(0.001) = 1: the minimum itself."""
    obs = PercentileObserver("asymmetric", percentile=99.99)
    obs.update(torch.arange(-5.0, 5.0))
    assert (float(obs.min_val), float(obs.max_val)) == (-5.0, 4.0)


@pytest.mark.parametrize(
    ("kwargs", "ok"),
    [
        pytest.param({"averaging_constant": 1.0}, True, id="ema-1"),
        pytest.param({"averaging_constant": 1.5}, False, id="ema-1.5"),
        pytest.param({"averaging_constant": -0.5}, False, id="ema-neg"),
    ],
)
def test_moving_average_constant_range(kwargs, ok):
    if ok:
        obs = MovingAverageMinMaxObserver(**kwargs)
        obs.update(torch.tensor([-1.0, 1.0]))
        obs.update(torch.tensor([-3.0, 2.0]))  # constant 1: the last batch wins
        assert (float(obs.min_val), float(obs.max_val)) == (-3.0, 2.0)
    else:
        with pytest.raises(BadConfigError, match="expected a number in \\(0, 1\\]"):
            MovingAverageMinMaxObserver(**kwargs)


def test_batch_ranges_are_averaged_by_size_at_both_ends():
    """Percentile 100 takes each batch's extremes; weights 2/8 and 6/8."""
    obs = PercentileObserver("asymmetric", percentile=100.0)
    obs.update(torch.tensor([-1.0, 2.0]))
    obs.update(torch.tensor([-5.0, 0.0, 0.0, 0.0, 0.0, 6.0]))
    assert (float(obs.min_val), float(obs.max_val)) == (0.25 * -1 + 0.75 * -5, 0.25 * 2 + 0.75 * 6)


@pytest.mark.parametrize(("percentile", "ok"), [(50.0, False), (50.5, True), (100.0, True),
                                                (100.5, False)])
def test_percentile_range_bounds(percentile, ok):
    if ok:
        assert PercentileObserver(percentile=percentile).percentile == percentile
    else:
        with pytest.raises(BadConfigError, match=r"expected a number in \(50, 100\]"):
            PercentileObserver(percentile=percentile)


def test_mse_searches_down_to_exactly_the_largest_shrink():
    """400k values in [-1, 1] and one at 12: the rounding error of the bulk outweighs clipping
    the outlier down to a range of about 3.9, so the best allowed range is the last grid point,
    exactly (1 - max_shrink) * 12, never one beyond it."""
    x = torch.cat([torch.linspace(-1.0, 1.0, 400_000), torch.tensor([12.0])])
    obs = MSEObserver("symmetric", grid=4, max_shrink=0.5)
    obs.update(x)
    assert float(obs.max_val) == 6.0 and float(obs.min_val) == -0.5


def test_unknown_observer_lists_the_allowed_ones():
    with pytest.raises(BadConfigError) as err:
        make_observer("histo")
    assert str(err.value) == (
        "observer 'histo' is unknown; expected one of minmax, moving_average, percentile, mse")


def test_mse_tie_keeps_the_wider_range():
    """A shrink of one float32 ulp (1.0 -> 1 - 2**-24) that gives the same float32 scale
    (1/127 both ways: they differ by half an ulp of the scale) has exactly the same error: the
    tie keeps the min-max range, 1.0 itself."""
    obs = MSEObserver("symmetric", grid=1, max_shrink=2.0**-24)
    obs.update(torch.tensor([-0.5, 0.25, 1.0]))
    assert (float(obs.min_val), float(obs.max_val)) == (-0.5, 1.0)
