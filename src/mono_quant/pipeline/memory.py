"""Peak memory of a job: host (``VmHWM``) and device, for the job's metrics.

``reset_peaks`` is called when a job starts: it resets the device's peak statistics and,
on Linux, the process's RSS high-water mark (writing ``5`` to ``/proc/self/clear_refs``),
so a worker process that ran a larger job before reports this job's peak. Where the reset
is not allowed the high-water mark is the process's (``peak_host_reset: false``).

Example:
    >>> peaks = {}
    >>> class Info: metrics = peaks
    >>> add_peaks(Info(), "cpu")
    >>> peaks["peak_host_bytes"] > 0
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["add_peaks", "host_peak_bytes", "reset_peaks"]

_reset_ok = False


def host_peak_bytes() -> int | None:
    """``VmHWM`` of this process in bytes (None where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peaks(device: str) -> None:
    """Start measuring this job's peaks (see the module docstring)."""
    global _reset_ok
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _reset_ok = True
    except OSError:
        _reset_ok = False
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(device))


def add_peaks(info: Any, device: str) -> None:
    """Record ``peak_host_bytes`` (and ``peak_device_bytes`` on a GPU) in ``info.metrics``."""
    host = host_peak_bytes()
    if host is not None:
        info.metrics["peak_host_bytes"] = host
        info.metrics["peak_host_reset"] = _reset_ok
    if device.startswith("cuda"):
        import torch

        info.metrics["peak_device_bytes"] = int(torch.cuda.max_memory_allocated(
            torch.device(device)))
