"""Small pieces every command shares: deprecated option aliases, help formatting, progress.

* :func:`add_deprecated_alias`: an old option spelling keeps working for now and prints one
  notice on stderr naming the new spelling (the README lists every rename).
* :class:`HelpFormatter`: shows each option's default and keeps epilog examples as written.
* :func:`progress_bar`: a tqdm bar on a terminal; without one, a plain line at most every
  :data:`PROGRESS_INTERVAL_S` seconds (logs and CI output stay readable); nothing when quiet.
* :func:`quiet_third_party`: transformers' and huggingface_hub's bars and chatter off under
  ``--quiet`` and without a terminal, set through their environment variables so spawned job
  processes and workers inherit it.
* :func:`route_third_party_logs`: transformers' and huggingface_hub's log records go through
  Python's logging (our format and handlers, Celery's in a worker) instead of the stderr
  handlers those libraries install on import.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    >>> _ = p.add_argument("--weight-observer", default="minmax", help="weight observer")
    >>> add_deprecated_alias(p, "--observer", "--weight-observer")
    >>> p.parse_args(["--observer", "mse"]).weight_observer  # prints a notice on stderr
    'mse'
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, TextIO

__all__ = [
    "PROGRESS_INTERVAL_S",
    "HelpFormatter",
    "LineProgress",
    "add_deprecated_alias",
    "progress_bar",
    "quiet_third_party",
    "route_third_party_logs",
]

#: Without a terminal, a progress line is printed at most this often (seconds).
PROGRESS_INTERVAL_S = 5.0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions and epilogs (the examples) as written; appends each default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        if action.option_strings and action.nargs != 0:
            return f"{text} (default: %(default)s)"
        return text


class _DeprecatedAlias(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, replacement: str = "",
                 target: argparse.Action | None = None, **kwargs: Any) -> None:
        self.replacement = replacement
        self.target = target
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated and will be removed; use "
              f"{self.replacement}", file=sys.stderr)
        if self.target is None:  # pragma: no cover - add_deprecated_alias always sets it
            raise TypeError("a deprecated alias needs the action it stands for")
        self.target(parser, namespace, values, self.replacement)


def add_deprecated_alias(parser: argparse.ArgumentParser | Any, old: str, new: str) -> None:
    """Accept ``old`` as a deprecated spelling of the existing option ``new``."""
    target = next(a for a in parser._actions if new in a.option_strings)
    parser.add_argument(
        old, dest=target.dest, action=_DeprecatedAlias, replacement=new, target=target,
        nargs=target.nargs, const=target.const, choices=target.choices,
        default=argparse.SUPPRESS, metavar=target.metavar,
        help=f"deprecated spelling of {new}",
    )


class LineProgress:
    """The non-terminal stand-in for a tqdm bar: ``desc: n/total`` lines, rate-limited."""

    def __init__(self, total: int | None, desc: str, file: TextIO,
                 interval: float = PROGRESS_INTERVAL_S) -> None:
        self.total, self.desc, self.file, self.interval = total, desc, file, interval
        self.n = 0
        self._last = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.n += k
        if time.monotonic() - self._last >= self.interval:
            self._print()

    def _print(self) -> None:
        of = f"/{self.total}" if self.total else ""
        print(f"{self.desc}: {self.n}{of}", file=self.file, flush=True)
        self._last = time.monotonic()

    def close(self) -> None:
        pass


class _NoProgress:
    n = 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, *, quiet: bool = False,
                 file: TextIO | None = None, unit: str = "job") -> Any:
    """A bar with ``update(k)``, ``n`` and ``close()``: tqdm on a terminal, else lines."""
    out = file or sys.stderr
    if quiet:
        return _NoProgress()
    if out.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=out)
    return LineProgress(total, desc, out)


def quiet_third_party(*, quiet: bool, stream: TextIO | None = None) -> None:
    """Silence transformers/huggingface_hub bars (and, when quiet, their warnings).

    Environment variables rather than API calls: importing transformers takes seconds, and
    the job processes (spawned or forked by Celery) inherit the environment.
    """
    out = stream or sys.stderr
    if quiet or not out.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if quiet:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


#: Logging modules of third-party libraries that install their own stderr handler, and the
#: name of the library's root logger.
_THIRD_PARTY_LOGGING = {"transformers.utils.logging": "transformers",
                        "huggingface_hub.utils.logging": "huggingface_hub"}


def _route(module: Any) -> None:
    """Strip the library's own handlers from its root logger and let records propagate."""
    import logging

    configure = getattr(module, "_configure_library_root_logger", None)
    if configure is not None:  # transformers adds its handler on first use, and only once
        configure()
    library = logging.getLogger(_THIRD_PARTY_LOGGING[module.__name__])
    for handler in list(library.handlers):
        library.removeHandler(handler)
    library.propagate = True


class _RouteOnImport:
    """A ``sys.meta_path`` finder that runs :func:`_route` right after one of
    :data:`_THIRD_PARTY_LOGGING` is imported. Importing transformers up front to configure it
    would cost every command seconds; this costs nothing until a job imports it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in _THIRD_PARTY_LOGGING:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_route(module: Any) -> None:
            exec_module(module)
            _route(module)

        spec.loader.exec_module = exec_and_route  # type: ignore[method-assign]
        return spec


def route_third_party_logs() -> None:
    """Send transformers' and huggingface_hub's logs through Python's logging from now on
    (idempotent; applies at once to what is already imported, and on import to the rest)."""
    for name in _THIRD_PARTY_LOGGING:
        if name in sys.modules:
            _route(sys.modules[name])
    if not any(isinstance(f, _RouteOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RouteOnImport())
