"""Producing a batch's output with confluent-kafka, awaited from asyncio.

Why not Faust's own (aiokafka) producer: the output is one processed record per raw record
plus its dead letters, and aiokafka's per-message send is 15-20x slower than librdkafka's;
librdkafka also gives the idempotent ``acks=all`` producer every f2pipe stage uses
(`f2pipe_shared.kafka.producer_config`). A thread serves librdkafka's delivery callbacks
and resolves asyncio futures; ``deliver`` returns only when Kafka acknowledged every record,
and retries the ones that failed until they are, so the caller can ack the raw record then.

A record Kafka refuses for what it is (its size) is never retried as it is: it is replaced by
its `fallback`, a smaller record saying what happened (a dead letter without the original
bytes), so no input can hold a partition forever.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from f2pipe_processor.core import BatchResult
from f2pipe_processor.metrics import ProcessorMetrics
from f2pipe_shared.deadletters import DeadLetter, Reason, Stage
from f2pipe_shared.kafka import kafka_error, producer_config, record_refused
from f2pipe_shared.records import encode_processed_batch
from f2pipe_shared.settings import KafkaSettings

log = logging.getLogger(__name__)


Headers = list[tuple[str, str | bytes | None]]


class OutRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers | None = None
    partition: int | None = None  # None: librdkafka's partitioner
    # What to send instead when Kafka refuses this very record; built only then.
    fallback: Callable[[], OutRecord] | None = None


def letter_record(topic: str, letter: DeadLetter) -> OutRecord:
    """A dead letter as a record; if Kafka refuses it, the same letter without the bytes."""
    headers: Headers = list(letter.headers())
    if not letter.original:
        return OutRecord(topic, letter.key(), b"", headers)
    return OutRecord(
        topic, letter.key(), letter.original, headers, None,
        lambda: letter_record(topic, letter.stripped()),
    )  # fmt: skip


def output_records(
    result: BatchResult,
    processed_topic: str,
    dlq_topic: str,
    source_topic: str = "",
    processed_partitions: int | None = None,
) -> list[OutRecord]:
    """The processed record, keyed by source partition so its batches stay in order, and
    one dead-letter record per rejected message (value: the original bytes).

    With `processed_partitions`, raw partition P goes to processed partition P mod that
    count. Left to librdkafka's partitioner, the keys "0".."5" hash onto processed partitions
    5, 5, 1, 1, 4, 4 of 6: half the partitions stayed empty, so no more than three sinks ever
    had work, and two split it 28/72."""
    batch = result.processed
    value = encode_processed_batch(batch)

    def unproducible() -> OutRecord:
        letter = DeadLetter(
            stage=Stage.processor,
            reason=Reason.unproducible,
            detail=f"Kafka refused the processed record of {len(batch.readings)} readings "
            f"and {len(batch.events)} events",
            original=value,
            source_topic=source_topic,
            source_partition=batch.source_partition,
            source_offset=batch.source_offset,
        )
        return letter_record(dlq_topic, letter)

    key = str(batch.source_partition).encode()
    partition = None if not processed_partitions else batch.source_partition % processed_partitions
    records = [OutRecord(processed_topic, key, value, partition=partition, fallback=unproducible)]
    records.extend(letter_record(dlq_topic, dead) for dead in result.dead_letters)
    return records


class TopicGeneration(Protocol):
    """`f2pipe_shared.kafka.TopicWatch` as the output follows it: `generation` changes when
    the broker lost the topics, and with them every producer id."""

    generation: int


class KafkaOutput:
    """The `ports.OutputProducer` of production: librdkafka, awaited from asyncio."""

    def __init__(
        self, settings: KafkaSettings, metrics: ProcessorMetrics, **overrides: Any
    ) -> None:
        self._metrics = metrics
        # One record per batch already: a long linger would only add latency.
        self._config = producer_config(settings, **{"linger.ms": 2, **overrides})
        # Created on start: librdkafka connects as soon as a producer exists, and building
        # the processor (its tests, `--help`) must not contact a server.
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kafka-output", daemon=True)
        self.failures = 0  # consecutive failed deliveries, for /healthz
        self._topics: TopicGeneration | None = None
        self._generation = 0

    def follow(self, topics: TopicGeneration) -> None:
        """Replace the producer whenever `topics` says the broker lost them (restarted
        empty): librdkafka's idempotent producer would retry for ever with a producer id the
        broker no longer knows."""
        self._topics, self._generation = topics, topics.generation

    def _started(self) -> Producer:
        if self._producer is None:  # first use
            self._producer = Producer(self._config)
            self._thread.start()
        return self._producer

    def close(self, timeout: float = 10.0) -> int:
        """Flush what is queued and stop; returns how many records were left undelivered."""
        if self._producer is None:
            return 0
        left: int = self._producer.flush(timeout)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return left

    def _poll(self) -> None:
        producer = self._producer
        while not self._stop.is_set() and producer is not None:
            producer.poll(0.05)
            producer = self._producer  # replaced after a fatal error

    async def deliver(self, records: Sequence[OutRecord]) -> None:
        """Return once Kafka acknowledged every record (or its fallback); failed ones are sent
        again."""
        pending = list(records)
        delay = 0.5
        while True:
            await self._follow_topics()
            futures = [await self._produce(r) for r in pending]
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed = [r for r, res in zip(pending, results, strict=True) if res is not None]
            if not failed:
                self.failures = 0
                return
            errors = [res for res in results if res is not None]
            refused = [self._replace(r, e) for r, e in zip(failed, errors, strict=True)]
            if refused != failed:
                pending = refused  # the fallbacks go out now; nothing to wait for
                continue
            self.failures += len(failed)
            self._metrics.produce_retries.inc(len(failed))
            log.warning(
                "output not acknowledged by Kafka; sending again",
                extra={"records": len(failed), "errors": sorted(map(str, errors))[:3],
                       "retry_in_s": delay},
            )  # fmt: skip
            if any(isinstance(e, KafkaException) and _fatal(e) for e in errors):
                self._recreate()
            pending = failed
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _replace(self, record: OutRecord, error: BaseException) -> OutRecord:
        """The record to send again: its fallback when Kafka refused the record itself."""
        err = kafka_error(error) if isinstance(error, KafkaException) else None
        if record.fallback is None or not record_refused(err):
            return record
        log.error(
            "Kafka refused a record; sending what happened instead",
            extra={"topic": record.topic, "bytes": len(record.value), "error": str(err)},
        )
        self._metrics.refused.inc()
        return record.fallback()

    async def _produce(self, record: OutRecord) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            # librdkafka's thread: hand the outcome to the event loop.
            loop.call_soon_threadsafe(_settle, future, err)

        while True:
            try:
                self._started().produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    partition=-1 if record.partition is None else record.partition,
                    on_delivery=on_delivery,
                )
                return future
            except BufferError:
                # librdkafka's queue is full: let the poll thread drain it.
                await asyncio.sleep(0.01)
            except KafkaException as exc:  # refused before sending (its size, say)
                future.set_exception(exc)
                return future

    def _recreate(self) -> None:
        # A fatal error (idempotence state lost) leaves the producer unusable.
        log.error("Kafka producer hit a fatal error: creating a new one")
        self._new_producer()

    async def _follow_topics(self) -> None:
        topics = self._topics
        if topics is None or topics.generation == self._generation:
            return
        self._generation = topics.generation  # before any await: one replacement per change
        if self._producer is None:
            return  # none yet: the first one starts with a fresh producer id
        log.warning("replacing the Kafka producer: the broker lost its producer id")
        old = self._new_producer()
        # Serve the purged records' callbacks off the event loop: each fails its delivery,
        # which sends it again through the new producer (never acked before: no loss).
        await asyncio.to_thread(old.flush, 5.0)

    def _new_producer(self) -> Producer:
        """A new producer; the old one's records are purged (their deliveries fail, so the
        callers send them again). Returns the old one, for its callbacks to be served."""
        old = self._started()
        self._producer = Producer(self._config)
        old.purge(in_queue=True, in_flight=True, blocking=False)
        old.flush(0)
        return old


def _settle(future: asyncio.Future[None], err: KafkaError | None) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(KafkaException(err))


def _fatal(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and bool(err.fatal())
