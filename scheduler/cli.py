"""The ``mono-quant`` command line.

Each noun lives in its own module under ``commands/`` with a ``register(subparsers)``
function; heavy imports (torch, SQLAlchemy, Celery) happen inside the command handlers, so
``mono-quant --help`` stays fast.

Exit codes: 0 ok (an empty answer to a valid query included), 1 failure, 2 bad input or bad
configuration, including anything named that does not exist (the message says what to fix).
A closed output pipe (``| head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["entry", "main"]

_COMMAND_MODULES = (  # in the order `mono-quant --help` lists them
    "mono_quant.scheduler.commands.demo",
    "mono_quant.scheduler.commands.quantize",
    "mono_quant.scheduler.commands.jobs",
    "mono_quant.scheduler.commands.browse",
    "mono_quant.scheduler.commands.catalog",
    "mono_quant.scheduler.commands.export",
    "mono_quant.scheduler.commands.where",
    "mono_quant.scheduler.commands.db",
    "mono_quant.scheduler.commands.worker",
    "mono_quant.scheduler.commands.ops",
    "mono_quant.scheduler.commands.serve",
)

_EPILOG = """examples:
  mono-quant run examples/demo.yaml          # quantize a batch locally, no server needed
  mono-quant catalog list --latest           # the newest artifact per model and config
  mono-quant batches                         # what was submitted; then `jobs --batch NAME`
  mono-quant where                           # which catalog, storage and broker are used

The catalog, storage and broker come from MONO_QUANT_* variables, else from the nearest
mono-quant.toml in this folder or a parent, else from a per-user data folder;
`mono-quant where` prints them and where each came from.
Exit codes: 0 ok, 1 failure, 2 bad input (including an id or name that does not exist).
"""

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    from mono_quant.scheduler.cliutil import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="mono-quant", description="Turn PyTorch models into int8 artifacts.",
        epilog=_EPILOG, formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


class _Version(argparse.Action):
    """``--version``, reading the installed version only when asked (importlib.metadata is
    slow to import, and ``--help`` should stay fast)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"mono-quant {_version()}")
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mono-quant")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _quiet_broken_pipe() -> int:
    """``mono-quant ... | head``: the reader left; end without a traceback (as Python's docs
    advise: point stdout at devnull so the interpreter's final flush cannot fail again)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a program killed by the signal reports


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a pipe closed early fails here, not in the exit-time flush
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from mono_quant.errors import BadConfigError, BadInputError, MonoQuantError
    from mono_quant.scheduler.cliutil import route_third_party_logs
    from mono_quant.scheduler.commands.args import printable

    route_third_party_logs()
    def shown(e: Exception) -> str:  # control characters escaped, line by line
        return "\n".join(printable(line) for line in str(e).splitlines())

    try:
        return int(args.handler(args) or 0)
    except (BadInputError, BadConfigError) as e:
        print(f"mono-quant {args.command}: error: {shown(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MonoQuantError as e:
        print(f"mono-quant {args.command}: failed: {shown(e)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``mono-quant`` console script and ``python -m mono_quant.scheduler.cli``: run
    :func:`main`, then exit with its code.

    Before the interpreter shuts down, every live object is moved to the garbage collector's
    permanent generation (:func:`gc.freeze`), so Python's last collections at shutdown skip
    them. After a job that imported torch and transformers those collections walk millions of
    objects: 4-6 s of a 12 s ``quantize`` (docs/performance.md). Nothing else changes: atexit
    handlers (logging's flush included) and the final flush of stdout and stderr still run,
    and the process's memory goes back to the OS when it ends, as it would anyway. Only
    :func:`main` is the API for in-process callers (tests): it freezes nothing.
    """
    # torch's CPU allocator backs tensors of 2 MiB and more with transparent huge pages
    # when this is set (read once, at its first allocation): a fresh tensor then costs one
    # page fault per 2 MiB instead of per 4 KiB, and a job allocates gigabytes of them
    # (dequantized weights in each forward, the int8 copy). THP_MEM_ALLOC_ENABLE=0 opts out.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    # OpenMP threads that wait for work sleep instead of spinning: on a machine whose cores
    # other processes also use, spinning threads stall torch's parallel ops (measured: a
    # 100M job 20.1 s -> 10.7 s at load average 3.9, docs/performance.md). Set it to opt out.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # python -m mono_quant.scheduler.cli
    entry()
