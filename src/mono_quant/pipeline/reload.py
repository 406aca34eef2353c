"""The reload-and-forward check: an artifact must rebuild the model it was saved from.

Example:
    qmodel, info = quantize_model(model, config, batches)
    save_model(qmodel, path, info=info)
    reload_check(path, model, qmodel, batches[0])   # `model` is rebuilt in place
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mono_quant.errors import MonoQuantError

__all__ = ["reload_check"]


def reload_check(path: str | Path, float_model: nn.Module, qmodel: nn.Module,
                 batch: Any | None = None) -> str:
    """Load the artifact at ``path`` into ``float_model`` (in place: pass a model you no longer
    need, or a copy) and compare its outputs with ``qmodel``'s on ``batch``, bit for bit.

    Returns a one-line result for ``metrics["reload_check"]``; raises MonoQuantError when the
    reloaded model does not reproduce the outputs (a bug of ours, never the user's input).
    """
    import torch

    from mono_quant.io.formats import load_quantized
    from mono_quant.quant.calibration import call_model, to_device
    from mono_quant.quant.metrics import first_tensor

    again = load_quantized(path, float_model)
    if batch is None:
        return "ok: every tensor loaded strictly (no batch to compare outputs on)"
    device = next(iter(qmodel.parameters()), next(iter(qmodel.buffers()), None))
    batch = to_device(batch, device.device) if device is not None else batch
    with torch.inference_mode():
        ref = first_tensor(call_model(qmodel.eval(), batch))
        out = first_tensor(call_model(again.eval(), batch))
    if ref is None or out is None or not torch.equal(ref, out):
        diff = "n/a" if ref is None or out is None else f"{(ref - out).abs().max().item():.3g}"
        raise MonoQuantError(
            f"{path}: the reloaded artifact does not reproduce the quantized model's outputs "
            f"(max |difference| {diff})"
        )
    return "ok: reloaded model's outputs identical on 1 batch"
