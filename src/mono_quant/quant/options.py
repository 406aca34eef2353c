"""The library's own switches: environment variables read by ``mono_quant.quant`` itself.

The library never reads the service's :class:`~mono_quant.config.Settings` (a bad
``MONO_QUANT_STALE_AFTER`` must not break int8 rounding in a notebook). Its switches are:

``MONO_QUANT_COMPILE``
    ``auto`` (default): a ``torch.compile`` CPU kernel only for tensors that are large enough
    (``MONO_QUANT_COMPILE_MIN_NUMEL``, the shapes where it was measured to win) **and** only
    when compiling pays: the kernel is already compiled in this process (a worker keeps it
    across jobs), or the job quantizes at least :data:`COMPILE_MIN_WORK` bytes of such
    tensors (:func:`job_work`). Otherwise eager. ``always``: every CPU tensor; ``never``:
    plain torch ops only.
``MONO_QUANT_COMPILE_MIN_NUMEL``
    Tensors with at least this many elements may take the compiled path under ``auto``.

Both are read at each call (a dictionary lookup), so tests and callers may change them at any
time; :func:`compile_override` sets the mode for a block of code without the environment.

Example:
    >>> from mono_quant.quant.options import compile_mode, compile_override
    >>> with compile_override("never"):
    ...     compile_mode()
    'never'
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar

from mono_quant.errors import BadConfigError

__all__ = ["COMPILE_MIN_WORK", "COMPILE_MODES", "VARIABLES", "compile_min_numel",
           "compile_mode", "compile_override", "current_job_work", "job_work"]

COMPILE_MODES = ("auto", "always", "never")
#: ``MONO_QUANT_COMPILE`` when unset.
DEFAULT_COMPILE = "auto"
#: ``MONO_QUANT_COMPILE_MIN_NUMEL`` when unset: 16M elements (64 MiB of float32). Measured
#: (benchmarks/quantize_speed.py): below this the eager row-chunk kernel is as fast.
DEFAULT_COMPILE_MIN_NUMEL = 1 << 24

#: Bytes of large float32 weights a job must quantize before compiling the kernel pays under
#: ``auto``. Measured (benchmarks/quantize_speed.py, benchmarks/job_time.py): compiling costs
#: about 7 s per process; on tensors of 16M+ values the compiled kernel saves about
#: 0.02 s per GB against eager (21 against 14.6 GB/s), and on typical LLM shapes it is slower.
COMPILE_MIN_WORK = 256 << 30

_override: str | None = None
_job_work: ContextVar[int] = ContextVar("mono_quant_job_work", default=0)

#: The library's variables as (names without the MONO_QUANT_ prefix, default, meaning): the
#: source of the library table in docs/settings.md.
VARIABLES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("COMPILE",), f"`{DEFAULT_COMPILE}`",
     "`auto`: a torch.compile CPU kernel only for tensors of at least "
     "`MONO_QUANT_COMPILE_MIN_NUMEL` elements; `always`: every CPU tensor; `never`: plain torch "
     "ops. Read by the library at each call, never through the service's settings"),
    (("COMPILE_MIN_NUMEL",), f"`{DEFAULT_COMPILE_MIN_NUMEL}`",
     "tensors at least this large may take the compiled path under `auto`"),
)


def compile_mode() -> str:
    """``auto`` | ``always`` | ``never``: the override, else ``MONO_QUANT_COMPILE``."""
    if _override is not None:
        return _override
    raw = os.environ.get("MONO_QUANT_COMPILE") or DEFAULT_COMPILE
    mode = raw.lower()
    if mode not in COMPILE_MODES:
        raise BadConfigError(
            f"MONO_QUANT_COMPILE={raw!r}: expected one of {', '.join(map(repr, COMPILE_MODES))}"
        )
    return mode


def compile_min_numel() -> int:
    """``MONO_QUANT_COMPILE_MIN_NUMEL`` (default :data:`DEFAULT_COMPILE_MIN_NUMEL`)."""
    raw = os.environ.get("MONO_QUANT_COMPILE_MIN_NUMEL")
    if not raw:
        return DEFAULT_COMPILE_MIN_NUMEL
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise BadConfigError(
            f"MONO_QUANT_COMPILE_MIN_NUMEL={raw!r} is not a whole number >= 0; set it to one "
            "or unset it"
        )
    return value


def current_job_work() -> int:
    """Bytes of weights the running job quantizes (0 outside :func:`job_work`)."""
    return _job_work.get()


@contextlib.contextmanager
def job_work(nbytes: int) -> Iterator[None]:
    """Tell the kernels how much the job inside the block will quantize (``auto`` compiles
    only when that pays)."""
    token = _job_work.set(nbytes)
    try:
        yield
    finally:
        _job_work.reset(token)


@contextlib.contextmanager
def compile_override(mode: str | None) -> Iterator[None]:
    """Use ``mode`` instead of ``MONO_QUANT_COMPILE`` inside the block (``None``: no change)."""
    global _override
    if mode is not None and mode not in COMPILE_MODES:
        raise BadConfigError(f"compile mode {mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    previous, _override = _override, mode if mode is not None else _override
    try:
        yield
    finally:
        _override = previous
