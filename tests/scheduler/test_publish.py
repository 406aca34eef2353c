"""Cloned task messages are the messages ``send_task`` pushes; a real worker runs them.

Real Redis (database 13 of the test server, flushed before and after), real kombu decoding,
a real ``mono-quant worker`` process with a SQLite catalog.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import redis
from kombu.transport.virtual import Message
from sqlalchemy import select

from mono_quant.catalog import Catalog, Job, JobStatus
from mono_quant.config import Settings
from mono_quant.scheduler.broker import broker_job_ids
from mono_quant.scheduler.publish import MessageTemplate, publish_jobs
from mono_quant.scheduler.service import submit
from mono_quant.worker.app import TASK_NAME, create_app
from tests.worker.harness import Worker, base_env, cli, flush, redis_db, wait_until

BROKER = redis_db(13)
TASK_ID = "5f1b9c1e-8d4e-4a57-9f53-2c1d7f0e6a11"


@pytest.fixture
def client():
    c = redis.Redis.from_url(BROKER)
    try:
        c.ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis at {BROKER} is unreachable: {e}")
    flush(BROKER)
    yield c
    flush(BROKER)


@pytest.fixture
def app(client):
    return create_app(Settings.from_env({"MONO_QUANT_BROKER_URL": BROKER}))


def _decode(raw: bytes, channel) -> dict:
    """What a consumer sees: kombu's Message from the raw entry, body decoded."""
    m = Message(json.loads(raw), channel=channel)
    return {"body": m.decode(), "headers": m.headers, "properties": m.properties,
            "delivery_info": m.delivery_info, "content_type": m.content_type,
            "content_encoding": m.content_encoding}


@pytest.mark.parametrize("queue", ["cpu", "gpu.h100"])
def test_a_cloned_message_is_byte_for_byte_what_send_task_pushes(app, client, queue):
    with app.connection_for_write() as conn, conn.channel() as channel:
        app.send_task(TASK_NAME, (42,), queue=queue, producer=app.amqp.Producer(channel),
                      task_id=TASK_ID)
        template = MessageTemplate.capture(app, channel, TASK_NAME, queue)
        assert client.llen(queue) == 1  # capturing pushed nothing
        (sent,) = client.lrange(queue, 0, -1)
        tag = json.loads(sent)["properties"]["delivery_tag"]  # kombu's random uuid
        cloned = template.render(42, task_id=TASK_ID, tag=tag).encode()
        assert template.key == queue
        assert cloned == sent
        ours, theirs = _decode(cloned, channel), _decode(sent, channel)
        assert ours == theirs
        assert ours["body"] == [[42], {}, {"callbacks": None, "errbacks": None, "chain": None,
                                           "chord": None}]
        assert ours["headers"]["id"] == ours["headers"]["root_id"] == TASK_ID
        assert ours["properties"]["correlation_id"] == TASK_ID
        assert ours["delivery_info"]["routing_key"] == queue
        # another job: only its ids differ
        other = _decode(template.render(1234567).encode(), channel)
        assert other["body"][0] == [1234567] and other["headers"]["argsrepr"] == "(1234567,)"
        assert other["headers"]["id"] != TASK_ID
        assert other["properties"]["delivery_tag"] != tag
        for key in ("headers", "properties"):
            changed = {k for k in ours[key] if ours[key][k] != other[key][k]}
            assert changed <= {"id", "root_id", "argsrepr", "correlation_id", "delivery_tag"}
        # the batch renderer: the same bytes (as bytes), with fresh random version-4 ids
        many = template.render_many([42, 42])
        ids = [(json.loads(m)["headers"]["id"], json.loads(m)["properties"]["delivery_tag"])
               for m in many]
        assert len({i for pair in ids for i in pair}) == 4
        assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i
                   for pair in ids for i in pair)
        assert many == [template.render(42, task_id=t, tag=g).encode() for t, g in ids]


def test_publish_jobs_pushes_one_message_per_job_and_reconcile_finds_them(app, client):
    jobs = [(i, "cpu" if i % 3 else "gpu") for i in range(1, 2001)]
    ids: list[list[int]] = []
    assert publish_jobs(app, jobs, chunk=700, on_sent=ids.append) == 2000
    assert [len(c) for c in ids] == [700, 700, 600]
    raw = client.lrange("cpu", 0, -1) + client.lrange("gpu", 0, -1)
    assert len(raw) == 2000
    args = [json.loads(r)["headers"]["argsrepr"] for r in raw]
    assert sorted(args) == sorted(f"({i},)" for i in range(1, 2001))
    assert len({json.loads(r)["headers"]["id"] for r in raw}) == 2000
    # the oldest message of a queue (consumed first) is its first job
    assert json.loads(client.lindex("gpu", -1))["headers"]["argsrepr"] == "(3,)"
    # a delivered, unacknowledged message: [message, exchange, routing key]
    client.hset("unacked", "tag", json.dumps([json.loads(raw[0]), "cpu", "cpu"]))
    client.lpush("cpu", b"not a task message")
    assert broker_job_ids(app, ["cpu", "gpu"]) == set(range(1, 2001))


def test_an_error_reply_midway_confirms_exactly_the_accepted_pushes(app, client):
    """A push Redis refuses (by then the "gpu" key holds a string: WRONGTYPE) fails the
    publish after its chunk's other push was accepted: ``on_sent`` gets exactly the accepted
    ids, nothing after the failed chunk is sent, and the pooled connection is not left with
    unread replies (the next publish works)."""
    from mono_quant.errors import TransientError

    jobs = [(i, "gpu" if i in (500, 1500) else "cpu") for i in range(1, 3001)]
    sent: list[list[int]] = []

    def on_sent(ids: list[int]) -> None:
        sent.append(ids)
        client.delete("gpu")
        client.set("gpu", "not a list")  # the second chunk's gpu push is refused

    with pytest.raises(TransientError, match="WRONGTYPE"):
        publish_jobs(app, jobs, chunk=1000, on_sent=on_sent)
    # per chunk, the ids of each accepted push (one per queue, in the queues' order)
    assert sent == [[i for i in range(1, 1001) if i != 500] + [500],
                    [i for i in range(1001, 2001) if i != 1500]]
    on_broker = {json.loads(r)["headers"]["argsrepr"] for r in client.lrange("cpu", 0, -1)}
    assert on_broker == {f"({i},)" for i in range(1, 2001) if i not in (500, 1500)}
    client.delete("gpu", "cpu")
    assert publish_jobs(app, [(7, "gpu")]) == 1 and client.llen("gpu") == 1


def test_other_transports_publish_through_send_task():
    """A broker without the Redis fast path (RabbitMQ here, the one on this machine) gets
    one ``send_task`` message per job, each chunk reported to ``on_sent`` once sent."""
    from kombu import Connection

    url = os.environ.get("MONO_QUANT_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
    queues = [f"mq-test-{uuid.uuid4().hex[:8]}-{q}" for q in ("cpu", "gpu")]
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as e:  # no RabbitMQ: nothing to test against
        pytest.skip(f"RabbitMQ at {url} is unreachable: {e}")
    app = create_app(Settings.from_env({"MONO_QUANT_BROKER_URL": url}))
    jobs = [(i, queues[i % 2]) for i in range(1, 26)]
    sent: list[list[int]] = []
    try:
        assert publish_jobs(app, jobs, chunk=10, on_sent=sent.append) == 25
        assert sent == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]
        with Connection(url) as conn, conn.channel() as channel:
            counts = [channel.queue_declare(q, passive=True).message_count for q in queues]
            bodies = []
            for q in queues:
                while (m := channel.basic_get(q, no_ack=True)) is not None:
                    bodies.append(json.loads(m.body)[0][0])
        assert counts == [12, 13] and sorted(bodies) == list(range(1, 26))
    finally:
        with Connection(url) as conn, conn.channel() as channel:
            for q in queues:
                channel.queue_delete(q)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_real_worker_runs_cloned_messages(client, tmp_path):
    env = base_env(MONO_QUANT_BROKER_URL=BROKER,
                   MONO_QUANT_CATALOG_URL=f"sqlite:///{tmp_path / 'catalog.db'}",
                   MONO_QUANT_STORAGE_ROOT=str(tmp_path / "store"),
                   MONO_QUANT_DATA_DIR=str(tmp_path / "data"))
    assert cli("db", "upgrade", env=env).returncode == 0
    manifest = Path(tmp_path / "m.json")
    manifest.write_text(json.dumps({"defaults": {"queue": "cpu"}, "jobs": [
        {"name": f"mlp{i}", "model": {"factory": "mono_quant.demo_models:mlp",
                                       "kwargs": {"seed": i}}} for i in range(3)]}))
    settings = Settings.from_env(env)
    catalog = Catalog(settings.catalog_url)
    result = submit(manifest, catalog, app=create_app(settings), settings=settings)
    task_ids = {json.loads(r)["headers"]["argsrepr"]: json.loads(r)["headers"]["id"]
                for r in client.lrange("cpu", 0, -1)}
    assert set(task_ids) == {f"({i},)" for i in result.job_ids}
    worker = Worker("clone@test", env, tmp_path)
    try:
        worker.wait_ready()

        def done() -> list[Job] | None:
            with catalog.begin() as s:
                jobs = list(s.scalars(select(Job).order_by(Job.id)))
            return jobs if all(j.status is JobStatus.SUCCEEDED for j in jobs) else None

        jobs = wait_until(done, 120, what="the cloned messages' jobs to succeed")
    finally:
        worker.stop()
        catalog.dispose()
    # each job ran from its own cloned message
    assert {j.celery_task_id for j in jobs} == set(task_ids.values())
    assert {f"({j.id},)": j.celery_task_id for j in jobs} == task_ids
