"""Worker settings (soft shutdown, sweeps, broker, task events): read, checked, given to Celery."""

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


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, 10.0),
    ({"MONO_QUANT_HEARTBEAT_INTERVAL": "2"}, 2.0),
    ({"MONO_QUANT_RECONCILE_INTERVAL": "30"}, 30.0),
    ({"MONO_QUANT_RECONCILE_INTERVAL": "0"}, 0.0),
], ids=["default-heartbeat", "follows-heartbeat", "set", "off"])
def test_reconcile_interval_defaults_to_the_heartbeat_interval(environ, expected):
    assert Settings.from_env(environ).reconcile_interval == expected


@pytest.mark.parametrize("raw", ["-1", "120", "500"], ids=["negative", "stale", "above-stale"])
def test_reconcile_interval_must_be_below_stale_after(raw):
    with pytest.raises(BadConfigError, match="MONO_QUANT_RECONCILE_INTERVAL=.*STALE_AFTER"):
        Settings.from_env({"MONO_QUANT_RECONCILE_INTERVAL": raw})


@pytest.mark.parametrize(("environ", "configured"), [
    ({}, False),
    ({"MONO_QUANT_BROKER_URL": "redis://r:6379/0"}, True),
    ({"MONO_QUANT_REDIS_HOST": "r"}, True),
    ({"MONO_QUANT_BROKER_URL": ""}, False),
], ids=["nothing", "url", "host", "empty"])
def test_a_broker_is_configured_only_when_set(environ, configured):
    settings = Settings.from_env(environ)
    assert settings.broker_configured is configured
    assert settings.broker_url.startswith("redis://")  # a URL either way, for Celery


@pytest.mark.parametrize(("raw", "expected"), [(None, False), ("on", True), ("off", False),
                                               (" OFF ", False)],
                         ids=["default", "on", "off", "case-and-spaces"])
def test_task_events_setting_reaches_celery_and_the_worker_command(raw, expected):
    settings = Settings.from_env({} if raw is None else {"MONO_QUANT_TASK_EVENTS": raw})
    assert settings.task_events is expected

    from mono_quant.scheduler.commands.worker import celery_argv
    from mono_quant.worker.app import create_app

    assert create_app(settings).conf.worker_send_task_events is expected
    argv = celery_argv(["cpu"], "cpu1@h", "info", settings.task_events)
    # off: nothing on the command line may override worker_send_task_events=False
    assert [a for a in argv if "event" in a] == (["--task-events"] if expected else [])
    assert argv[:2] == ["worker", "--queues"] and "prefork" in argv


def test_bad_task_events_is_a_config_error():
    with pytest.raises(BadConfigError,
                       match="^MONO_QUANT_TASK_EVENTS='maybe': expected 'on' or 'off'$"):
        Settings.from_env({"MONO_QUANT_TASK_EVENTS": "maybe"})
