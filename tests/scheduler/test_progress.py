"""Quiet means quiet: bars only on a terminal, rate-limited lines without one, the
calibration bar reaching its total, third-party bars and chatter off under --quiet."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
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


ROUTED = (
    "import logging\n"
    "logging.basicConfig(format='OURS %(levelname)s %(name)s: %(message)s')\n"
    "from mono_quant.scheduler.cliutil import route_third_party_logs\n"
    "{before}"
    "route_third_party_logs()\n"
    "route_third_party_logs()\n"  # idempotent: still one line per record
    "from transformers.utils import logging as tl\n"
    "tl.get_logger('transformers.modeling_utils').warning('some weights were not used')\n"
    "tl.get_logger('transformers.x').info('below the level: not shown')\n"
    "from huggingface_hub.utils import logging as hl\n"
    "hl.get_logger('huggingface_hub.file_download').warning('hub says')\n"
)


@pytest.mark.parametrize("before", ["", "import transformers.utils.logging\n"],
                         ids=["routed-on-import", "already-imported"])
def test_third_party_logs_go_through_our_logging(before):
    """transformers and huggingface_hub install their own stderr handlers ('[transformers]
    ...', no level, no name); routed, each record comes out once, in our format."""
    out = subprocess.run([sys.executable, "-c", ROUTED.format(before=before)],
                         capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "OURS WARNING transformers.modeling_utils: some weights were not used",
        "OURS WARNING huggingface_hub.file_download: hub says",
    ]


def test_the_command_line_routes_third_party_logs(tmp_path):
    """`mono-quant` itself installs the routing before any command runs."""
    code = ("import sys\nfrom mono_quant.scheduler import cli\ncli.main(['where', '--json'])\n"
            "from transformers.utils import logging as tl\n"
            "tl.get_logger('transformers.x').warning('routed')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                              "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().endswith("WARNING transformers.x: routed"), out.stderr
