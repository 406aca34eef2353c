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

__all__ = ["add_peaks", "host_peak_bytes", "oom_error", "release_freed_memory", "reset_peaks"]

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


def oom_error() -> type[BaseException]:
    """The exception torch raises when a device runs out of memory."""
    import torch

    # torch.OutOfMemoryError is new in 2.5; torch.cuda's alias is older
    return getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def release_freed_memory() -> bool:
    """Hand the heap memory freed since the last call back to the operating system
    (glibc's ``malloc_trim(0)``; False where there is no glibc).

    Why: tensors under glibc's mmap threshold (which grows to 32 MiB as large blocks are
    freed) come from the heap, and glibc keeps freed heap memory for reuse. The sequential
    pipeline frees a block's tensors after each block, and with SmoothQuant's and the
    observers' temporaries the kept memory grew with every block: 40 MiB per block at a
    1 GiB checkpoint (hidden 1024), with no tensor left alive (docs/sequential.md). Trimming
    after each block keeps the resident set flat.
    """
    import ctypes
    import ctypes.util

    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _libc = lib if lib is not None and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    if _libc is False:
        return False
    _libc.malloc_trim(0)
    return True


_libc: Any = None


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
