"""Job commands: ``submit``, ``run``, ``status``, ``retry``, ``cancel``, ``reconcile``."""

from __future__ import annotations

import argparse
import json
import sys
import time

_STRICT = ("refuse the manifest when a compressed-tensors job's scheme is one vLLM's int8 "
           "kernels cannot serve (default: a warning)")


def _check_serveable(args) -> None:
    """Each job's scheme against vLLM's kernels: a warning, or BadConfigError with --strict."""
    from mono_quant.io.serveability import check_scheme
    from mono_quant.scheduler.commands.quantize import serveable
    from mono_quant.scheduler.manifest import load_manifest

    for job in load_manifest(args.manifest)[1]:
        serveable(check_scheme(job.spec.config, job.spec.format), job.spec.format, args.strict,
                  where=f"{args.manifest}: job {job.name}: ")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="validate a manifest, record its jobs, enqueue them")
    p.add_argument("manifest")
    p.add_argument("--wait", action="store_true", help="follow the batch until it finishes")
    p.add_argument("--force", action="store_true",
                   help="run jobs even when their artifact already exists")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting after N s")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--strict", action="store_true", help=_STRICT)
    p.set_defaults(handler=_submit)

    p = sub.add_parser("run", help="run a manifest here, without a broker (embedded default)")
    p.add_argument("manifest")
    p.add_argument("--workers", type=int, default=1, help="local processes (default 1)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--strict", action="store_true", help=_STRICT)
    p.set_defaults(handler=_run)

    p = sub.add_parser("status", help="job counts, failures and artifacts of a batch")
    p.add_argument("batch", nargs="?", type=int, help="batch id (default: the latest)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_status)

    p = sub.add_parser("retry", help="re-enqueue failed jobs")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--batch", type=int)
    group.add_argument("--job", type=int, action="append")
    group.add_argument("--all-failed", action="store_true")
    p.set_defaults(handler=_retry)

    p = sub.add_parser("cancel", help="cancel a batch (or --job J); running jobs are revoked")
    p.add_argument("batch", nargs="?", type=int)
    p.add_argument("--job", type=int, action="append")
    p.set_defaults(handler=_cancel)

    p = sub.add_parser("reconcile", help="re-enqueue jobs whose messages were lost")
    p.add_argument("--every", type=float, default=None,
                   help="keep running, reconciling every N seconds")
    p.set_defaults(handler=_reconcile)


def _catalog():
    from mono_quant.catalog import Catalog

    catalog = Catalog()
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
    print(f"batch {status.batch_id} ({status.name}): {status.total} job(s): {counts}; "
          f"{status.artifacts} artifact(s)")
    for r in status.running:
        stage = (r["progress"] or {}).get("stage", "starting")
        print(f"  running job {r['job']} {r['name']}: {stage} on {r['worker']} ({r['device']}), "
              f"attempt {r['attempt']}")
    for f in status.failures:
        print(f"  failed job {f['job']} {f['name']}: [{f['kind']}] {f['error']}")


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

    _check_serveable(args)
    catalog = _catalog()
    t0 = time.perf_counter()
    result = submit(args.manifest, catalog, app=_app(), force=args.force)
    print(f"batch {result.batch_id}: {len(result.job_ids)} job(s) enqueued in "
          f"{time.perf_counter() - t0:.2f} s", file=sys.stderr)
    for name, artifact in result.skipped:
        print(f"  skipped {name}: artifact {artifact} exists (use --force to redo)",
              file=sys.stderr)
    for name in result.duplicates:
        print(f"  skipped {name}: same model and config as another job of this manifest",
              file=sys.stderr)
    for name, job in result.in_flight:
        print(f"  skipped {name}: job {job} is already working on the same model and config",
              file=sys.stderr)
    if not args.wait:
        return 0
    status = _follow(catalog, result.batch_id, len(result.job_ids), args.quiet, args.timeout)
    _print_status(status if status.total else batch_status(catalog, result.batch_id), False)
    return _exit_code(status)


def _run(args) -> int:
    from mono_quant.scheduler.local import run_local

    _check_serveable(args)
    result, status = run_local(args.manifest, workers=args.workers, force=args.force,
                               progress=not args.quiet)
    for name, artifact in result.skipped:
        print(f"skipped {name}: artifact {artifact} exists (use --force to redo)")
    for name, job in result.in_flight:
        print(f"skipped {name}: job {job} is already working on the same model and config")
    _print_status(status, False)
    if status.artifacts:
        from mono_quant.catalog import ArtifactQuery, Catalog, artifact_record, list_artifacts
        from mono_quant.scheduler.commands.catalog import print_table

        with Catalog().begin() as session:
            query = ArtifactQuery(batches=(result.batch_id,), order_by="id", descending=False,
                                  limit=None)
            print_table([artifact_record(a) for a in list_artifacts(session, query)])
    return _exit_code(status)


def _status(args) -> int:
    from mono_quant.scheduler.service import batch_status

    _print_status(batch_status(_catalog(), args.batch), args.json)
    return 0


def _retry(args) -> int:
    from mono_quant.scheduler.service import retry

    ids = retry(_catalog(), _app(), batch_id=args.batch, job_ids=args.job,
                all_failed=args.all_failed)
    print(f"re-enqueued {len(ids)} job(s)" + (f": {', '.join(map(str, ids))}" if ids else ""))
    return 0


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
