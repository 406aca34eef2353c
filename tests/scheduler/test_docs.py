"""The docstring examples of the manifest bounds, CLI value types and job payload run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["mono_quant.scheduler.bounds", "mono_quant.scheduler.columns",
           "mono_quant.scheduler.commands.args"]


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
