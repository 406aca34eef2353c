"""Manifest values against the catalog's columns, so SQLite and PostgreSQL accept the same.

Each manifest field that lands in a typed column is checked with
:func:`mono_quant.catalog.limits.check_column` against that column (its length or integer
range comes from the model, not from a copy here). Strings in JSON columns (labels, factory
arguments) are checked for NUL bytes by :func:`mono_quant.scheduler.bounds.check_document`.

Example:
    >>> check_batch("x" * 300)
    ['name: expected at most 255 characters (got 300)']
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from mono_quant.catalog.limits import check_column
from mono_quant.catalog.models import Artifact, Batch, Job

if TYPE_CHECKING:
    from mono_quant.scheduler.manifest import ScheduledJob

__all__ = ["NAME_LENGTH", "check_batch", "check_job", "check_settings", "name_fits"]

#: The longest job name the catalog stores (``jobs.name``).
NAME_LENGTH: int = Job.name.type.length


def _problems(pairs: list[tuple[str, Any, Any]]) -> list[str]:
    out = []
    for field, column, value in pairs:
        if value is None:
            continue
        problem = check_column(column, value)
        if problem:
            out.append(f"{field}: {problem}")
    return out


def check_batch(name: str | None) -> list[str]:
    """Problems of the batch's own fields (its name)."""
    return _problems([("name", Batch.name, name)])


def check_job(job: ScheduledJob) -> list[str]:
    """Problems of one expanded job: its name (with the matrix suffix), queue, attempts, and
    the QuantizationInfo values the artifact row will hold."""
    spec = job.spec
    found = check_settings(job.queue, job.max_attempts, spec.samples, spec.config.group_size)
    if not found and name_fits(job.name):
        return []  # the common case, without building the pairs
    name = check_column(Job.name, job.name)
    return ([] if name is None else [f"name: {name}"]) + list(found)


def name_fits(name: str) -> bool:
    """Whether ``jobs.name`` stores ``name`` as it is: what :func:`check_job` checks of the
    name, as one test (a matrix checks tens of thousands)."""
    return type(name) is str and len(name) <= NAME_LENGTH and "\x00" not in name


@lru_cache(maxsize=1024, typed=True)
def check_settings(queue: str, max_attempts: int, samples: int | None,
                   group_size: int | None) -> tuple[str, ...]:
    """The problems of the values a matrix repeats for thousands of jobs, once per set."""
    return tuple(_problems([
        ("queue", Job.queue, queue),
        ("max_attempts", Job.max_attempts, max_attempts),
        ("samples", Artifact.calibration_samples, samples),
        ("group_size", Artifact.group_size, group_size),
    ]))
