"""One raw-iot-data record in, one processed-iot-data record (plus dead letters) out.

This is the processor's whole job for a record, independent of Faust: the service, the tests
and the benchmark all call ``BatchProcessor.process``. It never raises for bad input: a bad
message is a dead letter, a bad record is a dead letter, and an unexpected error dead-letters
the record rather than stopping the agent. The only thing it waits for is the registry
database, which it retries until it answers (the record's offset stays uncommitted).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import KW_ONLY, dataclass, field

from f2pipe_processor.decoder import (
    Heard,
    LatestValues,
    Rejected,
    TimestampWindow,
    decode_messages,
    heard_in,
    parse_messages,
)
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_processor.ports import Clock
from f2pipe_processor.resolver import Resolver
from f2pipe_shared.deadletters import DeadLetter, Reason, Stage
from f2pipe_shared.records import FramingError, ProcessedBatch, decode_raw_batch
from f2pipe_shared.topics import device_level

log = logging.getLogger(__name__)

DETAIL_MAX = 2000  # DeadLetter.detail's limit


@dataclass(slots=True)
class BatchResult:
    processed: ProcessedBatch
    dead_letters: list[DeadLetter]
    latest: LatestValues
    messages: int
    seconds: dict[str, float] = field(default_factory=dict)  # parse, lookup, decode
    heard: dict[str, Heard] = field(default_factory=dict)  # MAC -> its messages (connectivity)


@dataclass(eq=False)
class BatchProcessor:
    resolver: Resolver
    source_topic: str
    max_future_seconds: float
    max_age_seconds: float
    _: KW_ONLY
    metrics: ProcessorMetrics
    clock: Clock = time.time

    async def process(self, partition: int, offset: int, value: bytes | None) -> BatchResult:
        started = time.perf_counter()
        try:
            result = await self._process(partition, offset, value)
        except FramingError as exc:
            result = self._whole_record(partition, offset, value, Reason.bad_batch, str(exc))
        except Exception as exc:  # a bug must cost one record, never the agent
            log.exception(
                "unexpected error processing a record; dead-lettered whole",
                extra={"partition": partition, "offset": offset},
            )
            detail = f"unexpected {type(exc).__name__}: {exc}"
            result = self._whole_record(partition, offset, value, Reason.invalid_record, detail)
        self._count(result, time.perf_counter() - started)
        return result

    async def _process(self, partition: int, offset: int, value: bytes | None) -> BatchResult:
        t0 = time.perf_counter()
        if value is None:
            raise FramingError("record has no value")
        messages = decode_raw_batch(value)
        window = TimestampWindow.around(
            int(self.clock() * 1e6), self.max_future_seconds, self.max_age_seconds
        )
        parse = parse_messages(messages, window)
        t1 = time.perf_counter()
        lookup = await self.resolver.resolve(parse.topics)
        t2 = time.perf_counter()
        decoded = decode_messages(parse.parsed, lookup.locations, lookup.templates)
        rejected = sorted((*parse.rejected, *decoded.rejected), key=lambda r: r.position)
        dead = [self._dead_letter(r, partition, offset) for r in rejected]
        t3 = time.perf_counter()
        return BatchResult(
            processed=ProcessedBatch(partition, offset, decoded.readings, decoded.events),
            dead_letters=dead,
            latest=decoded.latest,
            messages=len(messages),
            seconds={"parse": t1 - t0, "lookup": t2 - t1, "decode": t3 - t2},
            heard=heard_in(messages, parse.topics, lookup.locations),
        )

    def _dead_letter(self, rejected: Rejected, partition: int, offset: int) -> DeadLetter:
        return DeadLetter(
            stage=Stage.processor,
            reason=rejected.reason,
            detail=rejected.detail[:DETAIL_MAX],
            original=rejected.message.payload,
            mqtt_topic=rejected.message.topic,
            source_topic=self.source_topic,
            source_partition=partition,
            source_offset=offset,
        )

    def _whole_record(
        self, partition: int, offset: int, value: bytes | None, reason: Reason, detail: str
    ) -> BatchResult:
        dead = DeadLetter(
            stage=Stage.processor,
            reason=reason,
            detail=detail[:DETAIL_MAX],
            original=value or b"",
            source_topic=self.source_topic,
            source_partition=partition,
            source_offset=offset,
        )
        # Still one processed record per raw record: the sink sees every source offset.
        return BatchResult(ProcessedBatch(partition, offset, [], []), [dead], {}, messages=0)

    def _count(self, result: BatchResult, seconds: float) -> None:
        metrics = self.metrics
        metrics.records.inc()
        metrics.messages.inc(result.messages)
        metrics.readings.inc(len(result.processed.readings))
        metrics.events.inc(len(result.processed.events))
        for reason, count in Counter(d.reason for d in result.dead_letters).items():
            metrics.dead_letters.labels(reason.value).inc(count)
        if result.dead_letters:
            log_dead_letters(result.dead_letters)
        for stage, spent in result.seconds.items():
            metrics.stage_seconds.labels(stage).inc(spent)
        metrics.batch_seconds.observe(seconds)


def log_dead_letters(dead: list[DeadLetter]) -> None:
    """One line per reason and record, naming the devices (their topics name the MAC)."""
    by_reason: dict[Reason, list[DeadLetter]] = {}
    for letter in dead:
        by_reason.setdefault(letter.reason, []).append(letter)
    for reason, letters in by_reason.items():
        topics = sorted({d.mqtt_topic for d in letters if d.mqtt_topic})
        first = letters[0]
        log.warning(
            "dead-lettered %d message(s): %s",
            len(letters),
            reason.value,
            extra={
                "reason": reason.value,
                "count": len(letters),
                "devices": sorted({device_level(t) for t in topics})[:LOGGED_TOPICS],
                "topics": topics[:LOGGED_TOPICS],
                "detail": first.detail[:200],
                "partition": first.source_partition,
                "offset": first.source_offset,
            },
        )


LOGGED_TOPICS = 5
