"""The bridge's loop without servers: batching, acknowledgements, and what Kafka refuses."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from f2pipe_bridge.bridge import Bridge
from f2pipe_bridge.mqtt import Inbound
from f2pipe_bridge.settings import BridgeSettings
from f2pipe_shared.deadletters import PREVIEW_BYTES, DeadLetter, Reason
from f2pipe_shared.records import decode_raw_batch
from f2pipe_shared.settings import KafkaSettings
from f2pipe_shared.topics import parse_topic

RAW, DLQ = "raw-iot-data", "iot-dead-letter"
TOPIC = "tele/f2-aabbccddee01/sensor-mode/J3/sensor-1"


class FakeMqtt:
    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        self.connected = threading.Event()
        self.accepting = True
        self.settled: list[int] = []

    def connect(self) -> None:
        self.connected.set()

    def settle(self, message: Inbound) -> bool:
        self.settled.append(message.mid)
        return True

    def stop(self) -> None:
        self.connected.clear()


class FakeProducer:
    """Refuses records above `limit[topic]` as librdkafka does (synchronously), or fails
    deliveries with the errors queued in `delivery_errors`."""

    def __init__(self, limit: dict[str, int] | None = None) -> None:
        self.limit = limit or {}
        self.delivery_errors: list[KafkaError | None] = []
        self.pending: list[tuple[str, bytes, dict[str, Any]]] = []
        self.delivered: list[tuple[str, bytes, dict[str, Any]]] = []

    def produce(self, topic: str, value: bytes | None = None, **kwargs: Any) -> None:
        value = value or b""
        if len(value) > self.limit.get(topic, 1_000_000):
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.pending.append((topic, value, kwargs))

    def poll(self, timeout: float = 0) -> int:
        pending, self.pending = self.pending, []
        for topic, value, kwargs in pending:
            err = self.delivery_errors.pop(0) if self.delivery_errors else None
            if err is None:
                self.delivered.append((topic, value, kwargs))
            kwargs["on_delivery"](err, None)
        return len(pending)

    def flush(self, timeout: float = 0) -> int:
        while self.pending:
            self.poll()
        return 0

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions={0: None, 1: None})})

    def raw_payloads(self) -> list[bytes]:
        return [m.payload for t, v, _ in self.delivered if t == RAW for m in decode_raw_batch(v)]

    def letters(self) -> list[DeadLetter]:
        return [DeadLetter.from_kafka(v, kw["headers"]) for t, v, kw in self.delivered if t == DLQ]


def make(producer: FakeProducer, **settings: Any) -> tuple[Bridge, FakeMqtt]:
    mqtt = FakeMqtt()
    kafka = KafkaSettings(kafka_raw_topic=RAW, kafka_deadletter_topic=DLQ)
    bridge_settings = BridgeSettings(**{"bridge_batch_linger_ms": 0, **settings})
    return Bridge(kafka, bridge_settings, mqtt, producer), mqtt


def inbound(mid: int, payload: bytes, topic: str = TOPIC) -> Inbound:
    return Inbound(topic, payload, time.time_ns() // 1000, mid, 1, 0)


def run(bridge: Bridge, mqtt: FakeMqtt, messages: list[Inbound], rounds: int = 5) -> None:
    for message in messages:
        mqtt.inbox.put(message)
    for _ in range(rounds):
        bridge.pump(timeout=0)


def test_messages_are_acknowledged_only_after_kafka_confirmed() -> None:
    producer = FakeProducer()
    bridge, mqtt = make(producer)
    producer.delivery_errors = [KafkaError(KafkaError._TRANSPORT)]
    mqtt.inbox.put(inbound(1, b"{}"))
    bridge.pump(timeout=0)  # produced, delivery failed: held for a retry
    assert mqtt.settled == []
    assert bridge.in_flight == 1
    bridge.retries = [(0.0, attempt) for _, attempt in bridge.retries]  # due now
    bridge.pump(timeout=0)
    bridge.pump(timeout=0)
    assert mqtt.settled == [1]
    assert producer.raw_payloads() == [b"{}"]
    assert producer.letters() == []


def test_an_oversize_payload_is_dead_lettered_with_a_preview_size_and_sha256() -> None:
    producer = FakeProducer()
    bridge, mqtt = make(producer)
    big = bytes(range(256)) * 4096  # 1 MiB
    run(bridge, mqtt, [inbound(1, big), inbound(2, b"{}")])
    [letter] = producer.letters()
    assert letter.reason is Reason.oversize
    assert letter.original == big[:PREVIEW_BYTES]
    assert letter.original_size == len(big)
    assert letter.original_sha256 == hashlib.sha256(big).hexdigest()
    assert "1048576 bytes" in letter.detail
    assert producer.raw_payloads() == [b"{}"]
    assert sorted(mqtt.settled) == [1, 2]
    assert bridge.in_flight == 0


@pytest.mark.parametrize("when", ["at produce", "at delivery"])
def test_a_batch_kafka_refuses_is_split_and_only_the_unsendable_message_dead_lettered(
    when: str,
) -> None:
    small = [inbound(i, b"s" * 100) for i in range(1, 11)]
    large = inbound(99, b"L" * 5000)  # under BRIDGE_MAX_PAYLOAD_BYTES, over the topic's limit
    producer = FakeProducer({RAW: 3000} if when == "at produce" else {})
    bridge, mqtt = make(producer, bridge_batch_max_messages=11)
    if when == "at delivery":
        # The broker refuses the first batches (the whole one, then its halves holding the
        # large message) until the large message is alone.
        refuse = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
        real_poll = producer.poll

        def poll(timeout: float = 0) -> int:
            producer.delivery_errors = [
                refuse if large.payload in value else None for _, value, _ in producer.pending
            ]
            return real_poll(timeout)

        producer.poll = poll  # type: ignore[method-assign]
    run(bridge, mqtt, [*small[:5], large, *small[5:]])
    assert sorted(producer.raw_payloads()) == sorted(m.payload for m in small)
    [letter] = producer.letters()
    assert letter.reason is Reason.unproducible
    assert "MSG_SIZE_TOO_LARGE" in letter.detail
    assert letter.original_size == 5000
    assert len(letter.original) == PREVIEW_BYTES
    assert sorted(mqtt.settled) == [*range(1, 11), 99]
    assert bridge.in_flight == 0


def test_a_dead_letter_kafka_refuses_goes_without_the_original_bytes() -> None:
    producer = FakeProducer({DLQ: 0})  # the dead-letter topic takes nothing but headers
    bridge, mqtt = make(producer)
    payload = b'{"bad": "connector"}'
    run(bridge, mqtt, [inbound(1, payload, "tele/f2-aabbccddee01/sensor-mode/J9/sensor-1")])
    [letter] = producer.letters()
    assert letter.reason is Reason.bad_topic
    assert letter.original == b""
    assert letter.original_size == len(payload)
    assert letter.original_sha256 == hashlib.sha256(payload).hexdigest()
    assert mqtt.settled == [1]


def test_a_dead_letter_kafka_cannot_take_now_is_retried_not_dropped() -> None:
    producer = FakeProducer()
    bridge, mqtt = make(producer)
    producer.delivery_errors = [KafkaError(KafkaError._MSG_TIMED_OUT)]
    run(bridge, mqtt, [inbound(1, b"{}", "not/a/topic")], rounds=2)
    assert mqtt.settled == []
    bridge.retries = [(0.0, attempt) for _, attempt in bridge.retries]
    bridge.pump(timeout=0)
    bridge.pump(timeout=0)
    [letter] = producer.letters()
    assert letter.original == b"{}"
    assert mqtt.settled == [1]


def test_an_unexpected_error_dead_letters_the_message_and_the_loop_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer = FakeProducer()
    bridge, mqtt = make(producer)

    def broken(topic: str) -> Any:
        if "J3/sensor-2" in topic:
            raise RuntimeError("a bug")
        return parse_topic(topic)

    monkeypatch.setattr("f2pipe_bridge.bridge.parse_topic", broken)
    other = TOPIC.replace("sensor-1", "sensor-2")
    run(bridge, mqtt, [inbound(1, b"a", other), inbound(2, b"b")])
    [letter] = producer.letters()
    assert letter.reason is Reason.invalid_record
    assert "RuntimeError" in letter.detail
    assert "a bug" not in letter.detail  # errors name their type, never echo input
    assert producer.raw_payloads() == [b"b"]
    assert sorted(mqtt.settled) == [1, 2]


def test_shutdown_sends_what_it_holds_and_what_waits_for_a_retry() -> None:
    producer = FakeProducer()
    bridge, mqtt = make(producer, bridge_batch_linger_ms=60_000, bridge_batch_max_messages=2)
    producer.delivery_errors = [KafkaError(KafkaError._TRANSPORT)]
    run(bridge, mqtt, [inbound(1, b"one"), inbound(2, b"two")], rounds=1)  # full: sent, failed
    assert len(bridge.retries) == 1
    run(bridge, mqtt, [inbound(3, b"three")], rounds=1)  # held: the linger is a minute
    assert mqtt.settled == []
    bridge.shutdown(timeout=1)
    assert sorted(producer.raw_payloads()) == [b"one", b"three", b"two"]
    assert sorted(mqtt.settled) == [1, 2, 3]
