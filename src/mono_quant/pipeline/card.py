"""The companion files of a compressed-tensors folder made from an ``hf:`` model, so the
folder is servable as it is: tokenizer files, ``generation_config.json``, the chat template,
and a ``README.md`` model card.

The card's front-matter follows the Hugging Face model-card metadata (``base_model``,
``base_model_relation: quantized``, ``tags``, ``library_name``); its body says what was
done (the scheme, the layers kept in float, a metrics table) and how to load the folder in
vLLM and transformers.

Example:
    files = companion_files(source, qmodel, info)           # {name: bytes}
    save_model(qmodel, out, info, format="compressed-tensors", extra_files=files)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from mono_quant.quant.info import QuantizationInfo

__all__ = ["COPIED_FILES", "companion_files", "hf_companions", "model_card", "source_files"]

#: Files copied from the source folder when present (tokenizer, generation, chat template).
COPIED_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json", "spiece.model",
    "generation_config.json", "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json",
)
_MODE = {"weight_only": "W8A16 (int8 weights, float activations)",
         "static": "W8A8 (int8 weights, static per-tensor int8 activations)",
         "dynamic": "W8A8 (int8 weights, dynamic per-token int8 activations)"}


def _float_layers(qmodel: nn.Module) -> list[str]:
    from mono_quant.quant.modules import is_quantizable

    return [n for n, m in qmodel.named_modules() if n and is_quantizable(m)]


def _num(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def model_card(base_model: str, qmodel: nn.Module, info: QuantizationInfo,
               float_layers: list[str] | None = None) -> str:
    """README.md text for the folder (front-matter + body). ``float_layers``: the
    quantizable layers kept in float (default: found in ``qmodel``; the sequential pipeline,
    whose model holds no blocks at the end, passes them)."""
    cfg, m = info.config, info.metrics
    group = f", group size {cfg.group_size}" if cfg.group_size else ""
    kept = _float_layers(qmodel) if float_layers is None else float_layers
    tied = [", ".join(g) for g in m.get("tied_weights", [])]
    lines = [
        "---",
        f"base_model: {json.dumps(base_model)}",
        "base_model_relation: quantized",
        "library_name: transformers",
        "tags:",
        *(f"- {t}" for t in ("mono-quant", "compressed-tensors", "int8",
                             "w8a16" if cfg.mode == "weight_only" else "w8a8")),
        "---",
        "",
        f"# {base_model} (int8, {cfg.mode})",
        "",
        f"Quantized with mono-quant from `{base_model}`: {_MODE[cfg.mode]}; {cfg.scheme} "
        f"{cfg.granularity} weights{group}, weight observer {cfg.weight_observer}.",
        "",
        f"- Layers quantized: {len(info.selected_layers)}",
        f"- Layers kept in float: {', '.join(f'`{n}`' for n in kept) or 'none'}",
        f"- Tied weights kept tied (stored once): {'; '.join(tied) or 'none'}",
        f"- Served by: {m.get('serveable_by', 'not checked')} "
        f"({m.get('serveable_reason', '')})",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| weight SQNR (dB), overall | {_num(m.get('weight_sqnr_db'), 2)} |",
        f"| weight SQNR (dB), worst layer | {_num(m.get('weight_sqnr_db_min'), 2)} |",
        f"| output cosine vs float | {_num(m.get('output_cosine'), 6)} |",
        f"| output SQNR (dB) | {_num(m.get('output_sqnr_db'), 2)} |",
        f"| compression ratio | {_num(m.get('compression_ratio'), 2)} |",
        "",
        "## Load it",
        "",
        "vLLM reads the `quantization_config` (compressed-tensors) itself:",
        "",
        "```bash",
        "vllm serve ./this-folder",
        "```",
        "",
        "transformers needs the `compressed-tensors` package:",
        "",
        "```python",
        "from transformers import AutoModel",
        'model = AutoModel.from_pretrained("./this-folder")',
        "```",
        "",
    ]
    return "\n".join(lines)


def companion_files(folder: str | Path, base_model: str, qmodel: nn.Module,
                    info: QuantizationInfo,
                    float_layers: list[str] | None = None) -> dict[str, bytes]:
    """``{name: bytes}`` to write next to ``config.json`` (see the module docstring)."""
    folder = Path(folder)
    files = {name: (folder / name).read_bytes() for name in COPIED_FILES
             if (folder / name).is_file()}
    generation = getattr(qmodel, "generation_config", None)
    if "generation_config.json" not in files and generation is not None:
        files["generation_config.json"] = generation.to_json_string().encode()
    files["README.md"] = model_card(base_model, qmodel, info, float_layers).encode()
    return files


def source_files(source: Any, qmodel: nn.Module, info: QuantizationInfo,
                 fmt: str) -> dict[str, bytes] | None:
    """The companion files for an artifact of ``source`` (a ModelSource) in ``fmt``: only a
    compressed-tensors folder of an ``hf:`` model gets them. Records the serveability first,
    so the card can say who serves the folder."""
    if fmt != "compressed-tensors" or source.scheme != "hf":
        return None
    from mono_quant.pipeline.served import record_serveability

    record_serveability(fmt, qmodel, info)
    return hf_companions(source, qmodel, info)


def hf_companions(source: Any, qmodel: nn.Module, info: QuantizationInfo,
                  float_layers: list[str] | None = None) -> dict[str, bytes]:
    """:func:`companion_files` of an ``hf:`` source (serveability already recorded)."""
    folder = source.folder
    hub = not Path(source.target).is_absolute()
    base_model = source.target.partition("@")[0] if hub else Path(folder).name
    return companion_files(folder, base_model, qmodel, info, float_layers)
