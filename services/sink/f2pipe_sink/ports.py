"""What the sink talks to, as small protocols. In production: confluent-kafka's `Consumer`
and `Producer`, `writer.Writer`, `dlq.DeadLetterProducer` and the `time` module, each
satisfying its protocol structurally; in unit tests, fakes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from confluent_kafka import KafkaError, TopicPartition

from f2pipe_shared.deadletters import DeadLetter
from f2pipe_sink.batch import Record
from f2pipe_sink.writer import WriteResult

# Called with the consumer and the partitions assigned, revoked or lost.
RebalanceCallback = Callable[[Any, list[TopicPartition]], None]
# Called with the delivery's error (None: delivered) and the message.
DeliveryCallback = Callable[[KafkaError | None, Any], None]


class ConsumedRecord(Protocol):
    """A consumed record, or an error in its place: confluent-kafka's `Message`."""

    def error(self) -> KafkaError | None: ...

    def topic(self) -> str | None: ...

    def partition(self) -> int | None: ...

    def offset(self) -> int | None: ...

    def value(self) -> bytes | None: ...


class RecordConsumer(Protocol):
    """The part of confluent-kafka's `Consumer` the sink uses: manual commits, pause/resume."""

    def subscribe(
        self,
        topics: list[str],
        *,
        on_assign: RebalanceCallback,
        on_revoke: RebalanceCallback,
        on_lost: RebalanceCallback,
    ) -> None: ...

    def consume(self, num_messages: int, timeout: float, /) -> Sequence[ConsumedRecord]: ...

    def poll(self, timeout: float, /) -> ConsumedRecord | None: ...

    def pause(self, partitions: list[TopicPartition], /) -> None: ...

    def resume(self, partitions: list[TopicPartition], /) -> None: ...

    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[False]
    ) -> list[TopicPartition]: ...

    def close(self) -> None: ...


class RowWriter(Protocol):
    """`writer.Writer`: a batch's rows in one transaction, or DatabaseUnavailable."""

    def write(self, records: Sequence[Record], /) -> WriteResult: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class DeadLetters(Protocol):
    """`dlq.DeadLetterProducer`: letters produced and confirmed, or DeadLetterError."""

    def send(self, letters: Sequence[DeadLetter], /) -> None: ...

    def close(self) -> None: ...


class RecordProducer(Protocol):
    """The part of confluent-kafka's `Producer` the dead letters use."""

    def produce(
        self,
        topic: str,
        /,
        *,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, str | bytes | None]],
        on_delivery: DeliveryCallback,
    ) -> None: ...

    def poll(self, timeout: float, /) -> int: ...

    def flush(self, timeout: float, /) -> int: ...


class TopicStatus(Protocol):
    """The topics as a running service sees them (`f2pipe_shared.kafka.TopicWatch`):
    `generation` changes when the broker lost them (its producer ids too)."""

    generation: int

    def problems(self) -> list[str]: ...


class Clock(Protocol):
    """Monotonic seconds, and waiting: the `time` module."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float, /) -> None: ...
