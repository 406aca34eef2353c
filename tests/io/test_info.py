from __future__ import annotations

import json
import math

import pytest

from mono_quant import BadInputError, QuantConfig, QuantizationInfo, demo_models, quantize_model


def _info():
    _, info = quantize_model(demo_models.mlp(), QuantConfig(mode="static"),
                             demo_models.vector_batches(n=2), progress=False)
    return info


def test_round_trip_is_exact():
    info = _info()
    again = QuantizationInfo.from_json(info.to_json())
    assert again == info
    assert again.metrics["output_sqnr_db"] == info.metrics["output_sqnr_db"]


def test_seed_field_names():
    info = _info()
    assert (info.dtype, info.scheme, info.per_channel, info.granularity, info.mode,
            info.observer) == ("int8", "symmetric", True, "per_channel", "static", "minmax")
    assert info.calibration_samples == 32
    assert set(info.library_versions) >= {"torch", "safetensors", "mono-quant", "python"}


def test_non_finite_metrics_stay_strict_json():
    info = QuantizationInfo(QuantConfig(), metrics={"a": math.inf, "b": {"c": -math.inf}})
    text = info.to_json()
    assert "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert QuantizationInfo.from_json(text).metrics == {"a": math.inf, "b": {"c": -math.inf}}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        pytest.param(lambda d: d.pop("format"), "not mono-quant metadata", id="not-ours"),
        pytest.param(lambda d: d.update(version=99), "version 99 is not supported", id="version"),
        pytest.param(lambda d: d.update(extra=1), "unknown field.*extra", id="unknown"),
        pytest.param(lambda d: d.update(selected_layers="fc"), "selected_layers", id="layers"),
        pytest.param(lambda d: d.update(calibration_samples=-1), "calibration_samples",
                     id="samples"),
        pytest.param(lambda d: d["config"].update(scheme="weird"), "config.*scheme='weird'",
                     id="config"),
    ],
)
def test_decoding_goes_through_an_allow_list(mutate, message):
    data = _info().to_dict()
    mutate(data)
    with pytest.raises(BadInputError, match=message):
        QuantizationInfo.from_dict(data, source="model.safetensors")


def test_not_json():
    with pytest.raises(BadInputError, match="x.safetensors: metadata is not valid JSON"):
        QuantizationInfo.from_json("{nope", source="x.safetensors")
