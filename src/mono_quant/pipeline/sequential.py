"""The sequential pipeline: quantize an ``hf:`` model block by block, memory bounded,
resumable.

The model is a skeleton whose parameters are on the meta device
(:func:`~mono_quant.pipeline.skeleton.build_skeleton`). Only the tensors outside the repeated
blocks (embeddings, final norm, head) are loaded for the whole job. The calibration batches
run through the embeddings until the first block, where a forward pre-hook records the
block's inputs (positional and keyword: attention mask, position embeddings) and stops the
forward (the way llm-compressor's sequential pipeline captures a subgraph's inputs). Then,
for each block ``i`` (the quantizer is :func:`~mono_quant.quant.quantize.quantize_model`'s
own steps, run on the block under its full names, so selection patterns, SmoothQuant's
architecture registry and GPTQ see the same names as in memory)::

    load block i from the safetensors shards  ->  SmoothQuant / observers / GPTQ statistics
    on the cached inputs  ->  quantize its layers  ->  run the cached inputs through the
    quantized block (its outputs are block i+1's inputs: errors propagate as at inference)
    ->  write its tensors and the new inputs durably (progress.py)  ->  free the block

Last, every block is replaced by a replay of the final block outputs, and the layers
outside the blocks (the head) are calibrated and quantized on the original batches. The
cached activations live in host memory, or on disk in the work folder when large
(:mod:`~mono_quant.pipeline.activations`), and go to the device one batch at a time; a block
that runs out of device memory is run again with its batches halved. The artifact
(safetensors or compressed-tensors, one file or shards) is written from the blocks' parts at
the end (:mod:`~mono_quant.pipeline.seq_artifact`).

Equivalence with ``in_memory``: weights and weight scales are computed by the same kernel on
the same float weights, so weight-only and dynamic jobs give identical integers. Static
activation scales and SmoothQuant scales come from activations that went through quantized
blocks (in memory: float ones), so they differ by a bounded amount (tests/pipeline/
test_sequential.py states the measured bounds).

Example:
    >>> from mono_quant.pipeline.sequential import block_peak_bytes
    >>> block_peak_bytes(10 * 2**30, 32) // 2**20   # a 10 GiB checkpoint of 32 blocks
    640
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mono_quant.errors import BadConfigError, BadInputError, MonoQuantError
from mono_quant.pipeline.activations import DEFAULT_OFFLOAD_BYTES, ActivationCache, Column
from mono_quant.pipeline.memory import oom_error, release_freed_memory
from mono_quant.pipeline.progress import Progress, fingerprint
from mono_quant.pipeline.skeleton import (
    CheckpointWeights,
    build_skeleton,
    find_blocks,
    free,
    move_buffers,
)
from mono_quant.quant.calibration import run_batch, to_device
from mono_quant.quant.info import QuantizationInfo, library_versions
from mono_quant.quant.metrics import ErrorAccumulator
from mono_quant.quant.modules import is_quantizable
from mono_quant.quant.quantize import _observe, _quantize_layers, select_layers

__all__ = ["block_peak_bytes", "quantize_sequential"]

log = logging.getLogger(__name__)

#: ``on_block(event, block, total)``: "resumed" (block = first to run), "block" (done).
OnBlock = Callable[[str, int, int], None]


def block_peak_bytes(checkpoint_bytes: int, blocks: int) -> int:
    """Estimated working memory of the sequential pipeline beyond the tensors outside the
    blocks: two blocks' worth (the float block and its int8 copy while it is swapped)."""
    return 2 * checkpoint_bytes // max(blocks, 1)


class _Captured(MonoQuantError):
    """Raised by the pre-hook of block 0 to stop the forward once its inputs are known
    (a MonoQuantError so that ``run_batch`` lets it through unchanged)."""

    def __init__(self, inputs: dict[str, Any]) -> None:
        super().__init__("block inputs captured")
        self.inputs = inputs


def _cpu(item: Any) -> Any:
    return to_device(item, torch.device("cpu"))


def capture_inputs(model: nn.Module, block: nn.Module, batches: list[Any], device: Any,
                   sink: Any = None) -> Any:
    """The keyword inputs of ``block`` (the first block) for each batch, on the CPU,
    appended to ``sink`` (a list, or an :class:`~mono_quant.pipeline.activations.
    ActivationCache`, which goes to disk when large); returns it."""
    signature = inspect.signature(block.forward)

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        bound = dict(signature.bind_partial(*args, **kwargs).arguments)
        for name, p in signature.parameters.items():  # flatten **kwargs
            if p.kind is inspect.Parameter.VAR_KEYWORD and name in bound:
                bound.update(bound.pop(name))
        raise _Captured(bound)

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    captured = [] if sink is None else sink
    try:
        with torch.no_grad():
            for i, item in enumerate(batches):
                try:
                    run_batch(model, to_device(item, device), "calibration", i)
                except _Captured as c:
                    captured.append(_cpu(c.inputs))
                    continue
                raise BadInputError(f"calibration batch {i} never reached the first block")
    finally:
        handle.remove()
    return captured


def _first_tensor(out: Any) -> tuple[torch.Tensor, int]:
    """A block's hidden-state output and the output's arity (0: a bare tensor)."""
    if isinstance(out, torch.Tensor):
        return out, 0
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0], len(out)
    raise MonoQuantError(f"a block returned {type(out).__name__}: expected a tensor or a tuple "
                         "starting with one")


class _BlockHost(nn.Module):
    """Holds one block under its full qualified name (``model.layers.3``), with the model's
    config: quantize_model's steps then name layers as in the whole model."""

    def __init__(self, block: nn.Module, prefix: str, config: Any) -> None:
        super().__init__()
        parent: nn.Module = self
        *path, last = prefix.split(".")
        for part in path:
            child = nn.Module()
            parent.add_module(part, child)
            parent = child
        parent.add_module(last, block)
        self.prefix = prefix
        self.config = config

    def forward(self, **inputs: Any) -> Any:
        return self.get_submodule(self.prefix)(**inputs)


class _Replay(nn.Module):
    """Stands in for a done block in the tail stage: returns the final block outputs of the
    batch the model is running (``cursor[0]``, set by a pre-hook on the model)."""

    def __init__(self, outputs: Sequence[torch.Tensor], cursor: list[int], arity: int) -> None:
        super().__init__()
        self.outputs, self.cursor, self.arity = outputs, cursor, arity

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        h = self.outputs[self.cursor[0]]
        ref = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), h)
        h = h.to(ref.device)
        return h if self.arity == 0 else (h, *([None] * (self.arity - 1)))


class _Stats:
    """What the blocks measured, kept JSON-able for the progress file."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        d = data or {}
        self.layers: dict[str, float] = d.get("layers", {})
        self.total = ErrorAccumulator(**d.get("total", {}))
        self.smooth: dict[str, Any] = d.get("smooth", {})
        self.gptq: dict[str, Any] = d.get("gptq", {"layers_gptq": 0, "layers_rtn_better": []})
        self.samples: int = d.get("samples", 0)
        self.arity: int = d.get("arity", 0)

    def add(self, accs: dict[str, ErrorAccumulator], extra: dict[str, Any],
            algorithms: dict[str, Any], samples: int) -> None:
        for name, acc in accs.items():
            self.layers[name] = acc.sqnr_db
            self.total.merge(acc)
        sq = extra.get("smoothquant")
        if sq is not None:
            merged = self.smooth or {**sq, "smoothed": {}, "strengths": {}, "not_smoothed": [],
                                     "unmapped_layers": []}
            merged["smoothed"].update(sq["smoothed"])
            merged.setdefault("strengths", {}).update(sq.get("strengths", {}))
            merged["not_smoothed"] = sorted({*merged.get("not_smoothed", []),
                                             *sq.get("not_smoothed", [])})
            merged["unmapped_layers"] += sq["unmapped_layers"]
            self.smooth = merged
        self.gptq["layers_gptq"] += algorithms["layers_gptq"]
        self.gptq["layers_rtn_better"] += algorithms["layers_rtn_better"]
        self.samples = max(self.samples, samples)

    def restore(self, data: dict[str, Any]) -> None:
        """Back to what :meth:`to_json` returned (a block that is run again)."""
        self.__init__(json.loads(json.dumps(data)))  # type: ignore[misc]

    def to_json(self) -> dict[str, Any]:
        t = self.total
        return {"layers": self.layers, "smooth": self.smooth, "gptq": self.gptq,
                "samples": self.samples, "arity": self.arity,
                "total": {"signal": t.signal, "noise": t.noise, "approx_sq": t.approx_sq,
                          "dot": t.dot}}


def _quantize_part(host: nn.Module, layers: list[str], config: Any, data: list[Any] | None,
                   stats: _Stats) -> None:
    """quantize_model's steps (statistics, then the swap) on ``host``'s ``layers``."""
    if not layers:
        return
    calibration, hessians, samples, extra = _observe(host, config, layers, data, None, False,
                                                     None)
    accs, _, algorithms = _quantize_layers(host, layers, config, calibration, hessians, False,
                                           None)
    stats.add(accs, extra, algorithms, samples)


def _propagate(host: nn.Module, items: Sequence[dict[str, Any]], device: Any,
               stats: _Stats, out: Any) -> Any:
    """The next block's inputs, appended to ``out`` (a cache): ``items`` run through the
    (quantized) block, one batch at a time."""
    hidden = next(iter(items[0]))  # the block's first argument: the hidden states
    with torch.no_grad():
        for i, item in enumerate(items):
            h, stats.arity = _first_tensor(run_batch(host, to_device(item, device),
                                                     "calibration", i))
            out.append({**item, hidden: h.cpu()})
    return out


def _block_tensors(block: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in block.state_dict().items()}


def _dedupe(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from mono_quant.io.formats import _dedupe_shared

    return _dedupe_shared(tensors)


def _needs_data(config: Any) -> bool:
    return (config.mode == "static" or config.smoothquant is not None
            or config.weight_algorithm == "gptq")


class _Job:
    """One sequential run: the skeleton, its checkpoint, the data and the progress."""

    def __init__(self, spec: Any, work_dir: Path, device: Any, factories: Any,
                 remote: str | None = None,
                 offload_bytes: int | None = DEFAULT_OFFLOAD_BYTES) -> None:
        folder = Path(spec.model.folder)
        self.config, self.device = spec.config, device
        self.model = build_skeleton(folder, spec.model.text)
        self.blocks = find_blocks(self.model)
        self.count = len(self.model.get_submodule(self.blocks))
        self.order = {name: i for i, (name, _) in enumerate(self.model.named_modules())}
        self.quantizable = [n for n, m in self.model.named_modules() if n and is_quantizable(m)]
        self.layers_total = len(self.quantizable)
        self.format = spec.format
        self.use_cache = _use_cache(folder)
        self.weights = CheckpointWeights(folder, self.model)
        if not select_layers(self.model, self.config):  # on the skeleton: before any work
            c = self.config
            raise BadConfigError(
                f"no layers selected: the model has {self.layers_total} quantizable "
                f"(Linear/Conv2d/Conv1D) layer(s) and none matched include={list(c.include)} "
                f"exclude={list(c.exclude)} min_layer_size={c.min_layer_size} (tied layers "
                "need an include pattern naming them)")
        if spec.format == "compressed-tensors":  # before any work, as save_model would
            from mono_quant.io.interop import check_layer_types

            check_layer_types(self.model, QuantizationInfo(
                self.config, selected_layers=select_layers(self.model, self.config)))
        self.batches = None
        if spec.calibration is not None:
            self.batches = spec.calibration.load(spec.model, spec.samples, factories)
        files = [*sorted(set(self.weights.files.values())), folder / "config.json"]
        self.progress = Progress(work_dir, fingerprint(spec.to_payload(), files, self.batches),
                                 remote=remote, offload_bytes=offload_bytes)

    def run_block(self, i: int, acts: Sequence[dict[str, Any]] | None,
                  stats: _Stats) -> Sequence[dict[str, Any]] | None:
        """Load, quantize, propagate, write and free block ``i``; its outputs."""
        prefix = f"{self.blocks}.{i}"
        self.weights.load(self.model, prefix, self.device)
        block = self.model.get_submodule(prefix)
        host = _BlockHost(block, prefix, self.model.config)
        _quantize_part(host, select_layers(host, self.config), self.config, acts, stats)
        out = None
        if acts is not None:
            out = _propagate(host, acts, self.device, stats, self.progress.new_cache(i + 1))
        self.progress.commit_block(i, _block_tensors(block, prefix), out, stats.to_json())
        free(block)
        release_freed_memory()  # glibc keeps freed heap otherwise: RSS grew per block
        return out

    def run_tail(self, acts: Sequence[dict[str, Any]] | None, stats: _Stats) -> list[str]:
        """Replace the blocks with replays of their outputs, quantize the layers outside
        them on the original batches, write their tensors; the tail's selected layers."""
        block_list = self.model.get_submodule(self.blocks)
        hidden = next(iter(acts[0])) if acts else None
        outputs = Column(acts, hidden) if acts else []  # read when replayed
        cursor = [0]
        for i in range(len(block_list)):
            block_list[i] = _Replay(outputs, cursor, stats.arity)
        layers = select_layers(self.model, self.config)
        data = self.batches if acts is not None else None
        handle = None
        if data:
            refs = [_first_of(b) for b in data]
            handle = self.model.register_forward_pre_hook(_cursor_hook(refs, cursor),
                                                          with_kwargs=True)
        try:
            _quantize_part(self.model, layers, self.config, data, stats)
        finally:
            if handle is not None:
                handle.remove()
        self.progress.write_tail(_dedupe(self.model.state_dict()))
        return layers


def _use_cache(folder: Path) -> bool:
    """``use_cache`` as the folder's config says (the skeleton turns it off)."""
    import json

    try:
        return bool(json.loads((folder / "config.json").read_text()).get("use_cache", True))
    except (OSError, ValueError):
        return True


def _first_of(item: Any) -> torch.Tensor | None:
    if isinstance(item, torch.Tensor):
        return item.cpu()
    values = item.values() if isinstance(item, dict) else item
    return next((v.cpu() for v in values if isinstance(v, torch.Tensor)), None)


def _cursor_hook(refs: list[torch.Tensor | None], cursor: list[int]):
    """A model pre-hook setting ``cursor[0]`` to the index of the batch being run."""

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = _first_of([*args, *kwargs.values()])
        for i, ref in enumerate(refs):
            if ref is not None and x is not None and ref.shape == x.shape and torch.equal(ref, x):
                cursor[0] = i
                return

    return hook


def quantize_sequential(spec: Any, dst: str | Path, work_dir: str | Path, *,
                        device: Any = "cpu", factories: Any = None,
                        on_block: OnBlock | None = None,
                        offload_bytes: int | None = DEFAULT_OFFLOAD_BYTES) -> QuantizationInfo:
    """Quantize ``spec`` block by block into ``dst`` (its format), keeping progress in
    ``work_dir`` (resumed from when its fingerprint matches; removed on success). A
    ``work_dir`` that is an object store's URL keeps it there, with a local copy in
    ``<dst>.work`` (:class:`~mono_quant.pipeline.progress.Progress`).
    ``on_block(event, block, blocks)`` hears ``"started"``/``"resumed"`` (the first block
    this run quantizes) and ``"block"`` after each. Cached activations larger than
    ``offload_bytes`` go to disk in ``work_dir`` (:mod:`~mono_quant.pipeline.activations`).

    Raises:
        BadInputError: a checkpoint that lacks a tensor of the model, batches that do not
            run through it, a model without repeated blocks.
    """
    from mono_quant.io.store import is_store_url

    remote = str(work_dir) if is_store_url(work_dir) else None
    local = Path(dst).with_name(Path(dst).name + ".work") if remote else Path(work_dir)
    job = _Job(spec, local, device, factories, remote, offload_bytes)
    saved = job.progress.resume()
    job.weights.materialize_outside(job.model, job.blocks, device)
    move_buffers(job.model, device)
    start = 0 if saved is None else saved.blocks_done
    stats = _Stats(None if saved is None else saved.stats)
    acts = None
    if saved is not None:
        acts = saved.activations
    elif job.batches and _needs_data(spec.config):
        acts = capture_inputs(job.model, job.model.get_submodule(job.blocks)[0], job.batches,
                              device, job.progress.new_cache(0))
    notify = on_block or _log_block
    notify("resumed" if saved is not None else "started", start, job.count)
    for i in range(start, job.count):
        acts = _run_block_retrying(job, i, acts, stats, notify, device)
        notify("block", i, job.count)
    tail = job.run_tail(acts, stats)
    info = _info(job, stats, tail)
    info.metrics["sequential"] = {"blocks": job.count, "block_list": job.blocks,
                                  "resumed_at_block": start, **_cache_metrics(acts)}
    _record_serveability(job, info)
    _write(job, spec, Path(dst), info)
    job.progress.remove()
    return info


def _write(job: _Job, spec: Any, dst: Path, info: QuantizationInfo) -> None:
    """The artifact from the parts (:mod:`~mono_quant.pipeline.seq_artifact`); a
    compressed-tensors folder gets the model's config and companion files."""
    from mono_quant.pipeline.seq_artifact import write_artifact

    hf_config = extra = None
    if spec.format == "compressed-tensors":
        from mono_quant.io.formats import _hf_config
        from mono_quant.pipeline.card import hf_companions

        hf_config = _hf_config(job.model)
        if hf_config is not None:  # the skeleton ran without a KV cache; the model has one
            hf_config["use_cache"] = job.use_cache
        kept = [n for n in job.quantizable if n not in set(info.selected_layers)]
        extra = hf_companions(spec.model, job.model, info, kept)
    write_artifact(job.progress, dst, info, spec.format, spec.max_shard_size, hf_config, extra)


def _run_block_retrying(job: _Job, i: int, acts: Any, stats: _Stats, notify: OnBlock,
                        device: Any) -> Any:
    """``job.run_block``; on out-of-memory (a GPU's), block ``i`` once more from its float
    weights with every cached batch halved, as the in-memory pipeline retries a job."""
    import copy
    import gc

    prefix = f"{job.blocks}.{i}"
    template = copy.deepcopy(job.model.get_submodule(prefix))  # meta: costs no memory
    before = stats.to_json()
    try:
        return job.run_block(i, acts, stats)
    except oom_error():
        if not acts or _batch_of(acts[0]) < 2:
            raise
    # outside the except block: its traceback no longer pins the failed attempt's tensors
    log.warning("out of memory in block %d: once more with calibration batches halved", i)
    job.model.get_submodule(job.blocks)[i] = template  # the float block, unquantized
    stats.restore(before)
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    notify("smaller", i, job.count)
    halved = job.progress.new_cache(i, "half")
    for item in acts:
        for half in _halve(item):
            halved.append(half)
    return job.run_block(i, halved, stats)


def _batch_of(item: dict[str, Any]) -> int:
    return int(next(iter(item.values())).shape[0])  # the hidden states come first


def _halve(item: dict[str, Any]) -> list[dict[str, Any]]:
    """A block's inputs for one batch as two: every tensor of two or more dimensions whose
    first is the batch's (hidden states, attention mask, position embeddings) is cut in two;
    the rest (position ids of batch 1, flags) is shared."""
    size = _batch_of(item)

    def cut(v: Any, k: int) -> Any:
        if isinstance(v, torch.Tensor) and v.ndim >= 2 and v.shape[0] == size:
            return v.chunk(2)[k]
        if isinstance(v, (tuple, list)):
            return type(v)(cut(x, k) for x in v)
        return v

    return [{name: cut(v, k) for name, v in item.items()} for k in (0, 1)]


def _cache_metrics(acts: Any) -> dict[str, Any]:
    """How the last activation cache was kept (``activations``: none, memory or disk)."""
    if acts is None:
        return {"activations": "none"}
    if isinstance(acts, ActivationCache):
        return {"activations": "disk" if acts.offloaded else "memory",
                "activation_cache_bytes": acts.nbytes}
    return {"activations": "memory"}


def _log_block(event: str, block: int, total: int) -> None:
    log.info("sequential: %s block %d of %d", event, block, total)


def _record_serveability(job: _Job, info: QuantizationInfo) -> None:
    """``serveable_by`` / ``serveable_reason`` from the int8 weights' shapes in the parts
    (what :func:`~mono_quant.pipeline.served.record_serveability` reads from a model)."""
    from mono_quant.io._safetensors_stream import read_header
    from mono_quant.io.serveability import check_layers

    weights = {n: e.shape for f in job.progress.part_files()
               for n, e in read_header(f).tensors.items()}
    shapes = {}
    for name in info.selected_layers:
        shape = weights[f"{name}.weight"]  # int8, [out, in, ...]
        shapes[name] = (int(shape[0]), int(math.prod(shape[1:])))
    info.metrics.update(check_layers(info.config, job.format, shapes).metrics())


def _info(job: _Job, stats: _Stats, tail: list[str]) -> QuantizationInfo:
    """The QuantizationInfo: quantize_model's weight metrics over every block and the tail."""
    from mono_quant.io._safetensors_stream import read_header
    from mono_quant.quant.quantize import _tie_report, _warn_low

    layers = sorted(stats.layers, key=lambda n: job.order.get(n, len(job.order)))
    per_layer = {n: stats.layers[n] for n in layers}
    size_fp = job.weights.nbytes
    size_q = sum(e.nbytes for f in job.progress.part_files()
                 for e in read_header(f).tensors.values())
    metrics: dict[str, Any] = {
        "weight_sqnr_db": stats.total.sqnr_db,
        "weight_sqnr_db_min": min(per_layer.values()),
        "layer_weight_sqnr_db": per_layer,
        "layers_quantized": len(layers),
        "layers_total": job.layers_total,
        "size_bytes_fp": size_fp,
        "size_bytes_quant": size_q,
        "compression_ratio": size_fp / size_q if size_q else float("nan"),
        "range_check": "ok",
    }
    if stats.smooth:
        metrics["smoothquant"] = stats.smooth
    if job.config.weight_algorithm == "gptq":
        metrics["gptq"] = stats.gptq
    metrics.update(_tie_report(job.model, job.model, tail))
    _warn_low(metrics, len(layers))
    return QuantizationInfo(config=job.config, selected_layers=layers,
                            calibration_samples=stats.samples,
                            library_versions=library_versions(), metrics=metrics)
