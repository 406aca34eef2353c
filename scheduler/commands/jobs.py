"""Job commands: ``submit``, ``run``, ``status``, ``retry``, ``cancel``, ``reconcile``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from mono_quant.scheduler.commands.args import catalog_id, printable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="validate a manifest, record its jobs, enqueue them")
    p.add_argument("manifest")
    p.add_argument("--wait", action="store_true", help="follow the batch until it finishes")
    p.add_argument("--force", action="store_true",
                   help="run jobs even when their artifact already exists")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting after N s")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_submit)

    p = sub.add_parser("run", help="run a manifest here, without a broker (embedded default)")
    p.add_argument("manifest")
    p.add_argument("--workers", type=int, default=1, help="local processes (default 1)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run)

    p = sub.add_parser("status", help="job counts, failures and artifacts of a batch")
    p.add_argument("batch", nargs="?", type=catalog_id, help="batch id (default: the latest)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_status)

    p = sub.add_parser("retry", help="re-enqueue failed jobs")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--batch", type=catalog_id)
    group.add_argument("--job", type=catalog_id, action="append")
    group.add_argument("--all-failed", action="store_true")
    p.add_argument("--run", action="store_true",
                   help="run the jobs here, as `mono-quant run` does (no broker needed)")
    p.add_argument("--workers", type=int, default=1, help="local processes for --run")
    p.set_defaults(handler=_retry)

    p = sub.add_parser("cancel", help="cancel a batch (or --job J); running jobs are revoked")
    p.add_argument("batch", nargs="?", type=catalog_id)
    p.add_argument("--job", type=catalog_id, action="append")
    p.set_defaults(handler=_cancel)

    p = sub.add_parser("reconcile", help="re-enqueue jobs whose messages were lost")
    p.add_argument("--every", type=float, default=None,
                   help="keep running, reconciling every N seconds")
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
    from tqdm.auto import tqdm

    from mono_quant.scheduler.service import wait_for_batch

    bar = tqdm(total=total, desc=f"batch {batch_id}", unit="job", disable=quiet)

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


def _submit(args) -> int:
    from mono_quant.scheduler.service import batch_status, submit

    catalog = _catalog()
    t0 = time.perf_counter()
    result = submit(args.manifest, catalog, app=_app(), force=args.force)
    print(f"batch {result.batch_id}: {len(result.job_ids)} job(s) enqueued in "
          f"{time.perf_counter() - t0:.2f} s", file=sys.stderr)
    for name, artifact in result.skipped:
        print(f"  skipped {printable(name)}: artifact {artifact} exists (use --force to redo)",
              file=sys.stderr)
    for name in result.duplicates:
        print(f"  skipped {printable(name)}: same model and config as another job of this manifest",
              file=sys.stderr)
    for name, job in result.in_flight:
        print(f"  skipped {printable(name)}: job {job} is already working on the same model "
              "and config",
              file=sys.stderr)
    if not args.wait:
        return 0
    status = _follow(catalog, result.batch_id, len(result.job_ids), args.quiet, args.timeout)
    _print_status(status if status.total else batch_status(catalog, result.batch_id), False)
    return _exit_code(status)


def _run(args) -> int:
    from mono_quant.scheduler.local import run_local

    run = run_local(args.manifest, workers=args.workers, force=args.force,
                    progress=not args.quiet)
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
    if status.artifacts:
        from mono_quant.catalog import ArtifactQuery, Catalog, artifact_record, list_artifacts
        from mono_quant.scheduler.commands.catalog import print_table

        with Catalog().begin() as session:
            query = ArtifactQuery(batches=(result.batch_id,), order_by="id", descending=False,
                                  limit=None)
            print_table([artifact_record(a) for a in list_artifacts(session, query)])
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

    _print_status(batch_status(_catalog(create=False), args.batch), args.json)
    return 0


def _retry(args) -> int:
    """With a broker: re-enqueue. Without one (the embedded mode) or with ``--run``: mark the
    jobs for re-run, and run them here with ``--run``; never publish to a broker nobody
    configured (its jobs would look busy to every later ``run``)."""
    from mono_quant.config import get_settings
    from mono_quant.scheduler.service import retry

    publish = get_settings().broker_configured and not args.run
    catalog = _catalog()
    ids = retry(catalog, _app() if publish else None, batch_id=args.batch, job_ids=args.job,
                all_failed=args.all_failed)
    listed = f": {', '.join(map(str, ids))}" if ids else ""
    if publish:
        print(f"re-enqueued {len(ids)} job(s){listed}")
        return 0
    print(f"marked {len(ids)} job(s) for re-run{listed}")
    if not args.run:
        print("no broker is configured (MONO_QUANT_BROKER_URL / MONO_QUANT_REDIS_HOST), so "
              "nothing was enqueued: run them with `mono-quant run MANIFEST` or "
              "`mono-quant retry --run ...`")
        return 0
    return _run_retried(catalog, ids, args)


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
    from mono_quant.scheduler.service import cancel

    if (args.batch is None) == (args.job is None):
        raise BadInputError("cancel: give a batch id or --job J (not both)")
    ids = cancel(_catalog(), _app(), batch_id=args.batch, job_ids=args.job)
    print(f"cancelled {len(ids)} job(s)" + (f": {', '.join(map(str, ids))}" if ids else ""))
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
