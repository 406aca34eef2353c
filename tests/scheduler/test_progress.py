"""Quiet means quiet: bars only on a terminal, rate-limited lines without one, the
calibration bar reaching its total, third-party bars and chatter off under --quiet."""

from __future__ import annotations

import io
import subprocess
import sys

import torch
from torch import nn

from mono_quant.quant.calibration import run_calibration
from mono_quant.scheduler.cliutil import LineProgress, progress_bar
from tests.worker.harness import REPO


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _calibrate(monkeypatch, stream: io.StringIO) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    model = nn.Sequential(nn.Linear(4, 3))
    batches = [torch.randn(2, 4) for _ in range(6)]  # 8 samples = the first 4 batches
    result = run_calibration(model, batches, layers=["0"], num_samples=8, progress=True)
    assert result.batches == 4
    return stream.getvalue()


def test_calibration_bar_reaches_its_total(monkeypatch):
    text = _calibrate(monkeypatch, Terminal())
    final = text.replace("\r", "\n").strip().splitlines()[-1]
    assert "calibrating" in final and "4/4" in final, final


def test_library_bars_stay_off_without_a_terminal(monkeypatch):
    assert _calibrate(monkeypatch, io.StringIO()) == ""


def test_without_a_terminal_progress_is_a_line_every_few_seconds():
    out = io.StringIO()
    bar = progress_bar(200, "batch 7", file=out)
    assert isinstance(bar, LineProgress)
    for _ in range(200):
        bar.update(1)
    bar.close()
    assert out.getvalue() == ""  # 200 updates within a few seconds: no line at all
    slow = LineProgress(3, "batch 7", out, interval=0.0)
    slow.update(2)
    assert out.getvalue() == "batch 7: 2/3\n"
    assert progress_bar(3, "x", file=out, quiet=True).update(1) is None
    assert out.getvalue() == "batch 7: 2/3\n"


def test_quiet_turns_off_transformers_bars_and_warnings():
    code = (
        "from mono_quant.scheduler.cliutil import quiet_third_party\n"
        "quiet_third_party(quiet=True)\n"
        "from transformers.utils import logging\n"
        "print(logging.is_progress_bar_enabled(), logging.get_verbosity())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "40"]  # logging.ERROR
