"""Saving and loading artifacts: safetensors, ``.pt`` and compressed-tensors folders.

========================  ===================  ==============================================
format                    path                 content
========================  ===================  ==============================================
``"safetensors"``         ``*.safetensors``    state dict; ``QuantizationInfo`` JSON in the
                                               header metadata under ``"mono_quant.info"``
``"pt"``                  ``*.pt``/``*.pth``   ``{"state_dict": ..., "metadata": {str: str}}``
                                               loaded only with ``weights_only=True``
``"compressed-tensors"``  a folder             ``config.json`` + ``model.safetensors`` in the
                                               layout vLLM reads (see :mod:`.interop`)
========================  ===================  ==============================================

With ``max_shard_size`` the safetensors and compressed-tensors weights are sharded
(:mod:`.sharded`): ``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``
(which then holds the info), in a folder — a ``*.safetensors`` artifact becomes a folder of
that name.

Metadata is string → string only (:func:`_build_metadata`): the info is one JSON string, plus
``"format": "pt"`` which transformers requires; ``.pt`` files carry the same metadata dict.
Every write is atomic (a temp file or folder in the same directory, fsynced, renamed into
place); every read validates the header and checks that each quantized layer has its scales
before anything is returned.

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> from mono_quant import QuantConfig, quantize_model
    >>> from mono_quant.io import save_model, read_info, load_quantized
    >>> model = nn.Sequential(nn.Linear(16, 8))
    >>> qmodel, info = quantize_model(model, QuantConfig(), progress=False)
    >>> path = save_model(qmodel, tempfile.mkdtemp() + "/m.safetensors", info)
    >>> read_info(path) == info
    True
    >>> again = load_quantized(path, nn.Sequential(nn.Linear(16, 8)))
    >>> x = torch.randn(2, 16)
    >>> torch.equal(again(x), qmodel(x))
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mono_quant.errors import BadConfigError, BadInputError
from mono_quant.io import interop
from mono_quant.io._atomic import atomic_dir, atomic_file
from mono_quant.io._checks import check_quantized_tensors, load_state_dict_strict
from mono_quant.io._pt import read_pt, write_pt
from mono_quant.io._safetensors_stream import SafetensorsWriter, TensorSpec, read_header
from mono_quant.io._targets import check_replaceable
from mono_quant.io.layout import FORMATS, detect_format
from mono_quant.io.sharded import INDEX_FILE, is_sharded, read_index, read_sharded, shard_writer
from mono_quant.io.store import is_url, local_source
from mono_quant.quant.info import QuantizationInfo

__all__ = [
    "FORMATS",
    "INFO_KEY",
    "QuantizationInfo",
    "detect_format",
    "load_model",
    "load_quantized",
    "read_info",
    "save_model",
]

#: The safetensors metadata key (and .pt payload key) holding the QuantizationInfo JSON.
INFO_KEY = "mono_quant.info"


def _build_metadata(
    info: QuantizationInfo | None, extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """safetensors metadata (string → string): ``format`` and the info JSON.

    ``extra`` values that are not strings are stored as JSON (sorted keys, strict floats).

    Example:
        >>> from mono_quant import QuantConfig
        >>> meta = _build_metadata(QuantizationInfo(QuantConfig()), {"n": 3})
        >>> sorted(meta), meta["n"]
        (['format', 'mono_quant.info', 'n'], '3')
    """
    meta = {"format": "pt"}
    if info is not None:
        meta[INFO_KEY] = info.to_json()
    for key, value in (extra or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(
            value, sort_keys=True, allow_nan=False
        )
    return meta


#: The widest JSON reprs of a float (17 significant digits, a 3-digit negative exponent) and
#: of a 64-bit integer: what every metric value is replaced by to size an artifact's header.
_WIDEST_FLOAT = -2.2250738585072014e-308
_WIDEST_INT = -(2**63)
#: Room for the warnings ``_warn_low`` can add (two, each well under this many characters).
_WARNING_ROOM = ["w" * 320] * 2


def _widest(value: Any) -> Any:
    """``value`` with every number at its widest JSON repr (structure and strings kept)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return _WIDEST_FLOAT
    if isinstance(value, int):
        return value if len(str(value)) > len(str(_WIDEST_INT)) else _WIDEST_INT
    if isinstance(value, dict):
        return {k: _widest(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_widest(v) for v in value]
    return value


def header_bound(info: QuantizationInfo) -> dict[str, str]:
    """Metadata at least as long as ``info``'s, whatever its metrics' values: every number
    in the metrics at its widest, room for the warnings. A single-file safetensors artifact's
    header is padded to this length (``SafetensorsWriter(size_for=...)``), so it depends only
    on what is known before quantizing (config, layers, metric names), and the streamed
    writer, which learns the metrics last, writes the data at its final offsets first and
    the header in place at the end: the same bytes as ``save_model``.

    Example:
        >>> from mono_quant import QuantConfig
        >>> a = QuantizationInfo(QuantConfig(), ["fc"], metrics={"weight_sqnr_db": 41.5})
        >>> b = QuantizationInfo(QuantConfig(), ["fc"], metrics={"weight_sqnr_db": 1e-300,
        ...                                                       "warnings": ["low"]})
        >>> header_bound(a) == header_bound(b)
        True
    """
    metrics = {**_widest(info.metrics), "warnings": _WARNING_ROOM}
    return _build_metadata(dataclasses.replace(info, metrics=metrics))


def _tensors(obj: nn.Module | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise BadInputError(
            f"save_model: expected an nn.Module or a state dict, got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise BadInputError(
            f"save_model: state dict entry {bad[0]!r} is not a str -> torch.Tensor pair"
        )
    meta = [k for k, v in obj.items() if v.is_meta]
    if meta:
        raise BadInputError(
            f"save_model: tensor {meta[0]!r} is on the meta device and has no data to save"
        )
    return _dedupe_shared({k: v.detach() for k, v in obj.items()})


def _dedupe_shared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep one name per shared tensor (a tied ``lm_head`` and embedding): the first, as
    ``save_pretrained`` does, so a tie is stored once and loaders tie it back
    (:func:`~mono_quant.io._checks.load_state_dict_strict`, transformers)."""
    seen: set[tuple[Any, ...]] = set()
    out = {}
    for name, t in tensors.items():
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def _write_shards(tensors: Mapping[str, torch.Tensor], folder: Path,
                  info: QuantizationInfo | None, max_shard_size: int) -> None:
    with shard_writer(folder, max_shard_size) as writer:
        writer.add_all(tensors)
        writer.set_metadata({INFO_KEY: info.to_json()} if info is not None else {})


def _write_safetensors(
    tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str],
    size_for: Mapping[str, str] | None = None,
) -> None:
    specs = {k: TensorSpec.of(t) for k, t in tensors.items()}
    with atomic_file(path) as f:
        writer = SafetensorsWriter(f, specs, metadata, size_for=size_for)
        for name, t in tensors.items():
            writer.write(name, t)
        writer.finish()


def _hf_config(obj: object) -> dict[str, Any] | None:
    config = getattr(obj, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    data = json.loads(json.dumps(config.to_dict(), default=str))
    if not data.get("architectures"):
        data["architectures"] = [type(obj).__name__]
    return data


def compressed_config(info: QuantizationInfo, tensors: Mapping[str, torch.Tensor],
                      hf_config: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """(``config.json`` with its ``quantization_config``, the compressed-tensors format) of
    an artifact's tensors (real or meta: only names, dtypes and shapes are read)."""
    config = dict(hf_config or {})
    fmt = interop.ct_format(info.config.mode, config.get("model_type"))
    config["quantization_config"] = interop.quantization_config(info, tensors, fmt)
    return config, fmt


def write_compressed_folder(path: Path, config: dict[str, Any],
                            write_weights: Callable[[Path], None],
                            extra_files: Mapping[str, bytes] | None = None) -> None:
    """The compressed-tensors folder ``path``, atomically: ``write_weights(tmp)`` writes
    ``model.safetensors`` (or the shards and index) into the temporary folder; then
    ``config.json`` and the ``extra_files``."""
    with atomic_dir(path) as tmp:
        write_weights(tmp)
        with atomic_file(tmp / interop.CONFIG_FILE) as f:
            f.write(json.dumps(config, indent=2, sort_keys=True).encode() + b"\n")
        for name, data in (extra_files or {}).items():  # tokenizer, model card (pipeline)
            if Path(name).name != name or name in (interop.CONFIG_FILE, interop.MODEL_FILE,
                                                   INDEX_FILE):
                raise BadInputError(f"{path}: extra file {name!r} must be a plain file name")
            with atomic_file(tmp / name) as f:
                f.write(data)


def _write_compressed_tensors(
    tensors: Mapping[str, torch.Tensor], path: Path, info: QuantizationInfo | None,
    hf_config: dict[str, Any] | None, extra_files: Mapping[str, bytes] | None = None,
    max_shard_size: int | None = None,
) -> None:
    if info is None:
        raise BadInputError(
            f"{path}: format 'compressed-tensors' needs the QuantizationInfo of the quantized "
            "model (info=...) to describe its layers"
        )
    config, fmt = compressed_config(info, tensors, hf_config)
    compressed = interop.to_compressed(tensors, info, fmt)

    def weights(tmp: Path) -> None:
        if max_shard_size is None:
            _write_safetensors(compressed, tmp / interop.MODEL_FILE, _build_metadata(info))
        else:
            _write_shards(compressed, tmp, info, max_shard_size)

    write_compressed_folder(path, config, weights, extra_files)


def save_model(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    info: QuantizationInfo | None = None,
    format: str | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    max_shard_size: int | str | None = None,
) -> Path:
    """Write a model's state dict (and its info) atomically; return the final path.

    ``format`` is ``"safetensors"``, ``"pt"`` or ``"compressed-tensors"``; by default it comes
    from the extension. ``extra_files`` (``{name: bytes}``, compressed-tensors only) are
    written into the folder with the rest, atomically: tokenizer files, a model card.
    Tensors on a GPU are copied to the CPU one at a time. ``max_shard_size`` (bytes, or
    ``"5GB"``; safetensors and compressed-tensors) shards the weights (:mod:`.sharded`): a
    safetensors artifact is then a folder named ``path``.

    Raises:
        BadInputError: unknown format or extension, entries that are not tensors, tensors
            that do not match ``info`` (a quantized layer without its scale), an existing
            ``path`` that is not a mono-quant artifact of this format (it is left untouched).
        BadConfigError: a model the format cannot hold (Conv2d or transformers Conv1D
            layers in compressed-tensors).
        StorageError: the file could not be written (nothing is left at ``path``).
    """
    path = Path(path)
    fmt = detect_format(path, format)
    tensors = _tensors(model_or_state_dict)
    if info is not None:
        if not isinstance(info, QuantizationInfo):
            raise BadInputError(f"save_model: info must be a QuantizationInfo, got {info!r}")
        check_quantized_tensors(tensors, info, f"save_model({path})")
    shard = _shard_size(max_shard_size, fmt, path)
    check_replaceable(path, fmt)  # never destroy what mono-quant did not write
    if fmt == "safetensors" and shard is not None:
        with atomic_dir(path) as tmp:
            _write_shards(tensors, tmp, info, shard)
    elif fmt == "safetensors":  # the header padded to a length known before quantizing
        _write_safetensors(tensors, path, _build_metadata(info),
                           header_bound(info) if info is not None else None)
    elif fmt == "pt":
        write_pt(tensors, path, _build_metadata(info))
    else:
        if isinstance(model_or_state_dict, nn.Module) and info is not None:
            interop.check_layer_types(model_or_state_dict, info)
        _write_compressed_tensors(tensors, path, info, _hf_config(model_or_state_dict),
                                  extra_files, shard)
    return path


def _shard_size(value: int | str | None, fmt: str, path: Path) -> int | None:
    if value is None:
        return None
    from mono_quant.io.sharded import parse_size

    if fmt == "pt":
        raise BadConfigError(f"{path}: max_shard_size shards safetensors weights; format 'pt' "
                             "is one file (use safetensors or compressed-tensors)")
    return parse_size(value)


def _info_from_metadata(meta: Mapping[str, str] | None, path: Path) -> QuantizationInfo | None:
    text = (meta or {}).get(INFO_KEY)
    return None if text is None else QuantizationInfo.from_json(text, source=str(path))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """(tensors, metadata) of a safetensors file whose header was validated first."""
    header = read_header(path)  # validates before the parser sees the file
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:  # zero-copy (mmap)
            tensors = {name: f.get_tensor(name) for name in header.tensors}
    except (SafetensorError, OSError) as e:
        raise BadInputError(f"{path}: cannot read safetensors data: {e}") from e
    return tensors, header.metadata


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], QuantizationInfo | None]:
    tensors, metadata = read_safetensors(path)
    return tensors, _info_from_metadata(metadata, path)


def _read_pt(path: Path) -> tuple[dict[str, torch.Tensor], QuantizationInfo | None]:
    tensors, metadata = read_pt(path)
    return tensors, _info_from_metadata(metadata, path)


def _read_sharded(path: Path) -> tuple[dict[str, torch.Tensor], QuantizationInfo | None]:
    tensors, metadata = read_sharded(path)
    return tensors, _info_from_metadata(metadata, path / INDEX_FILE)  # type: ignore[arg-type]


def _sharded_info(path: Path) -> QuantizationInfo | None:
    return _info_from_metadata(read_index(path)[1], path / INDEX_FILE)  # type: ignore[arg-type]


def _ct_weights(path: Path) -> Path:
    """The folder's index (sharded) or model file; BadInputError when it is not a
    compressed-tensors folder."""
    weights = path / (INDEX_FILE if is_sharded(path) else interop.MODEL_FILE)
    if not (path / interop.CONFIG_FILE).is_file() or not weights.is_file():
        raise BadInputError(
            f"{path}: not a compressed-tensors artifact (expected {interop.CONFIG_FILE} and "
            f"{interop.MODEL_FILE} or {INDEX_FILE} with its shards in the folder)"
        )
    return weights


def _no_ct_info(model_file: Path) -> BadInputError:
    return BadInputError(f"{model_file}: no mono-quant metadata ({INFO_KEY!r}); mono-quant "
                         "loads the compressed-tensors folders it wrote (load others with "
                         "transformers)")


def _read_compressed_tensors(path: Path) -> tuple[dict[str, torch.Tensor], QuantizationInfo]:
    model_file = _ct_weights(path)
    sharded = model_file.name == INDEX_FILE
    tensors, info = _read_sharded(path) if sharded else _read_safetensors(model_file)
    if info is None:
        raise _no_ct_info(model_file)
    return interop.from_compressed(tensors, info, str(model_file), _folder_format(path)), info


def _folder_format(path: Path) -> str | None:
    """The ``quantization_config.format`` of a compressed-tensors folder's config.json (None:
    absent, so the mode's default)."""
    config_file = path / interop.CONFIG_FILE
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise BadInputError(f"{config_file}: not readable JSON: {e}") from e
    block = config.get("quantization_config") if isinstance(config, dict) else None
    fmt = block.get("format") if isinstance(block, dict) else None
    return fmt if isinstance(fmt, str) else None


def _load(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], QuantizationInfo | None]:
    with local_source(path) as local:  # an object store's URL: a cached download
        return _load_local(local)


def _load_local(path: Path) -> tuple[dict[str, torch.Tensor], QuantizationInfo | None]:
    fmt = detect_format(path)
    if fmt == "safetensors" and path.is_dir():
        tensors, info = _read_sharded(path)
    elif fmt == "safetensors":
        tensors, info = _read_safetensors(path)
    elif fmt == "pt":
        tensors, info = _read_pt(path)
    else:
        tensors, info = _read_compressed_tensors(path)
    if info is not None:
        check_quantized_tensors(tensors, info, str(path))
    return tensors, info


def load_model(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load an artifact's state dict (format from the extension; a folder is
    compressed-tensors). ``path`` may be an object store's URL (``s3://…``; downloaded once
    into :func:`~mono_quant.io.store.cache_dir`), as for :func:`read_info` and
    :func:`load_quantized`. Quantized layers come back in mono-quant's layout
    (``weight`` int8, ``weight_scale``, ``weight_zero_point``, ...).

    Raises:
        BadInputError: unknown extension, missing/corrupt file, a ``.pt`` that needs pickle
            code, metadata that is not mono-quant's, a quantized layer without its scale.
    """
    return _load(path)[0]


def read_info(path: str | os.PathLike[str]) -> QuantizationInfo:
    """The :class:`QuantizationInfo` stored with an artifact.

    Raises:
        BadInputError: the artifact has no mono-quant metadata, or it does not decode.
    """
    fmt = detect_format(path)
    if fmt == "safetensors" and not is_url(path) and Path(path).is_dir():
        info = _sharded_info(Path(path))
    elif fmt == "safetensors":  # the header only (on an object store: two ranged GETs)
        header = read_header(path)
        info = _info_from_metadata(header.metadata, header.path)
    else:
        with local_source(path) as local:
            if fmt == "compressed-tensors" and _ct_weights(local).name == INDEX_FILE:
                info = _sharded_info(local)
            elif fmt == "compressed-tensors":  # the header only, as for safetensors
                header = read_header(_ct_weights(local))
                info = _info_from_metadata(header.metadata, header.path)
                if info is None:
                    raise _no_ct_info(header.path)
            else:
                info = _read_pt(local)[1]
    if info is None:
        raise BadInputError(
            f"{path}: no mono-quant metadata: no {INFO_KEY!r} entry (the file was not "
            "written by mono-quant's save_model with info=...)"
        )
    return info


def load_quantized(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Rebuild a runnable quantized model from an artifact and its float architecture.

    The layers named in the artifact's ``selected_layers`` are replaced, **in place**, by
    empty ``QuantLinear`` / ``QuantConv2d`` layers for the stored config; then every tensor is
    loaded strictly. Returns ``model``.

    Raises:
        BadInputError: no mono-quant metadata, a layer the model lacks or cannot quantize,
            tensors that do not match the model (names missing or unexpected, shapes).
    """
    from mono_quant.quant.modules import is_quantizable, quantized_like

    tensors, info = _load(path)
    if info is None:
        raise BadInputError(
            f"{path}: no mono-quant metadata; load_quantized needs an artifact written with "
            "info=... (use load_model for a plain state dict)"
        )
    for name in info.selected_layers:
        try:
            layer = model.get_submodule(name)
        except AttributeError as e:
            raise BadInputError(
                f"{path}: the artifact quantizes layer {name!r} but the model has no such layer "
                "(is this the architecture the artifact was made from?)"
            ) from e
        if not is_quantizable(layer):
            raise BadInputError(
                f"{path}: layer {name!r} is a {type(layer).__name__}; expected the float "
                "nn.Linear / nn.Conv2d / Conv1D the artifact was quantized from"
            )
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, quantized_like(layer, info.config))
    load_state_dict_strict(model, tensors, str(path))
    return model
