"""Job commands: ``submit``, ``run``, ``status``, ``retry``, ``cancel``, ``reconcile``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from mono_quant.scheduler.cliutil import HelpFormatter, progress_bar
from mono_quant.scheduler.commands.args import batch_ref, catalog_id, printable

_SUBMIT_EPILOG = """examples:
  mono-quant submit jobs.yaml --wait                 # enqueue, follow, print the artifacts
  mono-quant submit jobs.yaml --job llama-w8 --force # redo one job of the manifest
"""
_RUN_EPILOG = """examples:
  mono-quant run examples/demo.yaml                  # no broker, no server: local processes
  mono-quant run jobs.yaml --workers 2 --quiet
  mono-quant run jobs.yaml --job mlp-asym --force    # redo just that job
"""
_STATUS_EPILOG = """examples:
  mono-quant status                  # the newest batch with jobs
  mono-quant status nightly --watch  # by name, refreshed until every job is final
"""
_RETRY_EPILOG = """examples:
  mono-quant retry --batch nightly --wait
  mono-quant retry --job 17 --include-bad-input
"""


_STRICT = ("refuse the manifest when a compressed-tensors job's scheme is one vLLM's int8 "
           "kernels cannot serve (default: a warning)")


def _serveability_check(args):
    """A check of each job's scheme against vLLM's kernels, for ``submit`` to call as the
    manifest's jobs stream by (the manifest is read once): a warning, or BadConfigError with
    --strict (the batch is rolled back)."""
    from mono_quant.io.serveability import check_scheme
    from mono_quant.scheduler.commands.quantize import serveable

    def check(job) -> None:
        serveable(check_scheme(job.spec.config, job.spec.format), job.spec.format, args.strict,
                  where=f"{args.manifest}: job {job.name}: ")

    return check


def _job_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="the manifest (YAML or JSON) to run")
    p.add_argument("--force", action="store_true",
                   help="redo jobs even when their artifact already exists")
    p.add_argument("--job", action="append", default=[], metavar="NAME",
                   help="only the manifest's job with this name (repeatable); with --force "
                        "redoes just that job")
    p.add_argument("--quiet", action="store_true",
                   help="no progress output, no third-party bars or warnings")
    p.add_argument("--strict", action="store_true", help=_STRICT)


def register(sub: argparse._SubParsersAction) -> None:
    _register_batch_commands(sub)
    _register_repair_commands(sub)


def _register_batch_commands(sub: argparse._SubParsersAction) -> None:
    """submit, run and status."""
    fmt = HelpFormatter
    p = sub.add_parser("submit", help="validate a manifest, record its jobs, enqueue them",
                       epilog=_SUBMIT_EPILOG, formatter_class=fmt)
    _job_selection(p)
    p.add_argument("--wait", action="store_true",
                   help="follow the batch until it finishes, then print its artifacts")
    p.add_argument("--timeout", type=float, default=None,
                   help="with --wait: give up waiting after N seconds (default: no limit)")
    p.set_defaults(handler=_submit)

    p = sub.add_parser("run", help="run a manifest here, without a broker (embedded default)",
                       epilog=_RUN_EPILOG, formatter_class=fmt)
    _job_selection(p)
    p.add_argument("--workers", type=int, default=1, help="local job processes")
    p.add_argument("--events", metavar="FILE",
                   help="append the jobs' JSON event lines to FILE (default: not shown)")
    p.set_defaults(handler=_run)

    p = sub.add_parser("status", help="job counts, failures and artifacts of a batch",
                       epilog=_STATUS_EPILOG, formatter_class=fmt)
    p.add_argument("batch", nargs="?", type=batch_ref, metavar="BATCH",
                   help="batch id or name (default: the newest batch with jobs)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--watch", action="store_true",
                   help="print the status again every --interval seconds until it is final")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between --watch updates")
    p.set_defaults(handler=_status)


def _register_repair_commands(sub: argparse._SubParsersAction) -> None:
    """retry, cancel and reconcile."""
    fmt = HelpFormatter
    p = sub.add_parser("retry", help="re-enqueue failed jobs, saying which were skipped and why",
                       epilog=_RETRY_EPILOG, formatter_class=fmt)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--batch", type=batch_ref, metavar="BATCH",
                       help="the failed jobs of this batch (id/name)")
    group.add_argument("--job", type=catalog_id, action="append", metavar="JOB",
                       help="this job id (repeatable)")
    group.add_argument("--all-failed", action="store_true", help="every failed job")
    p.add_argument("--include-bad-input", action="store_true",
                   help="also retry jobs that failed with bad_input or bad_config")
    p.add_argument("--wait", action="store_true",
                   help="follow the retried jobs until they finish")
    p.add_argument("--timeout", type=float, default=None,
                   help="with --wait: give up after N seconds (default: no limit)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--run", action="store_true",
                   help="run the jobs here, as `mono-quant run` does (no broker needed)")
    p.add_argument("--workers", type=int, default=1, help="local processes for --run")
    p.set_defaults(handler=_retry)

    p = sub.add_parser("cancel", help="cancel a batch (or --job J); running jobs are revoked",
                       epilog="examples:\n  mono-quant cancel nightly\n  mono-quant cancel "
                              "--job 12 --job 13\n", formatter_class=fmt)
    p.add_argument("batch", nargs="?", type=batch_ref, metavar="BATCH",
                   help="batch id or name")
    p.add_argument("--job", type=catalog_id, action="append", metavar="JOB",
                   help="job id (repeatable)")
    p.set_defaults(handler=_cancel)

    p = sub.add_parser("reconcile", help="re-enqueue jobs whose messages were lost",
                       formatter_class=fmt,
                       epilog="examples:\n  mono-quant reconcile\n  mono-quant reconcile "
                              "--every 60   # a sidecar that keeps repairing\n")
    p.add_argument("--every", type=float, default=None,
                   help="keep running, reconciling every N seconds (default: once)")
    p.set_defaults(handler=_reconcile)


def _catalog(create: bool = True):
    from mono_quant.catalog import Catalog

    catalog = Catalog(create=create)
    catalog.require_schema()
    return catalog


def _app():
    from mono_quant.worker.app import app

    return app


def _print_status(status, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status.to_dict(), indent=2))
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(status.counts.items())) or "no jobs"
    p = printable  # names, errors and workers come from manifests and the catalog
    print(f"batch {status.batch_id} ({p(status.name)}): {status.total} job(s): {counts}; "
          f"{status.artifacts} artifact(s)")
    for r in status.running:
        stage = (r["progress"] or {}).get("stage", "starting")
        age = r["heartbeat_age_s"]
        beat = "no heartbeat" if age is None else f"heartbeat {age:.1f} s ago"
        print(f"  running job {r['job']} {p(r['name'])}: {p(stage)} on {p(r['worker'])} "
              f"({p(r['device'])}), attempt {r['attempt']}, {beat}"
              + (" - STALE: its worker is presumed dead; a live worker's sweep (or "
                 "`mono-quant reconcile`) re-runs it" if r["stale"] else ""))
    for f in status.failures:
        print(f"  failed job {f['job']} {p(f['name'])}: [{f['kind']}] {p(f['error'])}")


def _follow(catalog, batch_id: int, total: int, quiet: bool, timeout: float | None):
    from mono_quant.scheduler.service import wait_for_batch

    bar = progress_bar(total, f"batch {batch_id}", quiet=quiet)

    def update(status) -> None:
        done = sum(status.counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
        bar.update(done - bar.n)

    status = wait_for_batch(catalog, batch_id, timeout=timeout, on_update=update)
    bar.close()
    return status


def _exit_code(status) -> int:
    if not status.done:
        return 1
    return 1 if status.failed else 0


def _print_skipped(result, out) -> None:
    for name, artifact in result.skipped:
        print(f"skipped {printable(name)}: artifact {artifact} exists (use --force to redo)",
              file=out)
    for name in result.duplicates:
        print(f"skipped {printable(name)}: same model and config as another job of this "
              "manifest", file=out)
    for name, job in result.in_flight:
        print(f"skipped {printable(name)}: job {job} is already working on the same model and "
              "config", file=out)


def print_batch_artifacts(batch_id: int) -> None:
    """The artifact table of a batch: what ``run`` and ``submit --wait`` end with."""
    from mono_quant.catalog import ArtifactQuery, Catalog, artifact_records
    from mono_quant.config import get_settings
    from mono_quant.scheduler.commands.catalog import print_table

    catalog = Catalog()
    with catalog.begin() as session:
        query = ArtifactQuery(batches=(batch_id,), order_by="id", descending=False, limit=None)
        root = get_settings().storage_root
        records = artifact_records(session, query, storage_root=root)
    catalog.dispose()
    if records:
        print_table(records)


def _submit(args) -> int:
    from mono_quant.scheduler.cliutil import quiet_third_party
    from mono_quant.scheduler.service import batch_status, submit

    quiet_third_party(quiet=args.quiet)
    catalog = _catalog()
    t0 = time.perf_counter()
    result = submit(args.manifest, catalog, app=_app(), force=args.force, only=args.job,
                    check=_serveability_check(args))
    print(f"batch {result.batch_id}: {len(result.job_ids)} job(s) enqueued in "
          f"{time.perf_counter() - t0:.2f} s", file=sys.stderr)
    _print_skipped(result, sys.stderr)
    if not args.wait:
        return 0
    status = _follow(catalog, result.batch_id, len(result.job_ids), args.quiet, args.timeout)
    _print_status(status if status.total else batch_status(catalog, result.batch_id), False)
    print_batch_artifacts(result.batch_id)
    return _exit_code(status)


def _run(args) -> int:
    from mono_quant.scheduler.cliutil import quiet_third_party
    from mono_quant.scheduler.local import run_local

    quiet_third_party(quiet=args.quiet)
    run = run_local(args.manifest, workers=args.workers, force=args.force,
                    progress=not args.quiet, only=args.job or None, events=args.events,
                    check=_serveability_check(args))
    result, status = run.submitted, run.status
    for name, artifact in result.skipped:
        print(f"skipped {printable(name)}: artifact {artifact} exists (use --force to redo)")
    for name, job in result.in_flight:
        if job not in run.resumed:
            print(f"skipped {printable(name)}: job {job} is already working on the same model "
                  "and config")
    _print_status(status, False)
    failed_earlier = _print_resumed(run.resumed)
    if run.interrupted is not None:
        _print_interrupted(run.interrupted, args.manifest)
        return 130
    print_batch_artifacts(result.batch_id)
    return max(_exit_code(status), 1 if failed_earlier else 0)


def _print_resumed(job_ids) -> bool:
    """One line per job of an earlier run that this run picked up; True if any failed."""
    if not job_ids:
        return False
    from sqlalchemy import select

    from mono_quant.catalog import Catalog, Job, JobStatus

    with Catalog().begin() as session:
        jobs = list(session.scalars(select(Job).where(Job.id.in_(job_ids)).order_by(Job.id)))
        for j in jobs:
            print(f"resumed job {j.id} {j.name} (batch {j.batch_id}): {j.status.value}"
                  + (f": [{j.error_kind.value}] {j.last_error}"
                     if j.status is JobStatus.FAILED and j.error_kind else ""))
        return any(j.status is JobStatus.FAILED for j in jobs)


def _print_interrupted(interrupted, manifest: str) -> None:
    stopped, waiting = interrupted.stopped, interrupted.not_started
    print(f"interrupted: Ctrl-C stopped the run; no new job started; "
          f"{len(stopped)} running job(s) stopped and returned to the queue"
          + (f" ({', '.join(map(str, stopped))})" if stopped else "")
          + f", {len(waiting)} job(s) not started"
          + (f" ({', '.join(map(str, waiting))})" if waiting else "")
          + f"; `mono-quant run {manifest}` picks them up again")


def _status(args) -> int:
    from mono_quant.scheduler.service import batch_status

    catalog = _catalog(create=False)
    status = batch_status(catalog, args.batch)
    while args.watch and not status.done:
        _print_status(status, args.json)
        sys.stdout.flush()
        time.sleep(max(args.interval, 0.1))
        status = batch_status(catalog, status.batch_id)
    _print_status(status, args.json)
    return 0


def _retry(args) -> int:
    """With a broker: re-enqueue. Without one (the embedded mode) or with ``--run``: mark the
    jobs for re-run, and run them here with ``--run``; never publish to a broker nobody
    configured (its jobs would look busy to every later ``run``). Either way, the jobs left
    alone are listed with the reason."""
    from mono_quant.config import get_settings
    from mono_quant.scheduler.resolve import resolve_batch, resolve_job_ids
    from mono_quant.scheduler.service import retry

    publish = get_settings().broker_configured and not args.run
    catalog = _catalog()
    with catalog.begin() as session:
        batch_id = None if args.batch is None else resolve_batch(session, args.batch).id
        job_ids = None if args.job is None else resolve_job_ids(session, args.job)
    ids = retry(catalog, _app() if publish else None, batch_id=batch_id, job_ids=job_ids,
                all_failed=args.all_failed, include_bad_input=args.include_bad_input)
    listed = f": {', '.join(map(str, ids))}" if ids else ""
    print(f"re-enqueued {len(ids)} job(s){listed}" if publish
          else f"marked {len(ids)} job(s) for re-run{listed}")
    _print_left_alone(catalog, batch_id, job_ids, args.all_failed, ids)
    if publish:
        return _wait_retried(catalog, ids, args) if args.wait else 0
    if not args.run:
        print("no broker is configured (MONO_QUANT_BROKER_URL / MONO_QUANT_REDIS_HOST), so "
              "nothing was enqueued: run them with `mono-quant run MANIFEST` or "
              "`mono-quant retry --run ...`")
        return 0
    return _run_retried(catalog, ids, args)


def _print_left_alone(catalog, batch_id, job_ids, all_failed: bool, done: list[int]) -> None:
    from mono_quant.catalog import JobStatus
    from mono_quant.scheduler.explain import skipped_jobs

    # jobs named with --job are always explained; of a batch, only those retry could take
    unnamed = () if job_ids else (JobStatus.SUCCEEDED, JobStatus.PENDING, JobStatus.QUEUED,
                                  JobStatus.RUNNING)
    with catalog.begin() as session:
        for group in skipped_jobs(session, batch_id=batch_id, job_ids=job_ids,
                                  failed_only=all_failed, done=done, ignore=unnamed):
            print(group.line("retried"))


def _wait_retried(catalog, ids: list[int], args) -> int:
    """``retry --wait``: follow each batch of the retried jobs until it is final."""
    from sqlalchemy import select

    from mono_quant.catalog import Job
    from mono_quant.scheduler.service import batch_status

    if not ids:
        return 0
    with catalog.begin() as session:
        batches = sorted(set(session.scalars(
            select(Job.batch_id).where(Job.id.in_(ids)).distinct())))
    code = 0
    for b in batches:
        status = _follow(catalog, b, batch_status(catalog, b).total, args.quiet, args.timeout)
        _print_status(status, False)
        code = max(code, _exit_code(status))
    return code


def _run_retried(catalog, ids: list[int], args) -> int:
    from sqlalchemy import select

    from mono_quant.catalog import Job, JobStatus
    from mono_quant.scheduler.local import run_jobs

    interrupted = run_jobs(catalog, ids, workers=args.workers, progress=False,
                           desc="retry") if ids else None
    if interrupted is not None:
        print(f"interrupted: {len(interrupted.stopped) + len(interrupted.not_started)} job(s) "
              "returned to the queue; `mono-quant run MANIFEST` picks them up again")
        return 130
    with catalog.begin() as session:
        jobs = list(session.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.id)))
        for j in jobs:
            print(f"job {j.id} {j.name}: {j.status.value}"
                  + (f": [{j.error_kind.value}] {j.last_error}"
                     if j.status is JobStatus.FAILED and j.error_kind else ""))
        return 1 if any(j.status is not JobStatus.SUCCEEDED for j in jobs) else 0


def _cancel(args) -> int:
    from mono_quant.errors import BadInputError
    from mono_quant.scheduler.explain import cancel_reason, skipped_jobs
    from mono_quant.scheduler.resolve import resolve_batch, resolve_job_ids
    from mono_quant.scheduler.service import cancel

    if (args.batch is None) == (args.job is None):
        raise BadInputError("cancel: give a batch (id or name) or --job J (not both)")
    catalog = _catalog()
    with catalog.begin() as session:
        batch_id = None if args.batch is None else resolve_batch(session, args.batch).id
        job_ids = None if args.job is None else resolve_job_ids(session, args.job)
    ids = cancel(catalog, _app(), batch_id=batch_id, job_ids=job_ids)
    print(f"cancelled {len(ids)} job(s)" + (f": {', '.join(map(str, ids))}" if ids else ""))
    with catalog.begin() as session:
        for group in skipped_jobs(session, batch_id=batch_id, job_ids=job_ids, done=ids,
                                  reason=cancel_reason):
            print(group.line("cancelled"))
    return 0


def _reconcile(args) -> int:
    from mono_quant.errors import MonoQuantError
    from mono_quant.scheduler.service import reconcile

    catalog, app = _catalog(), _app()
    while True:
        try:
            ids = reconcile(catalog, app)
        except MonoQuantError as e:  # broker or catalog away: a loop keeps going
            if args.every is None:
                raise
            print(f"reconcile: failed this round, trying again in {args.every} s: {e}",
                  file=sys.stderr, flush=True)
        else:
            print(f"reconcile: re-enqueued {len(ids)} job(s)" +
                  (f": {', '.join(map(str, ids))}" if ids else ""), flush=True)
        if args.every is None:
            return 0
        time.sleep(args.every)
