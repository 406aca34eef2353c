"""The systemd units pass ``systemd-analyze verify`` (with the binary path made real)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy import deployfiles as df

INSTALLED_BINARY = "/opt/mono-quant/venv/bin/mono-quant"  # where the units expect it


def _verify(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def analyzer(tmp_path) -> None:
    """systemd-analyze that works here, or skip with the reason."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    probe = tmp_path / "probe" / "mq-probe.service"
    probe.parent.mkdir()
    probe.write_text(f"[Service]\nType=oneshot\nExecStart={sys.executable} -V\n")
    out = _verify(probe)
    if out.returncode != 0 or out.stderr.strip():
        pytest.skip(f"systemd-analyze verify cannot run here (a trivial unit fails: "
                    f"{out.stderr.strip()[:300]})")


def test_units_verify(analyzer, tmp_path):
    binary = Path(sys.executable).parent / "mono-quant"
    assert binary.exists(), "the mono-quant console script is not installed in this venv"
    units = df.units()
    assert {p.name for p in units} == {
        "mono-quant-worker@.service", "mono-quant-reconcile.service",
        "mono-quant-reconcile.timer"}
    copies = []
    for unit in units:
        text = unit.read_text()
        assert INSTALLED_BINARY in text or unit.suffix == ".timer", unit.name
        copy = tmp_path / unit.name
        copy.write_text(text.replace(INSTALLED_BINARY, str(binary)))
        copies.append(copy)
    instance = tmp_path / "mono-quant-worker@0.service"  # the template, instantiated for GPU 0
    instance.symlink_to(tmp_path / "mono-quant-worker@.service")
    out = _verify(*copies, instance)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr  # warnings (unknown keys, bad values) too
    assert out.stdout.strip() == "", out.stdout


def test_verify_catches_a_broken_unit(analyzer, tmp_path):
    """The check above can fail: a misspelt key and a missing binary are both reported."""
    unit = tmp_path / "mono-quant-worker@.service"
    text = (df.SYSTEMD / unit.name).read_text().replace("KillMode=", "KilMode=")
    unit.write_text(text.replace(INSTALLED_BINARY, str(tmp_path / "missing" / "mono-quant")))
    out = _verify(unit)
    assert "Unknown key 'KilMode'" in out.stderr or "Unknown key name 'KilMode'" in out.stderr
    assert out.returncode != 0
    assert "is not executable" in out.stderr


def test_the_timer_starts_the_reconcile_service():
    timer = dict(df.unit(df.SYSTEMD / "mono-quant-reconcile.timer")["Timer"])
    assert timer["Unit"] == "mono-quant-reconcile.service"
    service = dict(df.unit(df.SYSTEMD / "mono-quant-reconcile.service")["Service"])
    assert service["Type"] == "oneshot"
    assert dict(df.unit(df.SYSTEMD / "mono-quant-reconcile.timer")["Install"])["WantedBy"] == \
        "timers.target"
