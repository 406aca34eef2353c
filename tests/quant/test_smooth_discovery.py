"""SmoothQuant on unregistered models: pairs found from the model's structure and verified on
the model's output, whatever form that output takes; and the report's metrics written out."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mono_quant import QuantConfig
from mono_quant.quant.smoothquant import SmoothReport, smooth_model
from tests.quant.test_smooth_registry import Conv1D  # GPT-2's [in, out] linear, one copy


class _Residual(nn.Module):
    """``norm`` feeds ``lin`` only; ``post`` feeds ``head`` and the residual (not smoothable).
    ``wrap`` shapes the output: a tensor, a dict, a tuple, or an object with ``logits``."""

    def __init__(self, wrap: str, out_scale: float = 1.0) -> None:
        super().__init__()
        self.wrap, self.out_scale = wrap, out_scale
        self.norm, self.lin = nn.LayerNorm(6), nn.Linear(6, 6)
        self.post, self.head = nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x):
        h = x + self.lin(self.norm(x))
        p = self.post(h)
        y = (self.head(p) + p[..., :3]) * self.out_scale
        if self.wrap == "dict":
            return {"aux": 7, "hidden": y}
        if self.wrap == "tuple":
            return (None, y, torch.zeros(1))
        if self.wrap == "logits":
            return SimpleNamespace(logits=y, hidden=torch.zeros(1))
        return y


@pytest.mark.parametrize("wrap", ["tensor", "dict", "tuple", "logits"])
def test_discovered_pairs_are_verified_on_the_models_output(wrap):
    torch.manual_seed(0)
    model = _Residual(wrap).eval()
    with torch.no_grad():
        model.norm.weight[2] = 40.0
        model.post.weight[1] = 40.0
    batches = [torch.randn(4, 6) for _ in range(2)]
    report = smooth_model(model, batches, alpha=0.5, layers=["lin", "head"])
    assert (report.source, report.mappings, report.unmapped) == (
        "structure", [("norm", ("lin",))], ["head"])
    assert float(model.post.weight[1].detach()) == 40.0  # the rejected pair left as it was
    assert float(model.norm.weight[2].detach()) < 40.0


def test_each_pair_is_verified_alone_when_all_together_change_the_output():
    """The first try smooths every pair together; when that changes the output, each pair is
    tried alone and kept only if it alone leaves the output unchanged."""
    torch.manual_seed(1)
    model = _Residual("tensor").eval()
    batches = [torch.randn(4, 6)]
    before = model(batches[0]).detach()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    report = smooth_model(model, batches, alpha=0.5, layers=["head"])
    assert report.mappings == [] and report.unmapped == ["head"]
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(batches[0]).detach(), before)


def test_no_data_finds_no_pairs():
    model = _Residual("tensor")
    report = smooth_model(model, [], alpha=0.5, layers=["lin", "head"])
    assert (report.source, report.mappings, report.unmapped) == ("structure", [],
                                                                 ["lin", "head"])


def test_a_linear_read_by_two_sources_is_not_smoothed():
    """``lin`` reads ``norm``'s output in one batch and the raw input in another: no pair."""

    class Switch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.lin = nn.LayerNorm(4), nn.Linear(4, 4)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.lin(self.norm(x) if self.calls % 2 else x)

    report = smooth_model(Switch().eval(), [torch.randn(2, 4) for _ in range(2)], alpha=0.5,
                          layers=["lin"])
    assert report.mappings == [] and report.unmapped == ["lin"]


def test_training_mode_is_restored():
    model = _Residual("tensor").train()
    smooth_model(model, [torch.randn(4, 6)], alpha=0.5, layers=["lin"])
    assert model.training
    model.eval()
    smooth_model(model, [torch.randn(4, 6)], alpha=0.5, layers=["lin"])
    assert not model.training


def test_report_metrics_written_out():
    report = SmoothReport(mappings=[("a", ("b", "c"))], source="structure", unmapped=["z"],
                          strengths={"a": 0.5, "d": 0.0, "e": 0.0})
    assert report.to_metrics(0.8) == {
        "alpha": 0.8, "source": "structure", "smoothed": {"a": ["b", "c"]},
        "strengths": {"a": 0.5, "d": 0.0, "e": 0.0}, "not_smoothed": ["d", "e"],
        "unmapped_layers": ["z"]}
    assert SmoothReport().to_metrics(0.5) == {
        "alpha": 0.5, "source": "registry", "smoothed": {}, "strengths": {},
        "not_smoothed": [], "unmapped_layers": []}


@pytest.mark.parametrize("out_scale", [1e-5, 1e3], ids=["small", "large"])
def test_verification_is_relative_to_the_outputs_size(out_scale):
    """Outputs of ~1e-5 or ~1e3: the identity pair is kept and the residual one rejected all
    the same (the check compares the change with the output's own magnitude)."""
    torch.manual_seed(0)
    model = _Residual("tensor", out_scale).eval()
    report = smooth_model(model, [torch.randn(4, 6) for _ in range(2)], alpha=0.5,
                          layers=["lin", "head"])
    assert report.mappings == [("norm", ("lin",))] and report.unmapped == ["head"]


def test_a_discovered_conv1d_pair_is_verified_along_its_input_axis():
    torch.manual_seed(3)
    model = nn.Sequential(nn.LayerNorm(6), Conv1D(6, 4)).eval()
    batches = [torch.randn(5, 6) for _ in range(2)]
    before = [model(b).detach() for b in batches]
    report = smooth_model(model, batches, alpha=0.5, layers=["1"])
    assert (report.source, report.mappings) == ("structure", [("0", ("1",))])
    for b, ref in zip(batches, before, strict=True):
        assert float((model(b) - ref).abs().max() / ref.abs().max()) < 1e-5


def test_off_is_measured_unsmoothed():
    """Weights with two column outliers (x10) and activations without any, static W8A8: the
    pair measures best unsmoothed, so its weights stay as they were. (A regression pin of the
    search's measured choice, not an independent value: "off" measured with the alpha = 0
    scales 1 / max|W_j| instead of ones picks 0.65 here.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 32)).eval()
    with torch.no_grad():
        model[1].weight[:, [7, 20]] *= 10.0
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    report = smooth_model(model, [torch.randn(8, 16, 64) for _ in range(4)], alpha=0.8,
                          layers=["1"], config=QuantConfig(mode="static", smoothquant=0.8))
    assert report.strengths == {"0": 0.0} and report.mappings == []
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("w_outlier", "a_outlier"), [(1.0, 3.0), (10.0, 3.0), (1.0, 2.0)],
                         ids=["plain-weights", "weight-outliers", "small-outliers"])
def test_the_search_fits_on_even_batches_and_measures_on_the_odd_ones(w_outlier, a_outlier):
    """Four batches, the odd ones 4x wider: the strength is fitted on batches 0 and 2 and
    measured on 1 and 3 (held out), which picks 0.65 in every case here; fitted on batch 0
    alone it picks 0.0 with the weight outliers, fitted on batches 0 and 3 0.5 with the small
    outliers, measured on every batch 0.8 with plain weights. (A regression pin of the
    measured choice, like the case above.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 32)).eval()
    with torch.no_grad():
        model[0].weight[[3, 40]] = a_outlier
        model[1].weight[:, [7, 20]] *= w_outlier
    batches = [torch.randn(8, 16, 64) * (1 + i % 2 * 3) for i in range(4)]
    report = smooth_model(model, batches, alpha=0.8, layers=["1"],
                          config=QuantConfig(mode="static", smoothquant=0.8))
    assert report.strengths == {"0": 0.65}


def test_of_two_batches_the_first_is_fitted_and_the_second_measured():
    """Two batches: the strength is fitted on batch 0 and measured on batch 1 alone (held
    out), so appending batch 0 again (fitted, not measured: the same ranges) changes nothing,
    strengths and weights. Measured on both batches (``held_out`` from three batches on)
    this pair would take 0.5 from two batches and 0.3 from three (checked by hand); the
    second batch's channel 5 is 8x wider than the first's."""
    def run(batches):
        torch.manual_seed(0)
        model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 32)).eval()
        with torch.no_grad():
            model[0].weight[[3, 40]] = 10.0
            model[1].weight[:, [7, 20]] *= 10.0
        report = smooth_model(model, batches, alpha=0.8, layers=["1"],
                              config=QuantConfig(mode="static", smoothquant=0.8))
        return report.strengths, model.state_dict()

    g = torch.Generator().manual_seed(0)
    fitted, measured = torch.randn(8, 16, 64, generator=g), torch.randn(8, 16, 64, generator=g)
    measured[..., 5] *= 8
    two, two_state = run([fitted, measured])
    three, three_state = run([fitted, measured, fitted])
    assert two == three and two["0"] > 0
    assert all(torch.equal(v, three_state[k]) for k, v in two_state.items())


class _Gain(nn.Module):
    """A per-channel gain with a 1-D weight: not a norm, so not a smoothing source."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(n) + 0.5)

    def forward(self, x):
        return x * self.weight


def test_only_norms_are_discovered_as_sources():
    torch.manual_seed(0)
    model = nn.Sequential(_Gain(6), nn.Linear(6, 3)).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    report = smooth_model(model, [torch.randn(4, 6)], alpha=0.5, layers=["1"])
    assert (report.mappings, report.unmapped) == ([], ["1"])
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


class _KeywordLinear(nn.Module):
    """Calls its linear with a keyword argument (its pre-hook sees no positional input)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.lin = nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x):
        return self.lin(input=self.norm(x))


def test_a_linear_called_with_keywords_is_left_unsmoothed():
    report = smooth_model(_KeywordLinear().eval(), [torch.randn(4, 6)], alpha=0.5,
                          layers=["lin"])
    assert (report.source, report.mappings, report.unmapped) == ("structure", [], ["lin"])


def test_the_search_stops_at_num_samples_too():
    """num_samples=24 with batches of 8: the fourth batch (odd, so a held-out one) is never
    measured; a wild one there changes nothing, the result is that of the first three."""
    def run(batches, **kw):
        torch.manual_seed(0)
        model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 32)).eval()
        with torch.no_grad():
            model[0].weight[[3, 40]] = 3.0
        report = smooth_model(model, batches, alpha=0.8, layers=["1"],
                              config=QuantConfig(mode="static", smoothquant=0.8), **kw)
        return report.strengths, model.state_dict()

    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(8, 16, 64, generator=g) for _ in range(3)]
    wild = torch.randn(8, 16, 64, generator=g) * 1000
    got, got_state = run([*batches, wild], num_samples=24)
    want, want_state = run(batches)
    assert got == want
    assert all(torch.equal(v, want_state[k]) for k, v in got_state.items())
    assert run([*batches, wild])[0] != want  # the wild batch would change the choice


def test_one_batch_is_both_fitted_and_measured():
    """With a single batch nothing is held out: the search measures on that batch, where two
    x60 outlier channels make smoothing pay."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 32)).eval()
    with torch.no_grad():
        model[0].weight[[3, 40]] = 60.0
    report = smooth_model(model, [torch.randn(8, 16, 64)], alpha=0.8, layers=["1"],
                          config=QuantConfig(mode="static", smoothquant=0.8))
    assert report.strengths["0"] > 0 and report.mappings == [("0", ("1",))]


def test_a_model_without_parameters_runs_on_the_cpu():
    report = smooth_model(nn.Sequential(nn.ReLU()), [torch.randn(2, 3)], alpha=0.5, layers=[])
    assert (report.mappings, report.unmapped) == ([], [])


def test_a_batch_the_model_cannot_take_is_named():
    from mono_quant import BadInputError

    model = nn.Sequential(nn.LayerNorm(3), nn.Linear(3, 2))
    with pytest.raises(BadInputError) as err:
        smooth_model(model, [torch.zeros(2, 3), torch.zeros(2, 5)], alpha=0.5, layers=["1"])
    assert str(err.value).startswith(
        "calibration batch 1 (tensor [2, 5]) does not run through the model: RuntimeError:")
