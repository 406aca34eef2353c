"""GPTQ: never worse than round-to-nearest on each layer's reconstruction error, strictly
better on ordinary inputs, deterministic, and only with calibration data."""

from __future__ import annotations

import pytest
import torch

from mono_quant import BadConfigError, QuantConfig, demo_models, quantize_model
from mono_quant.quant.gptq import gptq_quantize, hessian, reconstruction_error
from mono_quant.quant.primitives import dequantize, quantize_weight_int8


def _inputs(kind: str, n: int, d: int, g: torch.Generator) -> torch.Tensor:
    if kind == "random":
        return torch.randn(n, d, generator=g)
    if kind == "correlated":  # a few latent factors: strongly correlated input channels
        return torch.randn(n, 4, generator=g) @ torch.randn(4, d, generator=g) \
            + 0.01 * torch.randn(n, d, generator=g)
    if kind == "ill-conditioned":  # channel scales over 6 orders of magnitude, some dead
        x = torch.randn(n, d, generator=g) * torch.logspace(-3, 3, d)
        x[:, :3] = 0.0
        return x
    raise ValueError(kind)


def _layer_error(w, x, qt):
    return reconstruction_error(w, dequantize(qt, torch.float64), hessian(x))


KINDS = ["random", "correlated", "ill-conditioned"]
GRANS = [("per_channel", None), ("per_tensor", None), ("per_group", 16)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("gran", "group"), GRANS, ids=[g for g, _ in GRANS])
@pytest.mark.parametrize("act_order", [False, True], ids=["natural", "act-order"])
def test_gptq_never_worse_than_rtn(kind, gran, group, act_order):
    g = torch.Generator().manual_seed(hash((kind, gran, act_order)) % 1000)
    w = torch.randn(24, 64, generator=g) * 0.05
    x = _inputs(kind, 512, 64, g)
    rtn = quantize_weight_int8(w, "symmetric", gran, group_size=group)
    result = gptq_quantize(w, hessian(x), rtn, block_size=16, act_order=act_order)
    rtn_error = _layer_error(w, x, rtn)
    assert result.rtn_error == pytest.approx(rtn_error, rel=1e-9)
    assert _layer_error(w, x, result.qweight) <= rtn_error * (1 + 1e-12)
    assert torch.equal(result.qweight.scale, rtn.scale)  # same layout as RTN


# iid inputs (H ~ I) leave GPTQ little to compensate; correlated inputs, as real activations
# are, leave it a lot
@pytest.mark.parametrize(("kind", "ratio"), [("random", 0.97), ("correlated", 0.5)],
                         ids=["random", "correlated"])
def test_gptq_is_clearly_better_on_ordinary_inputs(kind, ratio):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(32, 96, generator=g) * 0.05
    x = _inputs(kind, 1024, 96, g)
    rtn = quantize_weight_int8(w)
    result = gptq_quantize(w, hessian(x), rtn)
    assert result.used == "gptq"
    assert result.error < ratio * _layer_error(w, x, rtn)


def test_gptq_is_deterministic_and_block_size_does_not_change_the_answer():
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(16, 48, generator=g), torch.randn(300, 48, generator=g)
    rtn = quantize_weight_int8(w)
    a = gptq_quantize(w, hessian(x), rtn, block_size=8).qweight.data
    b = gptq_quantize(w, hessian(x), rtn, block_size=8).qweight.data
    c = gptq_quantize(w, hessian(x), rtn, block_size=48).qweight.data
    assert torch.equal(a, b)
    assert float((a != c).float().mean()) < 0.01  # only float64 rounding differs


def test_gptq_in_quantize_model_lowers_output_error_and_records_it():
    model = demo_models.mlp(64, 128, 16)
    data = demo_models.vector_batches(n=4, features=64)
    _, rtn = quantize_model(model, QuantConfig(), data, progress=False)
    _, gptq = quantize_model(model, QuantConfig(weight_algorithm="gptq"), data, progress=False)
    _, again = quantize_model(model, QuantConfig(weight_algorithm="gptq"), data, progress=False)
    assert gptq.metrics["gptq"]["layers_gptq"] == 3
    assert gptq.metrics["output_sqnr_db"] > rtn.metrics["output_sqnr_db"] + 0.5
    assert gptq.metrics["output_sqnr_db"] == again.metrics["output_sqnr_db"]


def test_gptq_without_calibration_is_bad_config():
    with pytest.raises(BadConfigError, match="weight_algorithm='gptq' needs calibration_data"):
        quantize_model(demo_models.mlp(), QuantConfig(weight_algorithm="gptq"), progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"weight_algorithm": "awq"}, "weight_algorithm='awq'", id="algorithm"),
        pytest.param({"gptq_damping": 0}, "gptq_damping=0", id="damping"),
        pytest.param({"gptq_block_size": 0}, "gptq_block_size=0", id="block"),
        pytest.param({"gptq_act_order": "yes"}, "gptq_act_order='yes'", id="act-order"),
    ],
)
def test_bad_gptq_options_name_the_option(kwargs, message):
    with pytest.raises(BadConfigError, match=message):
        QuantConfig(**kwargs)
