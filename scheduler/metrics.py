"""Prometheus metrics of a deployment, from the catalog and the broker.

``mono-quant metrics --port 9818`` serves :func:`render` on ``/metrics`` in the Prometheus
text format (version 0.0.4). Every scrape reads the source of truth directly — the catalog
for jobs and artifacts, Redis for queue lengths — so any number of exporters can run and none
keeps state. A component that does not answer gives ``mono_quant_up{component=…} 0`` and
its series are left out; the scrape itself still succeeds.

Series:

* ``mono_quant_up{component}`` — 1 when the catalog / broker answered this scrape (the
  broker's queues are read from Redis only; with another broker its series are absent).
* ``mono_quant_jobs{queue,state}`` — jobs in the catalog, every state of every known queue
  (zeros included, so a series does not vanish when its last job leaves a state).
* ``mono_quant_attempts{outcome}`` — attempts by outcome (``running`` while unfinished);
  ``lost`` counts attempts that died with their worker.
* ``mono_quant_artifacts`` — artifacts recorded (a count over the primary key; their total
  size is left out on purpose: summing it reads the whole table on every scrape).
* ``mono_quant_queue_length{queue}`` — messages waiting in a Redis queue (``LLEN``; the
  number KEDA scales on). A delivered message leaves the list for the ``unacked`` hash, so
  running jobs are not in it; they are in ``mono_quant_unacked_messages``.
* ``mono_quant_scrape_duration_seconds``.

Example:
    >>> print(format_family("mono_quant_up", "gauge", "Answered.", [({"component": "x"}, 1)]))
    # HELP mono_quant_up Answered.
    # TYPE mono_quant_up gauge
    mono_quant_up{component="x"} 1
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mono_quant.scheduler.broker import UNACKED_KEY

__all__ = ["CONTENT_TYPE", "MetricsSource", "format_family", "render", "serve"]

#: The Prometheus text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Queues always reported (the defaults of ``mono-quant worker``), even before any job.
DEFAULT_QUEUES = ("cpu", "gpu")
#: The Redis hash where kombu keeps delivered, unacknowledged messages.

Sample = tuple[dict[str, str], float]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def format_family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> str:
    """One metric family: ``# HELP``, ``# TYPE`` and one line per sample."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        tag = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{tag}}} {_number(value)}" if tag else f"{name} {_number(value)}")
    return "\n".join(lines)


class MetricsSource:
    """The catalog and broker one exporter reads; thread-safe, reused across scrapes.

    ``queues``: extra queue names to report besides those jobs in the catalog use.
    """

    def __init__(self, catalog_url: str, broker_url: str, *, queues: Sequence[str] = (),
                 timeout: float = 5.0) -> None:
        self.catalog_url = catalog_url
        self.broker_url = broker_url
        self.queues = tuple(dict.fromkeys([*DEFAULT_QUEUES, *queues]))
        self.timeout = timeout
        self._catalog: Any = None
        self._redis: Any = None
        self._lock = threading.Lock()

    def _get_catalog(self) -> Any:
        with self._lock:
            if self._catalog is None:
                from sqlalchemy.engine import make_url

                from mono_quant.catalog.db import Catalog, make_engine

                kwargs: dict[str, Any] = {}
                if make_url(self.catalog_url).get_backend_name() == "postgresql":
                    kwargs["connect_args"] = {"connect_timeout": max(1, round(self.timeout))}
                self._catalog = Catalog(engine=make_engine(self.catalog_url, **kwargs))
            return self._catalog

    def _get_redis(self) -> Any:
        if not self.broker_url.startswith(("redis://", "rediss://")):
            return None
        with self._lock:
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(
                    self.broker_url, socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                )
            return self._redis

    def catalog_counts(self) -> dict[str, Any]:
        """Job counts by (queue, state), attempt counts by outcome, the artifact count."""
        from sqlalchemy import func, select

        from mono_quant.catalog.models import Artifact, Attempt, Job

        catalog = self._get_catalog()
        with catalog.begin() as session:
            jobs = {(q, getattr(s, "value", s)): n for s, q, n in session.execute(
                select(Job.status, Job.queue, func.count()).group_by(Job.status, Job.queue))}
            attempts = {getattr(o, "value", o) if o is not None else "running": n
                        for o, n in session.execute(
                            select(Attempt.outcome, func.count()).group_by(Attempt.outcome))}
            artifacts = session.execute(select(func.count()).select_from(Artifact)).scalar_one()
        return {"jobs": jobs, "attempts": attempts, "artifacts": int(artifacts)}

    def queue_lengths(self, queues: Iterable[str]) -> tuple[dict[str, int], int] | None:
        """(LLEN per queue, HLEN of the unacked hash); None when the broker is not Redis."""
        client = self._get_redis()
        if client is None:
            return None
        names = list(dict.fromkeys(queues))
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
        pipe.hlen(UNACKED_KEY)
        *lengths, unacked = pipe.execute()
        return dict(zip(names, (int(n) for n in lengths), strict=True)), int(unacked)

    def close(self) -> None:
        with self._lock:
            if self._catalog is not None:
                self._catalog.dispose()
            if self._redis is not None:
                self._redis.close()
            self._catalog = self._redis = None


def render(source: MetricsSource) -> str:
    """The whole exposition, read fresh from the catalog and the broker."""
    from mono_quant.catalog.models import AttemptOutcome, JobStatus

    t0 = time.perf_counter()
    up: list[Sample] = []
    families: list[str] = []
    queues = list(source.queues)
    try:
        counts = source.catalog_counts()
    except Exception as e:  # reported as up=0; the scrape must still answer
        counts = None
        _note("catalog", e)
    up.append(({"component": "catalog"}, 1 if counts is not None else 0))
    if counts is not None:
        queues += sorted({q for q, _ in counts["jobs"]} - set(queues))
        families.append(format_family(
            "mono_quant_jobs", "gauge", "Jobs in the catalog by queue and state.",
            [({"queue": q, "state": s.value}, counts["jobs"].get((q, s.value), 0))
             for q in queues for s in JobStatus]))
        outcomes = ["running", *(o.value for o in AttemptOutcome)]
        families.append(format_family(
            "mono_quant_attempts", "gauge",
            "Job attempts by outcome (running: not finished; lost: died with its worker).",
            [({"outcome": o}, counts["attempts"].get(o, 0)) for o in outcomes]))
        families.append(format_family(
            "mono_quant_artifacts", "gauge", "Artifacts recorded in the catalog.",
            [({}, counts["artifacts"])]))
    try:
        broker = source.queue_lengths(queues)
    except Exception as e:
        broker = None
        _note("broker", e)
        up.append(({"component": "broker"}, 0))
    else:
        if broker is not None:  # a broker other than Redis is not read at all
            up.append(({"component": "broker"}, 1))
    if broker is not None:
        lengths, unacked = broker
        families.append(format_family(
            "mono_quant_queue_length", "gauge",
            "Messages waiting in a broker queue (Redis LLEN); running jobs are not counted.",
            [({"queue": q}, n) for q, n in lengths.items()]))
        families.append(format_family(
            "mono_quant_unacked_messages", "gauge",
            "Messages delivered to workers and not yet acknowledged (running jobs, retries "
            "waiting for their countdown).", [({}, unacked)]))
    families.insert(0, format_family(
        "mono_quant_up", "gauge", "Whether a component answered this scrape.", up))
    families.append(format_family(
        "mono_quant_scrape_duration_seconds", "gauge", "Seconds this scrape took.",
        [({}, round(time.perf_counter() - t0, 6))]))
    return "\n".join(families) + "\n"


def _note(component: str, e: BaseException) -> None:
    import logging

    logging.getLogger("mono_quant.metrics").warning(
        "metrics: the %s did not answer: %s", component, str(e).strip().splitlines()[:1])


class _Handler(BaseHTTPRequestHandler):
    source: MetricsSource  # set on the subclass made by serve()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, status, ctype = render(self.source).encode(), 200, CONTENT_TYPE
        elif path == "/":
            body, status, ctype = b"mono-quant metrics: see /metrics\n", 200, "text/plain"
        else:
            body, status, ctype = b"not found; see /metrics\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape is noise; failures are logged by render()


def serve(source: MetricsSource, host: str = "0.0.0.0", port: int = 9818) -> ThreadingHTTPServer:
    """A started-by-the-caller HTTP server answering ``/metrics`` (``port=0``: any free port).

    Call ``serve_forever()`` on the result (or run it in a thread) and ``shutdown()`` to stop.
    """
    handler = type("MetricsHandler", (_Handler,), {"source": source})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
