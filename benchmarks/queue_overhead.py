"""Queue overhead and bulk at scale, each figure with its floor from the same run.

Part 1, the queue (catalog on PostgreSQL): jobs/s for ``loop`` — ``run_job(job_id)`` in a
loop in this process (the floor; meanwhile another process polls ``batch_status`` every 50
ms, as the harness does while a worker runs, unless ``--no-loop-poll``) — and ``1 worker`` —
the same jobs through Redis and one ``mono-quant worker`` — in ``--rounds`` paired rounds,
ABBA order (loop then worker, worker then loop, ...), so a load that drifts through the run
favours neither side; the per-job overhead is each pair's ``(t_1worker - t_loop) / N``,
reported as the median of the pairs with its interquartile range and a distribution-free 90
% interval of that median (met only when the whole interval is under the target, missed when
it is all above), in wall time and in CPU time (the loop's process against the submit plus
the worker's process tree: what the queue costs in work, which the machine's load barely
moves); then ``2 workers`` once.

Part 2, bulk at scale (``bulk_scale.py``), on SQLite and PostgreSQL, each in a fresh process:
submit 10k / 100k jobs against the floor (a bare Redis ``LPUSH`` of the same messages plus
a bare ``COPY`` / ``executemany`` of the same rows in one committed transaction, and the
issue's floor, rolled back and with short payloads, which the <= 3x verdict uses; up to
10,000 jobs the median of 3 submits and of 3 floors), the
submit's peak RSS, Redis memory per queued job, ``status`` of the 100k batch, a reconcile
sweep over 100k queued jobs, and ``--latest`` for 100 models at 1M artifacts.

Targets: submit 10k / 100k < 3 s / < 30 s and <= 3x the floor; status < 200 ms; reconcile
< 5 s; --latest < 10 ms; queue overhead < 5 ms per job; peak < 500 MB for 100k.

Throwaway PostgreSQL databases; Redis database 8 of ``--redis`` (flushed before and after).
Usage: ``python benchmarks/queue_overhead.py [--jobs 500] [--sizes 10000,100000]
[--latest-rows 1000000] [--latest-url sqlite=URL] [--skip-workers]``
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import psycopg
import redis
from bulk_scale import run_child

REPO = Path(__file__).resolve().parents[1]
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


_TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of the processes ``pids`` and all their descendants, from
    /proc: a Celery worker's pool children included while they live."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:  # gone meanwhile
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])))
    todo, total = list(pids), 0
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0))[1]
        todo += [child for child, (ppid, _) in stats.items() if ppid == pid]
    return total / _TICK


def _poll_until_done(batch_id: int, n: int, ready, done) -> None:
    """The worker round's end-of-batch poll (``wait_done``: ``batch_status`` every 50 ms), in
    a process of its own for the loop round; sets ``ready`` once warm, ``done`` at the end."""
    from mono_quant.catalog import Catalog
    from mono_quant.scheduler.service import batch_status

    catalog = Catalog()
    batch_status(catalog, batch_id)  # imports, connection, compiled statements: before t0
    ready.set()
    wait_done(catalog, batch_id, n)
    done.set()
    catalog.dispose()


def _own_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the process ``pid`` alone (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


#: Median milliseconds from one job's end to the next one's (``finished_at`` in run order) of
#: each loop and 1-worker round: the per-job time of a serial run, which a load spike that
#: slows a few jobs moves less than the round's total.
CYCLES: dict[str, list[float]] = {}


def _median_cycle_ms(catalog, batch_id: int) -> float:
    from sqlalchemy import select

    from mono_quant.catalog import Job

    with catalog.begin() as session:
        ends = sorted(session.scalars(select(Job.finished_at).where(Job.batch_id == batch_id)))
    return statistics.median((b - a).total_seconds() * 1e3 for a, b in pairwise(ends))


#: CPU seconds of the 1-worker rounds' worker main process (Celery's consumer, not the pool
#: child that runs the jobs), one per round: where the queue's own per-job work happens.
MAIN_CPU: list[float] = []


def _loop_once(catalog, tmp: Path, n: int, tag: str, poll: bool = True
               ) -> tuple[float, float]:
    """(wall, CPU) seconds of ``run_job`` over n fresh jobs in this process. With ``poll``
    the round pays what the worker round pays from the harness: another process polls
    ``batch_status`` every 50 ms meanwhile, and the round ends when that poll sees the batch
    done, so the loop and the worker differ by the queue only. CPU: this process's."""
    import multiprocessing

    from mono_quant.scheduler.service import submit
    from mono_quant.worker.job import run_job

    loop = submit(manifest(tmp / f"{tag}.json", n, tag), catalog, app=None)
    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds torch
    ready, done = ctx.Event(), ctx.Event()
    poller = ctx.Process(target=_poll_until_done, daemon=True,
                         args=(loop.batch_id, len(loop.job_ids), ready, done))
    if poll:
        poller.start()
        if not ready.wait(120):
            raise TimeoutError("the loop round's poller did not start")
    t0, c0 = time.perf_counter(), time.process_time()
    for job_id in loop.job_ids:
        run_job(job_id, "loop@bench")
    cpu = time.process_time() - c0
    while poll and not done.wait(1):
        if not poller.is_alive():
            raise RuntimeError(f"the loop round's poller exited with {poller.exitcode}")
    wall = time.perf_counter() - t0
    if poll:
        poller.join(30)
    CYCLES.setdefault(LOOP, []).append(_median_cycle_ms(catalog, loop.batch_id))
    return wall, cpu


def _queued_once(catalog, app, tmp: Path, n: int, tag: str,
                 procs: list[subprocess.Popen]) -> tuple[float, float]:
    """(wall, CPU) seconds of submitting n fresh jobs and the workers running them; the CPU
    is the submit's (with its publish) and the worker processes', not this process's
    polling for the end."""
    from mono_quant.scheduler.service import submit

    pids = [p.pid for p in procs]
    t0, w0, c0 = time.perf_counter(), _tree_cpu(pids), time.process_time()
    m0 = _own_cpu(pids[0])
    res = submit(manifest(tmp / f"{tag}.json", n, tag), catalog, app=app)
    cpu = time.process_time() - c0
    wait_done(catalog, res.batch_id, len(res.job_ids))
    wall, main = time.perf_counter() - t0, _own_cpu(pids[0]) - m0
    if len(pids) == 1:
        MAIN_CPU.append(main)
        CYCLES.setdefault(ONE, []).append(_median_cycle_ms(catalog, res.batch_id))
    return wall, cpu + _tree_cpu(pids) - w0


def workers_part(n: int, broker: str, tmp: Path, rounds: int = 7, loop_poll: bool = True
                 ) -> dict[str, list[tuple[float, float]]]:
    """Part 1: the loop and 1 worker over n jobs in ``rounds`` pairs, ABBA order (so a
    change of the machine's load hits both alike); then 2 workers once. Returns (wall, CPU)
    seconds of each run by row name, the i-th loop and worker runs being the i-th pair.
    ``loop_poll``: the loop round runs the worker round's ``batch_status`` poll too."""
    db = f"mq_bench_{secrets.token_hex(4)}"
    env = dict(os.environ, MONO_QUANT_BROKER_URL=broker, MONO_QUANT_COMPILE="never",
               MONO_QUANT_CATALOG_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
               MONO_QUANT_STORAGE_ROOT=str(tmp / "store"), PYTHONPATH=str(REPO))
    for name, value in (("OMP_WAIT_POLICY", "PASSIVE"), ("THP_MEM_ALLOC_ENABLE", "1")):
        env.setdefault(name, value)  # what the worker's console script sets: the loop alike
    os.environ.update(env)  # before this process imports torch
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    try:
        from mono_quant.catalog import Catalog
        from mono_quant.scheduler.service import submit
        from mono_quant.worker.app import app
        from mono_quant.worker.job import run_job

        catalog = Catalog()
        catalog.upgrade()
        warm = submit(manifest(tmp / "w.json", 3, "warm"), catalog, app=None)
        for job_id in warm.job_ids:  # imports, first quantization
            run_job(job_id, "loop@bench")
        rows: dict[str, list[tuple[float, float]]] = {LOOP: [], ONE: [], TWO: []}
        for k, name in ((1, ONE), (2, TWO)):
            procs = start_workers(k, env, f"w{k}-")
            try:
                _queued_once(catalog, app, tmp, 2 * k, f"warm{k}-", procs)
                if k == 1:
                    MAIN_CPU.clear()  # the warm-up is no round
                    CYCLES.clear()
                for r in range(rounds if k == 1 else 1):
                    # ABBA: the loop first in even rounds, the worker first in odd ones, so a
                    # load that rises (or falls) through a round favours neither side
                    if k == 1 and r % 2 == 0:
                        rows[LOOP].append(_loop_once(catalog, tmp, n, f"loop{r}-", loop_poll))
                    rows[name].append(_queued_once(catalog, app, tmp, n, f"q{k}r{r}-", procs))
                    if k == 1 and r % 2 == 1:
                        rows[LOOP].append(_loop_once(catalog, tmp, n, f"loop{r}-", loop_poll))
                    print(f"  round {r}: {({k: v[-1] for k, v in rows.items() if v})}",
                          flush=True)
            finally:
                stop(procs)
        catalog.dispose()
        return rows
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


LOOP, ONE, TWO = ("loop (run_job in one process)", "1 worker (Redis + Celery)",
                  "2 workers (Redis + Celery)")


def _database(backend: str, tmp: Path):
    """A fresh catalog URL on ``backend`` and its cleanup."""
    if backend == "sqlite":
        path = tmp / f"{secrets.token_hex(4)}.db"
        return f"sqlite:///{path}", lambda: [p.unlink(missing_ok=True)
                                             for p in tmp.glob(f"{path.name}*")]
    db = f"mq_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')

    def drop() -> None:
        with psycopg.connect(ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}", drop


def bulk_part(sizes: list[int], backends: list[str], latest_rows: int, broker: str,
              tmp: Path, latest_urls: dict[str, str]) -> dict:
    results: dict = {}
    for backend in backends:
        for n in sizes:
            url, drop = _database(backend, tmp)
            try:
                results[backend, n] = run_child("submit", url, str(n), broker)
            finally:
                drop()
            print(f"  {backend} {n}: {results[backend, n]}", flush=True)
        if latest_rows:
            url, drop = ((latest_urls[backend], lambda: None) if backend in latest_urls
                         else _database(backend, tmp))
            try:
                results[backend, "latest"] = run_child("latest", url, str(latest_rows))
            finally:
                drop()
            print(f"  {backend} latest: {results[backend, 'latest']}", flush=True)
    return results


def _cell(value: float, unit: str, floor: float | None = None) -> str:
    text = f"{value:.2f} {unit}" if unit != "ms" else f"{value:.1f} ms"
    return text + (f" ({value / floor:.1f}x floor)" if floor else "")


def _met(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def print_bulk(results: dict, sizes: list[int], backends: list[str], latest_rows: int) -> None:
    """The bulk table: each figure per backend, its target and whether each backend met it."""
    def row(name: str, cells: list[str], target: str, oks: list[bool] | None = None) -> None:
        met = "" if oks is None else " / ".join(_met(ok) for ok in oks)
        print(f"| {name} | " + " | ".join(cells) + f" | {target} | {met} |")

    print("| figure | " + " | ".join(backends) + " | target | met (" + " / ".join(backends)
          + ") |")
    print("| --- | " + " | ".join("---:" for _ in backends) + " | --- | --- |")
    for n in sizes:
        r = {b: results[b, n] for b in backends}
        floors = {b: r[b]["floor_insert"] + r[b].get("floor_commit", 0.0) + r[b]["floor_lpush"]
                  for b in backends}
        old_floors = {b: r[b]["floor_insert"] + r[b].get("floor_lpush_short", r[b]["floor_lpush"])
                      for b in backends}
        limit = 3.0 if n <= 10_000 else 30.0
        row(f"submit {n:,} jobs", [_cell(r[b]["submit"], "s", old_floors[b]) for b in backends],
            f"< {limit:.0f} s", [r[b]["submit"] < limit for b in backends])
        if any(len(r[b].get("submit_runs", [])) > 1 for b in backends):
            row(f"submit {n:,} jobs, each run (the median above)",
                [" / ".join(f"{t:.2f}" for t in r[b].get("submit_runs", [])) + " s"
                 for b in backends], "")
        # the verdict is the issue's floor ("a bare LPUSH of the same number of small
        # payloads" + the bare insert); the committed floor with the submit's own messages
        # (session 6) is printed beside it
        row(f"submit {n:,} jobs, ratio to the issue's floor (short LPUSH payloads, insert "
            "rolled back)", [f"{r[b]['submit'] / old_floors[b]:.2f}x" for b in backends],
            "<= 3x", [r[b]["submit"] <= 3 * old_floors[b] for b in backends])
        row(f"submit {n:,} jobs, ratio to the committed floor with the same messages",
            [f"{r[b]['submit'] / floors[b]:.2f}x" for b in backends], "")
        if all("cpu_submit" in r[b] for b in backends):
            row(f"submit {n:,} jobs, ratio to the floor in this process's CPU time",
                [f"{r[b]['cpu_submit'] / r[b]['cpu_floor']:.2f}x "
                 f"({r[b]['cpu_submit']:.2f} / {r[b]['cpu_floor']:.2f} s)" for b in backends],
                "(load-robust)")
        if all("cpu_floor_session5" in r[b] for b in backends):
            row(f"submit {n:,} jobs, ratio to the session-5 floor (insert rolled back, short "
                "LPUSH payloads), wall / CPU",
                [f"{r[b]['submit'] / old_floors[b]:.2f}x / "
                 f"{r[b]['cpu_submit'] / r[b]['cpu_floor_session5']:.2f}x" for b in backends],
                "")
        bare = "/".join("COPY" if b == "postgresql" else "executemany" for b in backends)
        row(f"floor: bare LPUSH of the same messages + {bare} + commit",
            [f"{floors[b]:.2f} s ({r[b]['floor_lpush']:.2f} + {r[b]['floor_insert']:.2f} + "
             f"{r[b].get('floor_commit', 0.0):.2f})" for b in backends], "")
        row(f"peak RSS of the {n:,}-job submit", [f"{r[b]['peak_mb']:.0f} MB" for b in backends],
            "< 500 MB", [r[b]["peak_mb"] < 500 for b in backends])
        row(f"load average during the {n:,} run (1 min, before / after)",
            [f"{r[b]['load'][0]:.1f} / {r[b]['load'][1]:.1f}" for b in backends], "")
    if sizes:
        _print_sized(row, {b: results[b, max(sizes)] for b in backends}, max(sizes), backends)
    if latest_rows:
        lt = {b: results[b, "latest"] for b in backends}
        row(f"`catalog list --latest`, 100 models (300 rows), at {latest_rows:,} artifacts, "
            "median (p95) [CPU ms of the client]", [_latest(lt[b], "latest") for b in backends],
            "< 10 ms",
            [lt[b]["latest_ms"] < 10 for b in backends])
        row(f"`catalog list --latest`, first page (100 rows), at {latest_rows:,}, median (p95)",
            [_latest(lt[b], "page") for b in backends],
            "< 10 ms", [lt[b]["page_ms"] < 10 for b in backends])
        row("the SQL alone: those 300 rows as the driver returns them (no records, no paths)",
            [_latest(lt[b], "latest_sql") for b in backends], "< 10 ms",
            [lt[b]["latest_sql_ms"] < 10 for b in backends])
        row("the SQL alone: the first page",
            [_latest(lt[b], "page_sql") for b in backends],
            "< 10 ms", [lt[b]["page_sql_ms"] < 10 for b in backends])
        row("peer: the same 100 models as ORM objects (what catalog list read before)",
            [_latest(lt[b], "orm") for b in backends], "")
        row("peer: the window function (--latest before the flag), plain rows",
            [_latest(lt[b], "window") for b in backends], "")
        row(f"building the {latest_rows:,}-artifact catalog (bulk path; load average after)",
            [("reused" if lt[b]["load_s"] is None else f"{lt[b]['load_s']:.0f} s")
             + f" ({lt[b]['load']:.1f})" for b in backends], "")


def _latest(r: dict, name: str) -> str:
    cpu = r.get(f"{name}_cpu_ms")
    return (f"{r[f'{name}_ms']:.2f} ms ({r[f'{name}_p95']:.2f})"
            + ("" if cpu is None else f" [{cpu:.2f}]"))


def _print_sized(row, r: dict, big: int, backends: list[str]) -> None:
    row(f"status of a {big:,}-job batch (median of 10)",
        [_cell(r[b]["status_ms"], "ms") for b in backends], "< 200 ms",
        [r[b]["status_ms"] < 200 for b in backends])
    row(f"reconcile of {big:,} queued jobs", [_cell(r[b]["reconcile"], "s") for b in backends],
        "< 5 s", [r[b]["reconcile"] < 5 for b in backends])
    row("Redis memory per queued job", [f"{r[b]['redis_bytes_per_job']:.0f} B" for b in backends],
        "measured and documented")


def median_interval(xs: list[float], level: float = 0.9) -> tuple[float, float]:
    """A distribution-free ``level`` confidence interval for the median of ``xs``: the order
    statistics x(j) and x(k+1-j) with the largest j for which the median lies outside them
    with probability at most 1 - level (each x is above or below the median with probability
    1/2). Fewer than 5 values cannot give 90 %: then the full range, which says so by its
    width.

    >>> median_interval([5.0, 1.0, 3.0, 2.0, 4.0, 9.0, 7.0])  # 7 values: 98 % from x(1), x(7)
    (1.0, 9.0)
    >>> median_interval([float(x) for x in range(1, 12)])  # 11 values: x(3), x(9) give 93 %
    (3.0, 9.0)
    """
    from math import comb

    xs, k = sorted(xs), len(xs)
    j = 1
    while j < k // 2 and 2 * sum(comb(k, i) for i in range(j + 1)) / 2**k <= 1 - level:
        j += 1
    return xs[j - 1], xs[k - j]


def print_workers(rows: dict[str, list[tuple[float, float]]], n: int,
                  loop_poll: bool = True) -> None:
    print(f"\n{n} jobs (tiny MLP, weight-only int8, safetensors), catalog on PostgreSQL; "
          "loop and 1 worker in paired rounds (ABBA order), medians; CPU: the runner's "
          "processes; the loop " + ("polled like the workers (--loop-poll)" if loop_poll
                                    else "bare (--no-loop-poll)"))
    print(f"{'path':34} {'runs':>4} {'wall s':>7} {'jobs/s':>7} {'CPU s':>7}  each run, wall/CPU")
    for name, runs in rows.items():
        wall, cpu = (statistics.median(x) for x in zip(*runs, strict=True))
        print(f"{name:34} {len(runs):4} {wall:7.2f} {n / wall:7.1f} {cpu:7.2f}  "
              f"{', '.join(f'{w:.2f}/{c:.2f}' for w, c in runs)}")
    for what, i in (("wall", 0), ("CPU", 1)):
        pairs = [(w[i] - lp[i]) / n * 1e3 for lp, w in zip(rows[LOOP], rows[ONE], strict=True)]
        mid = statistics.median(pairs)
        low, high = median_interval(pairs)
        q = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else [mid, mid, mid]
        verdict = ("met" if high < 5 else "**MISSED**" if low >= 5 else
                   "INCONCLUSIVE: the interval holds 5 ms; re-run with more --rounds")
        print(f"queue overhead per job, {what} (1 worker minus the loop, paired rounds): "
              f"median {mid:.1f} ms, interquartile {q[0]:.1f} .. {q[2]:.1f}, 90 % interval "
              f"of the median {low:.1f} .. {high:.1f} ms over {len(pairs)} pairs; per round: "
              f"{', '.join(f'{x:.1f}' for x in pairs)} ms (target < 5 ms: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--sizes", default="10000,100000", help="submit sizes")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--latest-rows", type=int, default=1_000_000, help="0: skip")
    parser.add_argument("--skip-workers", action="store_true")
    parser.add_argument("--rounds", type=int, default=7,
                        help="paired loop and 1-worker runs (ABBA order); the overhead is the "
                             "median of the pairs' differences with its 90 %% interval")
    parser.add_argument("--loop-poll", action=argparse.BooleanOptionalAction, default=True,
                        help="the loop round runs the worker round's batch_status poll (every "
                             "50 ms, another process), so the two differ by the queue only; "
                             "--no-loop-poll: the bare loop (sessions 1-7)")
    parser.add_argument("--latest-url", action="append", default=[], metavar="BACKEND=URL",
                        help="reuse this catalog for --latest (built by an earlier run: "
                             "bulk_scale.fast_load, kept); default: a throwaway one")
    parser.add_argument("--redis", default=os.environ.get("MONO_QUANT_TEST_REDIS",
                                                         "redis://127.0.0.1:6379"))
    args = parser.parse_args()
    broker = args.redis.rstrip("/") + "/8"
    sizes = [int(x) for x in args.sizes.split(",") if x]
    backends = args.backends.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="mq-bench-"))
    r = redis.Redis.from_url(broker)
    r.flushdb()
    load_start = tuple(round(x, 2) for x in os.getloadavg())
    print(f"load average (1, 5, 15 min) at the start: {load_start}", flush=True)
    try:
        rows = {} if args.skip_workers else workers_part(args.jobs, broker, tmp,
                                                        args.rounds, args.loop_poll)
        load_after_workers = tuple(round(x, 2) for x in os.getloadavg())
        latest_urls = dict(kv.split("=", 1) for kv in args.latest_url)
        results = bulk_part(sizes, backends, args.latest_rows, broker, tmp, latest_urls)
    finally:
        r.flushdb()
    if rows:
        print_workers(rows, args.jobs, args.loop_poll)
        main = [c / args.jobs * 1e3 for c in MAIN_CPU]
        print(f"CPU of the worker's main process per job (Celery's consumer: fetch, ack, "
              f"events, dispatch): median {statistics.median(main):.2f} ms; per round: "
              f"{', '.join(f'{x:.2f}' for x in main)} ms")
        cycles = [w - lp for lp, w in zip(CYCLES[LOOP], CYCLES[ONE], strict=True)]
        print(f"median per-job cycle (one job's end to the next one's), 1 worker minus the "
              f"loop: median {statistics.median(cycles):.1f} ms over {len(cycles)} pairs; "
              f"per round: {', '.join(f'{x:.1f}' for x in cycles)} ms (loop "
              f"{', '.join(f'{x:.1f}' for x in CYCLES[LOOP])}; worker "
              f"{', '.join(f'{x:.1f}' for x in CYCLES[ONE])} ms)")
        print(f"load average after the workers part: {load_after_workers}")
    print()
    print_bulk(results, sizes, backends, args.latest_rows)
    print(f"\nload average (1, 5, 15 min): at the start {load_start}, at the end "
          f"{tuple(round(x, 2) for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
