"""Package-level guarantees: a lean import, the public API, settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mono_quant
from mono_quant.config import Settings
from mono_quant.errors import BadConfigError


def test_import_pulls_in_neither_celery_nor_sqlalchemy():
    # A fresh interpreter: in this one other tests may already have imported them.
    code = (
        "import sys, mono_quant, mono_quant.io, mono_quant.pipeline\n"
        "heavy = [m for m in ('celery', 'kombu', 'sqlalchemy', 'alembic', 'redis') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_import_is_lazy_about_torch():
    # the worker's main process and `mono-quant --help` import mono_quant without torch
    code = (
        "import sys, mono_quant, mono_quant.worker.app, mono_quant.scheduler.cli\n"
        "import mono_quant.catalog, mono_quant.scheduler.service, mono_quant.io\n"
        "from mono_quant.io import QuantizationInfo\n"
        "from mono_quant.pipeline import JobSpec, parse_model_source\n"
        "print('torch' in sys.modules)\n"
        "mono_quant.quantize_weight_int8\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_seed_names_are_public():
    for name in ("quantize_weight_int8", "MinMaxObserver", "run_calibration", "QuantizationInfo",
                 "quantize_model", "QuantConfig", "dequantize"):
        assert name in mono_quant.__all__ and hasattr(mono_quant, name)


def test_library_switches_are_the_library_s_own(monkeypatch):
    from mono_quant.quant import options

    monkeypatch.setenv("MONO_QUANT_COMPILE", "never")
    monkeypatch.setenv("MONO_QUANT_COMPILE_MIN_NUMEL", "10")
    assert (options.compile_mode(), options.compile_min_numel()) == ("never", 10)
    with options.compile_override("always"):
        assert options.compile_mode() == "always"
    assert options.compile_mode() == "never"
    monkeypatch.setenv("MONO_QUANT_COMPILE", "sometimes")
    with pytest.raises(BadConfigError, match="MONO_QUANT_COMPILE='sometimes'"):
        options.compile_mode()
    monkeypatch.setenv("MONO_QUANT_COMPILE", "auto")
    monkeypatch.setenv("MONO_QUANT_COMPILE_MIN_NUMEL", "many")
    with pytest.raises(BadConfigError, match="MONO_QUANT_COMPILE_MIN_NUMEL='many'"):
        options.compile_min_numel()
    Settings.from_env()  # the service's settings do not read the library's switches


def test_a_bad_service_setting_does_not_break_the_library(monkeypatch):
    """The library never reads Settings: int8 rounding works whatever MONO_QUANT_* says."""
    import torch

    monkeypatch.setenv("MONO_QUANT_STALE_AFTER", "5")  # invalid for the service (< 2 beats)
    monkeypatch.setenv("MONO_QUANT_MAX_ATTEMPTS", "zero")
    with pytest.raises(BadConfigError):
        Settings.from_env()
    qw = mono_quant.quantize_weight_int8(torch.randn(2048, 1024))
    assert qw.data.dtype == torch.int8


def test_url_settings_win_over_parts(monkeypatch, tmp_path):
    monkeypatch.setenv("MONO_QUANT_DATA_DIR", str(tmp_path))
    for name in ("CATALOG_URL", "DB_HOST", "BROKER_URL", "REDIS_HOST", "STORAGE_ROOT"):
        monkeypatch.delenv(f"MONO_QUANT_{name}", raising=False)
    s = Settings.from_env()
    assert s.catalog_url == f"sqlite:///{tmp_path.resolve()}/catalog.db"
    assert s.storage_root == tmp_path.resolve() / "artifacts"
    assert s.broker_url == "redis://localhost:6379/0"
    monkeypatch.setenv("MONO_QUANT_DB_HOST", "db")
    monkeypatch.setenv("MONO_QUANT_DB_PASSWORD", "p@ss")
    monkeypatch.setenv("MONO_QUANT_REDIS_HOST", "cache")
    monkeypatch.setenv("MONO_QUANT_REDIS_DB", "3")
    s = Settings.from_env()
    assert s.catalog_url == "postgresql+psycopg://postgres:p%40ss@db:5432/mono_quant"
    assert s.broker_url == "redis://cache:6379/3"
    monkeypatch.setenv("MONO_QUANT_CATALOG_URL", "sqlite:///x.db")
    monkeypatch.setenv("MONO_QUANT_BROKER_URL", "redis://other:1/2")
    s = Settings.from_env()
    assert (s.catalog_url, s.broker_url) == ("sqlite:///x.db", "redis://other:1/2")
