"""The bridge without servers, through its ports: batching, acknowledgements, the in-flight
window, metrics, and what Kafka refuses."""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as paho
import pytest
from confluent_kafka import KafkaError, KafkaException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from f2pipe_bridge.batcher import MAX_BATCH_BYTES
from f2pipe_bridge.main import build
from f2pipe_bridge.metrics import BridgeMetrics
from f2pipe_bridge.mqtt import MqttSide, named_filters, pubacks, queue_pubacks, stale_filters
from f2pipe_bridge.ports import Inbound
from f2pipe_bridge.service import GATHER_S, BridgeService
from f2pipe_bridge.settings import BridgeSettings, Settings
from f2pipe_shared.deadletters import PREVIEW_BYTES, DeadLetter, Reason
from f2pipe_shared.records import decode_raw_batch
from f2pipe_shared.settings import (
    CommonSettings,
    KafkaSettings,
    MqttSettings,
    ObservabilitySettings,
)
from f2pipe_shared.topics import parse_topic

RAW, DLQ = "raw-iot-data", "iot-dead-letter"
TOPIC = "tele/f2-aabbccddee01/sensor-mode/J3/sensor-1"


class FakeMqtt:
    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.accepting = True
        self.settled: list[int] = []
        self.ended = False

    def connect(self) -> None:
        self.connected.set()
        self.subscribed.set()

    def end_session(self) -> None:
        self.ended = True
        self.stop()

    def settle(self, message: Inbound) -> bool:
        self.settled.append(message.mid)
        return True

    def send_acks(self) -> None:
        pass

    def stop(self) -> None:
        self.connected.clear()
        self.subscribed.clear()


class FakeClock:
    """Monotonic time from 0 and wall time from when it was made; both move on `advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.wall_ns = time.time_ns()

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return self.wall_ns + round(self.now * 1e9)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProducer:
    """Refuses records above `limit[topic]` as librdkafka does (synchronously), or fails
    deliveries with the errors queued in `delivery_errors`."""

    def __init__(self, limit: dict[str, int] | None = None) -> None:
        self.limit = limit or {}
        self.delivery_errors: list[KafkaError | None] = []
        self.pending: list[tuple[str, bytes, dict[str, Any]]] = []
        self.delivered: list[tuple[str, bytes, dict[str, Any]]] = []
        self.away = False  # Kafka unreachable: nothing is delivered until purged
        self.purged = 0

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
        if self.away:
            return len(self.pending)
        while self.pending:
            self.poll()
        return 0

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self.purged += len(self.pending)
        self.delivery_errors = [KafkaError(KafkaError._PURGE_QUEUE)] * len(self.pending)
        self.away = False

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions={0: None, 1: None})})

    def raw_payloads(self) -> list[bytes]:
        return [m.payload for t, v, _ in self.delivered if t == RAW for m in decode_raw_batch(v)]

    def letters(self) -> list[DeadLetter]:
        return [DeadLetter.from_kafka(v, kw["headers"]) for t, v, kw in self.delivered if t == DLQ]


def make(
    producer: FakeProducer, clock: FakeClock | None = None, **settings: Any
) -> tuple[BridgeService, FakeMqtt]:
    mqtt = FakeMqtt()
    kafka = KafkaSettings(kafka_raw_topic=RAW, kafka_deadletter_topic=DLQ)
    bridge_settings = BridgeSettings(**{"bridge_batch_linger_ms": 0, **settings})
    service = BridgeService(
        kafka, bridge_settings, mqtt, producer, BridgeMetrics(), clock=clock or FakeClock()
    )
    return service, mqtt


def inbound(mid: int, payload: bytes, topic: str = TOPIC) -> Inbound:
    return Inbound(topic, payload, time.time_ns() // 1000, mid, 1, 0)


def run(bridge: BridgeService, mqtt: FakeMqtt, messages: list[Inbound], rounds: int = 5) -> None:
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
    bridge.outbox.retries = [(0.0, attempt) for _, attempt in bridge.outbox.retries]  # due now
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
    bridge.outbox.retries = [(0.0, attempt) for _, attempt in bridge.outbox.retries]
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

    monkeypatch.setattr("f2pipe_bridge.service.parse_topic", broken)
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
    assert len(bridge.outbox.retries) == 1
    run(bridge, mqtt, [inbound(3, b"three")], rounds=1)  # held: the linger is a minute
    assert mqtt.settled == []
    bridge.shutdown(timeout=1)
    assert sorted(producer.raw_payloads()) == [b"one", b"three", b"two"]
    assert sorted(mqtt.settled) == [1, 2, 3]


# --- batching ------------------------------------------------------------------------------


def raw_records(producer: FakeProducer) -> list[tuple[int, list[bytes]]]:
    """Each raw-iot-data record Kafka confirmed: (partition, its messages' payloads)."""
    return [
        (kw["partition"], [m.payload for m in decode_raw_batch(v)])
        for t, v, kw in producer.delivered
        if t == RAW
    ]


def test_a_batch_is_sent_when_it_holds_bridge_batch_max_messages() -> None:
    producer, clock = FakeProducer(), FakeClock()
    bridge, mqtt = make(producer, clock, bridge_batch_max_messages=3, bridge_batch_linger_ms=60_000)
    run(bridge, mqtt, [inbound(i, f"m{i}".encode()) for i in range(1, 8)])
    assert raw_records(producer) == [(0, [b"m1", b"m2", b"m3"]), (0, [b"m4", b"m5", b"m6"])]
    assert mqtt.settled == [1, 2, 3, 4, 5, 6]
    assert bridge.in_flight == 1  # the seventh waits for its batch's linger
    clock.advance(60)
    bridge.pump(timeout=0)
    assert raw_records(producer)[2:] == [(0, [b"m7"])]
    assert mqtt.settled == [1, 2, 3, 4, 5, 6, 7]


def test_a_batch_never_carries_more_than_900_kB_of_messages() -> None:
    producer, clock = FakeProducer(), FakeClock()
    bridge, mqtt = make(
        producer, clock, bridge_batch_max_messages=500, bridge_batch_linger_ms=60_000
    )
    payload = b"p" * 16_000
    cost = len(payload) + len(TOPIC) + 16  # what a message counts for in a batch
    fits = MAX_BATCH_BYTES // cost
    assert (MAX_BATCH_BYTES, fits) == (900_000, 56)
    run(bridge, mqtt, [inbound(i, payload) for i in range(1, 61)])
    # The 57th message would pass 900 kB: the 56 before it went, the rest waits.
    assert [len(messages) for _, messages in raw_records(producer)] == [fits]
    clock.advance(60)
    bridge.pump(timeout=0)
    assert [len(messages) for _, messages in raw_records(producer)] == [fits, 60 - fits]
    assert all(len(v) < 1_000_000 for _, v, _ in producer.delivered)
    assert sorted(mqtt.settled) == list(range(1, 61))


def test_a_batch_is_sent_once_its_first_message_waited_the_linger() -> None:
    producer, clock = FakeProducer(), FakeClock()
    bridge, mqtt = make(producer, clock, bridge_batch_linger_ms=50)
    run(bridge, mqtt, [inbound(1, b"first")], rounds=1)
    clock.now = 0.03
    run(bridge, mqtt, [inbound(2, b"second")], rounds=1)
    clock.now = 0.049
    bridge.pump(timeout=0)
    assert producer.delivered == []
    assert mqtt.settled == []
    clock.now = 0.05  # 50 ms after the first message, 20 ms after the second
    bridge.pump(timeout=0)
    assert raw_records(producer) == [(0, [b"first", b"second"])]
    assert mqtt.settled == [1, 2]


def test_each_partition_has_its_own_batch_and_keeps_each_device_in_order() -> None:
    producer = FakeProducer()
    bridge, mqtt = make(producer, bridge_batch_max_messages=2, bridge_batch_linger_ms=60_000)
    other = TOPIC.replace("aabbccddee01", "aabbccddee04")  # partition 1 of 2
    assert bridge.partitions == 2
    run(bridge, mqtt, [inbound(1, b"a1"), inbound(2, b"b1", other), inbound(3, b"a2")])
    run(bridge, mqtt, [inbound(4, b"b2", other)])
    assert raw_records(producer) == [(0, [b"a1", b"a2"]), (1, [b"b1", b"b2"])]


# --- the MQTT side: acknowledgements and the in-flight window --------------------------


class FakeClient:
    """paho's client as the MQTT side uses it: records subscriptions and acknowledgements."""

    def __init__(self) -> None:
        self.subscribed: list[tuple[str, int]] = []
        self.unsubscribed: list[str] = []
        self.requests: list[str] = []  # "subscribe" / "unsubscribe", in the order sent
        self.acks: list[tuple[int, int]] = []
        self.disconnected_with: Any = "never"

    def connect_async(
        self,
        host: str,
        port: int = 1883,
        keepalive: int = 60,
        *,
        clean_start: bool = False,
        properties: Any = None,
    ) -> None:
        pass

    def loop_start(self) -> None:
        pass

    def subscribe(self, topic: list[tuple[str, int]]) -> None:
        self.subscribed.extend(topic)
        self.requests.append("subscribe")

    def unsubscribe(self, topic: list[str]) -> tuple[int, int]:
        self.unsubscribed.extend(topic)
        self.requests.append("unsubscribe")
        return 0, len(self.requests)  # a packet id per request, as paho gives

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))

    def disconnect(self, *, properties: Any = None) -> None:
        self.disconnected_with = properties

    def loop_stop(self) -> None:
        pass


CONNECTED = ReasonCode(PacketTypes.CONNACK, "Success")
REFUSED = ReasonCode(PacketTypes.CONNACK, "Not authorized")
DROPPED = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")


def mqtt_side(
    metrics: BridgeMetrics | None = None, clock: FakeClock | None = None, **settings: Any
) -> tuple[MqttSide, FakeClient]:
    client = FakeClient()
    side = MqttSide(
        MqttSettings(mqtt_tls=False),
        BridgeSettings(**settings),
        metrics or BridgeMetrics(),
        client=client,
        clock=clock or FakeClock(),
    )
    return side, client


def deliver(side: MqttSide, client: FakeClient, mid: int, topic: str = TOPIC, qos: int = 1) -> None:
    """What paho's network thread does with a PUBLISH from the broker."""
    message = paho.MQTTMessage(mid, topic.encode())
    message.payload = b"{}"
    message.qos = qos
    side.on_message(client, None, message)


def take(side: MqttSide) -> list[Inbound]:
    taken = []
    while not side.inbox.empty():
        taken.append(side.inbox.get_nowait())
    return taken


def test_a_message_is_acknowledged_only_on_the_connection_that_delivered_it() -> None:
    side, client = mqtt_side()
    side.on_connect(client, None, None, REFUSED, None)
    assert side.epoch == 0  # a refused connection is not one
    side.on_connect(client, None, None, CONNECTED, None)
    assert client.subscribed == [("stat/#", 1), ("tele/#", 1)]
    deliver(side, client, 1)
    deliver(side, client, 2)
    deliver(side, client, 3, qos=0)
    first, second, at_most_once = take(side)
    assert side.settle(first) is True
    assert client.acks == []  # acknowledged in bulk, at the service loop's next turn
    side.send_acks()
    assert client.acks == [(1, 1)]

    side.on_disconnect(client, None, None, DROPPED, None)
    side.on_connect(client, None, None, CONNECTED, None)
    # Kafka confirmed the second after the reconnect: its packet id belongs to the old
    # connection, so it is not acknowledged; the broker redelivers it.
    assert side.settle(second) is False
    assert side.settle(at_most_once) is False  # QoS 0 has nothing to acknowledge
    side.send_acks()
    assert client.acks == [(1, 1)]
    deliver(side, client, 2)  # the redelivery, on the new connection
    deliver(side, client, 3)
    again, third = take(side)
    assert side.settle(again) is True
    assert side.settle(third) is True
    side.send_acks()
    assert client.acks == [(1, 1), (2, 1), (3, 1)]
    samples = side.metrics.registry.get_sample_value
    assert samples("f2pipe_bridge_acknowledged_total") == 3
    assert samples("f2pipe_bridge_ack_skipped_total") == 1
    assert samples("f2pipe_bridge_mqtt_connects_total") == 2
    assert samples("f2pipe_bridge_mqtt_connected") == 1


def test_what_was_settled_before_a_reconnect_is_not_acknowledged_after_it() -> None:
    side, client = mqtt_side(bridge_max_in_flight=2)
    side.on_connect(client, None, None, CONNECTED, None)
    deliver(side, client, 1)
    deliver(side, client, 2)
    first, second = take(side)
    assert side.settle(first) is True
    assert side.settle(second) is True
    # The connection drops between Kafka's confirmation and the next turn of the loop: the
    # ids are the old connection's, the broker redelivers both.
    side.on_disconnect(client, None, None, DROPPED, None)
    side.on_connect(client, None, None, CONNECTED, None)
    side.send_acks()
    assert client.acks == []
    assert side.metrics.registry.get_sample_value("f2pipe_bridge_ack_skipped_total") == 2
    deliver(side, client, 1)  # the window's places were freed all the same
    deliver(side, client, 2)
    assert [m.mid for m in take(side)] == [1, 2]


def test_acknowledgements_are_queued_on_paho_as_one_write_of_back_to_back_pubacks() -> None:
    assert pubacks([1, 258, 65535]) == bytes.fromhex("40020001400201024002ffff")
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True)
    queue_pubacks(client, [7, 8, 9])  # paho's private queue: this fails if paho renames it
    [packet] = list(client._out_packet)
    assert packet["command"] == 0x40
    assert bytes(packet["packet"]) == pubacks([7, 8, 9])
    assert packet["to_process"] == 12


def test_shared_subscriptions_with_a_group() -> None:
    side, client = mqtt_side(bridge_shared_group="f2")
    side.on_connect(client, None, None, CONNECTED, None)
    assert client.subscribed == [("$share/f2/stat/#", 1), ("$share/f2/tele/#", 1)]


NEW_SESSION, RESUMED = paho.ConnectFlags(session_present=False), paho.ConnectFlags(True)


def test_a_resumed_session_joining_a_group_drops_its_plain_filters_after_subscribing() -> None:
    side, client = mqtt_side(bridge_shared_group="f2")
    side.on_connect(client, None, RESUMED, CONNECTED, None)
    # The session was a plain bridge's: its stat/# and tele/# would deliver every message a
    # second time beside the group's share. Subscribing first leaves no moment with neither.
    assert client.requests == ["subscribe", "unsubscribe"]
    assert client.unsubscribed == ["stat/#", "tele/#"]


def test_a_bridge_out_of_its_former_group_subscribes_plainly_then_drops_the_group() -> None:
    side, client = mqtt_side(bridge_former_group="f2")
    side.on_connect(client, None, RESUMED, CONNECTED, None)
    # A plain subscription outlives a restart of the broker; the group's does not, and beside
    # the plain one it would deliver every message twice.
    assert client.subscribed == [("stat/#", 1), ("tele/#", 1)]
    assert client.requests == ["subscribe", "unsubscribe"]
    assert client.unsubscribed == ["$share/f2/stat/#", "$share/f2/tele/#"]
    # Still in that group, nothing of it is stale; leaving drops it with the rest.
    assert stale_filters(BridgeSettings(bridge_shared_group="f2", bridge_former_group="f2")) == [
        "stat/#",
        "tele/#",
    ]
    assert named_filters(BridgeSettings(bridge_former_group="f2")) == [
        "stat/#",
        "tele/#",
        "$share/f2/stat/#",
        "$share/f2/tele/#",
    ]


@pytest.mark.parametrize(
    ("group", "flags"), [("f2", NEW_SESSION), (None, RESUMED), (None, NEW_SESSION)]
)
def test_no_filter_is_dropped_from_a_new_session_or_by_a_plain_bridge(
    group: str | None, flags: paho.ConnectFlags
) -> None:
    side, client = mqtt_side(bridge_shared_group=group)
    side.on_connect(client, None, flags, CONNECTED, None)
    assert client.requests == ["subscribe"]


def test_leaving_subscribes_to_nothing_drops_every_filter_it_names_and_ends_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = FakeClient()
    bridge = BridgeSettings(bridge_shared_group="f2")
    side = MqttSide(
        MqttSettings(mqtt_tls=False), bridge, BridgeMetrics(), client=client, leaving=True
    )
    side.on_connect(client, None, RESUMED, CONNECTED, None)
    assert client.subscribed == []
    assert client.unsubscribed == ["stat/#", "tele/#", "$share/f2/stat/#", "$share/f2/tele/#"]
    assert not side.subscribed.is_set()  # until the broker confirmed
    codes = ["Success", "No subscription found", "Success", "Success"]
    with caplog.at_level(logging.INFO, logger="f2pipe_bridge.mqtt"):
        side.on_unsubscribe(
            client, None, 1, [ReasonCode(PacketTypes.UNSUBACK, c) for c in codes], None
        )
    # The reason codes matched to the filters that very request named.
    (record,) = [r for r in caplog.records if r.msg == "MQTT filters dropped from the session"]
    assert record.filters == ["stat/#", "$share/f2/stat/#", "$share/f2/tele/#"]  # type: ignore[attr-defined]
    assert side.subscribed.is_set()
    side.end_session()
    assert client.disconnected_with.SessionExpiryInterval == 0


class TickingClock(FakeClock):
    """Time that moves 0.05 s each time it is read: a loop on it runs through its timeouts."""

    def monotonic(self) -> float:
        self.now += 0.05
        return self.now


def test_leave_hands_over_what_the_session_holds_then_ends_it() -> None:
    producer = FakeProducer()
    bridge, mqtt = make(producer, TickingClock())
    for mid in range(1, 4):
        mqtt.inbox.put(inbound(mid, b'{"n": %d}' % mid))
    assert bridge.leave(quiet_s=1.0, timeout_s=60.0) == 0
    assert mqtt.settled == [1, 2, 3]  # confirmed by Kafka, acknowledged, before the end
    assert producer.raw_payloads() == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert mqtt.ended


def test_leave_keeps_the_session_while_messages_keep_arriving() -> None:
    producer = FakeProducer()
    bridge, mqtt = make(producer, TickingClock())
    endless = threading.Event()

    def keep_arriving() -> None:
        mid = 0
        while not endless.wait(0.01):
            mid += 1
            mqtt.inbox.put(inbound(mid, b"{}"))

    threading.Thread(target=keep_arriving, daemon=True).start()
    try:
        # A filter the settings cannot name (another group's) keeps delivering: ending the
        # session would lose what it holds, so the bridge stops instead, exit 1.
        assert bridge.leave(quiet_s=1.0, timeout_s=5.0) == 1
    finally:
        endless.set()
    assert not mqtt.ended
    assert mqtt.settled  # what came was handed over all the same


def test_a_full_window_holds_paho_until_a_message_is_settled() -> None:
    side, client = mqtt_side(bridge_max_in_flight=2)
    side.on_connect(client, None, None, CONNECTED, None)
    deliver(side, client, 1)
    deliver(side, client, 2)
    third = threading.Thread(target=deliver, args=(side, client, 3), daemon=True)
    third.start()
    third.join(0.3)
    assert third.is_alive(), "a third message was taken with two unsettled"
    first, _ = take(side)
    side.settle(first)
    third.join(0.3)
    assert third.is_alive(), "the place is freed when the acknowledgements go out"
    side.send_acks()
    third.join(5)
    assert not third.is_alive()
    assert [m.mid for m in take(side)] == [3]


def test_shutting_down_releases_paho_waiting_on_a_full_window_without_the_message() -> None:
    side, client = mqtt_side(bridge_max_in_flight=1)
    side.on_connect(client, None, None, CONNECTED, None)
    deliver(side, client, 1)
    waiting = threading.Thread(target=deliver, args=(side, client, 2), daemon=True)
    waiting.start()
    side.accepting = False
    waiting.join(5)
    assert not waiting.is_alive()
    assert [m.mid for m in take(side)] == [1]  # never taken, never acknowledged: the broker keeps 2
    assert side.metrics.registry.get_sample_value("f2pipe_bridge_received_total") == 1


def test_in_flight_counts_what_is_received_and_not_yet_confirmed() -> None:
    producer, clock = FakeProducer(), FakeClock()
    bridge, mqtt = make(producer, clock, bridge_batch_linger_ms=1_000)
    run(bridge, mqtt, [inbound(i, b"{}") for i in range(1, 4)], rounds=1)
    gauge = bridge.metrics.registry.get_sample_value
    assert (bridge.in_flight, gauge("f2pipe_bridge_in_flight")) == (3, 3)
    clock.advance(1)
    bridge.pump(timeout=0)
    assert (bridge.in_flight, gauge("f2pipe_bridge_in_flight")) == (0, 0)
    assert mqtt.settled == [1, 2, 3]


# --- metrics ---------------------------------------------------------------------------


def test_metrics_count_received_produced_acknowledged_and_dead_lettered() -> None:
    producer, clock, metrics = FakeProducer(), FakeClock(), BridgeMetrics()
    side, client = mqtt_side(metrics, clock)
    kafka = KafkaSettings(kafka_raw_topic=RAW, kafka_deadletter_topic=DLQ)
    settings = BridgeSettings(bridge_batch_linger_ms=0, bridge_max_payload_bytes=64)
    bridge = BridgeService(kafka, settings, side, producer, metrics, clock=clock)
    side.on_connect(client, None, None, CONNECTED, None)
    for mid in (1, 2, 3):
        deliver(side, client, mid)
    deliver(side, client, 4, topic="not/a/topic")
    oversize = paho.MQTTMessage(5, TOPIC.encode())
    oversize.payload, oversize.qos = b"x" * 65, 1
    side.on_message(client, None, oversize)
    clock.advance(0.2)  # 200 ms from MQTT to Kafka
    bridge.pump(timeout=0)

    sample = metrics.registry.get_sample_value
    assert sample("f2pipe_bridge_received_total") == 5
    assert sample("f2pipe_bridge_produced_messages_total") == 3
    assert sample("f2pipe_bridge_produced_batches_total") == 1
    assert sample("f2pipe_bridge_batch_messages_sum") == 3
    assert sample("f2pipe_bridge_dead_letters_total", {"reason": "bad_topic"}) == 1
    assert sample("f2pipe_bridge_dead_letters_total", {"reason": "oversize"}) == 1
    assert sample("f2pipe_bridge_acknowledged_total") == 5
    assert sample("f2pipe_bridge_in_flight") == 0
    # Once per record (its oldest message): the three went in one.
    assert sample("f2pipe_bridge_delivery_latency_seconds_count") == 1
    assert sample("f2pipe_bridge_delivery_latency_seconds_sum") == pytest.approx(0.2)
    assert sorted(mid for mid, _ in client.acks) == [1, 2, 3, 4, 5]


def test_metrics_count_kafka_errors_by_code() -> None:
    producer = FakeProducer()
    bridge, mqtt = make(producer)
    producer.delivery_errors = [KafkaError(KafkaError._MSG_TIMED_OUT)]
    run(bridge, mqtt, [inbound(1, b"{}")], rounds=1)
    sample = bridge.metrics.registry.get_sample_value
    assert sample("f2pipe_bridge_kafka_errors_total", {"code": "_MSG_TIMED_OUT"}) == 1
    assert sample("f2pipe_bridge_produced_messages_total") == 0


def test_each_bridge_metrics_counts_alone_and_keeps_its_names() -> None:
    first, second = BridgeMetrics(), BridgeMetrics()
    first.received.inc()
    assert first.registry.get_sample_value("f2pipe_bridge_received_total") == 1
    assert second.registry.get_sample_value("f2pipe_bridge_received_total") == 0
    families = {f.name: f for f in second.registry.collect()}
    # Dashboards and alerts use these names: a rename breaks them.
    assert {n for n in families if n.startswith("f2pipe_bridge_")} == {
        "f2pipe_bridge_received",
        "f2pipe_bridge_produced_messages",
        "f2pipe_bridge_produced_batches",
        "f2pipe_bridge_acknowledged",
        "f2pipe_bridge_ack_skipped",
        "f2pipe_bridge_dead_letters",
        "f2pipe_bridge_in_flight",
        "f2pipe_bridge_kafka_errors",
        "f2pipe_bridge_mqtt_connected",
        "f2pipe_bridge_mqtt_connects",
        "f2pipe_bridge_delivery_latency_seconds",
        "f2pipe_bridge_batch_messages",
    }
    second.dead_letters.labels(reason="oversize").inc()
    second.kafka_errors.labels(code="_TRANSPORT").inc()
    assert (
        second.registry.get_sample_value("f2pipe_bridge_dead_letters_total", {"reason": "oversize"})
        == 1
    )
    assert (
        second.registry.get_sample_value("f2pipe_bridge_kafka_errors_total", {"code": "_TRANSPORT"})
        == 1
    )
    assert "process_cpu_seconds" in families  # /metrics keeps the process and Python series
    assert "python_info" in families


# --- health and build ------------------------------------------------------------------


class SilentProducer(FakeProducer):
    """Kafka takes records and never confirms them."""

    def poll(self, timeout: float = 0) -> int:
        return 0


def test_health_fails_once_a_batch_waited_a_minute_for_kafka() -> None:
    clock = FakeClock()
    bridge, mqtt = make(SilentProducer(), clock)
    mqtt.connect()
    assert bridge.health() == (
        True,
        {
            "mqtt_connected": True,
            "mqtt_subscribed": True,
            "in_flight": 0,
            "oldest_unconfirmed_s": 0.0,
        },
    )
    run(bridge, mqtt, [inbound(1, b"{}")], rounds=1)
    clock.advance(59.9)
    assert bridge.health()[0] is True
    clock.advance(0.1)
    ok, details = bridge.health()
    assert not ok
    assert details["in_flight"] == 1
    mqtt.stop()
    assert bridge.health()[0] is False


def test_health_waits_for_the_subscription_not_only_the_connection() -> None:
    # docker-compose starts the simulator once the bridge is healthy: on a first start the
    # session has no subscription until the SUBACK, and what is published before is dropped.
    side, client = mqtt_side()
    kafka = KafkaSettings(kafka_raw_topic=RAW, kafka_deadletter_topic=DLQ)
    bridge = BridgeService(kafka, BridgeSettings(), side, FakeProducer(), side.metrics)
    granted = [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")] * 2
    side.on_connect(client, None, None, CONNECTED, None)
    ok, details = bridge.health()
    assert not ok
    assert details["mqtt_connected"] is True
    assert details["mqtt_subscribed"] is False
    side.on_subscribe(client, None, 1, granted, None)
    assert bridge.health() == (True, {**details, "mqtt_subscribed": True})
    side.on_disconnect(client, None, None, DROPPED, None)
    assert bridge.health()[0] is False
    side.on_connect(client, None, None, CONNECTED, None)
    refused = [ReasonCode(PacketTypes.SUBACK, "Not authorized")] * 2
    side.on_subscribe(client, None, 2, refused, None)  # the ACL refuses the bridge
    assert bridge.health()[0] is False


def test_build_wires_the_given_ports_and_a_registry_of_its_own() -> None:
    settings = Settings(
        common=CommonSettings(),
        observability=ObservabilitySettings(),
        kafka=KafkaSettings(kafka_raw_topic=RAW, kafka_deadletter_topic=DLQ),
        mqtt=MqttSettings(mqtt_tls=False),
        bridge=BridgeSettings(),
    )
    producer, mqtt = FakeProducer(), FakeMqtt()
    first, second = build(settings, producer, mqtt), build(settings, producer, mqtt)
    assert first.mqtt is mqtt
    assert first.outbox.producer is producer
    assert first.partitions == 2
    assert first.metrics.registry is not second.metrics.registry


def test_dead_letters_are_logged_grouped_per_reason_and_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from f2pipe_bridge.outbox import LOG_INTERVAL_S, LOGGED_DEVICES

    producer, clock = FakeProducer(), FakeClock()
    bridge, mqtt = make(producer, clock, bridge_max_payload_bytes=64)
    bad_topics = [inbound(i, b"{}", f"tele/f2-{i:012x}/nonsense") for i in range(2000)]
    oversize = [inbound(5000 + i, b"x" * 100, TOPIC) for i in range(3)]

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("dead-lettered")]

    with caplog.at_level(logging.WARNING, logger="f2pipe_bridge"):
        run(bridge, mqtt, [*bad_topics, *oversize])
        clock.advance(LOG_INTERVAL_S - 1)
        bridge.pump(timeout=0)
        assert lines() == []  # nothing until the interval has passed
        clock.advance(1)
        bridge.pump(timeout=0)
        bridge.pump(timeout=0)
        by_reason = {r.reason: r for r in lines()}  # type: ignore[attr-defined]
        assert len(lines()) == 2
        bad = by_reason["bad_topic"]
        assert bad.count == 2000  # type: ignore[attr-defined]
        assert "2000" in bad.getMessage()
        assert bad.devices == [f"f2-{i:012x}" for i in range(LOGGED_DEVICES)]  # type: ignore[attr-defined]
        assert bad.more_devices is True  # type: ignore[attr-defined]
        assert bad.detail  # type: ignore[attr-defined]
        big = by_reason["oversize"]
        assert (big.count, big.devices) == (3, ["f2-aabbccddee01"])  # type: ignore[attr-defined]
        assert "exceeds BRIDGE_MAX_PAYLOAD_BYTES" in big.detail  # type: ignore[attr-defined]
        assert len(producer.letters()) == 2003  # every letter still goes to Kafka

        caplog.clear()
        run(bridge, mqtt, bad_topics[:5])
        clock.advance(LOG_INTERVAL_S)
        bridge.pump(timeout=0)
        [again] = lines()
        assert again.count == 5  # type: ignore[attr-defined]

        caplog.clear()
        run(bridge, mqtt, oversize[:1])
        bridge.shutdown(timeout=0)  # what is held is logged at shutdown
        [last] = lines()
        assert last.reason == "oversize"  # type: ignore[attr-defined]


def test_shutdown_with_kafka_away_purges_and_acknowledges_nothing() -> None:
    producer = FakeProducer()
    bridge, mqtt = make(producer, bridge_batch_linger_ms=60_000)
    producer.away = True
    run(bridge, mqtt, [inbound(1, b"one"), inbound(2, b"two")], rounds=1)
    bridge.shutdown(timeout=0.01)
    # Exit is not held by what Kafka never confirmed, and none of it was acknowledged: the
    # broker delivers it again to the next bridge.
    assert producer.purged == 1
    assert mqtt.settled == []
    assert producer.raw_payloads() == []


class RecordingInbox:
    """The inbox, recording how long each get() may block."""

    def __init__(self) -> None:
        self.inner: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        self.waits: list[float | None] = []

    def put(self, item: Inbound) -> None:
        self.inner.put(item)

    def get(self, block: bool = True, timeout: float | None = None) -> Inbound:
        self.waits.append(timeout if block else 0.0)
        return self.inner.get(block, timeout)

    def get_nowait(self) -> Inbound:
        return self.get(False)


def test_while_messages_flow_the_loop_gathers_them_instead_of_waking_for_each() -> None:
    bridge, mqtt = make(FakeProducer(), bridge_batch_linger_ms=1000)
    inbox = RecordingInbox()
    mqtt.inbox = inbox  # type: ignore[assignment]
    inbox.put(inbound(1, b"{}"))
    assert bridge.pump(timeout=0.1) == 1
    assert inbox.waits[0] == 0.1  # idle: it blocks, so the first message is taken at once
    # Flowing: a blocked get() would be woken by each of paho's puts (a thread switch per
    # message); the loop sleeps GATHER_S and takes what came meanwhile without blocking.
    inbox.waits.clear()
    threading.Timer(GATHER_S / 5, inbox.put, [inbound(2, b"{}")]).start()
    started = time.monotonic()
    assert bridge.pump(timeout=0.1) == 1
    assert time.monotonic() - started >= GATHER_S
    assert inbox.waits[0] == 0.0
    inbox.waits.clear()
    assert bridge.pump(timeout=0.1) == 0  # nothing came: the next turn blocks again
    assert bridge.pump(timeout=0.1) == 0
    assert inbox.waits[-1] == pytest.approx(0.1, abs=0.01)


def test_stop_wakes_a_waiting_loop_and_the_wake_up_is_no_message() -> None:
    producer = FakeProducer()
    bridge, _ = make(producer)
    threading.Timer(0.2, bridge.stop).start()
    started = time.monotonic()
    bridge._receive(wait=30.0, limit=None)  # returns once stop() put its wake-up
    assert time.monotonic() - started < 5
    assert bridge.stopping.is_set()
    assert bridge.in_flight == 0
    assert producer.raw_payloads() == []
    assert producer.letters() == []
