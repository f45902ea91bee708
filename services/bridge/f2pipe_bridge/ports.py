"""What the bridge's loop talks to, as small protocols: paho's side and confluent-kafka's
producer in production (`mqtt.MqttSide`, `confluent_kafka.Producer`), fakes in unit tests."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message

from f2pipe_bridge.mqtt import Inbound

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class MessageSource(Protocol):
    """The MQTT session: messages arrive in `inbox`, each is settled exactly once."""

    inbox: queue.SimpleQueue[Inbound]
    connected: threading.Event
    accepting: bool

    def connect(self) -> None: ...

    def settle(self, message: Inbound) -> bool: ...

    def stop(self) -> None: ...


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

    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...
