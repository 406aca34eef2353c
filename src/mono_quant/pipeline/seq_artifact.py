"""The sequential pipeline's artifact: written from the per-block parts of its work folder,
and read back one layer at a time.

The parts (``progress.py``) hold mono-quant's layout, whatever the format, so resuming,
serveability and the metrics never depend on it. The artifact is made from them at the end:

==========================  =================================================================
format                      how
==========================  =================================================================
``safetensors``             tensor bytes copied in chunks into one file, or one tensor at a
                            time into shards (``max_shard_size``)
``compressed-tensors``      each part converted alone (:func:`~mono_quant.io.interop.
                            to_compressed_part`: the conversion is per layer), so memory holds
                            one block; the single file's header and ``config.json``'s
                            ``quantization_config`` (targets, ``ignore``) come first, from the
                            parts' headers converted as meta tensors (no data read)
==========================  =================================================================

The result equals the in-memory pipeline's ``save_model`` tensor for tensor (same names,
dtypes, shapes and, for weight-only and dynamic jobs, values; tests/pipeline/
test_sequential_ct.py), and transformers loads it.

Example:
    write_artifact(progress, dst, info, "compressed-tensors", None, hf_config, extra_files)
    info.metrics["reload_check"] = reload_check(dst, info)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mono_quant.errors import MonoQuantError
from mono_quant.pipeline.progress import Progress
from mono_quant.quant.info import QuantizationInfo

__all__ = ["reload_check", "write_artifact"]


def write_artifact(progress: Progress, dst: Path, info: QuantizationInfo, fmt: str,
                   max_shard_size: int | None, hf_config: dict[str, Any] | None,
                   extra_files: Mapping[str, bytes] | None = None) -> None:
    """Write ``dst`` in ``fmt`` from ``progress``'s parts (module docstring); atomic."""
    from mono_quant.io.formats import _build_metadata

    if fmt == "safetensors":
        progress.assemble(dst, _build_metadata(info), max_shard_size)
        return
    from mono_quant.io import interop
    from mono_quant.io._atomic import atomic_file
    from mono_quant.io.formats import INFO_KEY, compressed_config, write_compressed_folder
    from mono_quant.io.sharded import shard_writer

    config, ct_fmt = compressed_config(info, progress.meta_tensors(), hf_config)

    def convert(tensors: dict[str, Any]) -> dict[str, Any]:
        return interop.to_compressed_part(tensors, info, ct_fmt)

    def weights(tmp: Path) -> None:
        if max_shard_size is None:
            with atomic_file(tmp / interop.MODEL_FILE) as out:
                progress.write_file(out, _build_metadata(info), convert)
            return
        with shard_writer(tmp, max_shard_size) as writer:
            progress.add_to_shards(writer, convert)
            writer.set_metadata({INFO_KEY: info.to_json()})  # as save_model's shards

    write_compressed_folder(dst, config, weights, extra_files)


def reload_check(path: Path, info: QuantizationInfo) -> str:
    """Read the artifact back one layer at a time: its info, every selected layer's int8
    weight, scale and zero point within range (compressed-tensors layers converted back
    first). Memory: one layer; plain reads, not an mmap of the artifact (whose touched pages
    would stay resident and make the peak grow with the model: measured +0.18 GiB at a
    1 GiB checkpoint, docs/sequential.md)."""
    from mono_quant.io._safetensors_stream import read_header, read_tensor
    from mono_quant.io.formats import read_info
    from mono_quant.quant.metrics import check_int8_ranges
    from mono_quant.quant.specs import qrange

    stored = read_info(path)
    if stored.selected_layers != info.selected_layers:
        raise MonoQuantError(f"{path}: the stored info lists other layers than were quantized")
    qmin, qmax = qrange(info.config.scheme)
    files, to_ours = _artifact_files(path, info)  # tensor name -> its (shard) file
    by_layer: dict[str, list[str]] = {}
    for name in files:
        by_layer.setdefault(name.rpartition(".")[0], []).append(name)
    with contextlib.ExitStack() as stack:  # plain reads: no mmap pages stay resident
        opened = {f: (stack.enter_context(open(f, "rb")), read_header(f))
                  for f in set(files.values())}
        for layer in info.selected_layers:
            tensors = to_ours(layer, {n: read_tensor(*opened[files[n]], n)
                                      for n in by_layer.get(layer, [])})
            parts = [f"{layer}.{s}" for s in ("weight", "weight_scale", "weight_zero_point")]
            missing = [p for p in parts if p not in tensors]
            if missing:
                raise MonoQuantError(f"{path}: tensor {missing[0]!r} is missing")
            problems = check_int8_ranges(layer, *(tensors[p] for p in parts), qmin, qmax)
            if problems:
                raise MonoQuantError(f"{path}: " + "; ".join(problems))
    return (f"ok: {len(files)} tensors, {len(info.selected_layers)} int8 layers read back one "
            "layer at a time (sequential builds no whole model to compare outputs with)")


def _artifact_files(path: Path, info: QuantizationInfo):
    """(each tensor's file: the artifact, a compressed-tensors folder's model file, or a
    shard of either; a function turning one layer's stored tensors into mono-quant's)."""
    from mono_quant.io import interop
    from mono_quant.io._safetensors_stream import read_header
    from mono_quant.io.formats import _folder_format
    from mono_quant.io.sharded import is_sharded, read_index

    def same(_layer: str, tensors: dict[str, Any]) -> dict[str, Any]:
        return tensors

    to_ours = same
    if path.is_dir() and (path / interop.CONFIG_FILE).is_file():  # compressed-tensors
        ct_fmt = _folder_format(path)

        def to_ours(layer: str, tensors: dict[str, Any]) -> dict[str, Any]:
            one = dataclasses.replace(info, selected_layers=[layer])
            return interop.from_compressed(tensors, one, str(path), ct_fmt)

    if is_sharded(path):
        weight_map, _ = read_index(path)
        return {name: path / shard for name, shard in weight_map.items()}, to_ours
    single = path / interop.MODEL_FILE if path.is_dir() else path
    return dict.fromkeys(read_header(single).tensors, single), to_ours
