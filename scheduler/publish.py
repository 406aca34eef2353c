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

The messages of a chunk go out as one multi-value ``LPUSH`` per queue in one pipeline, so a
chunk costs one round trip. Celery's ``before/after_task_publish`` signals do not fire for
cloned messages (mono-quant connects none). Other transports publish one by one through
``send_task``.
"""

from __future__ import annotations

import base64
import os
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
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

#: Messages per pipeline round trip (and per ``on_sent`` call).
CHUNK = 5000
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
    def _format(self) -> tuple[str, Callable[[tuple[str, ...]], tuple[str, ...]]]:
        """``parts`` as one ``%``-format string with a ``%s`` per slot, and what picks the
        slots' values in their order from ``(task_id, tag, args, body)``."""
        parts = self.parts
        out = [parts[0].replace("%", "%%")]
        for i in range(1, len(parts), 2):
            out += ["%s", parts[i + 1].replace("%", "%%")]
        return "".join(out), itemgetter(*(_SLOTS.index(name) for name in parts[1::2]))

    def render(self, job_id: int, task_id: str | None = None, tag: str | None = None) -> str:
        """The message for ``job_id``, as ``send_task(…, (job_id,), task_id=task_id)`` builds it."""
        return self._render(job_id, task_id or str(uuid.uuid4()), tag or str(uuid.uuid4()))

    def render_many(self, job_ids: Sequence[int]) -> list[bytes]:
        """The messages of ``job_ids`` as the bytes Redis stores (``render``'s text in
        UTF-8), each with a fresh random task id and delivery tag. Built as bytes: the
        broker client would otherwise encode each ~930-byte text again."""
        uuids = random_uuid4s(2 * len(job_ids))
        text, pick = self._format
        text = text.encode()
        head, tail = self.body
        b64 = base64.b64encode
        out = []
        for i, job_id in enumerate(job_ids):
            job = b"%d" % job_id
            out.append(text % pick((uuids[2 * i], uuids[2 * i + 1], b"(%s,)" % job,
                                    b64(head + job + tail))))
        return out

    def _render(self, job_id: int, task_id: str, tag: str) -> str:
        head, tail = self.body
        job = str(int(job_id))
        text, pick = self._format
        return text % pick((task_id, tag, f"({job},)",
                            base64.b64encode(head + job.encode() + tail).decode()))


#: The slots of a template, in the order :meth:`MessageTemplate._format` picks them from.
_SLOTS = ("task_id", "tag", "args", "body")


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


def _send_chunk(app: Celery, channel: Any, client: Any, templates: dict[str, MessageTemplate],
                chunk: Sequence[tuple[int, str]], task_name: str) -> None:
    if client is None:
        producer = app.amqp.Producer(channel)
        for job_id, queue in chunk:
            app.send_task(task_name, (job_id,), queue=queue, producer=producer)
        return
    pipe = client.pipeline(transaction=False)
    for queue, group in groupby(sorted(chunk, key=lambda j: j[1]), key=lambda j: j[1]):
        template = templates.get(queue)
        if template is None:
            template = templates[queue] = MessageTemplate.capture(app, channel, task_name, queue)
        pipe.lpush(template.key, *template.render_many([job_id for job_id, _ in group]))
    pipe.execute()


def publish_jobs(
    app: Celery, jobs: Iterable[tuple[int, str]], *, task_name: str = TASK_NAME,
    chunk: int | None = None, on_sent: Callable[[list[int]], None] | None = None,
) -> int:
    """Send one task message per ``(job_id, queue)``; returns how many were sent.

    ``chunk`` messages (default :data:`CHUNK`) go per round trip; messages keep their order
    per queue. ``on_sent`` is called with the job ids of each chunk once the broker has them
    (submit marks them ``queued`` then, so a failure midway leaves only the unsent jobs
    ``pending``).

    Raises TransientError when the broker cannot be reached or refuses a write (the unsent
    jobs stay ``pending`` in the catalog and ``reconcile`` publishes them later).
    """
    jobs = list(jobs)
    chunk = chunk or CHUNK
    sent = 0
    templates: dict[str, MessageTemplate] = {}
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2)
            with conn.channel() as channel:
                client = _redis_client(channel)
                for start in range(0, len(jobs), chunk):
                    part = jobs[start : start + chunk]
                    _send_chunk(app, channel, client, templates, part, task_name)
                    sent += len(part)
                    if on_sent is not None:
                        on_sent([job_id for job_id, _ in part])
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
