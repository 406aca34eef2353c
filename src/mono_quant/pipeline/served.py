"""The served-load check: an artifact must load in the runtime it is served by, and run.

=====================  =================================  ===============================
format                 loaded with                        compared with the quantized
                                                          model
=====================  =================================  ===============================
compressed-tensors     transformers ``from_pretrained``   outputs: cosine >=
(of a transformers     (compressed-tensors decompresses   ``SERVED_COSINE_MIN`` (the
model)                 the folder), when installed        runtime dequantizes in its own
                                                          order of operations)
safetensors, pt, or    :func:`mono_quant.load_quantized`  every layer (type, settings) and
compressed-tensors                                        every tensor bit for bit; then
without transformers                                      the loaded model runs the batch
=====================  =================================  ===============================

Bit-identical layers and tensors give bit-identical outputs, so ``load_quantized``'s check
runs only the loaded model: one dequantization of each weight, not two (the quantized
model's forward was half of the check's time), and a difference is named, on any weight.

The batch is the first calibration batch; without one, a transformers model gets a small
seeded probe batch built from its config (token ids, or pixel values), so the check always
runs the model. Which check ran is recorded in ``metrics["served_check"]`` and the outcome in
``metrics["reload_check"]``; a folder that does not load, or outputs that differ, raise
:class:`~mono_quant.errors.MonoQuantError` (the job fails with the reason).

Example:
    qmodel, info = quantize_model(model, config, batches)
    save_model(qmodel, path, info=info, format=fmt)
    served_check(path, fmt, model, qmodel, info, batches[0])  # `model` may be rebuilt in place
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mono_quant.errors import MonoQuantError
from mono_quant.quant.info import QuantizationInfo

__all__ = ["SERVED_COSINE_MIN", "probe_batch", "record_serveability", "served_check"]

#: Outputs of the folder as transformers loads it must match the quantized model's this
#: closely (same integers and scales; float rounding differs with the order of operations).
SERVED_COSINE_MIN = 0.9999


def probe_batch(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """A tiny seeded batch for a transformers model (``input_ids`` or ``pixel_values``), or
    None when the model's config does not say what it takes."""
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None)
    gen = torch.Generator().manual_seed(0)
    if main == "input_ids" and isinstance(getattr(config, "vocab_size", None), int):
        ids = torch.randint(0, config.vocab_size, (2, 8), generator=gen)
        batch = {"input_ids": ids}
        if getattr(config, "is_encoder_decoder", False):
            batch["decoder_input_ids"] = ids[:, :4]
        return batch
    if main == "pixel_values" and isinstance(getattr(config, "image_size", None), int):
        size, channels = config.image_size, getattr(config, "num_channels", 3)
        return {"pixel_values": torch.randn(2, channels, size, size, generator=gen)}
    return None


def _outputs(model: nn.Module, batch: Any) -> torch.Tensor | None:
    from mono_quant.quant.calibration import call_model, to_device
    from mono_quant.quant.metrics import first_tensor

    param = next(iter(model.parameters()), next(iter(model.buffers()), None))
    if param is not None:
        batch = to_device(batch, param.device)
    with torch.inference_mode():
        out = first_tensor(call_model(model.eval(), batch))
    return None if out is None else out.float().cpu()


def _transformers_class(path: Path, qmodel: nn.Module) -> Any | None:
    """The transformers class to load a compressed-tensors folder with, or None when the
    runtime is not installed or the model is not a transformers model."""
    if importlib.util.find_spec("transformers") is None:
        return None
    if importlib.util.find_spec("compressed_tensors") is None:
        return None
    from_pretrained = getattr(type(qmodel), "from_pretrained", None)
    if from_pretrained is None or getattr(qmodel, "config", None) is None:
        return None
    return type(qmodel)


def _load_served(path: Path, fmt: str, float_model: nn.Module, qmodel: nn.Module):
    """(loaded model, check name, exact?) for the runtime ``fmt`` is served by."""
    if fmt == "compressed-tensors":
        cls = _transformers_class(path, qmodel)
        if cls is not None:
            try:
                loaded = cls.from_pretrained(path, local_files_only=True)
            except Exception as e:  # any failure of the runtime is the finding
                raise MonoQuantError(
                    f"{path}: the compressed-tensors folder does not load in transformers "
                    f"({cls.__name__}.from_pretrained): {type(e).__name__}: {e}"
                ) from e
            return loaded.to(torch.float32), "transformers", False
    from mono_quant.io.formats import load_quantized

    return load_quantized(path, float_model), "load_quantized", True


def record_serveability(fmt: str, qmodel: nn.Module, info: QuantizationInfo) -> None:
    """``serveable_by`` / ``serveable_reason`` in ``info.metrics`` from the quantized layers'
    shapes (:mod:`mono_quant.io.serveability`); a compressed-tensors folder vLLM cannot serve
    is a warning."""
    from mono_quant.io.serveability import check_layers

    if "serveable_by" in info.metrics:
        return  # checked before writing (quantize --strict)
    shapes = {}
    for name in info.selected_layers:
        w = qmodel.get_submodule(name).weight  # int8, [out, in, ...]
        shapes[name] = (int(w.shape[0]), int(w[0].numel()))
    linears = [n for n, m in qmodel.named_modules()
               if isinstance(m, nn.Linear) or n in shapes]  # quantized or float
    model_type = getattr(getattr(qmodel, "config", None), "model_type", None)
    verdict = check_layers(info.config, fmt, shapes, linears, model_type)
    info.metrics.update(verdict.metrics())
    if fmt == "compressed-tensors" and verdict.serveable_by != "vllm":
        info.metrics.setdefault("warnings", []).append(f"not serveable by vLLM: {verdict.reason}")


#: Attributes of a layer that decide its forward besides its tensors (the quantized layers'
#: config); compared with each module's type and ``extra_repr``.
_LAYER_SETTINGS = ("scheme", "granularity", "mode", "activation_scheme", "compute_dtype",
                   "in_features", "out_features")


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical tensors of one dtype and shape (``memcmp`` of contiguous CPU tensors:
    5-7x less CPU than ``torch.equal``, and -0.0 differs from 0.0 as a bit-for-bit check
    should; ``torch.equal`` elsewhere)."""
    memcmp = _memcmp()
    if (memcmp is None or a.device.type != "cpu" or b.device.type != "cpu"
            or not (a.is_contiguous() and b.is_contiguous())):
        return torch.equal(a, b)
    n = a.numel() * a.element_size()
    return n == 0 or memcmp(a.data_ptr(), b.data_ptr(), n) == 0


@functools.cache
def _memcmp() -> Any:
    """The C library's ``memcmp`` (None where it cannot be loaded)."""
    import ctypes

    try:
        fn = ctypes.CDLL(None).memcmp
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters(recurse=False)),
            **dict(module.named_buffers(recurse=False))}


def _difference(qmodel: nn.Module, loaded: nn.Module) -> str | None:
    """The first way ``loaded`` differs from ``qmodel`` (a module's type, settings or
    ``extra_repr``; a tensor's name, dtype, shape or any value), or None.

    Equal layers with bit-identical tensors compute bit-identical outputs (the same code on
    the same values): comparing them is the served check's power without running the
    quantized model too, and it names what differs, on every weight, not only where one
    batch's outputs show it.
    """
    mine, theirs = dict(qmodel.named_modules()), dict(loaded.named_modules())
    if mine.keys() != theirs.keys():
        only = sorted(mine.keys() ^ theirs.keys())
        return f"modules {', '.join(map(repr, only[:3]))} are in only one of the models"
    for name, ref in mine.items():
        got, where = theirs[name], name or "the model"
        settings = [(k, getattr(ref, k, None), getattr(got, k, None)) for k in _LAYER_SETTINGS]
        if type(got) is not type(ref) or got.extra_repr() != ref.extra_repr() or any(
                a != b for _, a, b in settings):
            return (f"{where} is {type(got).__name__}({got.extra_repr()}), expected "
                    f"{type(ref).__name__}({ref.extra_repr()})")
        want, have = _tensors(ref), _tensors(got)
        if want.keys() != have.keys():
            return f"{where} has tensors {sorted(have)}, expected {sorted(want)}"
        for key, a in want.items():
            b = have[key]
            if b is a:  # shared with the float model that was rebuilt: the same storage
                continue
            if a.dtype != b.dtype or a.shape != b.shape or not _same_bits(a, b):
                full = f"{name}.{key}" if name else key
                return (f"tensor {full!r} differs ({b.dtype} {tuple(b.shape)}, expected "
                        f"{a.dtype} {tuple(a.shape)} with the quantized model's values)")
    return None


def _compare_outputs(path: Path, check: str, qmodel: nn.Module, loaded: nn.Module,
                     batch: Any) -> str:
    """Outputs of a runtime that dequantizes in its own order: cosine >= SERVED_COSINE_MIN."""
    ref, out = _outputs(qmodel, batch), _outputs(loaded, batch)
    if ref is None or out is None or ref.shape != out.shape:
        raise MonoQuantError(f"{path}: the model loaded with {check} returned no comparable "
                             "output tensor")
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0).item()
    if not cos >= SERVED_COSINE_MIN:
        raise MonoQuantError(
            f"{path}: the artifact loaded with {check} gives outputs that differ from the "
            f"quantized model's (cosine {cos:.6f} < {SERVED_COSINE_MIN})"
        )
    return f"ok ({check}): outputs cosine {cos:.6f} on 1 batch"


def served_check(
    path: str | Path, fmt: str, float_model: nn.Module, qmodel: nn.Module,
    info: QuantizationInfo, batch: Any | None = None,
) -> str:
    """Load the artifact at ``path`` the way ``fmt`` is served, compare it with ``qmodel``
    (see the module docstring) and run it on ``batch`` (or a probe batch); record the check
    in ``info.metrics``.

    ``float_model`` is rebuilt in place when the check uses ``load_quantized``: pass a model
    you no longer need. Returns the one-line outcome (also ``metrics["reload_check"]``).

    Raises:
        MonoQuantError: the artifact does not load, differs from ``qmodel``, or does not run.
    """
    path = Path(path)
    record_serveability(fmt, qmodel, info)
    batch = batch if batch is not None else probe_batch(qmodel)
    loaded, check, exact = _load_served(path, fmt, float_model, qmodel)
    info.metrics["served_check"] = check
    if exact:
        difference = _difference(qmodel, loaded)
        if difference is not None:
            raise MonoQuantError(f"{path}: the artifact loaded with {check} does not reproduce "
                                 f"the quantized model: {difference}")
    if batch is None:
        result = f"ok ({check}): loaded strictly (no batch to compare outputs on)"
        info.metrics["reload_check"] = result
        return result
    if exact:  # same layers and tensors: the same outputs; only that it runs is left to see
        if _outputs(loaded, batch) is None:
            raise MonoQuantError(f"{path}: the model loaded with {check} returned no output "
                                 "tensor")
        result = f"ok ({check}): identical layers and tensors, ran on 1 batch"
    else:
        result = _compare_outputs(path, check, qmodel, loaded, batch)
    info.metrics["reload_check"] = result
    return result
