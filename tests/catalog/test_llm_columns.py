"""Typed columns for LLM-grade int8 (migration 0005) and the filters over them."""

from __future__ import annotations

import hashlib

import pytest

from mono_quant import QuantConfig, QuantizationInfo
from mono_quant.catalog import ArtifactQuery, Batch, Catalog, Job, add_artifact, list_artifacts
from mono_quant.errors import BadInputError

ROWS = {
    "dyn-sq-gptq": (QuantConfig(mode="dynamic", smoothquant=0.8, weight_algorithm="gptq"),
                    {"perplexity_fp": 10.0, "perplexity_quant": 10.2,
                     "perplexity_increase": 0.2000000000000002,
                     "accuracy_target": {"excluded_layers": ["a", "b"]}}),
    "static-sq": (QuantConfig(mode="static", smoothquant=0.5),
                  {"perplexity_fp": 10.0, "perplexity_quant": 11.5, "perplexity_increase": 1.5}),
    "w8a16": (QuantConfig(), {}),
}


@pytest.fixture
def catalog(catalog_url):
    catalog = Catalog(catalog_url)
    with catalog.begin() as s:
        batch = Batch(name="b")
        for i, (name, (config, metrics)) in enumerate(ROWS.items()):
            job = Job(batch=batch, name=name, model_source=f"hf:{name}", spec={},
                      idempotency_key=hashlib.sha256(name.encode()).hexdigest(), queue="cpu")
            s.add(job)
            s.flush()
            add_artifact(s, job, f"a/{name}.safetensors", QuantizationInfo(config, ["x"],
                         metrics=metrics), sha256="0" * 64, size_bytes=10 + i)
    yield catalog
    catalog.dispose()


def _names(catalog, **filters) -> list[str]:
    with catalog.begin() as s:
        rows = list_artifacts(s, ArtifactQuery(order_by="id", descending=False, **filters))
        return [r.model_source.removeprefix("hf:") for r in rows]


def test_columns_hold_the_new_facts(catalog):
    with catalog.begin() as s:
        rows = {r.model_source: r for r in list_artifacts(s, ArtifactQuery())}
        dyn = rows["hf:dyn-sq-gptq"]
        assert (dyn.mode, dyn.activation_scheme, dyn.smoothquant_alpha, dyn.weight_algorithm,
                dyn.layers_excluded_for_accuracy) == ("dynamic", "symmetric", 0.8, "gptq", 2)
        assert (dyn.perplexity_fp, dyn.perplexity_quant) == (10.0, 10.2)
        plain = rows["hf:w8a16"]
        assert (plain.smoothquant_alpha, plain.weight_algorithm, plain.perplexity_increase,
                plain.layers_excluded_for_accuracy) == (None, "rtn", None, 0)


def test_filters(catalog):
    assert _names(catalog, modes=["dynamic"]) == ["dyn-sq-gptq"]
    assert _names(catalog, weight_algorithms=["gptq"]) == ["dyn-sq-gptq"]
    assert _names(catalog, smoothquant=True) == ["dyn-sq-gptq", "static-sq"]
    assert _names(catalog, smoothquant=False) == ["w8a16"]
    assert _names(catalog, max_perplexity_increase=1.0) == ["dyn-sq-gptq"]


def test_bad_filter_values():
    with pytest.raises(BadInputError, match="unknown weight algorithm 'awq'"):
        ArtifactQuery(weight_algorithms=["awq"])
    with pytest.raises(BadInputError, match="smoothquant='yes'"):
        ArtifactQuery(smoothquant="yes")
