"""The harness itself: each real server starts, serves its protocol and stops."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
import psycopg
import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from f2pipe_devtools.servers import MosquittoServer, PostgresServer, RedisServer

pytestmark = pytest.mark.integration


def test_postgres_serves_sql_in_a_fresh_database(pg_conninfo: str) -> None:
    with psycopg.connect(pg_conninfo) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        version = conn.execute("SHOW server_version_num").fetchone()
    assert tables == (0,)
    assert version is not None
    assert int(version[0]) >= 150000


def test_postgres_survives_a_restart_with_its_data(postgres_server: PostgresServer) -> None:
    conninfo = postgres_server.create_database(f"restart_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(conninfo) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (42)")
    postgres_server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(conninfo, connect_timeout=1)
    postgres_server.start()
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]


def test_redis_round_trip(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("f2pipe:harness", b"ok")
    assert client.get("f2pipe:harness") == b"ok"


def test_mosquitto_delivers_qos1(mosquitto_server: MosquittoServer) -> None:
    received: list[tuple[str, bytes]] = []
    got = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append((msg.topic, bytes(msg.payload)))
        got.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="harness-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect(mosquitto_server.host, mosquitto_server.port)
    sub.loop_start()
    try:
        sub.subscribe("tele/#", qos=1)
        assert subscribed.wait(5)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="harness-pub")
        pub.connect(mosquitto_server.host, mosquitto_server.port)
        pub.loop_start()
        info = pub.publish("tele/f2-aabbccddee01/sensor-mode/J3/sensor-1", b"{}", qos=1)
        info.wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        assert got.wait(5)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert received == [("tele/f2-aabbccddee01/sensor-mode/J3/sensor-1", b"{}")]


def test_kafka_broker_stores_and_serves_records(kafka_bootstrap: str) -> None:
    topic = f"harness-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=2)]).values():
        future.result(10)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for i in range(10):
        producer.produce(topic, value=f"v{i}".encode(), partition=i % 2)
    assert producer.flush(10) == 0

    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": "harness", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
    values: list[bytes] = []
    try:
        for _ in range(50):
            msg = consumer.poll(0.5)
            value = msg.value() if msg is not None and msg.error() is None else None
            if value is not None:
                values.append(value)
            if len(values) == 10:
                break
    finally:
        consumer.close()
    assert sorted(values) == sorted(f"v{i}".encode() for i in range(10))
