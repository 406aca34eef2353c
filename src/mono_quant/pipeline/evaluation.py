"""Evaluation sets: ``text:FILE[?context=N]`` -> the token stream perplexity is measured on.

The whole file is tokenized as one stream (lines joined by newlines) with the model's own
tokenizer; ``quantize_model(eval_tokens=..., eval_context=N)`` then measures the strided
fixed-context perplexity of the float and the quantized causal LM on it
(:mod:`mono_quant.quant.evaluate`). The canonical form is what manifests store and hash::

    text:eval.txt?context=256      {"text": "/abs/eval.txt", "context": 256}

Example:
    >>> src = parse_evaluation_source("text:/data/wiki.txt?context=128")
    >>> src.canonical()
    {'text': '/data/wiki.txt', 'context': 128}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mono_quant.errors import BadInputError

__all__ = ["DEFAULT_CONTEXT", "EvaluationSource", "parse_evaluation_source"]

#: Tokens per perplexity window when the source does not say (stride: half of it).
DEFAULT_CONTEXT = 512


@dataclass(frozen=True)
class EvaluationSource:
    """A text file and the context length of the perplexity windows."""

    path: str
    context: int = DEFAULT_CONTEXT

    def canonical(self) -> dict[str, Any]:
        return {"text": self.path, "context": self.context}

    def token_ids(self, tokenizer: Any) -> Any:
        """The file as one 1-D LongTensor of token ids (at least two tokens)."""
        import torch

        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise BadInputError(f"evaluation text:{self.path}: no such file") from e
        except (OSError, UnicodeDecodeError) as e:
            raise BadInputError(f"evaluation text:{self.path}: cannot read it: {e}") from e
        ids = tokenizer(text, return_tensors="pt")["input_ids"].reshape(-1).to(torch.long)
        if ids.numel() < 2:
            raise BadInputError(
                f"evaluation text:{self.path}: {ids.numel()} token(s); perplexity needs at least 2"
            )
        return ids


def _context(value: Any, where: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError) as e:
        raise BadInputError(f"{where}: context={value!r}: expected a positive integer") from e
    if isinstance(value, bool) or n < 2 or (isinstance(value, float) and value != n):
        raise BadInputError(f"{where}: context={value!r}: expected an integer >= 2")
    return n


def parse_evaluation_source(
    value: str | Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None
) -> EvaluationSource:
    """Parse ``text:PATH[?context=N]`` or ``{text: PATH, context: N}``; relative paths are
    resolved against ``base_dir``."""
    where = f"evaluation {value!r}"
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"text", "context"})
        if unknown or "text" not in value:
            raise BadInputError(
                f"{where}: expected {{text: PATH, context: N}}; unknown or missing keys "
                f"{', '.join(unknown) or 'text'}"
            )
        path, options = value["text"], {k: v for k, v in value.items() if k != "text"}
    elif isinstance(value, str) and value.startswith("text:"):
        path, _, query = value[len("text:"):].partition("?")
        options = dict(part.partition("=")[::2] for part in query.split("&") if part)
        unknown = sorted(set(options) - {"context"})
        if unknown:
            raise BadInputError(f"{where}: unknown option(s) {', '.join(unknown)}; "
                                "allowed: context")
    else:
        raise BadInputError(f"{where}: expected text:PATH[?context=N] (a text file to measure "
                            "perplexity on)")
    if not isinstance(path, str) or not path:
        raise BadInputError(f"{where}: expected a file path after text:")
    resolved = Path(base_dir or ".", path) if not Path(path).is_absolute() else Path(path)
    context = _context(options["context"], where) if "context" in options else DEFAULT_CONTEXT
    return EvaluationSource(str(resolved.resolve() if base_dir else resolved), context)
