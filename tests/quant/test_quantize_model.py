from __future__ import annotations

import pytest
import torch
from torch import nn

from mono_quant import (
    BadConfigError,
    BadInputError,
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    demo_models,
    quantize_model,
)
from mono_quant.quant.metrics import sqnr_db

CONFIGS = [
    pytest.param(QuantConfig(), id="sym-channel"),
    pytest.param(QuantConfig(scheme="asymmetric"), id="asym-channel"),
    pytest.param(QuantConfig(granularity="per_group", group_size=64), id="sym-group64"),
    pytest.param(QuantConfig(scheme="asymmetric", granularity="per_group", group_size=32),
                 id="asym-group32"),
    pytest.param(QuantConfig(weight_observer="mse"), id="mse"),
]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("config", CONFIGS)
def test_mlp_weight_only_floors(config):
    model, data = demo_models.mlp(), demo_models.vector_batches()
    before = _state(model)
    qmodel, info = quantize_model(model, config, data, progress=False)
    assert info.selected_layers == ["0", "2", "4"]
    assert all(isinstance(qmodel.get_submodule(n), QuantLinear) for n in info.selected_layers)
    assert info.metrics["weight_sqnr_db"] >= 35.0
    assert info.metrics["weight_sqnr_db_min"] >= 35.0
    assert info.metrics["output_cosine"] >= 0.9995
    assert info.metrics["output_sqnr_db"] >= 25.0
    assert 3.3 < info.metrics["compression_ratio"] < 4.0  # scales cost 5 B per group of 32
    # the input model is untouched
    assert all(isinstance(model[i], nn.Linear) for i in (0, 2, 4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_metrics_are_what_they_claim():
    model, data = demo_models.mlp(), demo_models.vector_batches(n=2)
    qmodel, info = quantize_model(model, QuantConfig(), data, progress=False)
    for name in info.selected_layers:
        w = model.get_submodule(name).weight
        w_hat = qmodel.get_submodule(name).dequantized_weight()
        assert info.metrics["layer_weight_sqnr_db"][name] == pytest.approx(sqnr_db(w, w_hat))
    ref = torch.cat([model(x) for x in data])
    out = torch.cat([qmodel(x) for x in data])
    assert info.metrics["output_sqnr_db"] == pytest.approx(sqnr_db(ref, out), rel=1e-9)
    fp = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert info.metrics["size_bytes_fp"] == fp


def test_cnn_static_and_weight_only():
    model, data = demo_models.cnn(), demo_models.image_batches()
    for mode in ("weight_only", "static"):
        qmodel, info = quantize_model(model, QuantConfig(mode=mode), data, progress=False)
        layers = [qmodel.get_submodule(n) for n in info.selected_layers]
        convs = [m for m in layers if isinstance(m, QuantConv2d)]
        assert len(convs) == 3
        assert info.metrics["weight_sqnr_db"] >= 35.0
        assert info.metrics["output_cosine"] >= 0.999
        assert info.calibration_samples == (32 if mode == "static" else 0)


def test_static_beats_a_naive_uncalibrated_activation_scale():
    model, data = demo_models.cnn(), demo_models.image_batches()
    qmodel, info = quantize_model(model, QuantConfig(mode="static"), data, progress=False)
    naive = quantize_model(model, QuantConfig(mode="static"), data, progress=False)[0]
    for name in info.selected_layers:  # what you get without calibration: assume [-1, 1]
        naive.get_submodule(name).set_input_qparams(torch.tensor([2 / 255]), torch.tensor([0]))
    ref = torch.cat([model(x) for x in data])
    calibrated = sqnr_db(ref, torch.cat([qmodel(x) for x in data]))
    uncalibrated = sqnr_db(ref, torch.cat([naive(x) for x in data]))
    assert calibrated == pytest.approx(info.metrics["output_sqnr_db"])
    assert calibrated > uncalibrated + 10.0


def test_include_exclude_and_min_size():
    model = demo_models.cnn()
    def sel(**kw):
        return quantize_model(model, QuantConfig(**kw), progress=False)[1].selected_layers
    assert sel(include=["Conv2d"]) == ["0", "2", "5"]
    assert sel(include=["Linear"]) == ["9"]
    assert sel(exclude=["Conv2d"]) == ["9"]
    assert sel(include=["re:[02]$"]) == ["0", "2"]
    assert sel(include=["Conv2d"], exclude=["5"]) == ["0", "2"]
    assert sel(min_layer_size=9000) == ["2", "5"]


def test_glob_patterns_on_qualified_names():
    model = nn.ModuleDict({
        "encoder": nn.ModuleDict({"fc1": nn.Linear(8, 8), "fc2": nn.Linear(8, 8)}),
        "head": nn.Linear(8, 2),
    })
    selected = quantize_model(model, QuantConfig(include=["encoder.*"], exclude=["*.fc2"]),
                              progress=False)[1].selected_layers
    assert selected == ["encoder.fc1"]


def test_static_needs_calibration_data():
    with pytest.raises(BadConfigError, match="mode='static' needs calibration_data"):
        quantize_model(demo_models.mlp(), QuantConfig(mode="static"), progress=False)


def test_nothing_selected_is_an_error():
    with pytest.raises(BadConfigError, match="no layers selected: the model has 3"):
        quantize_model(demo_models.mlp(), QuantConfig(include=["Conv2d"]), progress=False)


def test_bad_weights_name_the_layer():
    model = demo_models.mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(BadInputError, match=r"2\.weight: contains NaN"):
        quantize_model(model, progress=False)
    with pytest.raises(BadInputError, match=r"0\.weight: input size 256 .* group_size=100"):
        quantize_model(demo_models.mlp(), QuantConfig(granularity="per_group", group_size=100),
                       progress=False)


def test_one_shot_iterator_is_used_for_calibration_and_evaluation():
    model = demo_models.mlp()
    data = iter(demo_models.vector_batches(n=6))
    _, info = quantize_model(model, QuantConfig(mode="static"), data, num_samples=32,
                             progress=False)
    assert info.calibration_samples == 32
    assert info.metrics["eval_batches"] == 2


def test_bf16_model_stays_bf16():
    model = demo_models.mlp().to(torch.bfloat16)
    qmodel, info = quantize_model(model, QuantConfig(), progress=False)
    out = qmodel(torch.randn(2, 256, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert info.metrics["weight_sqnr_db"] >= 35.0


def test_tiny_transformer_from_config():
    pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    model, data = demo_models.tiny_transformer(), demo_models.token_batches()
    for config in (QuantConfig(exclude=["lm_head"]), QuantConfig(mode="static")):
        qmodel, info = quantize_model(model, config, data, progress=False)
        assert any(n.endswith("self_attn.q_proj") for n in info.selected_layers)
        assert ("lm_head" in info.selected_layers) == (not config.exclude)
        assert info.metrics["weight_sqnr_db"] >= 35.0
        assert info.metrics["output_cosine"] >= 0.999
        logits = qmodel(**data[0]).logits
        assert logits.shape == (4, 32, 256)


def test_device(device):
    model = demo_models.mlp().to(device)
    data = [x.to(device) for x in demo_models.vector_batches(n=2)]
    qmodel, info = quantize_model(model, QuantConfig(mode="static"), data, progress=False)
    assert qmodel[0].weight.device.type == device
    assert info.metrics["output_cosine"] >= 0.999


@pytest.mark.parametrize(
    ("mode", "eval_data", "message"),
    [
        ("static", None, "calibration batch 0 (tensor [2, 9]) does not run through the model"),
        # weight-only never calibrates: the batch fails in the output metrics
        ("weight_only", None,
         "calibration batch 0 (tensor [2, 9]) does not run through the model"),
        ("weight_only", [torch.randn(2, 8), torch.randn(3, 7)],
         "evaluation batch 1 (tensor [3, 7]) does not run through the model"),
    ],
    ids=["static-calibration", "weight-only-metrics", "eval-data"],
)
def test_batches_the_model_rejects_are_bad_input(mode, eval_data, message):
    model = nn.Sequential(nn.Linear(8, 4))
    data = [torch.randn(2, 9)] if eval_data is None else [torch.randn(2, 8)]
    with pytest.raises(BadInputError) as err:
        quantize_model(model, QuantConfig(mode=mode, min_layer_size=1), data,
                       eval_data=eval_data, progress=False)
    assert str(err.value).startswith(f"{message}: RuntimeError: mat1 and mat2 shapes "
                                     "cannot be multiplied"), str(err.value)
    assert type(err.value.__cause__) is RuntimeError


@pytest.mark.parametrize("mode", ["static", "weight_only"], ids=["calibration", "metrics"])
def test_out_of_memory_propagates_unchanged(monkeypatch, mode):
    # No GPU here: a CUDA out-of-memory error is injected by replacing the float model's
    # forward (quantize_model calibrates a deep copy, which keeps the replaced forward too).
    model = nn.Sequential(nn.Linear(8, 4))
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    def forward(_x):
        raise oom

    monkeypatch.setattr(model, "forward", forward)
    with pytest.raises(torch.OutOfMemoryError) as err:
        quantize_model(model, QuantConfig(mode=mode, min_layer_size=1), [torch.randn(2, 8)],
                       progress=False)
    assert err.value is oom


def test_on_progress_reports_each_stage():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    data = [torch.randn(4, 8) for _ in range(5)]
    calls = []
    _, info = quantize_model(model, QuantConfig(mode="static", min_layer_size=1), data,
                             num_samples=12, max_eval_batches=2, progress=False,
                             on_progress=lambda *a: calls.append(a))
    assert calls == [
        ("calibrating", 1, 3), ("calibrating", 2, 3), ("calibrating", 3, 3),
        ("quantizing", 1, 3), ("quantizing", 2, 3), ("quantizing", 3, 3),
        ("evaluating", 1, 2), ("evaluating", 2, 2),
    ]
    assert info.calibration_samples == 12 and info.metrics["eval_batches"] == 2
    calls.clear()
    quantize_model(model, QuantConfig(min_layer_size=1), progress=False,
                   on_progress=lambda *a: calls.append(a))  # weight-only, no data
    assert calls == [("quantizing", 1, 3), ("quantizing", 2, 3), ("quantizing", 3, 3)]


def test_a_quantized_layer_holds_the_quantizers_tensors_not_copies():
    """quantize_model builds each layer around the int8 weight the kernel wrote (no zeroed
    buffer filled by a copy): same storage, same bits; a view into a larger buffer is cut to
    its own bytes, and a tensor of the wrong shape is refused."""
    from mono_quant import quantize_weight_int8
    from mono_quant.quant.modules import quantized_like
    from mono_quant.quant.primitives import QuantizedTensor

    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    qw = quantize_weight_int8(linear.weight)
    layer = quantized_like(linear, QuantConfig(), qw)
    assert layer.weight.data_ptr() == qw.data.data_ptr()
    assert layer.weight.dtype == torch.int8 and torch.equal(layer.weight_scale, qw.scale)
    empty = quantized_like(linear, QuantConfig())  # the old way: zeros, then set_weight
    empty.set_weight(qw)
    x = torch.randn(3, 64)
    assert torch.equal(layer(x), empty(x))
    assert not torch.equal(quantized_like(linear, QuantConfig()).weight, qw.data)  # zeros

    big = torch.cat([qw.data, qw.data])  # [64, 64]: the weight is its first half
    part = QuantizedTensor(big[:32], qw.scale, qw.zero_point, qw.scheme, qw.granularity)
    cut = quantized_like(linear, QuantConfig(), part)
    assert cut.weight.untyped_storage().nbytes() == 32 * 64
    assert torch.equal(cut.weight, qw.data)
    wrong = QuantizedTensor(big, qw.scale, qw.zero_point, qw.scheme, qw.granularity)
    with pytest.raises(ValueError, match=r"weight: shape \(64, 64\), the layer needs \(32, 64\)"):
        quantized_like(linear, QuantConfig(), wrong)
