"""worker/transport.py: kombu's Redis transport with one reused client per channel.

Real Redis (database 7 of the test server, flushed before and after), real kombu.
"""

from __future__ import annotations

import pytest
import redis
from kombu import Connection, Exchange, Producer

from mono_quant.config import Settings
from mono_quant.worker.app import create_app
from mono_quant.worker.transport import TRANSPORT, Channel
from tests.worker.harness import flush, redis_db, wait_until

BROKER = redis_db(7)


@pytest.fixture
def connection():
    try:
        redis.Redis.from_url(BROKER).ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis at {BROKER} is unreachable: {e}")
    flush(BROKER)
    conn = Connection(BROKER, transport=TRANSPORT)
    yield conn
    conn.release()
    flush(BROKER)


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://r:6379/0", TRANSPORT), ("rediss://r:6380/0", None),
    ("sentinel://s:26379;sentinel://t:26379", None)], ids=["redis", "rediss", "sentinel"])
def test_the_app_uses_it_for_plain_redis_only(url, expected):
    app = create_app(Settings.from_env({"MONO_QUANT_BROKER_URL": url}))
    assert app.conf.broker_transport == expected
    if expected:
        with app.connection_for_write() as conn:
            assert conn.transport.Channel is Channel
            assert conn.as_uri().endswith("@r:6379/0")  # host, port, db from the URL


def test_one_client_serves_publishes_and_acks_until_the_pool_is_replaced(connection):
    channel = connection.channel()
    assert isinstance(channel, Channel)
    events = Exchange("celeryev", type="fanout")  # what Celery makes of it on Redis
    listener = redis.Redis.from_url(BROKER).pubsub()
    listener.psubscribe("/7.celeryev*")  # Redis pub/sub spans databases: this one only
    wait_until(lambda: listener.get_message(timeout=0.1), 5, what="the subscription")
    producer = Producer(channel, exchange=events, auto_declare=False)
    clients = []
    for i in range(3):  # what a worker's event dispatcher does per task event
        producer.publish({"n": i}, routing_key="task.multi", declare=[events])
        with channel.conn_or_acquire() as client:
            clients.append(client)
    assert clients[0] is clients[1] is clients[2] is channel._one_off_client
    got = []  # every publish arrives

    def three() -> bool:
        message = listener.get_message(timeout=0.2)
        if message is not None and message["type"] == "pmessage":
            got.append(message["channel"])
        return len(got) >= 3

    wait_until(three, 10, interval=0, what="the three events")
    assert got == [b"/7.celeryev/task.multi"] * 3
    old_pool = channel.pool
    channel._disconnect_pools()  # what kombu does on a connection error
    with channel.conn_or_acquire() as client:
        assert client.connection_pool is channel.pool is not old_pool
        assert client.ping()
    with channel.conn_or_acquire(client="given") as client:  # kombu's contract: use it
        assert client == "given"
    listener.close()
    channel.close()
