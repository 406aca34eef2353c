"""Every module's docstring examples run: they are documentation, keep them true.

The modules are discovered, not listed, so a new module (or one moved to another package) is
covered without editing this file. Importing a module must not need a server; the Alembic
environment is the one module that only runs inside ``alembic`` and is left out.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

#: Packages whose modules are searched (worker/ and scheduler/ live outside src/).
PACKAGES = ("mono_quant", "mono_quant.worker", "mono_quant.scheduler")
#: Modules that cannot be imported on their own (they run inside another tool).
SKIP = ("mono_quant.catalog.migrations.env", "mono_quant.catalog.migrations.versions")


def _modules() -> list[str]:
    names = set()
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names.add(package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
            if not info.name.startswith(SKIP):
                names.add(info.name)
    return sorted(names)


MODULES = _modules()


def test_discovery_finds_every_layer():
    for name in ("mono_quant.quant.primitives", "mono_quant.quant.observers",
                 "mono_quant.io.formats", "mono_quant.catalog.filters",
                 "mono_quant.worker.job", "mono_quant.scheduler.manifest"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if ">>>" in Path(module.__file__).read_text(encoding="utf-8"):
        assert result.attempted > 0, f"{name} has examples that doctest does not find"
