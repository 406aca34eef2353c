"""Perplexity of a causal language model on a token stream, strided with a fixed context.

The evaluation of the transformers documentation ("Perplexity of fixed-length models"): the
stream is cut into windows of ``context`` tokens that start every ``stride`` tokens; each
window scores only the tokens that the previous window did not, so every token after the
first is scored once, with up to ``context - stride`` tokens of history. The same windows are
used for the float and the quantized model, so their difference is the quantization's.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Uniform(nn.Module):  # predicts every token of a 10-word vocabulary equally
    ...     def forward(self, input_ids):
    ...         return torch.zeros(*input_ids.shape, 10)
    >>> round(perplexity(Uniform(), torch.arange(50) % 10, context=16, stride=8), 6)
    10.0
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mono_quant.errors import BadInputError

__all__ = ["perplexity"]


def _logits(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise BadInputError(
        f"perplexity: the model returned a {type(out).__name__}, expected logits "
        "[batch, tokens, vocabulary] (a causal language model)"
    )


def perplexity(
    model: nn.Module, ids: torch.Tensor, *, context: int = 512, stride: int | None = None
) -> float:
    """``exp(mean negative log-likelihood)`` of ``ids`` (1-D token ids) under ``model``.

    ``model(input_ids=[1, L])`` (or ``model([1, L])`` for a plain module) must return logits
    ``[1, L, V]``. ``stride`` defaults to ``context // 2``.

    Raises:
        BadInputError: fewer than two tokens, or a model that does not return logits.
    """
    if ids.ndim != 1 or ids.numel() < 2:
        raise BadInputError(f"perplexity: expected at least 2 token ids, got {ids.numel()}")
    stride = stride or max(1, context // 2)
    if not 0 < stride <= context:
        raise BadInputError(f"perplexity: stride={stride} must be in (0, context={context}]")
    device = next(iter(model.parameters()), torch.zeros(0)).device
    n, nll, scored, prev_end = ids.numel(), 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for begin in range(0, n, stride):
                end = min(begin + context, n)
                window = ids[begin:end].unsqueeze(0).to(device)  # (1, L)
                try:
                    out = model(input_ids=window)
                except TypeError:
                    out = model(window)
                logp = F.log_softmax(_logits(out)[0, :-1].double(), dim=-1)  # (L-1, V)
                token_nll = -logp.gather(1, window[0, 1:].unsqueeze(1)).squeeze(1)
                new = min(end - prev_end, token_nll.numel())  # targets not scored before
                nll += float(token_nll[-new:].sum())
                scored += new
                prev_end = end
                if end == n:
                    break
    finally:
        model.train(was_training)
    return math.exp(nll / scored)
