"""Whether a job streams: ``stream`` true or false as asked, and unset (``None``, the
default) streams exactly when the artifact is provably the one the in-memory path writes.

Streaming (:mod:`~mono_quant.pipeline.streaming`) quantizes the checkpoint tensor by tensor
with no transformers import and no model built: a weight-only job then costs about the
safetensors load + save of its bytes, where the in-memory path spends ~2 s more importing
transformers and building the model (docs/performance.md, issue 9). An unset ``stream``
streams when all of these hold, and else runs in memory (:func:`auto_problems` says why):

* the job: an ``hf:`` folder, mode ``weight_only`` with no calibration,
  evaluation nor accuracy target, format ``safetensors`` in one file (no
  ``max_shard_size``), pipeline ``auto``, on the CPU (where the in-memory kernels run too);
* the family: config.json's ``model_type`` is in :data:`FAMILIES` with its
  ``architectures[0]``: the families whose tiny random models tests build from the real
  transformers classes, asserting that the streamed and the in-memory artifacts are the same
  file (sha256), tied and untied, with include/exclude patterns and every granularity
  (tests/pipeline/test_auto_stream.py);
* the checkpoint loads into that class unchanged: every tensor named under the family's
  prefixes and ending in ``.weight`` or ``.bias`` (no renamed legacy keys), one floating
  dtype, the one config.json's ``dtype`` names (float32 when it names none), and
  ``lm_head.weight`` stored exactly when the embeddings are untied (else transformers would
  initialise or drop it);
* a tied head stays tied: no include pattern names ``lm_head`` (the in-memory path would
  untie and quantize it from the embedding, which the checkpoint does not store twice).

The streamed job's check is then the streaming one (every tensor loaded strictly, with the
int8 range checks) rather than the served-load check: the served check compares the
reloaded artifact with the quantized model, and the family tests prove that artifact is the
in-memory one byte for byte, where the served check passes. The catalog's model digest is
:func:`~mono_quant.io.hashing.checkpoint_digest` with the tie as an alias (the same value as
``state_dict_digest`` of the loaded model, tested per family).

Example:
    >>> from mono_quant.pipeline import JobSpec, parse_model_source
    >>> spec = JobSpec(parse_model_source("factory:mono_quant.demo_models:mlp?hidden=32"))
    >>> spec.stream is None, auto_problems(spec)
    (True, ['the model is not an hf: folder'])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mono_quant.errors import MonoQuantError

__all__ = ["FAMILIES", "Family", "StreamPlan", "auto_problems", "stream_plan"]


@dataclass(frozen=True)
class Family:
    """A transformers model family verified to stream to the in-memory artifact."""

    #: ``architectures[0]`` of its config.json: the class the in-memory path loads.
    architecture: str
    #: Prefixes of every tensor name in its checkpoints.
    prefixes: tuple[str, ...]
    #: The input embedding a tied ``lm_head.weight`` shares.
    embedding: str
    #: The config class's ``tie_word_embeddings`` default (config.json may leave it out).
    tied_default: bool


_LLAMA_LIKE = ("model.", "lm_head.")

#: model_type -> family (tests/pipeline/test_auto_stream.py proves each one).
FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", _LLAMA_LIKE, "model.embed_tokens.weight", False),
    "mistral": Family("MistralForCausalLM", _LLAMA_LIKE, "model.embed_tokens.weight", False),
    "qwen2": Family("Qwen2ForCausalLM", _LLAMA_LIKE, "model.embed_tokens.weight", False),
    "phi3": Family("Phi3ForCausalLM", _LLAMA_LIKE, "model.embed_tokens.weight", False),
    "gemma": Family("GemmaForCausalLM", _LLAMA_LIKE, "model.embed_tokens.weight", True),
    "gpt2": Family("GPT2LMHeadModel", ("transformer.", "lm_head."), "transformer.wte.weight",
                   True),
}

_HEAD = "lm_head.weight"
_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


@dataclass(frozen=True)
class StreamPlan:
    """How a streamed job runs: ``tied`` is quantize_checkpoint's (None: the family is not
    verified, the artifact says ``streamed: true``); ``auto``: chosen, not asked for."""

    auto: bool
    tied: list[list[str]] | None
    #: Tied names -> the checkpoint tensor they share, for the model digest (None: no
    #: digest, the family's state dict is not known).
    aliases: dict[str, str] | None

    @property
    def pipeline(self) -> str:
        """The stage lines' and ``reload_check``'s name of the path that ran."""
        return "streamed (auto)" if self.auto else "streamed"


def stream_plan(spec: Any, device: str = "cpu") -> StreamPlan | None:
    """The plan of a job that streams, or None: it runs in memory (or sequentially)."""
    if spec.stream is False:
        return None
    if spec.stream is None and auto_problems(spec, device):
        return None
    tied = _verified_ties(spec) if spec.stream else _checkpoint_ties(spec.model.folder)
    if tied is None:
        return StreamPlan(auto=False, tied=None, aliases=None)
    aliases = {name: group[0] for group in tied for name in group[1:]}
    return StreamPlan(auto=spec.stream is None, tied=tied, aliases=aliases)


def _verified_ties(spec: Any) -> list[list[str]] | None:
    """An asked-for stream's ties when it would also have streamed by itself, whatever its
    pipeline (its metadata is then the in-memory path's), else None."""
    problems = auto_problems(spec, "cpu", pipeline=False)
    return _checkpoint_ties(spec.model.folder) if not problems else None


def auto_problems(spec: Any, device: str = "cpu", *, pipeline: bool = True) -> list[str]:
    """Why an unset ``stream`` does not stream this job (empty: it streams; module
    docstring). ``pipeline``: an asked-for pipeline counts (False: only the artifact)."""
    if spec.model.scheme != "hf":
        return ["the model is not an hf: folder"]
    problems = []
    config = spec.config
    if config.mode != "weight_only" or spec.calibration is not None:
        problems.append("not weight-only without calibration")
    if spec.evaluation is not None or config.target:
        problems.append("evaluation or an accuracy target needs the model")
    if spec.format != "safetensors" or spec.max_shard_size is not None:
        problems.append("the streaming writer writes one .safetensors file")
    if pipeline and spec.pipeline != "auto":
        problems.append(f"pipeline {spec.pipeline!r} was asked for")
    if device != "cpu":
        problems.append(f"device {device}: the streaming kernels run on the CPU")
    return problems or _family_problems(spec)


def _family_problems(spec: Any) -> list[str]:
    """Why the folder is not a verified family's checkpoint as its class loads it."""
    from mono_quant.io._safetensors_stream import read_header
    from mono_quant.pipeline.streaming import checkpoint_files
    from mono_quant.quant.ties import named_explicitly

    folder = Path(spec.model.folder)
    data = _config_json(folder)
    family = FAMILIES.get(data.get("model_type"))  # type: ignore[arg-type]
    if family is None or (data.get("architectures") or [None])[0] != family.architecture:
        return [f"model_type {data.get('model_type')!r} / architectures "
                f"{data.get('architectures')!r} is not a verified family"]
    try:
        tensors = {n: e for f in checkpoint_files(folder)
                   for n, e in read_header(f).tensors.items()}
    except (MonoQuantError, OSError) as e:  # the in-memory path reports the input's problems
        return [f"checkpoint not readable here: {e}"]
    problems = []
    if any(not n.startswith(family.prefixes) or not n.endswith((".weight", ".bias"))
           for n in tensors):
        problems.append("tensor names the family's class would rename")
    floats = {e.dtype for e in tensors.values() if e.dtype in _ST_DTYPES.values()}
    dtype = data.get("dtype") or data.get("torch_dtype") or "float32"
    if floats != {_ST_DTYPES.get(dtype)}:
        problems.append(f"float dtypes {sorted(floats)} are not config.json's {dtype}")
    tied = bool(data.get("tie_word_embeddings", family.tied_default))
    if tied == (_HEAD in tensors) or family.embedding not in tensors:
        problems.append("lm_head.weight stored although tied, or missing although untied")
    if tied and named_explicitly(spec.config.include, _HEAD[: -len(".weight")]):
        problems.append("an include pattern unties lm_head")
    return problems


def _config_json(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _checkpoint_ties(folder: str) -> list[list[str]]:
    """The tie quantize_model reports for a verified family's folder (``[]``: untied)."""
    data = _config_json(Path(folder))
    family = FAMILIES[data["model_type"]]
    tied = bool(data.get("tie_word_embeddings", family.tied_default))
    return [[family.embedding, _HEAD]] if tied else []
