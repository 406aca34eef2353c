"""``mono-quant where``: which catalog, storage and broker this command line uses, and why.

Settings come from MONO_QUANT_* variables, else the nearest mono-quant.toml (searched upward
from the current folder), else the per-user data folder; this prints the outcome so nobody
has to guess why ``catalog list`` is empty in another folder.
"""

from __future__ import annotations

import argparse

from mono_quant.scheduler.cliutil import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "where", help="print the catalog, storage and broker commands use (and why)",
        formatter_class=HelpFormatter,
        epilog="example:\n  mono-quant where --json | jq -r .catalog_url\n",
    )
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(handler=run_where)


def run_where(args: argparse.Namespace) -> int:
    import json

    from mono_quant.catalog.db import redact
    from mono_quant.config import get_settings
    from mono_quant.home import environ_with_home

    s, home = get_settings(), environ_with_home()
    broker_default = ("default: none (embedded mode: `run` executes jobs itself)"
                      if not s.broker_configured else "default")
    answer = {
        "config_file": str(s.config_file) if s.config_file else None,
        "data_dir": str(s.data_dir),
        "data_dir_from": s.data_dir_source,
        "catalog_url": redact(s.catalog_url),
        "catalog_url_from": home.origin(("CATALOG_URL", "DB_HOST"),
                                        "default: catalog.db in the data folder"),
        "storage_root": str(s.storage_root),
        "storage_root_from": home.origin(("STORAGE_ROOT",),
                                         "default: artifacts/ in the data folder"),
        "broker_url": redact(s.broker_url),
        "broker_url_from": home.origin(("BROKER_URL", "REDIS_HOST"), broker_default),
    }
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    width = max(map(len, answer))
    for key, value in answer.items():
        print(f"{key:<{width}}  {value if value is not None else '-'}")
    return 0
