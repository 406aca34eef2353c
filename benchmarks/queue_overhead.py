"""Queue overhead: the same job function through Redis + Celery workers vs. a plain loop.

Prints jobs/s for:

* ``loop``      — ``run_job(job_id)`` called in a loop in this process (the floor);
* ``1 worker``  — the same jobs through Redis and one ``mono-quant worker``;
* ``2 workers`` — through two workers (the machine has 2 cores);

the per-job overhead of the queue, ``(t_1worker - t_loop) / N`` in ms, and the time to
``submit`` a 10,000-job manifest (validate, write the batch, publish) — targets: overhead
< 50 ms per job, 10,000 jobs submitted in < 5 s.

Runs against the PostgreSQL and Redis on this machine: a throwaway database and Redis
database 8 (flushed before and after). Usage: ``python benchmarks/queue_overhead.py [--jobs 500]``
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import redis

REPO = Path(__file__).resolve().parents[1]
BROKER = "redis://127.0.0.1:6379/8"
MODEL = "mono_quant.demo_models:mlp"
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


_SEEDS = iter(range(10**9))  # every job of the run is a distinct model (no idempotent skips)


def manifest(path: Path, n: int, tag: str) -> Path:
    jobs = [{"name": f"{tag}{i}", "model": {"factory": MODEL, "kwargs": {
        "in_features": 64, "hidden": 64, "out_features": 16, "seed": next(_SEEDS)}}}
        for i in range(n)]
    path.write_text(json.dumps({"name": tag, "jobs": jobs}))
    return path


def wait_done(catalog, batch_id: int, n: int) -> None:
    from mono_quant.scheduler.service import batch_status

    while True:
        status = batch_status(catalog, batch_id)
        if status.done and status.total == n:
            if status.counts.get("succeeded") != n:
                raise RuntimeError(f"not all jobs succeeded: {status.counts}")
            return
        time.sleep(0.05)


def start_workers(k: int, env: dict[str, str], tag: str) -> list[subprocess.Popen]:
    procs = [subprocess.Popen(
        [sys.executable, "-m", "mono_quant.scheduler.cli", "worker", "--name", f"{tag}{i}@bench",
         "--loglevel", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True) for i in range(k)]
    from mono_quant.worker.app import app

    deadline = time.monotonic() + 60
    while len(app.control.ping(timeout=0.5)) < k:
        if time.monotonic() > deadline:
            raise TimeoutError("workers did not start")
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        os.killpg(p.pid, 15)
    for p in procs:
        p.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--submit-jobs", type=int, default=10_000)
    args = parser.parse_args()
    n = args.jobs
    db = f"mq_bench_{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix="mq-bench-"))
    env = dict(os.environ, MONO_QUANT_BROKER_URL=BROKER, MONO_QUANT_COMPILE="never",
               MONO_QUANT_CATALOG_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
               MONO_QUANT_STORAGE_ROOT=str(tmp / "store"), PYTHONPATH=str(REPO))
    os.environ.update(env)
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    r = redis.Redis.from_url(BROKER)
    r.flushdb()
    try:
        from mono_quant.catalog import Catalog
        from mono_quant.scheduler.service import submit
        from mono_quant.worker.app import app
        from mono_quant.worker.job import run_job

        catalog = Catalog()
        catalog.upgrade()
        # warm-up: imports, first quantization
        warm = submit(manifest(tmp / "w.json", 3, "warm"), catalog, app=None)
        for job_id in warm.job_ids:
            run_job(job_id, "loop@bench")

        loop = submit(manifest(tmp / "a.json", n, "loop"), catalog, app=None)
        t0 = time.perf_counter()
        for job_id in loop.job_ids:
            run_job(job_id, "loop@bench")
        t_loop = time.perf_counter() - t0

        rows = [("loop (run_job in one process)", t_loop)]
        for k in (1, 2):
            procs = start_workers(k, env, f"w{k}-")
            try:
                w = submit(manifest(tmp / f"warm{k}.json", 2 * k, f"warm{k}-"), catalog, app=app)
                wait_done(catalog, w.batch_id, len(w.job_ids))
                t0 = time.perf_counter()
                res = submit(manifest(tmp / f"q{k}.json", n, f"q{k}-"), catalog, app=app)
                wait_done(catalog, res.batch_id, len(res.job_ids))
                rows.append((f"{k} worker{'s' if k > 1 else ''} (Redis + Celery)",
                             time.perf_counter() - t0))
            finally:
                stop(procs)

        big = manifest(tmp / "big.json", args.submit_jobs, "big")
        r.flushdb()
        t0 = time.perf_counter()
        res = submit(big, catalog, app=app)
        t_submit = time.perf_counter() - t0
        assert r.llen("cpu") == args.submit_jobs == len(res.job_ids)

        print(f"{n} jobs (tiny MLP, weight-only int8, safetensors), catalog on PostgreSQL")
        print(f"{'path':34} {'seconds':>8} {'jobs/s':>8}")
        for name, t in rows:
            print(f"{name:34} {t:8.2f} {n / t:8.1f}")
        overhead = (rows[1][1] - rows[0][1]) / n * 1e3
        print(f"queue overhead per job (1 worker vs loop): {overhead:.1f} ms (target < 50 ms)")
        print(f"submit {args.submit_jobs} jobs (validate, write, publish): {t_submit:.2f} s "
              f"(target < 5 s)")
    finally:
        r.flushdb()
        with psycopg.connect(ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
