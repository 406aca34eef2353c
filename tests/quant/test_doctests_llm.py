"""The docstring examples of the LLM-grade int8 modules run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "mono_quant.pipeline.evaluation",
    "mono_quant.quant.accuracy",
    "mono_quant.quant.dynamic",
    "mono_quant.quant.evaluate",
    "mono_quant.quant.gptq",
    "mono_quant.quant.smoothquant",
]


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
