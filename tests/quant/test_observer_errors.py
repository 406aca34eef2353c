"""Observer defaults, validation messages and bookkeeping, written out in full."""

from __future__ import annotations

import pytest
import torch

from mono_quant import (
    BadConfigError,
    BadInputError,
    MinMaxObserver,
    MSEObserver,
    PerChannel,
    PerGroup,
    PerTensor,
    quantize_with_qparams,
)


def test_defaults():
    obs = MSEObserver()
    assert (obs.scheme, obs.granularity, obs.grid, obs.max_shrink) == (
        "symmetric", PerTensor(), 100, 0.8)
    base = MinMaxObserver()
    assert (base.min_val, base.max_val, base.shape, base.count) == (None, None, None, 0)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        pytest.param(torch.ones(3, dtype=torch.int32),
                     "MinMaxObserver.update: expected a floating-point tensor, got torch.int32",
                     id="int"),
        pytest.param([1.0, 2.0], "MinMaxObserver.update: expected a floating-point tensor, got "
                     "list", id="list"),
        pytest.param(torch.ones(0), "MinMaxObserver.update: got an empty tensor", id="empty"),
    ],
)
def test_update_rejects(x, message):
    with pytest.raises(BadInputError) as err:
        MinMaxObserver().update(x)
    assert str(err.value) == message


def test_one_element_is_enough():
    obs = MinMaxObserver()
    obs.update(torch.tensor([2.0]))
    assert float(obs.max_val) == 2.0


def test_granularity_errors_name_the_observed_tensor():
    with pytest.raises(BadInputError, match=r"^observed tensor: input size 5"):
        MinMaxObserver(granularity=PerGroup(2)).update(torch.ones(3, 5))


def test_channel_count_must_not_change():
    obs = MinMaxObserver(granularity=PerChannel(0))
    obs.update(torch.ones(4, 2))
    with pytest.raises(BadInputError) as err:
        obs.update(torch.ones(5, 2))
    assert str(err.value) == (
        "MinMaxObserver.update: got 5 channel(s)/group(s), earlier updates had 4")


def test_count_accumulates_elements_per_row():
    obs = MinMaxObserver(granularity=PerChannel(0))
    obs.update(torch.ones(4, 3))
    obs.update(torch.ones(4, 5))
    assert obs.count == 8


def test_compute_qparams_errors():
    with pytest.raises(BadInputError) as err:
        MSEObserver().compute_qparams()
    assert str(err.value) == (
        "MSEObserver: no data observed; call update() (run calibration) first")
    obs = MinMaxObserver()
    obs.update(torch.tensor([1.0, float("inf")]))
    with pytest.raises(BadInputError) as err:
        obs.compute_qparams()
    assert str(err.value) == (
        "MinMaxObserver: observed NaN or infinite values; qparams need finite data")


def test_qparams_dtypes_and_shapes():
    obs = MinMaxObserver("asymmetric", PerChannel(0))
    obs.update(torch.randn(3, 4))
    scale, zp = obs.compute_qparams()
    assert (scale.dtype, zp.dtype) == (torch.float32, torch.int8)
    assert tuple(scale.shape) == tuple(zp.shape) == (3, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"grid": 0}, "grid=0: expected a positive integer", id="grid-0"),
        pytest.param({"grid": 2.0}, "grid=2.0: expected a positive integer", id="grid-float"),
        pytest.param({"max_shrink": 1.0}, "max_shrink=1.0: expected a number in [0, 1)",
                     id="shrink-1"),
        pytest.param({"max_shrink": -0.1}, "max_shrink=-0.1: expected a number in [0, 1)",
                     id="shrink-neg"),
    ],
)
def test_mse_config_errors(kwargs, message):
    with pytest.raises(BadConfigError) as err:
        MSEObserver(**kwargs)
    assert str(err.value) == message


def test_mse_config_edges_are_allowed():
    assert MSEObserver(grid=1).grid == 1
    assert MSEObserver(max_shrink=0.0).max_shrink == 0.0


def test_mse_sums_the_error_over_every_chunk_of_a_long_row():
    """A row longer than one kernel chunk (2**20 values): the bulk in the first chunk decides
    (range 6 wins: 1M values round more finely), the outlier sits in the last one."""
    x = torch.cat([torch.linspace(-1.0, 1.0, 1 << 20), torch.tensor([0.0, 0.0, 0.0, 12.0])])
    obs = MSEObserver("symmetric", grid=1, max_shrink=0.5)
    obs.update(x)
    assert float(obs.max_val) == 6.0


def test_quantize_with_qparams_checks_both_shapes_and_names_the_tensor():
    x = torch.randn(4, 8)
    scale, zp = torch.ones(4, 1), torch.zeros(4, 1, dtype=torch.int8)
    with pytest.raises(BadInputError) as err:
        quantize_with_qparams(x, scale, zp[:2], name="fc.weight")
    assert str(err.value) == (
        "fc.weight: scale (4, 1) / zero point (2, 1) do not match per_channel qparams of shape "
        "(4, 1) for a tensor of shape (4, 8)")
    with pytest.raises(BadInputError, match=r"^tensor: contains NaN"):
        quantize_with_qparams(x, torch.full((4, 1), float("nan")), zp)
    qt = quantize_with_qparams(x, torch.ones(4, 2), torch.zeros(4, 2, dtype=torch.int8),
                               granularity="per_group", group_size=4)
    assert qt.granularity == PerGroup(4)


class _FailingRange(MinMaxObserver):
    """A subclass whose range computation fails after the input was checked."""

    def _batch_range(self, rows):
        raise RuntimeError("range failed")


def test_a_failed_first_update_leaves_no_data_observed():
    obs = _FailingRange()
    with pytest.raises(RuntimeError, match="range failed"):
        obs.update(torch.ones(3))
    with pytest.raises(BadInputError) as err:
        obs.compute_qparams()
    assert str(err.value) == (
        "_FailingRange: no data observed; call update() (run calibration) first")
