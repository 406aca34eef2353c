"""The ``mono-quant`` command line.

Each noun lives in its own module under ``commands/`` with a ``register(subparsers)``
function; heavy imports (torch, SQLAlchemy, Celery) happen inside the command handlers, so
``mono-quant --help`` stays fast.

Exit codes: 0 ok, 1 failure, 2 bad input or bad configuration (the message says what to fix).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]

_COMMAND_MODULES = (
    "mono_quant.scheduler.commands.demo",
    "mono_quant.scheduler.commands.catalog",
    "mono_quant.scheduler.commands.db",
    "mono_quant.scheduler.commands.quantize",
    "mono_quant.scheduler.commands.jobs",
    "mono_quant.scheduler.commands.worker",
    "mono_quant.scheduler.commands.ops",
    "mono_quant.scheduler.commands.serve",
)

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mono-quant", description="Turn PyTorch models into int8 artifacts."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from mono_quant.errors import BadConfigError, BadInputError, MonoQuantError
    from mono_quant.scheduler.commands.args import printable

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


if __name__ == "__main__":
    sys.exit(main())
