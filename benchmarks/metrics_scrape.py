"""What one Prometheus scrape of ``mono-quant metrics`` costs on a large catalog.

For each backend a throwaway catalog is filled like benchmarks/catalog_queries.py does
(ROWS jobs and ROWS artifacts, bulk insert, ANALYZE / VACUUM ANALYZE), a few attempt rows are
added, and the Redis test database gets some queued messages. Then, timed REPEAT times each:

* ``render()`` — the whole exposition as the endpoint builds it (catalog + Redis);
* ``GET /metrics`` — the same through the real HTTP server (a thread in this process);
* the parts: jobs by (status, queue), attempts by outcome, artifacts count + bytes, Redis;
* peer: ``SELECT count(*) FROM jobs`` — the cheapest possible read of the whole jobs table,
  the floor any "jobs by state" exporter pays; the ratio column is scrape / peer.

Usage:
    python benchmarks/metrics_scrape.py                  # 1,000,000 rows (several minutes)
    python benchmarks/metrics_scrape.py --rows 20000     # a quick check
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
import catalog_queries as cq

from mono_quant.catalog import Attempt, Catalog, Job, upgrade
from mono_quant.scheduler.metrics import MetricsSource, render, serve


def timed(fn, repeat: int) -> dict[str, float]:
    fn()  # warm: connections, statement cache, OS page cache
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"median": statistics.median(times), "p95": times[int(0.95 * (len(times) - 1))]}


def add_attempts(catalog: Catalog, rows: int) -> None:
    # one attempt per 10 jobs, outcomes spread over the enum (NULL = running)
    outcomes = ["succeeded"] * 7 + ["failed", "lost", None]
    with catalog.engine.begin() as conn:
        conn.execute(insert(Attempt), [
            {"job_id": j, "number": 1, "outcome": outcomes[(j // 10) % len(outcomes)]}
            for j in range(1, rows + 1, 10)])


def measure(url: str, broker: str, rows: int, repeat: int) -> dict[str, dict[str, float]]:
    catalog = Catalog(url)
    source = MetricsSource(url, broker)
    server = serve(source, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/metrics"

    def http() -> None:
        with urllib.request.urlopen(endpoint, timeout=60) as r:
            r.read()

    def peer() -> None:
        with catalog.begin() as s:
            s.execute(select(func.count()).select_from(Job)).scalar_one()

    queues = [*list(source.queues), "gpu.h100"]
    try:
        text = render(source)
        assert "mono_quant_up{component=\"catalog\"} 1" in text, text[:500]
        return {
            "render() (whole scrape)": timed(lambda: render(source), repeat),
            "GET /metrics (HTTP)": timed(http, repeat),
            "  catalog part": timed(source.catalog_counts, repeat),
            "  Redis part": timed(lambda: source.queue_lengths(queues), repeat),
            "peer: count(*) FROM jobs": timed(peer, repeat),
        }
    finally:
        server.shutdown()
        server.server_close()
        source.close()
        catalog.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--broker", default=os.environ.get("MONO_QUANT_TEST_REDIS_URL",
                                                      "redis://127.0.0.1:6379/11"))
    p.add_argument("--pg-admin-url",
                   default=os.environ.get("MONO_QUANT_TEST_PG_URL",
                                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still drop the databases
    models = max(100, args.rows // 50)
    print(f"metrics_scrape: {args.rows:,} jobs + {args.rows:,} artifacts + "
          f"{args.rows // 10:,} attempts, {args.repeat} timed scrapes; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    import redis

    client = redis.Redis.from_url(args.broker)
    client.flushdb()
    for q, n in (("cpu", 5), ("gpu", 1000), ("gpu.h100", 50)):
        client.lpush(q, *[b"x"] * n)

    results = {}
    try:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                tmp = tempfile.TemporaryDirectory(prefix="mq_bench_")
                url, drop = f"sqlite:///{Path(tmp.name) / 'catalog.db'}", tmp.cleanup
            else:
                url, drop = cq._pg_database(args.pg_admin_url)
            try:
                upgrade(url)
                catalog = Catalog(url)
                t = time.perf_counter()
                cq.load(catalog, args.rows, models)
                add_attempts(catalog, args.rows)
                catalog.dispose()
                print(f"{backend:10}  loaded in {time.perf_counter() - t:.0f} s", flush=True)
                results[backend] = measure(url, args.broker, args.rows, args.repeat)
            finally:
                drop()
    finally:
        client.flushdb()
        client.close()

    backends = list(results)
    print()
    header = f"{'what':28}" + "".join(f"{b + ' med ms':>18}{'p95':>9}{'× peer':>8}"
                                      for b in backends)
    print(header)
    print("-" * len(header))
    for what in results[backends[0]]:
        line = f"{what:28}"
        for b in backends:
            r, peer = results[b][what], results[b]["peer: count(*) FROM jobs"]["median"]
            line += f"{r['median']:18.2f}{r['p95']:9.2f}{r['median'] / peer:8.2f}"
        print(line)


if __name__ == "__main__":
    main()
