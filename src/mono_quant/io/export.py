"""A folder to serve from: the artifact, the model's config and tokenizer, and a model card.

``mono-quant export ID DIR`` calls :func:`export_folder` with the artifact's path and, for
``hf:`` sources, the source folder: its ``config.json``, generation config and tokenizer files
are copied beside the weights (a compressed-tensors artifact keeps its own ``config.json``,
which carries the ``quantization_config``). ``README.md`` is a model card written from the
``QuantizationInfo``; ``quantization_info.json`` is that info as stored.

Example:
    export_folder(Path("/data/artifacts/…/ab12.safetensors"), Path("serve/llama-w8"), info,
                  source_dir=Path("models/tiny-llama"), title="tiny-llama W8A16")
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mono_quant.errors import BadInputError

__all__ = ["SOURCE_FILES", "export_folder", "model_card"]

#: Files copied from an ``hf:`` source folder when it has them (config and tokenizer).
SOURCE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json",
    "vocab.txt", "merges.txt", "chat_template.jinja", "preprocessor_config.json",
)

_WEIGHTS_NAME = {".safetensors": "model.safetensors", ".pt": "model.pt", ".pth": "model.pt"}


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(info: Any, *, title: str, source: str, sha256: str | None = None) -> str:
    """A short Markdown model card: what was quantized, how, how well, how to load it."""
    cfg, m = info.config, info.metrics
    rows = [(k, m[k]) for k in ("weight_sqnr_db", "weight_sqnr_db_min", "output_cosine",
                                 "output_sqnr_db", "compression_ratio", "size_bytes_quant")
            if isinstance(m.get(k), (int, float))]
    lines = [
        "---", "library_name: mono-quant", "tags: [int8, quantized, mono-quant]", "---", "",
        f"# {title}", "",
        f"An int8 quantization of `{source}` made by mono-quant.", "",
        "| setting | value |", "| --- | --- |",
        f"| scheme | {cfg.scheme} |", f"| granularity | {cfg.granularity} |",
        f"| mode | {cfg.mode} |", f"| weight_observer | {cfg.weight_observer} |",
        f"| layers quantized | {len(info.selected_layers)} |",
    ]
    if cfg.group_size:
        lines.append(f"| group_size | {cfg.group_size} |")
    if rows:
        lines += ["", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_num(v)} |" for k, v in rows]
    if sha256:
        lines += ["", f"Weights sha256 (as recorded in the catalog): `{sha256}`"]
    lines += ["", "Load it (the float architecture is rebuilt from `config.json`):", "",
              "```python", "from transformers import AutoConfig, AutoModelForCausalLM",
              "from mono_quant.io import load_quantized", "",
              "model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained('.'))",
              "model = load_quantized('<weights file or this folder>', model)", "```", ""]
    return "\n".join(lines)


def _copy_weights(artifact: Path, dst: Path) -> list[str]:
    if artifact.is_dir():  # compressed-tensors: the folder's files as they are
        names = []
        for item in sorted(artifact.iterdir()):
            if item.is_file():
                shutil.copy2(item, dst / item.name)
                names.append(item.name)
        return names
    name = _WEIGHTS_NAME.get(artifact.suffix.lower(), artifact.name)
    shutil.copy2(artifact, dst / name)
    return [name]


def export_folder(artifact: Path, dst: Path, info: Any, *, source_dir: Path | None = None,
                  title: str = "", source: str = "", sha256: str | None = None) -> list[str]:
    """Write the serving folder ``dst`` (created; must be absent or empty); returns its files.

    Raises BadInputError when the artifact is missing or ``dst`` holds files already (an
    export never overwrites what it did not write).
    """
    if not artifact.exists():
        raise BadInputError(f"{artifact}: the artifact is missing from storage")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise BadInputError(f"{dst}: exists and is not an empty folder; pick a new folder")
    dst.mkdir(parents=True, exist_ok=True)
    written = _copy_weights(artifact, dst)
    if source_dir is not None and source_dir.is_dir():
        for name in SOURCE_FILES:
            if (source_dir / name).is_file() and name not in written:
                shutil.copy2(source_dir / name, dst / name)
                written.append(name)
    (dst / "quantization_info.json").write_text(info.to_json() + "\n", encoding="utf-8")
    card = model_card(info, title=title or dst.name, source=source, sha256=sha256)
    (dst / "README.md").write_text(card, encoding="utf-8")
    written += ["quantization_info.json", "README.md"]
    return sorted(written)
