"""The job pipeline: a typed :class:`JobSpec` and :func:`run_pipeline`, which every caller
(``mono-quant quantize``, the Celery worker's ``run_job``, the embedded runner) uses to turn a
model source into a checked artifact: load → calibrate → quantize (in memory, or streaming)
→ save → served check (loads where it is served) → hash.

Also here: where models and calibration data come from (:mod:`~mono_quant.pipeline.sources`,
the ``hf:`` / ``factory:`` / ``tensors:`` / ``text:`` grammar) and the streaming quantizer
that never builds the model (:mod:`~mono_quant.pipeline.streaming`).

Example:
    >>> from mono_quant.pipeline import parse_model_source
    >>> parse_model_source("factory:mono_quant.demo_models:mlp?hidden=128").canonical()["kwargs"]
    {'hidden': 128}
"""

from typing import TYPE_CHECKING

from mono_quant._lazy import lazy_exports

if TYPE_CHECKING:  # the real imports, for type checkers and IDEs
    from mono_quant.pipeline.run import PipelineResult, Stage, run_pipeline
    from mono_quant.pipeline.sources import (
        CalibrationSource,
        ModelSource,
        parse_calibration_source,
        parse_model_source,
    )
    from mono_quant.pipeline.spec import JobSpec
    from mono_quant.pipeline.streaming import checkpoint_files, quantize_checkpoint

_EXPORTS = {
    "CalibrationSource": "mono_quant.pipeline.sources",
    "JobSpec": "mono_quant.pipeline.spec",
    "ModelSource": "mono_quant.pipeline.sources",
    "PipelineResult": "mono_quant.pipeline.run",
    "Stage": "mono_quant.pipeline.run",
    "checkpoint_files": "mono_quant.pipeline.streaming",
    "parse_calibration_source": "mono_quant.pipeline.sources",
    "parse_model_source": "mono_quant.pipeline.sources",
    "quantize_checkpoint": "mono_quant.pipeline.streaming",
    "run_pipeline": "mono_quant.pipeline.run",
}
_SUBMODULES = ("run", "served", "sources", "spec", "streaming")
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)

__all__ = [
    "CalibrationSource",
    "JobSpec",
    "ModelSource",
    "PipelineResult",
    "Stage",
    "checkpoint_files",
    "parse_calibration_source",
    "parse_model_source",
    "quantize_checkpoint",
    "run_pipeline",
]
