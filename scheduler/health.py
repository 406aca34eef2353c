"""Health checks of a deployment: the broker, the catalog and the workers.

``mono-quant health`` runs them; container health checks and probes call that command. Each
check returns a :class:`Check` with a one-line reason, never raises: an operator reading a
failed health check must learn *what* is down and *why* from one screen.

* **broker** — connect to ``MONO_QUANT_BROKER_URL`` and, for Redis, ``PING`` it. A Redis
  whose ``maxmemory-policy`` may evict keys is reported (it would silently drop queued jobs).
* **catalog** — connect to ``MONO_QUANT_CATALOG_URL`` and check the schema is at the
  migration this mono-quant ships (``Catalog.require_schema``). A missing SQLite file is
  reported, not created.
* **worker** — ``app.control.ping``: a worker answers from the same event loop that consumes
  its queues, so a reply proves the node is consuming, not merely that a process exists.
  With node names, each named node must answer; without, any one reply is enough.

Example:
    >>> from mono_quant.scheduler.health import Check, overall_ok
    >>> overall_ok([Check("broker", True, "PONG"), Check("worker", False, "none", False)])
    True
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "Check",
    "check_broker",
    "check_catalog",
    "check_workers",
    "expand_node_name",
    "overall_ok",
    "run_checks",
]

#: Seconds each check may take by default (``mono-quant health --timeout``).
DEFAULT_TIMEOUT = 5.0

#: Redis eviction policies that never drop keys (a queue is a key).
_SAFE_EVICTION = frozenset({"noeviction"})


@dataclass(frozen=True)
class Check:
    """One check's result. ``required=False``: reported, but does not fail the whole check."""

    name: str
    ok: bool
    detail: str
    required: bool = True
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def overall_ok(checks: Sequence[Check]) -> bool:
    """True when every required check passed."""
    return all(c.ok for c in checks if c.required)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def sanitize_url(url: str) -> str:
    """A broker URL with its password masked (kombu's own sanitizer)."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def check_broker(url: str, timeout: float = DEFAULT_TIMEOUT) -> Check:
    """Connect to the broker; for Redis also PING it and read its eviction policy."""
    from kombu import Connection

    t0 = time.perf_counter()
    where = sanitize_url(url)
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    try:
        with Connection(url, connect_timeout=timeout, transport_options=options) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                   timeout=timeout)
            client = getattr(conn.default_channel, "client", None)
            if client is None:  # not Redis (e.g. AMQP): the connection is the check
                return Check("broker", True, f"{where}: connected", seconds=_since(t0))
            t_ping = time.perf_counter()
            client.ping()
            rtt_ms = (time.perf_counter() - t_ping) * 1000
            detail = f"{where}: Redis {_redis_version(client)} answered PING in {rtt_ms:.1f} ms"
            warning = _eviction_warning(client)
    except Exception as e:  # any failure to connect is the answer of this check
        return Check("broker", False, f"{where} is unreachable: {_reason(e)}",
                     seconds=_since(t0))
    return Check("broker", True, detail + (f"; WARNING: {warning}" if warning else ""),
                 seconds=_since(t0))


def _redis_version(client: Any) -> str:
    try:
        return str(client.info("server").get("redis_version", "?"))
    except Exception:  # INFO may be renamed or disabled on managed Redis
        return "?"


def _eviction_warning(client: Any) -> str | None:
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except Exception:  # CONFIG is often disabled on managed Redis: nothing to say then
        return None
    if policy is None or policy in _SAFE_EVICTION:
        return None
    return (f"maxmemory-policy is {policy!r}: Redis may evict queued jobs under memory "
            "pressure; set it to 'noeviction'")


def check_catalog(url: str, timeout: float = DEFAULT_TIMEOUT) -> Check:
    """Connect to the catalog and check its schema is at this mono-quant's head revision."""
    from sqlalchemy.engine import make_url

    from mono_quant.catalog.db import Catalog, head_revision, make_engine, redact

    t0 = time.perf_counter()
    where = redact(url)
    try:
        parsed = make_url(url)
    except Exception as e:
        return Check("catalog", False, f"{where}: not a SQLAlchemy URL ({_reason(e)})")
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            from pathlib import Path

            if not Path(database).expanduser().exists():  # never create one by checking
                return Check("catalog", False, f"{where}: the SQLite file does not exist; "
                             "run `mono-quant db upgrade`", seconds=_since(t0))
    else:
        kwargs["connect_args"] = {"connect_timeout": max(1, round(timeout))}
    catalog = None
    try:
        catalog = Catalog(engine=make_engine(url, **kwargs))
        catalog.require_schema()  # raises unless the database is at head_revision()
    except Exception as e:  # unreachable, no schema, wrong revision: all reported the same way
        return Check("catalog", False, str(e) if _is_ours(e) else f"{where}: {_reason(e)}",
                     seconds=_since(t0))
    finally:
        if catalog is not None:
            catalog.dispose()
    return Check("catalog", True, f"{where}: schema at revision {head_revision()} (head)",
                 seconds=_since(t0))


def _is_ours(e: BaseException) -> bool:
    from mono_quant.errors import MonoQuantError

    return isinstance(e, MonoQuantError)


def expand_node_name(name: str) -> str:
    """A worker node name expanded exactly as ``celery worker --hostname`` expands it.

    ``gpu0@%h`` → ``gpu0@<this host>``, so a container's health check names its own worker
    the way its command line does. (As in Celery, a name without ``@`` is a host:
    ``box`` → ``celery@box``.)
    """
    from celery.utils.nodenames import default_nodename, host_format

    return host_format(default_nodename(name))


def check_workers(app: Any, timeout: float = DEFAULT_TIMEOUT,
                  names: Sequence[str] = ()) -> Check:
    """Ping workers: every node in ``names`` must answer, or any one when ``names`` is empty."""
    t0 = time.perf_counter()
    wanted = [expand_node_name(n) for n in names]
    try:
        replies = app.control.ping(destination=wanted or None, timeout=timeout,
                                   limit=len(wanted) if wanted else 1)
    except Exception as e:  # the broker went away between the checks
        return Check("worker", False, f"cannot ping workers: {_reason(e)}", seconds=_since(t0))
    answered = sorted(node for reply in replies or [] for node in reply)
    if wanted:
        missing = [n for n in wanted if n not in answered]
        if missing:
            return Check("worker", False,
                         f"{', '.join(missing)} did not answer a ping within {timeout:g} s"
                         + (f" (answered: {', '.join(answered)})" if answered else ""),
                         seconds=_since(t0))
    elif not answered:
        return Check("worker", False, f"no worker answered a ping within {timeout:g} s",
                     seconds=_since(t0))
    return Check("worker", True, f"{', '.join(answered)} answered in {_since(t0):.2f} s",
                 seconds=_since(t0))


def run_checks(*, broker_url: str, catalog_url: str, app: Any | None = None,
               timeout: float = DEFAULT_TIMEOUT, workers: Sequence[str] = (),
               require_worker: bool = True, check_catalog_too: bool = True) -> list[Check]:
    """Broker, catalog and worker checks, in order; ``require_worker=False`` leaves out the
    worker, ``check_catalog_too=False`` the catalog.

    The worker check is not attempted, and fails, when the broker is down: no ping can get
    through.
    """
    broker = check_broker(broker_url, timeout)
    checks = [broker]
    if check_catalog_too:
        checks.append(check_catalog(catalog_url, timeout))
    if not require_worker:
        return checks
    if not broker.ok:
        checks.append(Check("worker", False, "not pinged: the broker is unreachable"))
    else:
        if app is None:
            from mono_quant.worker.app import app
        checks.append(check_workers(app, timeout, workers))
    return checks


def _since(t0: float) -> float:
    return round(time.perf_counter() - t0, 4)
