"""Settings, read once from the environment.

Every setting is an environment variable ``MONO_QUANT_<NAME>``, declared once in
:data:`VARIABLES` (name, default, meaning): the settings table in ``docs/settings.md`` is
generated from it (``python scripts/settings_table.py``), and reading an undeclared variable is
a bug caught at once. A URL setting wins over host/port parts.

The library (``mono_quant.quant``, ``io``, ``pipeline``) never reads these: its own switches
(``MONO_QUANT_COMPILE``, ``MONO_QUANT_COMPILE_MIN_NUMEL``) live in
:mod:`mono_quant.quant.options`.

Example:
    >>> from mono_quant.config import Settings
    >>> Settings.from_env({"MONO_QUANT_STALE_AFTER": "30"}).stale_after
    30.0
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from mono_quant.errors import BadConfigError

__all__ = ["VARIABLES", "Settings", "Variable", "get_settings", "settings_table"]

_PREFIX = "MONO_QUANT_"


#: The Celery broker when neither MONO_QUANT_BROKER_URL nor MONO_QUANT_REDIS_HOST is set.
#: Then no broker is *configured*: the embedded mode, where ``retry`` never publishes.
DEFAULT_BROKER_URL = "redis://localhost:6379/0"

#: Seconds a job may run before Celery raises SoftTimeLimitExceeded in it (job fails cleanly).
DEFAULT_SOFT_TIME_LIMIT = 3600
#: Seconds after which the job's process is killed (hard limit); must exceed the soft limit.
DEFAULT_TIME_LIMIT = 3900
#: Attempts before a job is failed for good (crashes of its worker count: then it is "poison").
DEFAULT_MAX_ATTEMPTS = 3
#: Seconds between heartbeats of a running job.
DEFAULT_HEARTBEAT_INTERVAL = 10.0
#: A running job whose heartbeat is older than this is presumed dead (reconcile, claim).
DEFAULT_STALE_AFTER = 120.0
#: First retry delay of a transient failure, doubled per attempt (with jitter), capped below.
DEFAULT_RETRY_BACKOFF = 5.0
DEFAULT_RETRY_BACKOFF_MAX = 600.0
# MONO_QUANT_RECONCILE_INTERVAL has no constant: it defaults to the heartbeat interval.
#: Seconds a worker asked to stop *cold* (SIGQUIT, or SIGTERM with ``REMAP_SIGTERM=SIGQUIT``)
#: lets its running job continue before cancelling it; the cancelled job's message goes back
#: to the broker for another worker. 0: cancel at once (Celery's default). Deployments set it
#: and give the container/unit a stop grace period longer than it.
DEFAULT_SOFT_SHUTDOWN_TIMEOUT = 0.0
#: Modules whose ``factory:`` callables jobs may import and run (comma-separated ``fnmatch``
#: patterns; ``pkg.*`` also matches ``pkg``; ``*`` allows every module). Factories are code:
#: only mono-quant's own demo models unless the operator trusts more.
DEFAULT_ALLOWED_FACTORIES = ("mono_quant.*",)
#: Jobs one manifest may expand to (jobs × matrix combinations), refused before any is built.
DEFAULT_MAX_JOBS_PER_BATCH = 10_000
#: Seconds a job that fits its device but not now (memory held by other jobs) waits before it
#: is offered to a worker again; it is not counted as an attempt.
DEFAULT_ADMISSION_RETRY = 30.0
#: Bytes of a sequential job's cached activations above which they go to the job's work
#: folder on disk (mono_quant.pipeline.activations.DEFAULT_OFFLOAD_BYTES, which this layer
#: cannot import; tests/pipeline/test_activations.py checks the two agree).
DEFAULT_ACTIVATION_OFFLOAD_BYTES = 1 << 30


T = TypeVar("T")


@dataclass(frozen=True)
class Variable:
    """One environment variable (or a group read together), as the settings table shows it."""

    #: Names without the ``MONO_QUANT_`` prefix.
    names: tuple[str, ...]
    #: The default, as people read it (Markdown).
    default: str
    #: What it does (Markdown).
    meaning: str


#: Every variable the service reads: the one home of their names, defaults and meanings.
VARIABLES: tuple[Variable, ...] = (
    Variable(("DATA_DIR",), "`data_dir` of the nearest `mono-quant.toml`, else the per-user "
             "data folder (`~/.local/share/mono-quant` on Linux)",
             "folder of the embedded catalog and artifacts (see the README's *Command line*)"),
    Variable(("CATALOG_URL",), "SQLite at `$MONO_QUANT_DATA_DIR/catalog.db`",
             "SQLAlchemy URL of the catalog (`postgresql+psycopg://…` when deployed); wins over "
             "the `DB_*` parts"),
    Variable(("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"),
             "unset, `5432`, `mono_quant`, `postgres`, unset",
             "PostgreSQL catalog from parts, used when `MONO_QUANT_CATALOG_URL` is unset and "
             "`DB_HOST` is set"),
    Variable(("STORAGE_ROOT",), "`$MONO_QUANT_DATA_DIR/artifacts`",
             "root folder of artifacts (a shared volume in a fleet), or an object store's URL: "
             "`s3://bucket/prefix`, `gs://…`, `az://…` with the `s3`, `gcs` or `azure` extra "
             "(docs/object-stores.md); `file://` is a folder. Any other URL is refused"),
    Variable(("BROKER_URL",), f"`{DEFAULT_BROKER_URL}`",
             "Celery broker; wins over the `REDIS_*` parts. With neither it nor "
             "`MONO_QUANT_REDIS_HOST` set no broker is *configured* (the embedded mode): "
             "`retry` then never publishes"),
    Variable(("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD"),
             "unset, `6379`, `0`, unset",
             "broker from parts, used when `MONO_QUANT_BROKER_URL` is unset and `REDIS_HOST` is "
             "set"),
    Variable(("SOFT_TIME_LIMIT",), f"`{DEFAULT_SOFT_TIME_LIMIT}`",
             "seconds a job may run before it is asked to stop (it fails cleanly)"),
    Variable(("TIME_LIMIT",), f"`{DEFAULT_TIME_LIMIT}` (at least soft + 60)",
             "seconds after which the job's process is killed; must exceed the soft limit"),
    Variable(("VISIBILITY_TIMEOUT",), "time limit + `600`",
             "seconds before Redis redelivers an unacknowledged message; must exceed the time "
             "limit"),
    Variable(("MAX_ATTEMPTS",), f"`{DEFAULT_MAX_ATTEMPTS}`",
             "attempts per job (a manifest may set its own); a job whose attempts keep dying "
             "with their worker is failed as `poison`"),
    Variable(("HEARTBEAT_INTERVAL",), f"`{DEFAULT_HEARTBEAT_INTERVAL:g}`",
             "seconds between heartbeats (and progress updates) of a running job"),
    Variable(("STALE_AFTER",), f"`{DEFAULT_STALE_AFTER:g}`",
             "a running job whose heartbeat is older than this is presumed dead (reconcile "
             "re-enqueues it); must exceed twice the heartbeat interval"),
    Variable(("RECONCILE_INTERVAL",), "the heartbeat interval",
             "seconds between the reconcile sweeps every worker runs (one at a time under a "
             "catalog lock); a dead worker's job is re-run within `STALE_AFTER` plus this; `0`: "
             "workers do not sweep; must be below `STALE_AFTER`"),
    Variable(("RETRY_BACKOFF", "RETRY_BACKOFF_MAX"),
             f"`{DEFAULT_RETRY_BACKOFF:g}`, `{DEFAULT_RETRY_BACKOFF_MAX:g}`",
             "first delay (s) before retrying a transient failure, doubled per attempt with "
             "jitter, and its cap"),
    Variable(("SOFT_SHUTDOWN_TIMEOUT",), f"`{DEFAULT_SOFT_SHUTDOWN_TIMEOUT:g}`",
             "seconds a worker stopping *cold* (SIGQUIT, or SIGTERM with "
             "`REMAP_SIGTERM=SIGQUIT`) lets its running job finish before cancelling it and "
             "putting its message back on the queue (Celery's `worker_soft_shutdown_timeout`); "
             "`deploy/` sets `300` and stop grace periods of `360`"),
    Variable(("TASK_EVENTS",), "`off`",
             "`on`: workers send Celery task events (received, started, succeeded, ...) for "
             "celery-exporter; `off` (Celery's own default): worker events only, which saves "
             "each job about 1 ms of the worker's main-process CPU and 4-5 ms of wall time "
             "between jobs (docs/performance.md, issue 16). Flower turns task events on at run "
             "time by itself; celery-exporter needs `on` (or `celery control enable_events` "
             "after each worker start)"),
    Variable(("ALLOWED_FACTORIES",), "`" + ",".join(DEFAULT_ALLOWED_FACTORIES) + "`",
             "comma-separated module patterns (`pkg.*`, `pkg.mod`; `*` allows all) whose "
             "`factory:` callables jobs may import and run; checked at `submit`, `run`, "
             "`quantize` and again in the worker before anything is imported (README: Trust "
             "model)"),
    Variable(("MAX_JOBS_PER_BATCH",), f"`{DEFAULT_MAX_JOBS_PER_BATCH}`",
             "jobs one manifest may expand to (jobs × matrix combinations); a bigger manifest "
             "is refused before any job is built"),
    Variable(("ADMISSION",), "`on`",
             "`on`: before claiming a job a worker estimates its memory from the checkpoint "
             "headers and reserves it on its GPU (or host); `off`: no admission check "
             "(docs/operations.md: Admission)"),
    Variable(("ADMISSION_RETRY",), f"`{DEFAULT_ADMISSION_RETRY:g}`",
             "seconds a job that fits its device but not now waits before it is offered "
             "again (not counted as an attempt)"),
    Variable(("ACTIVATION_OFFLOAD_BYTES",), f"`{DEFAULT_ACTIVATION_OFFLOAD_BYTES}` (1 GiB)",
             "bytes of a sequential job's cached activations (one block's inputs for every "
             "calibration batch) above which they are kept on disk in the job's work folder, "
             "one file per batch, instead of host memory; `0`: always on disk "
             "(docs/sequential.md)"),
    Variable(("SERVE_TOKEN",), "unset",
             "the token `mono-quant serve` requires (`--token` wins); unset: no token"),
)
_DECLARED = frozenset(n for v in VARIABLES for n in v.names)


def settings_table(variables: tuple[Variable, ...] = VARIABLES) -> str:
    """The Markdown table of ``variables`` (docs/settings.md is made of these)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for v in variables:
        first, *rest = v.names
        names = ", ".join([f"`{_PREFIX}{first}`", *(f"`_{n}`" for n in rest)])
        rows.append(f"| {names} | {v.default} | {v.meaning} |")
    return "\n".join(rows) + "\n"


class _Env:
    """Typed reads of ``MONO_QUANT_*`` variables from one mapping (``os.environ`` usually)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str, default: str | None = None) -> str | None:
        if name not in _DECLARED:  # a bug of ours: every variable is declared in VARIABLES
            raise KeyError(f"{_PREFIX}{name} is read but not declared in config.VARIABLES")
        value = self.environ.get(_PREFIX + name)
        return default if value is None or value == "" else value

    def _number(self, name: str, default: T, cast: Callable[[str], T], expected: str) -> T:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            return cast(raw)
        except ValueError as e:
            raise BadConfigError(
                f"{_PREFIX}{name}={raw!r} is not {expected}; set it to {expected} or unset it"
            ) from e

    def integer(self, name: str, default: int) -> int:
        return self._number(name, default, int, "a whole number")

    def seconds(self, name: str, default: float) -> float:
        return self._number(name, default, float, "a number (seconds)")


def _catalog_url(env: _Env, data_dir: Path) -> str:
    """MONO_QUANT_CATALOG_URL, else PostgreSQL from MONO_QUANT_DB_* parts, else SQLite."""
    url = env.text("CATALOG_URL")
    if url:
        return url
    host = env.text("DB_HOST")
    if host:
        from urllib.parse import quote

        user = quote(env.text("DB_USER", "postgres") or "postgres", safe="")
        password = env.text("DB_PASSWORD")
        auth = f"{user}:{quote(password, safe='')}" if password else user
        port = env.integer("DB_PORT", 5432)
        name = env.text("DB_NAME", "mono_quant")
        return f"postgresql+psycopg://{auth}@{host}:{port}/{name}"
    return f"sqlite:///{(data_dir / 'catalog.db').resolve()}"


def _broker_url(env: _Env) -> str:
    """MONO_QUANT_BROKER_URL, else Redis from MONO_QUANT_REDIS_* parts, else the default."""
    url = env.text("BROKER_URL")
    if url:
        return url
    host = env.text("REDIS_HOST")
    if host:
        from urllib.parse import quote

        password = env.text("REDIS_PASSWORD")
        auth = f":{quote(password, safe='')}@" if password else ""
        port, db = env.integer("REDIS_PORT", 6379), env.integer("REDIS_DB", 0)
        return f"redis://{auth}{host}:{port}/{db}"
    return DEFAULT_BROKER_URL


def _storage_root(value: str | None, data_dir: Path) -> Path | str:
    """A folder (resolved Path, ``file://`` accepted), or an object store's URL whose backend
    is installed; any other URL is a BadConfigError naming the setting (never a local folder
    called ``s3:``)."""
    from mono_quant._storage_url import check_store_url, is_url, local_path

    if not value:
        return (data_dir / "artifacts").resolve()
    if is_url(value):
        return check_store_url(value, f"{_PREFIX}STORAGE_ROOT")
    return Path(local_path(value)).expanduser().resolve()


@dataclass(frozen=True)
class Settings:
    """Process-wide settings (see the README's settings table)."""

    #: MONO_QUANT_DATA_DIR — folder for the embedded catalog and artifacts; default: the
    #: nearest mono-quant.toml's ``data_dir``, else the per-user data folder (mono_quant.home).
    data_dir: Path
    #: MONO_QUANT_CATALOG_URL (or MONO_QUANT_DB_HOST/PORT/NAME/USER/PASSWORD) — SQLAlchemy URL
    #: of the catalog; default: SQLite at ``<data_dir>/catalog.db``.
    catalog_url: str
    #: MONO_QUANT_STORAGE_ROOT — root folder of artifacts (a Path), or an object store's URL
    #: (a str: ``s3://bucket/prefix``, ``gs://…``, ``az://…``; docs/object-stores.md);
    #: default ``<data_dir>/artifacts``.
    storage_root: Path | str
    #: MONO_QUANT_BROKER_URL (or MONO_QUANT_REDIS_HOST/PORT/DB/PASSWORD) — Celery broker.
    broker_url: str
    #: Whether either of those is set. False is the embedded mode: ``run`` executes jobs and
    #: ``retry`` marks them for it instead of publishing to DEFAULT_BROKER_URL.
    broker_configured: bool = True
    #: MONO_QUANT_SOFT_TIME_LIMIT — seconds before a job is asked to stop (fails cleanly).
    soft_time_limit: int = DEFAULT_SOFT_TIME_LIMIT
    #: MONO_QUANT_TIME_LIMIT — seconds before a job's process is killed.
    time_limit: int = DEFAULT_TIME_LIMIT
    #: MONO_QUANT_VISIBILITY_TIMEOUT — seconds before Redis redelivers an unacknowledged
    #: message; must exceed MONO_QUANT_TIME_LIMIT (default: time limit + 10 minutes).
    visibility_timeout: int = DEFAULT_TIME_LIMIT + 600
    #: MONO_QUANT_MAX_ATTEMPTS — default attempts per job (a manifest may set its own).
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: MONO_QUANT_HEARTBEAT_INTERVAL — seconds between heartbeats of a running job.
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    #: MONO_QUANT_STALE_AFTER — seconds without heartbeat after which a job is presumed dead.
    stale_after: float = DEFAULT_STALE_AFTER
    #: MONO_QUANT_RETRY_BACKOFF / MONO_QUANT_RETRY_BACKOFF_MAX — transient-retry delays (s).
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    #: MONO_QUANT_SOFT_SHUTDOWN_TIMEOUT — seconds a stopping worker waits for its running job
    #: before cancelling (and requeueing) it; Celery's ``worker_soft_shutdown_timeout``.
    soft_shutdown_timeout: float = DEFAULT_SOFT_SHUTDOWN_TIMEOUT
    #: MONO_QUANT_RECONCILE_INTERVAL — seconds between the reconcile sweeps each worker runs
    #: (one at a time fleet-wide, under a catalog lock): a job whose worker died is re-run by
    #: a live worker within STALE_AFTER plus this. Default: the heartbeat interval; 0: workers
    #: do not sweep (then run ``mono-quant reconcile`` from cron).
    reconcile_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    #: MONO_QUANT_ALLOWED_FACTORIES — module patterns ``factory:`` sources may name; checked
    #: at submit, ``run``, ``quantize`` and in the worker before anything is imported.
    allowed_factories: tuple[str, ...] = DEFAULT_ALLOWED_FACTORIES
    #: MONO_QUANT_MAX_JOBS_PER_BATCH — jobs one manifest may expand to.
    max_jobs_per_batch: int = DEFAULT_MAX_JOBS_PER_BATCH
    #: Where ``data_dir`` came from (for ``mono-quant where``).
    data_dir_source: str = "MONO_QUANT_DATA_DIR"
    #: The mono-quant.toml that filled in settings, if one was found.
    config_file: Path | None = None
    #: MONO_QUANT_SERVE_TOKEN — the token ``mono-quant serve`` requires (default: none).
    serve_token: str | None = None
    #: MONO_QUANT_ADMISSION — estimate and reserve a job's memory before claiming it.
    admission: bool = True
    #: MONO_QUANT_TASK_EVENTS — workers send Celery task events (celery-exporter); default
    #: off, Celery's own: worker events only (Flower's ``enable_events`` broadcasts turn task
    #: events on at run time).
    task_events: bool = False
    #: MONO_QUANT_ADMISSION_RETRY — seconds before a job that does not fit now is offered again.
    admission_retry: float = DEFAULT_ADMISSION_RETRY
    #: MONO_QUANT_ACTIVATION_OFFLOAD_BYTES — a sequential job's activation cache beyond this
    #: many bytes goes to disk.
    activation_offload_bytes: int = DEFAULT_ACTIVATION_OFFLOAD_BYTES

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: ``os.environ``), filled in from the
        nearest mono-quant.toml and the per-user data folder (:mod:`mono_quant.home`)."""
        from mono_quant.home import find_home

        home = find_home(os.environ if environ is None else environ)
        env = _Env(home.environ)
        data_dir = Path(env.text("DATA_DIR") or ".").resolve()  # find_home always sets it
        timing = _timing(env)
        attempts = env.integer("MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)
        if attempts < 1:
            raise BadConfigError(f"{_PREFIX}MAX_ATTEMPTS={attempts}: expected at least 1")
        max_jobs = env.integer("MAX_JOBS_PER_BATCH", DEFAULT_MAX_JOBS_PER_BATCH)
        if max_jobs < 1:
            raise BadConfigError(f"{_PREFIX}MAX_JOBS_PER_BATCH={max_jobs}: expected at least 1")
        factories = tuple(p.strip() for p in (env.text("ALLOWED_FACTORIES") or "").split(",")
                          if p.strip())
        return cls(
            data_dir=data_dir,
            catalog_url=_catalog_url(env, data_dir),
            storage_root=_storage_root(env.text("STORAGE_ROOT"), data_dir),
            broker_url=_broker_url(env),
            broker_configured=bool(env.text("BROKER_URL") or env.text("REDIS_HOST")),
            max_attempts=attempts,
            retry_backoff=env.seconds("RETRY_BACKOFF", DEFAULT_RETRY_BACKOFF),
            retry_backoff_max=env.seconds("RETRY_BACKOFF_MAX", DEFAULT_RETRY_BACKOFF_MAX),
            allowed_factories=factories or DEFAULT_ALLOWED_FACTORIES,
            max_jobs_per_batch=max_jobs,
            data_dir_source=home.source,
            config_file=home.config_file,
            serve_token=env.text("SERVE_TOKEN") or None,
            admission=_on_off(env, "ADMISSION"),
            task_events=_on_off(env, "TASK_EVENTS", default="off"),
            admission_retry=env.seconds("ADMISSION_RETRY", DEFAULT_ADMISSION_RETRY),
            activation_offload_bytes=_non_negative(env, "ACTIVATION_OFFLOAD_BYTES",
                                                   DEFAULT_ACTIVATION_OFFLOAD_BYTES),
            **timing,
        )


def _timing(env: _Env) -> dict[str, float]:
    """The time limits, heartbeat, staleness and sweep settings, checked against each other."""
    soft = env.integer("SOFT_TIME_LIMIT", DEFAULT_SOFT_TIME_LIMIT)
    hard = env.integer("TIME_LIMIT", max(DEFAULT_TIME_LIMIT, soft + 60))
    visibility = env.integer("VISIBILITY_TIMEOUT", hard + 600)
    heartbeat = env.seconds("HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL)
    stale = env.seconds("STALE_AFTER", DEFAULT_STALE_AFTER)
    if not 0 < soft < hard < visibility:
        raise BadConfigError(
            f"time limits must satisfy 0 < {_PREFIX}SOFT_TIME_LIMIT ({soft}) < "
            f"{_PREFIX}TIME_LIMIT ({hard}) < {_PREFIX}VISIBILITY_TIMEOUT ({visibility}): "
            "Redis must not redeliver a job that may still be running"
        )
    if not 0 < 2 * heartbeat < stale:
        raise BadConfigError(
            f"{_PREFIX}STALE_AFTER ({stale}) must exceed twice "
            f"{_PREFIX}HEARTBEAT_INTERVAL ({heartbeat}) so a live job is never presumed dead"
        )
    soft_shutdown = env.seconds("SOFT_SHUTDOWN_TIMEOUT", DEFAULT_SOFT_SHUTDOWN_TIMEOUT)
    if soft_shutdown < 0:
        raise BadConfigError(
            f"{_PREFIX}SOFT_SHUTDOWN_TIMEOUT={soft_shutdown}: expected seconds >= 0 "
            "(0 cancels a running job at once on a cold shutdown)"
        )
    sweep = env.seconds("RECONCILE_INTERVAL", heartbeat)
    if not 0 <= sweep < stale:
        raise BadConfigError(
            f"{_PREFIX}RECONCILE_INTERVAL={sweep}: expected seconds >= 0 (0: workers do not "
            f"sweep) and below {_PREFIX}STALE_AFTER ({stale}), or a dead worker's job waits "
            "for the next sweep longer than for its heartbeat to go stale"
        )
    return {"soft_time_limit": soft, "time_limit": hard, "visibility_timeout": visibility,
            "heartbeat_interval": heartbeat, "stale_after": stale,
            "soft_shutdown_timeout": soft_shutdown, "reconcile_interval": sweep}


def _non_negative(env: _Env, name: str, default: int) -> int:
    value = env.integer(name, default)
    if value < 0:
        raise BadConfigError(f"{_PREFIX}{name}={value}: expected 0 or more bytes")
    return value


def _on_off(env: _Env, name: str, default: str = "on") -> bool:
    raw = (env.text(name) or default).strip().lower()
    if raw not in ("on", "off"):
        raise BadConfigError(f"{_PREFIX}{name}={raw!r}: expected 'on' or 'off'")
    return raw == "on"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read from the environment on first use."""
    return Settings.from_env()
