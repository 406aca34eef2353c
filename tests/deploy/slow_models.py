"""Model factories for the shutdown tests, imported by real worker processes (via PYTHONPATH).

``sleepy_mlp`` sleeps before building a small MLP, so a job is reliably *running* when the
test stops its worker. With ``once=<path>`` it sleeps only the first time (it creates the
file), so a re-run of the same job on another worker finishes quickly.
"""

from __future__ import annotations

import time
from pathlib import Path

from mono_quant import demo_models

__all__ = ["sleepy_mlp"]


def sleepy_mlp(seconds: float = 0.0, once: str | None = None):
    if once is None or not Path(once).exists():
        if once is not None:
            Path(once).touch()
        time.sleep(seconds)
    return demo_models.mlp(hidden=32, out_features=8)
