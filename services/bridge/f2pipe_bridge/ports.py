"""What the bridge talks to, as small protocols, and the message that crosses them.

Production: `mqtt.MqttSide` is the MessageSource, around paho's `Client` (MqttClient);
`confluent_kafka.Producer` is the RecordProducer; the `time` module is the Clock. Unit tests
pass fakes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from confluent_kafka import KafkaError, Message

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class Inbound(NamedTuple):
    """One MQTT message as received, stamped with the connection (`epoch`) it came on."""

    topic: str
    payload: bytes
    received_at_us: int
    mid: int
    qos: int
    epoch: int


class MessageSource(Protocol):
    """The MQTT session: messages arrive in `inbox`, each is settled exactly once."""

    inbox: queue.SimpleQueue[Inbound]
    connected: threading.Event
    # Set once the broker accepted the subscriptions (SUBACK): only then does the session
    # collect messages, so only then may what publishes through it start (health). When
    # leaving: once the broker dropped the filters (UNSUBACK), nothing new is collected.
    subscribed: threading.Event
    accepting: bool

    def connect(self) -> None: ...

    def settle(self, message: Inbound) -> bool: ...

    # Acknowledges what was settled since the last call (the service calls it every turn).
    def send_acks(self) -> None: ...

    def stop(self) -> None: ...

    # Disconnect and have the broker discard the session (`f2pipe bridge --leave`).
    def end_session(self) -> None: ...


class RecordProducer(Protocol):
    """The part of confluent-kafka's Producer the bridge uses."""

    def produce(
        self,
        topic: str,
        value: bytes | None = ...,
        *,
        key: bytes | None = ...,
        partition: int = ...,
        on_delivery: DeliveryCallback | None = ...,
        headers: list[tuple[str, str | bytes | None]] | None = ...,
    ) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...

    def purge(self, in_queue: bool = ..., in_flight: bool = ..., blocking: bool = ...) -> None: ...

    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...


class TopicStatus(Protocol):
    """The topics as a running service sees them (`f2pipe_shared.kafka.TopicWatch`):
    `generation` changes when the broker lost them (its producer ids too)."""

    generation: int

    def problems(self) -> list[str]: ...


class MqttClient(Protocol):
    """The part of paho's `Client` the MQTT side uses once it is configured."""

    def connect_async(
        self,
        host: str,
        port: int = ...,
        keepalive: int = ...,
        *,
        clean_start: bool = ...,
        properties: Any = ...,
    ) -> None: ...

    def loop_start(self) -> object: ...

    def subscribe(self, topic: list[tuple[str, int]]) -> object: ...

    # Returns (result, the packet id its UNSUBACK will carry; None when nothing was sent).
    def unsubscribe(self, topic: list[str]) -> tuple[object, int | None]: ...

    def ack(self, mid: int, qos: int) -> object: ...

    def disconnect(self, *, properties: Any = ...) -> object: ...

    def loop_stop(self) -> object: ...


class Clock(Protocol):
    """Time as the bridge reads it: batch ages and retries (monotonic), receive stamps (wall)."""

    def monotonic(self) -> float: ...

    def time_ns(self) -> int: ...
