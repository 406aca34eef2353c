"""Settings, read once from the environment.

Every setting is an environment variable ``MONO_QUANT_<NAME>``; each one is documented where it
is defined below and in the README's settings table. A URL setting wins over host/port parts.

Example:
    >>> from mono_quant.config import get_settings
    >>> get_settings().compile in ("auto", "always", "never")
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from mono_quant.errors import BadConfigError

__all__ = ["Settings", "get_settings"]

_PREFIX = "MONO_QUANT_"


#: ``auto``: use a torch.compile CPU kernel for large tensors when a C++ compiler works;
#: ``always``: for every CPU tensor; ``never``: plain torch ops only.
DEFAULT_COMPILE = "auto"

#: Tensors with at least this many elements take the compiled CPU path under ``auto``.
DEFAULT_COMPILE_MIN_NUMEL = 1 << 20

#: The Celery broker when neither MONO_QUANT_BROKER_URL nor MONO_QUANT_REDIS_HOST is set.
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
#: Seconds a worker asked to stop *cold* (SIGQUIT, or SIGTERM with ``REMAP_SIGTERM=SIGQUIT``)
#: lets its running job continue before cancelling it; the cancelled job's message goes back
#: to the broker for another worker. 0: cancel at once (Celery's default). Deployments set it
#: and give the container/unit a stop grace period longer than it.
DEFAULT_SOFT_SHUTDOWN_TIMEOUT = 0.0


T = TypeVar("T")


class _Env:
    """Typed reads of ``MONO_QUANT_*`` variables from one mapping (``os.environ`` usually)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str, default: str | None = None) -> str | None:
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


@dataclass(frozen=True)
class Settings:
    """Process-wide settings (see the README's settings table)."""

    #: MONO_QUANT_DATA_DIR — folder for the embedded catalog and artifacts; default: the
    #: nearest mono-quant.toml's ``data_dir``, else the per-user data folder (mono_quant.home).
    data_dir: Path
    #: MONO_QUANT_COMPILE — ``auto`` | ``always`` | ``never`` (see DEFAULT_COMPILE).
    compile: str
    #: MONO_QUANT_COMPILE_MIN_NUMEL — size threshold for the compiled path under ``auto``.
    compile_min_numel: int
    #: MONO_QUANT_CATALOG_URL (or MONO_QUANT_DB_HOST/PORT/NAME/USER/PASSWORD) — SQLAlchemy URL
    #: of the catalog; default: SQLite at ``<data_dir>/catalog.db``.
    catalog_url: str
    #: MONO_QUANT_STORAGE_ROOT — root folder of artifacts; default ``<data_dir>/artifacts``.
    storage_root: Path
    #: MONO_QUANT_BROKER_URL (or MONO_QUANT_REDIS_HOST/PORT/DB/PASSWORD) — Celery broker.
    broker_url: str
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
    #: Where ``data_dir`` came from (for ``mono-quant where``).
    data_dir_source: str = "MONO_QUANT_DATA_DIR"
    #: The mono-quant.toml that filled in settings, if one was found.
    config_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: ``os.environ``), filled in from the
        nearest mono-quant.toml and the per-user data folder (:mod:`mono_quant.home`)."""
        from mono_quant.home import find_home

        home = find_home(os.environ if environ is None else environ)
        env = _Env(home.environ)
        compile_mode = (env.text("COMPILE", DEFAULT_COMPILE) or DEFAULT_COMPILE).lower()
        if compile_mode not in ("auto", "always", "never"):
            raise BadConfigError(
                f"{_PREFIX}COMPILE={compile_mode!r}: expected one of 'auto', 'always', 'never'"
            )
        data_dir = Path(env.text("DATA_DIR") or ".").resolve()  # find_home always sets it
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
        attempts = env.integer("MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)
        if attempts < 1:
            raise BadConfigError(f"{_PREFIX}MAX_ATTEMPTS={attempts}: expected at least 1")
        return cls(
            data_dir=data_dir,
            compile=compile_mode,
            compile_min_numel=env.integer("COMPILE_MIN_NUMEL", DEFAULT_COMPILE_MIN_NUMEL),
            catalog_url=_catalog_url(env, data_dir),
            storage_root=Path(env.text("STORAGE_ROOT") or data_dir / "artifacts").resolve(),
            broker_url=_broker_url(env),
            soft_time_limit=soft,
            time_limit=hard,
            visibility_timeout=visibility,
            max_attempts=attempts,
            heartbeat_interval=heartbeat,
            stale_after=stale,
            retry_backoff=env.seconds("RETRY_BACKOFF", DEFAULT_RETRY_BACKOFF),
            retry_backoff_max=env.seconds("RETRY_BACKOFF_MAX", DEFAULT_RETRY_BACKOFF_MAX),
            soft_shutdown_timeout=soft_shutdown,
            data_dir_source=home.source,
            config_file=home.config_file,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read from the environment on first use."""
    return Settings.from_env()
