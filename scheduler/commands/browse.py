"""``mono-quant batches``, ``mono-quant jobs`` and ``mono-quant jobs show J``: what ran.

Paged (``batches``: ``--limit``/``--page``; ``jobs``: keyset pages, ``--limit``/``--after``,
through :func:`mono_quant.catalog.job_list.list_jobs`), a table for people or ``--json`` for
scripts. An unknown batch or job exits 2; a valid query with no rows exits 0.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from mono_quant.scheduler.cliutil import HelpFormatter
from mono_quant.scheduler.commands.args import batch_ref

_STATES = ("pending", "queued", "running", "succeeded", "failed", "cancelled")

_JOBS_EPILOG = """examples:
  mono-quant jobs --batch nightly --state failed
  mono-quant jobs --state running --json
  mono-quant jobs show 17            # its attempts: start, end, duration, node, error
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batches", help="list batches with their job counts",
                       formatter_class=HelpFormatter,
                       epilog="examples:\n  mono-quant batches --limit 5\n")
    _paging(p)
    p.set_defaults(handler=run_batches)

    p = sub.add_parser("jobs", help="list jobs (filter by batch and state); `jobs show J`",
                       formatter_class=HelpFormatter, epilog=_JOBS_EPILOG)
    p.add_argument("--batch", type=batch_ref, metavar="BATCH",
                   help="batch id or name (the newest of that name); an unknown one exits 2")
    p.add_argument("--state", action="append", default=[], metavar="STATE",
                   help=f"job state(s), comma-separated or repeated: {', '.join(_STATES)}")
    p.add_argument("--limit", type=int, default=50, help="rows per page")
    p.add_argument("--after", type=int, default=None, metavar="JOB",
                   help="the page after this job id (the hint under a full page gives it)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(handler=run_jobs)
    verbs = p.add_subparsers(dest="jobs_command", metavar="ACTION")
    show = verbs.add_parser("show", help="one job with its attempts",
                            formatter_class=HelpFormatter)
    show.add_argument("job", metavar="JOB", help="job id")
    show.add_argument("--json", action="store_true", help="print it as JSON")
    show.set_defaults(handler=run_job_show)


def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=50, help="rows per page (0: all)")
    p.add_argument("--page", type=int, default=1, help="page number, from 1")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def _page(args: argparse.Namespace) -> tuple[int | None, int]:
    from mono_quant.errors import BadInputError

    if args.limit < 0 or args.page < 1:
        raise BadInputError(f"--limit {args.limit} --page {args.page}: expected --limit >= 0 "
                            "and --page >= 1")
    limit = args.limit or None
    return limit, 0 if limit is None else (args.page - 1) * limit


def _session():
    from mono_quant.scheduler.commands.jobs import _catalog

    return _catalog().begin()


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _when(value: str | None) -> str:
    return "-" if value is None else value[:19].replace("T", " ")


def run_batches(args: argparse.Namespace) -> int:
    from mono_quant.catalog.overview import list_batches

    limit, offset = _page(args)
    with _session() as session:
        rows = list_batches(session, limit=limit, offset=offset)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _table(["ID", "NAME", "SUBMITTED (UTC)", "JOBS", "STATES", "ARTIFACTS"], [
        [str(b["id"]), b["name"], _when(b["submitted_at"]), str(b["jobs"]),
         ", ".join(f"{k} {v}" for k, v in sorted(b["counts"].items())) or "-",
         str(b["artifacts"])] for b in rows])
    return 0


def run_jobs(args: argparse.Namespace) -> int:
    import sys

    from mono_quant.catalog.job_list import list_jobs
    from mono_quant.catalog.overview import job_row
    from mono_quant.scheduler.resolve import resolve_batch

    states = [s.strip() for item in args.state for s in item.split(",") if s.strip()]
    with _session() as session:
        batch_id = None if args.batch is None else resolve_batch(session, args.batch).id
        page = list_jobs(session, batch_id=batch_id, statuses=states, after_id=args.after,
                         limit=args.limit)
        rows = [job_row(j) for j in page.jobs]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _table(["ID", "BATCH", "NAME", "STATE", "ATTEMPTS", "WORKER", "DURATION", "ERROR"], [
            [str(j["id"]), str(j["batch_id"]), j["name"], j["state"],
             f"{j['attempts']}/{j['max_attempts']}", j["worker"] or "-",
             _secs(j["duration_s"]), _error(j)] for j in rows])
    if page.next_after is not None:
        print(f"(more: --after {page.next_after})", file=sys.stderr)
    return 0


def _error(row: dict[str, Any], width: int = 60) -> str:
    if not row["error"]:
        return "-"
    text = " ".join(str(row["error"]).split())
    text = f"[{row['error_kind']}] {text}" if row["error_kind"] else text
    return text if len(text) <= width else text[: width - 1] + "…"


def run_job_show(args: argparse.Namespace) -> int:
    from mono_quant.catalog.overview import job_detail
    from mono_quant.scheduler.resolve import resolve_job

    with _session() as session:
        detail = job_detail(session, resolve_job(session, args.job).id)
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    print(f"job {detail['id']} {detail['name']} (batch {detail['batch_id']} "
          f"{detail['batch_name']}): {detail['state']}")
    print(f"  model     {detail['model_source']}")
    print(f"  queue     {detail['queue']}; attempts {detail['attempts']}/"
          f"{detail['max_attempts']}")
    if detail["artifact_id"] is not None:
        print(f"  artifact  {detail['artifact_id']} (`mono-quant catalog show "
              f"{detail['artifact_id']}`)")
    if detail["error"]:
        print(f"  error     [{detail['error_kind']}] {detail['error']}")
    _table(["#", "STARTED (UTC)", "ENDED (UTC)", "DURATION", "NODE", "DEVICE", "OUTCOME",
            "ERROR"], [
        [str(a["number"]), _when(a["started_at"]), _when(a["finished_at"]),
         _secs(a["duration_s"]), a["worker"] or "-", a["device"] or "-",
         a["outcome"] or "running", _error(a)] for a in detail["attempt_rows"]])
    return 0
