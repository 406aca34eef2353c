"""``run_pipeline``: one job from model source to checked artifact, for every caller.

``mono-quant quantize``, the Celery worker's ``run_job`` and the embedded runner all call it,
so a spec gives the same artifact bytes whoever runs it. In order, each step announced to
``on_stage`` first:

1. ``loading`` the model (and ``loading calibration data``);
2. ``quantizing``: :func:`~mono_quant.quant.quantize.quantize_model` (calibration included);
   on out-of-memory, once more with the calibration batches halved. With ``spec.stream``,
   or by itself where that provably writes the same artifact (``stream`` unset:
   :mod:`~mono_quant.pipeline.auto_stream`), the checkpoint is instead quantized tensor by
   tensor into the destination (:func:`~mono_quant.pipeline.streaming.quantize_checkpoint`),
   no model built, announced as ``quantizing`` with ``pipeline="streamed"`` or
   ``"streamed (auto)"``; with the
   ``sequential`` pipeline (``spec.pipeline``, or ``auto`` when the model does not fit:
   :mod:`~mono_quant.pipeline.choose`) block by block
   (:func:`~mono_quant.pipeline.sequential.quantize_sequential`), announcing
   ``quantizing block`` after each block, with progress kept in ``work_dir``;
3. ``writing`` the artifact (:func:`~mono_quant.io.formats.save_model`: temporary name,
   fsync, rename);
4. ``reloading`` it and checking it reproduces the quantized model (every layer and tensor
   bit for bit with ``load_quantized``; :mod:`~mono_quant.pipeline.served`); a streamed job
   has no model: every tensor is loaded strictly with the int8 range checks, and
   ``info.metrics["reload_check"]`` names the path that ran;
5. ``hashing`` it (sha256 and size, for the catalog). In memory, the complete artifact is
   hashed in a background thread while step 4 runs, and the float model's digest while
   step 2 runs (hashlib and file reads release the GIL); ``hashing`` then waits for it.
   Streamed, the model digest is taken from the checkpoint's files while step 2 runs.

``on_stage`` may raise to stop the job between steps (the worker does when the job was
cancelled). Errors are the library's: ``BadInputError`` / ``BadConfigError`` for the user's
input, ``torch.OutOfMemoryError`` after the smaller-batch retry, ``MonoQuantError`` for a
reload check that fails.

Example:
    >>> from mono_quant.pipeline import JobSpec, parse_model_source, run_pipeline
    >>> spec = JobSpec(parse_model_source("factory:mono_quant.demo_models:mlp?hidden=32"))
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "mlp.safetensors"
    >>> result = run_pipeline(spec, out)
    >>> result.info.selected_layers, result.path == out, len(result.sha256)
    (['0', '2', '4'], True, 64)
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from mono_quant.pipeline.activations import DEFAULT_OFFLOAD_BYTES
from mono_quant.pipeline.allowlist import FactoryAllowList
from mono_quant.pipeline.auto_stream import StreamPlan, stream_plan
from mono_quant.pipeline.choose import choose_pipeline
from mono_quant.pipeline.memory import add_peaks, oom_error, reset_peaks
from mono_quant.pipeline.spec import JobSpec
from mono_quant.quant.info import QuantizationInfo

__all__ = ["DIGEST_LIMIT_BYTES", "OnStage", "PipelineResult", "Stage", "run_pipeline"]

log = logging.getLogger(__name__)

#: Model weights larger than this are not hashed for the catalog's model digest (a full
#: second read of a large model would cost more than the digest is worth).
DIGEST_LIMIT_BYTES = 2 << 30


class Stage(str, Enum):
    """The steps of a job, as ``on_stage`` hears them and the catalog's progress shows them."""

    LOADING = "loading"
    LOADING_CALIBRATION = "loading calibration data"
    LOADING_EVALUATION = "loading evaluation text"
    QUANTIZING = "quantizing"
    QUANTIZING_SMALLER = "quantizing (smaller calibration batches)"
    QUANTIZING_BLOCK = "quantizing block"
    WRITING = "writing"
    RELOADING = "reloading"
    HASHING = "hashing"


class OnStage(Protocol):
    def __call__(self, stage: str, /, **extra: Any) -> None: ...


#: ``on_progress(stage, done, total)`` inside a step (calibration batches, layers).
OnProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PipelineResult:
    """What a run produced: the artifact and what the catalog records about it."""

    #: The artifact written (a file, or a folder for compressed-tensors).
    path: Path
    #: Its QuantizationInfo; ``metrics["reload_check"]`` says which check ran.
    info: QuantizationInfo
    #: sha256 of the artifact's bytes (files in name order for a folder) and their size.
    sha256: str
    size_bytes: int
    #: sha256 of the float model's state dict (None: over DIGEST_LIMIT_BYTES, or streamed
    #: from a family whose state dict is not known: :mod:`~mono_quant.pipeline.auto_stream`).
    model_digest: str | None


def _no_stage(stage: str, /, **extra: Any) -> None:
    log.debug("stage %s %s", stage, extra or "")


def run_pipeline(
    spec: JobSpec,
    destination: str | Path,
    *,
    on_stage: OnStage | None = None,
    on_progress: OnProgress | None = None,
    device: str = "cpu",
    progress: bool = False,
    factories: FactoryAllowList | None = None,
    work_dir: str | Path | None = None,
    activation_offload_bytes: int | None = DEFAULT_OFFLOAD_BYTES,
) -> PipelineResult:
    """Run ``spec`` and write its artifact at ``destination``; see the module docstring.

    ``device`` is where the model is loaded and quantized (``"cuda:0"``, …); ``progress``
    shows tqdm bars (the CLI's, not a worker's). ``factories``: the modules ``factory:``
    sources may import (services pass the operator's allow-list; None: the caller vouches).
    Before any work, a destination inside an ``hf:`` source folder, or an existing one that
    is not a mono-quant artifact of this format, is refused (BadInputError).
    ``work_dir``: where a sequential run keeps its progress (default: ``<destination>.work``);
    a run that finds it resumes there, and removes it on success. It may be an object store's
    URL (``s3://bucket/…/7.work``): the progress is then uploaded there after each block, so
    a run on another machine resumes from it. ``activation_offload_bytes``: a sequential
    run's cached activations beyond this go to disk in ``work_dir`` (0: always, None: never;
    :mod:`~mono_quant.pipeline.activations`).

    ``info.metrics`` gets ``peak_host_bytes`` (the process's ``VmHWM``, reset at the start
    where Linux allows) and, on a GPU, ``peak_device_bytes``, measured up to the reload
    check: in the result (and so the catalog), not in the artifact, whose bytes stay the
    same whoever runs the job.
    """
    from mono_quant.io._targets import check_outside_source, check_replaceable

    stage = on_stage or _no_stage
    path = Path(destination)
    if spec.model.scheme == "hf":
        check_outside_source(path, spec.model.target)
    check_replaceable(path, spec.format)
    reset_peaks(device)
    hashed = None
    plan = stream_plan(spec, device)
    if plan is not None:
        info, digest, hashed = _streamed(spec, path, stage, progress, plan)
    elif choose_pipeline(spec, device) == "sequential":
        work = work_dir if work_dir is not None else path.with_name(path.name + ".work")
        info, digest = _sequential(spec, path, stage, device, factories, work,
                                   activation_offload_bytes), None
    else:
        info, digest, hashed = _in_memory(spec, path, stage, on_progress, device, progress,
                                          factories)
    add_peaks(info, device)  # after the write: the artifact's bytes do not depend on them
    stage(Stage.HASHING.value)
    sha256, size = hashed if hashed is not None else _artifact_hash(path)
    return PipelineResult(path, info, sha256, size, digest)


def _artifact_hash(path: Path) -> tuple[str, int]:
    """(sha256, size) of the artifact at ``path``."""
    from mono_quant.io.hashing import sha256_path, size_path

    return sha256_path(path), size_path(path)


def _streamed(spec: JobSpec, path: Path, stage: OnStage, progress: bool, plan: StreamPlan):
    from mono_quant.io.formats import load_model
    from mono_quant.pipeline.choose import checkpoint_bytes
    from mono_quant.pipeline.streaming import checkpoint_files, quantize_checkpoint

    folder = spec.model.folder
    stage(Stage.QUANTIZING.value, pipeline=plan.pipeline)
    with ThreadPoolExecutor(1, thread_name_prefix="mono-quant-hash") as background:
        digest = None  # the float model's digest, read from the files while they stream
        if plan.aliases is not None and checkpoint_bytes(folder) <= DIGEST_LIMIT_BYTES:
            digest = background.submit(_checkpoint_digest, checkpoint_files(folder),
                                       plan.aliases)
        hashed: list[tuple[str, int]] = []  # taken while the bytes were written
        info = quantize_checkpoint(folder, path, spec.config, progress=progress,
                                   tied=plan.tied, on_sha256=lambda *h: hashed.append(h))
        stage(Stage.RELOADING.value)
        tensors = load_model(path)  # every tensor, strictly, with the int8 range checks
        info.metrics["reload_check"] = (
            f"ok ({plan.pipeline}): {len(tensors)} tensors loaded strictly (streaming builds "
            "no model to compare outputs with)"
        )
        return (info, digest.result() if digest is not None else None,
                hashed[0] if hashed else None)


def _checkpoint_digest(files: list[Path], aliases: dict[str, str]) -> str:
    from mono_quant.io.hashing import checkpoint_digest

    return checkpoint_digest(files, aliases)


def _sequential(spec: JobSpec, path: Path, stage: OnStage, device: str,
                factories: FactoryAllowList | None, work: str | Path,
                offload_bytes: int | None) -> QuantizationInfo:
    from mono_quant.pipeline.seq_artifact import reload_check
    from mono_quant.pipeline.sequential import quantize_sequential

    def on_block(event: str, block: int, total: int) -> None:
        if event == "block":
            stage(Stage.QUANTIZING_BLOCK.value, block=block + 1, blocks=total)
        elif event == "smaller":  # out of memory: the block again, batches halved
            stage(Stage.QUANTIZING_SMALLER.value, block=block + 1, blocks=total)
        else:  # started / resumed: the first block this attempt runs
            stage(Stage.QUANTIZING.value, pipeline="sequential", first_block=block,
                  blocks=total, resumed=event == "resumed")

    info = quantize_sequential(spec, path, work, device=device, factories=factories,
                               on_block=on_block, offload_bytes=offload_bytes)
    stage(Stage.RELOADING.value)
    info.metrics["reload_check"] = reload_check(path, info)
    return info


def _in_memory(spec: JobSpec, path: Path, stage: OnStage, on_progress: OnProgress | None,
               device: str, progress: bool, factories: FactoryAllowList | None):
    from mono_quant.io.formats import save_model
    from mono_quant.pipeline.card import source_files
    from mono_quant.pipeline.served import served_check

    with ThreadPoolExecutor(1, thread_name_prefix="mono-quant-hash") as background:
        # hashlib and file reads release the GIL: the model digest is taken while the model
        # is quantized, and the artifact is hashed while the served check runs
        model, batches, digest = _load(spec, stage, device, factories, background)
        evaluation = _evaluation(spec, stage)
        qmodel, info = _quantize(model, spec, batches, stage, on_progress, device, progress,
                                 evaluation)
        digest = digest.result() if digest is not None else None  # before the model changes
        stage(Stage.WRITING.value)
        save_model(qmodel, path, info=info, format=spec.format,
                   extra_files=source_files(spec.model, qmodel, info, spec.format),
                   max_shard_size=spec.max_shard_size)
        stage(Stage.RELOADING.value)
        hashed = background.submit(_artifact_hash, path)  # the complete, renamed artifact
        # the float model is not needed any more: the artifact may be rebuilt into it
        served_check(path, spec.format, model, qmodel, info, batches[0] if batches else None)
        return info, digest, hashed.result()


def _load(spec: JobSpec, stage: OnStage, device: str, factories: FactoryAllowList | None,
          background: ThreadPoolExecutor):
    """The model, the calibration batches and the future of the float model's digest (None:
    over :data:`DIGEST_LIMIT_BYTES`), computed by ``background``."""
    from mono_quant.io.hashing import state_dict_digest

    stage(Stage.LOADING.value)
    model = spec.model.load(factories).to(device)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    digest = background.submit(state_dict_digest, model) if size <= DIGEST_LIMIT_BYTES else None
    batches = None
    if spec.calibration is not None:
        stage(Stage.LOADING_CALIBRATION.value)
        batches = spec.calibration.load(spec.model, spec.samples, factories)
    return model, batches, digest


def _evaluation(spec: JobSpec, stage: OnStage) -> dict[str, Any]:
    """quantize_model's perplexity arguments for the spec's evaluation text, if any."""
    if spec.evaluation is None:
        return {}
    stage(Stage.LOADING_EVALUATION.value)
    tokens = spec.evaluation.token_ids(spec.model.tokenizer())
    return {"eval_tokens": tokens, "eval_context": spec.evaluation.context}


def _quantize(model, spec: JobSpec, batches, stage: OnStage, on_progress, device: str,
              progress: bool, evaluation: dict[str, Any]) -> tuple[Any, QuantizationInfo]:
    """quantize_model; on out-of-memory, once more with calibration batches halved."""
    import torch

    from mono_quant.quant.quantize import quantize_model

    stage(Stage.QUANTIZING.value)
    try:
        return quantize_model(model, spec.config, batches, progress=progress,
                              on_progress=on_progress, **evaluation)
    except oom_error():
        if not batches:
            raise
    # Outside the except block: its traceback no longer pins the failed attempt's tensors.
    log.warning("out of memory: retrying once with calibration batches halved")
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    stage(Stage.QUANTIZING_SMALLER.value)
    return quantize_model(model, spec.config, _halve(batches), progress=progress,
                          on_progress=on_progress, **evaluation)


def _halve(batches: list[Any]) -> list[Any]:
    """The same samples in batches half as large (for an out-of-memory retry)."""
    import torch

    def split(item: Any) -> list[Any]:
        if isinstance(item, torch.Tensor):
            return list(item.chunk(2)) if item.ndim and item.shape[0] > 1 else [item]
        if isinstance(item, dict):
            parts = {k: split(v) for k, v in item.items()}
            n = min(len(p) for p in parts.values()) if parts else 1
            return [{k: p[i] if len(p) == n else p[0] for k, p in parts.items()} for i in range(n)]
        if isinstance(item, (list, tuple)):
            parts = [split(v) for v in item]
            n = min(len(p) for p in parts) if parts else 1
            return [type(item)(p[i] if len(p) == n else p[0] for p in parts) for i in range(n)]
        return [item]

    return [half for item in batches for half in split(item)]
