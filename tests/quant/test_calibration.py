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


def test_progress_bar_can_be_quiet(monkeypatch):
    """A bar is drawn on a terminal only (never into logs or pipes), and never when quiet."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    model = nn.Sequential(nn.Linear(8, 8))
    for progress, tty, shown in ((False, True, False), (True, True, True),
                                 (True, False, False)):
        stream = Terminal() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        run_calibration(model, [torch.randn(1, 8)], layers=["0"], progress=progress)
        assert ("calibrating" in stream.getvalue()) is shown, (progress, tty)


def test_a_batch_the_model_rejects_names_the_batch_and_its_shapes():
    model = nn.Sequential(nn.Linear(8, 4))
    model.train()
    data = [torch.randn(2, 8), torch.randn(2, 9)]
    with pytest.raises(BadInputError) as err:
        run_calibration(model, data, layers=["0"], progress=False)
    assert str(err.value) == (
        "calibration batch 1 (tensor [2, 9]) does not run through the model: RuntimeError: "
        "mat1 and mat2 shapes cannot be multiplied (2x9 and 8x4)"
    )
    assert type(err.value.__cause__) is RuntimeError
    assert not model[0]._forward_pre_hooks and model.training  # cleaned up on the way out


@pytest.mark.parametrize(
    ("item", "described", "error"),
    [
        ({"x": torch.randn(2, 8), "z": torch.randn(2, 8)},
         "dict {x: tensor [2, 8], z: tensor [2, 8]}",
         "TypeError: TwoInputs.forward() got an unexpected keyword argument 'z'"),
        ((torch.randn(2, 8), torch.randn(3, 8)), "tuple (tensor [2, 8], tensor [3, 8])",
         "RuntimeError: The size of tensor a (2) must match the size of tensor b (3)"),
    ],
    ids=["dict-unknown-key", "tuple-mismatched-batch"],
)
def test_rejected_dict_and_tuple_batches(item, described, error):
    with pytest.raises(BadInputError) as err:
        run_calibration(TwoInputs(), [item], layers=["a"], progress=False)
    assert str(err.value).startswith(
        f"calibration batch 0 ({described}) does not run through the model: {error}"
    ), str(err.value)


def test_out_of_memory_propagates_unchanged(monkeypatch):
    # No GPU here: a CUDA out-of-memory error is injected by replacing a layer's forward.
    # It must not become a BadInputError: the worker retries it with smaller batches.
    model = nn.Sequential(nn.Linear(8, 4))
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    def forward(_x):
        raise oom

    monkeypatch.setattr(model[0], "forward", forward)
    with pytest.raises(torch.OutOfMemoryError) as err:
        run_calibration(model, [torch.randn(2, 8)], layers=["0"], progress=False)
    assert err.value is oom
    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError  # one class since torch 2.5


def test_on_progress_after_each_batch():
    model = nn.Sequential(nn.Linear(8, 8))
    calls = []
    data = [torch.randn(4, 8) for _ in range(5)]
    run_calibration(model, data, layers=["0"], num_samples=10, progress=False,
                    on_progress=lambda *a: calls.append(a))
    # 10 samples are 3 batches of 4: the total counts the batches that will be used
    assert calls == [("calibrating", 1, 3), ("calibrating", 2, 3), ("calibrating", 3, 3)]
    calls.clear()
    run_calibration(model, iter(data), layers=["0"], progress=False,
                    on_progress=lambda *a: calls.append(a))
    assert calls == [("calibrating", i, 0) for i in range(1, 6)]  # no length: total 0
