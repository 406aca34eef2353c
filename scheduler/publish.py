"""Publishing job messages to Celery: ids only, one message per job, pipelined.

Building a message with Celery's ``send_task`` costs 0.4–0.8 ms (task headers, routing,
kombu's message preparation, JSON) — half of a 10,000-job submit. Every job message of one
queue differs only in its ids, so for the Redis transport a :class:`MessageTemplate` runs
``send_task`` **once** per queue with placeholder ids, captures the exact message kombu would
``LPUSH`` (and the Redis key it would push to), and then renders each job's message by
splicing its ids into the serialised template: a string join instead of a message build.
What changes per job is exactly what ``send_task`` varies: the task id (``id``, ``root_id``,
``correlation_id``), ``argsrepr``, the base64 body ``[[job_id], {}, {…}]`` and kombu's
``delivery_tag``. The result is byte for byte the message ``send_task`` would have pushed
(``tests/scheduler/test_publish.py`` decodes both with kombu and compares them, and a real
worker runs cloned messages).

The messages of a chunk go out as one multi-value ``LPUSH`` per queue, rendered straight
into the Redis protocol (RESP: what redis-py's ``pack_command`` would build, without copying
a megabyte of messages a second time) and written to one pooled redis-py connection. A
chunk's replies are read only once the next chunk is rendered, so Redis stores one chunk
while this process renders the next; at most one chunk is ever unconfirmed, as with a
pipeline's round trip. Celery's ``before/after_task_publish`` signals do not fire for
cloned messages (mono-quant connects none). Other transports publish one by one through
``send_task``.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import groupby
from operator import itemgetter
from typing import Any

from celery import Celery
from kombu.utils.json import dumps

from mono_quant.errors import TransientError
from mono_quant.worker.app import TASK_NAME

__all__ = ["MessageTemplate", "publish_jobs", "random_uuid4s"]

#: Messages per write to Redis (and per ``on_sent`` call): Redis stores one chunk while the
#: next is rendered, so only the last chunk's store is waited for.
CHUNK = 1000
# Placeholders spliced out of the serialised template. The job id placeholder is an int
# (the task's argument); the others are strings that JSON writes without escapes.
_JOB = 918273645546372819
_TASK_ID = "mqtaskid-placeholder"
_TAG = "mqdeliverytag-placeholder"
_ARGS = f"({_JOB},)"
_BODY = "mqbody-placeholder"
_SLOT = re.compile(re.escape(_TASK_ID) + "|" + re.escape(_TAG) + "|" + re.escape(_ARGS)
                   + "|" + re.escape(_BODY))


@dataclass(frozen=True)
class MessageTemplate:
    """The serialised message of one (task, queue), split around its per-job fields.

    ``key`` is the Redis list kombu pushes to; ``parts`` alternate literal text and slot
    names (``task_id``, ``tag``, ``args``, ``body``); ``body`` is the raw JSON body split
    around the job id.
    """

    key: str
    parts: tuple[str, ...]
    body: tuple[bytes, bytes]

    @classmethod
    def capture(cls, app: Celery, channel: Any, task_name: str, queue: str) -> MessageTemplate:
        """Run ``send_task`` once on ``channel`` and capture its message instead of sending.

        Whatever ``send_task`` does besides the final push (declaring the queue and its
        binding) still happens, on the real connection.
        """
        captured: list[tuple[str, dict[str, Any]]] = []
        original = channel._put
        channel._put = lambda q, message, **kw: captured.append((q, message))
        try:
            producer = app.amqp.Producer(channel)
            app.send_task(task_name, (_JOB,), queue=queue, producer=producer, task_id=_TASK_ID)
        finally:
            channel._put = original
        if len(captured) != 1:
            raise RuntimeError(f"send_task pushed {len(captured)} messages for queue {queue!r}")
        target, message = captured[0]
        key = channel._q_for_pri(target, channel._get_message_priority(message, reverse=False))
        body = base64.b64decode(message["body"])
        head, sep, tail = body.partition(str(_JOB).encode())
        if not sep or str(_JOB).encode() in tail:
            raise RuntimeError(f"unexpected task body {body!r}")
        message = {**message, "body": _BODY,
                   "properties": {**message["properties"], "delivery_tag": _TAG}}
        text = dumps(message)
        slots = {_TASK_ID: "task_id", _TAG: "tag", _ARGS: "args", _BODY: "body"}
        parts: list[str] = []
        last = 0
        for m in _SLOT.finditer(text):
            parts += [text[last:m.start()], slots[m.group()]]
            last = m.end()
        parts.append(text[last:])
        found = sorted(parts[1::2])
        if found != sorted(["task_id", "task_id", "task_id", "tag", "args", "body"]):
            raise RuntimeError(f"unexpected task message layout (slots {found})")
        return cls(key, tuple(parts), (head, tail))

    @cached_property
    def _format(self) -> tuple[bytes, tuple[str, ...]]:
        """``parts`` as one ``%``-format (bytes) with a ``%s`` per slot, and the slots' names
        in the order the format takes them."""
        parts = self.parts
        out = [parts[0].replace("%", "%%")]
        for i in range(1, len(parts), 2):
            out += ["%s", parts[i + 1].replace("%", "%%")]
        return "".join(out).encode(), parts[1::2]

    @cached_property
    def _sizes(self) -> list[int]:
        """A message's size in bytes by the number of digits of its job id (index 1-20): the
        only part whose length varies (task ids and tags are 36 characters)."""
        return [0, *(len(self._render(10 ** (digits - 1), _UUID_SIZED, _UUID_SIZED).encode())
                     for digits in range(1, 21))]

    def render(self, job_id: int, task_id: str | None = None, tag: str | None = None) -> str:
        """The message for ``job_id``, as ``send_task(…, (job_id,), task_id=task_id)`` builds it."""
        return self._render(job_id, task_id or str(uuid.uuid4()), tag or str(uuid.uuid4()))

    def render_many(self, job_ids: Sequence[int]) -> list[bytes]:
        """The messages of ``job_ids`` as the bytes Redis stores (``render``'s text in
        UTF-8), each with a fresh random task id and delivery tag: :meth:`lpush_command`'s
        messages, cut apart."""
        text, names = self._format
        blob, sizes = self._many(job_ids, text, names)
        out, at = [], 0
        for size in sizes:
            out.append(blob[at : at + size])
            at += size
        return out

    def lpush_command(self, job_ids: Sequence[int]) -> bytes:
        """``LPUSH key message…`` for ``job_ids`` in the Redis protocol (RESP), ready for the
        socket: the bytes redis-py's ``pack_command`` would build, rendered in place (packing
        a chunk's megabyte of messages again cost as much as rendering them)."""
        text, names = self._format
        key = self.key.encode()
        head = b"*%d\r\n$5\r\nLPUSH\r\n$%d\r\n%b\r\n" % (len(job_ids) + 2, len(key), key)
        return head + self._many(job_ids, b"$%s\r\n" + text + b"\r\n", ("size", *names))[0]

    def _many(self, job_ids: Sequence[int], text: bytes, names: tuple[str, ...]
              ) -> tuple[bytes, list[int]]:
        """``text`` rendered for every job at once, and the messages' sizes: each slot's
        values are built as one list, interleaved by slice assignment, and ``text`` repeated
        per job is formatted in ONE ``%`` (a format per message cost three times as much)."""
        n = len(job_ids)
        uuids = random_uuid4s(2 * n)
        head, tail = self.body
        b64 = binascii.b2a_base64
        jobs = [b"%d" % job_id for job_id in job_ids]
        size_of = self._sizes
        sizes = [size_of[len(job)] for job in jobs]
        columns = {
            "size": [b"%d" % size for size in sizes], "task_id": uuids[0::2],
            "tag": uuids[1::2], "args": [b"(%s,)" % job for job in jobs],
            "body": [b64(head + job + tail, newline=False) for job in jobs],
        }
        values: list[bytes | None] = [None] * (len(names) * n)
        for at, name in enumerate(names):
            values[at :: len(names)] = columns[name]
        return (text * n) % tuple(values), sizes

    def _render(self, job_id: int, task_id: str, tag: str) -> str:
        head, tail = self.body
        job = str(int(job_id)).encode()
        text, names = self._format
        value = {"task_id": task_id.encode(), "tag": tag.encode(), "args": b"(%s,)" % job,
                 "body": base64.b64encode(head + job + tail)}
        return (text % tuple(value[name] for name in names)).decode()


#: A stand-in task id or tag of the right length (for measuring a message's size).
_UUID_SIZED = "0" * 36


#: A version-4 UUID's variant digit (binary 10xx) for each random hex digit, as bytes.
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")
#: Where each of a UUID's 32 hex digits goes in its 36-character text (dashes at 8, 13, 18
#: and 23).
_SPOTS = [j + (j >= 8) + (j >= 12) + (j >= 16) + (j >= 20) for j in range(32)]


def random_uuid4s(n: int) -> list[bytes]:
    """``n`` random version-4 UUIDs as ``str(uuid.uuid4())`` writes them, in ASCII bytes,
    from one ``os.urandom`` call: each digit position is copied for all ``n`` at once with a
    slice assignment (a ``uuid4`` per id costs a system call and an object; formatting each
    id from the hex digits, 0.7 µs).

    >>> import uuid
    >>> ids = [u.decode() for u in random_uuid4s(50)]
    >>> all(str(uuid.UUID(u)) == u and uuid.UUID(u).version == 4
    ...     and uuid.UUID(u).variant == uuid.RFC_4122 for u in ids)
    True
    >>> len(set(ids)), random_uuid4s(0)
    (50, [])
    """
    if n == 0:
        return []
    digits = os.urandom(16 * n).hex().encode()
    text = bytearray(b"-" * (37 * n))  # 36 characters and a newline each
    for digit, spot in enumerate(_SPOTS):
        text[spot::37] = digits[digit::32]
    text[14::37] = b"4" * n  # the version
    text[19::37] = text[19::37].translate(_VARIANT)
    text[36::37] = b"\n" * n
    return bytes(text[:-1]).split(b"\n")


def _redis_client(channel: Any) -> Any | None:
    client = getattr(channel, "client", None)
    if client is None or not hasattr(channel, "_q_for_pri"):
        return None  # not the Redis transport
    if getattr(channel, "_expires", None):
        return None  # queues with x-expires need a PEXPIRE per push: leave that to kombu
    return client


def _commands(templates: dict[str, MessageTemplate], chunk: Sequence[tuple[int, str]]
              ) -> list[tuple[bytes, list[int]]]:
    """One RESP ``LPUSH`` per queue of ``chunk``, with its job ids (their order kept)."""
    out = []
    for queue, group in groupby(sorted(chunk, key=itemgetter(1)), key=itemgetter(1)):
        ids = [job_id for job_id, _ in group]
        out.append((templates[queue].lpush_command(ids), ids))
    return out


def _connection(pool: Any) -> Any:
    try:
        return pool.get_connection()  # redis-py >= 5.3
    except TypeError:  # redis-py 5.0-5.2 names the command
        return pool.get_connection("LPUSH")


def _pushed(client: Any, chunks: Iterator[list[tuple[bytes, list[int]]]]
            ) -> Iterator[list[int]]:
    """Write each chunk's commands to one pooled connection; yield the ids of each chunk once
    Redis has confirmed them. A chunk's replies are read after the next chunk is built (the
    ``chunks`` iterator renders it), so Redis works while this process renders.

    On an error reply (a full Redis refuses a push) the ids of the chunk's other, accepted
    pushes are yielded, then the error is raised: nothing after it is sent. On any error the
    connection is closed, not returned to the pool with replies still unread.
    """
    pool = client.connection_pool
    conn = _connection(pool)
    try:
        waiting: list[tuple[bytes, list[int]]] = []
        while True:
            try:
                commands = next(chunks, None)
            finally:  # a chunk sent is confirmed even when building the next one failed
                if waiting:
                    yield from _confirmed(conn, waiting)
            if commands is None:
                return
            conn.send_packed_command([command for command, _ in commands])
            waiting = commands
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def _confirmed(conn: Any, commands: list[tuple[bytes, list[int]]]) -> Iterator[list[int]]:
    from redis.exceptions import ResponseError

    ok, error = [], None
    for _, ids in commands:
        try:
            conn.read_response()
        except ResponseError as e:
            error = error or e
        else:
            ok += ids
    if ok:
        yield ok
    if error is not None:
        raise error


def publish_jobs(
    app: Celery, jobs: Iterable[tuple[int, str]], *, task_name: str = TASK_NAME,
    chunk: int | None = None, on_sent: Callable[[list[int]], None] | None = None,
) -> int:
    """Send one task message per ``(job_id, queue)``; returns how many were sent.

    ``chunk`` messages (default :data:`CHUNK`) go per write; messages keep their order per
    queue. ``on_sent`` is called with the job ids of each chunk once the broker has them
    (submit marks them ``queued`` then, so a failure midway leaves only the unsent jobs
    ``pending``).

    Raises TransientError when the broker cannot be reached or refuses a write (the unsent
    jobs stay ``pending`` in the catalog and ``reconcile`` publishes them later).
    """
    jobs = list(jobs)
    chunk = chunk or CHUNK
    sent = 0
    parts = [jobs[start : start + chunk] for start in range(0, len(jobs), chunk)]
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2)
            with conn.channel() as channel:
                client = _redis_client(channel)
                if client is None:
                    done: Iterable[list[int]] = (_sent_one_by_one(app, channel, part,
                                                                  task_name) for part in parts)
                else:
                    # every queue's template first: rendering between a chunk's push and
                    # its replies must not touch the broker (a failed declare there makes
                    # kombu drop the pool's connections, the unread replies with them)
                    templates = {queue: MessageTemplate.capture(app, channel, task_name, queue)
                                 for queue in sorted({queue for _, queue in jobs})}
                    done = _pushed(client, (_commands(templates, part) for part in parts))
                for ids in done:
                    sent += len(ids)
                    if on_sent is not None:
                        on_sent(ids)
    except (OSError, ConnectionError) as e:
        raise TransientError(f"cannot publish to the broker {app.conf.broker_url}: {e}") from e
    except Exception as e:  # kombu/redis errors do not share a base class with OSError
        if type(e).__module__.split(".")[0] in ("kombu", "redis", "amqp"):
            raise TransientError(
                f"cannot publish to the broker {app.conf.broker_url} ({sent} of {len(jobs)} "
                f"message(s) sent): {e}"
            ) from e
        raise
    return sent


def _sent_one_by_one(app: Celery, channel: Any, part: Sequence[tuple[int, str]],
                     task_name: str) -> list[int]:
    """``send_task`` per job (transports without the Redis fast path)."""
    producer = app.amqp.Producer(channel)
    for job_id, queue in part:
        app.send_task(task_name, (job_id,), queue=queue, producer=producer)
    return [job_id for job_id, _ in part]
