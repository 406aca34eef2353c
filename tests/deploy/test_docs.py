"""The ``Example:`` blocks of the operations modules run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["mono_quant.scheduler.health", "mono_quant.scheduler.metrics"]


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
