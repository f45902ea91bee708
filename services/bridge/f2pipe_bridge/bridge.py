"""The bridge's loop: inbox -> per-partition batches -> Kafka -> MQTT acknowledgements.

One thread owns batching, producing and acknowledging (confluent-kafka calls delivery
callbacks from `poll`, which this loop calls), so none of that state needs a lock. An MQTT
message is acknowledged only once Kafka confirmed the record that holds it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from f2pipe_bridge import metrics
from f2pipe_bridge.batcher import Batch, Batcher
from f2pipe_bridge.mqtt import Inbound
from f2pipe_bridge.ports import MessageSource, RecordProducer
from f2pipe_bridge.settings import BridgeSettings
from f2pipe_shared.deadletters import DeadLetter, Reason, Stage
from f2pipe_shared.kafka import kafka_error, record_refused
from f2pipe_shared.records import RawMessage, encode_raw_batch, partition_for_device
from f2pipe_shared.settings import KafkaSettings
from f2pipe_shared.topics import TopicError, parse_topic

log = logging.getLogger(__name__)

DRAIN_AT_ONCE = 5_000
RETRY_DELAY_S = 1.0


class Bridge:
    def __init__(
        self,
        kafka: KafkaSettings,
        settings: BridgeSettings,
        mqtt: MessageSource,
        producer: RecordProducer,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.mqtt = mqtt
        self.producer = producer
        self.batcher = Batcher(
            settings.bridge_batch_max_messages, settings.bridge_batch_linger_ms / 1000
        )
        self.partitions = self._partition_count()
        self.stopping = threading.Event()
        self.in_flight = 0
        self.unconfirmed: dict[int, float] = {}  # id(batch) -> when it was produced
        self.retries: list[tuple[float, Callable[[], None]]] = []  # (due, attempt)

    def _partition_count(self) -> int:
        topic = self.kafka.kafka_raw_topic
        metadata = self.producer.list_topics(topic, timeout=30)
        count = len(metadata.topics[topic].partitions)
        if count == 0:
            raise RuntimeError(f"topic {topic} has no partitions (does it exist?)")
        return count

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        self.mqtt.connect()
        while not self.stopping.is_set():
            self.pump(timeout=0.1)
        self.shutdown()

    def pump(self, timeout: float) -> None:
        """Take what arrived, send the batches that are due, serve Kafka callbacks."""
        deadline = self.batcher.next_deadline()
        wait = timeout if deadline is None else max(0.0, min(timeout, deadline - time.monotonic()))
        try:
            self.handle(self.mqtt.inbox.get(timeout=wait))
            for _ in range(DRAIN_AT_ONCE):
                self.handle(self.mqtt.inbox.get_nowait())
        except queue.Empty:
            pass
        for batch in self.batcher.due() + self.batcher.full():
            self.send(batch)
        self._resend_due()
        self.producer.poll(0)
        metrics.IN_FLIGHT.set(self.in_flight)

    def handle(self, message: Inbound) -> None:
        self.in_flight += 1
        try:
            self._batch(message)
        except Exception as exc:  # a bug must not let one message stop every device
            log.exception("could not handle a message", extra={"topic": message.topic[:200]})
            self.dead_letter(message, Reason.invalid_record, f"bridge error: {type(exc).__name__}")

    def _batch(self, message: Inbound) -> None:
        if len(message.payload) > self.settings.bridge_max_payload_bytes:
            detail = (
                f"payload of {len(message.payload)} bytes exceeds "
                f"BRIDGE_MAX_PAYLOAD_BYTES={self.settings.bridge_max_payload_bytes}"
            )
            self.dead_letter(message, Reason.oversize, detail)
            return
        try:
            topic = parse_topic(message.topic)
        except TopicError as exc:
            self.dead_letter(message, Reason.bad_topic, str(exc))
            return
        partition = partition_for_device(topic.device, self.partitions)
        closed = self.batcher.add(partition, message)
        if closed is not None:
            self.send(closed)

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
        self.unconfirmed[id(batch)] = time.monotonic()
        metrics.BATCH_SIZE.observe(len(batch.messages))

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

    def dead_letter(self, message: Inbound, reason: Reason, detail: str) -> None:
        letter = DeadLetter(
            stage=Stage.bridge,
            reason=reason,
            detail=detail,
            original=message.payload,
            mqtt_topic=message.topic,
        )
        log.warning(
            "dead-lettered",
            extra={"reason": reason.value, "topic": message.topic[:200], "detail": detail},
        )
        self._send_letter(message, letter)

    def _send_letter(self, message: Inbound, letter: DeadLetter) -> None:
        try:
            self._produce(
                self.kafka.kafka_deadletter_topic,
                letter.original,
                key=letter.key(),
                headers=letter.headers(),
                on_delivery=partial(self._dead_letter_delivered, message, letter),
            )
        except KafkaException as exc:
            self._letter_failed(message, letter, kafka_error(exc))

    def _letter_failed(self, message: Inbound, letter: DeadLetter, err: KafkaError | None) -> None:
        if record_refused(err) and letter.original:
            # Even the preview is too much for the topic: keep reason, size and sha256.
            self._send_letter(message, letter.stripped())
        else:
            self._retry_later(partial(self._send_letter, message, letter))

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

    def _batch_delivered(self, batch: Batch, err: KafkaError | None, _msg: Message) -> None:
        self.unconfirmed.pop(id(batch), None)
        if err is not None:
            metrics.KAFKA_ERRORS.labels(code=err.name()).inc()
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
        now_us = time.time_ns() // 1000
        for message in batch.messages:
            metrics.DELIVERY_LATENCY.observe((now_us - message.received_at_us) / 1e6)
            self._settle(message)
        metrics.BATCHES.inc()
        metrics.PRODUCED.inc(len(batch.messages))

    def _dead_letter_delivered(
        self, message: Inbound, letter: DeadLetter, err: KafkaError | None, _msg: Message
    ) -> None:
        if err is not None:
            metrics.KAFKA_ERRORS.labels(code=err.name()).inc()
            self._letter_failed(message, letter, err)
            return
        metrics.DEAD_LETTERS.labels(reason=letter.reason.value).inc()
        self._settle(message)

    def _settle(self, message: Inbound) -> None:
        self.in_flight -= 1
        self.mqtt.settle(message)

    def _retry_later(self, attempt: Callable[[], None]) -> None:
        self.retries.append((time.monotonic() + RETRY_DELAY_S, attempt))

    def _resend_due(self) -> None:
        if not self.retries:
            return
        now = time.monotonic()
        due = [a for t, a in self.retries if t <= now]
        self.retries = [(t, a) for t, a in self.retries if t > now]
        for attempt in due:
            attempt()

    def health(self) -> tuple[bool, dict[str, Any]]:
        oldest = min(self.unconfirmed.values(), default=None)
        waiting = 0.0 if oldest is None else time.monotonic() - oldest
        connected = self.mqtt.connected.is_set()
        ok = connected and waiting < 60
        return ok, {
            "mqtt_connected": connected,
            "in_flight": self.in_flight,
            "oldest_unconfirmed_s": round(waiting, 3),
        }

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking messages, send what we hold, acknowledge what Kafka confirms."""
        self.mqtt.accepting = False
        try:
            while True:
                self.handle(self.mqtt.inbox.get_nowait())
        except queue.Empty:
            pass
        retries, self.retries = self.retries, []
        for batch in self.batcher.drain():
            self.send(batch)
        for _, attempt in retries:
            attempt()
        remaining = self.producer.flush(timeout)
        if remaining:
            log.warning(
                "Kafka did not confirm everything before shutdown; the broker keeps those",
                extra={"records": remaining},
            )
        self.mqtt.stop()
        log.info("bridge stopped", extra={"unacknowledged": self.in_flight})
