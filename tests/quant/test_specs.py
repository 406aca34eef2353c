"""Granularity specs: the rows view, the scale shape and the persisted form, as documented.

Expected shapes are the ones of the table in ``quant/specs.py``, written out here.
"""

from __future__ import annotations

import pytest
import torch

from mono_quant import BadConfigError, BadInputError, PerChannel, PerGroup, PerTensor
from mono_quant.quant.specs import as_granularity, check_scheme


def test_to_dict_is_the_persisted_form():
    assert PerTensor().to_dict() == {"type": "per_tensor"}
    assert PerChannel().to_dict() == {"type": "per_channel", "axis": 0}
    assert PerChannel(-1).to_dict() == {"type": "per_channel", "axis": -1}
    assert PerGroup(64).to_dict() == {"type": "per_group", "group_size": 64}


@pytest.mark.parametrize(
    ("spec", "rows", "param"),
    [
        pytest.param(PerTensor(), (1, 24 * 64), (1,), id="per-tensor"),
        pytest.param(PerChannel(), (24, 64), (24, 1), id="per-channel"),
        pytest.param(PerGroup(16), (24 * 4, 16), (24, 4), id="per-group"),
    ],
)
def test_shapes_of_a_linear_weight(spec, rows, param):
    w = torch.arange(24 * 64, dtype=torch.float32).reshape(24, 64)
    r = spec.rows(w)
    assert tuple(r.shape) == rows
    assert spec.param_shape(w.shape) == param
    assert torch.equal(spec.from_rows(r, w.shape), w)
    # row i holds the elements sharing scale i, in memory order
    assert torch.equal(r[0], w.reshape(-1)[: rows[1]])


def test_per_channel_on_another_axis():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    spec = PerChannel(axis=-1)
    r = spec.rows(x)
    assert tuple(r.shape) == (4, 6)
    assert r[1].tolist() == [1.0, 5.0, 9.0, 13.0, 17.0, 21.0]  # every element with index 1 last
    assert spec.param_shape(x.shape) == (1, 1, 4)
    back = spec.from_rows(r, x.shape)
    assert torch.equal(back, x) and back.is_contiguous()
    assert PerChannel(axis=1).param_shape(x.shape) == (1, 3, 1)
    assert torch.equal(PerChannel(axis=1).from_rows(PerChannel(axis=1).rows(x), x.shape), x)


def test_conv_weight_is_grouped_along_its_flattened_input():
    w = torch.zeros(8, 4, 3, 3)  # input 4*3*3 = 36
    assert PerGroup(12).param_shape(w.shape) == (8, 3)
    assert tuple(PerGroup(12).rows(w).shape) == (24, 12)
    assert PerChannel().param_shape(w.shape) == (8, 1, 1, 1)


@pytest.mark.parametrize(
    ("spec", "shape", "message"),
    [
        pytest.param(PerChannel(2), (4, 5),
                     "w: per-channel axis 2 is out of range for a tensor with 2 dimension(s)",
                     id="axis-too-big"),
        pytest.param(PerChannel(-3), (4, 5),
                     "w: per-channel axis -3 is out of range for a tensor with 2 dimension(s)",
                     id="axis-too-small"),
        pytest.param(PerChannel(0), (), "w: per-channel axis 0 is out of range for a tensor "
                     "with 0 dimension(s)", id="scalar"),
        pytest.param(PerGroup(4), (8,), "w: per-group quantization needs a weight with at least "
                     "2 dimensions, got shape (8,)", id="1-d"),
        pytest.param(PerGroup(3), (2, 8), "w: input size 8 (shape (2, 8)) is not a multiple of "
                     "group_size=3; choose a group size that divides it or exclude this layer",
                     id="not-a-multiple"),
    ],
)
def test_shape_errors_name_the_tensor(spec, shape, message):
    with pytest.raises(BadInputError) as err:
        spec.rows(torch.zeros(shape), "w")
    assert str(err.value) == message


def test_param_shape_errors_say_tensor():
    with pytest.raises(BadInputError, match=r"^tensor: input size 8 \(shape \(2, 8\)\)"):
        PerGroup(3).param_shape(torch.Size([2, 8]))
    with pytest.raises(BadInputError, match=r"^tensor: per-channel axis 3 is out of range"):
        PerChannel(3).param_shape(torch.Size([2, 8]))


def test_axis_bounds_are_inclusive_of_valid_axes():
    x = torch.zeros(4, 5)
    assert PerChannel(1).param_shape(x.shape) == (1, 5)
    assert PerChannel(-2).param_shape(x.shape) == (4, 1)
    assert PerGroup(8).param_shape((2, 8)) == (2, 1)  # one group spanning the row


@pytest.mark.parametrize("size", [0, -4, True, 2.0, "8"], ids=["zero", "neg", "bool", "float",
                                                              "str"])
def test_group_size_must_be_a_positive_integer(size):
    with pytest.raises(BadConfigError, match=f"group_size={size!r}: expected a positive integer"):
        PerGroup(size)


def test_group_size_one_is_allowed():
    assert PerGroup(1).param_shape((2, 3)) == (2, 3)


def test_as_granularity():
    assert as_granularity("per_tensor") == PerTensor()
    assert as_granularity("per_channel") == PerChannel(0)
    assert as_granularity("per_group") == PerGroup(128)
    assert as_granularity("per_group", group_size=32) == PerGroup(32)
    spec = PerChannel(-1)
    assert as_granularity(spec) is spec
    with pytest.raises(BadConfigError, match=r"granularity='per_row': expected 'per_tensor'"):
        as_granularity("per_row")


def test_check_scheme():
    assert check_scheme("symmetric") == "symmetric"
    assert check_scheme("asymmetric") == "asymmetric"
    with pytest.raises(BadConfigError) as err:
        check_scheme("affine", "activation_scheme")
    assert str(err.value) == (
        "activation_scheme='affine': expected 'symmetric' or 'asymmetric'")


def test_default_tensor_name_in_messages():
    # callers that name no tensor get "tensor" (the docs' wording), from each entry point
    with pytest.raises(BadInputError, match=r"^tensor: per-channel axis 3 is out of range"):
        PerChannel(3).rows(torch.zeros(2, 8))
    with pytest.raises(BadInputError, match=r"^tensor: per-channel axis 3 is out of range"):
        PerChannel(3).from_rows(torch.zeros(2, 8), torch.Size([2, 8]))
    with pytest.raises(BadInputError, match=r"^tensor: input size 8 \(shape \(2, 8\)\)"):
        PerGroup(3).rows(torch.zeros(2, 8))
    with pytest.raises(BadConfigError) as err:
        check_scheme("affine")
    assert str(err.value) == "scheme='affine': expected 'symmetric' or 'asymmetric'"


def test_per_channel_of_a_vector():
    # a bias-like 1-D tensor: one channel per element
    x = torch.tensor([3.0, -1.0, 2.0])
    assert PerChannel().rows(x).tolist() == [[3.0], [-1.0], [2.0]]
    assert PerChannel().param_shape(x.shape) == (3,)
    assert torch.equal(PerChannel().from_rows(PerChannel().rows(x), x.shape), x)


def test_unknown_granularity_message_in_full():
    with pytest.raises(BadConfigError) as err:
        as_granularity("per_row")
    assert str(err.value) == (
        "granularity='per_row': expected 'per_tensor', 'per_channel' or 'per_group' "
        "(or a PerTensor/PerChannel/PerGroup spec)")
