"""Kafka records turned into rows, and the batch that holds them until they are written.

Everything the sink holds belongs to one `Batch`: the encoded rows of each record, the dead
letters its records produced, and per partition the offset to commit once all of it is safe.
The batch is written and committed as a whole, or dropped as a whole for the partitions a
rebalance takes away (their offsets were never committed, so the new owner reads them again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator
from typing import NamedTuple

from f2pipe_shared.deadletters import DeadLetter, Reason, Stage
from f2pipe_shared.records import decode_processed_batch
from f2pipe_sink.rows import StatusRow, pack_events, pack_readings, status_rows

log = logging.getLogger(__name__)

Partition = tuple[str, int]  # (topic, partition)


class Record(NamedTuple):
    """One `processed-iot-data` Kafka record, its valid rows encoded for COPY."""

    topic: str
    partition: int
    offset: int
    value: bytes  # the original bytes: a dead letter carries them unchanged
    readings: bytes  # binary COPY rows, READING_ROW_BYTES each
    n_readings: int
    events: list[bytes]  # one binary COPY row per event
    timestamps: list[int]  # device timestamps of the readings, µs (end-to-end latency)
    # Connectivity transitions and last-seen reports, for telemetry.controller_status.
    status: tuple[StatusRow, ...] = ()

    @property
    def rows(self) -> int:
        return self.n_readings + len(self.events)


def dead_letter(record: Record, reason: Reason, detail: str) -> DeadLetter:
    return DeadLetter(
        stage=Stage.sink,
        reason=reason,
        detail=detail,  # DeadLetter cuts an overlong one to DETAIL_MAX, ending with "…"
        original=record.value,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
    )


def take(
    topic: str, partition: int, offset: int, value: bytes | None
) -> tuple[Record, DeadLetter | None]:
    """A consumed Kafka record as rows, plus the dead letter for what cannot be stored.

    Never raises for bad input: a record that is not a batch becomes an empty Record (its
    offset still has to be committed) and a `bad_batch` dead letter; invalid rows are left out
    and described in one `invalid_record` dead letter, while the record's valid rows are kept.
    """
    original = value or b""
    try:
        if value is None:
            raise ValueError("record has no value (a tombstone)")
        batch = decode_processed_batch(value)
        readings = pack_readings(batch.readings)
        events, bad_events = pack_events(batch.events)
        status, bad_status = status_rows(batch.events, batch.seen)
    except Exception as exc:  # anything: a poison record must never stop the partition
        empty = Record(topic, partition, offset, original, b"", 0, [], [])
        return empty, dead_letter(empty, Reason.bad_batch, f"{type(exc).__name__}: {exc}")
    record = Record(
        topic,
        partition,
        offset,
        original,
        readings.data,
        readings.count,
        events,
        readings.timestamps,
        tuple(status),
    )
    rejected = readings.rejected + bad_events + bad_status
    if not rejected:
        return record, None
    total = len(batch.readings) + len(batch.events) + len(batch.seen)
    detail = f"{len(rejected)} of {total} rows invalid, the rest written: " + "; ".join(rejected)
    return record, dead_letter(record, Reason.invalid_record, detail)


class Batch:
    """Records (in consumption order), their dead letters, and the offsets to commit.

    `clock` (monotonic seconds) times the first record, for FLUSH_INTERVAL.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.records: list[Record] = []
        self.dead_letters: list[DeadLetter] = []
        self.rows = 0
        self.status_rows = 0  # controller_status changes: written even without other rows
        self.started: float | None = None  # monotonic time of the first record
        self.next_offsets: dict[Partition, int] = {}

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: Record, dead: DeadLetter | None = None) -> None:
        if self.started is None:
            self.started = self._clock()
        self.records.append(record)
        self.rows += record.rows
        self.status_rows += len(record.status)
        if dead is not None:
            self.dead_letters.append(dead)
        # A partition's records arrive in offset order: the last one's offset + 1 is what the
        # group commits (the next record to read).
        self.next_offsets[(record.topic, record.partition)] = record.offset + 1

    def due(self, now: float, batch_size: int, flush_interval: float) -> bool:
        """Holding BATCH_SIZE rows, or the oldest record waited FLUSH_INTERVAL seconds."""
        return self.started is not None and (
            self.rows >= batch_size or now - self.started >= flush_interval
        )

    def deadline(self, flush_interval: float) -> float | None:
        return None if self.started is None else self.started + flush_interval

    def timestamps(self) -> Iterator[int]:
        for record in self.records:
            yield from record.timestamps

    def without(self, partitions: Collection[Partition]) -> Batch:
        """The same batch minus everything from `partitions` (revoked or lost)."""
        gone = set(partitions)
        kept = Batch(self._clock)
        for record in self.records:
            if (record.topic, record.partition) not in gone:
                kept.add(record)
        kept.dead_letters = [
            d for d in self.dead_letters if (d.source_topic, d.source_partition) not in gone
        ]
        if kept.records:
            kept.started = self.started
        return kept
