from __future__ import annotations

import subprocess
import sys


def test_demo_prints_the_report():
    out = subprocess.run(
        [sys.executable, "-m", "mono_quant.scheduler.cli", "demo", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["model", "scheme", "granularity", "mode"]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 4
    assert all(float(r[5]) >= 35.0 for r in rows)  # weight SQNR column


def test_unknown_command_exits_2():
    out = subprocess.run([sys.executable, "-m", "mono_quant.scheduler.cli", "frobnicate"],
                         capture_output=True, text=True)
    assert out.returncode == 2
