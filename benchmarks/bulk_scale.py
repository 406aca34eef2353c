"""Bulk at scale: submit, status and reconcile of 10k / 100k-job batches, --latest at 1M,
each with its floor from the same run. Used by ``queue_overhead.py``; runnable alone:

    python benchmarks/bulk_scale.py submit URL N BROKER   # one submit, in this process
    python benchmarks/bulk_scale.py latest URL ROWS       # --latest at ROWS artifacts

``latest`` builds the catalog when it is empty (:func:`fast_load`) and reuses one that
already holds exactly ROWS artifacts of that data set (``queue_overhead.py --latest-url``).

``submit`` writes a manifest of N jobs (N/4 models × a 2 × 2 scheme × format matrix), then
measures in one fresh process (so its ``VmHWM`` is the submit's peak; not ``ru_maxrss``,
which Linux carries over from the parent across fork and exec, so a child of a large
parent, queue_overhead.py after its workers part, reported the parent's size). Up to
10,000 jobs the submit and each floor are timed ``REPEATS`` times (each submit a new
manifest into the same catalog, the batch before deleted, SQLite's background checkpoint
of the one before waited for off the clock) and the medians reported:

* ``submit``: ``service.submit`` — parse, validate, expand, check keys, write, publish;
* the floor: a bare Redis ``LPUSH`` of the same N payloads (the submit's messages, read
  back from the broker; pipelined, 5,000 per command) plus a bare driver insert of the same
  N job rows, prepared beforehand (PostgreSQL ``COPY``, SQLite ``executemany``), in one
  transaction, committed (and deleted afterwards, untimed). Until session 6 the floor
  rolled its insert back and pushed N short numbers: that floor is still reported
  (``floor_lpush_short``, ``cpu_floor_session5``), so ratios stay comparable;
* the same ratio in this process's CPU time (``cpu_submit`` / ``cpu_floor``): what a load
  that stretches every wall time alike barely moves (Redis's own work is in neither: the
  submit's ~930-byte messages cost it more than the floor's short payloads);
* Redis memory per queued job (``used_memory`` before and after);
* ``batch_status`` of the batch (median of 10) and a ``reconcile`` sweep over its N queued
  jobs (all on the broker: one paged scan, nothing to re-publish).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import redis

from mono_quant.pipeline.memory import host_peak_bytes

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


def floor_insert(catalog, rows: list[tuple]) -> tuple[float, float, float, float]:
    """(wall, CPU) seconds of this process for the bare driver insert of ``rows`` in one
    transaction, then (wall, CPU) of its commit (the submit commits its rows too: on SQLite
    the commit is where WAL pages are written); the rows are deleted afterwards, untimed."""
    with catalog.engine.connect() as conn:
        raw = conn.connection.driver_connection
        top = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM jobs").scalar()
        raw.rollback()  # the driver's own transaction from here on
        if conn.dialect.name == "postgresql":
            with raw.cursor() as cur:
                t, c = time.perf_counter(), time.process_time()
                with cur.copy(f"COPY jobs ({_COLUMNS}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                took = time.perf_counter() - t, time.process_time() - c
        else:
            sqlite_rows = [(*r[:-1], r[-1].replace(tzinfo=None).isoformat(" ")) for r in rows]
            cur = raw.cursor()
            t, c = time.perf_counter(), time.process_time()
            cur.executemany(f"INSERT INTO jobs ({_COLUMNS}) VALUES "
                            f"({', '.join('?' * 11)})", sqlite_rows)
            took = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        raw.commit()
        committed = time.perf_counter() - t, time.process_time() - c
        cur = raw.cursor()
        cur.execute(f"DELETE FROM jobs WHERE id > {int(top)}")
        raw.commit()
    return (*took, *committed)


def floor_lpush(client: redis.Redis, n: int, payloads: list[bytes] | None = None
                ) -> tuple[float, float]:
    """(wall, CPU) seconds of this process for a bare pipelined LPUSH of ``payloads`` (the
    submit's own messages, read back from the broker) or of n short ones."""
    payloads = payloads or [b"%d" % i for i in range(n)]
    t, c = time.perf_counter(), time.process_time()
    pipe = client.pipeline(transaction=False)
    for start in range(0, n, 5000):
        pipe.lpush("floor", *payloads[start:start + 5000])
    pipe.execute()
    took = time.perf_counter() - t, time.process_time() - c
    client.delete("floor")
    return took


def _messages(client: redis.Redis, n: int) -> list[bytes]:
    """The n messages a submit left on the broker (its queues are the only lists)."""
    out = []
    for key in client.scan_iter():
        if client.type(key) == b"list":
            out += client.lrange(key, 0, -1)
    if len(out) != n:
        raise RuntimeError(f"found {len(out)} messages on the broker, wanted {n}")
    return out


#: Submits (and floors) timed per size up to 10,000 jobs, the median reported: single runs
#: on this kind of shared machine moved by up to 40 % from one minute to the next (session
#: 9: 0.24-0.39 s for the same 10,000-job submit). Larger sizes run once.
REPEATS = 3


def _median_of(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
    """Each field's median over ``runs`` (tuples of timings)."""
    return tuple(statistics.median(field) for field in zip(*runs, strict=True))


def _forget(catalog, batch_id: int) -> None:
    """Delete a timed batch, so each submit (and the floor after the last) writes into a
    table of the same size as a single run's."""
    from sqlalchemy import text

    with catalog.begin() as s:
        s.execute(text("DELETE FROM jobs WHERE batch_id = :b"), {"b": batch_id})
        s.execute(text("DELETE FROM batches WHERE id = :b"), {"b": batch_id})


def child_submit(url: str, n: int, broker: str) -> dict:
    from mono_quant.catalog import Catalog
    from mono_quant.config import Settings
    from mono_quant.scheduler.service import batch_status, cancel, reconcile, submit
    from mono_quant.worker.app import create_app

    client = redis.Redis.from_url(broker)
    client.flushdb()
    folder = Path(tempfile.mkdtemp(prefix="mq-bulk-"))
    settings = Settings.from_env({"MONO_QUANT_BROKER_URL": broker,
                                  "MONO_QUANT_CATALOG_URL": url,
                                  "MONO_QUANT_MAX_JOBS_PER_BATCH": str(max(n, 10_000))})
    catalog = Catalog(url)
    catalog.upgrade()
    app = create_app(settings)
    warm = submit(write_manifest(folder / "warm.json", 8, 10**9), catalog,
                  app=app, settings=settings)  # imports, first connections
    cancel(catalog, None, batch_id=warm.batch_id)  # out of reconcile's way
    repeats = REPEATS if n <= 10_000 else 1
    runs, loads = [], [os.getloadavg()[0]]
    for rep in range(repeats):
        catalog.wait_checkpoint()  # the last submit's, off its clock: not this one's either
        client.flushdb()
        manifest = write_manifest(folder / f"m{rep}.json", n, first_seed=rep * n)  # new keys
        used = client.info("memory")["used_memory"]
        t, c = time.perf_counter(), time.process_time()
        res = submit(manifest, catalog, app=app, settings=settings)
        runs.append((time.perf_counter() - t, time.process_time() - c))
        queued = sum(client.llen(q) for q in set(res.queues))
        if queued != n or len(res.job_ids) != n:
            raise RuntimeError(f"submitted {len(res.job_ids)}, on the broker {queued}, "
                               f"wanted {n}")
        if rep < repeats - 1:  # the last batch stays queued for status and reconcile
            _forget(catalog, res.batch_id)
    loads.append(os.getloadavg()[0])
    t_submit, c_submit = _median_of(runs)
    peak_mb = host_peak_bytes() / 2**20
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
    rows, messages = _floor_rows(manifest, res.batch_id), _messages(client, n)
    client.flushdb()
    catalog.wait_checkpoint()
    t_insert, c_insert, t_commit, c_commit = _median_of(
        [floor_insert(catalog, rows) for _ in range(repeats)])
    t_lpush, c_lpush = _median_of([floor_lpush(client, n, messages) for _ in range(repeats)])
    t_short, c_short = _median_of([floor_lpush(client, n) for _ in range(repeats)])
    client.flushdb()
    catalog.dispose()
    return {"n": n, "submit": t_submit, "submit_runs": [w for w, _ in runs],
            "floor_insert": t_insert, "floor_commit": t_commit,
            "floor_lpush": t_lpush, "floor_lpush_short": t_short,
            "cpu_submit": c_submit, "cpu_floor": c_insert + c_commit + c_lpush,
            "cpu_floor_session5": c_insert + c_short,
            "peak_mb": peak_mb, "redis_bytes_per_job": per_job,
            "status_ms": statistics.median(status_ms), "reconcile": t_reconcile,
            "load": tuple(loads)}


def _artifact_template_texts(templates: list[dict]) -> list[tuple[str, str]]:
    """Each template's info JSON as text split around its weight SQNR (spliced per row)."""
    out = []
    for t in templates:
        text = json.dumps(t["info"])
        head, sep, tail = text.partition('"weight_sqnr_db": 40.0')
        out.append((head + '"weight_sqnr_db": ', tail) if sep else (text, ""))
    return out


def fast_load(catalog, rows: int, models: int, seed: int = 0) -> None:
    """``rows`` jobs and artifacts of ``models`` models (``catalog_queries``' data: RECIPES
    recipes per model, re-run at random times over a year) written through the catalog's
    own bulk path (``insert_rows``: PostgreSQL ``COPY``, SQLite ``executemany``) with every
    JSON value given as text, and the latest flags computed on the way (one UPDATE per 900
    flagged ids), then ``VACUUM ANALYZE`` / ``ANALYZE``: 1M rows took 13.5 minutes on SQLite
    (load 8, with a 1.5 GB page cache; 68 minutes at load 10-12 without) and 21 minutes on
    PostgreSQL (load 16-19), where the ORM / Core path took over 40 minutes."""
    import random

    from catalog_queries import (
        JOBS_PER_BATCH,
        STATUSES,
        SUFFIX,
        T0,
        _templates,
        draw,
    )
    from sqlalchemy import insert, text, update

    from mono_quant.catalog import Artifact, Batch, Job
    from mono_quant.catalog.bulk import insert_rows

    rng = random.Random(seed)
    templates = _templates()
    infos = _artifact_template_texts(templates)
    job_cols = ("batch_id", "name", "model_source", "model_source_json", "spec",
                "idempotency_key", "queue", "status", "attempts", "max_attempts", "created_at")
    own = ("info", "job_id", "idempotency_key", "model_source", "storage_key", "format",
           "sha256", "size_bytes", "created_at", "weight_sqnr_db", "weight_sqnr_db_min",
           "output_cosine", "output_sqnr_db")  # per row; the rest from the config's template
    t_cols = [c for c in templates[0] if c not in own]
    art_cols = (*t_cols, *own)
    with catalog.begin() as s:
        batch_ids = list(s.scalars(insert(Batch).returning(Batch.id), [
            {"name": f"batch-{b}", "submitted_at": T0, "labels": {}}
            for b in range((rows + JOBS_PER_BATCH - 1) // JOBS_PER_BATCH)]))
    newest: dict[tuple, tuple] = {}  # group -> (created_at, artifact id)
    span = 365 * 24 * 3600
    spec = '{"version": 1}'
    # SQLite: inserts into ~12 indexes of random keys took 68 min for 1M rows at load 10-12
    # with its 2 MB page cache, 13.5 min at load 8 with this one
    with _big_page_cache(catalog):
        for start in range(0, rows, 50_000):
            jobs, arts, groups = [], [], []
            for i in range(start, min(rows, start + 50_000)):
                model, c, fmt, key, created, sqnr, cos = draw(rng, i, models, span)
                jobs.append((batch_ids[i // JOBS_PER_BATCH], f"job-{i}", model,
                             f'{{"kind": "hf", "id": "{model}"}}', spec, key, "gpu",
                             rng.choice(STATUSES), 1, 3, created))
                t = templates[c]
                head, tail = infos[c]
                info = head + repr(sqnr) + tail if tail else head
                arts.append([*(t[col] for col in t_cols), info, None, key, model,
                             f"{model[3:]}/{key[:32]}{SUFFIX[fmt]}", fmt, key,
                             rng.randrange(1_000_000, 2_000_000_000), created, sqnr,
                             sqnr - rng.uniform(0, 8), cos,
                             None if cos is None else rng.uniform(15, 45)])
                groups.append(((model, t["config_digest"], fmt), created))
            with catalog.begin() as s:
                job_ids = insert_rows(s, Job.__table__, job_cols, jobs,
                                      texts={"model_source_json", "spec"})
                for row, job_id in zip(arts, job_ids, strict=True):
                    row[len(t_cols) + 1] = job_id
                art_ids = insert_rows(s, Artifact.__table__, art_cols, arts, texts={"info"})
            for (group, created), art_id in zip(groups, art_ids, strict=True):
                best = newest.get(group)
                if best is None or (created, art_id) > best:
                    newest[group] = (created, art_id)
        flagged = sorted(art_id for _, art_id in newest.values())
        with catalog.begin() as s:
            for part in range(0, len(flagged), 900):
                s.execute(update(Artifact).where(Artifact.id.in_(flagged[part:part + 900]))
                          .values(is_latest=True))
    pg = catalog.engine.dialect.name == "postgresql"
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE" if pg else "ANALYZE"))


#: SQLite page cache of the loader's connection, KiB (negative: a size, not pages); its
#: peak RSS was 1.9 GB for 1M rows.
LOAD_CACHE_KIB = 1_500_000


@contextlib.contextmanager
def _big_page_cache(catalog):
    """A big page cache on the loader's connections only: the queries measured afterwards
    get SQLite's default, as the CLI does."""
    from sqlalchemy import event

    def cache(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA cache_size = -{LOAD_CACHE_KIB}")
        cur.close()

    sqlite = catalog.engine.dialect.name == "sqlite"
    if sqlite:
        catalog.engine.dispose()
        event.listen(catalog.engine, "connect", cache)
    try:
        yield
    finally:
        if sqlite:
            event.remove(catalog.engine, "connect", cache)
            catalog.engine.dispose()


def _timed(catalog, make_query, run, repeat: int) -> tuple[float, float, int, float]:
    """Median and p95 wall ms of ``run(session, query)`` over ``repeat`` fresh queries (3
    warm-up calls first), the rows the last one returned, and the median CPU ms of this
    process per call (on a loaded machine the wall time is mostly waiting for a core; with
    SQLite the query runs in this process, so its CPU time is the work itself)."""
    import random

    rng = random.Random(7)
    times, cpu, returned = [], [], 0
    for i in range(repeat + 3):
        q = make_query(rng)
        t, c = time.perf_counter(), time.process_time()
        with catalog.begin() as s:
            returned = len(run(s, q))
        if i >= 3:
            times.append((time.perf_counter() - t) * 1e3)
            cpu.append((time.process_time() - c) * 1e3)
    times.sort()
    return (statistics.median(times), times[int(0.95 * (len(times) - 1))], returned,
            statistics.median(cpu))


def child_latest(url: str, rows: int, repeat: int = 50) -> dict:
    """``catalog list --latest`` at ``rows`` artifacts: 100 given models (all their rows)
    and the first page of all models (the default ``--limit 100``), each as the CLI reads
    it (``artifact_records``: plain rows, paths resolved) against peers on the same
    data: the ORM objects of the same query, and the window function --latest ran before
    the flag (a no-op ``since`` filter selects that path)."""
    from catalog_queries import model_name
    from sqlalchemy import func, select

    from mono_quant.catalog import (
        Artifact,
        ArtifactQuery,
        Catalog,
        artifact_record,
        artifact_records,
        list_artifacts,
        upgrade,
    )
    from mono_quant.catalog.queries import records_statement

    upgrade(url)
    catalog = Catalog(url)
    models = max(100, rows // 50)
    with catalog.begin() as s:
        have = s.scalar(select(func.count()).select_from(Artifact))
    t = time.perf_counter()
    if have == 0:
        fast_load(catalog, rows, models)
    elif have != rows:
        raise RuntimeError(f"{url} holds {have} artifacts, not {rows}: give an empty catalog")
    out = {"rows": rows, "load_s": time.perf_counter() - t if have == 0 else None}
    root = Path(tempfile.mkdtemp(prefix="mq-root-"))
    since = {"since": datetime(2000, 1, 1, tzinfo=timezone.utc)}

    def hundred(extra):
        return lambda rng: ArtifactQuery(
            models=[model_name(k) for k in rng.sample(range(models), 100)], latest=True,
            limit=None, **extra)

    def records(s, q):
        return artifact_records(s, q, storage_root=root)

    def orm(s, q):
        return [artifact_record(a, storage_root=root)
                for a in list_artifacts(s, q, load_jobs=True)]

    def rows_only(s, q):  # the SQL alone: the record's columns as the driver returns them
        return s.connection().execute(records_statement(q)).all()

    def page(rng):
        return ArtifactQuery(latest=True)

    cases = {"latest": (hundred({}), records), "page": (page, records),
             "latest_sql": (hundred({}), rows_only), "page_sql": (page, rows_only),
             "orm": (hundred({}), orm), "window": (hundred(since), records)}
    for name, (make, run) in cases.items():
        ms, p95, n, cpu = _timed(catalog, make, run, repeat)
        out.update({f"{name}_ms": ms, f"{name}_p95": p95, f"{name}_returned": n,
                    f"{name}_cpu_ms": cpu})
    out["load"] = os.getloadavg()[0]
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
