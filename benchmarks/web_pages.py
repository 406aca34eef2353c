"""The web catalog at scale: every page (and its JSON twin) timed over HTTP, SQLite vs PostgreSQL.

For each backend a throwaway catalog is filled the way ``benchmarks/catalog_queries.py`` fills
it (its ``load``: ROWS jobs and ROWS artifacts in batches of 1000 jobs, shipped migration and
indexes, ANALYZE), plus one attempt per job (started, finished, outcome from the job status)
so batch pages have attempts and a timeline. Then ``mono-quant serve``'s app runs on a real
uvicorn server in a thread, opened read-only like ``serve`` opens it, and each page is fetched
with httpx REPEAT times with a different parameter each time (batch, artifact, model, filter
values), after warm-up calls; wall time (median, p95) and CPU time are reported. The
artifacts page is also sorted by each sortable field (both directions in turn) and, sorted
by a random field, under each kind of filter (:func:`sorted_pages`). The
target: every page under 100 ms (median and p95) at 100k artifacts. A page over it is
printed MISSED and the benchmark exits 1. The load average is printed at the start, per
backend and at the end, next to a floor measured in the same run (the smallest page: one
artifact row as JSON), so figures taken on a busy machine can be read against it.

Usage:
    python benchmarks/web_pages.py                  # 100,000 artifacts (a few minutes)
    python benchmarks/web_pages.py --rows 10000     # a quick check
    python benchmarks/web_pages.py --pages sorted --pages "by "   # only the sorted pages
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import random
import statistics
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import uvicorn
from sqlalchemy import select, text

sys.path.insert(0, str(Path(__file__).parent))
from catalog_queries import (  # the sibling benchmark's loader
    JOBS_PER_BATCH,
    load,
    model_name,
    scratch_catalog,
)

from mono_quant.catalog import Attempt, Catalog, Job, upgrade
from mono_quant.catalog.filters import ORDER_FIELDS
from mono_quant.scheduler.web import create_app

TARGET_MS = 100.0
#: Not a target: the smallest page, one artifact row as JSON (the HTTP, threadpool and
#: session round trip), the floor the other pages are read against.
FLOOR = "floor: one row (json) *"
NOT_TARGETS = (FLOOR,)
CHUNK = 10_000
#: The sort fields with a page of their own (``created_at`` is "newest 100"; ``id`` is the
#: primary key): each read through its ``(column, id)`` index (migration 0008).
SORTED = tuple(f for f in ORDER_FIELDS if f not in ("created_at", "id"))


def add_attempts(catalog: Catalog) -> None:
    """One finished attempt per job: a few seconds to minutes each, outcome from the status."""
    rng = random.Random(3)
    outcome = {"succeeded": "succeeded", "failed": "failed", "running": None}
    table = Attempt.__table__
    with catalog.engine.connect() as conn:
        jobs = conn.execute(select(Job.id, Job.created_at, Job.status)).all()
    for start in range(0, len(jobs), CHUNK):
        rows = []
        for job_id, created, status in jobs[start:start + CHUNK]:
            status = getattr(status, "value", status)
            if status not in outcome:  # queued, pending: not started
                continue
            began = created + timedelta(seconds=rng.uniform(0, 30))
            done = outcome[status]
            rows.append({"job_id": job_id, "number": 1, "worker": "gpu-node-1",
                         "device": "cuda:0", "started_at": began,
                         "finished_at": began + timedelta(seconds=rng.uniform(5, 300))
                         if done else None, "outcome": done,
                         "error_kind": "transient" if done == "failed" else None,
                         "error": "CUDA out of memory" if done == "failed" else None})
        with catalog.engine.begin() as conn:
            conn.execute(table.insert(), rows)


def pages(rows: int, models: int, rng: random.Random) -> dict:
    batches = (rows + JOBS_PER_BATCH - 1) // JOBS_PER_BATCH

    def filtered() -> str:
        scheme = rng.choice(("symmetric", "asymmetric"))
        return f"/artifacts?scheme={scheme}&min_sqnr={rng.uniform(40, 55):.1f}"

    return {
        FLOOR: lambda: "/api/artifacts?limit=1",
        "batches": lambda: "/",
        "batch (100 of 1000 jobs)": lambda: f"/batches/{rng.randrange(1, batches + 1)}",
        "artifacts, newest 100": lambda: "/artifacts",
        "artifacts, filtered": filtered,
        "artifacts of a batch": lambda: f"/artifacts?batch={rng.randrange(1, batches + 1)}",
        "by size, static (half)": lambda: "/artifacts?order_by=size_bytes:asc&mode=static",
        **sorted_pages(rows, models, rng),
        "artifact": lambda: f"/artifacts/{rng.randrange(1, rows + 1)}",
        "compare a model": lambda: "/compare?model=" + quote(
            model_name(rng.randrange(models)), safe=""),
    }


def sorted_pages(rows: int, models: int, rng: random.Random) -> dict:
    """The artifacts page sorted by each field (directions alternating, NULLs last), then
    sorted by a random field (and direction) under each kind of filter: a selective one read
    first (a model, a batch), a status, a date (anywhere from all to none of the year), a
    range on another metric (a few to most rows)."""
    batches = (rows + JOBS_PER_BATCH - 1) // JOBS_PER_BATCH
    turns = itertools.count()

    def by(field: str):
        return lambda: f"/artifacts?order_by={field}:{('asc', 'desc')[next(turns) % 2]}"

    def order() -> str:
        return f"order_by={rng.choice(SORTED)}:{rng.choice(('asc', 'desc'))}"

    def ranged() -> str:
        return rng.choice((f"min_sqnr={rng.uniform(40, 59.8):.1f}",
                           f"max_size={rng.randrange(20, 1000)}MB",
                           f"min_cosine={rng.uniform(0.95, 0.999):.3f}"))

    return {
        **{f"by {field}": by(field) for field in SORTED},
        "sorted, one model": lambda: "/artifacts?model=" + quote(
            model_name(rng.randrange(models)), safe="") + "&" + order(),
        "sorted, a batch": lambda: f"/artifacts?batch={rng.randrange(1, batches + 1)}&"
                                   + order(),
        "sorted, failed": lambda: "/artifacts?status=failed&" + order(),
        "sorted, since a date": lambda: "/artifacts?since=2024-"
            f"{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}&" + order(),
        "sorted, a metric range": lambda: f"/artifacts?{ranged()}&{order()}",
    }


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # running in a thread
        pass


def time_pages(app, rows: int, models: int, repeat: int, only: tuple = ()) -> dict:
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    results = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for name, make in pages(rows, models, random.Random(7)).items():
                if only and name != FLOOR and not any(word in name for word in only):
                    continue
                for api in (False, True) if name != FLOOR else (False,):
                    times, cpu = [], []
                    for i in range(repeat + 3):  # 3 warm-up calls
                        path = make()
                        path = "/api/batches" if api and path == "/" else (
                            "/api" + path if api else path)
                        t, c = time.perf_counter(), time.process_time()
                        r = client.get(path)
                        ms = (time.perf_counter() - t) * 1000
                        cpu_ms = (time.process_time() - c) * 1000
                        if r.status_code != 200:
                            raise SystemExit(f"{path}: HTTP {r.status_code}: {r.text[:200]}")
                        if i >= 3:
                            times.append(ms)
                            cpu.append(cpu_ms)
                    times.sort()
                    results[(name, "json" if api or name == FLOOR else "html")] = (
                        statistics.median(times), times[int(0.95 * (len(times) - 1))],
                        statistics.median(cpu))
    finally:
        server.should_exit = True
        thread.join(10)
    return results


def _load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def _run_backend(backend: str, args: argparse.Namespace, models: int) -> dict:
    """Fill a throwaway catalog on ``backend``, time every page over it, drop it."""
    url, drop = scratch_catalog(backend, args.pg_admin_url)
    try:
        upgrade(url)
        catalog = Catalog(url)
        t = time.perf_counter()
        load(catalog, args.rows, models)
        add_attempts(catalog)
        with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))  # the attempts came after load()'s ANALYZE
        catalog.dispose()
        print(f"{backend:10}  loaded in {time.perf_counter() - t:.0f} s; {_load_average()}",
              flush=True)
        app = create_app(url, storage_root="/srv/artifacts")
        results = time_pages(app, args.rows, models, args.repeat, tuple(args.pages or ()))
        app.state.engine.dispose()
        print(f"{backend:10}  timed; {_load_average()}", flush=True)
        return results
    finally:
        drop()


def _report(summary: dict) -> list[str]:
    """Print the table; return the target pages that missed (median or p95 >= target)."""
    backends = list(summary)
    header = f"{'page':30} {'as':5}" + "".join(
        f" {b + ' med ms':>17} {'p95':>7} {'cpu':>6}" for b in backends)
    print(f"\n{header}   target {TARGET_MS:.0f} ms (median and p95)")
    print("-" * (len(header) + 32))
    missed = []
    for key in summary[backends[0]]:
        line = f"{key[0]:30} {key[1]:5}"
        for b in backends:
            med, p95, cpu = summary[b][key]
            line += f" {med:17.1f} {p95:7.1f} {cpu:6.1f}"
        late = [b for b in backends if max(summary[b][key][:2]) >= TARGET_MS]
        if key[0] in NOT_TARGETS:
            verdict = "(not a target)"
        elif late:
            verdict = f"MISSED on {', '.join(late)}"
            missed.append(f"{key[0]} ({key[1]}) on {', '.join(late)}")
        else:
            verdict = "met"
        print(f"{line}   {verdict}")
    print("by size, static (half): ORDER BY size_bytes over the ~50% of artifacts that are "
          "static (before migration 0008 the database sorted them all); by <field>: asc and "
          "desc in turn; sorted, <filter>: a random field and direction under the filter.")
    print(f"* {FLOOR}: /api/artifacts?limit=1, the round trip every page pays.")
    print("cpu: median CPU time of this process per request (server and client), which the "
          f"load of other processes on the machine does not inflate; {_load_average()}")
    return missed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--models", type=int, help="distinct models (default rows / 50)")
    p.add_argument("--repeat", type=int, default=30, help="timed requests per page")
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--pages", action="append",
                   help="time only the pages whose name contains this (repeatable; the floor "
                        "is always timed), e.g. --pages sorted --pages 'by '")
    p.add_argument("--pg-admin-url",
                   default=os.environ.get("MONO_QUANT_TEST_PG_URL",
                                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = p.parse_args()
    models = args.models or max(100, args.rows // 50)
    print(f"web_pages: {args.rows:,} artifacts, {args.rows:,} jobs and attempts, {models:,} "
          f"models, {args.repeat} timed requests per page; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; {_load_average()}",
          flush=True)
    summary = {b: _run_backend(b, args, models) for b in args.backends.split(",")}
    missed = _report(summary)
    if missed:
        print(f"\nMISSED the {TARGET_MS:.0f} ms target: {'; '.join(missed)}", file=sys.stderr)
        raise SystemExit(1)
    print(f"\nevery target page under {TARGET_MS:.0f} ms (median and p95) on "
          f"{', '.join(summary)}")


if __name__ == "__main__":
    main()
