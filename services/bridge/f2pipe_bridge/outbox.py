"""What goes to Kafka: batches to raw-iot-data, dead letters to iot-dead-letter.

Every record is either confirmed by Kafka, and then each message in it is settled (handed to
`settle`, which acknowledges it to the broker), or handled: a batch Kafka refuses is split in
halves until the message it will not take is alone, and that one dead-lettered; a dead letter
Kafka refuses goes again without the original's bytes; anything else (Kafka away, busy) is
tried again after RETRY_DELAY_S. Nothing is dropped.

Dead letters are logged grouped, not one line each (`DeadLetterLog`): a flood of bad messages
(2,000 from one misconfigured device, say) gives one warning per reason per LOG_INTERVAL_S,
once the interval its first letter opened has passed (`emit_due`, called by the service loop):
how many, up to LOGGED_DEVICES devices (`f2-<mac>`, the topic's second level) and the first
letter's detail. The metric `dead_letters{reason}` still counts every letter.

Delivery callbacks run inside `poll`/`flush`, on the thread that calls them (the service's),
so none of this state needs a lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from f2pipe_bridge.batcher import Batch
from f2pipe_bridge.metrics import BridgeMetrics
from f2pipe_bridge.ports import Clock, Inbound, RecordProducer
from f2pipe_shared.deadletters import DeadLetter, Reason, Stage
from f2pipe_shared.kafka import kafka_error, record_refused
from f2pipe_shared.records import RawMessage, encode_raw_batch
from f2pipe_shared.settings import KafkaSettings
from f2pipe_shared.topics import device_level

log = logging.getLogger(__name__)

RETRY_DELAY_S = 1.0
# Dead letters are logged grouped (DeadLetterLog): one line per reason per LOG_INTERVAL_S.
LOG_INTERVAL_S = 10.0
LOGGED_DEVICES = 20
DEVICE_MAX = 64  # characters of a device name as logged (bad topics can hold anything)
DETAIL_MAX = 200

Attempt = Callable[[], None]


@dataclass(eq=False)
class Outbox:
    kafka: KafkaSettings
    producer: RecordProducer
    metrics: BridgeMetrics
    clock: Clock
    settle: Callable[[Inbound], None]  # called once Kafka has a message
    unconfirmed: dict[int, float] = field(default_factory=dict, init=False)  # id(batch) -> sent
    retries: list[tuple[float, Attempt]] = field(default_factory=list, init=False)  # (due, try)
    dead_log: DeadLetterLog = field(init=False)  # grouped log lines, not one per letter

    def __post_init__(self) -> None:
        self.dead_log = DeadLetterLog(self.clock)

    # --- raw-iot-data -------------------------------------------------------------------

    def send(self, batch: Batch) -> None:
        value = encode_raw_batch(
            [RawMessage(m.topic, m.payload, m.received_at_us) for m in batch.messages]
        )
        try:
            self._produce(
                self.kafka.kafka_raw_topic,
                value,
                partition=batch.partition,
                on_delivery=partial(self._batch_delivered, batch),
            )
        except KafkaException as exc:
            self._batch_failed(batch, kafka_error(exc))
            return
        self.unconfirmed[id(batch)] = self.clock.monotonic()
        self.metrics.batch_size.observe(len(batch.messages))

    def _batch_delivered(self, batch: Batch, err: KafkaError | None, _msg: Message) -> None:
        self.unconfirmed.pop(id(batch), None)
        if err is not None:
            self.metrics.kafka_errors.labels(code=err.name()).inc()
            log.error(
                "Kafka did not confirm a batch",
                extra={
                    "error": str(err),
                    "messages": len(batch.messages),
                    "partition": batch.partition,
                },
            )
            self._batch_failed(batch, err)
            return
        # Once per record, for its oldest message: per message, the histogram's lock and
        # bucket search cost more than the rest of the settling.
        waited_us = self.clock.time_ns() // 1000 - batch.messages[0].received_at_us
        self.metrics.delivery_latency.observe(waited_us / 1e6)
        for message in batch.messages:
            self.settle(message)
        self.metrics.batches.inc()
        self.metrics.produced.inc(len(batch.messages))

    def _batch_failed(self, batch: Batch, err: KafkaError | None) -> None:
        if not record_refused(err):
            # Kafka is away or busy: the same record will go through later.
            self._retry_later(partial(self.send, batch))
            return
        # Kafka refuses the record itself (its size, say): halve it until the message that
        # cannot be sent is alone, and dead-letter that one.
        if len(batch.messages) == 1:
            code = err.name() if err is not None else "unknown"
            self.dead_letter(batch.messages[0], Reason.unproducible, f"Kafka refused it: {code}")
            return
        half = len(batch.messages) // 2
        for part in (batch.messages[:half], batch.messages[half:]):
            self.send(Batch(batch.partition, messages=part))

    # --- iot-dead-letter ----------------------------------------------------------------

    def dead_letter(self, message: Inbound, reason: Reason, detail: str) -> None:
        letter = DeadLetter(
            stage=Stage.bridge,
            reason=reason,
            detail=detail,
            original=message.payload,
            mqtt_topic=message.topic,
        )
        self.dead_log.add(reason, message.topic, detail)
        self._send_letter(message, letter)

    def _send_letter(self, message: Inbound, letter: DeadLetter) -> None:
        try:
            self._produce(
                self.kafka.kafka_deadletter_topic,
                letter.original,
                key=letter.key(),
                headers=letter.headers(),
                on_delivery=partial(self._letter_delivered, message, letter),
            )
        except KafkaException as exc:
            self._letter_failed(message, letter, kafka_error(exc))

    def _letter_delivered(
        self, message: Inbound, letter: DeadLetter, err: KafkaError | None, _msg: Message
    ) -> None:
        if err is not None:
            self.metrics.kafka_errors.labels(code=err.name()).inc()
            self._letter_failed(message, letter, err)
            return
        self.metrics.dead_letters.labels(reason=letter.reason.value).inc()
        self.settle(message)

    def _letter_failed(self, message: Inbound, letter: DeadLetter, err: KafkaError | None) -> None:
        if record_refused(err) and letter.original:
            # Even the preview is too much for the topic: keep reason, size and sha256.
            self._send_letter(message, letter.stripped())
        else:
            self._retry_later(partial(self._send_letter, message, letter))

    # --- the producer -------------------------------------------------------------------

    def _produce(self, topic: str, value: bytes, **kwargs: Any) -> None:
        """Produce, waiting while librdkafka's queue is full; KafkaException for the rest."""
        while True:
            try:
                self.producer.produce(topic, value, **kwargs)
                return
            except BufferError:
                # librdkafka's local queue is full (Kafka slow or away): serve callbacks
                # until there is room. MQTT flow control holds the rest at the broker.
                self.producer.poll(0.1)

    def poll(self) -> None:
        """Serve Kafka's delivery callbacks that are ready, without waiting."""
        self.producer.poll(0)

    def replace_producer(self, producer: RecordProducer, timeout: float = 5.0) -> None:
        """Go on with `producer`: the broker lost the old one's producer id (it restarted
        empty), so that one would retry what it holds for ever. What it did not confirm is
        purged, which fails each record through its callback, and so sent again by the new
        one (never acknowledged before that: at worst a duplicate)."""
        old, self.producer = self.producer, producer
        old.purge(in_queue=True, in_flight=True, blocking=False)
        old.flush(timeout)  # serves the purged records' callbacks

    def flush(self, batches: Iterable[Batch], timeout: float) -> int:
        """Send these batches and every waiting retry now, then wait up to `timeout` for Kafka;
        the number of records it did not confirm."""
        retries, self.retries = self.retries, []
        for batch in batches:
            self.send(batch)
        for _, attempt in retries:
            attempt()
        remaining = self.producer.flush(timeout)
        if remaining:
            # Drop what Kafka did not confirm in time (never acknowledged: the broker sends
            # it again) so that exit is not held by librdkafka waiting out message.timeout.ms.
            self.retries.clear()
            self.producer.purge()
            self.producer.poll(0)
        return remaining

    def oldest_unconfirmed(self) -> float | None:
        """When the batch waiting longest for Kafka's confirmation was produced (monotonic)."""
        return min(self.unconfirmed.values(), default=None)

    # --- later --------------------------------------------------------------------------

    def _retry_later(self, attempt: Attempt) -> None:
        self.retries.append((self.clock.monotonic() + RETRY_DELAY_S, attempt))

    def resend_due(self) -> None:
        """Try again what failed at least RETRY_DELAY_S ago."""
        if not self.retries:
            return
        now = self.clock.monotonic()
        due = [a for t, a in self.retries if t <= now]
        self.retries = [(t, a) for t, a in self.retries if t > now]
        for attempt in due:
            attempt()


# --- dead letters in the log -----------------------------------------------------------


@dataclass(slots=True)
class _Group:
    started: float
    detail: str
    topic: str
    count: int = 0
    devices: dict[str, None] = field(default_factory=dict)  # first seen, at most LOGGED_DEVICES
    more_devices: bool = False


@dataclass(eq=False)
class DeadLetterLog:
    clock: Clock
    interval: float = LOG_INTERVAL_S
    groups: dict[Reason, _Group] = field(default_factory=dict, init=False)

    def add(self, reason: Reason, topic: str, detail: str) -> None:
        group = self.groups.get(reason)
        if group is None:
            group = self.groups[reason] = _Group(
                self.clock.monotonic(), detail[:DETAIL_MAX], topic[:DETAIL_MAX]
            )
        group.count += 1
        device = _device(topic)
        if device in group.devices:
            return
        if len(group.devices) < LOGGED_DEVICES:
            group.devices[device] = None
        else:
            group.more_devices = True

    def emit_due(self) -> None:
        """Log the groups whose interval has passed."""
        if not self.groups:
            return
        now = self.clock.monotonic()
        for reason in [r for r, g in self.groups.items() if now - g.started >= self.interval]:
            self._emit(reason, self.groups.pop(reason))

    def emit_all(self) -> None:
        """Log every group now (at shutdown)."""
        groups, self.groups = self.groups, {}
        for reason, group in groups.items():
            self._emit(reason, group)

    @staticmethod
    def _emit(reason: Reason, group: _Group) -> None:
        log.warning(
            "dead-lettered %d message(s): %s",
            group.count,
            reason.value,
            extra={
                "reason": reason.value,
                "count": group.count,
                "devices": list(group.devices),
                "more_devices": group.more_devices,
                "topic": group.topic,
                "detail": group.detail,
            },
        )


def _device(topic: str) -> str:
    return device_level(topic)[:DEVICE_MAX]
