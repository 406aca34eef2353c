"""Which pipeline runs a job: ``pipeline: auto`` picks ``sequential`` when the model does not
fit, and what each strategy needs in memory (the estimates admission can reuse).

The rule (documented in docs/sequential.md): the in-memory pipeline holds the float model,
its quantized copy (a full float copy with SmoothQuant) and the activations, taken as
``IN_MEMORY_FACTOR`` x the checkpoint's tensor bytes (from the safetensors headers, nothing
is loaded) + ``HEADROOM_BYTES``. ``auto`` runs ``sequential`` when that exceeds the memory
available on the job's device (``torch.cuda.mem_get_info`` on a GPU, ``MemAvailable`` of
``/proc/meminfo`` on the CPU) and the job can run sequentially
(:meth:`~mono_quant.pipeline.spec.JobSpec.sequential_problems`); else ``in_memory``.

Before this choice, ``stream`` picks the streamed path
(:func:`~mono_quant.pipeline.auto_stream.stream_plan`): ``true`` always, ``false`` never,
and unset (the default) where the streamed artifact is provably the in-memory one, byte for
byte (weight-only ``hf:`` jobs of the verified model families, on the CPU;
:mod:`~mono_quant.pipeline.auto_stream` lists the rules and tests/pipeline/test_auto_stream.py
proves them per family). Streamed jobs build no model and hold about one tensor at a time.

Example:
    >>> in_memory_bytes(4 << 30) == (2 * (4 << 30) + HEADROOM_BYTES)
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["HEADROOM_BYTES", "IN_MEMORY_FACTOR", "available_bytes", "checkpoint_bytes",
           "choose_pipeline", "in_memory_bytes"]

#: In-memory peak as a multiple of the float checkpoint: the model plus its quantized copy.
IN_MEMORY_FACTOR = 2
#: Activations, the interpreter and libraries on top of the tensors.
HEADROOM_BYTES = 1 << 30


def in_memory_bytes(checkpoint: int) -> int:
    """Estimated peak of an in-memory job on a checkpoint of ``checkpoint`` tensor bytes."""
    return IN_MEMORY_FACTOR * checkpoint + HEADROOM_BYTES


def checkpoint_bytes(folder: str | Path) -> int:
    """Tensor bytes of an ``hf:`` folder's safetensors, from their headers."""
    from mono_quant.io._safetensors_stream import read_header
    from mono_quant.pipeline.streaming import checkpoint_files

    return sum(e.nbytes for f in checkpoint_files(folder) for e in read_header(f).tensors.values())


def available_bytes(device: str) -> int:
    """Free memory where the job runs: the GPU's free bytes, or the host's MemAvailable."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_pipeline(spec: Any, device: str = "cpu") -> str:
    """``"in_memory"`` or ``"sequential"`` for a job that is not streamed (module docstring:
    :func:`~mono_quant.pipeline.auto_stream.stream_plan` decides that first)."""
    if spec.pipeline != "auto":
        return str(spec.pipeline)
    if spec.sequential_problems():
        return "in_memory"
    need = in_memory_bytes(checkpoint_bytes(spec.model.folder))
    return "sequential" if need > available_bytes(device) else "in_memory"
