"""The ``Example:`` blocks in the catalog's docstrings run as written."""

from __future__ import annotations

import doctest
import importlib
import tempfile

import pytest

MODULES = ["mono_quant.catalog", "mono_quant.catalog.artifacts", "mono_quant.catalog.db",
           "mono_quant.catalog.filters", "mono_quant.catalog.limits",
           "mono_quant.catalog.locks", "mono_quant.catalog.models",
           "mono_quant.catalog.types"]


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_docstring_examples(name, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # examples use mkdtemp()
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
