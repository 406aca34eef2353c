"""Operations commands: ``health`` (for health checks and probes) and ``metrics`` (Prometheus).

``mono-quant health`` exits 0 only when every required check passes: the broker answers, the
catalog answers at the expected schema revision and a worker answers a ping (``--worker NAME``:
that node; ``--no-worker``: broker and catalog only; ``--no-catalog``: broker and worker,
for liveness probes). One line per check says what failed and why.
``mono-quant metrics --port 9818`` serves ``/metrics``.
"""

from __future__ import annotations

import argparse
import json
import sys

from mono_quant.scheduler.cliutil import HelpFormatter
from mono_quant.scheduler.health import DEFAULT_TIMEOUT

#: The port ``mono-quant metrics`` listens on by default (unassigned in Prometheus' list).
DEFAULT_METRICS_PORT = 9818


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="check the broker, the catalog and the workers",
                       formatter_class=HelpFormatter,
                       epilog="examples:\n  mono-quant health --no-worker      # scheduler probe\n"
                              "  mono-quant health --worker gpu0@%h --no-catalog\n")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds each check may take (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--worker", action="append", default=[], metavar="NAME",
                   help="this worker node must answer (repeatable; %%h = this host, as in "
                        "`worker --name`); default: any worker")
    p.add_argument("--no-worker", action="store_true",
                   help="check only the broker and the catalog (scheduler, reconcile)")
    p.add_argument("--no-catalog", action="store_true",
                   help="skip the catalog (a worker's liveness probe: restarting workers does "
                        "not fix a database outage)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=_health)

    p = sub.add_parser("metrics", help="serve Prometheus metrics on /metrics",
                       formatter_class=HelpFormatter,
                       epilog="examples:\n  mono-quant metrics --port 9818\n"
                              "  mono-quant metrics --once | grep mono_quant_jobs\n")
    p.add_argument("--port", type=int, default=DEFAULT_METRICS_PORT,
                   help=f"port (default {DEFAULT_METRICS_PORT}; 0 = any free port)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--queue", action="append", default=[], metavar="NAME",
                   help="also report this queue's length (repeatable; queues of jobs in the "
                        "catalog and cpu, gpu are always reported)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds the catalog and broker may take per scrape")
    p.add_argument("--once", action="store_true", help="print the metrics once and exit")
    p.set_defaults(handler=_metrics)


def _positive(value: float, option: str) -> float:
    from mono_quant.errors import BadInputError

    if not value > 0:
        raise BadInputError(f"{option} {value:g}: expected a number of seconds > 0")
    return value


def _health(args: argparse.Namespace) -> int:
    from mono_quant.config import get_settings
    from mono_quant.errors import BadInputError
    from mono_quant.scheduler.health import overall_ok, run_checks

    timeout = _positive(args.timeout, "--timeout")
    if args.no_worker and args.worker:
        raise BadInputError("health: --worker and --no-worker contradict each other; "
                            "give one of them")
    if args.no_worker and args.no_catalog:
        raise BadInputError("health: --no-worker and --no-catalog leave only the broker; "
                            "give at most one of them")
    s = get_settings()
    checks = run_checks(broker_url=s.broker_url, catalog_url=s.catalog_url, timeout=timeout,
                        workers=args.worker, require_worker=not args.no_worker,
                        check_catalog_too=not args.no_catalog)
    ok = overall_ok(checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"{'ok' if c.ok else 'FAILED':<6} {c.name:<7} {c.detail}")
        if args.no_catalog:
            print(f"{'skip':<6} {'catalog':<7} not checked (--no-catalog)")
        if args.no_worker:
            print(f"{'skip':<6} {'worker':<7} not checked (--no-worker)")
    sys.stdout.flush()
    return 0 if ok else 1


def _metrics(args: argparse.Namespace) -> int:
    from mono_quant.config import get_settings
    from mono_quant.errors import BadInputError
    from mono_quant.scheduler.metrics import MetricsSource, render, serve

    timeout = _positive(args.timeout, "--timeout")
    if not 0 <= args.port <= 65535:
        raise BadInputError(f"--port {args.port}: expected 0..65535")
    s = get_settings()
    source = MetricsSource(s.catalog_url, s.broker_url, queues=args.queue, timeout=timeout)
    try:
        if args.once:
            sys.stdout.write(render(source))
            return 0
        try:
            server = serve(source, args.host, args.port)
        except OSError as e:
            raise BadInputError(f"metrics: cannot listen on {args.host}:{args.port}: "
                                f"{e.strerror or e}") from e
        host, port = server.server_address[:2]
        print(f"serving metrics on http://{host}:{port}/metrics", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
        return 0
    finally:
        source.close()
