"""``mono-quant serve``: the read-only web catalog on uvicorn.

Binds to 127.0.0.1 unless told otherwise; ``--token`` (or ``MONO_QUANT_SERVE_TOKEN``) makes
every request carry the token. Exposing the catalog on another address without a token is
allowed (a trusted network) but said out loud.
"""

from __future__ import annotations

import argparse
import sys

#: The port ``mono-quant serve`` listens on by default.
DEFAULT_PORT = 8765
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def register(sub: argparse._SubParsersAction) -> None:
    from mono_quant.scheduler.cliutil import HelpFormatter

    p = sub.add_parser(
        "serve", help="serve a read-only web catalog (pages and a JSON API)",
        description="Serve batches, jobs, artifacts and comparisons as web pages and JSON "
                    "(/api/...), read-only.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  mono-quant serve                       # http://127.0.0.1:8765\n"
               "  MONO_QUANT_SERVE_TOKEN=s3cret mono-quant serve --host 0.0.0.0\n",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--url", help="catalog URL (default: MONO_QUANT_CATALOG_URL or SQLite)")
    p.add_argument("--storage-root", help="shown artifact paths are under this root "
                                          "(default: MONO_QUANT_STORAGE_ROOT)")
    p.add_argument("--token", help="require this token (Authorization: Bearer T, or ?token=T "
                                   "once in a browser); default: MONO_QUANT_SERVE_TOKEN, none")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from mono_quant.config import get_settings
    from mono_quant.errors import BadConfigError, BadInputError

    if not 0 <= args.port <= 65535:
        raise BadInputError(f"--port {args.port}: expected 0 to 65535")
    try:
        import uvicorn

        from mono_quant.scheduler.web import create_app
    except ImportError as e:
        raise BadConfigError(f"serve needs the web extra ({e.name} is missing): "
                             "pip install 'mono-quant[web]'") from e
    settings = get_settings()
    token = args.token or settings.serve_token
    if args.token is not None and not args.token.strip():
        raise BadInputError("--token is empty; give a token or leave the option out")
    url = args.url or settings.catalog_url
    root = args.storage_root or str(settings.storage_root)
    app = create_app(url, storage_root=root, token=token)
    from mono_quant.catalog import Catalog

    Catalog(engine=app.state.engine).require_schema()  # a clear message, not a 503 per page
    if args.host not in _LOOPBACK and not token:
        print(f"mono-quant serve: warning: listening on {args.host} without a token; anyone "
              "who can reach it can read the catalog", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
