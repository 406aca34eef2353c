"""kombu's Redis transport with one reused client per channel for its one-off commands.

kombu's Redis ``Channel.conn_or_acquire`` builds a new ``redis.Redis`` object for every
command it runs outside its event loop: each fanout ``PUBLISH`` of a Celery event, each ack,
each restore. Building one costs more CPU than the command it sends (a fanout publish took
about 330 µs of CPU with a new client and 160 µs with a reused one here), and a worker pays
it several times per job in its main process, on the path between one job and the next
(docs/performance.md, issue 16). A ``redis.Redis`` object holds no connection of its own (it
takes one from the pool per command and gives it back), so one per channel does the same
work; it is rebuilt whenever kombu replaces the channel's connection pool (after a
reconnect), so it never outlives the pool it was made for.

:func:`transport_for` names this transport for a plain ``redis://`` broker only; other
schemes (``rediss://``, ``sentinel://``) keep kombu's own, which reads them from the URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport", "transport_for"]

#: How Celery's ``broker_transport`` names :class:`Transport`.
TRANSPORT = "mono_quant.worker.transport:Transport"


class Channel(kombu_redis.Channel):
    """A Redis channel whose one-off commands share one client bound to its pool."""

    _one_off_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        reused = self._one_off_client
        if reused is None or reused.connection_pool is not self.pool:
            reused = self._one_off_client = self._create_client()
        yield reused


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """Celery's ``broker_transport`` for ``broker_url``: this module's transport for plain
    ``redis://``, else None (kombu picks by the URL's scheme).

    >>> transport_for("redis://localhost:6379/0")
    'mono_quant.worker.transport:Transport'
    >>> transport_for("rediss://cache:6380/0") is None
    True
    """
    return TRANSPORT if broker_url.split("://", 1)[0] == "redis" else None
