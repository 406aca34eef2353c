"""Tied (shared) weights: which layers share a weight, so quantization keeps the tie.

A tie is one ``nn.Parameter`` reachable under several names: a language model's ``lm_head``
sharing the input embedding (``tie_word_embeddings``), T5's ``shared`` table reused by the
encoder and the decoder. Quantizing one user of a shared weight would silently break the tie
(the float table stays for the other user, and an int8 copy is stored beside it), so
``select_layers`` leaves tied layers in float unless an ``include`` pattern names them (see
:func:`named_explicitly`); then the layer is untied on purpose and the result says so.

Example:
    >>> from torch import nn
    >>> model = nn.ModuleDict({"embed": nn.Embedding(10, 4), "head": nn.Linear(4, 10)})
    >>> model["head"].weight = model["embed"].weight
    >>> shared_weights(model)
    [['embed.weight', 'head.weight']]
    >>> tied_layers(model)
    {'embed': ['head.weight'], 'head': ['embed.weight']}
"""

from __future__ import annotations

import fnmatch
import re

from torch import nn

__all__ = ["named_explicitly", "output_embedding_name", "shared_weights", "tied_layers"]


def shared_weights(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one parameter (first name = the owner's, in
    ``named_parameters`` order, which is the name ``state_dict`` keeps when deduplicating)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def output_embedding_name(model: nn.Module) -> str | None:
    """The name of a transformers model's output embedding when its config ties it to the
    input embedding (``tie_word_embeddings``), else None."""
    config = getattr(model, "config", None)
    get = getattr(model, "get_output_embeddings", None)
    if not getattr(config, "tie_word_embeddings", False) or get is None:
        return None
    head = get()
    if head is None:
        return None
    return next((name for name, m in model.named_modules() if m is head), None)


def tied_layers(model: nn.Module) -> dict[str, list[str]]:
    """Layer name → the other parameter names its ``weight`` is shared with (a layer that
    ``tie_word_embeddings`` ties maps to its config flag even before the tie is made)."""
    out: dict[str, list[str]] = {}
    for names in shared_weights(model):
        for name in names:
            if name.endswith(".weight"):
                out[name[: -len(".weight")]] = [n for n in names if n != name]
    head = output_embedding_name(model)
    if head is not None and head not in out:
        out[head] = ["config.tie_word_embeddings"]
    return out


def named_explicitly(patterns: tuple[str, ...] | list[str], name: str) -> bool:
    """Whether an include pattern names layer ``name`` itself (a glob or ``re:`` on the name),
    as opposed to a class-name pattern such as ``"Linear"`` that selects it by type."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name) is not None:
                return True
        elif pattern == name or (
            any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern)
        ):
            return True
    return False
