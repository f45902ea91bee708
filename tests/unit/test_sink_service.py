"""The sink's flow with stand-ins for Kafka, PostgreSQL and the dead-letter producer:
when it writes, what it commits, how it holds a batch through an outage and a rebalance."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import pytest
from confluent_kafka import TopicPartition

from f2pipe_shared.deadletters import DeadLetter, Reason
from f2pipe_shared.records import ProcessedBatch, Reading, encode_processed_batch
from f2pipe_shared.settings import KafkaSettings
from f2pipe_sink.batcher import Record
from f2pipe_sink.dlq import DeadLetterError
from f2pipe_sink.metrics import SinkMetrics
from f2pipe_sink.service import Sink
from f2pipe_sink.settings import SinkSettings
from f2pipe_sink.writer import DatabaseUnavailable, Rejection, WriteResult

TOPIC = "processed"
T0 = 1_795_000_000_000_000


class FakeMessage:
    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self._partition, self._offset, self._value = partition, offset, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


class FakeConsumer:
    def __init__(self) -> None:
        self.queue: list[FakeMessage] = []
        self.paused: set[int] = set()
        self.commits: list[dict[int, int]] = []
        self.callbacks: dict[str, Any] = {}
        self.next_offset: dict[int, int] = {}
        self.closed = False

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def assign(self, partitions: list[int]) -> None:
        self.callbacks["on_assign"](self, [TopicPartition(TOPIC, p) for p in partitions])

    def revoke(self, partitions: list[int]) -> None:
        self.callbacks["on_revoke"](self, [TopicPartition(TOPIC, p) for p in partitions])

    def send(self, partition: int, rows: int) -> FakeMessage:
        offset = self.next_offset.get(partition, 0)
        self.next_offset[partition] = offset + 1
        readings = [Reading(T0 + offset * 1000 + i, partition, 1, 1.0) for i in range(rows)]
        value = encode_processed_batch(ProcessedBatch(0, 0, readings, []))
        message = FakeMessage(partition, offset, value)
        self.queue.append(message)
        return message

    def _take(self, n: int) -> list[FakeMessage]:
        taken = [m for m in self.queue if m.partition() not in self.paused][:n]
        self.queue = [m for m in self.queue if m not in taken]
        return taken

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        return self._take(n)

    def poll(self, timeout: float) -> FakeMessage | None:
        taken = self._take(1)
        if not taken:
            time.sleep(min(timeout, 0.001))
        return taken[0] if taken else None

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in partitions}

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        assert asynchronous is False
        self.commits.append({tp.partition: tp.offset for tp in offsets})
        return offsets

    def close(self) -> None:
        self.closed = True


class FakeWriter:
    def __init__(self) -> None:
        self.down = False
        self.written: list[list[Record]] = []
        self.reject: set[int] = set()  # offsets of records the "database" refuses

    def write(self, records: Sequence[Record]) -> WriteResult:
        if self.down:
            raise DatabaseUnavailable("57P01: terminating connection")
        self.written.append(list(records))
        rejected = [
            Rejection(r, Reason.constraint_violation, "no")
            for r in records
            if r.offset in self.reject
        ]
        rows = sum(r.rows for r in records if r.offset not in self.reject)
        return WriteResult(rows, 0, rejected, 1, False, time.time())

    def ping(self) -> None:
        if self.down:
            raise DatabaseUnavailable("down")

    def close(self) -> None:
        pass


class FakeDeadLetters:
    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []
        self.down = False

    def send(self, letters: Sequence[DeadLetter]) -> None:
        if self.down and letters:
            raise DeadLetterError("no broker")
        self.sent += letters

    def close(self) -> None:
        pass


@pytest.fixture
def parts() -> tuple[Sink, FakeConsumer, FakeWriter, FakeDeadLetters]:
    consumer, writer, dlq = FakeConsumer(), FakeWriter(), FakeDeadLetters()
    sink = Sink(
        KafkaSettings(kafka_processed_topic=TOPIC),
        SinkSettings(
            batch_size=100,
            flush_interval=60,
            sink_retry_max_seconds=0.01,
            sink_shutdown_timeout=0.05,
        ),
        "host=unused",
        SinkMetrics(),
        consumer=cast(Any, consumer),
        writer=cast(Any, writer),
        dlq=cast(Any, dlq),
    )
    sink.consumer.subscribe(
        [TOPIC], on_assign=sink._on_assign, on_revoke=sink._on_revoke, on_lost=sink._on_lost
    )
    consumer.assign([0, 1])
    return sink, consumer, writer, dlq


def held(sink: Sink) -> bool:
    """Read through a call: mypy would otherwise keep an earlier assert's narrowing."""
    return sink.held


def steps(sink: Sink, n: int = 5) -> None:
    for _ in range(n):
        sink._step()


def test_writes_at_batch_size_and_commits_each_partition_offset_plus_one(
    parts: tuple[Sink, FakeConsumer, FakeWriter, FakeDeadLetters],
) -> None:
    sink, consumer, writer, _ = parts
    for partition in (0, 1, 0):
        consumer.send(partition, 30)
    steps(sink)
    assert writer.written == []  # 90 rows < BATCH_SIZE 100, FLUSH_INTERVAL not passed
    assert consumer.commits == []
    consumer.send(1, 30)
    steps(sink)
    assert [len(w) for w in writer.written] == [4]
    assert consumer.commits == [{0: 2, 1: 2}]
    assert sink.batch.rows == 0


def test_writes_when_the_flush_interval_passed(
    parts: tuple[Sink, FakeConsumer, FakeWriter, FakeDeadLetters],
) -> None:
    sink, consumer, writer, _ = parts
    sink.flush_interval = 0.02
    consumer.send(0, 5)
    steps(sink, 1)
    assert writer.written == []
    time.sleep(0.03)
    steps(sink, 1)
    assert consumer.commits == [{0: 1}]


def test_outage_pauses_holds_commits_nothing_then_resumes(
    parts: tuple[Sink, FakeConsumer, FakeWriter, FakeDeadLetters],
) -> None:
    sink, consumer, writer, _ = parts
    writer.down = True
    for _ in range(4):
        consumer.send(0, 30)
    consumer.send(1, 30)
    steps(sink, 3)
    assert held(sink)
    assert consumer.paused == {0, 1}
    assert consumer.commits == []
    assert sink.health() == (
        False,
        {"assigned_partitions": 2, "database": "down", "paused": True, "held_rows": 150},
    )
    time.sleep(0.05)
    steps(sink, 3)  # retries fail too
    registry = sink.metrics.registry
    assert (registry.get_sample_value("f2pipe_sink_write_retries_total") or 0) >= 1
    assert registry.get_sample_value("f2pipe_sink_db_outages_total") == 1

    writer.down = False
    time.sleep(0.05)
    steps(sink, 3)
    assert not held(sink)
    assert consumer.paused == set()
    assert consumer.commits == [{0: 4, 1: 1}]
    assert sum(len(w) for w in writer.written) == 5  # every held record, once
    assert sink.health()[0] is True


def test_revoked_partitions_drop_their_held_records_uncommitted(
    parts: tuple[Sink, FakeConsumer, FakeWriter, FakeDeadLetters],
) -> None:
    sink, consumer, writer, _ = parts
    writer.down = True
    consumer.send(0, 60)
    consumer.send(1, 60)
    steps(sink, 2)
    assert held(sink)
    consumer.revoke([1])  # the revocation's flush fails as well
    assert [r.partition for r in sink.batch.records] == [0]
    assert consumer.paused == {0}  # partition 1 resumed, so a later owner of it here reads
    assert held(sink)
    consumer.revoke([0])
    assert sink.batch.records == []
    assert not held(sink)
    assert consumer.commits == []
    assert sink.assignment == set()


def test_revocation_writes_and_commits_what_it_can(
    parts: tuple[Sink, FakeConsumer, FakeWriter, FakeDeadLetters],
) -> None:
    sink, consumer, _, _ = parts
    consumer.send(0, 10)
    consumer.send(1, 10)
    steps(sink, 2)
    consumer.revoke([0, 1])
    assert consumer.commits == [{0: 1, 1: 1}]
    assert sink.batch.records == []


def test_dead_letters_go_out_before_the_commit(
    parts: tuple[Sink, FakeConsumer, FakeWriter, FakeDeadLetters],
) -> None:
    sink, consumer, writer, dlq = parts
    consumer.queue.append(FakeMessage(0, 0, b"not a batch"))
    consumer.next_offset[0] = 1
    refused = consumer.send(0, 50)
    writer.reject = {refused.offset()}
    consumer.send(0, 60)
    dlq.down = True
    steps(sink, 2)
    assert held(sink)  # letters unconfirmed: nothing committed
    assert consumer.commits == []
    dlq.down = False
    time.sleep(0.05)
    steps(sink, 2)
    assert [(d.reason, d.source_offset) for d in dlq.sent] == [
        (Reason.bad_batch, 0),
        (Reason.constraint_violation, 1),
    ]
    assert consumer.commits == [{0: 3}]


def test_shutdown_writes_what_it_holds(
    parts: tuple[Sink, FakeConsumer, FakeWriter, FakeDeadLetters],
) -> None:
    sink, consumer, _, _ = parts
    consumer.send(0, 10)
    steps(sink, 1)
    sink.stop()
    assert sink.run() == 0
    assert consumer.commits == [{0: 1}]
    assert consumer.closed


def test_shutdown_gives_up_after_its_timeout_without_committing(
    parts: tuple[Sink, FakeConsumer, FakeWriter, FakeDeadLetters],
) -> None:
    sink, consumer, writer, _ = parts
    writer.down = True
    consumer.send(0, 10)
    steps(sink, 1)
    sink.stop()
    started = time.monotonic()
    assert sink.run() == 1
    assert time.monotonic() - started < 2
    assert consumer.commits == []
    assert consumer.closed
