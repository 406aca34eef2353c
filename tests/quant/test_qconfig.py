from __future__ import annotations

import dataclasses

import pytest

from mono_quant import BadConfigError, PerGroup, QuantConfig


def test_defaults_and_round_trip():
    cfg = QuantConfig(include=["Linear"], exclude="re:.*head")
    assert cfg.include == ("Linear",) and cfg.exclude == ("re:.*head",)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["version"] == 1


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        QuantConfig().scheme = "asymmetric"  # type: ignore[misc]


def test_group_size_is_normalised():
    assert QuantConfig(granularity="per_group").group_size == 128
    assert QuantConfig(granularity="per_group").granularity_spec == PerGroup(128)
    assert QuantConfig(granularity="per_channel", group_size=64).group_size is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"scheme": "sym"}, "scheme='sym'", id="scheme"),
        pytest.param({"granularity": "per_row"}, "granularity='per_row'", id="granularity"),
        pytest.param({"granularity": "per_group", "group_size": 0}, "group_size=0", id="group"),
        pytest.param({"mode": "float8"}, "mode='float8'", id="mode"),
        pytest.param({"weight_observer": "hist"}, "weight_observer='hist'", id="observer"),
        pytest.param({"activation_scheme": "x"}, "activation_scheme='x'", id="act-scheme"),
        pytest.param({"include": ["re:("]}, "include: 're:\\(' is not a valid", id="regex"),
        pytest.param({"exclude": [3]}, "exclude=\\[3\\]", id="exclude-type"),
        pytest.param({"min_layer_size": -1}, "min_layer_size=-1", id="min-size"),
    ],
)
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(BadConfigError, match=message):
        QuantConfig(**kwargs)


def test_from_dict_rejects_unknown_fields_and_versions():
    with pytest.raises(BadConfigError, match="unknown quantization config field.*bits"):
        QuantConfig.from_dict({"bits": 4})
    with pytest.raises(BadConfigError, match="version 2 is not supported"):
        QuantConfig.from_dict({"version": 2})
