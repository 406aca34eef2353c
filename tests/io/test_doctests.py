"""The docstring examples of the io, pipeline and quant modules run (keep them true)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "mono_quant.io",
    "mono_quant.io._atomic",
    "mono_quant.io._safetensors_stream",
    "mono_quant.io.formats",
    "mono_quant.io.interop",
    "mono_quant.pipeline",
    "mono_quant.pipeline.run",
    "mono_quant.pipeline.sources",
    "mono_quant.pipeline.spec",
    "mono_quant.pipeline.streaming",
    "mono_quant.quant.info",
    "mono_quant.quant.options",
]


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
