"""A model with real activation outliers (a tiny Llama whose norm weights are x60 on three
channels, as trained LLMs are): static W8A8 loses accuracy, SmoothQuant recovers most of it,
dynamic per-token activations beat static. Orderings are asserted with margins."""

from __future__ import annotations

import pytest

from mono_quant import QuantConfig, demo_models, quantize_model

pytest.importorskip("transformers", reason="the 'hf' extra is not installed")


@pytest.fixture(scope="module")
def losses():
    model = demo_models.outlier_transformer()
    calibration = demo_models.token_batches(n=4, seq=32)
    held_out = demo_models.token_batches(n=2, seq=32, seed=9)

    def loss(**kwargs) -> float:
        config = QuantConfig(exclude=["lm_head"], **kwargs)
        _, info = quantize_model(model, config, calibration, eval_data=held_out, progress=False)
        return 1.0 - info.metrics["output_cosine"]

    return {
        "weight_only": loss(),
        "static": loss(mode="static"),
        "static+sq": loss(mode="static", smoothquant=0.8),
        "dynamic": loss(mode="dynamic"),
        "dynamic+sq": loss(mode="dynamic", smoothquant=0.8),
    }


@pytest.mark.slow
def test_static_w8a8_loses_accuracy_measurably(losses):
    assert losses["static"] > 0.01  # logits cosine below 0.99
    assert losses["static"] > 20 * losses["weight_only"]  # the activations, not the weights


@pytest.mark.slow
def test_smoothquant_recovers_most_of_it(losses):
    assert losses["static+sq"] < 0.5 * losses["static"]
    assert losses["dynamic+sq"] < 0.5 * losses["dynamic"]


@pytest.mark.slow
def test_dynamic_beats_static(losses):
    assert losses["dynamic"] < 0.5 * losses["static"]
    assert losses["dynamic+sq"] < losses["static+sq"]


@pytest.mark.slow
def test_static_smoothquant_within_0002_of_dynamic_on_the_benchmark_data():
    # benchmarks/accuracy.py's outlier rows (8 calibration batches of 4 x 64 tokens, 4
    # held-out ones). Issue 11's goal: static + SmoothQuant within 0.002 output cosine of
    # dynamic + SmoothQuant. Before v_proj -> o_proj, up_proj -> down_proj and the
    # per-mapping strengths: 0.99323 vs 0.99783 (0.0046 apart); now 0.99744 vs 0.99934.
    # With half the calibration tokens (the fixture above) static is 0.0024 behind: its
    # per-tensor ranges need the data.
    model = demo_models.outlier_transformer()
    calibration = demo_models.token_batches(n=8, batch=4, seq=64, seed=1)
    held_out = demo_models.token_batches(n=4, batch=4, seq=64, seed=9)

    def cosine(mode: str) -> float:
        config = QuantConfig(mode=mode, smoothquant=0.8, exclude=["lm_head"])
        _, info = quantize_model(model, config, calibration, eval_data=held_out,
                                 progress=False)
        return info.metrics["output_cosine"]

    static, dynamic = cosine("static"), cosine("dynamic")
    assert dynamic - static < 0.002
    assert static > 0.997 and dynamic > 0.999  # floors: 0.99323 / 0.99783 before
