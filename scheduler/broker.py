"""What mono-quant knows of its broker's internals: one home for kombu's Redis key names and
the layout of the task messages it reads back (reconcile, the workers' sweeps, metrics).

Messages are published by Celery (:mod:`mono_quant.scheduler.publish`) and carry only the
job id (``argsrepr`` ``"(123,)"``). kombu's Redis transport keeps one list per queue (the
queue's name), delivered but unacknowledged messages in the hash :data:`UNACKED_KEY`
(delivery tag → ``[message, exchange, routing key]``) and their delivery times in the sorted
set :data:`UNACKED_INDEX_KEY`.

Example:
    >>> message_job_id(b'{"headers": {"argsrepr": "(42,)"}}'), message_job_id(b"junk")
    (42, None)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from mono_quant.errors import TransientError

__all__ = ["SCAN_PAGE", "UNACKED_INDEX_KEY", "UNACKED_KEY", "broker_job_ids", "message_job_id"]

#: kombu's Redis hash of delivered, unacknowledged messages (delivery tag → message).
UNACKED_KEY = "unacked"
#: kombu's Redis sorted set indexing it (delivery tag → time delivered).
UNACKED_INDEX_KEY = "unacked_index"
#: Messages per ``LRANGE`` page of the reconcile scan (bounds the reply held in memory).
SCAN_PAGE = 10_000
#: A job id in a task message: the ``argsrepr`` header ``"(123,)"`` (what send_task writes).
_ARGSREPR = re.compile(rb'"argsrepr": "\((\d+),\)"')


def message_job_id(raw: bytes) -> int | None:
    """The job id a raw Redis message carries (a queued one, or an unacknowledged entry
    ``[message, exchange, routing key]``); None when it is not one of ours."""
    m = _ARGSREPR.search(raw)
    if m is not None:
        return int(m.group(1))
    try:  # another layout: decode it properly
        message = json.loads(raw)
        if isinstance(message, list):  # unacked entries are [message, exchange, key]
            message = message[0]
        args = message["headers"].get("argsrepr") or "()"
        return int(args.strip("(),").split(",")[0])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def broker_job_ids(app: Any, queues: Iterable[str]) -> set[int] | None:
    """Job ids with a message on the Redis broker (waiting or delivered but unacknowledged).

    One scan: each queue is read in ``LRANGE`` pages from its head (new messages shift the
    pages, so an entry may be seen twice but none is missed), then the ``unacked`` hash
    (read last, so a message delivered during the scan is still seen). Job ids are taken
    from the ``argsrepr`` header with a regular expression, falling back to JSON decoding.

    None when the broker is not Redis (then reconcile relies on ages alone). Unacknowledged
    messages count whatever their age: a worker legitimately holds one it reserved behind a
    running job for up to the time limit, and Redis restores abandoned ones by itself after
    the visibility timeout.
    """
    url = str(app.conf.broker_url)
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(url)
    found: set[int] = set()

    def add(entries: list[bytes]) -> None:
        matches = list(map(_ARGSREPR.search, entries))  # the common case, in C
        found.update(int(m.group(1)) for m in matches if m is not None)
        others = (message_job_id(e) for e, m in zip(entries, matches, strict=True) if m is None)
        found.update(j for j in others if j is not None)

    try:
        for queue in sorted(set(queues)):
            start = 0
            while page := client.lrange(queue, start, start + SCAN_PAGE - 1):
                add(page)
                start += len(page)
        add(client.hvals(UNACKED_KEY))
    except redis.RedisError as e:
        raise TransientError(f"cannot inspect the broker {url}: {e}") from e
    finally:
        client.close()
    return found


