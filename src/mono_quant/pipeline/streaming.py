"""Streaming weight-only quantization of a safetensors checkpoint, tensor by tensor.

``quantize_checkpoint`` never builds the model: it reads one tensor at a time into fresh
memory, quantizes the 2-D weights of linear layers with the same kernel as
:func:`~mono_quant.quantize_model` (so the int8 values and scales are identical), copies every
other tensor in bounded chunks, and writes the result with the streaming safetensors writer.
Peak memory is about the largest tensor (plus its int8 copy), not the checkpoint.

Which tensors are quantized: a floating-point tensor named ``<layer>.weight`` with 2
dimensions is a linear layer's weight, unless ``<layer>``'s last component contains
``embed`` or is ``wte``/``wpe`` (embedding tables are 2-D too, but are lookups, not matmuls).
The config's ``include``/``exclude`` patterns then apply to ``<layer>`` as in
``quantize_model``, with the class name ``quantize_model`` sees: ``"Linear"``, or
``"Conv1D"`` for the transposed layers of a Conv1D family (below); ``"Conv2d"`` matches none.
Use ``exclude=["lm_head"]`` to keep a head in float.

Layout: every such weight is taken to be an ``nn.Linear`` weight, ``[out, in]``, so
per-channel scales go along dimension 0, except in checkpoints whose folder has a
``config.json`` naming a family built from transformers' ``Conv1D`` (GPT-2, OpenAI GPT,
ImageGPT, Decision Transformer, CLVP): there the layers named ``c_attn``, ``q_attn``,
``c_proj`` and ``c_fc`` (the names vLLM's GPT-2 loader transposes) store ``[in, out]`` and are
transposed before quantizing, so the artifact holds ``[out, in]`` int8 weights exactly as
:class:`~mono_quant.quant.modules.QuantConv1D` does in memory (``load_quantized`` reads both).
A lone file with no ``config.json`` next to it is trusted to hold ``[out, in]`` weights.

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> from mono_quant import QuantConfig
    >>> from mono_quant.io import save_model, load_model
    >>> from mono_quant.pipeline import quantize_checkpoint
    >>> d = tempfile.mkdtemp()
    >>> src = save_model(nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32)), d + "/fp.safetensors")
    >>> info = quantize_checkpoint(src, d + "/q.safetensors", QuantConfig(), progress=False)
    >>> info.selected_layers, load_model(d + "/q.safetensors")["0.weight"].dtype
    (['0'], torch.int8)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from tqdm.auto import tqdm

from mono_quant.errors import BadConfigError, BadInputError, MonoQuantError
from mono_quant.io._atomic import atomic_file
from mono_quant.io._safetensors_stream import (
    SafetensorsHeader,
    SafetensorsWriter,
    TensorSpec,
    copy_tensor_bytes,
    read_header,
    read_tensor,
)
from mono_quant.io._targets import check_outside_source, check_replaceable
from mono_quant.io.formats import _build_metadata, detect_format, header_bound
from mono_quant.io.hashing import sha256_fd
from mono_quant.io.sharded import INDEX_FILE
from mono_quant.quant import options
from mono_quant.quant.info import QuantizationInfo, library_versions
from mono_quant.quant.metrics import ErrorAccumulator

__all__ = ["checkpoint_files", "quantize_checkpoint"]

_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


#: Hugging Face model types built from ``transformers.pytorch_utils.Conv1D`` (weight
#: ``[in, out]``), and their architecture class-name prefixes: every model in transformers
#: 5.24 that imports it (gpt_bigcode uses nn.Linear, so it is not here).
_CONV1D_MODEL_TYPES = frozenset({
    "gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp", "clvp_encoder",
    "clvp_decoder",
})
_CONV1D_ARCHITECTURES = ("GPT2", "OpenAIGPT", "ImageGPT", "DecisionTransformer", "Clvp")


def checkpoint_files(src: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a checkpoint: a file, an index JSON, or a folder with either
    ``model.safetensors.index.json`` or ``model.safetensors``."""
    src = Path(src)
    if src.is_dir():
        index = src / INDEX_FILE
        if index.is_file():
            src = index
        elif (src / "model.safetensors").is_file():
            return [src / "model.safetensors"]
        else:
            raise BadInputError(
                f"{src}: no {INDEX_FILE} or model.safetensors in this folder"
            )
    if src.name.endswith(".index.json"):
        try:
            weight_map = json.loads(src.read_text())["weight_map"]
            files = list(dict.fromkeys(weight_map.values()))
        except FileNotFoundError as e:
            raise BadInputError(f"{src}: no such file") from e
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadInputError(
                f"{src}: not a safetensors index (expected JSON with a 'weight_map' object "
                f"of tensor name -> shard file): {e}"
            ) from e
        return [src.parent / f for f in files]
    if src.suffix != ".safetensors":
        raise BadInputError(
            f"{src}: expected a .safetensors file, a {INDEX_FILE} or a folder holding one"
        )
    return [src]


#: Layer names (last component) that are Conv1D in those families.
_CONV1D_LAYER_NAMES = frozenset({"c_attn", "q_attn", "c_proj", "c_fc"})


def _conv1d_layers(src: Path, layers: list[str]) -> set[str]:
    """The layers of ``layers`` stored ``[in, out]``: none unless the checkpoint's
    ``config.json`` names a Conv1D model family (module docstring)."""
    config = (src if src.is_dir() else src.parent) / "config.json"
    if not config.is_file():
        return set()  # a lone file: its 2-D weights are taken as [out, in] (module docstring)
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise BadInputError(
            f"{config}: not readable JSON ({e}); it is read to tell how the checkpoint's "
            "weights are laid out"
        ) from e
    if not isinstance(data, dict):
        raise BadInputError(f"{config}: expected a JSON object, got {type(data).__name__}")
    model_type = data.get("model_type")
    architectures = [a for a in data.get("architectures") or [] if isinstance(a, str)]
    if model_type not in _CONV1D_MODEL_TYPES and not any(
        a.startswith(_CONV1D_ARCHITECTURES) for a in architectures
    ):
        return set()
    return {layer for layer in layers if layer.rpartition(".")[2] in _CONV1D_LAYER_NAMES}


def _is_embedding(layer: str) -> bool:
    last = layer.rpartition(".")[2].lower()
    return "embed" in last or last in ("wte", "wpe")


def _linear_layers(headers: list[SafetensorsHeader]) -> list[str]:
    layers = []
    for h in headers:
        for name, e in h.tensors.items():
            layer = name[: -len(".weight")]
            if name.endswith(".weight") and len(e.shape) == 2 and e.dtype in _FLOAT_DTYPES \
                    and not _is_embedding(layer):
                layers.append(layer)
    return layers


def _select(layers: list[str], headers: list[SafetensorsHeader], config,
            transposed: set[str]) -> list[str]:
    numel = {n: math.prod(e.shape) for h in headers for n, e in h.tensors.items()}
    # the rules quantize_model applies, with the class names it sees: every 2-D weight here
    # is an nn.Linear's, but the transposed ones are transformers' Conv1D
    return [layer for layer in layers
            if config.selects(layer, "Conv1D" if layer in transposed else "Linear",
                              numel[f"{layer}.weight"])]


def _plan(headers, selected, config, transposed: set[str]) -> dict[str, TensorSpec]:
    gran = config.granularity_spec
    specs: dict[str, TensorSpec] = {}
    quantized = {f"{layer}.weight": layer for layer in selected}
    for h in headers:
        for name, e in h.tensors.items():
            if name in specs:
                raise BadInputError(f"{h.path}: tensor {name!r} appears in more than one shard")
            layer = quantized.get(name)
            if layer is None:
                specs[name] = TensorSpec(e.torch_dtype, e.shape)
                continue
            shape = tuple(reversed(e.shape)) if layer in transposed else tuple(e.shape)
            try:
                pshape = tuple(gran.param_shape(torch.Size(shape)))
            except BadInputError as err:
                raise BadInputError(f"{h.path}: tensor {name!r}: {err}") from err
            specs[name] = TensorSpec(torch.int8, shape)
            for suffix, dtype in (("weight_scale", torch.float32),
                                  ("weight_zero_point", torch.int8)):
                extra = f"{layer}.{suffix}"
                if any(extra in other.tensors for other in headers):
                    raise BadInputError(
                        f"{h.path}: tensor {extra!r} already exists: is this checkpoint "
                        "already quantized?"
                    )
                specs[extra] = TensorSpec(dtype, pshape)
    return specs


def _quantize_one(f, h: SafetensorsHeader, name: str, layer: str, config, writer, buffer,
                  transpose: bool = False):
    """Quantize and write one weight (a Conv1D one transposed to ``[out, in]`` first); its
    buffers are freed when this returns."""
    from mono_quant.quant.metrics import check_int8_ranges, weight_error
    from mono_quant.quant.quantize import _quantize_one as quantize_one
    from mono_quant.quant.specs import qrange

    w = read_tensor(f, h, name, out=buffer)
    if transpose:
        w = w.t().contiguous()  # (in, out) -> (out, in): a copy, the buffer is reused
    # quantize_model's own choice of kernel: identical output and error sums
    qw, acc = quantize_one(w, config, layer, gptq=False)
    problems = check_int8_ranges(layer, qw.data, qw.scale, qw.zero_point, *qrange(config.scheme))
    if problems:  # a bug of ours, never the user's input
        raise MonoQuantError("int8 range check failed: " + "; ".join(problems))
    acc = acc if acc is not None else weight_error(w, qw)
    writer.write(name, qw.data)
    writer.write(f"{layer}.weight_scale", qw.scale)
    writer.write(f"{layer}.weight_zero_point", qw.zero_point)
    return acc


def _metrics(total: Any, per_layer: dict[str, float], layers_total: int, size_fp: int,
             size_q: int, tied: list[list[str]] | None) -> dict[str, Any]:
    """The streamed artifact's metrics: the keys quantize_model writes, and ``streamed``
    when the in-memory path's ties are not known (``tied`` None, see quantize_checkpoint)."""
    from mono_quant.quant.quantize import _warn_low

    metrics: dict[str, Any] = {
        "weight_sqnr_db": total.sqnr_db,
        "weight_sqnr_db_min": min(per_layer.values()),
        "layer_weight_sqnr_db": per_layer,
        "layers_quantized": len(per_layer),
        "layers_total": layers_total,
        "size_bytes_fp": size_fp,
        "size_bytes_quant": size_q,
        "compression_ratio": size_fp / size_q if size_q else float("nan"),
        "range_check": "ok",
    }
    if tied is None:
        metrics["streamed"] = True
    elif tied:
        metrics["tied_weights"] = [list(group) for group in tied]
    _warn_low(metrics, len(per_layer))
    return metrics


def _metrics_template(selected: list[str], tied: list[list[str]] | None) -> dict[str, Any]:
    """Metrics with the final ones' keys (their values do not matter): ``header_bound`` of
    an info holding them sizes the header, as ``save_model`` sizes it from the final info."""
    return _metrics(SimpleNamespace(sqnr_db=0.0), dict.fromkeys(selected, 0.0), 0, 1, 1, tied)


def _head_layers(tied: list[list[str]] | None, headers: list[SafetensorsHeader]) -> int:
    """Tied weights the checkpoint does not hold (a tied ``lm_head``): layers of the model
    that quantize_model counts in ``layers_total``."""
    present = {n for h in headers for n in h.tensors}
    return sum(1 for group in tied or () for name in group[1:]
               if name.endswith(".weight") and name not in present)


def quantize_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config=None,
    *,
    progress: bool = True,
    tied: list[list[str]] | None = None,
    on_sha256: Callable[[str, int], None] | None = None,
) -> QuantizationInfo:
    """Quantize a safetensors checkpoint (file, index or folder) into ``dst`` (.safetensors).

    Weight-only modes only: static W8A8 needs calibration through the model. Returns the
    :class:`QuantizationInfo` stored in ``dst``'s header.

    Every 2-D float ``<layer>.weight`` is taken as an ``nn.Linear`` weight ``[out, in]`` (see
    the module docstring), but the ``Conv1D`` layers of a GPT-2-like family are transposed
    first.

    ``tied``: the tied weights the model built from this checkpoint has, as quantize_model
    reports them (groups of names, the checkpoint's first: ``[["model.embed_tokens.weight",
    "lm_head.weight"]]``; ``[]``: none), known from the model family
    (:mod:`~mono_quant.pipeline.auto_stream`). The metadata is then exactly the in-memory
    path's (``tied_weights``, a tied head counted in ``layers_total``). None (the default):
    only the checkpoint is known, and the metrics say ``streamed: true``. ``on_sha256``:
    called with the artifact's sha256 and size, taken in a second thread while the file was
    synced to disk, so the caller need not read it again.

    Raises:
        BadConfigError: static mode or nothing selected.
        BadInputError: a missing/corrupt checkpoint, duplicate tensors across shards, a weight
            that cannot be quantized (non-finite values, group size).
        StorageError: ``dst`` could not be written (nothing is left there).
    """
    from mono_quant.quant.qconfig import QuantConfig

    config = config or QuantConfig()
    if config.mode != "weight_only":
        raise BadConfigError(
            f"quantize_checkpoint streams weight-only quantization; mode={config.mode!r} needs "
            "calibration through the model: use quantize_model"
        )
    dst = Path(dst)
    if detect_format(dst) != "safetensors":
        raise BadInputError(f"{dst}: quantize_checkpoint writes .safetensors")
    files = checkpoint_files(src)
    if Path(src).is_dir():  # a model folder: not into it (a file src: not over it, below)
        check_outside_source(dst, src)
    check_replaceable(dst, "safetensors")
    headers = [read_header(f) for f in files]
    layers = _linear_layers(headers)
    transposed = _conv1d_layers(Path(src), layers)
    selected = _select(layers, headers, config, transposed)
    if not selected:
        raise BadConfigError(
            f"no layers selected in {src}: {len(layers)} linear weight(s) found, none matched "
            f"include={list(config.include)} exclude={list(config.exclude)} "
            f"min_layer_size={config.min_layer_size}"
        )
    return _stream(dst, headers, layers, selected, transposed, config, progress, tied,
                   on_sha256)


def _stream(dst: Path, headers: list[SafetensorsHeader], layers: list[str], selected: list[str],
            transposed: set[str], config, progress: bool,
            tied: list[list[str]] | None,
            on_sha256: Callable[[str, int], None] | None) -> QuantizationInfo:
    """Write ``dst`` tensor by tensor: the selected weights quantized, the rest copied."""
    specs = _plan(headers, selected, config, transposed)
    quantized = {f"{layer}.weight": layer for layer in selected}
    # The header's length is fixed now (every metric at its widest, header_bound): the data
    # lands at its final offsets and the metrics are written into the header at the end.
    template = QuantizationInfo(config, selected, 0, library_versions(),
                                _metrics_template(selected, tied))

    total, per_layer = ErrorAccumulator(), {}
    size_fp = sum(e.nbytes for h in headers for e in h.tensors.values())
    # one buffer for every weight read and every chunked copy: no allocation per tensor
    buffer = torch.empty(max(e.nbytes for h in headers for n, e in h.tensors.items()
                             if n in quantized), dtype=torch.uint8)
    work = sum(4 * math.prod(e.shape) for h in headers for n, e in h.tensors.items()
               if n in quantized)  # float32 bytes the kernels will see
    with ThreadPoolExecutor(1, thread_name_prefix="mono-quant-hash") as pool, \
            atomic_file(dst) as out, options.job_work(work), tqdm(
        total=size_fp, unit="B", unit_scale=True, desc="streaming",
        disable=None if progress else True,  # None: a bar only on a terminal
    ) as bar:
        writer = SafetensorsWriter(out, specs, _build_metadata(None),
                                   size_for=header_bound(template))
        for h in headers:
            with open(h.path, "rb") as f:
                for name, e in h.tensors.items():
                    layer = quantized.get(name)
                    if layer is None:
                        copy_tensor_bytes(f, h, name, writer, scratch=buffer)
                    else:
                        acc = _quantize_one(f, h, name, layer, config, writer, buffer,
                                            layer in transposed)
                        total.merge(acc)
                        per_layer[layer] = acc.sqnr_db
                    bar.update(e.nbytes)
        size_q = sum(s.nbytes for s in specs.values())
        layers_total = len(layers) + _head_layers(tied, headers)
        metrics = _metrics(total, per_layer, layers_total, size_fp, size_q, tied)
        info = QuantizationInfo(config, selected, 0, library_versions(), metrics)
        writer.set_metadata(_build_metadata(info))
        writer.finish()
        hashed = _hash_in_background(out, pool) if on_sha256 is not None else None
    if hashed is not None:  # taken while atomic_file synced the file to disk
        on_sha256(*hashed.result())
    return info


def _hash_in_background(out, pool: ThreadPoolExecutor) -> Future:
    """The future (sha256, size) of the complete file ``out``, hashed by ``pool`` from a
    duplicate descriptor: it reads the page cache while the caller flushes and fsyncs."""
    out.flush()
    return pool.submit(sha256_fd, os.dup(out.fileno()))
