"""Generated documentation is current."""

from __future__ import annotations

import runpy

from tests.worker.harness import REPO


def test_settings_table_is_generated_from_the_declarations():
    script = runpy.run_path(str(REPO / "scripts" / "settings_table.py"))
    assert (REPO / "docs" / "settings.md").read_text() == script["render"](), (
        "docs/settings.md is stale: run python scripts/settings_table.py")


def test_every_variable_read_is_declared(monkeypatch):
    """Reading a variable that is not in config.VARIABLES is a bug caught at once."""
    import pytest

    from mono_quant.config import _Env

    env = _Env({})
    assert env.text("DATA_DIR", "x") == "x"
    with pytest.raises(KeyError, match="MONO_QUANT_NOPE is read but not declared"):
        env.text("NOPE")
