"""Admission: does a job fit this worker's device, now, before the worker claims it?

A worker reads the job's spec (without claiming it), estimates the memory the job needs from
the checkpoint's safetensors **headers** (no weight is read) and the pipeline strategy, and
compares it with its device:

* **GPU**: ``torch.cuda.mem_get_info()`` (free, total) of the pinned GPU;
* **CPU**: the host's ``MemAvailable`` / ``MemTotal`` from ``/proc/meminfo`` (CPU jobs are
  admitted against host memory too: a CPU worker that swaps or meets the OOM killer loses
  the job's time just as surely; a host without ``/proc/meminfo`` admits every job).

Then, under the device's reservation ledger (:mod:`.reservations`):

================  ===================================================  ====================
verdict           when                                                 what the worker does
================  ===================================================  ====================
``never``         needed > the device's total memory                   claims the job and
                                                                       fails it as
                                                                       ``bad_config`` with
                                                                       the numbers
``wait``          needed > min(free now, total - reserved by others)   leaves the job queued
                                                                       and offers it again
                                                                       after
                                                                       ``ADMISSION_RETRY`` s
                                                                       (no attempt counted)
``admit``         otherwise                                            reserves ``needed``
                                                                       until the job ends
================  ===================================================  ====================

Estimates per strategy (a registry: :func:`register_strategy`; the sequential pipeline's
estimate is registered here, its strategy name is the JobSpec's ``pipeline`` value):

* ``in_memory`` ≈ float model (as loaded: float32) + its int8 copy (one byte per weight
  element of every 2-D+ float tensor) + activations (a tenth of the float model, at least
  :data:`MIN_ACTIVATION_BYTES`);
* ``sequential`` ≈ twice the largest block (float and quantized, the GPTQ/SmoothQuant
  statistics) + the activations it holds. A block's cached inputs are
  ``samples × sequence × hidden × 4 B`` (``sequence`` = ``max_position_embeddings`` capped
  at :data:`MAX_SEQUENCE`), and two caches live at once (the block's inputs and outputs).
  The caches live in host memory and go to disk beyond ``MONO_QUANT_ACTIVATION_OFFLOAD_BYTES``
  each (:mod:`mono_quant.pipeline.activations`), so:

  - on the CPU, each counts ``min(cache, max(limit, one batch))`` (no limit: the cache);
  - on a GPU, the device only ever holds one batch's inputs and outputs (``2 × batch ×
    sequence × hidden × 4 B``, ``batch`` the calibration source's ``batch_size``): the
    caches are host memory, which GPU admission does not compare with;
* ``auto``: ``in_memory`` if that fits the device's total memory, else ``sequential``.

Jobs whose model is a ``factory:`` callable have no checkpoint to read: they are admitted
without an estimate (nothing reserved).

Example:
    >>> summary = CheckpointSummary(float_bytes=4 << 30, int8_bytes=1 << 30,
    ...                             largest_block_bytes=200 << 20, hidden_size=4096,
    ...                             max_positions=4096)
    >>> est = estimate_from_summary(summary, "in_memory", None)
    >>> est.bytes == (4 << 30) + (1 << 30) + (4 << 30) // 10
    True
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from mono_quant.config import DEFAULT_ACTIVATION_OFFLOAD_BYTES
from mono_quant.errors import BadInputError

__all__ = [
    "CheckpointSummary",
    "Context",
    "Decision",
    "DeviceMemory",
    "Estimate",
    "Verdict",
    "decide",
    "device_memory",
    "estimate_from_summary",
    "estimate_memory",
    "gib",
    "register_strategy",
    "summarize_checkpoint",
]

log = logging.getLogger("mono_quant.admission")

#: Activations of an in-memory job are at least this (calibration batches, observers).
MIN_ACTIVATION_BYTES = 256 << 20
#: Sequence length assumed for the activation cache of a sequential job.
MAX_SEQUENCE = 2048
#: Calibration samples assumed when a spec does not say how many.
DEFAULT_SAMPLES = 128
#: Samples per calibration batch when the source does not say (the sources' default).
DEFAULT_BATCH = 8
#: A repeated block's prefix: ``model.layers.3.``, ``transformer.h.11.``, ``encoder.layer.0.``
_BLOCK = re.compile(r"^(.*?\b(?:layers|layer|h|blocks|block)\.\d+)\.")
_FLOAT = ("F64", "F32", "F16", "BF16")


def gib(n: int) -> str:
    """``12.50 GiB`` for a byte count (``300.0 MiB`` below a GiB)."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True)
class CheckpointSummary:
    """What the estimate needs of a checkpoint, read from its headers and config.json."""

    #: The float model as loaded (float32 for every floating tensor).
    float_bytes: int
    #: Its int8 copy: one byte per element of every 2-D+ floating tensor.
    int8_bytes: int
    #: The largest repeated block (or non-block group: embeddings, head) as loaded.
    largest_block_bytes: int
    hidden_size: int | None = None
    max_positions: int | None = None


def summarize_checkpoint(folder: str | Path) -> CheckpointSummary:
    """Sizes from the safetensors headers of an ``hf:`` folder (no weight is read)."""
    from mono_quant.io._safetensors_stream import read_header
    from mono_quant.pipeline.streaming import checkpoint_files

    folder = Path(folder)
    float_bytes = int8_bytes = 0
    groups: dict[str, int] = {}
    for path in checkpoint_files(folder):
        for name, e in read_header(path).tensors.items():
            numel = e.nbytes // max(1, _itemsize(e.dtype))
            loaded = numel * 4 if e.dtype in _FLOAT else e.nbytes
            float_bytes += loaded
            if e.dtype in _FLOAT and len(e.shape) >= 2:
                int8_bytes += numel
            m = _BLOCK.match(name)
            key = m.group(1) if m else name
            groups[key] = groups.get(key, 0) + loaded
    config = _config(folder)
    return CheckpointSummary(
        float_bytes=float_bytes, int8_bytes=int8_bytes,
        largest_block_bytes=max(groups.values(), default=0),
        hidden_size=_positive(config.get("hidden_size") or config.get("d_model")),
        max_positions=_positive(config.get("max_position_embeddings")),
    )


def _itemsize(st_dtype: str) -> int:
    from mono_quant.io._safetensors_header import DTYPES

    dtype = DTYPES.get(st_dtype)
    return dtype.itemsize if dtype is not None else 1


def _config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True)
class Estimate:
    """Bytes a job needs on its device, by part, for one strategy."""

    strategy: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = " + ".join(f"{k} {gib(v)}" for k, v in self.parts.items())
        return f"{gib(self.bytes)} ({self.strategy}: {parts})"


@dataclass(frozen=True)
class Context:
    """Where and how a job runs, beyond its checkpoint: what the estimate of its
    activations depends on."""

    #: Calibration samples (None: :data:`DEFAULT_SAMPLES`).
    samples: int | None = None
    #: Samples per calibration batch (None: :data:`DEFAULT_BATCH`).
    batch: int | None = None
    #: ``cpu`` or ``cuda:N``: the memory admission compares with.
    device: str = "cpu"
    #: A sequential job's activation cache beyond this goes to disk (None: never;
    #: ``MONO_QUANT_ACTIVATION_OFFLOAD_BYTES``, 1 GiB by default).
    offload_bytes: int | None = DEFAULT_ACTIVATION_OFFLOAD_BYTES


#: strategy name -> parts of its estimate (summary, context).
_STRATEGIES: dict[str, Callable[[CheckpointSummary, Context], dict[str, int]]] = {}


def register_strategy(name: str):
    """Register the estimate of a pipeline strategy (``fn(summary, context) -> parts``)."""
    def wrap(fn):
        _STRATEGIES[name] = fn
        return fn
    return wrap


# registered below, not with the decorator: mutmut leaves decorated functions unmutated, and
# these formulas are in the mutation set (tools/mutate.py, group "admission")
def _in_memory(s: CheckpointSummary, _ctx: Context) -> dict[str, int]:
    return {"float model": s.float_bytes, "int8 copy": s.int8_bytes,
            "activations": max(MIN_ACTIVATION_BYTES, s.float_bytes // 10)}


def _sequential(s: CheckpointSummary, ctx: Context) -> dict[str, int]:
    seq = min(s.max_positions or MAX_SEQUENCE, MAX_SEQUENCE)
    sample = seq * (s.hidden_size or 0) * 4
    samples = ctx.samples or DEFAULT_SAMPLES
    cache = samples * sample
    batch = min(ctx.batch or DEFAULT_BATCH, samples) * sample
    parts = {"largest block x2": 2 * s.largest_block_bytes}
    if ctx.device.startswith("cuda"):  # the caches are host memory; one batch goes over
        parts["activations (one batch in and out)"] = 2 * batch
    elif ctx.offload_bytes is not None and cache > max(ctx.offload_bytes, batch):
        parts["activation cache (rest on disk)"] = 2 * max(ctx.offload_bytes, batch)
    else:
        parts["activation cache"] = 2 * cache
    return parts


register_strategy("in_memory")(_in_memory)
register_strategy("sequential")(_sequential)


def estimate_from_summary(summary: CheckpointSummary, strategy: str,
                          context: Context | int | None = None,
                          total: int | None = None) -> Estimate:
    """The estimate for ``strategy``; ``auto`` picks in_memory when it fits ``total``.
    ``context``: a :class:`Context`, or just the number of calibration samples."""
    ctx = context if isinstance(context, Context) else Context(samples=context)
    if strategy == "auto":
        fits = total is None or estimate_from_summary(summary, "in_memory", ctx).bytes <= total
        strategy = "in_memory" if fits else "sequential"
    try:
        parts = _STRATEGIES[strategy](summary, ctx)
    except KeyError:
        raise BadInputError(f"admission: no estimate for pipeline strategy {strategy!r}; "
                            f"known: {', '.join(sorted(_STRATEGIES))}") from None
    return Estimate(strategy, parts)


def estimate_memory(spec: Any, total: int | None = None, *, device: str = "cpu",
                    offload_bytes: int | None = DEFAULT_ACTIVATION_OFFLOAD_BYTES,
                    ) -> Estimate | None:
    """The estimate for a JobSpec on ``device`` (None: a ``factory:`` model, or a streamed
    job, asked for or chosen by itself (:mod:`~mono_quant.pipeline.auto_stream`), which
    bounds its own memory). ``spec.pipeline`` names the strategy where the spec has one;
    ``offload_bytes`` is the worker's activation offload limit."""
    if spec.model.scheme != "hf" or spec.stream:
        return None
    if spec.stream is None:
        from mono_quant.pipeline.auto_stream import auto_problems

        if not auto_problems(spec, device):
            return None
    strategy = getattr(spec, "pipeline", "in_memory") or "in_memory"
    batch = getattr(getattr(spec, "calibration", None), "batch_size", None)
    ctx = Context(samples=spec.samples, batch=batch, device=device, offload_bytes=offload_bytes)
    return estimate_from_summary(summarize_checkpoint(spec.model.folder), strategy, ctx, total)


@dataclass(frozen=True)
class DeviceMemory:
    """A device's memory as admission sees it."""

    #: The ledger's name for the device (``gpu0``, ``cpu``).
    key: str
    #: For people: ``NVIDIA H100 80GB HBM3 (cuda:0)``, ``host memory``.
    name: str
    total: int
    free: int


def _meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    out = {}
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields = rest.split()
                if fields and fields[0].isdigit():
                    out[key] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    except OSError:
        return {}
    return out


def device_memory(device: str, gpu_index: str | None = None) -> DeviceMemory | None:
    """The pinned GPU's ``mem_get_info`` for ``cuda:*``, else host memory (None: unknown)."""
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(device)
        name = f"{torch.cuda.get_device_name(device)} ({device}, GPU {gpu_index or '?'})"
        return DeviceMemory(f"gpu{gpu_index or 0}", name, int(total), int(free))
    info = _meminfo()
    if "MemTotal" not in info or "MemAvailable" not in info:
        return None
    return DeviceMemory("cpu", "host memory (MemAvailable)", info["MemTotal"],
                        info["MemAvailable"])


class Verdict(str, Enum):
    ADMIT = "admit"
    WAIT = "wait"
    NEVER = "never"


@dataclass(frozen=True)
class Decision:
    """An admission verdict with its numbers (``reason`` is the sentence the job shows)."""

    verdict: Verdict
    needed: int
    available: int
    reason: str


def decide(estimate: Estimate, memory: DeviceMemory, reserved: int) -> Decision:
    """The verdict for ``estimate`` on ``memory`` with ``reserved`` bytes held by other jobs
    of this device (their reservations: memory they may not have allocated yet)."""
    needed = estimate.bytes
    available = max(0, min(memory.free, memory.total - reserved))
    if needed > memory.total:
        return Decision(Verdict.NEVER, needed, memory.total, (
            f"the job needs about {estimate.describe()} but {memory.name} has "
            f"{gib(memory.total)} in all: it fits no device of this queue (use a larger "
            "device class, pipeline: sequential, or fewer calibration samples)"))
    if needed > available:
        return Decision(Verdict.WAIT, needed, available, (
            f"the job needs about {estimate.describe()}; {memory.name} has {gib(available)} "
            f"available now (free {gib(memory.free)}, reserved by running jobs "
            f"{gib(reserved)}, total {gib(memory.total)})"))
    return Decision(Verdict.ADMIT, needed, available,
                    f"admitted: {estimate.describe()} of {gib(available)} on {memory.name}")
