"""``mono-quant catalog list|show|verify``: query the artifact catalog.

Filters OR within a field (``--scheme symmetric,asymmetric`` or ``--model a --model b``) and
AND across fields, with numeric ranges (``--min-sqnr``, ``--min-cosine``, ``--max-size``).
Output: an aligned table for people, ``--json`` or ``--output-format csv`` for scripts (JSON
writes non-finite floats as ``{"__float__": "inf"}``, like the artifact metadata). Every row
carries the artifact's absolute ``path`` and ``uri``; ``catalog path ID`` prints just the path.
``--format`` is the deprecated spelling of ``--output-format``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mono_quant.scheduler.cliutil import HelpFormatter, add_deprecated_alias
from mono_quant.scheduler.commands.args import batch_ref, catalog_id, count, printable

# Filters whose values come from a fixed set; "a,b" is split. The artifact format filter is
# --artifact-format (as in `quantize`); --output-format picks the output format.
_SPLIT = ("scheme", "granularity", "mode", "artifact-format", "dtype", "status",
          "serveable-by", "weight-algorithm")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("catalog", help="query the artifact catalog", formatter_class=HelpFormatter,
                       epilog=_EPILOG)
    verbs = p.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)

    ls = verbs.add_parser("list", help="list artifacts matching filters", epilog=_EPILOG,
                          formatter_class=HelpFormatter)
    ls.add_argument("--model", action="extend", nargs="+", default=[], metavar="SOURCE",
                    help="model source(s), exact")
    ls.add_argument("--model-digest", action="extend", nargs="+", default=[], metavar="SHA256",
                    help="float weights digest(s)")
    for name in _SPLIT:
        ls.add_argument(f"--{name}", action="append", default=[], metavar="VALUE[,VALUE]",
                        help=f"{name}(s); several values are OR-ed")
    ls.add_argument("--batch", type=batch_ref, action="extend", nargs="+", default=[],
                    metavar="ID|NAME",
                    help="batch id(s) or name(s); an unknown one exits 2")
    ls.add_argument("--min-sqnr", type=float, metavar="DB", help="weight SQNR at least (dB)")
    ls.add_argument("--min-cosine", type=float, metavar="X",
                    help="output cosine similarity at least")
    ls.add_argument("--max-size", metavar="SIZE", help="artifact size at most, e.g. 500MB")
    ls.add_argument("--smoothquant", action=argparse.BooleanOptionalAction, default=None,
                    help="only artifacts made with (--smoothquant) or without SmoothQuant")
    ls.add_argument("--max-perplexity-increase", type=float, metavar="X",
                    help="perplexity increase at most (artifacts evaluated on a text)")
    ls.add_argument("--since", metavar="TIME", help="created since: 2024-05-01, ISO time, 7d")
    ls.add_argument("--latest", action="store_true",
                    help="only the newest artifact per model, config and format")
    ls.add_argument("--order-by", default="created_at:desc", metavar="FIELD[:asc|desc]",
                    help="sort field and direction")
    ls.add_argument("--limit", type=count, default=100, help="at most N rows (0: all)")
    _output_args(ls)
    ls.set_defaults(handler=run_list)

    show = verbs.add_parser("show", help="show one artifact with its QuantizationInfo",
                            formatter_class=HelpFormatter)
    show.add_argument("id", type=catalog_id, metavar="ID", help="artifact id")
    _output_args(show, csv=False)
    show.set_defaults(handler=run_show)

    path = verbs.add_parser("path", help="print the absolute path of an artifact",
                            formatter_class=HelpFormatter,
                            epilog="example:\n  ls -l \"$(mono-quant catalog path 17)\"\n")
    path.add_argument("id", type=catalog_id, metavar="ID", help="artifact id")
    path.add_argument("--uri", action="store_true", help="print its file:// URI instead")
    path.add_argument("--url", help="catalog URL (default: see `mono-quant where`)")
    path.set_defaults(handler=run_path)

    verify = verbs.add_parser("verify", help="re-hash artifacts and report missing or changed",
                              formatter_class=HelpFormatter)
    verify.add_argument("ids", type=catalog_id, nargs="*", metavar="ID",
                        help="artifact id(s)")
    verify.add_argument("--all", action="store_true", help="every artifact in the catalog")
    verify.add_argument("--storage-root", help="default: MONO_QUANT_STORAGE_ROOT")
    verify.add_argument("--deep", action="store_true",
                        help="re-hash objects in an object store too (default there: sizes "
                             "only; a folder is always re-hashed)")
    _output_args(verify, csv=False)
    verify.set_defaults(handler=run_verify)


_EPILOG = """examples:
  mono-quant catalog list --model hf:./tiny-llama --min-sqnr 30 --order-by weight_sqnr_db
  mono-quant catalog list --batch nightly --latest --output-format csv > nightly.csv
  mono-quant catalog show 17 --json
  mono-quant catalog path 17
"""


def _output_args(p: argparse.ArgumentParser, csv: bool = True) -> None:
    p.add_argument("--url", help="catalog URL (default: see `mono-quant where`)")
    formats = ["table", "json", "csv"] if csv else ["table", "json"]
    p.add_argument("--output-format", dest="output", choices=formats, default="table",
                   help="output format")
    add_deprecated_alias(p, "--format", "--output-format")
    p.add_argument("--json", dest="output", action="store_const", const="json",
                   help="same as --output-format json")


@contextmanager
def _catalog(args: argparse.Namespace) -> Iterator[Any]:
    """A session on a catalog whose schema is current; database errors become ours."""
    from sqlalchemy.exc import SQLAlchemyError

    from mono_quant.catalog import Catalog
    from mono_quant.errors import MonoQuantError

    catalog = Catalog(args.url, create=False)  # read-only: never create a database
    try:
        catalog.require_schema()
        with catalog.begin() as session:
            yield session
    except SQLAlchemyError as e:
        raise MonoQuantError(f"catalog query failed: {str(e).splitlines()[0]}") from e
    finally:
        catalog.dispose()


def _query(args: argparse.Namespace) -> Any:
    from mono_quant.catalog import ArtifactQuery, parse_since, parse_size
    from mono_quant.errors import BadInputError

    field, _, direction = args.order_by.partition(":")
    if direction not in ("", "asc", "desc"):
        raise BadInputError(f"--order-by {args.order_by!r}: the direction must be asc or desc")
    if args.limit < 0:
        raise BadInputError(f"--limit {args.limit}: expected 0 (all) or a positive number")

    def split(values: list[str]) -> list[str]:
        return [v.strip() for item in values for v in item.split(",") if v.strip()]

    return ArtifactQuery(
        models=args.model, model_digests=args.model_digest,
        schemes=split(args.scheme), granularities=split(args.granularity),
        modes=split(args.mode), formats=split(args.artifact_format), dtypes=split(args.dtype),
        statuses=split(args.status), batches=args.batch,
        serveable_by=split(args.serveable_by),
        weight_algorithms=split(args.weight_algorithm), smoothquant=args.smoothquant,
        max_perplexity_increase=args.max_perplexity_increase,
        min_sqnr=args.min_sqnr, min_cosine=args.min_cosine,
        max_size=None if args.max_size is None else parse_size(args.max_size),
        since=None if args.since is None else parse_since(args.since),
        latest=args.latest, order_by=field, descending=direction != "asc",
        limit=args.limit or None,
    )


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def _print_json(data: Any) -> None:
    import json

    print(json.dumps(_json_ready(data), indent=2, allow_nan=False))


def _human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def _num(x: float | None, digits: int) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if math.isfinite(x) else ("inf" if x > 0 else "-inf")


_TABLE = (  # header, right-aligned, cell
    ("ID", True, lambda r: str(r["id"])),
    ("JOB", False, lambda r: f"{r['job_id']} {r['job_name']}"),
    ("MODEL", False, lambda r: r["model_source"]),
    ("SCHEME", False, lambda r: r["scheme"]),
    ("GRANULARITY", False, lambda r: r["granularity"]
     + (f"/{r['group_size']}" if r["group_size"] else "")),
    ("MODE", False, lambda r: r["mode"]),
    ("FORMAT", False, lambda r: r["format"]),
    ("W-SQNR dB", True, lambda r: _num(r["weight_sqnr_db"], 2)),
    ("MIN dB", True, lambda r: _num(r["weight_sqnr_db_min"], 2)),
    ("COSINE", True, lambda r: _num(r["output_cosine"], 5)),
    ("SIZE", True, lambda r: _human_size(r["size_bytes"])),
    ("RATIO", True, lambda r: _num(r["compression_ratio"], 2)),
    ("CREATED (UTC)", False, lambda r: r["created_at"][:19].replace("T", " ")),
    ("PATH", False, lambda r: r["path"]),
)


def print_table(records: list[dict[str, Any]]) -> None:
    cells = [[printable(cell(r)) for _, _, cell in _TABLE] for r in records]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, (h, _, _) in enumerate(_TABLE)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if right else v.ljust(w)
                 for v, w, (_, right, _) in zip(values, widths, _TABLE, strict=True)]
        return "  ".join(parts).rstrip()

    print(line([h for h, _, _ in _TABLE]))
    for row in cells:
        print(line(row))


def _print_csv(records: list[dict[str, Any]]) -> None:
    import csv

    from mono_quant.catalog.queries import RECORD_FIELDS

    writer = csv.DictWriter(sys.stdout, fieldnames=RECORD_FIELDS, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})


def _storage_root(args: argparse.Namespace) -> Any:
    """--storage-root (a folder or an object store's URL), else MONO_QUANT_STORAGE_ROOT."""
    from pathlib import Path

    from mono_quant._storage_url import check_store_url, is_url
    from mono_quant.config import get_settings

    root = getattr(args, "storage_root", None)
    if not root:
        return get_settings().storage_root
    return check_store_url(root, "--storage-root") if is_url(root) else Path(root)


def run_list(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mono_quant.catalog import artifact_records
    from mono_quant.scheduler.resolve import resolve_batch_ids

    query = _query(args)
    root = _storage_root(args)
    with _catalog(args) as session:
        if query.batches:  # an unknown batch is an error, not an empty table
            query = replace(query, batches=tuple(resolve_batch_ids(session, query.batches)))
        records = artifact_records(session, query, storage_root=root)
    if args.output == "json":
        _print_json(records)
    elif args.output == "csv":
        _print_csv(records)
    else:
        print_table(records)
        if query.limit is not None and len(records) == query.limit:
            print(f"(first {query.limit} rows; --limit 0 for all)", file=sys.stderr)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from mono_quant.catalog import artifact_record, get_artifact
    from mono_quant.scheduler.resolve import resolve_artifact_id

    with _catalog(args) as session:
        artifact = get_artifact(session, resolve_artifact_id(session, args.id))
        record = artifact_record(artifact, with_info=True, storage_root=_storage_root(args))
    if args.output == "json":
        _print_json(record)
        return 0
    import json

    info = record.pop("info")
    width = max(len(k) for k in record)
    for key, value in record.items():
        shown = _num(value, 4) if isinstance(value, float) else ("-" if value is None else value)
        print(f"{key:<{width}}  {printable(shown)}")
    print("info:")
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0


def run_path(args: argparse.Namespace) -> int:
    from mono_quant.catalog import artifact_path, get_artifact
    from mono_quant.scheduler.resolve import resolve_artifact_id

    with _catalog(args) as session:
        path = artifact_path(get_artifact(session, resolve_artifact_id(session, args.id)),
                             _storage_root(args))
    print(path.as_uri() if args.uri and not isinstance(path, str) else path)  # str: a URL
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from mono_quant.catalog import verify_artifacts
    from mono_quant.errors import BadInputError

    if bool(args.ids) == bool(args.all):
        raise BadInputError("give artifact ids or --all (not both)")
    root = _storage_root(args)
    counts: dict[str, int] = {}
    results = []
    with _catalog(args) as session:
        for r in verify_artifacts(session, root, None if args.all else args.ids,
                                  deep=True if args.deep else None):
            counts[r.status] = counts.get(r.status, 0) + 1
            if args.output == "json":
                results.append(r)
            elif not r.ok:
                print(f"artifact {r.artifact_id} {printable(r.storage_key)}: {r.status.upper()} "
                      f"({printable(r.detail)})")
    if args.output == "json":
        from dataclasses import asdict

        _print_json([{**asdict(r), "ok": r.ok} for r in results])
    else:
        total = sum(counts.values())
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        print(f"verified {total} artifact(s) under {root}: {summary or 'none'}")
    return 0 if counts.keys() <= {"ok"} else 1
