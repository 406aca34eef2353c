"""``mono-quant db upgrade|current``: create, upgrade or inspect the catalog database."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from mono_quant.scheduler.cliutil import HelpFormatter

    p = sub.add_parser("db", help="create or upgrade the catalog database",
                       formatter_class=HelpFormatter,
                       epilog="examples:\n  mono-quant db upgrade\n  mono-quant db current "
                              "--url postgresql+psycopg://q@db/mono_quant\n")
    verbs = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = verbs.add_parser("upgrade", help="create the catalog or upgrade it to this version")
    cur = verbs.add_parser("current", help="print the database's schema revision")
    for v in (up, cur):
        v.add_argument("--url", help="catalog URL (default: see `mono-quant where`)")
    up.set_defaults(handler=run_upgrade)
    cur.set_defaults(handler=run_current)


def _url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url
    from mono_quant.config import get_settings

    return get_settings().catalog_url


def run_upgrade(args: argparse.Namespace) -> int:
    from mono_quant.catalog.db import redact, upgrade

    url = _url(args)
    before, after = upgrade(url)
    if before == after:
        print(f"catalog {redact(url)} is up to date (revision {after})")
    else:
        print(f"catalog {redact(url)} upgraded from {before or 'empty'} to revision {after}")
    return 0


def run_current(args: argparse.Namespace) -> int:
    from mono_quant.catalog.db import current_revision, head_revision, make_engine, redact

    url = _url(args)
    engine = make_engine(url)
    try:
        current, head = current_revision(engine), head_revision()
    finally:
        engine.dispose()
    state = "up to date" if current == head else "needs `mono-quant db upgrade`"
    print(f"catalog {redact(url)}: revision {current or 'none'} (head {head}, {state})")
    return 0 if current == head else 1
