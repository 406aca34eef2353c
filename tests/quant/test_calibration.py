from __future__ import annotations

import pytest
import torch
from torch import nn

from mono_quant import BadInputError, run_calibration


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.b = nn.Linear(8, 4)
        self.unused = nn.Linear(8, 4)

    def forward(self, x, y=None):
        return self.a(x) + (self.b(y) if y is not None else 0)


def test_tensor_items_record_the_layer_input_range():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    data = [torch.randn(4, 8) for _ in range(3)]
    result = run_calibration(model, data, layers=["0", "2"], progress=False)
    assert result.samples == 12 and result.batches == 3
    stacked = torch.cat(data)
    assert float(result.observers["0"].min_val) == float(stacked.min())
    assert float(result.observers["0"].max_val) == float(stacked.max())
    with torch.no_grad():
        relu_out = torch.relu(model[0](stacked))
    assert float(result.observers["2"].max_val) == pytest.approx(float(relu_out.max()), rel=1e-6)
    assert float(result.observers["2"].min_val) == 0.0


def test_tuple_and_dict_items():
    model = TwoInputs()
    x, y = torch.randn(2, 8), torch.randn(2, 8) * 5
    by_tuple = run_calibration(model, [(x, y)], layers=["a", "b"], progress=False)
    by_dict = run_calibration(model, [{"x": x, "y": y}], layers=["a", "b"], progress=False)
    for result in (by_tuple, by_dict):
        assert float(result.observers["b"].max_val) == float(y.max())
        assert result.samples == 2


def test_num_samples_stops_early_and_hooks_are_removed():
    model = nn.Sequential(nn.Linear(8, 8))
    model.train()
    seen = []

    def batches():
        for i in range(100):
            seen.append(i)
            yield torch.randn(4, 8)

    result = run_calibration(model, batches(), layers=["0"], num_samples=10, progress=False)
    assert result.samples == 12 and len(seen) == 3
    assert not model[0]._forward_pre_hooks
    assert model.training  # the training flag is restored


def test_layer_the_data_never_reaches_is_an_error():
    with pytest.raises(BadInputError, match="never reached layer"):
        run_calibration(TwoInputs(), [torch.randn(2, 8)], layers=["a", "unused"], progress=False)


def test_errors_name_the_problem():
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(BadInputError, match="no layer named 'nope'"):
        run_calibration(model, [torch.randn(1, 8)], layers=["nope"], progress=False)
    with pytest.raises(BadInputError, match="calibration data is empty"):
        run_calibration(model, [], layers=["0"], progress=False)
    with pytest.raises(BadInputError, match="calibration item of type str"):
        run_calibration(model, ["text"], layers=["0"], progress=False)


def test_progress_bar_can_be_quiet(capsys):
    model = nn.Sequential(nn.Linear(8, 8))
    run_calibration(model, [torch.randn(1, 8)], layers=["0"], progress=False)
    assert "calibrating" not in capsys.readouterr().err
    run_calibration(model, [torch.randn(1, 8)], layers=["0"], progress=True)
    assert "calibrating" in capsys.readouterr().err
