"""GPU pinning and device choice for worker processes.

A worker serves exactly one GPU. ``pin_gpu`` sets ``CUDA_VISIBLE_DEVICES`` in the worker's
main process *before* anything can initialise CUDA; the prefork children inherit it, and only
they ever touch CUDA (the main process never imports the job code). Inside a child the pinned
GPU is therefore ``cuda:0``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys

from mono_quant.errors import BadConfigError, BadInputError

__all__ = ["detect_gpu_model", "node_name", "pick_device", "pin_gpu", "pinned_gpu", "queues_for"]

_DEVICE_CLASS = re.compile(r"^(cpu|gpu)(\.[a-z0-9][a-z0-9_-]*)?$")


def check_device_class(value: str, field: str = "device") -> str:
    """``cpu``, ``gpu`` or ``gpu.<model>`` (e.g. ``gpu.h100``); the queue a job goes to."""
    if not isinstance(value, str) or not _DEVICE_CLASS.match(value) or value.startswith("cpu."):
        raise BadConfigError(
            f"{field}={value!r}: expected 'cpu', 'gpu' or 'gpu.<model>' (e.g. 'gpu.h100')"
        )
    return value


def pin_gpu(index: int) -> None:
    """Make GPU ``index`` the only one this process (and its children) can see."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise BadInputError(f"--gpu {index!r}: expected a GPU index >= 0")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # too late to pin
        raise RuntimeError("CUDA was initialised before the GPU could be pinned")
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    os.environ["MONO_QUANT_GPU_INDEX"] = str(index)


def pinned_gpu() -> str | None:
    """The physical GPU this process was pinned to (``pin_gpu``), else CUDA's own variable."""
    return os.environ.get("MONO_QUANT_GPU_INDEX") or os.environ.get("CUDA_VISIBLE_DEVICES")


def detect_gpu_model(index: int) -> str | None:
    """A short model name for GPU ``index`` (``h100``, ``a100``…) from nvidia-smi, if present.

    Asking nvidia-smi does not initialise CUDA in this process.
    """
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", str(index)],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\b([A-Z]+\d+[A-Z]*)\b", out.upper().replace("NVIDIA", ""))
    return m.group(1).lower() if m else None


def queues_for(gpu: int | None, extra: list[str] | None = None) -> list[str]:
    """Queues a worker consumes: ``cpu`` for a CPU worker; ``gpu`` + ``gpu.<model>`` for a GPU."""
    if extra:
        return [check_device_class(q, "--queues") for q in extra]
    if gpu is None:
        return ["cpu"]
    model = detect_gpu_model(gpu)
    return ["gpu"] + ([f"gpu.{model}"] if model else [])


def node_name(gpu: int | None) -> str:
    """A unique Celery node name: ``gpu<N>@host`` or ``cpu-<pid>@host``."""
    host = socket.gethostname()
    return f"gpu{gpu}@{host}" if gpu is not None else f"cpu-{os.getpid()}@{host}"


def pick_device() -> str:
    """``cuda`` (the pinned GPU, index 0 in the child) when available, ``cpu`` otherwise."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"
