"""The sink's flow with stand-ins for Kafka, PostgreSQL, the dead-letter producer and the clock:
when it writes, what it commits, how it holds a batch through an outage and a rebalance; how
the writer isolates a refused row, and how a dead letter Kafka refuses goes again.

The fakes satisfy the protocols of `f2pipe_sink.ports`; time is a FakeClock that moves only
when a test advances it, an empty poll waits out its timeout, or the sink sleeps."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from f2pipe_shared.deadletters import DeadLetter, Reason, Stage
from f2pipe_shared.records import Event, ProcessedBatch, Reading, encode_processed_batch
from f2pipe_shared.settings import (
    CommonSettings,
    KafkaSettings,
    ObservabilitySettings,
    PostgresSettings,
    TimescaleSettings,
)
from f2pipe_sink.batch import Record, take
from f2pipe_sink.dlq import DeadLetterError, DeadLetterSender
from f2pipe_sink.main import build
from f2pipe_sink.metrics import SinkMetrics
from f2pipe_sink.ports import DeliveryCallback, RebalanceCallback
from f2pipe_sink.rows import READING_ROW_BYTES
from f2pipe_sink.service import FIRST_RETRY_SECONDS, SinkService
from f2pipe_sink.settings import Settings, SinkSettings
from f2pipe_sink.writer import (
    DatabaseUnavailable,
    Refused,
    Rejection,
    WriteResult,
    isolate_refused,
)

TOPIC = "processed"
T0 = 1_795_000_000_000_000
START = 1000.0  # the fake clock's first reading


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float, /) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


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
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.queue: list[FakeMessage] = []
        self.paused: set[int] = set()
        self.commits: list[dict[int, int]] = []
        self.callbacks: dict[str, RebalanceCallback] = {}
        self.next_offset: dict[int, int] = {}
        self.closed = False
        self.refused: list[dict[int, int]] = []
        self.refuse = 0  # the next commits refused whole (KafkaException), as a busy group does
        self.refuse_partitions: set[int] = set()  # refused per partition (an error on the tp)

    def subscribe(self, topics: list[str], **callbacks: RebalanceCallback) -> None:
        assert set(callbacks) == {"on_assign", "on_revoke", "on_lost"}  # the port's keywords
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

    def consume(self, num_messages: int, timeout: float, /) -> list[FakeMessage]:
        return self._take(num_messages)

    def poll(self, timeout: float, /) -> FakeMessage | None:
        taken = self._take(1)
        if not taken:
            self.clock.advance(timeout)  # nothing arrives: the poll waits out its timeout
        return taken[0] if taken else None

    def pause(self, partitions: list[TopicPartition], /) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[TopicPartition], /) -> None:
        self.paused -= {tp.partition for tp in partitions}

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        assert asynchronous is False
        if self.refuse:
            self.refuse -= 1
            self.refused.append({tp.partition: tp.offset for tp in offsets})
            raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
        error = KafkaError(KafkaError.NOT_COORDINATOR)
        results = [
            TopicPartition(tp.topic, tp.partition, tp.offset)
            if tp.partition not in self.refuse_partitions
            else _with_error(tp, error)
            for tp in offsets
        ]
        accepted = {tp.partition: tp.offset for tp in results if tp.error is None}
        if accepted:
            self.commits.append(accepted)
        return results

    def close(self) -> None:
        self.closed = True


def _with_error(tp: TopicPartition, error: KafkaError) -> TopicPartition:
    # confluent-kafka's TopicPartition takes its error only from librdkafka: a stand-in.
    class Refused(TopicPartition):
        @property
        def error(self) -> KafkaError:  # type: ignore[override]
            return error

    return Refused(tp.topic, tp.partition, tp.offset)


class FakeWriter:
    def __init__(self) -> None:
        self.down = False
        self.attempts = 0
        self.written: list[list[Record]] = []
        self.reject: set[int] = set()  # offsets of records the "database" refuses

    def write(self, records: Sequence[Record], /) -> WriteResult:
        self.attempts += 1
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

    def send(self, letters: Sequence[DeadLetter], /) -> None:
        if self.down and letters:
            raise DeadLetterError("no broker")
        self.sent += letters

    def close(self) -> None:
        pass


class Parts(NamedTuple):
    sink: SinkService
    consumer: FakeConsumer
    writer: FakeWriter
    dlq: FakeDeadLetters
    clock: FakeClock


def make_parts(retry_max_seconds: float = 0.01) -> Parts:
    clock = FakeClock()
    consumer, writer, dlq = FakeConsumer(clock), FakeWriter(), FakeDeadLetters()
    sink = SinkService(
        SinkSettings(
            batch_size=100,
            flush_interval=60,
            sink_retry_max_seconds=retry_max_seconds,
            sink_shutdown_timeout=0.05,
        ),
        TOPIC,
        consumer=consumer,
        writer=writer,
        dead_letters=dlq,
        metrics=SinkMetrics(),
        clock=clock,
    )
    sink.consumer.subscribe(
        [TOPIC], on_assign=sink._on_assign, on_revoke=sink._on_revoke, on_lost=sink._on_lost
    )
    consumer.assign([0, 1])
    return Parts(sink, consumer, writer, dlq, clock)


@pytest.fixture
def parts() -> Parts:
    return make_parts()


def held(sink: SinkService) -> bool:
    """Read through a call: mypy would otherwise keep an earlier assert's narrowing."""
    return sink.held


def steps(sink: SinkService, n: int = 5) -> None:
    for _ in range(n):
        sink._step()


# -- the service's flow ------------------------------------------------------------------------


def test_writes_at_batch_size_and_commits_each_partition_offset_plus_one(parts: Parts) -> None:
    sink, consumer, writer, _, _ = parts
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


def test_writes_when_the_flush_interval_passed(parts: Parts) -> None:
    sink, consumer, writer, _, clock = parts
    sink.flush_interval = 0.02
    consumer.send(0, 5)
    steps(sink, 1)
    assert writer.written == []
    clock.advance(0.03)
    steps(sink, 1)
    assert consumer.commits == [{0: 1}]


def test_flushes_by_size_at_once_and_by_interval_from_the_batch_s_first_record() -> None:
    sink, consumer, writer, _, clock = make_parts()
    sink.flush_interval = 1.0
    consumer.send(0, 60)
    consumer.send(1, 60)
    consumer.send(0, 10)
    steps(sink, 1)
    # BATCH_SIZE reached by the second record of one drain: written then, without waiting.
    assert [[r.offset for r in w] for w in writer.written] == [[0, 0]]
    assert consumer.commits == [{0: 1, 1: 1}]
    assert clock.now == START
    # The third record started the next batch; its interval counts from it.
    assert (sink.batch.rows, sink.batch.started) == (10, START)
    steps(sink, 1)  # an idle poll waits at most IDLE_POLL_SECONDS (0.5): not yet due
    assert len(writer.written) == 1
    steps(sink, 1)  # waits exactly until the batch's deadline, then writes it
    assert clock.now - START == pytest.approx(1.0)
    assert [[r.offset for r in w] for w in writer.written] == [[0, 0], [1]]
    assert consumer.commits == [{0: 1, 1: 1}, {0: 2}]


def test_outage_pauses_holds_commits_nothing_then_resumes(parts: Parts) -> None:
    sink, consumer, writer, _, clock = parts
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
    clock.advance(0.05)
    steps(sink, 3)  # retries fail too
    registry = sink.metrics.registry
    assert (registry.get_sample_value("f2pipe_sink_write_retries_total") or 0) >= 1
    assert registry.get_sample_value("f2pipe_sink_db_outages_total") == 1

    writer.down = False
    clock.advance(0.05)
    steps(sink, 3)
    assert not held(sink)
    assert consumer.paused == set()
    assert consumer.commits == [{0: 4, 1: 1}]
    assert sum(len(w) for w in writer.written) == 5  # every held record, once
    assert sink.health()[0] is True


def test_outage_retries_with_doubling_jittered_backoff_then_resumes_and_resets_it() -> None:
    sink, consumer, writer, _, clock = make_parts(retry_max_seconds=1.0)
    sink.flush_interval = 0.1
    writer.down = True
    consumer.send(0, 10)
    steps(sink, 2)  # the interval passes, the write fails
    assert held(sink)
    assert writer.attempts == 1
    waits = []
    for _ in range(5):
        wait, attempts, failed_at = sink.retry_at - clock.now, writer.attempts, clock.now
        while writer.attempts == attempts:
            sink._step()
        assert clock.now - failed_at == pytest.approx(wait)  # not one retry early
        waits.append(wait)
    # 0.2 s, doubling, at most SINK_RETRY_MAX_SECONDS, each ±20 %.
    for wait, backoff in zip(waits, (0.2, 0.4, 0.8, 1.0, 1.0), strict=True):
        assert 0.8 * backoff <= wait <= 1.2 * backoff
    registry = sink.metrics.registry
    assert registry.get_sample_value("f2pipe_sink_write_retries_total") == 5
    assert registry.get_sample_value("f2pipe_sink_db_outages_total") == 1
    assert registry.get_sample_value("f2pipe_sink_paused") == 1

    # Paused: records of held partitions stay in Kafka; a partition assigned now is paused too.
    consumer.send(1, 10)
    consumer.assign([2])
    steps(sink, 1)
    assert consumer.paused == {0, 1, 2}
    assert [m.partition() for m in consumer.queue] == [1]

    writer.down = False
    while held(sink):
        sink._step()
    assert consumer.paused == set()
    assert sink.backoff == FIRST_RETRY_SECONDS
    assert registry.get_sample_value("f2pipe_sink_paused") == 0
    assert registry.get_sample_value("f2pipe_sink_db_up") == 1
    assert consumer.commits == [{0: 1}]
    steps(sink, 1)
    assert consumer.queue == []  # resumed: partition 1's record is consumed


def test_a_write_that_fails_at_batch_size_waits_its_backoff_before_the_first_retry() -> None:
    sink, consumer, writer, _, clock = make_parts(retry_max_seconds=1.0)
    writer.down = True
    consumer.send(0, 100)  # the batch size: written during the poll, and refused
    steps(sink, 1)
    assert held(sink)
    assert writer.attempts == 1  # not retried at once in the same step
    wait, failed_at = sink.retry_at - clock.now, clock.now
    assert 0.8 * FIRST_RETRY_SECONDS <= wait <= 1.2 * FIRST_RETRY_SECONDS
    while writer.attempts == 1:
        sink._step()
    assert clock.now - failed_at == pytest.approx(wait)
    assert sink.metrics.registry.get_sample_value("f2pipe_sink_write_retries_total") == 1


def test_revoked_partitions_drop_their_held_records_uncommitted(parts: Parts) -> None:
    sink, consumer, writer, _, _ = parts
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


def test_revocation_writes_and_commits_what_it_can(parts: Parts) -> None:
    sink, consumer, _, _, _ = parts
    consumer.send(0, 10)
    consumer.send(1, 10)
    steps(sink, 2)
    consumer.revoke([0, 1])
    assert consumer.commits == [{0: 1, 1: 1}]
    assert sink.batch.records == []


def test_dead_letters_go_out_before_the_commit(parts: Parts) -> None:
    sink, consumer, writer, dlq, clock = parts
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
    clock.advance(0.05)
    steps(sink, 2)
    assert [(d.reason, d.source_offset) for d in dlq.sent] == [
        (Reason.bad_batch, 0),
        (Reason.constraint_violation, 1),
    ]
    assert consumer.commits == [{0: 3}]


def test_shutdown_writes_what_it_holds(parts: Parts) -> None:
    sink, consumer, _, _, _ = parts
    consumer.send(0, 10)
    steps(sink, 1)
    sink.stop()
    assert sink.run() == 0
    assert consumer.commits == [{0: 1}]
    assert consumer.closed


def test_shutdown_gives_up_after_its_timeout_without_committing(parts: Parts) -> None:
    sink, consumer, writer, _, clock = parts
    writer.down = True
    consumer.send(0, 10)
    steps(sink, 1)
    sink.stop()
    started = time.monotonic()
    assert sink.run() == 1
    assert time.monotonic() - started < 2
    assert clock.now - START == pytest.approx(0.05, abs=0.02)  # SINK_SHUTDOWN_TIMEOUT
    assert consumer.commits == []
    assert consumer.closed


# -- offset commits the group refuses ---------------------------------------------------------


def commit_failures(sink: SinkService) -> float:
    return sink.metrics.registry.get_sample_value("f2pipe_sink_offset_commit_failures_total") or 0


def test_a_refused_commit_is_tried_again_without_new_records_and_nothing_is_written_twice(
    parts: Parts,
) -> None:
    sink, consumer, writer, dlq, clock = parts
    consumer.queue.append(FakeMessage(0, 0, b"not a batch"))  # a dead letter, sent once
    consumer.next_offset[0] = 1
    consumer.send(0, 10)
    consumer.send(1, 10)
    sink.flush_interval = 0.25  # exact in binary: due on the fake clock
    consumer.refuse = 2  # a rebalance under way: the first commit and the first retry
    steps(sink, 3)  # the flush interval passes
    assert consumer.refused == [{0: 2, 1: 1}]
    assert consumer.commits == []
    assert sink.health()[1]["uncommitted_partitions"] == 2
    steps(sink, 1)  # idle, before its retry time: no new attempt
    assert len(consumer.refused) == 1
    while consumer.refuse:
        sink._step()
    assert consumer.refused == [{0: 2, 1: 1}] * 2
    failed_at = clock.now
    while not consumer.commits:
        sink._step()
    # 1 s after the first refusal, then 2 s after the second: doubling.
    assert clock.now - failed_at == pytest.approx(2.0, abs=0.5)
    assert consumer.commits == [{0: 2, 1: 1}]
    assert "uncommitted_partitions" not in sink.health()[1]
    assert sink.committed == {(TOPIC, 0): 2, (TOPIC, 1): 1}
    assert commit_failures(sink) == 2
    steps(sink, 20)
    assert len(consumer.commits) == 1  # nothing left to retry
    assert len(writer.written) == 1  # one write of the three records, never again
    assert [d.source_offset for d in dlq.sent] == [0]  # dead-lettered once
    assert sink.commit_backoff == 1.0  # reset for the next refusal


def test_a_partition_refused_alone_is_retried_alone_and_a_newer_batch_carries_it(
    parts: Parts,
) -> None:
    sink, consumer, _, _, clock = parts
    sink.flush_interval = 0.25  # exact in binary: due on the fake clock
    consumer.refuse_partitions = {1}
    consumer.send(0, 10)
    consumer.send(1, 10)
    steps(sink, 3)  # the flush interval passes
    assert consumer.commits == [{0: 1}]
    assert sink.uncommitted == {(TOPIC, 1): 1}
    clock.advance(1.0)
    steps(sink, 1)
    assert consumer.commits == [{0: 1}]  # partition 1 refused again, 0 not asked again
    assert sink.uncommitted == {(TOPIC, 1): 1}
    consumer.refuse_partitions = set()
    consumer.send(1, 10)  # a newer batch of partition 1 before the retry is due
    steps(sink, 3)  # the flush interval passes
    assert consumer.commits == [{0: 1}, {1: 2}]
    assert sink.uncommitted == {}


def test_a_revoked_partition_s_refused_offset_is_tried_once_more_then_forgotten(
    parts: Parts,
) -> None:
    sink, consumer, _, _, _ = parts
    sink.flush_interval = 0.25  # exact in binary: due on the fake clock
    consumer.refuse = 1
    consumer.send(0, 10)
    consumer.send(1, 10)
    steps(sink, 3)  # the flush interval passes
    assert sink.uncommitted == {(TOPIC, 0): 1, (TOPIC, 1): 1}
    consumer.refuse = 1
    consumer.revoke([1])  # still ours in the callback: one try, refused, then not ours
    assert consumer.refused[-1] == {1: 1}
    assert sink.uncommitted == {(TOPIC, 0): 1}
    consumer.revoke([0])  # the try succeeds this time
    assert consumer.commits == [{0: 1}]
    assert sink.uncommitted == {}


def test_shutdown_tries_a_refused_commit_once_more(parts: Parts) -> None:
    sink, consumer, _, _, _ = parts
    sink.flush_interval = 0.25  # exact in binary: due on the fake clock
    consumer.refuse = 1
    consumer.send(0, 10)
    steps(sink, 3)  # the flush interval passes
    assert consumer.commits == []
    sink.stop()
    assert sink.run() == 0
    assert consumer.commits == [{0: 1}]
    assert consumer.closed


def test_build_uses_the_adapters_given_and_metrics_of_its_own() -> None:
    settings = Settings(
        common=CommonSettings(),
        observability=ObservabilitySettings(),
        kafka=KafkaSettings(kafka_processed_topic=TOPIC),
        postgres=PostgresSettings(),
        timescale=TimescaleSettings(),
        sink=SinkSettings(batch_size=7),
    )
    consumer, writer, dlq = FakeConsumer(FakeClock()), FakeWriter(), FakeDeadLetters()
    one = build(settings, consumer=consumer, writer=writer, dead_letters=dlq)
    other = build(settings, consumer=consumer, writer=writer, dead_letters=dlq)
    assert (one.consumer, one.writer, one.dead_letters) == (consumer, writer, dlq)
    assert (one.topic, one.batch_size) == (TOPIC, 7)
    assert one.metrics.registry is not other.metrics.registry


# -- the writer's isolation of refused rows ----------------------------------------------------


def record(offset: int, readings: list[Reading], events: list[Event] | None = None) -> Record:
    value = encode_processed_batch(ProcessedBatch(0, offset, readings, events or []))
    rec, dead = take(TOPIC, 0, offset, value)
    assert dead is None
    return rec


class FakeDatabase:
    """One transaction at a time: all of its rows, or Refused if it holds a refused one."""

    def __init__(self, refused_rows: set[bytes]) -> None:
        self.refused_rows = refused_rows
        self.rows: list[bytes] = []
        self.transactions = 0

    def transaction(self, readings: Sequence[bytes], events: Sequence[bytes]) -> None:
        data = b"".join(readings)
        size = READING_ROW_BYTES
        rows = [data[i : i + size] for i in range(0, len(data), size)] + list(events)
        if self.refused_rows & set(rows):
            raise Refused(Reason.constraint_violation, "check_violation")
        self.rows += rows
        self.transactions += 1


def test_bisection_isolates_each_refused_row_and_writes_every_other_one() -> None:
    records = [
        record(o, [Reading(T0 + o * 100 + i, 7, 1, float(i)) for i in range(5)]) for o in range(4)
    ]
    records.append(
        record(4, [Reading(T0 + 900, 7, 1, 1.0)], [Event(T0, 7, "ok", {}), Event(T0, 7, "x", {})])
    )
    bad_reading = records[2].readings[3 * READING_ROW_BYTES : 4 * READING_ROW_BYTES]
    bad_event = records[4].events[1]
    database = FakeDatabase({bad_reading, bad_event})
    with pytest.raises(Refused):
        database.transaction([r.readings for r in records], [e for r in records for e in r.events])

    rejected = isolate_refused(records, database.transaction)

    assert [(r.record.offset, r.reason) for r in rejected] == [
        (2, Reason.constraint_violation),
        (4, Reason.constraint_violation),
    ]
    assert rejected[0].detail == (
        "1 of 5 rows refused by the database: reading row 3: check_violation"
    )
    assert rejected[1].detail == "1 of 3 rows refused by the database: event row 1: check_violation"
    every_row = [
        r.readings[i : i + READING_ROW_BYTES]
        for r in records
        for i in range(0, len(r.readings), READING_ROW_BYTES)
    ] + [e for r in records for e in r.events]
    assert sorted(database.rows) == sorted(set(every_row) - {bad_reading, bad_event})  # once each
    assert database.transactions > 1


def test_bisection_blames_nothing_when_the_parts_are_accepted() -> None:
    records = [record(o, [Reading(T0 + o, 7, 1, 1.0)]) for o in range(2)]
    database = FakeDatabase(set())
    assert isolate_refused(records, database.transaction) == []
    assert len(database.rows) == 2


# -- dead letters Kafka refuses ----------------------------------------------------------------


class FakeProducer:
    """Delivers on flush; refuses a record over `max_bytes` (value and headers, as Kafka
    counts), or fails every one with `error`."""

    def __init__(self, max_bytes: int = 2000, error: KafkaError | None = None) -> None:
        self.max_bytes = max_bytes
        self.error = error
        self.pending: list[
            tuple[bytes, list[tuple[str, str | bytes | None]], DeliveryCallback]
        ] = []
        self.produced = 0
        self.delivered: list[DeadLetter] = []

    def produce(self, topic: str, /, **record: Any) -> None:  # the port's keyword arguments
        assert topic == "dlq"
        assert set(record) == {"value", "key", "headers", "on_delivery"}
        self.produced += 1
        self.pending.append((record["value"] or b"", record["headers"], record["on_delivery"]))

    def poll(self, timeout: float, /) -> int:
        return 0

    def flush(self, timeout: float, /) -> int:
        pending, self.pending = self.pending, []
        for value, headers, on_delivery in pending:
            if self.error is not None:
                on_delivery(self.error, None)
            elif len(value) + sum(len(k) + len(v or b"") for k, v in headers) > self.max_bytes:
                on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
            else:
                raw = [(k, v.encode() if isinstance(v, str) else v) for k, v in headers]
                self.delivered.append(DeadLetter.from_kafka(value, raw))
                on_delivery(None, None)
        return 0


def letter(original: bytes, offset: int) -> DeadLetter:
    return DeadLetter(stage=Stage.sink, reason=Reason.bad_batch, detail="not a batch",
                      original=original, source_topic=TOPIC, source_partition=0,
                      source_offset=offset)  # fmt: skip


def test_a_dead_letter_kafka_refuses_is_retried_without_its_bytes() -> None:
    producer = FakeProducer(max_bytes=2000)
    big = b"r" * 5000  # whole in a letter, but over the producer's record limit
    DeadLetterSender(producer, "dlq").send([letter(b"small", 1), letter(big, 2)])
    assert producer.produced == 3  # both, then the refused one again
    small, stripped = producer.delivered
    assert (small.original, small.source_offset) == (b"small", 1)
    assert (stripped.original, stripped.source_offset) == (b"", 2)
    assert stripped.original_size == 5000
    assert stripped.original_sha256 == hashlib.sha256(big).hexdigest()


def test_a_dead_letter_refused_even_without_its_bytes_is_an_error() -> None:
    producer = FakeProducer(max_bytes=10)  # not even the headers fit
    with pytest.raises(DeadLetterError, match=r"1 failed: .*too large"):
        DeadLetterSender(producer, "dlq").send([letter(b"r" * 50, 1)])
    assert producer.produced == 2


def test_a_dead_letter_kafka_fails_to_deliver_is_not_stripped_but_an_error() -> None:
    producer = FakeProducer(error=KafkaError(KafkaError._MSG_TIMED_OUT))
    with pytest.raises(DeadLetterError, match="1 failed"):
        DeadLetterSender(producer, "dlq").send([letter(b"r" * 50, 1)])
    assert producer.produced == 1  # a retry could succeed: the batch is held, not stripped
