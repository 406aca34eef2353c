"""MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT: read, validated, and handed to Celery."""

from __future__ import annotations

import pytest

from mono_quant.config import Settings
from mono_quant.errors import BadConfigError


@pytest.mark.parametrize(("raw", "expected"), [(None, 0.0), ("300", 300.0), ("2.5", 2.5)],
                         ids=["default", "integer", "fraction"])
def test_soft_shutdown_timeout_is_read(monkeypatch, raw, expected):
    monkeypatch.delenv("MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT", raising=False)
    if raw is not None:
        monkeypatch.setenv("MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT", raw)
    settings = Settings.from_env()
    assert settings.soft_shutdown_timeout == expected

    from mono_quant.worker.app import create_app

    assert create_app(settings).conf.worker_soft_shutdown_timeout == expected


@pytest.mark.parametrize(("raw", "message"), [
    ("-1", "MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT=-1.0: expected seconds >= 0"),
    ("soon", "MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT='soon' is not a number"),
], ids=["negative", "not-a-number"])
def test_bad_soft_shutdown_timeout_is_a_config_error(monkeypatch, raw, message):
    monkeypatch.setenv("MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT", raw)
    with pytest.raises(BadConfigError, match="^" + message.replace("(", r"\(")
                       .replace(".", r"\.")):
        Settings.from_env()
