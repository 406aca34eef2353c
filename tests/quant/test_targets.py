"""Accuracy targets: the fewest sensitive layers go back to float; unmeetable targets fail
as bad_config with the best value achieved."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mono_quant import BadConfigError, QuantConfig, quantize_model
from mono_quant.quant.modules import QuantLinear


def _model_with_one_fragile_layer():
    """Four linears; the third sees inputs with a huge outlier channel that its weight then
    ignores, so a static per-tensor activation scale wastes the int8 range on it: that layer
    alone decides the output error."""
    torch.manual_seed(0)
    layers = [nn.Linear(32, 32) for _ in range(4)]
    with torch.no_grad():
        layers[2].weight[:, 0] = 0.0

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.l0, self.l1, self.l2, self.l3 = layers

        def forward(self, x):
            h = torch.relu(self.l1(torch.relu(self.l0(x))))
            h = h * torch.cat([torch.full((1,), 300.0), torch.ones(31)])
            return self.l3(torch.relu(self.l2(h)))

    return Net().eval()


DATA = [torch.randn(16, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def test_target_keeps_the_sensitive_layer_in_float():
    model = _model_with_one_fragile_layer()
    _, plain = quantize_model(model, QuantConfig(mode="static"), DATA, progress=False)
    assert plain.metrics["output_cosine"] < 0.999
    qmodel, info = quantize_model(model, QuantConfig(mode="static",
                                                     target={"output_cosine": 0.999}),
                                  DATA, progress=False)
    record = info.metrics["accuracy_target"]
    assert record["excluded_layers"] == ["l2"]
    assert record["achieved"]["output_cosine"] >= 0.999
    assert info.metrics["output_cosine"] == record["achieved"]["output_cosine"]
    assert type(qmodel.l2) is nn.Linear and isinstance(qmodel.l1, QuantLinear)
    assert info.selected_layers == ["l0", "l1", "l3"] and info.metrics["layers_quantized"] == 3
    assert min(record["layer_output_sqnr_db"], key=record["layer_output_sqnr_db"].get) == "l2"
    assert record["evaluations"] <= 3  # a binary search over 4 layers, not one try per subset


def test_a_met_target_excludes_nothing():
    model = _model_with_one_fragile_layer()
    _, info = quantize_model(model, QuantConfig(mode="dynamic", target={"output_cosine": 0.9}),
                             DATA, progress=False)
    assert info.metrics["accuracy_target"]["excluded_layers"] == []
    assert info.metrics["layers_quantized"] == 4


def test_unmeetable_target_is_bad_config_with_the_best_achieved():
    model = _model_with_one_fragile_layer()
    with pytest.raises(BadConfigError, match=r"target: output_sqnr_db >= 400 cannot be met: "
                                             r"the best achieved.*is output_sqnr_db=\d"):
        quantize_model(model, QuantConfig(mode="static", target={"output_sqnr_db": 400}),
                       DATA, progress=False)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        pytest.param({"accuracy": 0.9}, "unknown metric 'accuracy'", id="metric"),
        pytest.param({"output_cosine": 1.5}, "target.output_cosine=1.5", id="cosine-range"),
        pytest.param({}, "target: empty", id="empty"),
        pytest.param("high", "target='high'", id="type"),
    ],
)
def test_bad_targets_name_the_option(target, message):
    with pytest.raises(BadConfigError, match=message):
        QuantConfig(mode="static", target=target)


def test_target_needs_data_and_perplexity_needs_text():
    with pytest.raises(BadConfigError, match="target=.*needs calibration or evaluation data"):
        quantize_model(_model_with_one_fragile_layer(),
                       QuantConfig(target={"output_cosine": 0.99}), progress=False)
    with pytest.raises(BadConfigError, match="perplexity_increase needs an evaluation text"):
        quantize_model(_model_with_one_fragile_layer(),
                       QuantConfig(target={"perplexity_increase": 0.1}), DATA, progress=False)


def test_target_round_trips_through_the_config_dict():
    cfg = QuantConfig(mode="dynamic", target={"output_sqnr_db": 30, "output_cosine": 0.99})
    assert cfg.to_dict()["target"] == {"output_cosine": 0.99, "output_sqnr_db": 30.0}
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert hash(cfg) == hash(QuantConfig.from_dict(cfg.to_dict()))
