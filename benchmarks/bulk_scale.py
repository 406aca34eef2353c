"""Bulk at scale: submit, status and reconcile of 10k / 100k-job batches, --latest at 1M,
each with its floor from the same run. Used by ``queue_overhead.py``; runnable alone:

    python benchmarks/bulk_scale.py submit URL N BROKER   # one submit, in this process
    python benchmarks/bulk_scale.py latest URL ROWS       # --latest at ROWS artifacts

``submit`` writes a manifest of N jobs (N/4 models × a 2 × 2 scheme × format matrix), then
measures in one fresh process (so ``ru_maxrss`` is the submit's peak):

* ``submit``: ``service.submit`` — parse, validate, expand, check keys, write, publish;
* the floor: a bare Redis ``LPUSH`` of N small payloads (pipelined, 5,000 per command) plus
  a bare driver insert of the same N job rows, prepared beforehand (PostgreSQL ``COPY``,
  SQLite ``executemany``; rolled back);
* Redis memory per queued job (``used_memory`` before and after);
* ``batch_status`` of the batch (median of 10) and a ``reconcile`` sweep over its N queued
  jobs (all on the broker: one paged scan, nothing to re-publish).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODEL = "mono_quant.demo_models:mlp"


def write_manifest(path: Path, n: int, first_seed: int = 0) -> Path:
    models = [{"name": f"m{i}", "model": {"factory": MODEL, "kwargs": {
        "in_features": 64, "hidden": 64, "out_features": 16, "seed": first_seed + i}}}
        for i in range(n // 4)]
    path.write_text(json.dumps({"name": f"bulk{n}", "matrix": {
        "scheme": ["symmetric", "asymmetric"], "format": ["safetensors", "pt"]},
        "jobs": models}))
    return path


def _floor_rows(manifest: Path, batch_id: int) -> list[tuple]:
    """The job rows the submit wrote, ready for the driver (JSON already text)."""
    from mono_quant.scheduler.manifest import load_manifest

    now = datetime.now(timezone.utc)
    _, jobs, _ = load_manifest(manifest, max_jobs=10**6)
    return [(batch_id, j.name, j.model_source, json.dumps(j.spec.model.canonical()),
             json.dumps(j.spec.to_payload()), j.idempotency_key, j.queue, "pending", 0,
             j.max_attempts, now) for j in jobs]


_COLUMNS = ("batch_id, name, model_source, model_source_json, spec, idempotency_key, queue, "
            "status, attempts, max_attempts, created_at")


def floor_insert(catalog, rows: list[tuple]) -> float:
    """Seconds for the bare driver insert of ``rows`` (rolled back)."""
    with catalog.engine.connect() as conn:
        raw = conn.connection.driver_connection
        if conn.dialect.name == "postgresql":
            with raw.cursor() as cur:
                t = time.perf_counter()
                with cur.copy(f"COPY jobs ({_COLUMNS}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                took = time.perf_counter() - t
        else:
            sqlite_rows = [(*r[:-1], r[-1].replace(tzinfo=None).isoformat(" ")) for r in rows]
            cur = raw.cursor()
            t = time.perf_counter()
            cur.executemany(f"INSERT INTO jobs ({_COLUMNS}) VALUES "
                            f"({', '.join('?' * 11)})", sqlite_rows)
            took = time.perf_counter() - t
        raw.rollback()
    return took


def floor_lpush(client: redis.Redis, n: int) -> float:
    payloads = [b"%d" % i for i in range(n)]
    t = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for start in range(0, n, 5000):
        pipe.lpush("floor", *payloads[start:start + 5000])
    pipe.execute()
    took = time.perf_counter() - t
    client.delete("floor")
    return took


def child_submit(url: str, n: int, broker: str) -> dict:
    from mono_quant.catalog import Catalog
    from mono_quant.config import Settings
    from mono_quant.scheduler.service import batch_status, cancel, reconcile, submit
    from mono_quant.worker.app import create_app

    client = redis.Redis.from_url(broker)
    client.flushdb()
    manifest = write_manifest(Path(tempfile.mkdtemp(prefix="mq-bulk-")) / "m.json", n)
    settings = Settings.from_env({"MONO_QUANT_BROKER_URL": broker,
                                  "MONO_QUANT_CATALOG_URL": url,
                                  "MONO_QUANT_MAX_JOBS_PER_BATCH": str(max(n, 10_000))})
    catalog = Catalog(url)
    catalog.upgrade()
    app = create_app(settings)
    warm = submit(write_manifest(manifest.with_name("warm.json"), 8, 10**9), catalog,
                  app=app, settings=settings)  # imports, first connections
    cancel(catalog, None, batch_id=warm.batch_id)  # out of reconcile's way
    client.flushdb()
    used = client.info("memory")["used_memory"]
    t = time.perf_counter()
    res = submit(manifest, catalog, app=app, settings=settings)
    t_submit = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queued = sum(client.llen(q) for q in set(res.queues))
    if queued != n or len(res.job_ids) != n:
        raise RuntimeError(f"submitted {len(res.job_ids)}, on the broker {queued}, wanted {n}")
    per_job = (client.info("memory")["used_memory"] - used) / n
    status_ms = []
    for _ in range(10):
        t = time.perf_counter()
        st = batch_status(catalog, res.batch_id)
        status_ms.append((time.perf_counter() - t) * 1e3)
    if st.total != n:
        raise RuntimeError(f"status counted {st.total} jobs")
    t = time.perf_counter()
    again = reconcile(catalog, app, settings=dataclasses.replace(settings, stale_after=0.0))
    t_reconcile = time.perf_counter() - t
    if again:
        raise RuntimeError(f"reconcile re-published {len(again)} jobs that were on the broker")
    rows = _floor_rows(manifest, res.batch_id)
    t_insert = floor_insert(catalog, rows)
    t_lpush = floor_lpush(client, n)
    client.flushdb()
    catalog.dispose()
    return {"n": n, "submit": t_submit, "floor_insert": t_insert, "floor_lpush": t_lpush,
            "peak_mb": peak_mb, "redis_bytes_per_job": per_job,
            "status_ms": statistics.median(status_ms), "reconcile": t_reconcile}


def child_latest(url: str, rows: int, repeat: int = 50) -> dict:
    """--latest for 100 models at ``rows`` artifacts (catalog_queries' data set)."""
    import random

    from catalog_queries import T0, load, model_name

    from mono_quant.catalog import ArtifactQuery, Catalog, list_artifacts, upgrade

    upgrade(url)
    catalog = Catalog(url)
    models = max(100, rows // 50)
    t = time.perf_counter()
    load(catalog, rows, models)  # sets the latest flags once after its Core bulk insert
    t_load = time.perf_counter() - t
    out = {"rows": rows, "load_s": t_load}
    # the peer: the same answer from the window function over ix_artifacts_latest (what
    # --latest ran before the flag); a no-op `since` filter selects that path
    for name, extra in (("latest", {}), ("window", {"since": T0 - timedelta(days=1)})):
        rng = random.Random(7)
        times = []
        for i in range(repeat + 3):
            q = ArtifactQuery(models=[model_name(k) for k in rng.sample(range(models), 100)],
                              latest=True, limit=None, **extra)
            t = time.perf_counter()
            with catalog.begin() as s:
                out[f"{name}_returned"] = len(list_artifacts(s, q))
            if i >= 3:
                times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        out[f"{name}_ms"] = statistics.median(times)
        out[f"{name}_p95"] = times[int(0.95 * (len(times) - 1))]
    catalog.dispose()
    return out


def run_child(*args: str, timeout: float = 3600) -> dict:
    """Run one measurement in a fresh interpreter; its last output line is the JSON result."""
    import subprocess

    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         timeout=timeout, env=dict(os.environ, MONO_QUANT_COMPILE="never"))
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    kind, rest = sys.argv[1], sys.argv[2:]
    if kind == "submit":
        result = child_submit(rest[0], int(rest[1]), rest[2])
    else:
        result = child_latest(rest[0], int(rest[1]))
    print(json.dumps(result))
