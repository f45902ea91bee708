"""`f2pipe sink`: processed-iot-data -> TimescaleDB, batched, idempotent, at least once.

The whole flow runs on one thread:

    poll ──▶ take(): decode, check, encode rows ──▶ Batch
                  (BATCH_SIZE rows held, or FLUSH_INTERVAL since its first record)
    flush ──▶ Writer.write: one transaction ──▶ dead letters confirmed ──▶ offsets committed
                  (database unreachable, or dead letters unconfirmed)
    hold ──▶ pause the assigned partitions, keep the batch, retry with backoff, then resume

Offsets are committed only after the batch's rows are committed and its dead letters
confirmed, so a crash at any moment replays only uncommitted records, and the writes skip
stored keys, so a replay lands nothing twice. A rebalance flushes what the revoked partitions
contributed, or drops it uncommitted for their next owner to read again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from f2pipe_sink.batch import Batch, Partition, dead_letter, take
from f2pipe_sink.dlq import DeadLetterError
from f2pipe_sink.metrics import SinkMetrics
from f2pipe_sink.ports import (
    Clock,
    ConsumedRecord,
    DeadLetters,
    RecordConsumer,
    RowWriter,
    TopicStatus,
)
from f2pipe_sink.settings import SinkSettings
from f2pipe_sink.writer import DatabaseUnavailable

log = logging.getLogger("f2pipe_sink")

FIRST_RETRY_SECONDS = 0.2
IDLE_POLL_SECONDS = 0.5  # how long an idle poll blocks: bounds the reaction to SIGTERM
PING_SECONDS = 5.0  # an idle sink checks the database this often, for /healthz
DRAIN_MESSAGES = 1000  # records taken from the local queue per call
# A refused offset commit is tried again after this, doubling up to COMMIT_RETRY_MAX_SECONDS:
# with no later batch on the partition nothing else would carry its offset to the group.
COMMIT_RETRY_SECONDS = 1.0
COMMIT_RETRY_MAX_SECONDS = 30.0


@dataclass(eq=False)
class SinkService:
    """One sink: consumes `topic`, writes with `writer`, dead-letters with `dead_letters`.

    main.build() hands it the real adapters; unit tests hand it fakes of the same ports.
    """

    settings: SinkSettings
    topic: str
    _: KW_ONLY
    consumer: RecordConsumer
    writer: RowWriter
    dead_letters: DeadLetters
    metrics: SinkMetrics
    clock: Clock = time
    # The running check of the topics (main's TopicWatch), and what replaces the dead-letter
    # producer when it says the broker lost them; None: neither (unit tests).
    topics: TopicStatus | None = None
    renew_producer: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.generation = self.topics.generation if self.topics else 0
        self.batch_size = self.settings.batch_size
        self.flush_interval = self.settings.flush_interval
        self.batch = self._new_batch()
        self.assignment: set[Partition] = set()
        self.committed: dict[Partition, int] = {}
        self.consumed: dict[Partition, int] = {}
        # Written and dead-lettered, but the group refused the offset: tried again until it
        # takes it, so a restart does not replay (and dead-letter again) what is stored.
        self.uncommitted: dict[Partition, int] = {}
        self.commit_retry_at = 0.0
        self.commit_backoff = COMMIT_RETRY_SECONDS
        self.held = False  # a batch failed to write: consumption paused until it is written
        self.paused: set[Partition] = set()
        self.retry_at = 0.0
        self.backoff = FIRST_RETRY_SECONDS
        self.db_up: bool | None = None
        self.last_ping = 0.0
        self._stop = threading.Event()

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        """Consume until stop(); return the exit status (0: everything held was committed)."""
        self.consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._ping()
        try:
            while not self._stop.is_set():
                self._step()
            return self._shutdown()
        finally:
            self.writer.close()

    def stop(self) -> None:
        """Stop consuming; run() then writes and commits what it holds (signal-safe)."""
        self._stop.set()

    def _step(self) -> None:
        self._follow_topics()
        now = self.clock.monotonic()
        if self.uncommitted and now >= self.commit_retry_at:
            self._commit_offsets(dict(self.uncommitted))
        if self.held:
            # Keep polling while paused: it keeps the group membership alive and serves
            # rebalances; it returns no records of paused partitions.
            self._poll(min(max(self.retry_at - now, 0.0), IDLE_POLL_SECONDS))
            self._pause_new_partitions()
            if self.held and self.clock.monotonic() >= self.retry_at:
                self._flush()
            return
        deadline = self.batch.deadline(self.flush_interval)
        timeout = IDLE_POLL_SECONDS if deadline is None else min(deadline - now, IDLE_POLL_SECONDS)
        self._poll(max(timeout, 0.0))
        now = self.clock.monotonic()
        # Not when a write during the poll just failed: the retry waits for its backoff.
        if not self.held and self.batch.due(now, self.batch_size, self.flush_interval):
            self._flush()
        elif not self.batch.records and now - self.last_ping >= PING_SECONDS:
            self._ping()

    def _poll(self, timeout: float) -> None:
        # Take whatever is already fetched without waiting; only an empty queue blocks, and
        # then only until the first record arrives (consume() would wait out its timeout).
        messages: Sequence[ConsumedRecord] = self.consumer.consume(DRAIN_MESSAGES, 0)
        if not messages:
            message = self.consumer.poll(timeout)
            messages = [message] if message is not None else []
        for message in messages:
            error = message.error()
            if error is not None:
                self._kafka_error(error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            # Set on every record (not on errors, handled above).
            assert topic is not None
            assert partition is not None
            assert offset is not None
            if (topic, partition) not in self.assignment:
                continue  # fetched before a revocation: its new owner reads it
            record, dead = take(topic, partition, offset, message.value())
            self.batch.add(record, dead)
            key = (topic, partition)
            # Until its first commit here, a partition's baseline is where we started reading.
            committed = self.committed.setdefault(key, offset)
            self.consumed[key] = offset + 1
            self.metrics.set_offsets(topic, partition, offset + 1, committed)
            self.metrics.records.inc()
            if not self.held and self.batch.rows >= self.batch_size:
                self._flush()
        self.metrics.held_rows.set(self.batch.rows)

    # -- writing -----------------------------------------------------------------------------

    def _flush(self, *, hold_on_failure: bool = True) -> bool:
        """Write, dead-letter and commit the batch; on failure hold it. True when done."""
        batch = self.batch
        if not batch.records:
            return True
        if self.held:
            self.metrics.retries.inc()
        started = time.perf_counter()
        try:
            writes = batch.rows or batch.status_rows
            result = self.writer.write(batch.records) if writes else None
            letters = list(batch.dead_letters)
            if result is not None:
                letters += [dead_letter(r.record, r.reason, r.detail) for r in result.rejected]
            self.dead_letters.send(letters)
        except (DatabaseUnavailable, DeadLetterError) as exc:
            if isinstance(exc, DatabaseUnavailable):
                self._database_down(exc)
            else:
                log.error("dead letters not confirmed", extra={"error": str(exc)})
            if hold_on_failure:
                self._hold()
            return False
        elapsed = time.perf_counter() - started
        self._commit(batch)
        self.batch = self._new_batch()
        self._database_up()
        self.metrics.batch_done(batch, result, letters, elapsed)
        self.metrics.held_rows.set(self.batch.rows)
        if self.held:
            self._resume()
        return True

    def _commit(self, batch: Batch) -> None:
        # Earlier refused offsets go along; a partition's newer offset supersedes its own.
        self._commit_offsets({**self.uncommitted, **batch.next_offsets})

    def _commit_offsets(self, wanted: dict[Partition, int]) -> None:
        # Only partitions still ours: a revoked one's commit would be refused anyway.
        offsets = [
            TopicPartition(t, p, o) for (t, p), o in wanted.items() if (t, p) in self.assignment
        ]
        if not offsets:
            return
        try:
            results = self.consumer.commit(offsets=offsets, asynchronous=False) or []
        except KafkaException as exc:
            self._commit_refused({(tp.topic, tp.partition): tp.offset for tp in offsets}, exc)
            return
        refused: dict[Partition, int] = {}
        error: object = None
        for tp in results:
            key = (tp.topic, tp.partition)
            if tp.error is not None:
                refused[key], error = tp.offset, tp.error
                continue
            if self.uncommitted.get(key, -1) <= tp.offset:
                self.uncommitted.pop(key, None)
            self.committed[key] = tp.offset
            self.metrics.set_offsets(
                tp.topic, tp.partition, self.consumed.get(key, tp.offset), tp.offset
            )
        if refused:
            self._commit_refused(refused, error)
        elif not self.uncommitted:
            self.commit_backoff = COMMIT_RETRY_SECONDS

    def _commit_refused(self, offsets: dict[Partition, int], error: object) -> None:
        """The rows are stored (a replay would skip them); keep the offsets, try again later."""
        self.metrics.commit_failures.inc()
        self.uncommitted.update(offsets)
        self.commit_retry_at = self.clock.monotonic() + self.commit_backoff
        log.warning(
            "offset commit refused; trying again",
            extra={
                "partitions": sorted(offsets),
                "error": str(error),
                "retry_in_s": self.commit_backoff,
            },
        )
        self.commit_backoff = min(self.commit_backoff * 2, COMMIT_RETRY_MAX_SECONDS)

    def _new_batch(self) -> Batch:
        return Batch(self.clock.monotonic)

    # -- outages -----------------------------------------------------------------------------

    def _hold(self) -> None:
        if not self.held:
            self.held = True
            self.metrics.paused.set(1)
            log.warning(
                "holding the batch and pausing consumption until it is written",
                extra={"rows": self.batch.rows, "records": len(self.batch.records)},
            )
        self._pause_new_partitions()
        # Exponential backoff with jitter, so several sinks do not reconnect in step.
        longest = self.settings.sink_retry_max_seconds
        self.retry_at = self.clock.monotonic() + min(self.backoff, longest) * random.uniform(
            0.8, 1.2
        )
        self.backoff = min(self.backoff * 2, longest)

    def _pause_new_partitions(self) -> None:
        new = self.assignment - self.paused
        if new:
            self.consumer.pause([TopicPartition(t, p) for t, p in new])
            self.paused |= new

    def _resume(self) -> None:
        if self.paused & self.assignment:
            self.consumer.resume([TopicPartition(t, p) for t, p in self.paused & self.assignment])
        self.paused.clear()
        self.held = False
        self.backoff = FIRST_RETRY_SECONDS
        self.metrics.paused.set(0)
        log.info("batch written after the outage, consuming again")

    def _ping(self) -> None:
        self.last_ping = self.clock.monotonic()
        try:
            self.writer.ping()
        except DatabaseUnavailable as exc:
            self._database_down(exc)
        else:
            self._database_up()

    def _database_down(self, exc: Exception) -> None:
        if self.db_up is not False:
            self.metrics.outages.inc()
            log.error("database unreachable", extra={"error": str(exc)})
        self.db_up = False
        self.metrics.db_up.set(0)

    def _database_up(self) -> None:
        if self.db_up is False:
            log.info("database reachable again")
        self.db_up = True
        self.metrics.db_up.set(1)

    # -- rebalances --------------------------------------------------------------------------

    def _on_assign(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        self.assignment |= {(tp.topic, tp.partition) for tp in partitions}
        self.metrics.assigned.set(len(self.assignment))
        log.info("partitions assigned", extra={"partitions": sorted(self.assignment)})

    def _on_revoke(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        # Still ours during this callback: write and commit what they contributed, if we can.
        if any(key in revoked for key in self.batch.next_offsets):
            self._flush(hold_on_failure=False)  # commits their refused offsets too
        pending = {key: o for key, o in self.uncommitted.items() if key in revoked}
        if pending:
            self._commit_offsets(pending)
        self._forget(revoked, "revoked")

    def _on_lost(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        # Lost (session timed out): someone else may own them already; commit nothing.
        self._forget({(tp.topic, tp.partition) for tp in partitions}, "lost")

    def _forget(self, gone: set[Partition], how: str) -> None:
        dropped = [r for r in self.batch.records if (r.topic, r.partition) in gone]
        if dropped:
            # Never committed: the partitions' next owner reads these records again.
            self.batch = self.batch.without(gone)
            log.warning(
                "dropped uncommitted records of partitions no longer ours",
                extra={"how": how, "records": len(dropped)},
            )
        if self.paused & gone:
            # librdkafka keeps a partition's pause across a rebalance: were it assigned to us
            # again, it would stay paused with nothing held to resume it.
            self.consumer.resume([TopicPartition(t, p) for t, p in self.paused & gone])
        for topic, partition in gone:
            self.metrics.forget_partition(topic, partition)
            self.committed.pop((topic, partition), None)
            self.consumed.pop((topic, partition), None)
            self.uncommitted.pop((topic, partition), None)
        self.assignment -= gone
        self.paused -= gone
        self.metrics.assigned.set(len(self.assignment))
        self.metrics.held_rows.set(self.batch.rows)
        if self.held and not self.batch.records:
            self.held = False  # nothing left to retry; the next batch finds out about the DB
            self.metrics.paused.set(0)
        log.info("partitions %s", how, extra={"partitions": sorted(gone)})

    # -- the end -----------------------------------------------------------------------------

    def _shutdown(self) -> int:
        """Write and commit what is held, retrying up to SINK_SHUTDOWN_TIMEOUT; then leave."""
        give_up_at = self.clock.monotonic() + self.settings.sink_shutdown_timeout
        status = 0
        while self.batch.records and not self._flush():
            if self.clock.monotonic() >= give_up_at:
                log.error(
                    "could not write the last batch before the shutdown timeout; nothing of "
                    "it was committed, the next sink reads it again",
                    extra={"rows": self.batch.rows},
                )
                self.batch = self._new_batch()
                status = 1
                break
            self._poll(min(max(self.retry_at - self.clock.monotonic(), 0.0), IDLE_POLL_SECONDS))
            self.clock.sleep(max(0.0, min(self.retry_at, give_up_at) - self.clock.monotonic()))
        if self.uncommitted:
            self._commit_offsets(dict(self.uncommitted))  # one last try
        self.consumer.close()  # leaves the group now, so the partitions move without a wait
        self.dead_letters.close()
        log.info("sink stopped", extra={"status": status})
        return status

    def _follow_topics(self) -> None:
        """The broker lost the topics (restarted empty): go on with a new dead-letter
        producer; the consumer finds its offsets out of range and starts again from the
        beginning of the new topic (auto.offset.reset)."""
        if self.topics is None or self.topics.generation == self.generation:
            return
        self.generation = self.topics.generation
        if self.renew_producer is not None:
            log.warning("replacing the dead-letter producer: the broker lost its producer id")
            self.renew_producer()

    def _kafka_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        log.warning("kafka error", extra={"error": str(error)})

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Ready: partitions assigned and the database reachable (read from another thread)."""
        assigned = len(self.assignment)
        database = {None: "unknown", True: "up", False: "down"}[self.db_up]
        details: dict[str, Any] = {
            "assigned_partitions": assigned,
            "database": database,
            "paused": self.held,
            "held_rows": self.batch.rows,
        }
        if self.uncommitted:
            details["uncommitted_partitions"] = len(self.uncommitted)
        problems = self.topics.problems() if self.topics else []
        if problems:
            details["kafka_topics"] = problems
        return assigned > 0 and self.db_up is True, details
