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
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]

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


if __name__ == "__main__":  # python -m mono_quant.scheduler.cli
    sys.exit(main())
